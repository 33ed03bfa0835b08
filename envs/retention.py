"""``fastav/TokenRetention-v0``: one sample per episode; the policy picks how much of each modality to keep, in which
order, where to cut and the fine ratio after the cut; the reward is the pruned answer's quality minus λ times the
budget: relative FLOPs (default) or the audio-visual token retention (``budget="retention"``).

An episode is one step (a contextual bandit). ``reset`` draws a document and returns its observation, read at
layer 1 of an unpruned pass (:class:`~fastav_eval.envs.coding.RetentionCoding`); ``step(action)`` runs the pruned
pass and ends the episode. The unpruned pass (observation, full-token quality and, under ``reward="caption"``, the
full-token caption a pruned caption is compared with) is cached per document, and so is each (document, action)
outcome: pruning is deterministic, so a repeated pair gives the same answer. With ``cache_dir`` the unpruned pass is
also kept on disk, shared by processes and runs (:mod:`fastav_eval.envs.cache`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np

from fastav_eval.avsynth import TASKS
from fastav_eval.avsynth.dataset import DEFAULT_SEED
from fastav_eval.envs.cache import decode_array, encode_array, first_pass_of
from fastav_eval.envs.coding import RetentionCoding
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
from fastav_eval.pruning import PruneContext, PruningConfig, PruningProfile, find_text_model


def default_global_layer(adapter: Any, num_layers: int) -> int:
    """The latest cut a policy may choose: the model's calibrated global layer where it ships a profile, else half
    the depth (FastAV's K)."""
    profile = adapter.default_profile(adapter.pretrained)
    if profile is not None:
        loaded = PruningProfile.load(profile)
        if loaded.global_layer is not None:
            return int(loaded.global_layer)
    return num_layers // 2


class TokenRetentionEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """Per-sample token retention.

    Args:
        model: an lmms-eval model name of this package (``fastav_tiny``, ``fastav_videollama2``, ...).
        model_args: its ``--model_args`` (string or dict): ``pretrained``, ``device``, ``dtype``,
            ``attn_implementation`` and the adapter's own keys; no pruning keys.
        tasks: AV-Synth tasks to draw documents from.
        split: ``train`` or ``val`` (never ``test``).
        per_task: documents per task.
        data_seed: the AV-Synth generator seed of the split, or several (``per_task`` documents per task from each).
        flops_weight: λ; the reward is ``quality - baseline - λ · cost / 100``, the cost in % by ``budget``.
        budget: ``flops`` (default: relative prefill FLOPs) or ``retention`` (the share of audio-visual tokens
            kept, mean over layers: :func:`fastav_eval.records.retention`); :data:`~fastav_eval.envs.samples.BUDGETS`.
        reward: ``mixed`` (default), ``loglik``, ``score`` or ``caption`` (AVEX-Prune's captioning reward: a
            caption against the reference and the full-token caption, CIDEr-D, and the reference's likelihood;
            the first pass's caption is the full-token one) (:data:`~fastav_eval.envs.samples.REWARDS`).
        relative_to_full: subtract the document's full-token quality (a per-sample baseline: same optimum,
            lower variance).
        global_layer: the latest cut layer (default: the model's calibrated one, 3 for fastav_tiny).
        order: ``random`` (default) or ``cycle``: each document in turn (an evaluation pass over all of them).
        threads: torch threads of this process (None: unchanged).
        cache_dir: a folder of first passes on disk, shared by processes and runs (None: in memory only).
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
        relative_to_full: bool = True,
        global_layer: int | None = None,
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
        self.flops_weight, self.relative_to_full = float(flops_weight), relative_to_full
        adapter = build_adapter(model, model_args)
        self.model_name = model
        text_model = find_text_model(adapter.decoder)
        num_layers = len(text_model.layers)
        layer = default_global_layer(adapter, num_layers) if global_layer is None else global_layer
        if not 1 <= layer < num_layers:
            raise ValueError(f"global_layer={layer}; accepted: 1..{num_layers - 1} for this {num_layers}-layer decoder")
        self.coding = RetentionCoding(layer, int(text_model.config.hidden_size))
        self.action_space = self.coding.action_space()
        self.observation_space = self.coding.observation_space()
        self._chooser = ScriptedChooser()
        config = PruningConfig.chosen_by(self._chooser, global_layer=layer)
        self.samples = SampleRunner(adapter, config, self._chooser, self.documents, reward)
        self.cache = self.samples.first_pass_cache(
            cache_dir, model, model_args, env="retention", coding=self.coding.to_dict()
        )
        self._first: dict[int, tuple[np.ndarray, Outcome]] = {}
        self._outcomes: dict[tuple[int, tuple[int, ...]], Outcome] = {}
        self._index: int | None = None

    # ------------------------------------------------------------------ cached passes
    def first_pass(self, index: int) -> tuple[np.ndarray, Outcome]:
        """Document ``index``'s observation and its unpruned outcome (computed once; read from ``cache_dir`` when
        it holds them)."""
        return first_pass_of(
            self._first, index, self.cache, self.documents[index],
            lambda: self._compute_first_pass(index),
            lambda value: {"observation": encode_array(value[0]), "outcome": value[1].to_dict()},
            lambda data: self._decode_first_pass(index, data),
        )  # fmt: skip

    def _compute_first_pass(self, index: int) -> tuple[np.ndarray, Outcome]:
        seen: list[np.ndarray] = []

        def watch(context: PruneContext) -> None:
            if context.layer_idx == 1 and context.stage == "global":
                seen.append(self.coding.observe(context)[0])

        outcome = self.samples.run(index, watch=watch, unpruned=True)
        return seen[0], outcome

    def _decode_first_pass(self, index: int, data: Mapping[str, Any]) -> tuple[np.ndarray, Outcome]:
        shape = self.observation_space.shape
        observation = decode_array(data["observation"], "observation", ("float32",), shape)
        return observation, self.samples.cached_outcome(index, data["outcome"], unpruned=True)

    def outcome(self, index: int, action: np.ndarray) -> Outcome:
        """Document ``index`` pruned as ``action`` asks (computed once per pair)."""
        action = self.coding.check_action(action)
        key = (index, tuple(int(a) for a in action))
        if key not in self._outcomes:
            self._outcomes[key] = self.samples.run(
                index,
                lambda context: self.coding.decisions(action[None], context) if context.stage == "global" else None,
            )
        return self._outcomes[key]

    # ------------------------------------------------------------------ gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Draw a document (``options={"index": i}`` picks one)."""
        super().reset(seed=seed)
        index = self._index = self._picker.pick(self.np_random, options)
        observation, _ = self.first_pass(index)
        doc = self.documents[index]
        return observation.copy(), {"sample_id": f"{doc['task']}/{doc['id']}", "kind": doc["kind"]}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._index is None:
            raise RuntimeError("step() before reset(): an episode is one sample, drawn by reset()")
        action = self.coding.check_action(action)  # a malformed action leaves the episode as it was
        index, self._index = self._index, None
        observation, full = self.first_pass(index)
        outcome = self.outcome(index, action)
        baseline = full.quality if self.relative_to_full else 0.0
        reward = outcome.quality - baseline - self.flops_weight * outcome.cost(self.budget) / 100.0
        doc = self.documents[index]
        info = {
            "sample_id": f"{doc['task']}/{doc['id']}", "kind": doc["kind"], "quality": outcome.quality,
            "full_quality": full.quality, "relative_flops": outcome.relative_flops, "retention": outcome.retention,
            "kept": outcome.kept, "kept_per_layer": {name: list(c) for name, c in outcome.kept_per_layer.items()},
            "action": self.coding.describe(action), "answer": outcome.answer,
            "reference_logprob": outcome.reference_logprob,
        }  # fmt: skip
        return observation.copy(), float(reward), True, False, info

    def close(self) -> None:
        self.samples.close()
        super().close()
