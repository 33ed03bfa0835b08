"""The papers' models and token layouts, for analytic FLOPs without weights.

Each preset is a decoder shape, a prompt layout and a global-stage profile. :meth:`FlopsPreset.run` drives the
engine's own prune schedule over that layout (:func:`~fastav_eval.pruning.plan.simulate_prefill`), so the
token counts are the ones the engine produces, and turns them into relative FLOPs.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from fastav_eval.pruning.config import PruningConfig
from fastav_eval.pruning.flops import DecoderShape, relative_flops
from fastav_eval.pruning.layout import ModalityLayout, Segment
from fastav_eval.pruning.plan import simulate_prefill
from fastav_eval.pruning.profile import PrefixKeep, PruningProfile

QWEN2_7B = DecoderShape(
    num_layers=28, hidden_size=3584, intermediate_size=18944, num_heads=28, num_kv_heads=4, head_dim=128
)


@dataclass(frozen=True)
class FlopsPreset:
    """A paper setting: decoder shape, one sample's layout, and the global stage's profile."""

    name: str
    shape: DecoderShape
    segments: tuple[Segment, ...]
    profile: PruningProfile
    global_layer: int
    assumptions: str

    def run(
        self, fine_ratio: float = 0.2, fine_rule: str = "low_attentive", convention: str = "fastv"
    ) -> dict[str, Any]:
        """Relative prefill FLOPs and per-layer token counts of FastAV on this preset."""
        config = PruningConfig(
            global_rule="positional",
            global_layer=self.global_layer,
            profile=self.profile,
            fine_rule=fine_rule,
            fine_ratio=fine_ratio,
        )
        layout = ModalityLayout.from_segments([list(self.segments)])
        stats = simulate_prefill(layout, config, self.shape.num_layers)
        counts = {
            name: sum(segment[1] for segment in self.segments if segment[0] == name)
            for name in ("text", "video", "audio")
        }
        return {
            "preset": self.name,
            "fine_ratio": fine_ratio,
            "fine_rule": fine_rule,
            "convention": convention,
            "relative_flops": round(float(relative_flops(stats.tokens_per_layer, self.shape, convention)[0]), 2),
            "prompt_tokens": counts,
            "global_layer": self.global_layer,
            "profile": self.profile.describe(),
            "tokens_per_layer": stats.tokens_per_layer[0].tolist(),
            "kept_per_layer": {name: c[0].tolist() for name, c in stats.modality_per_layer.items()},
            "shape": vars(self.shape),
            "assumptions": self.assumptions,
        }


def _assumptions(factory: object) -> str:
    """The "Assumptions: ..." paragraph of a preset factory's docstring, on one line."""
    paragraphs = inspect.cleandoc(getattr(factory, "__doc__", "") or "").split("\n\n")
    return " ".join(" ".join(p.split()) for p in paragraphs if p.startswith("Assumptions:"))


def _videollama2() -> FlopsPreset:
    """VideoLLaMA2.1-7B-AV as the paper ran it.

    Assumptions: the LLM is Qwen2-7B (28 layers, d 3584, m 18944, 28/4 heads). 8 frames give 676 video tokens
    (STC connector: 4×13×13); 30 s of audio gives 1,496 BEATs tokens (187×8). The Qwen2 chat prefix up to the
    media is 14 tokens and the question plus the assistant prompt 30. The global stage keeps the first 10 audio
    tokens and every video token before layer 14 (0-based), as the paper states.
    """
    return _videollama2_preset("videollama2", frames=8, factory=_videollama2)


def _videollama2_16f() -> FlopsPreset:
    """VideoLLaMA2.1-7B-AV as ``fastav_videollama2`` runs it by default (the checkpoint's ``num_frames``).

    Assumptions: the LLM is Qwen2-7B (28 layers, d 3584, m 18944, 28/4 heads). 16 frames give 1,352 video
    tokens (STC connector: 8×13×13); 30 s of audio gives 1,496 BEATs tokens (187×8). The Qwen2 chat prefix up
    to the media is 14 tokens and the question plus the assistant prompt 30. The global stage keeps the first 10
    audio tokens and every video token before layer 14 (0-based), as the paper states.
    """
    return _videollama2_preset("videollama2_16f", frames=16, factory=_videollama2_16f)


def _videollama2_preset(name: str, frames: int, factory: object) -> FlopsPreset:
    video = (frames // 2) * 13 * 13  # SigLIP-so400m at 384 px: 27×27 patches, halved by the connector
    return FlopsPreset(
        name=name,
        shape=QWEN2_7B,
        segments=(("text", 14), ("video", video), ("audio", 1496), ("text", 30)),
        profile=PruningProfile.prefix(audio=10),
        global_layer=14,
        assumptions=_assumptions(factory),
    )


def _video_salmonn2() -> FlopsPreset:
    """video-SALMONN 2 (7B) as the paper ran it.

    Assumptions: the LLM is Qwen2-7B via LLaVA-OneVision (28 layers, d 3584, m 18944, 28/4 heads). A 10-s clip
    (AVHBench's length) at 1 fps gives 10 frames of 182 visual tokens (13×13 pooled patches plus 13 row
    newlines), each followed by its 2 audio tokens (Whisper + 0.5-s window Q-Former: 2 tokens/s). The chat
    prefix is 14 tokens and the question plus the assistant prompt 30. The global stage keeps the audio-visual
    tokens of the first 4 frames before layer 14 (0-based), as the paper states.
    """
    frames: list[Segment] = []
    for _ in range(10):
        frames += [("video", 182), ("audio", 2)]
    return FlopsPreset(
        name="video_salmonn2",
        shape=QWEN2_7B,
        segments=(("text", 14), *frames, ("text", 30)),
        profile=PruningProfile(keep={"video": PrefixKeep(first_chunks=4), "audio": PrefixKeep(first_chunks=4)}),
        global_layer=14,
        assumptions=_assumptions(_video_salmonn2),
    )


def chunk_groups(times: list[int], per_chunk: int = 50) -> list[int]:
    """How many of ``times`` (sorted temporal positions) fall in each of Qwen2.5-Omni's interleave groups.

    The model's rule (``get_chunked_index``): a new group starts at the first position reaching the next multiple
    of ``per_chunk``, and the threshold then moves up by one chunk only, so sparse video grids (one per 4.4 s)
    form one group each rather than leaving empty 2-s windows.
    """
    sizes, start, threshold = [], 0, per_chunk
    for i, time in enumerate(times):
        if time >= threshold:
            sizes.append(i - start)
            start, threshold = i, threshold + per_chunk
    return [*sizes, len(times) - start]


def _interleaved_chunks(grids: int, tokens_per_grid: int, seconds_per_grid: float, audio_tokens: int) -> list[Segment]:
    """Qwen2.5-Omni's audio-in-video runs: video group j (of its tokens), then audio chunk j (50 tokens = 2 s).

    Each run carries its chunk j: two adjacent audio runs (after the last grid) are two chunks, as in the model.
    """
    video = chunk_groups([int(k * seconds_per_grid * 25) for k in range(grids) for _ in range(tokens_per_grid)])
    audio = chunk_groups(list(range(audio_tokens)))
    segments: list[Segment] = []
    for chunk in range(max(len(video), len(audio))):
        segments += [("video", video[chunk], chunk)] if chunk < len(video) and video[chunk] else []
        segments += [("audio", audio[chunk], chunk)] if chunk < len(audio) and audio[chunk] else []
    return segments


def _qwen2_5_omni_7b() -> FlopsPreset:
    """Qwen2.5-Omni-7B's thinker on a typical WorldSense clip, as ``fastav_qwen2_5_omni`` feeds it by default.

    Assumptions: the thinker's LLM has Qwen2-7B's shape (28 layers, d 3584, m 18944, 28/4 heads). The clip lasts
    141 s (WorldSense's mean duration) at 1280×720; the adapter's defaults (fps 2 capped at max_frames 64,
    max_pixels 360×420) sample 64 frames, i.e. 32 temporal grids of 4.4 s, each resized to 504×280 px: 180 tokens
    per grid, 5,760 video tokens. The soundtrack gives 25 tokens/s: 3,525 audio tokens. They interleave as the
    thinker groups them (``get_chunked_index`` on each token's TMRoPE time: with a grid every 4.4 s, a grid's
    first token is a group of its own), each group followed by the next 2 s of audio: 71 chunks. The
    system prompt and chat prefix are 40 tokens and a multiple-choice question with the assistant prompt 80. The
    global stage keeps every video token and the audio of the first 2-s chunk (50 tokens) before layer 14
    (0-based): the analogue of the paper's VideoLLaMA2 setting, not yet calibrated for Qwen2.5-Omni.
    """
    chunks = _interleaved_chunks(grids=32, tokens_per_grid=180, seconds_per_grid=4.4, audio_tokens=3525)
    return FlopsPreset(
        name="qwen2_5_omni_7b",
        shape=QWEN2_7B,
        segments=(("text", 40), *chunks, ("text", 80)),
        profile=PruningProfile(keep={"audio": PrefixKeep(first_chunks=1)}),
        global_layer=14,
        assumptions=_assumptions(_qwen2_5_omni_7b),
    )


PRESETS: dict[str, FlopsPreset] = {
    preset.name: preset for preset in (_videollama2(), _videollama2_16f(), _video_salmonn2(), _qwen2_5_omni_7b())
}


def parse_segments(text: str) -> tuple[Segment, ...]:
    """``"text:14,video:1352,audio:1496,text:30"`` -> the segments of one prompt, in sequence order.

    A model's real layout (e.g. the ``video_tokens`` / ``audio_tokens`` of a samples file) in place of a preset's.
    """
    accepted = "comma-separated modality:count pairs, e.g. text:14,video:1352,audio:1496,text:30"
    segments: list[Segment] = []
    for part in text.split(","):
        name, _, count = part.strip().partition(":")
        if name not in ("text", "video", "audio") or not count.isdigit():
            raise ValueError(f"segments={text!r}: {part!r} is not modality:count; accepted: {accepted}")
        segments.append((name, int(count)))
    if not any(name != "text" for name, _ in segments) or segments[-1][0] != "text":
        raise ValueError(f"segments={text!r}: needs audio-visual tokens and must end with text; accepted: {accepted}")
    return tuple(segments)


def get_preset(name: str) -> FlopsPreset:
    if name not in PRESETS:
        raise ValueError(f"preset={name!r}; accepted: {sorted(PRESETS)}")
    return PRESETS[name]
