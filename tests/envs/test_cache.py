"""The first-pass cache on disk (envs/cache.py): a second environment reads instead of computing (the model calls
counted), the values equal the computed ones exactly, a changed setting misses, a corrupt or mismatched entry is
recomputed with a warning, and two processes filling one folder at once leave whole entries."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fastav_eval.envs import TokenExchangeEnv, TokenRetentionEnv
from fastav_eval.envs.cache import FORMAT

SMALL = {"tasks": ["avsynth_qa", "avsynth_caption"], "per_task": 2, "reward": "score"}


def counted(env: Any) -> list[int]:
    """Counts the model passes of ``env`` (its SampleRunner's ``run``)."""
    calls: list[int] = []
    run = env.samples.run

    def counting(index: int, *args: Any, **kwargs: Any) -> Any:
        calls.append(index)
        return run(index, *args, **kwargs)

    env.samples.run = counting
    return calls


def assert_same_first_pass(computed: tuple[Any, Any], read: tuple[Any, Any]) -> None:
    (first, outcome), (other, other_outcome) = computed, read
    assert outcome == other_outcome
    if isinstance(first, np.ndarray):
        assert first.dtype == other.dtype and np.array_equal(first, other)
        return
    for name in ("positions", "modality", "scores", "kept", "base_observation"):
        mine, theirs = getattr(first, name), getattr(other, name)
        assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs), name


@pytest.mark.parametrize("env_class", [TokenRetentionEnv, TokenExchangeEnv])
def test_a_second_environment_reads_the_cache_exactly(env_class: type, tmp_path: Path) -> None:
    first = env_class(**SMALL, cache_dir=tmp_path)
    calls = counted(first)
    computed = [first.first_pass(index) for index in range(4)]
    assert calls == [0, 1, 2, 3] and first.cache.computed == 4
    assert len(list(tmp_path.glob("*.json"))) == 4
    first.close()
    second = env_class(**SMALL, cache_dir=tmp_path)
    calls = counted(second)
    read = [second.first_pass(index) for index in range(4)]
    assert calls == [] and second.cache.hits == 4  # no model pass: all four read from disk
    for mine, theirs in zip(computed, read, strict=True):
        assert_same_first_pass(mine, theirs)
    assert any(outcome.answer for _, outcome in read)  # captions generated (their CIDEr-D scored again on read)
    observation, _ = second.reset(options={"index": 1})
    assert observation.dtype == np.float32
    second.close()


def test_the_key_holds_what_the_values_depend_on(tmp_path: Path) -> None:
    """Another reward kind or coding misses; λ (not part of the pass) hits."""
    TokenRetentionEnv(**SMALL, cache_dir=tmp_path).first_pass(0)
    same_pass = TokenRetentionEnv(**{**SMALL, "flops_weight": 0.9}, cache_dir=tmp_path)
    calls = counted(same_pass)
    same_pass.first_pass(0)
    assert calls == [] and same_pass.cache.hits == 1
    for changes in ({"reward": "loglik"}, {"global_layer": 2}):
        other = TokenRetentionEnv(**{**SMALL, **changes}, cache_dir=tmp_path)
        calls = counted(other)
        other.first_pass(0)
        assert calls == [0] and other.cache.hits == 0, changes
    assert len(list(tmp_path.glob("*.json"))) == 3
    key = json.loads(next(iter(tmp_path.glob("*.json"))).read_text())["key"]
    assert {"model", "engine", "reward", "coding", "document", "max_new_tokens", "env"} <= set(key)
    assert key["model"]["weights"][0]["files"]  # the weights' sha256, not their folder's name
    assert key["document"]["media_sha1"]


def test_a_corrupt_or_mismatched_entry_is_recomputed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    env = TokenRetentionEnv(**SMALL, cache_dir=tmp_path)
    expected = [env.first_pass(index) for index in range(2)]
    paths = [env.cache.path(env.documents[index]) for index in range(2)]
    good = paths[0].read_text()
    entry = json.loads(good)
    short = {**entry, "value": {**entry["value"], "observation": {**entry["value"]["observation"], "shape": [37]}}}
    nan = json.loads(good.replace('"quality": ', '"quality": -', 1))
    for damage in (
        "{not json",
        good[: len(good) // 2],  # half a file
        paths[1].read_text(),  # another document's entry under this one's name
        json.dumps({**entry, "format": "fastav-first-pass/0"}),
        json.dumps(short),
        json.dumps(nan),
    ):
        paths[0].write_text(damage)
        fresh = TokenRetentionEnv(**SMALL, cache_dir=tmp_path)
        calls = counted(fresh)
        with caplog.at_level(logging.WARNING, logger="fastav_eval.envs.cache"):
            caplog.clear()
            value = fresh.first_pass(0)
        assert calls == [0] and fresh.cache.rejected == 1, damage[:40]
        assert "is not usable" in caplog.text and "recomputing it" in caplog.text
        assert_same_first_pass(expected[0], value)
        assert json.loads(paths[0].read_text())["format"] == FORMAT  # rewritten whole
        fresh.close()
    env.close()


def test_two_processes_filling_one_folder_leave_whole_entries(tmp_path: Path) -> None:
    """Two SubprocVecEnv workers drawing the same documents in the same order compute each entry at the same
    moment; every entry is then whole, and a third environment reads them all without a model pass."""
    from stable_baselines3.common.vec_env import SubprocVecEnv

    kwargs = {"tasks": "avsynth_qa", "per_task": 3, "order": "cycle", "threads": 1, "cache_dir": tmp_path}
    vec = SubprocVecEnv([lambda: TokenRetentionEnv(**kwargs), lambda: TokenRetentionEnv(**kwargs)])
    vec.reset()
    for _ in range(3):
        vec.step(np.zeros((2, 6), dtype=np.int64))
    vec.close()
    assert len(list(tmp_path.glob("*.json"))) == 3 and not list(tmp_path.glob("*.partial"))
    reader = TokenRetentionEnv(**{key: value for key, value in kwargs.items() if key != "threads"})
    calls = counted(reader)
    for index in range(3):
        reader.first_pass(index)
    assert calls == [] and reader.cache.hits == 3
    reader.close()
