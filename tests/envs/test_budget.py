"""The retention budget beside the FLOPs one (issue 23): ``budget="retention"`` charges the share of audio-visual
tokens kept (mean over layers), checked against a count made here from the info dict's per-layer counts; a bad
budget is refused naming the field; the budget is not part of the first-pass cache key, whose outcomes now hold the
per-layer counts (format ``/2``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fastav_eval.envs import TokenExchangeEnv, TokenRetentionEnv
from fastav_eval.envs.exchange import SWAPS
from fastav_eval.envs.samples import BUDGETS, Outcome

SMALL = {"tasks": ["avsynth_qa"], "per_task": 2, "reward": "loglik", "flops_weight": 0.5}


def hand_retention(kept_per_layer: dict[str, list[int]]) -> float:
    """Video + audio tokens each layer processed, their mean over the layers, against layer 0's (all of them), %."""
    av = np.asarray(kept_per_layer["video"], dtype=np.float64) + np.asarray(kept_per_layer["audio"], dtype=np.float64)
    return float(100.0 * av.mean() / av[0])


def test_outcome_derives_kept_and_retention_from_its_per_layer_counts() -> None:
    outcome = Outcome(0.5, 61.0, None, None, {"text": [5, 5, 5], "video": [8, 2, 2], "audio": [4, 4, 1]})
    assert outcome.kept == {"text": 5, "video": 2, "audio": 1}
    assert outcome.retention == pytest.approx(100.0 * (12 + 6 + 3) / (3 * 12))
    assert outcome.cost("flops") == 61.0 and outcome.cost("retention") == outcome.retention
    assert Outcome.from_dict(outcome.to_dict()) == outcome
    with pytest.raises(ValueError, match=r"budget='tokens'; accepted: \['flops', 'retention'\]"):
        outcome.cost("tokens")
    old = {**outcome.to_dict(), "kept": outcome.kept}  # a fastav-first-pass/1 outcome: last-layer counts only
    del old["kept_per_layer"]
    with pytest.raises(ValueError, match="outcome: not an object of quality, relative_flops, answer, decision, kept_"):
        Outcome.from_dict(old)
    with pytest.raises(ValueError, match=r"outcome.kept_per_layer=.*one per layer, equal lengths"):
        Outcome.from_dict({**outcome.to_dict(), "kept_per_layer": {"video": [8, 2], "audio": [4, 4, 1]}})


@pytest.mark.parametrize("env_class", [TokenRetentionEnv, TokenExchangeEnv])
def test_a_bad_budget_is_refused_naming_the_field(env_class: type) -> None:
    with pytest.raises(ValueError, match=r"budget='tokens'; accepted: \['flops', 'retention'\]"):
        env_class(tasks="avsynth_qa", per_task=1, budget="tokens")
    assert BUDGETS == ("flops", "retention")


def test_retention_budget_charges_the_kept_share_of_audio_visual_tokens() -> None:
    """Per action: reward = quality - full quality - λ · retention / 100 under ``retention``, and the same pass gives
    quality - full quality - λ · relative FLOPs / 100 under ``flops`` (the default)."""
    by_retention = TokenRetentionEnv(**SMALL, budget="retention")
    by_flops = TokenRetentionEnv(**SMALL)
    assert by_flops.budget == "flops"
    try:
        _, full = by_retention.first_pass(0)
        assert full.retention == 100.0
        for action in ([1, 2, 0, 0, 0, 0], [4, 4, 1, 1, 1, 2], [0, 0, 2, 0, 0, 1]):
            rewards = {}
            for env in (by_retention, by_flops):
                env.reset(options={"index": 0})
                _, rewards[env.budget], _, _, info = env.step(np.array(action))
                assert info["retention"] == pytest.approx(hand_retention(info["kept_per_layer"]), abs=1e-12)
                assert info["kept"] == {name: counts[-1] for name, counts in info["kept_per_layer"].items()}
                assert 0.0 < info["retention"] < 100.0 and 0.0 < info["relative_flops"] < 100.0
            base = info["quality"] - info["full_quality"]
            retention = hand_retention(info["kept_per_layer"])
            assert rewards["retention"] == pytest.approx(base - 0.5 * retention / 100.0, abs=1e-12), action
            assert rewards["flops"] == base - 0.5 * info["relative_flops"] / 100.0, action
        # 1 of 8 frames, 9 of 36 audio steps from layer 1 of 6 on, no fine stage: layer 0 sees all 128 + 144 tokens.
        by_retention.reset(options={"index": 0})
        *_, info = by_retention.step(np.array([1, 2, 0, 0, 0, 0]))
        kept = info["kept"]["video"] + info["kept"]["audio"]
        assert info["retention"] == pytest.approx(100.0 * (272 + 5 * kept) / (6 * 272))
    finally:
        by_retention.close()
        by_flops.close()


def test_exchange_retention_budget_charges_the_change_of_retention() -> None:
    env = TokenExchangeEnv(**SMALL, budget="retention")
    try:
        _, info = env.reset(options={"index": 0})
        _, start = env.first_pass(0)
        assert info["retention"] == start.retention == pytest.approx(hand_retention(start.kept_per_layer))
        assert info["relative_flops"] == start.relative_flops
        before_quality, before_retention = info["quality"], hand_retention(start.kept_per_layer)
        _, reward, _, _, step = env.step(SWAPS.index(("audio", "video")))
        after_retention = hand_retention(step["kept_per_layer"])
        assert step["retention"] == pytest.approx(after_retention, abs=1e-12)
        expected = step["quality"] - before_quality - env.step_cost - 0.5 * (after_retention - before_retention) / 100
        assert reward == pytest.approx(expected, abs=1e-12)
        _, reward, terminated, _, stop = env.step(0)
        assert terminated and reward == 0.0 and stop["retention"] == step["retention"]
    finally:
        env.close()


def test_the_budget_is_not_part_of_the_first_pass_key(tmp_path: Path) -> None:
    """The budget prices a pass, it does not change it: an environment of the other budget reads the same entries."""
    TokenRetentionEnv(**SMALL, cache_dir=tmp_path).first_pass(0)
    other = TokenRetentionEnv(**SMALL, cache_dir=tmp_path, budget="retention")
    _, outcome = other.first_pass(0)
    assert other.cache.hits == 1 and other.cache.computed == 0
    assert outcome.retention == 100.0 and set(outcome.kept_per_layer) == {"text", "video", "audio"}
