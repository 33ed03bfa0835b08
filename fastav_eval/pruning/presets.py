"""The papers' models and token layouts, for analytic FLOPs without weights.

Each preset is a decoder shape, a prompt layout and a global-stage profile. :meth:`FlopsPreset.run` drives the
engine's own prune schedule over that layout (:func:`~fastav_eval.pruning.plan.simulate_prefill`), so the
token counts are the ones the engine produces, and turns them into relative FLOPs.
"""

from __future__ import annotations

import dataclasses
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
            "segments": format_segments(self.segments),
            "global_layer": self.global_layer,
            "profile": self.profile.describe(),
            "tokens_per_layer": stats.tokens_per_layer[0].tolist(),
            "kept_per_layer": {name: c[0].tolist() for name, c in stats.modality_per_layer.items()},
            "shape": self.shape.to_dict(),
            "assumptions": self.assumptions,
        }

    def with_segments(self, text: str) -> FlopsPreset:
        """This preset on a given layout (``--segments``): the decoder shape and global stage stay. A modality the
        profile keeps by chunks must be written in chunks where the preset's own layout has several: one run would
        be one chunk, and keeping its first chunk would silently keep all of it."""
        segments = parse_segments(text)
        for name, rule in sorted(self.profile.keep.items()):
            if rule.first_chunks is None:
                continue
            given, own = _chunk_count(segments, name), _chunk_count(self.segments, name)
            if given == 1 < own:
                raise ValueError(
                    f"segments={text!r} gives {name} as one chunk, but the preset's profile keeps the first "
                    f"{rule.first_chunks} {name} chunk(s) of {own} (its layout: {format_segments(self.segments)[:80]}"
                    f"...); write {name}'s chunks, e.g. {name}:50*70 (70 chunks of 50) or (video:180,audio:50)*4 "
                    "(interleaved); accepted: "
                    f"{SEGMENTS_ACCEPTED}"
                )
        return dataclasses.replace(self, name=f"{self.name}, given layout", segments=segments)


def _chunk_count(segments: tuple[Segment, ...], name: str) -> int:
    """How many chunks of modality ``name`` a layout holds."""
    return len({segment[2] for segment in explicit_chunks(segments) if segment[0] == name})


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
    """video-SALMONN 2 (7B) as the paper ran it, on a 10-s AVQA / AVHBench clip, in ``fastav_video_salmonn2``'s layout.

    Assumptions: the LLM is Qwen2-7B via LLaVA-OneVision (28 layers, d 3584, m 18944, 28/4 heads). The clip lasts
    10 s: 10 frames at 1 fps of 182 visual tokens (13×13 pooled patches plus 13 row newlines); its audio is one 30-s
    Whisper chunk (padded), 60 tokens (one per 0.5-s window), spread over the frames as the official code does:
    6 per frame, after each frame's visual tokens. The chat prefix is 14 tokens and the question plus the assistant
    prompt 30. The global stage keeps the audio-visual tokens of the first 4 frames before layer 14 (0-based), as
    the paper states.
    """
    return _video_salmonn2_preset("video_salmonn2", seconds=10, factory=_video_salmonn2)


def _video_salmonn2_60s() -> FlopsPreset:
    """video-SALMONN 2 (7B) on a 60-s MUSIC-AVQA clip, in ``fastav_video_salmonn2``'s layout (the paper gives no
    figure for it: its MUSIC-AVQA column is NA).

    Assumptions: the LLM is Qwen2-7B via LLaVA-OneVision (28 layers, d 3584, m 18944, 28/4 heads). The clip lasts
    60 s: 60 frames at 1 fps of 182 visual tokens; its audio is two 30-s Whisper chunks, 120 tokens, 2 per frame.
    The chat prefix is 14 tokens and the question plus the assistant prompt 30. The global stage keeps the
    audio-visual tokens of the first 4 frames before layer 14 (0-based), as for the 10-s clip.
    """
    return _video_salmonn2_preset("video_salmonn2_60s", seconds=60, factory=_video_salmonn2_60s)


def _video_salmonn2_preset(name: str, seconds: int, factory: object) -> FlopsPreset:
    frames = seconds  # 1 fps, fewer than the official cap of 110
    audio = 60 * -(-seconds // 30)  # 60 tokens per started 30-s chunk
    per_frame = -(-audio // frames)  # the official nearest-neighbour resize to a multiple of the frame count
    segments: list[Segment] = []
    for frame in range(frames):
        segments += [("video", 182, frame), ("audio", per_frame, frame)]
    return FlopsPreset(
        name=name,
        shape=QWEN2_7B,
        segments=(("text", 14), *segments, ("text", 30)),
        profile=PruningProfile(keep={"video": PrefixKeep(first_chunks=4), "audio": PrefixKeep(first_chunks=4)}),
        global_layer=14,
        assumptions=_assumptions(factory),
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


def interleave_by_time(grid_times: list[float], tokens_per_grid: int, audio_times: list[float]) -> list[Segment]:
    """Qwen3-Omni's audio-in-video order, one chunk per temporal grid: grid t's ``tokens_per_grid`` video tokens,
    then the audio tokens timed before grid t + 1 (every one left, after the last grid), both chunk t.

    The thinker merges token by token: a video token goes first while its time position is at most the next audio
    token's. ``grid_times`` ``[T]`` and ``audio_times`` ``[A]`` (sorted) are those positions as the model computes them.
    """
    segments: list[Segment] = []
    audio = 0
    for grid in range(len(grid_times)):
        segments.append(("video", tokens_per_grid, grid))
        last = grid == len(grid_times) - 1
        end = len(audio_times) if last else sum(1 for time in audio_times if time < grid_times[grid + 1])
        if end > audio:
            segments.append(("audio", end - audio, grid))
            audio = end
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


QWEN3_OMNI_30B_A3B_THINKER = DecoderShape(
    num_layers=48, hidden_size=2048, intermediate_size=6144, num_heads=32, num_kv_heads=4, head_dim=128,
    num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768,
)  # fmt: skip


def _qwen3_omni_30b_a3b() -> FlopsPreset:
    """Qwen3-Omni-30B-A3B's thinker on a typical WorldSense clip, as ``fastav_qwen3_omni`` feeds it by default.

    Assumptions: the thinker's LLM is a mixture of experts: 48 layers, d 2048, 32/4 heads of 128, 128 experts of
    width 768 with 8 run per token, every layer sparse (decoder_sparse_step 1, no mlp_only_layers), as public readers
    of the released config.json state (the file itself was not read here); a token's MLP cost is the router plus its
    8 experts. The clip lasts 141 s (WorldSense's mean duration) at 1280×720; the adapter's defaults (fps 2 capped
    at max_frames 64, max_pixels 360×420) sample 64 frames, i.e. 32 temporal grids of 4.41 s, each resized to
    512×288 px: 144 tokens per grid (32-px tokens), 4,608 video tokens. The soundtrack gives 13 tokens per second
    (n_window 50): 1,833 audio tokens. They interleave token by token by time (13 positions per second, the released
    config's position_id_per_seconds), one chunk per grid: its video tokens, then the audio up to the next grid.
    The system prompt and chat prefix are 40 tokens and a multiple-choice question with the assistant prompt 80.
    The global stage keeps the audio-visual tokens of the first 4 frames (2 grids) before layer 24 (half the depth),
    video-SALMONN 2's rule in FastAV, which also interleaves per frame; not calibrated for Qwen3-Omni.
    """
    seconds, grids, position_id_per_seconds = 141, 32, 13
    second_per_grid = 2 / (2 * grids / seconds)  # 2 frames per grid at the capped rate of 64 frames / 141 s
    grid_times = [t * second_per_grid * position_id_per_seconds for t in range(grids)]
    audio_tokens = seconds * 13  # 13 tokens per 100 mel frames (1 s)
    chunks = interleave_by_time(grid_times, 144, [float(j) for j in range(audio_tokens)])
    return FlopsPreset(
        name="qwen3_omni_30b_a3b",
        shape=QWEN3_OMNI_30B_A3B_THINKER,
        segments=(("text", 40), *chunks, ("text", 80)),
        profile=PruningProfile(keep={"video": PrefixKeep(first_chunks=2), "audio": PrefixKeep(first_chunks=2)}),
        global_layer=24,
        assumptions=_assumptions(_qwen3_omni_30b_a3b),
    )


PRESETS: dict[str, FlopsPreset] = {
    preset.name: preset
    for preset in (
        _videollama2(), _videollama2_16f(), _video_salmonn2(), _video_salmonn2_60s(), _qwen2_5_omni_7b(),
        _qwen3_omni_30b_a3b(),
    )
}  # fmt: skip


MODALITIES = ("text", "video", "audio")
MAX_TOKENS = 1_000_000
"""The longest layout ``--segments`` takes (a 7B model's context is 32,768 tokens; this only stops runaway input)."""
SEGMENTS_SYNTAX = (
    "comma-separated modality:count pairs in prompt order (modality text, video or audio; count an int >= 1), e.g. "
    "text:14,video:1352,audio:1496,text:30; each pair is one chunk of its modality. Chunks: audio:50*70 is 70 "
    "audio chunks of 50 tokens; (video:180,audio:50)*4 is 4 interleaved chunks, each group one chunk of every "
    "modality in it (Qwen2.5-Omni's 2-s chunks); groups nest, ((video:1,audio:50),(video:179,audio:50))*2 is 4 "
    "chunks. Chunks of a modality are numbered in order from 0, and a profile's first_chunks keeps the first N"
)
"""What ``--segments`` accepts (its ``--help``)."""
SEGMENTS_ACCEPTED = (
    "comma-separated modality:count pairs (modality text, video or audio; count an int >= 1) ending with text, e.g. "
    "text:14,video:1352,audio:1496,text:30; chunks as audio:50*70 or (video:180,audio:50)*4 (fastav-eval flops --help)"
)
"""What every ``--segments`` error says is accepted."""

_Node = tuple[str, int] | tuple[tuple, ...]
"""A parsed item: ``(modality, count)``, or a group: a tuple of ``(node, repeat)`` pairs."""


class _SegmentsParser:
    """Recursive descent over ``items := item ("," item)*``, ``item := atom ["*" N]``,
    ``atom := modality ":" count | "(" items ")"``."""

    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def fail(self, problem: str) -> ValueError:
        return ValueError(f"segments={self.text!r}: {problem} at character {self.pos}; accepted: {SEGMENTS_ACCEPTED}")

    def peek(self) -> str:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def number(self, what: str) -> int:
        self.peek()
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos].isdigit():
            self.pos += 1
        if start == self.pos or int(self.text[start : self.pos]) < 1:
            self.pos = start
            raise self.fail(f"{what} is not an int >= 1")
        return int(self.text[start : self.pos])

    def items(self) -> tuple[tuple[_Node, int], ...]:
        found = [self.item()]
        while self.peek() == ",":
            self.pos += 1
            found.append(self.item())
        return tuple(found)

    def item(self) -> tuple[_Node, int]:
        if self.peek() == "(":
            self.pos += 1
            node: _Node = self.items()
            if self.peek() != ")":
                raise self.fail("a group is not closed with ')'")
            self.pos += 1
        else:
            start = self.pos
            while self.pos < len(self.text) and (self.text[self.pos].isalpha() or self.text[self.pos] == "_"):
                self.pos += 1
            name = self.text[start : self.pos]
            if name not in MODALITIES or self.peek() != ":":
                self.pos = start
                raise self.fail(f"{self.text[start:].split(',')[0]!r} is not modality:count")
            self.pos += 1
            node = (name, self.number("the count"))
        repeat = 1
        if self.peek() == "*":
            self.pos += 1
            repeat = self.number("the repeat after '*'")
        return node, repeat

    def parse(self) -> tuple[tuple[_Node, int], ...]:
        found = self.items()
        if self.peek():
            raise self.fail(f"unexpected {self.peek()!r}")
        return found


def _is_run(node: _Node) -> bool:
    return isinstance(node[0], str)


def _expand(items: tuple[tuple[_Node, int], ...], chunks: dict[str, int], out: list[Segment]) -> None:
    """Append ``items``' segments to ``out``; ``chunks``: each modality's next chunk number."""
    for node, repeat in items:
        for _ in range(repeat):
            if _is_run(node):
                name, count = node  # a run outside a chunk group: a chunk of its own
                out.append((name, count) if name == "text" else (name, count, chunks[name]))
                chunks[name] += name != "text"
            elif all(_is_run(inner) for inner, _ in node):  # a chunk group: one chunk of every modality in it
                present = []
                for (name, count), times in node:
                    for _ in range(times):
                        out.append((name, count) if name == "text" else (name, count, chunks[name]))
                    present += [name] if name != "text" and name not in present else []
                for name in present:
                    chunks[name] += 1
            else:
                _expand(node, chunks, out)  # type: ignore[arg-type]


def parse_segments(text: str) -> tuple[Segment, ...]:
    """One prompt's layout in the ``--segments`` syntax (:data:`SEGMENTS_SYNTAX`) -> its segments, in sequence
    order, every audio-visual one with its chunk number: ``"text:2,(video:4,audio:2)*2,text:1"`` ->
    ``(("text", 2), ("video", 4, 0), ("audio", 2, 0), ("video", 4, 1), ("audio", 2, 1), ("text", 1))``.

    A model's real layout (e.g. the ``video_tokens`` / ``audio_tokens`` of a samples file) in place of a preset's;
    :func:`format_segments` writes a preset's own.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"segments={text!r} is empty; accepted: {SEGMENTS_ACCEPTED}")
    parser = _SegmentsParser(text)
    tree = parser.parse()

    def size(items: tuple[tuple[_Node, int], ...]) -> int:
        return sum(repeat * (node[1] if _is_run(node) else size(node)) for node, repeat in items)  # type: ignore[arg-type]

    if size(tree) > MAX_TOKENS:
        raise ValueError(f"segments={text!r} holds {size(tree):,} tokens; accepted: at most {MAX_TOKENS:,}")
    segments: list[Segment] = []
    _expand(tree, dict.fromkeys(MODALITIES, 0), segments)
    if not any(segment[0] != "text" for segment in segments) or segments[-1][0] != "text":
        raise ValueError(
            f"segments={text!r}: needs audio-visual tokens and must end with text; accepted: {SEGMENTS_ACCEPTED}"
        )
    return tuple(segments)


def explicit_chunks(segments: tuple[Segment, ...]) -> tuple[Segment, ...]:
    """``segments`` with every audio-visual segment's chunk written out (where none is given, each contiguous run
    of a modality is its next chunk, as :meth:`ModalityLayout.from_segments` derives them)."""
    if any(len(segment) == 3 for segment in segments):
        return segments
    chunks, previous, out = dict.fromkeys(MODALITIES, -1), "", []
    for name, count, *_ in segments:
        chunks[name] += name != previous
        out.append((name, count) if name == "text" else (name, count, chunks[name]))
        previous = name
    return tuple(out)


def format_segments(segments: tuple[Segment, ...]) -> str:
    """``segments`` in the ``--segments`` syntax, which :func:`parse_segments` reads back to the same layout:
    adjacent segments of one chunk number form a group, and repeated groups are written once with ``*N``."""
    units: list[str] = []  # one per chunk group or text run, in order
    group: list[Segment] = []

    def close() -> None:
        if group:
            runs = ",".join(f"{name}:{count}" for name, count, *_ in group)
            units.append(f"({runs})" if len(group) > 1 else runs)
            group.clear()

    for segment in explicit_chunks(segments):
        if segment[0] == "text":
            close()
            units.append(f"text:{segment[1]}")
        elif group and segment[2] != group[-1][2]:
            close()
            group.append(segment)
        else:
            group.append(segment)
    close()
    written, i = [], 0
    while i < len(units):  # the period (1 to 4 units) whose repeats cover the most units from here
        best_period, best_repeats = 1, 1
        for period in range(1, 5):
            repeats = 1
            while units[i + repeats * period : i + (repeats + 1) * period] == units[i : i + period]:
                repeats += 1
            if repeats > 1 and repeats * period > best_repeats * best_period:
                best_period, best_repeats = period, repeats
        body = units[i : i + best_period]
        if best_repeats == 1:
            written.append(body[0])
        elif best_period == 1:
            written.append(f"{body[0]}*{best_repeats}")
        else:
            written.append(f"({','.join(body)})*{best_repeats}")
        i += best_period * best_repeats
    return ",".join(written)


def get_preset(name: str) -> FlopsPreset:
    if name not in PRESETS:
        raise ValueError(f"preset={name!r}; accepted: {sorted(PRESETS)}")
    return PRESETS[name]
