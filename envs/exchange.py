"""``fastav/TokenExchange-v0``: refine FastAV's selection of one sample by swaps (AVEX-Prune's exchange idea).

An episode starts from the tokens FastAV's global rule keeps at ``global_layer`` K. Each step either stops or swaps
a bucket of the lowest-scored kept tokens of one modality out for as many of the highest-scored dropped tokens of
the same or the other modality (scores: layer K-1's last-query attention, the "confidence"). The kept count stays
FastAV's, and so does the fine stage after K (FastAV's own budget). The reward is the change in answer quality
(``loglik``: the reference answer's per-token probability; ``score``: accuracy, or CIDEr-D for captions;
``caption``: a caption's CIDEr-D against the reference and against the full-token caption, and the reference
caption's probability, so that a swap, cross-modal ones included, is judged by the change of all three) minus a
cost per step and λ·Δbudget (relative FLOPs by default, or the audio-visual token retention with
``budget="retention"``). The episode ends on stop, or is truncated after ``max_swaps`` steps. Under ``caption`` a
caption document's full-token caption takes one unpruned pass more, once per document, kept with the first pass.

The observation and the swap mechanics live in :class:`ExchangeCoding` / :class:`ExchangeState`, shared with the
learned chooser that deploys a trained policy, which needs no reference answer: a policy acts on what the context
at K shows (scores, the current keep set), never on rewards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces

from fastav_eval.avsynth import TASKS
from fastav_eval.avsynth.dataset import DEFAULT_SEED
from fastav_eval.envs.cache import decode_array, encode_array, first_pass_of
from fastav_eval.envs.coding import OBSERVATION_BOUND, OBSERVATION_SIZE, RetentionCoding
from fastav_eval.envs.samples import (
    DocumentPicker,
    Outcome,
    SampleRunner,
    ScriptedChooser,
    build_adapter,
    check_budget,
    set_threads,
    training_documents,
)
from fastav_eval.pruning import PruneContext, PruneDecision, PruningConfig, PruningProfile, find_text_model
from fastav_eval.pruning.layout import AV_MODALITIES, Modality
from fastav_eval.pruning.rules import global_keep

SWAPS: tuple[tuple[str, str] | None, ...] = (
    None,
    ("video", "video"),
    ("video", "audio"),
    ("audio", "video"),
    ("audio", "audio"),
)
"""Action -> (modality taken out, modality brought in); action 0 stops."""
STATE_SIZE = 3 * len(AV_MODALITIES) + 1


@dataclass
class ExchangeState:
    """One sample's keep set at K while swaps are made.

    Attributes:
        positions: ``[L]`` prompt positions of the eligible tokens.
        modality: ``[L]`` their modality codes.
        scores: ``[L]`` their last-query scores at layer K-1.
        kept: ``[L]`` bool, which of them are kept now.
        base_observation: the sample's :class:`RetentionCoding` observation at K.
        swaps: swap steps taken.
    """

    positions: np.ndarray
    modality: np.ndarray
    scores: np.ndarray
    kept: np.ndarray
    base_observation: np.ndarray
    swaps: int = 0
    history: list[int] = field(default_factory=list)

    def swap(self, action: int, bucket: int) -> int:
        """Apply swap ``action`` (1..4) to the keep set; returns how many tokens went each way (0: no change)."""
        out_name, in_name = SWAPS[action]  # type: ignore[misc]
        out_code, in_code = int(Modality[out_name.upper()]), int(Modality[in_name.upper()])
        out_pool = np.flatnonzero(self.kept & (self.modality == out_code))
        in_pool = np.flatnonzero(~self.kept & (self.modality == in_code))
        count = min(bucket, len(out_pool), len(in_pool))
        if count:
            leaving = out_pool[np.argsort(self.scores[out_pool], kind="stable")[:count]]
            entering = in_pool[np.argsort(-self.scores[in_pool], kind="stable")[:count]]
            self.kept[leaving], self.kept[entering] = False, True
        self.swaps += 1
        self.history.append(int(action))
        return count

    def key(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.positions[self.kept])


@dataclass(frozen=True)
class ExchangeCoding:
    """Observation and swap coding at global layer ``global_layer`` of one decoder.

    Observation ``[OBSERVATION_SIZE + STATE_SIZE]``: the :class:`RetentionCoding` observation of the context at K,
    then per modality the kept share of its tokens, the mean score of its kept tokens against all of its tokens',
    and the log-ratio of its best dropped score to its worst kept score; last, the swaps taken / ``max_swaps``.
    """

    global_layer: int
    hidden_size: int
    bucket_tokens: int = 8
    max_swaps: int = 8
    projection_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("bucket_tokens", "max_swaps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}; accepted: >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExchangeCoding:
        return cls(**data)

    def action_space(self) -> spaces.Discrete:
        return spaces.Discrete(len(SWAPS))

    def observation_space(self) -> spaces.Box:
        size = OBSERVATION_SIZE + STATE_SIZE
        return spaces.Box(-OBSERVATION_BOUND, OBSERVATION_BOUND, shape=(size,), dtype=np.float32)

    def check_action(self, action: Any) -> int:
        values = np.asarray(action)
        if values.shape not in ((), (1,)) or not (
            np.issubdtype(values.dtype, np.integer)
            or (np.issubdtype(values.dtype, np.floating) and float(values.flat[0]).is_integer())
        ):
            raise ValueError(f"action={action!r}; accepted: one integer in 0..{len(SWAPS) - 1} (0 stops, 1..4 swap)")
        value = int(values.flat[0])
        if not 0 <= value < len(SWAPS):
            raise ValueError(
                f"action={value}; accepted: 0..{len(SWAPS) - 1} (0 stops; 1..4 swap out/in: {list(SWAPS[1:])})"
            )
        return value

    def start(self, context: PruneContext, profile: PruningProfile) -> list[ExchangeState]:
        """Per sample of ``context`` (at K, nothing dropped yet): FastAV's keep set as the starting state."""
        base = RetentionCoding(self.global_layer, self.hidden_size, self.projection_seed).observe(context)
        fastav = global_keep(context, "positional", profile)
        states = []
        for row in range(context.valid.shape[0]):
            eligible = context.eligible[row]
            scores = context.scores[row] if context.scores is not None else torch.zeros_like(context.positions[row])
            states.append(
                ExchangeState(
                    positions=context.positions[row][eligible].cpu().numpy(),
                    modality=context.modality[row][eligible].cpu().numpy(),
                    scores=scores[eligible].double().cpu().numpy(),
                    kept=fastav[row][eligible].cpu().numpy().copy(),
                    base_observation=base[row],
                )
            )
        return states

    def observe(self, state: ExchangeState) -> np.ndarray:
        features = [state.base_observation]
        extra = []
        for name in AV_MODALITIES:
            of_modality = state.modality == int(Modality[name.upper()])
            kept, dropped = of_modality & state.kept, of_modality & ~state.kept
            extra.append(kept.sum() / max(1, of_modality.sum()))
            mean_all = state.scores[of_modality].mean() if of_modality.any() else 0.0
            mean_kept = state.scores[kept].mean() if kept.any() else 0.0
            extra.append(np.log((mean_kept + 1e-9) / (mean_all + 1e-9)) if of_modality.any() else 0.0)
            if kept.any() and dropped.any():
                extra.append(np.log((state.scores[dropped].max() + 1e-9) / (state.scores[kept].min() + 1e-9)))
            else:
                extra.append(0.0)
        extra.append(state.swaps / self.max_swaps)
        features.append(np.asarray(extra, dtype=np.float64))
        observation = np.concatenate(features).clip(-OBSERVATION_BOUND, OBSERVATION_BOUND)
        return observation.astype(np.float32)

    def decision(self, states: Sequence[ExchangeState], device: torch.device) -> PruneDecision:
        """Keep every sample's current keep set (cut at the current layer, K; the config's fine ratio after)."""
        width = max(1, max(int(state.kept.sum()) for state in states))
        positions = torch.full((len(states), width), -1, dtype=torch.long)
        for row, state in enumerate(states):
            kept = torch.from_numpy(state.positions[state.kept].astype(np.int64))
            positions[row, : len(kept)] = kept
        notes = [{"swaps": [list(SWAPS[a]) for a in state.history if SWAPS[a]], "swap_steps": state.swaps}
                 for state in states]  # fmt: skip
        return PruneDecision(keep_positions=positions.to(device), notes=notes)


STATE_ARRAYS = ("positions", "modality", "scores", "kept")
"""The ``[L]`` arrays of an :class:`ExchangeState` a first-pass cache entry holds (with ``base_observation``)."""


def _encode_state(state: ExchangeState) -> dict[str, Any]:
    """A starting state (no swaps yet) as cache data."""
    return {name: encode_array(getattr(state, name)) for name in (*STATE_ARRAYS, "base_observation")}


def _decode_state(data: Mapping[str, Any], observation_size: int) -> ExchangeState:
    """The starting state :func:`_encode_state` wrote, each array checked (one length ``L`` for all four)."""
    if not isinstance(data, Mapping) or set(data) != {*STATE_ARRAYS, "base_observation"}:
        raise ValueError(f"state: not an object of {[*STATE_ARRAYS, 'base_observation']}")
    integers = ("int64", "int32", "int16", "int8", "uint8")
    positions = decode_array(data["positions"], "state.positions", integers, (None,))
    size = (len(positions),)
    return ExchangeState(
        positions=positions,
        modality=decode_array(data["modality"], "state.modality", integers, size),
        scores=decode_array(data["scores"], "state.scores", ("float64",), size),
        kept=decode_array(data["kept"], "state.kept", ("bool",), size),
        base_observation=decode_array(data["base_observation"], "state.base_observation", ("float32",),
                                      (observation_size,)),
    )  # fmt: skip


class TokenExchangeEnv(gymnasium.Env[np.ndarray, np.int64]):
    """Swaps that refine FastAV's selection of one sample.

    Args:
        model, model_args, tasks, split, per_task, data_seed, order, threads: as :class:`TokenRetentionEnv`.
        flops_weight: λ on the change of the budget's cost (%, /100).
        budget: ``flops`` (default: relative prefill FLOPs) or ``retention`` (the share of audio-visual tokens
            kept, mean over layers: :func:`fastav_eval.records.retention`), as :class:`TokenRetentionEnv`.
        reward: ``mixed`` (default: the reference answer's likelihood, CIDEr-D for captions), ``loglik``, ``score``,
            ``caption`` (:data:`~fastav_eval.envs.samples.REWARDS`).
        step_cost: subtracted from every swap step's reward.
        bucket_tokens: tokens moved each way per swap.
        max_swaps: swap steps before the episode is truncated.
        profile: FastAV's profile (default: the model's shipped one); its global layer is K.
        fine_ratio: FastAV's fine ratio after K.
        cache_dir: a folder of first passes (FastAV's) on disk, shared by processes and runs (None: in memory only).
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium's own attribute)

    def __init__(
        self,
        model: str = "fastav_tiny",
        model_args: str | dict[str, Any] | None = None,
        tasks: Sequence[str] | str = tuple(sorted(TASKS)),
        split: str = "val",
        per_task: int = 240,
        data_seed: int | Sequence[int] = DEFAULT_SEED,
        flops_weight: float = 0.5,
        reward: str = "mixed",
        step_cost: float = 0.002,
        bucket_tokens: int = 8,
        max_swaps: int = 8,
        profile: str | Path | None = None,
        fine_ratio: float = 0.2,
        order: str = "random",
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        budget: str = "flops",
    ) -> None:
        super().__init__()
        if isinstance(flops_weight, bool) or not isinstance(flops_weight, int | float) or flops_weight < 0:
            raise ValueError(f"flops_weight={flops_weight!r}; accepted: a number >= 0")
        self.budget = check_budget(budget)
        set_threads(threads)
        self.documents = training_documents(tasks, split, per_task, data_seed)
        self._picker = DocumentPicker(len(self.documents), order)
        adapter = build_adapter(model, model_args)
        self.model_name = model
        profile_path = profile if profile is not None else adapter.default_profile(adapter.pretrained)
        if profile_path is None:
            raise ValueError(
                f"model {model!r} ships no FastAV profile; pass profile=<path> (TokenExchange starts from it)"
            )
        self.profile = PruningProfile.load(profile_path)
        text_model = find_text_model(adapter.decoder)
        self._chooser = ScriptedChooser()
        config = PruningConfig(
            profile=self.profile, global_layer=self.profile.global_layer, fine_ratio=fine_ratio, chooser=self._chooser
        )
        self.samples = SampleRunner(adapter, config, self._chooser, self.documents, reward)
        self.global_layer = int(self.samples.runner.engine.config.global_layer)  # type: ignore[arg-type]
        self.coding = ExchangeCoding(self.global_layer, int(text_model.config.hidden_size), bucket_tokens, max_swaps)
        self.flops_weight, self.step_cost = float(flops_weight), float(step_cost)
        self.action_space = self.coding.action_space()
        self.observation_space = self.coding.observation_space()
        self.cache = self.samples.first_pass_cache(
            cache_dir, model, model_args, env="exchange", coding=self.coding.to_dict()
        )
        self._first: dict[int, tuple[ExchangeState, Outcome]] = {}
        self._outcomes: dict[tuple[int, tuple[int, ...]], Outcome] = {}
        self._state: ExchangeState | None = None
        self._index: int | None = None
        self._current: Outcome | None = None

    def first_pass(self, index: int) -> tuple[ExchangeState, Outcome]:
        """FastAV's pass of document ``index``: its starting state and outcome (computed once; read from
        ``cache_dir`` when it holds them)."""
        state, outcome = first_pass_of(
            self._first, index, self.cache, self.documents[index],
            lambda: self._compute_first_pass(index),
            lambda value: self._encode_first_pass(index, value),
            lambda data: self._decode_first_pass(index, data),
        )  # fmt: skip
        return ExchangeState(state.positions, state.modality, state.scores, state.kept.copy(),
                             state.base_observation), outcome  # fmt: skip

    def _compute_first_pass(self, index: int) -> tuple[ExchangeState, Outcome]:
        seen: list[ExchangeState] = []

        def watch(context: PruneContext) -> None:
            if context.stage == "global" and context.layer_idx == self.global_layer:
                seen.append(self.coding.start(context, self.profile)[0])

        outcome = self.samples.run(index, watch=watch)  # under ``caption``, after the full-token caption's pass
        return seen[0], outcome

    def _encode_first_pass(self, index: int, value: tuple[ExchangeState, Outcome]) -> dict[str, Any]:
        """A first pass as cache data: the starting state, FastAV's outcome and, under ``caption``, the document's
        full-token caption (null otherwise)."""
        full = self.samples.full_caption(index) if self.samples.needs_full_caption(index) else None
        return {"state": _encode_state(value[0]), "outcome": value[1].to_dict(), "full_caption": full}

    def _decode_first_pass(self, index: int, data: Mapping[str, Any]) -> tuple[ExchangeState, Outcome]:
        """The first pass :meth:`_encode_first_pass` wrote, each field checked (a ValueError names the first that is
        not as this environment writes it)."""
        names = ("state", "outcome", "full_caption")
        if set(data) != set(names):
            raise ValueError(f"value: not an object of {', '.join(names)}")
        full = data["full_caption"]
        wanted = self.samples.needs_full_caption(index)
        if (wanted and not isinstance(full, str)) or (not wanted and full is not None):
            raise ValueError(
                f"full_caption={full!r}; accepted: "
                + ("a string (the full-token caption)" if wanted else f"null (reward={self.samples.reward!r})")
            )
        state = _decode_state(data["state"], self.observation_space.shape[0] - STATE_SIZE)
        return state, self.samples.cached_outcome(index, data["outcome"], full_caption=full)

    def outcome(self, index: int, state: ExchangeState) -> Outcome:
        """Document ``index`` with ``state``'s keep set at K (computed once per keep set)."""
        key = (index, state.key())
        if key not in self._outcomes:

            def decide(context: PruneContext) -> PruneDecision | None:
                if context.stage == "global" and context.layer_idx == self.global_layer:
                    return self.coding.decision([state], context.positions.device)
                return None

            self._outcomes[key] = self.samples.run(index, decide)
        return self._outcomes[key]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Draw a document (``options={"index": i}`` picks one) and start from FastAV's selection."""
        super().reset(seed=seed)
        index = self._index = self._picker.pick(self.np_random, options)
        self._state, self._current = self.first_pass(index)
        doc = self.documents[index]
        info = {"sample_id": f"{doc['task']}/{doc['id']}", "kind": doc["kind"], "quality": self._current.quality,
                "relative_flops": self._current.relative_flops, "retention": self._current.retention,
                "answer": self._current.answer, "reference_logprob": self._current.reference_logprob}  # fmt: skip
        return self.coding.observe(self._state), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._state is None or self._index is None or self._current is None:
            raise RuntimeError("step() before reset(), or after the episode ended")
        value = self.coding.check_action(action)
        state, before = self._state, self._current
        if value == 0:
            self._state = None
            info = {"quality": before.quality, "relative_flops": before.relative_flops,
                    "retention": before.retention, "answer": before.answer,
                    "reference_logprob": before.reference_logprob, "swapped": 0}  # fmt: skip
            return self.coding.observe(state), 0.0, True, False, info
        swapped = state.swap(value, self.coding.bucket_tokens)
        after = self.outcome(self._index, state) if swapped else before
        reward = (after.quality - before.quality) - self.step_cost
        reward -= self.flops_weight * (after.cost(self.budget) - before.cost(self.budget)) / 100.0
        self._current = after
        truncated = state.swaps >= self.coding.max_swaps
        if truncated:
            self._state = None
        info = {"quality": after.quality, "relative_flops": after.relative_flops, "retention": after.retention,
                "kept_per_layer": {name: list(c) for name, c in after.kept_per_layer.items()}, "swapped": swapped,
                "swaps": state.swaps, "answer": after.answer,
                "reference_logprob": after.reference_logprob}  # fmt: skip
        return self.coding.observe(state), float(reward), False, truncated, info

    def close(self) -> None:
        self.samples.close()
        super().close()
