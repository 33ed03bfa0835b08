"""Both environments under Gymnasium's and Stable-Baselines3's checkers, seeding, vectorised stepping, malformed
actions, and their passes against oracles (the unpruned model, FastAV's own selection, the engine's token counts)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import fastav_eval.envs  # noqa: F401 (registers the environments)
from fastav_eval.analysis.testbed_runs import run_condition
from fastav_eval.avsynth import build_documents
from fastav_eval.envs import TokenExchangeEnv, TokenRetentionEnv
from fastav_eval.envs.exchange import SWAPS
from fastav_eval.pruning import PruningConfig, PruningProfile
from fastav_eval.testbed import WEIGHTS_DIR, TestbedModel
from tests.envs.checks import assert_passes_both_checkers

SMALL = {"tasks": ["avsynth_qa", "avsynth_caption"], "per_task": 2}


@pytest.fixture(scope="module")
def retention() -> TokenRetentionEnv:
    env = TokenRetentionEnv(**SMALL)
    yield env
    env.close()


@pytest.fixture(scope="module")
def exchange() -> TokenExchangeEnv:
    env = TokenExchangeEnv(**SMALL)
    yield env
    env.close()


def test_both_pass_gymnasium_and_sb3_checkers(retention: TokenRetentionEnv, exchange: TokenExchangeEnv) -> None:
    for env in (retention, exchange):
        assert_passes_both_checkers(env)


def test_made_by_id_in_a_fresh_process() -> None:
    code = (
        "import gymnasium\n"
        "env = gymnasium.make('fastav_eval.envs:fastav/TokenRetention-v0', tasks='avsynth_qa', per_task=1)\n"
        "obs, _ = env.reset(seed=0)\n"
        "import fastav_eval.envs\n"
        "other = gymnasium.make('fastav/TokenExchange-v0', tasks='avsynth_qa', per_task=1)\n"
        "print(obs.shape, other.action_space)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(38,) Discrete(5)" in done.stdout


def test_seeded_episodes_repeat(retention: TokenRetentionEnv) -> None:
    def episodes(seed: int) -> list[tuple[str, float]]:
        retention.action_space.seed(seed)
        retention.reset(seed=seed)
        out = []
        for _ in range(4):
            _, info = retention.reset()
            _, reward, terminated, truncated, _ = retention.step(retention.action_space.sample())
            assert terminated and not truncated
            out.append((info["sample_id"], reward))
        return out

    assert episodes(3) == episodes(3)
    assert episodes(3) != episodes(4)


def test_retention_outcomes_match_the_harness(retention: TokenRetentionEnv) -> None:
    """The unpruned pass is the unpruned model's answer; an action's pass keeps what the action asks for."""
    model = TestbedModel.load(WEIGHTS_DIR)
    documents = retention.documents[:2]
    assert all(doc["task"] == "avsynth_caption" for doc in documents)  # reward "mixed" generates captions
    full = run_condition(model, documents, "full", None)
    for index, result in enumerate(full):
        _, outcome = retention.first_pass(index)
        assert outcome.answer == result.response
        assert outcome.relative_flops == pytest.approx(100.0)
    # A choice answer's quality under "mixed" is the reference's per-token probability: nothing is generated.
    _, choice = retention.first_pass(2)
    assert retention.documents[2]["choices"] and choice.answer is None and 0.0 < choice.quality <= 1.0
    # 1 of 8 frames, 9 of 36 audio steps, cut at layer 1, no fine stage: whole chunks, evenly spaced.
    outcome = retention.outcome(0, np.array([1, 2, 0, 0, 0, 0]))
    sink = 1  # the prefix is 3 tokens and sink_tokens=4: the first video token always stays
    assert outcome.kept["audio"] == 9 * 4
    assert outcome.kept["video"] in (16, 16 + sink)
    assert outcome.decision is not None and outcome.decision["cut_layer"] == 1
    assert outcome.decision["action"]["audio_keep"] == 0.25
    # A fine ratio after a cut at layer 2 drops tokens at every later layer.
    pruned = retention.outcome(0, np.array([4, 4, 1, 1, 1, 2]))
    assert pruned.decision is not None and pruned.decision["fine_ratio"] == 0.2
    assert pruned.relative_flops < 100.0


def test_malformed_actions_are_named(retention: TokenRetentionEnv, exchange: TokenExchangeEnv) -> None:
    retention.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        retention.step(np.array([0, 0, 0]))
    with pytest.raises(ValueError, match=r"cut_layer=7; accepted: 0\.\.2"):
        retention.step(np.array([0, 0, 7, 0, 0, 0]))
    with pytest.raises(ValueError, match="not integral"):
        retention.step(np.array([0.5, 0, 0, 0, 0, 0]))
    exchange.reset(seed=0)
    with pytest.raises(ValueError, match=r"action=9; accepted: 0\.\.4"):
        exchange.step(9)
    retention.step(np.zeros(6, dtype=np.int64))  # the malformed actions left the episode open
    with pytest.raises(RuntimeError, match="before reset"):
        retention.step(np.zeros(6, dtype=np.int64))


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="split='test'; accepted: \\['train', 'val'\\]"):
        TokenRetentionEnv(split="test", per_task=1)
    with pytest.raises(ValueError, match="tasks="):
        TokenRetentionEnv(tasks=["avsynth_nope"], per_task=1)
    with pytest.raises(ValueError, match="not accepted here"):
        TokenRetentionEnv(model_args="fine_ratio=0.2", per_task=1)
    with pytest.raises(ValueError, match="reward='likelihood'"):
        TokenExchangeEnv(reward="likelihood", per_task=1)


def test_exchange_starts_from_fastav_and_keeps_its_budget(exchange: TokenExchangeEnv) -> None:
    model = TestbedModel.load(WEIGHTS_DIR)
    shipped = PruningProfile.load(WEIGHTS_DIR / "profile.json")
    fastav = run_condition(model, exchange.documents[:1], "full", PruningConfig(profile=shipped, fine_ratio=0.2))[0]
    _observation, info = exchange.reset(options={"index": 0})
    _, outcome = exchange.first_pass(0)
    assert outcome.relative_flops == pytest.approx(fastav.relative_flops)
    assert outcome.kept == {name: counts[-1] for name, counts in fastav.record.kept_per_layer.items()}
    state, _ = exchange.first_pass(0)
    kept_before = state.kept.sum()
    audio = state.modality == 2
    total_reward, quality = 0.0, info["quality"]
    for action in (SWAPS.index(("audio", "video")), SWAPS.index(("video", "audio"))):
        _, reward, terminated, _truncated, step_info = exchange.step(action)
        assert step_info["swapped"] == exchange.coding.bucket_tokens
        assert reward == pytest.approx(step_info["quality"] - quality - exchange.step_cost, abs=1e-9)
        assert step_info["relative_flops"] == pytest.approx(fastav.relative_flops)  # same count, same budget
        quality, total_reward = step_info["quality"], total_reward + reward
    _, reward, terminated, _, _ = exchange.step(0)
    assert terminated and reward == 0.0
    assert state.kept.sum() == kept_before and audio.any()


def test_vectorised_stepping_matches_one_process() -> None:
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    def make(rank: int):
        return lambda: TokenRetentionEnv(tasks="avsynth_qa", per_task=3, threads=1)

    def run(vec_class) -> list[np.ndarray]:
        env = vec_class([make(0), make(1)])
        env.seed(11)
        env.action_space.seed(11)
        observations = [env.reset()]
        rewards = []
        for _ in range(3):
            obs, reward, _done, _ = env.step(np.stack([env.action_space.sample() for _ in range(2)]))
            observations.append(obs)
            rewards.append(reward)
        env.close()
        return [*observations, *rewards]

    torch.manual_seed(0)
    for one, other in zip(run(DummyVecEnv), run(SubprocVecEnv), strict=True):
        np.testing.assert_allclose(one, other, rtol=1e-5, atol=1e-6)


def test_training_documents_are_not_test_documents() -> None:
    test_ids = {d["id"] for d in build_documents("test", "avsynth_qa", 240)}
    env_docs = TokenRetentionEnv(tasks="avsynth_qa", per_task=240).documents
    assert not test_ids & {d["id"] for d in env_docs}


def test_a_split_holds_documents_per_task_and_a_large_build_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """1..DOCUMENTS_PER_TASK documents per task (five-digit ids); the val stream starts with the shipped val split
    (its parquet, the oracle); a build of SLOW_BUILD or more per task says so before it starts."""
    import logging

    import pyarrow.parquet as pq

    from fastav_eval.envs.samples import DOCUMENTS_PER_TASK, SLOW_BUILD, training_documents
    from fastav_eval.resources import tasks_path

    for per_task in (0, DOCUMENTS_PER_TASK + 1, 2.5, True):
        with pytest.raises(ValueError, match=rf"per_task={per_task!r}; accepted: an int in 1\.\.100000"):
            training_documents("avsynth_qa", "train", per_task)  # type: ignore[arg-type]
    shipped = pq.read_table(tasks_path() / "avsynth" / "data" / "val" / "avsynth_qa.parquet").to_pylist()
    built = training_documents("avsynth_qa", "val", len(shipped))
    assert [(d["id"], d["media_sha1"]) for d in built] == [(d["id"], d["media_sha1"]) for d in shipped]
    assert built[-1]["id"] == f"avsynth_qa-val-{len(shipped) - 1:05d}"
    with caplog.at_level(logging.INFO, logger="fastav_eval.envs.samples"):
        training_documents("avsynth_qa", "val", 3)
        assert not caplog.records
        assert len(training_documents(["avsynth_qa", "avsynth_match"], "train", SLOW_BUILD)) == 2 * SLOW_BUILD
    assert [record.getMessage()[:62] for record in caplog.records] == [
        "building 2000 train documents of avsynth_match (seed 20261121,",
        "building 2000 train documents of avsynth_qa (seed 20261121, ta",
    ]
