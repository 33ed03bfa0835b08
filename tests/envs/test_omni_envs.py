"""Both environments on ``fastav_qwen2_5_omni`` (a tiny random thinker saved like ``Qwen/Qwen2.5-Omni-7B``,
tests/models/omni_fixtures.py; the processor built locally, as the stock video processor needs torchvision):
Gymnasium's and Stable-Baselines3's checkers, the coding sized by this decoder, the reference answer's likelihood as
the reward's quality, and the first-pass cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fastav_eval.envs import TokenExchangeEnv, TokenRetentionEnv
from fastav_eval.models.qwen2_5_omni import Qwen25OmniAdapter
from tests.envs.checks import assert_cache_serves_a_second_env, assert_passes_both_checkers
from tests.models.omni_fixtures import save_checkpoint, tiny_processor


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("omni_env") / "checkpoint")


@pytest.fixture(autouse=True)
def _tiny_processor(monkeypatch):
    monkeypatch.setattr(Qwen25OmniAdapter, "load_processor", staticmethod(lambda pretrained: tiny_processor()))


def small(checkpoint: Path, **overrides) -> dict:
    return {"model": "fastav_qwen2_5_omni", "model_args": f"pretrained={checkpoint},dtype=float32,device=cpu",
            "tasks": ["avsynth_qa"], "per_task": 2, "threads": 1, **overrides}  # fmt: skip


def test_both_pass_gymnasium_and_sb3_checkers(checkpoint) -> None:
    for env_class in (TokenRetentionEnv, TokenExchangeEnv):
        kwargs = small(checkpoint)
        if env_class is TokenExchangeEnv:  # Qwen2.5-Omni ships no profile (calibrate makes one): a prefix here
            kwargs["profile"] = str(checkpoint.parent / "profile.json")
            write_prefix_profile(Path(kwargs["profile"]))
        env = env_class(**kwargs)
        try:
            assert_passes_both_checkers(env)
        finally:
            env.close()


def write_prefix_profile(path: Path) -> None:
    from fastav_eval.pruning import PruningProfile

    PruningProfile.prefix(video=2, audio=10).save(path)  # at the default global layer, half the depth


def test_retention_is_coded_for_this_decoder_and_rewards_the_references_likelihood(checkpoint) -> None:
    """Cut layers 1..2 (half of the 4 layers), the 38 observations from this 64-wide decoder; the unpruned pass
    keeps every token of the video and of the 2 s of audio; an action keeps what it asks for and its quality is the
    reference answer's per-token probability (reward=mixed on choice answers)."""
    env = TokenRetentionEnv(**small(checkpoint))
    try:
        assert (env.coding.global_layer, env.coding.hidden_size) == (2, 64)
        assert env.observation_space.shape == (38,) and env.action_space.nvec.tolist() == [5, 5, 2, 3, 3, 3]
        observation, _ = env.reset(options={"index": 0})
        assert observation.shape == (38,) and np.all(np.isfinite(observation))
        _, full = env.first_pass(0)
        assert full.kept["audio"] == 50 and full.kept["video"] > 0 and full.relative_flops == pytest.approx(100.0)
        assert full.answer is None and 0.0 < full.quality < 1.0  # exp(mean log p) of the reference answer
        # half of the audio, none of the video, cut at layer 1, no fine stage, in prefix order
        outcome = env.outcome(0, np.array([0, 3, 0, 1, 1, 0]))
        assert outcome.decision is not None and outcome.decision["cut_layer"] == 1
        assert outcome.kept["audio"] == 25 and outcome.kept["video"] <= 1  # a sink token where it falls
        assert outcome.relative_flops < 100.0 and outcome.quality != full.quality
        _, reward, terminated, _, info = env.step(np.array([0, 3, 0, 1, 1, 0]))
        assert terminated and reward == pytest.approx(
            outcome.quality - full.quality - 0.5 * outcome.relative_flops / 100
        )
        assert info["kept"] == outcome.kept
    finally:
        env.close()


def test_the_first_pass_cache_serves_a_second_environment(checkpoint, tmp_path: Path) -> None:
    assert_cache_serves_a_second_env(lambda **kw: TokenRetentionEnv(**small(checkpoint), **kw), 1, tmp_path)
