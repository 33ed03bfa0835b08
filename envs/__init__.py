"""Gymnasium environments over (model adapter + pruning engine + AV-Synth documents), installed as
``fastav_eval.envs``. Importing this package registers them:

- ``fastav/TokenRetention-v0`` (:class:`TokenRetentionEnv`): per-sample keep fractions, orders, cut layer, fine ratio;
- ``fastav/TokenExchange-v0`` (:class:`TokenExchangeEnv`): swaps that refine FastAV's selection of a sample.

Gymnasium 1.x no longer loads plugins from a ``gymnasium.envs`` entry point, so either import this package first
(``import fastav_eval.envs``) or name it in the id: ``gymnasium.make("fastav_eval.envs:fastav/TokenRetention-v0")``.
"""

from __future__ import annotations

import gymnasium

from fastav_eval.env_ids import ENVIRONMENTS
from fastav_eval.envs.coding import RetentionCoding
from fastav_eval.envs.exchange import ExchangeCoding, TokenExchangeEnv
from fastav_eval.envs.retention import TokenRetentionEnv

ENV_IDS = {env.env_id: env.entry_point for env in ENVIRONMENTS.values()}
"""Gymnasium id -> entry point (:data:`fastav_eval.env_ids.ENVIRONMENTS`)."""


def register() -> None:
    """Register the environments with Gymnasium (once per process)."""
    for env_id, entry_point in ENV_IDS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(env_id, entry_point=entry_point)


register()

__all__ = ["ENV_IDS", "ExchangeCoding", "RetentionCoding", "TokenExchangeEnv", "TokenRetentionEnv", "register"]
