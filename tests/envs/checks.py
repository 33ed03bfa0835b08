"""Checks the environment tests share: Gymnasium's and SB3's checkers, and the on-disk first-pass cache serving a
second environment."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium.utils.env_checker import check_env as gymnasium_check_env


def assert_passes_both_checkers(env: Any) -> None:
    """Gymnasium's ``check_env`` and Stable-Baselines3's (warnings on) accept ``env``."""
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    gymnasium_check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)


def assert_cache_serves_a_second_env(make_env: Callable[..., Any], index: int, folder: Path) -> None:
    """``make_env(cache_dir=folder)`` twice: the second reads document ``index``'s first pass (no model pass, one
    cache hit) and gets the computed observation (dtype included) and outcome."""
    first = make_env(cache_dir=folder)
    computed = first.first_pass(index)
    first.close()
    second = make_env(cache_dir=folder)
    calls: list[int] = []
    run = second.samples.run
    second.samples.run = lambda i, *args, **kwargs: calls.append(i) or run(i, *args, **kwargs)
    observation, outcome = second.first_pass(index)
    second.close()
    assert calls == [] and second.cache.hits == 1
    assert outcome == computed[1] and np.array_equal(observation, computed[0])
    assert observation.dtype == computed[0].dtype == np.float32
