"""Which tokens survive a prune point.

At every prune point the engine builds a :class:`PruneContext` over the tokens currently in the sequence and
asks, in order: the outside chooser (if any), then the stage's built-in rule. Each returns a keep mask over
the current tokens; the engine then forces protected tokens back in. The built-in rules are the entries of
:data:`RULES`, the one table that config validation, the planner and the dispatch read.

An outside chooser decides each sample's *cut* once: it is asked before every layer from 1 up to ``global_layer``
while some sample is undecided (``PruneContext.undecided``) and may return None to wait for a later layer. A
decision says which tokens the sample keeps, at which layer the cut happens (``cut_layer``, at most
``global_layer``; default: this layer) and the fine ratio of the sample's later layers. Samples still undecided
at ``global_layer`` get the built-in global rule. After ``global_layer`` the chooser is asked again at every fine
step (``stage == "fine"``), where None means the built-in fine rule at each sample's own ratio.

All tensors in a context are ``[B, L_cur]``: one column per token currently in the sequence, in ascending
original position.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, Protocol

import torch

from fastav_eval.pruning.layout import AV_MODALITIES, Modality, modality_code
from fastav_eval.pruning.profile import PruningProfile

Stage = Literal["global", "fine"]

DECISION_ORDERS: tuple[str, ...] = ("rule", "prefix", "evenly_spaced", "evenly_spaced_chunks", "most_attended")
"""Which tokens a keep fraction keeps: the stage's own rule ordering, the first ones, ones spread evenly over the
modality's current tokens, whole chunks (a model's frames or audio time steps) spread evenly over the modality's
chunks (the fraction then counts chunks), or the ones the last query attends to most."""

ROUNDING_TOLERANCE = 1e-6
"""A keep budget is ``floor(count · fraction + 0.5 + tolerance)``: round half up, with a margin far above a float32's
error, so a fraction passed as a float32 tensor keeps as many tokens as the Python float it was made from."""


def keep_budget(count: torch.Tensor, fraction: float | torch.Tensor) -> torch.Tensor:
    """``[B]`` int: how many of ``count`` ``[B]`` items a keep ``fraction`` (a float or ``[B]``) keeps."""
    fraction = torch.as_tensor(fraction, device=count.device).double()
    return torch.floor(count.double() * fraction + 0.5 + ROUNDING_TOLERANCE).long().expand(count.shape[0])


@dataclass(frozen=True)
class SampleInfo:
    """What the caller knows about one sample of the batch, for choosers that read the question.

    Attributes:
        sample_id: the sample's identity, e.g. ``"avsynth_qa/17"`` (task and document id).
        question: the prompt text the model answers.
        token_ids: the prompt's token ids where the model is fed ids (None for ``inputs_embeds`` prompts).
    """

    sample_id: str | None = None
    question: str | None = None
    token_ids: tuple[int, ...] | None = None


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
        undecided: ``[B]`` bool, samples whose cut no decision has scheduled yet (all False at fine steps).
        hidden: ``[B, L_cur, D]`` the hidden states entering ``layer_idx`` (None in a simulated prefill).
        samples: per-sample :class:`SampleInfo` given with the layout, or None.
        num_layers: the decoder's depth.
        frame: ``[B, L_cur]`` layout frame labels of the current tokens (:attr:`ModalityLayout.frame`); None: the
            chunks.
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
    undecided: torch.Tensor
    hidden: torch.Tensor | None = None
    samples: tuple[SampleInfo, ...] | None = None
    num_layers: int | None = None
    frame: torch.Tensor | None = None

    @property
    def frames(self) -> torch.Tensor:
        """``[B, L_cur]`` frame labels: :attr:`frame`, or the chunks where the layout gives none."""
        return self.chunk if self.frame is None else self.frame

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
    """An outside chooser's answer at one prune point: set exactly one of ``keep_fraction``, ``keep_positions``.

    Attributes:
        keep_fraction: modality -> share of its currently droppable tokens to keep, a float or a ``[B]``
            tensor (per sample). Which tokens is decided by ``order``. Modalities not named are kept whole.
        keep_positions: ``[B, K]`` original prompt positions to keep (pad rows with -1). Droppable tokens not
            listed are dropped.
        order: with ``keep_fraction``, modality -> one of :data:`DECISION_ORDERS`; a modality not named uses
            ``rule``, the stage's own ordering (prefix order for the positional global rule, scores for the
            attentive rules).
        cut_layer: global stage only: the first layer that sees the sample's cut, an int or ``[B]`` (per sample),
            from the current layer up to ``global_layer``; None is the current layer. 0 is before the decoder (input
            pruning), for a chooser asked there (``cuts_input``). The keep set is chosen
            when the cut happens, over the tokens and scores there.
        fine_ratio: global stage only: the fine ratio of the sample's layers after its cut, a float or ``[B]`` in
            [0, 1); None keeps the config's.
        rows: ``[B]`` bool, the samples the decision is for (None: all the context's undecided samples at the
            global stage, every sample at a fine step).
        notes: per sample, JSON-ready notes the chooser wants in the sample's recorded decision (e.g. a policy's
            raw action), or None.
    """

    keep_fraction: Mapping[str, float | torch.Tensor] | None = None
    keep_positions: torch.Tensor | None = None
    order: Mapping[str, str] | None = None
    cut_layer: int | torch.Tensor | None = None
    fine_ratio: float | torch.Tensor | None = None
    rows: torch.Tensor | None = None
    notes: Sequence[Mapping[str, Any]] | None = None

    def describe_row(self, row: int) -> dict[str, Any]:
        """JSON-ready summary of what this decision asks of sample ``row``."""
        described: dict[str, Any] = {}
        if self.keep_fraction is not None:
            described["keep_fraction"] = {name: _row_value(value, row) for name, value in self.keep_fraction.items()}
            described["order"] = {name: (self.order or {}).get(name, "rule") for name in self.keep_fraction}
        if self.keep_positions is not None:
            described["keep_positions"] = int((self.keep_positions[row] >= 0).sum())
        if self.notes is not None:
            described.update(self.notes[row])
        return described

    def __post_init__(self) -> None:
        if (self.keep_fraction is None) == (self.keep_positions is None):
            raise ValueError("PruneDecision needs exactly one of keep_fraction, keep_positions")
        if self.fine_ratio is not None:
            ratios = torch.as_tensor(self.fine_ratio, dtype=torch.float64)
            if bool(((ratios < 0) | (ratios >= 1)).any()):
                raise ValueError(f"fine_ratio={self.fine_ratio!r}; accepted: values in [0, 1)")
        if self.cut_layer is not None:
            layers = torch.as_tensor(self.cut_layer)
            if layers.dtype.is_floating_point or layers.dtype == torch.bool or bool((layers < 0).any()):
                raise ValueError(
                    f"cut_layer={self.cut_layer!r}; accepted: ints >= 0 (0: before the decoder, for a chooser that "
                    "cuts_input; at most global_layer)"
                )
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
                values = torch.as_tensor(fraction, dtype=torch.float64)
                if bool(((values < 0) | (values > 1)).any()):
                    raise ValueError(f"keep_fraction[{name!r}]={fraction!r}; accepted: values in [0, 1]")


def _row_value(value: float | torch.Tensor, row: int) -> float:
    values = torch.as_tensor(value, dtype=torch.float64).flatten()
    return float(values[row] if values.numel() > 1 else values[0])


class Chooser(Protocol):
    """An outside chooser: return a decision, a sequence of decisions for disjoint ``rows`` (samples treated
    differently, e.g. with different orders), or None to let the built-in rule decide.

    Optional methods: ``check_decoder(text_config)``, called when the engine is installed, raises if the chooser
    was made for another decoder; ``describe()`` gives the JSON a run record stores for it (default: its name).
    Optional attribute: ``cuts_input = True`` also asks it before layer 0 (input pruning: no scores there, and
    ``hidden`` is the decoder's input embeddings); a cut at layer 0 is counted in FLOPs like any other.
    """

    def __call__(self, context: PruneContext) -> PruneDecision | Sequence[PruneDecision] | None: ...


def as_decisions(answer: PruneDecision | Sequence[PruneDecision] | None) -> tuple[PruneDecision, ...]:
    """A chooser's answer as a tuple of decisions (empty for None); anything else is refused."""
    if answer is None:
        return ()
    answers = (answer,) if isinstance(answer, PruneDecision) else tuple(answer)
    for item in answers:
        if not isinstance(item, PruneDecision):
            raise TypeError(
                f"a chooser returned {type(item).__name__}; accepted: PruneDecision, a sequence of them, None"
            )
    return answers


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


# ---------------------------------------------------------------------------------------------- the rules
def _positional(context: PruneContext) -> torch.Tensor:
    return -context.rank.float()


def _random(context: PruneContext) -> torch.Tensor:
    noise = torch.rand(context.valid.shape, generator=context.generator, device=context.generator.device)
    return noise.to(context.valid.device)


def _low_attentive(context: PruneContext) -> torch.Tensor:
    assert context.scores is not None, "rule_priority checks needs_scores"
    return context.scores


def _top_attentive(context: PruneContext) -> torch.Tensor:
    assert context.scores is not None, "rule_priority checks needs_scores"
    return -context.scores


@dataclass(frozen=True)
class PruningRule:
    """One built-in rule of the engine; :data:`RULES` is the only place a rule's name and traits are written.

    Config validation, the planner (which layers record scores) and the dispatch (:func:`rule_priority`) all read it.

    Attributes:
        name: what ``global_rule`` / ``fine_rule`` (and ``--model_args``, ``--fine-rule``) call it.
        priority: ``context -> [B, L_cur]`` keep priority, higher is kept first.
        needs_scores: whether ``priority`` reads the last query's attention scores (``PruneContext.scores``), so the
            planner records them at the layer before the prune point.
        global_row: the rule's place among the global-stage rules (the paper's Table 2, which error messages and the
            sweep's default axis follow); None when the rule cannot serve the global stage.
        fine_row: the same among the fine-stage rules (the paper's Table 3); None when it cannot serve the fine stage.
        keeps_prefix: at the global stage, keep exactly the profile's per-modality prefix instead of as many tokens
            pooled over modalities and ranked by ``priority``.
        description: one line for humans.
    """

    name: str
    priority: Callable[[PruneContext], torch.Tensor]
    needs_scores: bool
    global_row: int | None
    fine_row: int | None
    description: str
    keeps_prefix: bool = False

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The stages the rule may serve."""
        rows: dict[Stage, int | None] = {"global": self.global_row, "fine": self.fine_row}
        return tuple(stage for stage, row in rows.items() if row is not None)


RULES: Mapping[str, PruningRule] = MappingProxyType({rule.name: rule for rule in (
    PruningRule("positional", _positional, needs_scores=False, global_row=0, fine_row=None, keeps_prefix=True,
                description="keeps the earliest tokens of each modality: the profile's prefix"),
    PruningRule("random", _random, needs_scores=False, global_row=1, fine_row=2,
                description="keeps tokens drawn at random (seeded by the config's seed)"),
    PruningRule("top_attentive", _top_attentive, needs_scores=True, global_row=2, fine_row=1,
                description="drops the tokens the last query attends to most"),
    PruningRule("low_attentive", _low_attentive, needs_scores=True, global_row=3, fine_row=0,
                description="drops the tokens the last query attends to least (FastAV's fine rule)"),
)})  # fmt: skip
"""Every built-in rule by name. The attentive names say what is *dropped*, as in the paper's tables."""


def rule_names(stage: Stage) -> tuple[str, ...]:
    """The names of the rules that may serve ``stage``, in the order of that stage's table in the paper."""
    rows = {rule.name: rule.global_row if stage == "global" else rule.fine_row for rule in RULES.values()}
    return tuple(sorted((name for name, row in rows.items() if row is not None), key=lambda name: rows[name]))


GLOBAL_RULES: tuple[str, ...] = rule_names("global")
"""Global-stage rule names, derived from :data:`RULES`."""

FINE_RULES: tuple[str, ...] = rule_names("fine")
"""Fine-stage rule names, derived from :data:`RULES`."""


def check_rule(field: str, value: object, stage: Stage, off: tuple[object, ...] = ()) -> None:
    """Raise a ValueError naming ``field``, ``value`` and what is accepted unless ``value`` names a rule of ``stage``
    or is one of ``off``, the caller's spellings of "no such stage" (e.g. ``(None,)``)."""
    if value in off or (isinstance(value, str) and value in rule_names(stage)):
        return
    raise ValueError(f"{field}={value!r}; accepted: {[*rule_names(stage), *off]}")


def rule_needs_scores(rule: str | None) -> bool:
    """Whether rule ``rule`` reads last-query scores; False for None (its stage is off)."""
    return rule is not None and rule_named(rule).needs_scores


def rule_named(rule: str) -> PruningRule:
    """The entry of :data:`RULES` called ``rule``; a ValueError lists the names otherwise."""
    if rule not in RULES:
        raise ValueError(f"rule={rule!r}; accepted: {list(RULES)}")
    return RULES[rule]


def rule_priority(rule: str, context: PruneContext) -> torch.Tensor:
    """``[B, L_cur]`` keep priority of the rule named ``rule`` (see :data:`RULES`): higher is kept first."""
    entry = rule_named(rule)
    if entry.needs_scores and context.scores is None:
        raise RuntimeError(f"rule {rule!r} needs last-query scores, and none were recorded")
    return entry.priority(context)


def global_keep(context: PruneContext, rule: str, profile: PruningProfile) -> torch.Tensor:
    """``[B, L_cur]`` bool keep mask of the global stage.

    A rule that ``keeps_prefix`` (``positional``) keeps the profile's per-modality prefix. The other rules keep, per
    sample, as many audio-visual tokens as that prefix holds, pooled over modalities and chosen by
    :func:`rule_priority`.
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
    if rule_named(rule).keeps_prefix:
        return prefix
    budget = (prefix & eligible).sum(1)
    return ~eligible | select_top(rule_priority(rule, context), eligible, budget)


def fine_keep(context: PruneContext, rule: str, ratio: float | torch.Tensor) -> torch.Tensor:
    """``[B, L_cur]`` bool keep mask of a fine step: drop ``floor(ratio * n_droppable)`` tokens per sample
    (``ratio`` a float or ``[B]``)."""
    eligible = context.eligible
    count = eligible.sum(1)
    ratio = torch.as_tensor(ratio, device=count.device).double()
    budget = count - torch.floor(count.double() * ratio + ROUNDING_TOLERANCE).long()
    if bool((budget >= count).all()):  # nothing to drop (ratio 0): no scores needed to rank
        return torch.ones_like(eligible)
    return ~eligible | select_top(rule_priority(rule, context), eligible, budget)


def spread_picks(count: int, wanted: int) -> torch.Tensor:
    """Indices of ``wanted`` of ``count`` items spread evenly: ``floor((i + 0.5) · count / wanted)`` for ``i < wanted``
    (the middle of each of ``wanted`` equal stretches), at most ``count - 1``; empty when either is 0."""
    if wanted <= 0 or count <= 0:
        return torch.zeros(0, dtype=torch.long)
    picks = ((torch.arange(wanted, dtype=torch.float64) + 0.5) * count / wanted).floor().long()
    return picks.clamp(max=count - 1)


def evenly_spaced(eligible: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """Keep ``budget[b]`` of each row's eligible tokens, spread evenly in sequence order (:func:`spread_picks`).

    Args:
        eligible: ``[B, L]`` bool.
        budget: ``[B]`` int, at most each row's eligible count.

    Returns:
        ``[B, L]`` bool keep mask, a subset of ``eligible``.
    """
    keep = torch.zeros_like(eligible)
    for row in range(eligible.shape[0]):
        columns = torch.nonzero(eligible[row]).flatten()
        keep[row, columns[spread_picks(len(columns), int(budget[row])).to(columns.device)]] = True
    return keep


def evenly_spaced_chunks(eligible: torch.Tensor, chunk: torch.Tensor, fraction: float | torch.Tensor) -> torch.Tensor:
    """Keep ``fraction`` (a float or ``[B]``; :func:`keep_budget` of each row's distinct chunks) of each row's chunks
    of eligible tokens, whole, spread evenly over them (:func:`spread_picks`).

    Args:
        eligible: ``[B, L]`` bool.
        chunk: ``[B, L]`` int chunk labels.
        fraction: share of the chunks to keep.

    Returns:
        ``[B, L]`` bool keep mask, a subset of ``eligible``.
    """
    keep = torch.zeros_like(eligible)
    rows = [torch.unique(chunk[row][eligible[row]]) for row in range(eligible.shape[0])]  # sorted chunk labels
    counts = torch.tensor([len(chunks) for chunks in rows], dtype=torch.long, device=eligible.device)
    budget = keep_budget(counts, fraction)
    for row, chunks in enumerate(rows):
        chosen = chunks[spread_picks(len(chunks), int(budget[row])).to(chunks.device)]
        keep[row] = eligible[row] & torch.isin(chunk[row], chosen)
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
        fraction = decision.keep_fraction[name]
        order = orders.get(name, "rule")
        if order == "evenly_spaced_chunks":
            keep |= evenly_spaced_chunks(of_modality, context.chunk, fraction)
            continue
        budget = keep_budget(of_modality.sum(1), fraction)
        if order == "evenly_spaced":
            keep |= evenly_spaced(of_modality, budget)
        else:
            keep |= select_top(_order_priority(order, rule, context), of_modality, budget)
    return keep
