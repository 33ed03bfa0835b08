"""Which tokens survive a prune point.

At every prune point the engine builds a :class:`PruneContext` over the tokens currently in the sequence and
asks, in order: the outside chooser (if any), then the stage's built-in rule. Each returns a keep mask over
the current tokens; the engine then forces protected tokens back in.

All tensors in a context are ``[B, L_cur]``: one column per token currently in the sequence, in ascending
original position.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from fastav_eval.pruning.layout import AV_MODALITIES, Modality, modality_code
from fastav_eval.pruning.profile import PruningProfile

Stage = Literal["global", "fine"]

DECISION_ORDERS: tuple[str, ...] = ("rule", "prefix", "evenly_spaced", "most_attended")
"""Which tokens a keep fraction keeps: the stage's own rule ordering, the first ones, ones spread evenly over the
modality's current tokens (a frame or time step in every stretch), or the ones the last query attends to most."""


@dataclass(frozen=True)
class PruneContext:
    """What a rule or chooser sees at one prune point.

    Attributes:
        stage: "global" (at ``global_layer``) or "fine" (every later layer).
        layer_idx: the first layer that will see the pruned sequence.
        positions: ``[B, L_cur]`` original prompt position of each current token.
        modality, rank, chunk: ``[B, L_cur]`` layout labels of the current tokens (``PAD`` on filler slots).
        valid: ``[B, L_cur]`` bool, False on padding and filler slots.
        protected: ``[B, L_cur]`` bool, tokens that are kept whatever the rule says.
        scores: ``[B, L_cur]`` fp32 last-query attention of the layer before ``layer_idx`` (head-averaged),
            or None when no rule in use needs it.
        generator: RNG of the random rules.
    """

    stage: Stage
    layer_idx: int
    positions: torch.Tensor
    modality: torch.Tensor
    rank: torch.Tensor
    chunk: torch.Tensor
    valid: torch.Tensor
    protected: torch.Tensor
    scores: torch.Tensor | None
    generator: torch.Generator

    @property
    def eligible(self) -> torch.Tensor:
        """``[B, L_cur]`` bool: audio-visual tokens a rule may drop."""
        av = (self.modality == Modality.VIDEO) | (self.modality == Modality.AUDIO)
        return av & self.valid & ~self.protected

    def eligible_of(self, name: str) -> torch.Tensor:
        """``[B, L_cur]`` bool: droppable tokens of modality ``name``."""
        return self.eligible & (self.modality == modality_code(name))


@dataclass(frozen=True)
class PruneDecision:
    """An outside chooser's answer at one prune point. Set exactly one field.

    Attributes:
        keep_fraction: modality -> share of its currently droppable tokens to keep, a float or a ``[B]``
            tensor (per sample). Which tokens is decided by ``order``. Modalities not named are kept whole.
        keep_positions: ``[B, K]`` original prompt positions to keep (pad rows with -1). Droppable tokens not
            listed are dropped.
        order: with ``keep_fraction``, modality -> one of :data:`DECISION_ORDERS`; a modality not named uses
            ``rule``, the stage's own ordering (prefix order for the positional global rule, scores for the
            attentive rules).
    """

    keep_fraction: Mapping[str, float | torch.Tensor] | None = None
    keep_positions: torch.Tensor | None = None
    order: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if (self.keep_fraction is None) == (self.keep_positions is None):
            raise ValueError("PruneDecision needs exactly one of keep_fraction, keep_positions")
        if self.order is not None:
            if self.keep_fraction is None:
                raise ValueError("PruneDecision order applies to keep_fraction; keep_positions lists the tokens")
            for name, order in self.order.items():
                if name not in AV_MODALITIES:
                    raise ValueError(f"order key {name!r}; accepted: {list(AV_MODALITIES)}")
                if order not in DECISION_ORDERS:
                    raise ValueError(f"order[{name!r}]={order!r}; accepted: {list(DECISION_ORDERS)}")
        if self.keep_fraction is not None:
            for name, fraction in self.keep_fraction.items():
                if name not in AV_MODALITIES:
                    raise ValueError(f"keep_fraction key {name!r}; accepted: {list(AV_MODALITIES)}")
                values = torch.as_tensor(fraction, dtype=torch.float32)
                if bool(((values < 0) | (values > 1)).any()):
                    raise ValueError(f"keep_fraction[{name!r}]={fraction!r}; accepted: values in [0, 1]")


class Chooser(Protocol):
    """An outside chooser: return a decision, or None to let the built-in rule decide."""

    def __call__(self, context: PruneContext) -> PruneDecision | None: ...


# ---------------------------------------------------------------------------------------------- selection
def select_top(priority: torch.Tensor, eligible: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """Keep the ``budget[b]`` highest-priority eligible tokens of each row (ties go to earlier positions).

    Args:
        priority: ``[B, L]`` float, higher is kept first.
        eligible: ``[B, L]`` bool.
        budget: ``[B]`` int.

    Returns:
        ``[B, L]`` bool keep mask, a subset of ``eligible``.
    """
    masked = priority.float().masked_fill(~eligible, float("-inf"))
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return eligible & (ranks < budget.to(ranks.device)[:, None])


def rule_priority(rule: str, context: PruneContext) -> torch.Tensor:
    """``[B, L_cur]`` keep priority of a rule: higher is kept first.

    ``positional`` prefers earlier tokens of each modality; ``low_attentive`` drops the least-attended,
    so it keeps by score; ``top_attentive`` drops the most-attended; ``random`` draws from the context RNG.
    """
    if rule == "positional":
        return -context.rank.float()
    if rule == "random":
        noise = torch.rand(context.valid.shape, generator=context.generator, device=context.generator.device)
        return noise.to(context.valid.device)
    if context.scores is None:
        raise RuntimeError(f"rule {rule!r} needs last-query scores, and none were recorded")
    if rule == "low_attentive":
        return context.scores
    if rule == "top_attentive":
        return -context.scores
    raise ValueError(f"rule={rule!r}; accepted: positional, random, low_attentive, top_attentive")


def global_keep(context: PruneContext, rule: str, profile: PruningProfile) -> torch.Tensor:
    """``[B, L_cur]`` bool keep mask of the global stage.

    ``positional`` keeps the profile's per-modality prefix. The other rules keep, per sample, as many
    audio-visual tokens as that prefix holds, pooled over modalities and chosen by :func:`rule_priority`.
    """
    eligible = context.eligible
    prefix = ~eligible
    for name in AV_MODALITIES:
        of_modality = context.eligible_of(name)
        rule_for_modality = profile.keep.get(name)
        prefix |= (
            of_modality
            if rule_for_modality is None
            else rule_for_modality.keep_mask(context.rank, context.chunk, of_modality)
        )
    if rule == "positional":
        return prefix
    budget = (prefix & eligible).sum(1)
    return ~eligible | select_top(rule_priority(rule, context), eligible, budget)


def fine_keep(context: PruneContext, rule: str, ratio: float) -> torch.Tensor:
    """``[B, L_cur]`` bool keep mask of a fine step: drop ``floor(ratio * n_droppable)`` tokens per sample."""
    eligible = context.eligible
    count = eligible.sum(1)
    budget = count - torch.floor(count.double() * ratio).long()
    return ~eligible | select_top(rule_priority(rule, context), eligible, budget)


def evenly_spaced(eligible: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """Keep ``budget[b]`` of each row's eligible tokens, spread evenly: of n tokens in sequence order, the
    ``floor((i + 0.5) · n / k)``-th for ``i < k`` (the middle of each of k equal stretches).

    Args:
        eligible: ``[B, L]`` bool.
        budget: ``[B]`` int, at most each row's eligible count.

    Returns:
        ``[B, L]`` bool keep mask, a subset of ``eligible``.
    """
    keep = torch.zeros_like(eligible)
    for row in range(eligible.shape[0]):
        columns = torch.nonzero(eligible[row]).flatten()
        count, wanted = len(columns), int(budget[row])
        if wanted <= 0 or count == 0:
            continue
        picks = ((torch.arange(wanted, dtype=torch.float64) + 0.5) * count / wanted).floor().long()
        keep[row, columns[picks.clamp(max=count - 1)]] = True
    return keep


def _order_priority(order: str, rule: str, context: PruneContext) -> torch.Tensor:
    if order == "rule":
        return rule_priority(rule, context)
    if order == "prefix":
        return rule_priority("positional", context)
    if context.scores is None:
        raise RuntimeError(
            f"order 'most_attended' at the {context.stage} stage (layer {context.layer_idx}) needs last-query scores, "
            "and none were recorded there: use an attentive rule for that stage, or another order"
        )
    return context.scores


def apply_decision(decision: PruneDecision, context: PruneContext, rule: str) -> torch.Tensor:
    """``[B, L_cur]`` bool keep mask from an outside chooser's decision; ``decision.order`` (default: ``rule``, the
    stage's own) says which tokens a keep fraction keeps."""
    eligible = context.eligible
    if decision.keep_positions is not None:
        wanted = decision.keep_positions.to(context.positions.device)
        listed = (context.positions[:, :, None] == wanted[:, None, :]).any(-1)
        return ~eligible | (eligible & listed)
    keep = ~eligible
    orders = decision.order or {}
    for name in AV_MODALITIES:
        of_modality = context.eligible_of(name)
        if decision.keep_fraction is None or name not in decision.keep_fraction:
            keep |= of_modality
            continue
        fraction = torch.as_tensor(decision.keep_fraction[name], dtype=torch.float64, device=eligible.device)
        budget = torch.round(of_modality.sum(1).double() * fraction).long().expand(eligible.shape[0])
        order = orders.get(name, "rule")
        if order == "evenly_spaced":
            keep |= evenly_spaced(of_modality, budget)
        else:
            keep |= select_top(_order_priority(order, rule, context), of_modality, budget)
    return keep
