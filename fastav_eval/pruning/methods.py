"""Other token-pruning methods as choosers of the engine, so every method runs inside the same decoders, with the
original positions, per-layer caches and FLOPs counted from the tokens each layer processed, at any batch size.

:data:`METHODS` is the one table of them (``prune=<name>`` in ``--model_args``). Each is a :class:`Method`: a chooser
(:class:`~fastav_eval.pruning.rules.Chooser`) built from its knobs, with the config it runs under
(:meth:`Method.config`). Every method's budget knob is ``retain``, the share of the audio-visual tokens it keeps at
each of its cuts, so one solver can set any of them to a FLOPs target. Audio and video are pooled: a method written
for visual tokens treats the audio-visual tokens as its "visual" tokens, and says where that is our extension.

- ``random``: before the decoder, keep ``retain`` of the audio-visual tokens drawn at random (seeded by ``seed``,
  each sample its own draws, so a batch keeps what each sample alone keeps).
- ``divprune`` (Alvar et al., CVPR 2025): before the decoder, keep ``retain`` of the audio-visual tokens by the
  greedy max–min diversity selection over the cosine distances ``D = 1 − cos(x_i, x_j)`` of their input embeddings:
  the first token is the one whose nearest other token is farthest, ``argmax_i min_{j≠i} D_ij``; each next one is
  ``argmax_i min_{s ∈ S} D_is`` over the tokens ``S`` chosen so far.
- ``pdrop`` (PyramidDrop, Xing et al., CVPR 2025): before layers ``L/4``, ``L/2`` and ``3L/4`` (8, 16, 24 of 32 as
  its release), keep ``retain`` (λ = 0.5) of the remaining audio-visual tokens, ranked by the attention the last
  prompt token pays them (head-averaged). Here that attention is the layer before's, as the engine scores; the
  release recomputes it with the cut layer's own query and key projections.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import torch

from fastav_eval.pruning.config import PruningConfig
from fastav_eval.pruning.rules import PruneContext, PruneDecision, keep_budget, select_top


def _kept_positions(context: PruneContext, keep: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` original positions of the eligible tokens ``keep`` ``[B, L_cur]`` marks, rows padded with -1."""
    width = max(int(keep.sum(1).max()), 1)
    positions = torch.full((keep.shape[0], width), -1, dtype=torch.long, device=keep.device)
    for row in range(keep.shape[0]):
        chosen = context.positions[row][keep[row]]
        positions[row, : len(chosen)] = chosen
    return positions


def max_min_diversity(embeddings: torch.Tensor, budget: int) -> torch.Tensor:
    """DivPrune's greedy max–min diversity selection: ``budget`` indices of ``embeddings`` ``[n, D]``, in the order
    picked (see the module docstring)."""
    n = embeddings.shape[0]
    budget = min(budget, n)
    if budget <= 0:
        return torch.zeros(0, dtype=torch.long, device=embeddings.device)
    unit = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    distance = 1.0 - unit @ unit.T  # [n, n]
    if n == 1:
        return torch.zeros(1, dtype=torch.long, device=embeddings.device)
    others = distance.masked_fill(torch.eye(n, dtype=torch.bool, device=distance.device), float("inf"))
    chosen = [int(others.min(1).values.argmax())]
    nearest = distance[chosen[0]].clone()  # [n] each token's distance to the chosen set
    nearest[chosen[0]] = float("-inf")  # a chosen token stays at -inf under the minimum: never picked twice
    for _ in range(budget - 1):
        pick = int(nearest.argmax())
        chosen.append(pick)
        nearest = torch.minimum(nearest, distance[pick])
        nearest[pick] = float("-inf")
    return torch.tensor(chosen, dtype=torch.long, device=embeddings.device)


def sample_seed(context: PruneContext, row: int) -> int:
    """The seed of sample ``row``'s random draws: the config's seed mixed with the sample's id where the caller gave
    one (lmms-eval runs: ``task/doc_id``), so samples of one layout draw differently and a sample draws the same
    alone or in any batch; the config's seed alone without an id."""
    seed = context.generator.initial_seed()
    sample = context.samples[row] if context.samples is not None else None
    if sample is None or sample.sample_id is None:
        return seed
    return zlib.crc32(f"{seed}/{sample.sample_id}".encode())


@dataclass
class Method:
    """A pruning method: its knobs are the dataclass fields; calling it is the engine's chooser.

    Class attributes:
        name: ``prune=<name>``.
        cuts_input: whether it is asked before layer 0 (input pruning).
        paper: the publication it implements.
    """

    name: ClassVar[str]
    paper: ClassVar[str]
    cuts_input: ClassVar[bool] = False
    retain: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.retain, bool) or not isinstance(self.retain, int | float) or not 0 < self.retain <= 1:
            raise ValueError(f"{self.name}: retain={self.retain!r}; accepted: a number in (0, 1]")

    @property
    def __name__(self) -> str:  # what the engine's decisions record as "by"
        return f"method {self.name}"

    def describe(self) -> dict[str, Any]:
        """What a run record stores for it (and hashes)."""
        return {"method": self.name, **asdict(self)}

    def config(self, **fields: Any) -> PruningConfig:
        """The engine config it runs under: it decides every cut, no global rule, no fine stage; ``fields``
        (``sink_tokens``, ``seed``) override."""
        return PruningConfig.chosen_by(self, **fields)

    def scored_points(self, num_layers: int) -> tuple[int, ...]:
        """The prune points (first layers after a cut) whose choice reads last-query scores: the engine scores only
        the layers before them. None of them for a method that reads none."""
        return ()

    def __call__(self, context: PruneContext) -> PruneDecision | None:
        raise NotImplementedError


@dataclass
class RandomInput(Method):
    name: ClassVar[str] = "random"
    paper: ClassVar[str] = "the random baseline of token-pruning benchmarks (UniPruneBench, VTC-Bench)"
    cuts_input: ClassVar[bool] = True

    def __call__(self, context: PruneContext) -> PruneDecision | None:
        eligible = context.eligible
        noise = torch.zeros(eligible.shape, dtype=torch.float32)
        for row in range(eligible.shape[0]):  # each sample its own draws: a batch keeps what each alone keeps
            count = int(eligible[row].sum())
            generator = torch.Generator().manual_seed(sample_seed(context, row))
            noise[row, eligible[row].cpu()] = torch.rand(count, generator=generator)
        keep = select_top(noise.to(eligible.device), eligible, keep_budget(eligible.sum(1), self.retain))
        return PruneDecision(keep_positions=_kept_positions(context, keep), cut_layer=0)


@dataclass
class DivPrune(Method):
    name: ClassVar[str] = "divprune"
    paper: ClassVar[str] = "DivPrune: diversity-based visual token pruning (Alvar et al., CVPR 2025, arXiv 2503.02175)"
    cuts_input: ClassVar[bool] = True
    retain: float = 0.098  # the release's SUBSET_RATIO

    def __call__(self, context: PruneContext) -> PruneDecision | None:
        eligible = context.eligible
        budget = keep_budget(eligible.sum(1), self.retain)
        keep = torch.zeros_like(eligible)
        for row in range(eligible.shape[0]):
            columns = eligible[row].nonzero().flatten()
            if context.hidden is None:  # a simulated prefill (FLOPs only) has no embeddings: as many tokens, the first
                keep[row, columns[: int(budget[row])]] = True
                continue
            picked = max_min_diversity(context.hidden[row, columns], int(budget[row]))
            keep[row, columns[picked]] = True
        return PruneDecision(keep_positions=_kept_positions(context, keep), cut_layer=0)


@dataclass
class PyramidDrop(Method):
    name: ClassVar[str] = "pdrop"
    paper: ClassVar[str] = "PyramidDrop (Xing et al., CVPR 2025, arXiv 2410.17247)"
    layers: tuple[int, ...] = ()
    """The first layers that see each drop (0-based); empty: ``L/4, L/2, 3L/4`` of the decoder, rounded half up (8,
    16, 24 of 32 as its release: layer 8 is the first to run on the reduced tokens)."""

    def cut_layers(self, num_layers: int) -> tuple[int, ...]:
        """The prune points below the depth."""
        wanted = self.layers or tuple(int(num_layers * k / 4 + 0.5) for k in (1, 2, 3))
        cuts = tuple(sorted({layer for layer in wanted if 1 <= layer < num_layers}))
        if not cuts:
            raise ValueError(f"pdrop: layers {wanted}; accepted: layers in [1, {num_layers - 1}]")
        return cuts

    def scored_points(self, num_layers: int) -> tuple[int, ...]:
        return self.cut_layers(num_layers)

    def config(self, **fields: Any) -> PruningConfig:
        """Every layer after layer 1 is a fine step at ratio 0 where it is asked; it drops at its cut layers only."""
        return PruningConfig.chosen_by(self, **{"global_layer": 1, **fields})

    def __call__(self, context: PruneContext) -> PruneDecision | None:
        assert context.num_layers is not None, "the engine's plan gives the depth"
        if context.layer_idx not in self.cut_layers(context.num_layers):
            return None
        if context.scores is None:
            raise RuntimeError(f"pdrop at layer {context.layer_idx} needs last-query scores, and none were recorded")
        eligible = context.eligible
        keep = select_top(context.scores, eligible, keep_budget(eligible.sum(1), self.retain))
        return PruneDecision(keep_positions=_kept_positions(context, keep))


METHODS: MappingProxyType[str, Callable[..., Method]] = MappingProxyType(
    {method.name: method for method in (RandomInput, DivPrune, PyramidDrop)}
)
"""``prune=<name>`` -> its :class:`Method` class (built with its knobs)."""

__all__ = ["METHODS", "DivPrune", "Method", "PyramidDrop", "RandomInput", "max_min_diversity"]
