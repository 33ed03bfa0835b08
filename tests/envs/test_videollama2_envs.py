"""Both environments on ``fastav_videollama2`` (the tiny checkpoint the official VideoLLaMA2 code saved,
tests/fixtures/videollama2_tiny): Gymnasium's and Stable-Baselines3's checkers, the coding sized by this decoder,
and a policy of another decoder (the shipped fastav_tiny one) refused on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fastav_eval.envs import TokenExchangeEnv, TokenRetentionEnv
from fastav_eval.policies.chooser import LearnedChooser
from fastav_eval.pruning import find_text_model, install
from tests.envs.checks import assert_cache_serves_a_second_env, assert_passes_both_checkers
from tests.models.videollama2_fixtures import FIXTURE, VISION_TOWER, tiny_adapter

MODEL_ARGS = f"pretrained={FIXTURE},vision_tower={VISION_TOWER},dtype=float32,device=cpu"
SMALL = {"model": "fastav_videollama2", "model_args": MODEL_ARGS, "tasks": ["avsynth_qa"], "per_task": 2}


def test_both_pass_gymnasium_and_sb3_checkers() -> None:
    for env_class in (TokenRetentionEnv, TokenExchangeEnv):
        env = env_class(**SMALL)
        try:
            assert_passes_both_checkers(env)
        finally:
            env.close()


def test_retention_is_coded_for_this_decoder() -> None:
    """Cut layers 1..2 (half of the 4 layers: VideoLLaMA2's profile names no global layer), the question projected
    from this decoder's 64-wide hidden states, the same 38 observations; an action keeps what it asks for."""
    env = TokenRetentionEnv(**SMALL)
    try:
        assert (env.coding.global_layer, env.coding.hidden_size) == (2, 64)
        assert env.observation_space.shape == (38,) and env.action_space.nvec.tolist() == [5, 5, 2, 3, 3, 3]
        observation, _ = env.reset(options={"index": 0})
        assert observation.shape == (38,) and np.all(np.isfinite(observation))
        _, full = env.first_pass(0)
        assert (full.kept["video"], full.kept["audio"]) == (18, 1496) and full.kept["text"] > 0  # 4 frames, 30 s
        assert full.relative_flops == pytest.approx(100.0)
        # an eighth of the video and a quarter of the audio, cut at layer 1, no fine stage, in prefix order
        outcome = env.outcome(0, np.array([1, 2, 0, 1, 1, 0]))
        assert outcome.decision is not None and outcome.decision["cut_layer"] == 1
        assert outcome.kept["audio"] == 374 and outcome.kept["video"] in (2, 3)  # + a sink token where it falls
        assert outcome.relative_flops < 100.0
    finally:
        env.close()


def test_a_policy_of_another_decoder_is_refused() -> None:
    adapter = tiny_adapter()
    text_config = find_text_model(adapter.decoder).config
    assert (text_config.num_hidden_layers, text_config.hidden_size) == (4, 64)
    shipped = LearnedChooser("fastav_tiny_retention")
    with pytest.raises(ValueError, match=r"was trained on fastav_tiny \(.*'num_layers': 6.*this decoder is .*4"):
        install(adapter.decoder, shipped.config())


def test_the_first_pass_cache_serves_a_second_environment(tmp_path: Path) -> None:
    """On the tiny VideoLLaMA2 checkpoint: a second environment reads the unpruned pass instead of computing it."""
    assert_cache_serves_a_second_env(lambda **kw: TokenRetentionEnv(**SMALL, **kw), 0, tmp_path)
