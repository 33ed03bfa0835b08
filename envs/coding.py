"""What a TokenRetention policy sees of a sample and what its action means.

One place for both, used by the environment (:mod:`fastav_eval.envs.retention`) and by the learned chooser that
deploys a trained policy (:mod:`fastav_eval.policies.chooser`), so a policy reads and acts at inference exactly
as it did in training. Both happen at layer 1, before any token is dropped: the observation needs only what the
engine hands a chooser there (:class:`~fastav_eval.pruning.PruneContext`: the hidden states entering layer 1 and
layer 0's last-query scores), and the action becomes one :class:`~fastav_eval.pruning.PruneDecision` per group of
samples that share orders.

Observation ``[OBSERVATION_SIZE]`` float32:
    - ``QUESTION_DIM`` values: the question's hidden states entering layer 1 (the text tokens after the last
      audio-visual token), mean-pooled, L2-normalised and projected by a fixed seeded Gaussian matrix;
    - per modality (video, audio): its share of the prompt's tokens;
    - per modality: its share of layer 0's last-query attention, and the share of that held by its top tenth.

Action ``MultiDiscrete`` over :data:`ACTION_FIELDS`: keep fractions of video and audio (:data:`KEEP_FRACTIONS`,
of whole chunks, i.e. frames and audio steps, where the layout has several per modality), the cut layer
(1..``global_layer``), each modality's order (:data:`ORDERS`) and the fine ratio after the cut
(:data:`FINE_RATIOS`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from fastav_eval.pruning import PruneContext, PruneDecision
from fastav_eval.pruning.layout import AV_MODALITIES, Modality

KEEP_FRACTIONS: tuple[float, ...] = (0.0, 0.125, 0.25, 0.5, 1.0)
ORDERS: tuple[str, ...] = ("evenly_spaced", "prefix", "most_attended")
FINE_RATIOS: tuple[float, ...] = (0.0, 0.1, 0.2)
ACTION_FIELDS: tuple[str, ...] = ("video_keep", "audio_keep", "cut_layer", "video_order", "audio_order", "fine_ratio")
QUESTION_DIM = 32
OBSERVATION_SIZE = QUESTION_DIM + 3 * len(AV_MODALITIES)
OBSERVATION_BOUND = 10.0
TOP_SHARE = 0.1
"""The top tenth of a modality's tokens by score, whose share of its attention says how peaked it is."""


@dataclass(frozen=True)
class RetentionCoding:
    """The observation and action coding for one decoder.

    Attributes:
        global_layer: the latest cut layer an action can ask for (cut layers are 1..global_layer).
        hidden_size: the decoder's hidden size (the question projection's input).
        projection_seed: seed of the question projection.
    """

    global_layer: int
    hidden_size: int
    projection_seed: int = 0

    def __post_init__(self) -> None:
        if self.global_layer < 1:
            raise ValueError(f"global_layer={self.global_layer}; accepted: >= 1 (the first cut is before layer 1)")

    # ------------------------------------------------------------------ spaces
    @property
    def action_sizes(self) -> tuple[int, ...]:
        return (
            len(KEEP_FRACTIONS), len(KEEP_FRACTIONS), self.global_layer, len(ORDERS), len(ORDERS), len(FINE_RATIOS),
        )  # fmt: skip

    def action_space(self) -> spaces.MultiDiscrete:
        return spaces.MultiDiscrete(np.array(self.action_sizes, dtype=np.int64))

    def observation_space(self) -> spaces.Box:
        return spaces.Box(-OBSERVATION_BOUND, OBSERVATION_BOUND, shape=(OBSERVATION_SIZE,), dtype=np.float32)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetentionCoding:
        return cls(**data)

    # ------------------------------------------------------------------ observation
    def _projection(self, device: torch.device) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.projection_seed)
        return torch.randn(self.hidden_size, QUESTION_DIM, generator=generator, dtype=torch.float64).to(device)

    def observe(self, context: PruneContext) -> np.ndarray:
        """``[B, OBSERVATION_SIZE]`` float32 observations of the context's samples (at layer 1, nothing dropped)."""
        if context.hidden is None or context.scores is None:
            raise ValueError(
                "observe needs the context's hidden states and last-query scores (a chooser's context at layer 1)"
            )
        if context.hidden.shape[-1] != self.hidden_size:
            raise ValueError(
                f"hidden size {context.hidden.shape[-1]} but this coding was made for {self.hidden_size}: the policy "
                "was trained on another model"
            )
        hidden = context.hidden.double()
        scores = context.scores.double().masked_fill(~context.valid, 0.0)
        av = (context.modality == Modality.VIDEO) | (context.modality == Modality.AUDIO)
        column = torch.arange(av.shape[1], device=av.device).expand_as(av)
        last_av = torch.where(av, column, -1).max(1, keepdim=True).values
        text = (context.modality == Modality.TEXT) & context.valid
        question = text & (column > last_av)
        question = torch.where(question.any(1, keepdim=True), question, text)
        pooled = (hidden * question[..., None]).sum(1) / question.sum(1, keepdim=True).clamp(min=1)
        pooled = pooled / pooled.norm(dim=1, keepdim=True).clamp(min=1e-12)
        features = [pooled @ self._projection(hidden.device)]
        valid_count = context.valid.sum(1, keepdim=True).clamp(min=1).double()
        total_mass = scores.sum(1, keepdim=True).clamp(min=1e-12)
        counts, shares, peaks = [], [], []
        for name in AV_MODALITIES:
            of_modality = (context.modality == int(Modality[name.upper()])) & context.valid
            counts.append(of_modality.sum(1, keepdim=True) / valid_count)
            mass = scores.masked_fill(~of_modality, 0.0)
            modality_mass = mass.sum(1, keepdim=True)
            shares.append(modality_mass / total_mass)
            top = torch.ceil(of_modality.sum(1).double() * TOP_SHARE).long()
            ranked = mass.sort(1, descending=True).values
            top_mass = (ranked * (torch.arange(ranked.shape[1], device=ranked.device) < top[:, None])).sum(1, True)
            peaks.append(top_mass / modality_mass.clamp(min=1e-12))
        features += counts + shares + peaks
        observation = torch.cat(features, 1).clamp(-OBSERVATION_BOUND, OBSERVATION_BOUND)
        return observation.float().cpu().numpy()

    # ------------------------------------------------------------------ action
    def check_action(self, action: Any) -> np.ndarray:
        """``action`` as an int64 ``[len(ACTION_FIELDS)]`` array; a malformed one is a ValueError naming the field."""
        values = np.asarray(action)
        if values.shape != (len(ACTION_FIELDS),):
            raise ValueError(
                f"action has shape {values.shape}; accepted: ({len(ACTION_FIELDS)},) integers, one per {ACTION_FIELDS}"
            )
        integral = np.issubdtype(values.dtype, np.integer) or (
            np.issubdtype(values.dtype, np.floating) and bool(np.all(values == np.round(values)))
        )
        if not integral:
            raise ValueError(f"action {values.tolist()} is not integral; accepted: integers per {ACTION_FIELDS}")
        values = values.astype(np.int64)
        for name, value, size in zip(ACTION_FIELDS, values, self.action_sizes, strict=True):
            if not 0 <= value < size:
                raise ValueError(f"action {name}={int(value)}; accepted: 0..{size - 1} ({self.describe_field(name)})")
        return values

    def describe_field(self, name: str) -> str:
        choices = {"video_keep": KEEP_FRACTIONS, "audio_keep": KEEP_FRACTIONS, "video_order": ORDERS,
                   "audio_order": ORDERS, "fine_ratio": FINE_RATIOS,
                   "cut_layer": tuple(range(1, self.global_layer + 1))}[name]  # fmt: skip
        return f"index into {list(choices)}"

    def describe(self, action: np.ndarray) -> dict[str, Any]:
        """What an action asks for, by name (JSON-ready)."""
        values = self.check_action(action)
        return {
            "video_keep": KEEP_FRACTIONS[values[0]],
            "audio_keep": KEEP_FRACTIONS[values[1]],
            "cut_layer": int(values[2]) + 1,
            "video_order": ORDERS[values[3]],
            "audio_order": ORDERS[values[4]],
            "fine_ratio": FINE_RATIOS[values[5]],
        }

    def decisions(
        self, actions: np.ndarray, context: PruneContext, rows: torch.Tensor | None = None
    ) -> list[PruneDecision]:
        """One decision per group of ``rows`` (default: the undecided samples) sharing orders, from ``actions``
        ``[B, len(ACTION_FIELDS)]`` (one row per sample of the context; rows not decided are ignored).

        "evenly_spaced" keeps whole chunks (frames, audio steps) where every sample has several chunks of the
        modality, else single tokens spread evenly.
        """
        batch = context.valid.shape[0]
        device = context.positions.device
        if actions.shape != (batch, len(ACTION_FIELDS)):
            raise ValueError(f"actions have shape {actions.shape}; accepted: ({batch}, {len(ACTION_FIELDS)})")
        checked = np.stack([self.check_action(row) for row in actions])
        rows = context.undecided if rows is None else rows.to(device) & context.undecided
        spaced = {}
        for name in AV_MODALITIES:
            of_modality = context.eligible_of(name)
            chunks = [len(torch.unique(context.chunk[row][of_modality[row]])) for row in range(batch)]
            spaced[name] = "evenly_spaced_chunks" if min(chunks) >= 2 else "evenly_spaced"
        keep_fraction = {
            name: torch.tensor([KEEP_FRACTIONS[i] for i in checked[:, column]], dtype=torch.float64, device=device)
            for column, name in enumerate(AV_MODALITIES)
        }
        cut_layer = torch.tensor(checked[:, 2] + 1, dtype=torch.long, device=device)
        fine_ratio = torch.tensor([FINE_RATIOS[i] for i in checked[:, 5]], dtype=torch.float64, device=device)
        notes = [{"action": self.describe(row)} for row in checked]
        decisions = []
        for video_order, audio_order in sorted({(int(a[3]), int(a[4])) for a in checked[rows.cpu().numpy()]}):
            group = rows & torch.tensor((checked[:, 3] == video_order) & (checked[:, 4] == audio_order), device=device)
            order = {
                name: spaced[name] if ORDERS[index] == "evenly_spaced" else ORDERS[index]
                for name, index in zip(AV_MODALITIES, (video_order, audio_order), strict=True)
            }
            decisions.append(
                PruneDecision(
                    keep_fraction=keep_fraction, order=order, cut_layer=cut_layer, fine_ratio=fine_ratio, rows=group,
                    notes=notes,
                )
            )  # fmt: skip
        return decisions
