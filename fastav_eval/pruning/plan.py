"""Model-free bookkeeping of one pruned prefill.

:class:`PrefillPlan` follows the sequence through the decoder: which original positions are still present,
which slots are real tokens, and what each layer processed. The decoder calls :meth:`PrefillPlan.step`
before each layer and gathers its tensors with the returned index; :func:`simulate_prefill` drives the same
plan without a model (the FLOPs presets use it, so their counts come from the engine's own rules).

Batches stay dense: every row keeps the same number of slots. A row that keeps fewer tokens than the longest
row fills the gap with *filler* slots (its earliest non-kept positions: its left padding first), which the
per-layer attention masks hide exactly like padding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastav_eval.pruning.config import PruningConfig
from fastav_eval.pruning.flops import DecoderShape, relative_flops
from fastav_eval.pruning.layout import MODALITY_NAMES, ModalityLayout
from fastav_eval.pruning.profile import PruningProfile
from fastav_eval.pruning.rules import (
    PruneContext,
    PruneDecision,
    SampleInfo,
    Stage,
    apply_decision,
    as_decisions,
    fine_keep,
    global_keep,
    rule_needs_scores,
)


@dataclass(frozen=True)
class SampleStats:
    """What one sample's prefill processed (:meth:`PrefillStats.sample`): the engine's hand-off to the sample's
    record (:meth:`fastav_eval.records.SampleRecord.measured`), which derives the rest from it.

    Attributes:
        tokens_per_layer: ``[num_layers]`` real tokens each layer processed, all modalities together.
        kept_per_layer: modality name -> ``[num_layers]`` tokens of that modality each layer processed.
        relative_flops: prefill FLOPs against the unpruned prefill (= 100), FastV's convention; None without a
            decoder shape.
        relative_flops_exact: the same in the ``exact`` convention (:mod:`fastav_eval.pruning.flops`).
    """

    tokens_per_layer: list[int]
    kept_per_layer: dict[str, list[int]]
    relative_flops: float | None = None
    relative_flops_exact: float | None = None
    prompt_per_modality: dict[str, int] | None = None
    """modality -> the prompt's tokens before the decoder, where an input cut (at layer 0) dropped some; None: layer
    0 processed the whole prompt (its counts are the prompt's)."""

    @property
    def prompt_tokens(self) -> int:
        """The whole prompt's tokens, padding excluded (what the unpruned prefill processes at every layer)."""
        if self.prompt_per_modality is not None:
            return sum(self.prompt_per_modality.values())
        return self.tokens_per_layer[0]


@dataclass(frozen=True)
class PrefillStats:
    """What one prefill processed, per sample and per layer.

    Attributes:
        tokens_per_layer: ``[B, num_layers]`` real (non-padding) tokens each layer processed.
        modality_per_layer: modality name -> ``[B, num_layers]`` tokens of that modality each layer processed.
        slots_per_layer: ``[num_layers]`` sequence length each layer computed over (including padding and
            filler slots of a batch; equal to ``tokens_per_layer`` at batch size 1).
        kv_positions: per layer, ``[B, L_i]`` original prompt positions held in that layer's KV cache
            (-1 on padding and filler slots).
        decisions: per sample, how its cut was chosen (layer, by whom, fine ratio, a chooser's keep fractions,
            orders and notes); empty for a sample never cut.
        prompt_per_modality: modality name -> ``[B]`` the prompt's tokens of that modality before the decoder
            (layer 0's counts unless an input cut dropped some there).
    """

    tokens_per_layer: torch.Tensor
    modality_per_layer: dict[str, torch.Tensor]
    slots_per_layer: list[int]
    kv_positions: list[torch.Tensor]
    decisions: list[dict[str, object]] = dataclasses.field(default_factory=list)
    prompt_per_modality: dict[str, torch.Tensor] | None = None

    @property
    def num_layers(self) -> int:
        return self.tokens_per_layer.shape[1]

    @property
    def prompt_tokens(self) -> torch.Tensor:
        """``[B]`` the whole prompt's tokens, padding excluded."""
        if self.prompt_per_modality is None:
            return self.tokens_per_layer[:, 0]
        return torch.stack(list(self.prompt_per_modality.values())).sum(0)

    def relative_flops(self, shape: DecoderShape, convention: str = "fastv") -> torch.Tensor:
        """``[B]`` prefill FLOPs of each sample relative to its unpruned prefill over the whole prompt (= 100)."""
        return relative_flops(self.tokens_per_layer, shape, convention, prompt_tokens=self.prompt_tokens)

    def sample(self, index: int, shape: DecoderShape | None = None) -> SampleStats:
        """Sample ``index``'s counts per layer (per modality too), and its relative FLOPs if ``shape`` is given."""
        fastv = exact = None
        if shape is not None:
            fastv = float(self.relative_flops(shape, "fastv")[index])
            exact = float(self.relative_flops(shape, "exact")[index])
        prompt = None
        cut_before_layer_0 = int(self.prompt_tokens[index]) != int(self.tokens_per_layer[index, 0])
        if self.prompt_per_modality is not None and cut_before_layer_0:
            prompt = {name: int(counts[index]) for name, counts in self.prompt_per_modality.items()}
        return SampleStats(
            tokens_per_layer=self.tokens_per_layer[index].tolist(),
            kept_per_layer={name: counts[index].tolist() for name, counts in self.modality_per_layer.items()},
            prompt_per_modality=prompt,
            relative_flops=fastv,
            relative_flops_exact=exact,
        )


class PrefillPlan:
    """The state of one prefill as tokens are dropped layer by layer.

    Each sample is cut once, at its own layer: the global stage's (``global_layer``) or the ``cut_layer`` an outside
    chooser's decision gives it. After its cut the fine stage runs at the sample's own ratio.

    Args:
        layout: modality labels of the prompt, ``[B, L]``.
        config: a config already passed through :meth:`PruningConfig.resolve`.
        num_layers: decoder depth.
        samples: per-sample :class:`SampleInfo` handed to the chooser (one per row), or None.
    """

    def __init__(
        self,
        layout: ModalityLayout,
        config: PruningConfig,
        num_layers: int,
        samples: tuple[SampleInfo, ...] | None = None,
    ) -> None:
        if config.global_layer is None:
            raise ValueError("PrefillPlan needs a resolved config (call config.resolve(num_layers))")
        if samples is not None and len(samples) != layout.batch_size:
            raise ValueError(f"{len(samples)} SampleInfo for a batch of {layout.batch_size}; give one per row")
        self.layout = layout
        self.config = config
        self.num_layers = num_layers
        self.samples = samples
        batch, length = layout.batch_size, layout.length
        self.positions = torch.arange(length, device=layout.device).expand(batch, length).contiguous()
        self.valid = layout.valid.clone()
        self.prompt_valid = self.valid
        """The whole prompt's validity (this very object until the first cut): what a layer no cut reached holds."""
        self._protected = layout.protected(config.sink_tokens)
        self._generator = torch.Generator().manual_seed(config.seed)
        device = layout.device
        self.cut_layer = torch.full((batch,), -1, dtype=torch.long, device=device)
        """``[B]`` the layer each sample's cut is (or was) scheduled for; -1 while undecided."""
        self.fine_ratio = torch.full((batch,), float(config.fine_ratio), dtype=torch.float64, device=device)
        """``[B]`` each sample's fine ratio after its cut."""
        self._held: list[tuple[PruneDecision, torch.Tensor]] = []  # chooser decisions waiting for their cut layer
        self.decisions: list[dict[str, object]] = [{} for _ in range(batch)]
        """Per sample, what its cut was: the layer, the rule or decision that chose it, and its fine ratio."""
        self._tokens: list[torch.Tensor] = []
        self._modality: dict[str, list[torch.Tensor]] = {name: [] for name in MODALITY_NAMES}
        self._slots: list[int] = []
        self._kv_positions: list[torch.Tensor] = []

    # ------------------------------------------------------------------ schedule
    def stage_at(self, layer_idx: int) -> Stage | None:
        """The prune stage that runs just before ``layer_idx``, if any: "global" while samples wait for their cut,
        "fine" after ``global_layer``."""
        config, global_layer = self.config, self.config.global_layer
        assert global_layer is not None
        if layer_idx < 1:  # before the decoder: only for a chooser that cuts the input, while it has samples to decide
            cuts_input = bool(getattr(config.chooser, "cuts_input", False))
            return "global" if layer_idx == 0 and cuts_input and bool((self.cut_layer < 0).any()) else None
        if layer_idx <= global_layer:
            if layer_idx == global_layer and config.global_rule is not None:
                return "global"
            # Only a chooser schedules cuts before global_layer (the global rule cuts at it, once it is reached).
            waiting = bool(((self.cut_layer >= layer_idx) | (self.cut_layer < 0)).any())
            if (config.chooser is not None and waiting) or bool(self._fine_rows(layer_idx).any()):
                return "global"
            return None
        if config.chooser is not None or bool((self.fine_ratio > 0).any()):
            return "fine"
        return None

    def _fine_rows(self, layer_idx: int) -> torch.Tensor:
        """``[B]`` bool: samples cut before ``layer_idx`` whose fine stage drops tokens there."""
        return (self.cut_layer >= 0) & (self.cut_layer < layer_idx) & (self.fine_ratio > 0)

    def needs_scores(self, layer_idx: int) -> bool:
        """Whether the prune point after ``layer_idx`` reads that layer's last-query scores."""
        stage = self.stage_at(layer_idx + 1) if layer_idx + 1 < self.num_layers else None
        if stage is None:
            return False
        chooser = self.config.chooser
        if chooser is not None:
            points = getattr(chooser, "scored_points", None)  # a chooser may say where it reads scores
            return True if not callable(points) else layer_idx + 1 in points(self.num_layers)
        fine_here = stage == "fine" or bool(self._fine_rows(layer_idx + 1).any())
        if fine_here and rule_needs_scores(self.config.fine_rule):
            return True
        return (
            stage == "global"
            and layer_idx + 1 == self.config.global_layer
            and rule_needs_scores(self.config.global_rule)
        )

    # ------------------------------------------------------------------ steps
    def context(
        self, stage: Stage, layer_idx: int, scores: torch.Tensor | None, hidden: torch.Tensor | None = None
    ) -> PruneContext:
        gather = self.positions
        return PruneContext(
            stage=stage,
            layer_idx=layer_idx,
            positions=gather,
            modality=torch.where(self.valid, self.layout.modality.gather(1, gather), -1),
            rank=self.layout.rank.gather(1, gather),
            chunk=self.layout.chunk.gather(1, gather),
            frame=self.layout.frame.gather(1, gather),  # type: ignore[union-attr]  # __post_init__ fills it
            valid=self.valid,
            protected=self._protected.gather(1, gather) & self.valid,
            scores=None if scores is None else scores.float().masked_fill(~self.valid, 0.0),
            generator=self._generator,
            undecided=self.cut_layer < 0,
            hidden=hidden,
            samples=self.samples,
            num_layers=self.num_layers,
        )

    def step(
        self, layer_idx: int, scores: torch.Tensor | None = None, hidden: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """Run the prune point before ``layer_idx`` (if any); record what the layer will process.

        Args:
            layer_idx: the layer about to run.
            scores: ``[B, L_cur]`` last-query scores of layer ``layer_idx - 1`` when :meth:`needs_scores` said so.
            hidden: ``[B, L_cur, D]`` the hidden states entering the layer, for the chooser (optional).

        Returns:
            ``[B, L_new]`` sorted indices into the current sequence to gather hidden states (and cos/sin)
            with, or None when the sequence is unchanged.
        """
        index = None
        stage = self.stage_at(layer_idx)
        if stage is not None:
            keep = self._choose(stage, layer_idx, scores, hidden)
            index = self._compact(keep)
        self._record()
        return index

    def _choose(
        self, stage: Stage, layer_idx: int, scores: torch.Tensor | None, hidden: torch.Tensor | None
    ) -> torch.Tensor:
        context = self.context(stage, layer_idx, scores, hidden)
        config = self.config
        if stage == "fine":
            keep = fine_keep(context, config.fine_rule, self.fine_ratio)
            for decision in as_decisions(config.chooser(context) if config.chooser is not None else None):
                chosen = apply_decision(decision, context, config.fine_rule)
                keep = (
                    chosen if decision.rows is None else torch.where(_rows(decision.rows, keep)[:, None], chosen, keep)
                )
            return (keep & self.valid) | context.protected
        # Samples cut at an earlier layer run their fine step; the others are kept whole unless cut here.
        keep = torch.ones_like(self.valid)
        fine_rows = self._fine_rows(layer_idx)
        if bool(fine_rows.any()):
            keep = torch.where(fine_rows[:, None], fine_keep(context, config.fine_rule, self.fine_ratio), keep)
        if config.chooser is not None and bool(context.undecided.any()):
            for decision in as_decisions(config.chooser(context)):
                self._schedule(decision, context)
        rule = config.global_rule or "positional"
        for decision, rows in self._held:
            due = rows & (self.cut_layer == layer_idx)
            if bool(due.any()):
                keep = torch.where(due[:, None], apply_decision(decision, context, rule), keep)
        undecided = self.cut_layer < 0
        if layer_idx == config.global_layer and bool(undecided.any()) and config.global_rule is not None:
            assert isinstance(config.profile, PruningProfile), "resolve() loads the profile"
            keep = torch.where(undecided[:, None], global_keep(context, config.global_rule, config.profile), keep)
            for row in torch.nonzero(undecided).flatten().tolist():
                self.decisions[row] = {"cut_layer": layer_idx, "by": f"global_rule {config.global_rule}",
                                       "fine_ratio": float(self.fine_ratio[row])}  # fmt: skip
            self.cut_layer = torch.where(undecided, layer_idx, self.cut_layer)
        return (keep & self.valid) | context.protected

    def _schedule(self, decision: PruneDecision, context: PruneContext) -> None:
        """Hold a global-stage decision for its samples until their cut layers."""
        global_layer = self.config.global_layer
        assert global_layer is not None
        rows = context.undecided.clone()
        if decision.rows is not None:
            rows &= _rows(decision.rows, rows)
        twice = rows & (self.cut_layer >= 0)  # decided by an earlier decision of the same call
        if bool(twice.any()):
            raise ValueError(
                f"two decisions of one chooser call at layer {context.layer_idx} both decide sample "
                f"{int(torch.nonzero(twice)[0])}; give each decision of a list disjoint rows"
            )
        if not bool(rows.any()):
            return
        layer = context.layer_idx if decision.cut_layer is None else decision.cut_layer
        cut = torch.as_tensor(layer, dtype=torch.long, device=rows.device).expand(rows.shape[0])
        late = rows & ((cut < context.layer_idx) | (cut > global_layer))
        if bool(late.any()):
            row = int(torch.nonzero(late)[0])
            raise ValueError(
                f"a decision at layer {context.layer_idx} gives sample {row} cut_layer={int(cut[row])}; accepted: "
                f"{context.layer_idx}..{global_layer} (from the current layer up to global_layer)"
            )
        self.cut_layer = torch.where(rows, cut, self.cut_layer)
        if decision.fine_ratio is not None:
            ratio = torch.as_tensor(decision.fine_ratio, dtype=torch.float64, device=rows.device)
            self.fine_ratio = torch.where(rows, ratio.expand(rows.shape[0]), self.fine_ratio)
        self._held.append((decision, rows))
        chooser = self.config.chooser
        name = getattr(chooser, "__name__", type(chooser).__name__)
        for row in torch.nonzero(rows).flatten().tolist():
            self.decisions[row] = {"cut_layer": int(cut[row]), "by": name, "decided_at": context.layer_idx,
                                   "fine_ratio": float(self.fine_ratio[row]), **decision.describe_row(row)}  # fmt: skip

    def _compact(self, keep: torch.Tensor) -> torch.Tensor | None:
        """Drop the tokens not in ``keep`` ``[B, L_cur]``; pad short rows with filler slots."""
        kept_per_row = keep.sum(1)
        new_length = int(kept_per_row.max())
        if new_length == keep.shape[1] and bool((keep == self.valid).all()):
            return None
        slot = torch.arange(keep.shape[1], device=keep.device).expand_as(keep)
        order_key = torch.where(keep, slot, slot + keep.shape[1])  # kept tokens first, then earliest others
        index = torch.topk(order_key, new_length, dim=1, largest=False).indices.sort(dim=1).values
        self.positions = self.positions.gather(1, index)
        self.valid = keep.gather(1, index)
        return index

    def _record(self) -> None:
        modality = self.layout.modality.gather(1, self.positions)
        for name, code in MODALITY_NAMES.items():
            self._modality[name].append(((modality == code) & self.valid).sum(1))
        self._tokens.append(self.valid.sum(1))
        self._slots.append(self.valid.shape[1])
        self._kv_positions.append(torch.where(self.valid, self.positions, -1))

    def stats(self) -> PrefillStats:
        """The statistics of every layer run so far."""
        return PrefillStats(
            tokens_per_layer=torch.stack(self._tokens, 1),
            modality_per_layer={name: torch.stack(counts, 1) for name, counts in self._modality.items()},
            slots_per_layer=list(self._slots),
            kv_positions=list(self._kv_positions),
            decisions=[dict(entry) for entry in self.decisions],
            prompt_per_modality={
                name: ((self.layout.modality == code) & self.prompt_valid).sum(1)
                for name, code in MODALITY_NAMES.items()
            },
        )


def _rows(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    rows = torch.as_tensor(rows, device=like.device)
    if rows.dtype != torch.bool or rows.shape != (like.shape[0],):
        raise ValueError(
            f"PruneDecision rows must be a [{like.shape[0]}] bool tensor; got {rows.dtype} {tuple(rows.shape)}"
        )
    return rows


ScoreFunction = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(layer_idx, positions [B, L_cur], valid [B, L_cur]) -> scores [B, L_cur]``, for :func:`simulate_prefill`."""


def simulate_prefill(
    layout: ModalityLayout,
    config: PruningConfig,
    num_layers: int,
    score_fn: ScoreFunction | None = None,
) -> PrefillStats:
    """Run the engine's prune schedule over ``layout`` without a model.

    For the built-in rules and most methods token counts do not depend on the scores (only *which* tokens go does),
    so the default scores, seeded uniform noise, give the exact counts a real prefill produces. A chooser whose counts
    depend on the content (``content_dependent_counts``: VidCom²'s frame shares, SEATS's per-window minimums) gets
    no hidden states here and gives its content-free counts, which a real prefill approaches but need not equal.
    """
    config = config.resolve(num_layers)
    plan = PrefillPlan(layout, config, num_layers)
    noise = torch.Generator().manual_seed(config.seed + 1)
    scores = None
    for layer_idx in range(num_layers):
        plan.step(layer_idx, scores)
        scores = None
        if plan.needs_scores(layer_idx):
            if score_fn is not None:
                scores = score_fn(layer_idx, plan.positions, plan.valid)
            else:
                scores = torch.rand(plan.positions.shape, generator=noise)
    return plan.stats()
