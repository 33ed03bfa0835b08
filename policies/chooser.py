"""The learned chooser: a saved policy making each sample's decision at inference, through the engine's chooser
hook, with the coding the policy was trained with (:mod:`fastav_eval.envs.coding`, :mod:`fastav_eval.envs.exchange`).

- A TokenRetention policy decides at layer 1: one observation per sample, one action, the decisions it codes.
- A TokenExchange policy decides at FastAV's global layer K: from FastAV's selection it swaps until it stops (or
  reaches its swap budget), acting only on what the context shows (scores, the keep set), never on a reward.

It refuses a decoder of another type, depth or width than the one it was trained on, and samples whose audio-visual
modalities differ from its training samples'.

The policy network is rebuilt from ``policy.json`` and its weights read from ``policy.safetensors``
(:mod:`fastav_eval.policies.network`): loading a policy runs no code from its folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fastav_eval.envs.coding import RetentionCoding
from fastav_eval.envs.exchange import ExchangeCoding
from fastav_eval.policies.network import build_network, load_weights, space_to_dict
from fastav_eval.policies.saved import META_FILE, MODEL_FILE, PolicyMeta, decoder_identity, policy_hash, resolve_policy
from fastav_eval.pruning import PruneContext, PruneDecision, PruningConfig, PruningProfile
from fastav_eval.pruning.layout import AV_MODALITIES


def load_network(meta: PolicyMeta, directory: Path, coding: RetentionCoding | ExchangeCoding) -> Any:
    """The policy network (SB3's ``ActorCriticPolicy``, eval mode) rebuilt from ``meta.network`` with the weights of
    ``policy.safetensors``; its spaces must be the ones ``coding`` observes and acts in."""
    where = str(directory / META_FILE)
    for role, space in (("observation", coding.observation_space()), ("action", coding.action_space())):
        name, wanted = f"{role}_space", space_to_dict(space, role)
        if meta.network[name] != wanted:
            raise ValueError(
                f"{where}: network.{name}={meta.network[name]!r}; accepted: {wanted!r}, the space of the {meta.kind} "
                "coding in its coding field"
            )
    return load_weights(build_network(meta.network, where), directory / MODEL_FILE)


class LearnedChooser:
    """A saved policy (folder, one of its files, or a shipped policy's name) as an engine chooser.

    ``model`` is the policy network; ``model.predict(observations [N, obs], deterministic=True)`` gives the actions
    ``[N, *action_shape]`` that SB3's own ``model.predict`` gave for the trained model.
    """

    def __init__(self, where: str | Path, deterministic: bool = True) -> None:
        self.directory = resolve_policy(where)
        self.meta = PolicyMeta.load(self.directory)
        self.sha256 = policy_hash(self.directory)
        self.deterministic = deterministic
        self.__name__ = f"policy:{self.directory.name}"
        coding_class = RetentionCoding if self.meta.kind == "retention" else ExchangeCoding
        try:
            self.coding: RetentionCoding | ExchangeCoding = coding_class.from_dict(self.meta.coding)
        except TypeError as error:
            raise ValueError(
                f"{self.directory / META_FILE}: coding={self.meta.coding!r}; accepted: the fields of "
                f"{coding_class.__name__} ({error})"
            ) from error
        if self.meta.kind == "exchange":
            exchange = self.meta.exchange
            if not isinstance(exchange, dict) or sorted(exchange) != ["fine_ratio", "profile"]:
                raise ValueError(
                    f"{self.directory / META_FILE}: exchange={exchange!r}; accepted: an object with FastAV's "
                    "profile and fine_ratio (an exchange policy refines FastAV's selection)"
                )
            self.profile = PruningProfile.from_dict(exchange["profile"])
        self.model = load_network(self.meta, self.directory, self.coding)

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


__all__ = ["LearnedChooser", "load_network", "policy_config"]
