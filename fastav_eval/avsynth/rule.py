"""The best hand-written per-sample rule for AV-Synth: read the question, keep whole frames / audio time steps of
the sense it needs, cut early, no fine stage. A named baseline (``prune=rule:avsynth_senses``) that every
comparison of learned policies shows next to FastAV's defaults.

It reads the question against AV-Synth's templates (:data:`~fastav_eval.avsynth.questions.QUESTIONS`) and needs a
layout whose chunks are the model's frames and audio time steps (the testbed's are). A question that matches no
template is refused with the question in the message: the rule has nothing to say about it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from fastav_eval.avsynth.questions import QUESTIONS
from fastav_eval.pruning.rules import PruneContext, PruneDecision, spread_picks


@dataclass(frozen=True)
class KindSetting:
    """What the rule keeps for one question kind.

    Attributes:
        video_frames: frames kept (whole chunks); ``middle`` picks the central ones, else evenly spaced.
        audio_steps: audio time steps kept (whole chunks), evenly spaced.
        cut_layer: the first layer that sees the kept set.
        middle: keep the central frames instead of evenly spaced ones.
    """

    video_frames: int
    audio_steps: int
    cut_layer: int
    middle: bool = False


SETTINGS: dict[str, KindSetting] = {
    "halluc_visible": KindSetting(video_frames=1, audio_steps=0, cut_layer=1),
    "qa_colour": KindSetting(video_frames=1, audio_steps=0, cut_layer=1),
    "qa_shape": KindSetting(video_frames=1, audio_steps=0, cut_layer=1),
    "halluc_sound": KindSetting(video_frames=0, audio_steps=18, cut_layer=1),
    "qa_count": KindSetting(video_frames=0, audio_steps=9, cut_layer=1),
    "qa_order": KindSetting(video_frames=0, audio_steps=9, cut_layer=1),
    "sound_colour": KindSetting(video_frames=0, audio_steps=9, cut_layer=1),
    "match": KindSetting(video_frames=1, audio_steps=9, cut_layer=1),
    "qa_sounding": KindSetting(video_frames=1, audio_steps=9, cut_layer=1),
    "caption": KindSetting(video_frames=2, audio_steps=9, cut_layer=1, middle=True),
}
"""Per question kind: the cheapest of a grid (0/1/2/8 frames, 0/9/18/36 steps, cut at 1 or 2, middle or spread
frames) within about 2 points of full tokens on 240 val documents per task (docs/policies.md). Measured there:
18 evenly spaced steps count sounds worse than 9 (0.65 vs 0.94; all 36: 1.0)."""


def _template(question: str) -> re.Pattern[str]:
    """The question's wording with its slots as words, at the end of the prompt."""
    pattern = re.escape(question)
    for slot in ("colour", "shape", "other"):
        pattern = pattern.replace(re.escape("{" + slot + "}"), r"\w+")
    return re.compile(pattern + r"\s*$")


TEMPLATES: dict[str, re.Pattern[str]] = {
    kind: _template(question)
    for kind, question in sorted(QUESTIONS.items(), key=lambda item: "{" in item[1])  # fixed wordings first
}


def question_kind(question: str) -> str:
    """The AV-Synth kind whose template ``question`` (the prompt's question) ends with; a ValueError names the
    question otherwise. Fixed wordings are tried first ("what colour is the sound ?" is not a shape question)."""
    for kind, template in TEMPLATES.items():
        if template.search(question):
            return kind
    raise ValueError(
        f"question {question!r} matches no AV-Synth template; the avsynth_senses rule knows {sorted(TEMPLATES)}"
    )


def _spread(chunks: torch.Tensor, wanted: int, middle: bool) -> torch.Tensor:
    """``wanted`` of the sorted chunk labels ``chunks``: the central ones, or spread evenly."""
    if middle:
        wanted = min(max(wanted, 0), len(chunks))
        start = (len(chunks) - wanted) // 2
        return chunks[start : start + wanted]
    return chunks[spread_picks(len(chunks), min(wanted, len(chunks))).to(chunks.device)]


class AVSynthSenseRule:
    """Chooser: per sample, the :data:`SETTINGS` of its question's kind as explicit keep positions."""

    __name__ = "rule:avsynth_senses"

    def __init__(self, settings: dict[str, KindSetting] | None = None) -> None:
        self.settings = dict(settings or SETTINGS)

    def __call__(self, context: PruneContext) -> PruneDecision | None:
        if context.stage != "global":
            return None
        if context.samples is None or any(info.question is None for info in context.samples):
            raise ValueError("the avsynth_senses rule reads each sample's question; none was given with the layout")
        batch = context.valid.shape[0]
        kinds = [question_kind(str(info.question)) for info in context.samples]
        video, audio = context.eligible_of("video"), context.eligible_of("audio")
        keep_rows, cut_layers = [], []
        for row, kind in enumerate(kinds):
            setting = self.settings[kind]
            kept = []
            for of_modality, wanted, middle in (
                (video, setting.video_frames, setting.middle),
                (audio, setting.audio_steps, False),
            ):
                eligible = of_modality[row]
                chunks = torch.unique(context.chunk[row][eligible])
                chosen = _spread(chunks, wanted, middle)
                kept.append(context.positions[row][eligible & torch.isin(context.chunk[row], chosen)])
            keep_rows.append(torch.cat(kept))
            cut_layers.append(setting.cut_layer)
        width = max(1, max(len(row) for row in keep_rows))
        positions = torch.full((batch, width), -1, dtype=torch.long, device=context.positions.device)
        for row, kept in enumerate(keep_rows):
            positions[row, : len(kept)] = kept
        return PruneDecision(
            keep_positions=positions,
            cut_layer=torch.tensor(cut_layers, device=context.positions.device),
            fine_ratio=0.0,
            notes=[{"kind": kind} for kind in kinds],
        )
