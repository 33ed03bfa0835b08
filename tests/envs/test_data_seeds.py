"""Training documents from several AV-Synth generator seeds (``data_seed`` in the environments, ``--data-seeds`` in
train-policy): each seed's stream as the generator builds it, ids that name the seed, val always from the default."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from fastav_eval.avsynth import build_documents
from fastav_eval.avsynth.dataset import DEFAULT_SEED
from fastav_eval.envs.samples import training_documents
from fastav_eval.policies.train import TrainSettings, seed_list


def test_several_seeds_give_each_streams_documents_with_ids_naming_the_seed() -> None:
    built = training_documents(["avsynth_qa", "avsynth_match"], "train", 3, [DEFAULT_SEED, 5])
    assert len(built) == 2 * 2 * 3
    for seed in (DEFAULT_SEED, 5):
        for task in ("avsynth_match", "avsynth_qa"):
            expected = build_documents("train", task, 3, seed)  # the generator's own stream, the oracle
            ours = [d for d in built if d["task"] == task and f"-s{seed}-" in d["id"]]
            assert [d["id"] for d in ours] == [f"{task}-train-s{seed}-{i:05d}" for i in range(3)]
            assert [{**d, "id": None} for d in ours] == [{**d, "id": None} for d in expected]
    assert len({d["media_sha1"] for d in built}) == len(built)  # other seeds draw other scenes
    one = training_documents("avsynth_qa", "train", 2, 5)  # one seed: the generator's ids unchanged
    assert [d["id"] for d in one] == ["avsynth_qa-train-00000", "avsynth_qa-train-00001"]


@pytest.mark.parametrize("seeds", [[], [3, 3], -1, True, [1.5], "7", [2**63]])
def test_bad_seeds_are_named(seeds) -> None:
    with pytest.raises(ValueError, match=r"data_seed=.*; accepted: an int >= 0, or a non-empty list of distinct"):
        training_documents("avsynth_qa", "train", 2, seeds)


def test_train_policy_draws_train_documents_from_its_seeds_and_val_from_the_default(tmp_path: Path) -> None:
    settings = TrainSettings(out=tmp_path, data_seeds=(1, 2, 3))
    assert settings.env_kwargs("train")["data_seed"] == [1, 2, 3]
    assert "data_seed" not in settings.env_kwargs("val") and "data_seed" not in settings.val_set()
    assert TrainSettings(out=tmp_path).env_kwargs("train")["data_seed"] == [DEFAULT_SEED]
    assert seed_list("20261121, 1,2") == (20261121, 1, 2)
    for text in ("", "1,1", "a", "-2"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"--data-seeds .*; accepted: comma-separated distinct"):
            seed_list(text)
    with pytest.raises(ValueError, match=r"data_seed=\[\]"):
        TrainSettings(out=tmp_path, data_seeds=())
