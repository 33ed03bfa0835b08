"""The AV-Synth world: what can be seen and heard, and how each source looks and sounds.

A clip is ``NUM_FRAMES`` RGB frames of ``FRAME_SIZE``² pixels spanning ``CLIP_SECONDS`` and a mono waveform at
``SAMPLE_RATE`` over the same time. Every sound source has a colour and a shape; its *pitch* is tied to its colour
and its *timbre* (harmonics) to its shape. The fundamentals are about 1.57× apart and not in integer ratios, so no
harmonic of one source lands on another's fundamental. The pitch ↔ colour binding is what the cross-modal
questions test ("does the sound match the visible object?" differs in colour when the answer is no); timbre is
rendered but no question depends on it yet (a harder level for later).
"""

from __future__ import annotations

NUM_FRAMES = 8
FRAME_SIZE = 32
CLIP_SECONDS = 2.0
SAMPLE_RATE = 16_000
NUM_SAMPLES = int(CLIP_SECONDS * SAMPLE_RATE)

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 220, 40),
}
COLOUR_PITCH_HZ: dict[str, float] = {"red": 300.0, "green": 470.0, "blue": 740.0, "yellow": 1160.0}
# Relative amplitude of harmonics 1, 2, 3, ... for each shape's timbre.
SHAPE_HARMONICS: dict[str, tuple[float, ...]] = {
    "circle": (1.0,),
    "square": (1.0, 0.0, 0.33, 0.0, 0.2),
    "triangle": (1.0, 0.5, 0.25),
}

NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three")
MAX_EVENTS = 3
