"""Scenes (what is in a clip) and their deterministic rendering to frames and a waveform."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import numpy as np

from fastav_eval.avsynth.world import (
    COLOUR_PITCH_HZ,
    COLOUR_RGB,
    FRAME_SIZE,
    NUM_FRAMES,
    NUM_SAMPLES,
    SAMPLE_RATE,
    SHAPE_HARMONICS,
)


@dataclass(frozen=True)
class VisibleObject:
    """An object drawn in frames ``first_frame .. last_frame`` (inclusive), centred at ``(x, y)`` pixels."""

    colour: str
    shape: str
    x: int
    y: int
    radius: int
    first_frame: int
    last_frame: int


@dataclass(frozen=True)
class SoundEvent:
    """One sound of a source (``colour``, ``shape``), from ``onset_s`` for ``duration_s`` seconds."""

    colour: str
    shape: str
    onset_s: float
    duration_s: float


@dataclass(frozen=True)
class Scene:
    """Everything a clip contains. ``noise_seed`` fixes the pixel and audio noise, so rendering is a pure function."""

    objects: tuple[VisibleObject, ...]
    events: tuple[SoundEvent, ...]
    noise_seed: int

    def visible(self, colour: str, shape: str | None = None) -> bool:
        return any(o.colour == colour and (shape is None or o.shape == shape) for o in self.objects)

    def event_count(self, colour: str | None = None) -> int:
        return sum(1 for e in self.events if colour is None or e.colour == colour)

    def sources(self) -> list[tuple[str, str]]:
        """Distinct (colour, shape) of the sound sources, in order of their first sound."""
        seen: list[tuple[str, str]] = []
        for event in sorted(self.events, key=lambda e: e.onset_s):
            if (event.colour, event.shape) not in seen:
                seen.append((event.colour, event.shape))
        return seen

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @staticmethod
    def from_json(text: str) -> Scene:
        raw = json.loads(text)
        return Scene(
            objects=tuple(VisibleObject(**o) for o in raw["objects"]),
            events=tuple(SoundEvent(**e) for e in raw["events"]),
            noise_seed=int(raw["noise_seed"]),
        )


def _shape_mask(shape: str, x: int, y: int, radius: int) -> np.ndarray:
    """Boolean ``[FRAME_SIZE, FRAME_SIZE]`` mask of a filled shape."""
    rows, cols = np.mgrid[0:FRAME_SIZE, 0:FRAME_SIZE]
    dy, dx = rows - y, cols - x
    if shape == "circle":
        return dx * dx + dy * dy <= radius * radius
    if shape == "square":
        side = round(radius * 0.85)
        return (np.abs(dx) <= side) & (np.abs(dy) <= side)
    if shape == "triangle":
        # Apex up: the half-width grows linearly from the apex (dy = -radius) to the base (dy = +radius).
        half_width = (dy + radius) / 2.0
        return (dy >= -radius) & (dy <= radius) & (np.abs(dx) <= half_width)
    raise ValueError(f"shape must be one of circle, square, triangle; got {shape!r}")


def render_video(scene: Scene) -> np.ndarray:
    """Frames ``[NUM_FRAMES, FRAME_SIZE, FRAME_SIZE, 3]`` uint8: a dark noisy background with the objects drawn."""
    rng = np.random.default_rng(scene.noise_seed)
    frames = np.full((NUM_FRAMES, FRAME_SIZE, FRAME_SIZE, 3), 30.0)
    frames += rng.normal(0.0, 6.0, frames.shape)
    for obj in scene.objects:
        mask = _shape_mask(obj.shape, obj.x, obj.y, obj.radius)
        for frame in range(obj.first_frame, obj.last_frame + 1):
            frames[frame][mask] = COLOUR_RGB[obj.colour]
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)


def render_audio(scene: Scene) -> np.ndarray:
    """Waveform ``[NUM_SAMPLES]`` float32 in [-1, 1] at ``SAMPLE_RATE``: tone bursts over faint noise."""
    rng = np.random.default_rng(scene.noise_seed + 1)
    wave = rng.normal(0.0, 0.01, NUM_SAMPLES)
    t = np.arange(NUM_SAMPLES) / SAMPLE_RATE
    ramp = int(0.01 * SAMPLE_RATE)
    for event in scene.events:
        start = int(event.onset_s * SAMPLE_RATE)
        stop = min(NUM_SAMPLES, start + int(event.duration_s * SAMPLE_RATE))
        pitch = COLOUR_PITCH_HZ[event.colour]
        tone = np.zeros(stop - start)
        for harmonic, amplitude in enumerate(SHAPE_HARMONICS[event.shape], start=1):
            if amplitude and harmonic * pitch < SAMPLE_RATE / 2:
                tone += amplitude * np.sin(2 * np.pi * harmonic * pitch * t[start:stop])
        envelope = np.ones(stop - start)
        envelope[:ramp] = np.linspace(0.0, 1.0, ramp)
        envelope[-ramp:] = np.linspace(1.0, 0.0, ramp)
        wave[start:stop] += 0.3 * tone * envelope / np.abs(tone).max()
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def media_sha1(video: np.ndarray, audio: np.ndarray) -> str:
    """Fingerprint of rendered media, stored with each doc so a loader can prove it rendered the same clip.

    The audio is hashed as 16-bit PCM, so a last-bit difference in ``np.sin`` between CPUs changes the hash only
    if it pushes a sample across a rounding boundary (rare, not impossible: the loader's error says how to rebuild).
    """
    digest = hashlib.sha1()
    digest.update(np.ascontiguousarray(video, dtype=np.uint8).tobytes())
    digest.update(np.round(np.asarray(audio, dtype=np.float64) * 32767).astype("<i2").tobytes())
    return digest.hexdigest()
