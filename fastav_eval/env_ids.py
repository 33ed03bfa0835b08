"""The Gymnasium environments, one table: :mod:`fastav_eval.envs` registers each id with its entry point,
``fastav-eval train-policy --env`` names them by kind, and a saved policy's ``policy.json`` records the id.

A leaf that imports nothing (no Gymnasium): deploying a saved policy reads it without what training needs, and
importing any ``fastav_eval.envs`` module would run ``fastav_eval.envs``'s ``__init__`` (Gymnasium, registration).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Environment:
    """One environment: ``kind`` (``--env``, a policy's kind), its Gymnasium ``env_id`` and lazy ``entry_point``."""

    kind: str
    env_id: str
    entry_point: str


ENVIRONMENTS: dict[str, Environment] = {
    env.kind: env
    for env in (
        Environment("retention", "fastav/TokenRetention-v0", "fastav_eval.envs.retention:TokenRetentionEnv"),
        Environment("exchange", "fastav/TokenExchange-v0", "fastav_eval.envs.exchange:TokenExchangeEnv"),
    )
}
"""kind -> :class:`Environment`."""
