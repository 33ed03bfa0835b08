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
- ``vidcom2`` (VidCom², Liu et al., EMNLP 2025): before the decoder, per video frame (the layout's frames: a model's
  temporal grid), keep the tokens least like the video and their frame. On the half of the channels with the lowest
  variance over the video's tokens, L2-normalised, a token's similarity is ``s_i = g(x_i, c_video) + g(x_i, c_f)``
  with ``g(x, c) = Σ_{α ∈ {1/8, 1/4, 1/2, 1, 2}} exp(−‖x − c‖² / 2α)`` and ``c`` the mean of the video's / frame
  ``f``'s tokens. A frame's share is ``r_f = min(1, R · (1 + p_f − mean(p)))`` with ``p = softmax(u / 0.01)`` over the
  frames' uniqueness ``u_f = −mean_{i ∈ f} g(x_i, c_video)``; frame ``f`` keeps its ``max(1, round(r_f · n_f))``
  tokens of lowest ``s_i``. ``R`` is ``retain`` (the release's ``R_RATIO``, 0.25). Audio is kept whole, as published.
  Where it departs from the release: a prompt's videos are one stream (the release scores each video apart), and
  the scores are float32 (the release scores the model's dtype, bf16 on a GPU, where the 0.01 temperature makes
  frame shares sensitive to rounding).
- ``vidcom2_av`` (ours): the same rule applied to audio too, each audio frame (the layout's: a model's time chunk) a
  "frame" of its own audio stream, with the same ``R``.
- ``seats`` (SEATS, arXiv 2605.20035): targets a mean retention over all layers, ``retain`` for video (0.30) and
  ``audio_retain`` for audio (0.65; when not given ``retain + 0.35``, the offset of the release's first three ratio
  pairs, at most 1), in three stages.
  (I) Before the decoder, each window keeps ``max(1, round(e · n_w))`` of its tokens by DivPrune's greedy max–min
  diversity, with ``e = min(1, 1.4 · target)`` (``encoder_ratio_scale``; the release requires ``1.4 · target <= 1``);
  a video window is two frames (``grid_in_window``), an audio window 50 consecutive audio tokens (the release's
  ``sec_in_audio_window`` of 2 s at 25 tokens a second, a count it keeps on every model).
  (II) Before layers 16, 18, 20 of 28 the remaining tokens of each modality keep ``k_i`` of themselves, ``k_i`` solved
  so the mean retention over the ``L`` layers is the target, with drops growing as ``e^i``
  (:func:`seats_keep_ratios`). The kept ``K_v = max(1, round(k_i · n_v))`` video and ``K_a`` audio tokens are shared
  top-down (:func:`seats_window_budgets`): windows (the i-th contiguous run of video tokens with the i-th of audio,
  :func:`paired_runs`: a time chunk in an interleaved layout, the whole stream where video and audio are apart) get
  ``B_w = round(½ (softmax(v̄/τ)_w + softmax(ā/τ)_w) · (K_v + K_a))`` with ``v̄_w`` / ``ā_w`` the mean last-query
  attention of the window's video / audio tokens and τ = 0.1, split between video and audio by their demand
  ``K_v softmax(v̄/τ)_w : K_a softmax(ā/τ)_w``; each window keeps its most-attended tokens. With a single window, or
  one modality absent, each modality keeps its ``K`` most-attended tokens.
  (III) Before layer 23 of 28 (the release's ``late_block_layer`` 24, 1-based) every audio-visual token goes.
  Layer numbers scale with depth, ``round(l · L / 28)`` (Qwen3-Omni's 48 layers: 27, 31, 34 and 39; its release
  config says 35 for the third; the release keeps 16/18/20/23 for the 36-layer Qwen2.5-Omni-3B).
  Where it departs from the release: the release reads the vision and audio encoders' attention to weight stage I's
  distances; the engine sees only the decoder, so stage I is the unweighted selection. Stage II's attention is the
  layer before's, as the engine scores; the release applies the layer before's projections to its output. The
  release also cuts the caches of the layers before each drop, so decoding never attends to a dropped token at any
  layer; the engine keeps each layer's cache as that layer ran (the first answer token is the same, later ones may
  differ). Every video and audio item of a prompt is one stream here, and selection runs in float32.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import torch

from fastav_eval.pruning.config import PruningConfig
from fastav_eval.pruning.layout import AV_MODALITIES, Modality
from fastav_eval.pruning.rules import PruneContext, PruneDecision, keep_budget, select_top

log = logging.getLogger(__name__)


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
        content_dependent_counts: whether how many tokens it keeps depends on the content (the embeddings or the
            scores), so that a simulated prefill (:func:`~fastav_eval.pruning.plan.simulate_prefill`) gives counts a
            real one approaches but need not equal.
    """

    name: ClassVar[str]
    paper: ClassVar[str]
    cuts_input: ClassVar[bool] = False
    content_dependent_counts: ClassVar[bool] = False
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


# ---------------------------------------------------------------------------------------------- VidCom²
GAUSSIAN_WIDTHS: tuple[float, ...] = tuple(2.0**k for k in range(-3, 2))
"""VidCom²'s kernel widths α: 1/8 … 2."""


def _gaussian_similarity(x: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """``[n]`` ``Σ_α exp(−‖x − c‖² / 2α)`` of each row of ``x`` ``[n, C]`` to ``center`` (``[C]`` or ``[n, C]``)."""
    squared = ((x - center) ** 2).sum(-1)
    return sum(torch.exp(-squared / (2 * width)) for width in GAUSSIAN_WIDTHS)


def frame_uniqueness_keep(features: torch.Tensor, frame: torch.Tensor, retain: float) -> torch.Tensor:
    """VidCom²'s selection over one stream (see the module docstring).

    Args:
        features: ``[n, D]`` the stream's token embeddings, in order.
        frame: ``[n]`` int frame label of each token.
        retain: ``R``, the base share each frame keeps.

    Returns:
        ``[n]`` bool keep mask.
    """
    x = features.float()
    low_variance = torch.topk(x.var(0, unbiased=False), int(x.shape[1] * 0.5), largest=False).indices
    x = torch.nn.functional.normalize(x[:, low_variance], dim=-1)
    labels, members = torch.unique(frame, return_inverse=True)  # members [n]: the token's frame, 0 … F-1
    counts = torch.bincount(members, minlength=len(labels))
    frame_centers = torch.zeros(len(labels), x.shape[1], device=x.device).index_add_(0, members, x) / counts[:, None]
    to_video = _gaussian_similarity(x, x.mean(0))
    similarity = to_video + _gaussian_similarity(x, frame_centers[members])
    uniqueness = -torch.zeros(len(labels), device=x.device).index_add_(0, members, to_video) / counts
    weights = torch.softmax((uniqueness - uniqueness.max()) / 0.01, dim=0)
    shares = (retain * (1 + weights - weights.mean())).clamp(max=1.0)
    budgets = (shares * counts).round().long().clamp(min=1)
    return _lowest_of_each(similarity, members, budgets)  # the least similar (most unique) tokens of each frame


def _lowest_of_each(score: torch.Tensor, group: torch.Tensor, budgets: torch.Tensor) -> torch.Tensor:
    """``[n]`` bool: in each group ``g`` the ``budgets[g]`` tokens of lowest ``score`` ``[n]`` (ties to the earlier).

    Args:
        score: ``[n]`` the tokens' scores, in sequence order.
        group: ``[n]`` int group of each token, 0 … G-1.
        budgets: ``[G]`` int.
    """
    keep = torch.zeros_like(group, dtype=torch.bool)
    for index in range(len(budgets)):
        tokens = (group == index).nonzero().flatten()
        keep[tokens[torch.sort(score[tokens], stable=True).indices[: int(budgets[index])]]] = True
    return keep


@dataclass
class VidCom2(Method):
    name: ClassVar[str] = "vidcom2"
    paper: ClassVar[str] = "VidCom² (Video Compression Commander; Liu et al., EMNLP 2025, arXiv 2505.14454)"
    cuts_input: ClassVar[bool] = True
    content_dependent_counts: ClassVar[bool] = True  # a frame's share follows its uniqueness
    streams: ClassVar[tuple[str, ...]] = ("video",)
    """The modalities the rule compresses; the others are kept whole."""
    retain: float = 0.25  # the release's R_RATIO

    def __call__(self, context: PruneContext) -> PruneDecision | None:
        keep = torch.zeros_like(context.eligible)
        for name in AV_MODALITIES:
            of_modality = context.eligible_of(name)
            if name not in self.streams:
                keep |= of_modality
                continue
            for row in range(keep.shape[0]):
                columns = of_modality[row].nonzero().flatten()
                if len(columns) == 0:
                    continue
                frame = context.frames[row, columns]
                if context.hidden is None:  # a simulated prefill (FLOPs only): each frame keeps the base share
                    _, members = torch.unique(frame, return_inverse=True)
                    budgets = (self.retain * torch.bincount(members).double()).round().long().clamp(min=1)
                    kept = _lowest_of_each(torch.zeros(len(frame)), members, budgets)  # the first of each frame
                else:
                    kept = frame_uniqueness_keep(context.hidden[row, columns], frame, self.retain)
                keep[row, columns[kept]] = True
        return PruneDecision(keep_positions=_kept_positions(context, keep), cut_layer=0)


@dataclass
class VidCom2AV(VidCom2):
    name: ClassVar[str] = "vidcom2_av"
    paper: ClassVar[str] = "ours: VidCom²'s frame-uniqueness rule applied to audio frames too (arXiv 2505.14454)"
    streams: ClassVar[tuple[str, ...]] = ("video", "audio")


# ---------------------------------------------------------------------------------------------- SEATS
SEATS_DEPTH = 28
"""The depth SEATS's release sets its layers for (Qwen2.5-Omni-7B)."""
SEATS_DROP_LAYERS: tuple[int, ...] = (16, 18, 20)
"""The first layers after each stage-II drop at depth 28 (the release's ``progressive_drop_layers``, 1-based, name
the layers after which it drops)."""
SEATS_LATE_LAYER = 23
"""The first layer without audio-visual tokens at depth 28 (the release's ``late_block_layer`` 24, 1-based)."""


def seats_keep_ratios(
    num_layers: int, drop_layers: tuple[int, ...], late_layer: int | None, encoder_ratio: float, target: float
) -> list[float]:
    """SEATS's stage-II schedule: the share of the remaining tokens each drop keeps.

    With ``N_0 = e`` (``encoder_ratio``) before the first drop, drop ``i`` removes ``δ_i = x · e · w_i`` with
    ``w_i = e^i / Σ_j e^j``, so ``N_i = N_{i-1} − δ_i`` (at least 0); ``x`` in [0, 1] is bisected (50 steps) so that
    ``Σ_segments length · N = target · L`` over the layers up to ``late_layer`` (none after it). Returns
    ``round(N_i / N_{i-1}, 4)`` per drop.
    """
    end = num_layers if late_layer is None else min(late_layer, num_layers)
    drops = [layer for layer in drop_layers if layer < end]
    if not drops:
        return []
    bounds = [0, *drops, end]
    lengths = [bounds[i + 1] - bounds[i] for i in range(len(bounds) - 1)]
    weights = [math.exp(i) for i in range(len(drops))]
    weights = [w / sum(weights) for w in weights]

    def levels(fraction: float) -> list[float]:
        level, out = encoder_ratio, [encoder_ratio]
        for weight in weights:
            level = max(level - fraction * encoder_ratio * weight, 0.0)
            out.append(level)
        return out

    def covered(fraction: float) -> float:
        return sum(length * level for length, level in zip(lengths, levels(fraction), strict=True))

    wanted = target * num_layers
    if wanted >= covered(0.0):
        fraction = 0.0
    elif wanted <= covered(1.0):
        fraction = 1.0
    else:
        low, high = 0.0, 1.0
        for _ in range(50):
            middle = (low + high) / 2
            low, high = (middle, high) if covered(middle) > wanted else (low, middle)
        fraction = (low + high) / 2
    steps = [max(level, 1e-12) for level in levels(fraction)]
    return [round(steps[i + 1] / steps[i], 4) if steps[i] > 1e-12 else 0.0 for i in range(len(drops))]


def seats_window_budgets(
    video_attention: torch.Tensor,
    audio_attention: torch.Tensor,
    video_sizes: torch.Tensor,
    audio_sizes: torch.Tensor,
    video_keep: int,
    audio_keep: int,
    temperature: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SEATS's top-down budgets: how many video and audio tokens each window keeps.

    Args:
        video_attention, audio_attention: ``[W]`` mean last-query attention of each window's video / audio tokens
            (0 where it has none).
        video_sizes, audio_sizes: ``[W]`` int, the window's video / audio tokens.
        video_keep, audio_keep: ``K_v``, ``K_a``: the tokens of each modality the step keeps.

    Returns:
        ``([W], [W])`` int video and audio budgets. Between windows ``B_w = round(½ (s^v_w + s^a_w) (K_v + K_a))``
        with ``s = softmax(attention / τ)``, at least 1 and at most the window's tokens, then moved one at a time
        (from the largest, to the smallest) until they sum to ``K_v + K_a``; within a window video gets
        ``round(B_w · K_v s^v_w / (K_v s^v_w + K_a s^a_w))``, audio the rest, each capped by its tokens, a
        remainder filling video then audio, and a modality present in a window keeps at least one token.
    """
    share_video = torch.softmax(video_attention.float() / max(temperature, 1e-4), dim=0)
    share_audio = torch.softmax(audio_attention.float() / max(temperature, 1e-4), dim=0)
    capacity = video_sizes + audio_sizes
    total = video_keep + audio_keep
    budget = torch.minimum((0.5 * (share_video + share_audio) * total).round().long().clamp(min=1), capacity)
    excess = int(budget.sum()) - total
    while excess != 0:
        if excess > 0:
            movable = budget > 1
            if not bool(movable.any()):
                break
            budget[torch.where(movable, budget, -1).argmax()] -= 1
        else:
            movable = budget < capacity
            if not bool(movable.any()):
                break
            budget[torch.where(movable, budget, int(capacity.max()) + 1).argmin()] += 1
        excess = int(budget.sum()) - total
    demand_video, demand_audio = share_video * video_keep, share_audio * audio_keep
    video = torch.minimum((budget.float() * demand_video / (demand_video + demand_audio + 1e-12)).round().long(),
                          video_sizes).clamp(min=0)  # fmt: skip
    audio = torch.minimum((budget - video).clamp(min=0), audio_sizes)
    left = budget - video - audio
    extra = torch.minimum(left.clamp(min=0), (video_sizes - video).clamp(min=0))
    video, left = video + extra, left - extra
    audio = audio + torch.minimum(left.clamp(min=0), (audio_sizes - audio).clamp(min=0))
    starved = (video_sizes > 0) & (video < 1)
    video = torch.where(starved, 1, video)
    audio = torch.where(
        starved & (audio > 1), torch.minimum(audio_sizes, (budget - video).clamp(min=0)).clamp(min=1), audio
    )
    starved = (audio_sizes > 0) & (audio < 1)
    audio = torch.where(starved, 1, audio)
    video = torch.where(
        starved & (video > 1), torch.minimum(video_sizes, (budget - audio).clamp(min=0)).clamp(min=1), video
    )
    return video, audio


def paired_runs(modality: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """SEATS's stage-II windows over one row's current tokens: ``[L_cur]`` the index of the contiguous run of its
    modality a video or audio token is in (filler slots skipped), so the i-th video run and the i-th audio run form
    window i; -1 on every other slot. As in the release, a run emptied by an earlier stage shifts the pairing of the
    runs after it.

    Args:
        modality: ``[L_cur]`` modality codes of the current tokens.
        valid: ``[L_cur]`` bool, False on filler slots.
    """
    windows = torch.full_like(modality, -1)
    columns = valid.nonzero().flatten()
    codes = modality[columns]
    for code in (Modality.VIDEO, Modality.AUDIO):
        mine = codes == code
        starts = mine & torch.cat([mine.new_ones(1), codes[1:] != codes[:-1]])
        windows[columns[mine]] = (starts.long().cumsum(0) - 1)[mine]
    return windows


def _window_sums(
    values: torch.Tensor, labels: torch.Tensor, windows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``([W], [W])``: the sum of ``values`` ``[n]`` and the count of tokens over each of ``windows`` ``[W]``."""
    member = labels[None, :] == windows[:, None]  # [W, n]
    return (member * values.float()[None, :]).sum(1), member.sum(1)


def _top_of(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` highest ``scores`` ``[n]`` (ties to the earlier)."""
    return torch.sort(scores, descending=True, stable=True).indices[:count]


@dataclass
class SEATS(Method):
    name: ClassVar[str] = "seats"
    paper: ClassVar[str] = "SEATS: stage-adaptive token selection for omni-modal LLMs (arXiv 2605.20035)"
    cuts_input: ClassVar[bool] = True
    content_dependent_counts: ClassVar[bool] = True  # a window's modality keeps at least one token
    retain: float = 0.30  # the release's default video_ratio
    audio_retain: float | None = None
    """Audio's mean retention target; None: ``retain + 0.35``, at most 1 (the release's default pair 0.30 / 0.65)."""
    encoder_scale: float = 1.4  # encoder_ratio_scale
    frames_per_window: int = 2  # grid_in_window
    audio_window: int = 50  # sec_in_audio_window · 25 audio tokens per second, the release's count
    temperature: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.audio_retain is not None and (
            isinstance(self.audio_retain, bool)
            or not isinstance(self.audio_retain, int | float)
            or not 0 < self.audio_retain <= 1
        ):
            raise ValueError(f"seats: audio_retain={self.audio_retain!r}; accepted: a number in (0, 1], or None")
        for knob in ("frames_per_window", "audio_window"):
            value = getattr(self, knob)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"seats: {knob}={value!r}; accepted: an int >= 1")
        for knob in ("encoder_scale", "temperature"):
            value = getattr(self, knob)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"seats: {knob}={value!r}; accepted: a number > 0")

    def targets(self) -> dict[str, float]:
        """Each modality's mean retention target."""
        audio = min(self.retain + 0.35, 1.0) if self.audio_retain is None else self.audio_retain
        return {"video": float(self.retain), "audio": float(audio)}

    def layers(self, num_layers: int) -> tuple[tuple[int, ...], int | None]:
        """The stage-II prune points and the stage-III one (None when it falls past the last layer), scaled to the
        depth."""
        scale = lambda layer: int(layer * num_layers / SEATS_DEPTH + 0.5)  # noqa: E731
        late = scale(SEATS_LATE_LAYER)
        late_layer = late if 1 <= late < num_layers else None
        end = num_layers if late_layer is None else late_layer
        # layer 1 is never asked (the cut before layer 0 decides every sample, global_layer is 1): drops start at 2
        return tuple(sorted({scale(layer) for layer in SEATS_DROP_LAYERS} & set(range(2, end)))), late_layer

    def scored_points(self, num_layers: int) -> tuple[int, ...]:
        return self.layers(num_layers)[0]

    def config(self, **fields: Any) -> PruningConfig:
        """Cut before the decoder, then asked at every later layer (fine steps at ratio 0 where it answers None)."""
        return PruningConfig.chosen_by(self, **{"global_layer": 1, **fields})

    def __call__(self, context: PruneContext) -> PruneDecision | None:
        assert context.num_layers is not None, "the engine's plan gives the depth"
        drops, late = self.layers(context.num_layers)
        if context.layer_idx == 0:
            if context.hidden is not None:  # a real prefill (a simulated one, e.g. compare's solver, is not told)
                self._check_reach(context.num_layers, late)
            return PruneDecision(keep_positions=_kept_positions(context, self._diverse_windows(context)), cut_layer=0)
        if context.layer_idx == late:
            return PruneDecision(keep_positions=_kept_positions(context, torch.zeros_like(context.eligible)))
        if context.layer_idx not in drops:
            return None
        if context.scores is None:
            raise RuntimeError(f"seats at layer {context.layer_idx} needs last-query scores, and none were recorded")
        keep = self._query_guided(context, drops.index(context.layer_idx), drops, late)
        return PruneDecision(keep_positions=_kept_positions(context, keep))

    def _check_reach(self, num_layers: int, late: int | None) -> None:
        """Log once per depth a target above the most SEATS keeps: stage I's share over the layers before the late one
        (with no drop between), ``min(1, 1.4 · target) · late / L``."""
        reported = self.__dict__.setdefault("_reach_reported", set())
        if num_layers in reported:
            return
        reported.add(num_layers)
        end = num_layers if late is None else late
        for name, target in self.targets().items():
            most = min(self.encoder_scale * target, 1.0) * end / num_layers
            if target > most + 1e-9:
                log.warning(
                    "seats: %s target %.3f is above the most it keeps on %d layers (%.3f: every audio-visual "
                    "token goes before layer %d); it keeps that",
                    name,
                    target,
                    num_layers,
                    most,
                    end,
                )

    def _diverse_windows(self, context: PruneContext) -> torch.Tensor:
        """Stage I: ``[B, L_cur]`` keep mask of windowed max–min diversity."""
        keep = torch.zeros_like(context.eligible)
        for name, target in self.targets().items():
            share = min(self.encoder_scale * target, 1.0)
            of_modality = context.eligible_of(name)
            windows = context.frames // self.frames_per_window if name == "video" else context.rank // self.audio_window
            for row in range(keep.shape[0]):
                columns = of_modality[row].nonzero().flatten()
                for window in torch.unique(windows[row, columns]):
                    members = columns[windows[row, columns] == window]
                    count = max(1, min(len(members), round(share * len(members))))
                    if count >= len(members) or context.hidden is None:  # simulated prefill: the first ones
                        keep[row, members[:count]] = True
                    else:
                        keep[row, members[max_min_diversity(context.hidden[row, members], count)]] = True
        return keep

    def _query_guided(self, context: PruneContext, step: int, drops: tuple[int, ...], late: int | None) -> torch.Tensor:
        """Stage II at drop ``step``: ``[B, L_cur]`` keep mask (see :func:`seats_window_budgets`)."""
        assert context.scores is not None and context.num_layers is not None
        ratios = {
            name: seats_keep_ratios(context.num_layers, drops, late, min(self.encoder_scale * target, 1.0), target)[
                step
            ]
            for name, target in self.targets().items()
        }
        keep = torch.zeros_like(context.eligible)
        video_all, audio_all = context.eligible_of("video"), context.eligible_of("audio")
        for row in range(keep.shape[0]):
            video, audio = video_all[row].nonzero().flatten(), audio_all[row].nonzero().flatten()
            scores, chunk = context.scores[row], paired_runs(context.modality[row], context.valid[row])
            video_keep = max(1, round(ratios["video"] * len(video))) if len(video) else 0
            audio_keep = max(1, round(ratios["audio"] * len(audio))) if len(audio) else 0
            windows = torch.unique(torch.cat([chunk[video], chunk[audio]]))
            if len(windows) <= 1 or not len(video) or not len(audio):
                keep[row, video[_top_of(scores[video], video_keep)]] = True
                keep[row, audio[_top_of(scores[audio], audio_keep)]] = True
                continue
            (video_sum, video_sizes), (audio_sum, audio_sizes) = (
                _window_sums(scores[columns], chunk[columns], windows) for columns in (video, audio)
            )
            video_budget, audio_budget = seats_window_budgets(
                video_sum / video_sizes.clamp(min=1), audio_sum / audio_sizes.clamp(min=1),
                video_sizes, audio_sizes, video_keep, audio_keep, self.temperature,
            )  # fmt: skip
            for columns, budget in ((video, video_budget), (audio, audio_budget)):  # each window's most attended
                window_of = torch.searchsorted(windows, chunk[columns])
                keep[row, columns[_lowest_of_each(-scores[columns], window_of, budget)]] = True
        return keep


METHODS: MappingProxyType[str, Callable[..., Method]] = MappingProxyType(
    {method.name: method for method in (RandomInput, DivPrune, PyramidDrop, VidCom2, VidCom2AV, SEATS)}
)
"""``prune=<name>`` -> its :class:`Method` class (built with its knobs)."""

__all__ = [
    "METHODS",
    "SEATS",
    "DivPrune",
    "Method",
    "PyramidDrop",
    "RandomInput",
    "VidCom2",
    "VidCom2AV",
    "frame_uniqueness_keep",
    "max_min_diversity",
    "paired_runs",
    "seats_keep_ratios",
    "seats_window_budgets",
]
