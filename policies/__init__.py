"""Stable-Baselines3 training of pruning policies in :mod:`fastav_eval.envs`, saved policies, and the learned
chooser that deploys one through the engine's chooser hook (installed as ``fastav_eval.policies``)."""

from __future__ import annotations

from fastav_eval.policies.saved import SHIPPED, PolicyMeta, resolve_policy

__all__ = ["SHIPPED", "PolicyMeta", "resolve_policy"]
