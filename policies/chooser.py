"""The learned chooser: a saved policy making each sample's decision at inference, through the engine's chooser
hook, with the coding the policy was trained with (:mod:`fastav_eval.envs.coding`, :mod:`fastav_eval.envs.exchange`).

- A TokenRetention policy decides at layer 1: one observation per sample, one action, the decisions it codes.
- A TokenExchange policy decides at FastAV's global layer K: from FastAV's selection it swaps until it stops (or
  reaches its swap budget), acting only on what the context shows (scores, the keep set), never on a reward.

It refuses a decoder of another type, depth or width than the one it was trained on, and samples whose audio-visual
modalities differ from its training samples'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fastav_eval.envs.coding import RetentionCoding
from fastav_eval.envs.exchange import ExchangeCoding
from fastav_eval.policies.saved import MODEL_FILE, PolicyMeta, decoder_identity, policy_hash, resolve_policy
from fastav_eval.pruning import PruneContext, PruneDecision, PruningConfig, PruningProfile
from fastav_eval.pruning.layout import AV_MODALITIES


def load_algorithm(meta: PolicyMeta, directory: Path) -> Any:
    import stable_baselines3

    return getattr(stable_baselines3, meta.algorithm).load(str(directory / MODEL_FILE), device="cpu")


class LearnedChooser:
    """A saved policy (folder, ``policy.zip``, or a shipped policy's name) as an engine chooser."""

    def __init__(self, where: str | Path, deterministic: bool = True) -> None:
        self.directory = resolve_policy(where)
        self.meta = PolicyMeta.load(self.directory)
        self.sha256 = policy_hash(self.directory)
        self.model = load_algorithm(self.meta, self.directory)
        self.deterministic = deterministic
        self.__name__ = f"policy:{self.directory.name}"
        if self.meta.kind == "retention":
            self.coding: RetentionCoding | ExchangeCoding = RetentionCoding.from_dict(self.meta.coding)
        else:
            self.coding = ExchangeCoding.from_dict(self.meta.coding)
            self.profile = PruningProfile.from_dict(self.meta.exchange["profile"])  # type: ignore[index]

    # ------------------------------------------------------------------ engine hooks
    def config(self) -> PruningConfig:
        """The engine config that deploys this policy: the retention policy decides every cut alone; the exchange
        policy refines FastAV's global rule at K under FastAV's fine ratio."""
        if self.meta.kind == "retention":
            return PruningConfig.chosen_by(self, global_layer=self.coding.global_layer)
        assert self.meta.exchange is not None
        return PruningConfig(profile=self.profile, global_layer=self.coding.global_layer,
                             fine_ratio=self.meta.exchange["fine_ratio"], chooser=self)  # fmt: skip

    def check_decoder(self, text_config: Any) -> None:
        trained = self.meta.decoder
        here = decoder_identity(text_config)
        if here != trained:
            raise ValueError(
                f"policy {self.directory} was trained on {self.meta.model} ({trained}); this decoder is {here}: "
                "train a policy for this model (fastav-eval train-policy --model ...)"
            )

    def describe(self) -> dict[str, Any]:
        meta = self.meta
        return {"name": self.__name__, "path": str(self.directory), "sha256": self.sha256, "env_id": meta.env_id,
                "algorithm": meta.algorithm, "trained_on": meta.model}  # fmt: skip

    def _check_modalities(self, context: PruneContext) -> None:
        present = [name for name in AV_MODALITIES if bool(context.eligible_of(name).any(1).all())]
        if present != list(self.meta.modalities):
            raise ValueError(
                f"policy {self.directory} was trained on samples with {self.meta.modalities} tokens; these have "
                f"{present}: it cannot decide for them"
            )

    def __call__(self, context: PruneContext) -> PruneDecision | list[PruneDecision] | None:
        if context.stage != "global" or not bool(context.undecided.any()):
            return None
        if isinstance(self.coding, RetentionCoding):
            self._check_modalities(context)
            actions, _ = self.model.predict(self.coding.observe(context), deterministic=self.deterministic)
            return self.coding.decisions(np.asarray(actions).reshape(len(context.undecided), -1), context)
        if context.layer_idx != self.coding.global_layer:
            return None  # FastAV's selection is made at K
        self._check_modalities(context)
        states = self.coding.start(context, self.profile)
        active = list(range(len(states)))
        while active:
            observations = np.stack([self.coding.observe(states[row]) for row in active])
            actions, _ = self.model.predict(observations, deterministic=self.deterministic)
            still = []
            for row, action in zip(active, np.asarray(actions).reshape(-1), strict=True):
                if int(action) == 0:
                    continue
                states[row].swap(int(action), self.coding.bucket_tokens)
                if states[row].swaps < self.coding.max_swaps:
                    still.append(row)
            active = still
        return self.coding.decision(states, context.positions.device)


def policy_config(where: str | Path) -> PruningConfig:
    """``policy=<where>``: the engine config deploying the saved policy."""
    return LearnedChooser(where).config()


__all__ = ["LearnedChooser", "load_algorithm", "policy_config"]
