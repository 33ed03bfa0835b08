"""AVEX-Prune's captioning reward (issue 23), ``reward="caption"``: a caption's quality is the mean of its CIDEr-D
against the reference, its CIDEr-D against the full-token caption and the reference caption's likelihood, recomputed
here from each outcome's caption, the full-token caption and the reference log-probability; TokenExchange's
full-token caption is the unpruned model's answer (the harness's and ``PruningConfig.off()``'s); a swap's reward is
the change of that quality; the first-pass cache (format ``/3``) keeps what rescoring needs and never reads a ``/2``
entry; both environments pass Gymnasium's and SB3's checkers under it."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fastav_eval.analysis.testbed_runs import run_condition
from fastav_eval.avsynth.dataset import request_visuals
from fastav_eval.captions import SampleCider
from fastav_eval.envs import TokenExchangeEnv, TokenRetentionEnv
from fastav_eval.envs.cache import FORMAT
from fastav_eval.envs.exchange import SWAPS
from fastav_eval.envs.samples import REWARDS, Outcome, build_adapter, keep_everything
from fastav_eval.evaluation import PrunedRunner
from fastav_eval.models.base import Request
from fastav_eval.pruning import PruningConfig, SampleInfo
from fastav_eval.records import canonical_hash
from fastav_eval.testbed import WEIGHTS_DIR, TestbedModel
from tests.envs.checks import assert_passes_both_checkers

SMALL = {"tasks": ["avsynth_qa", "avsynth_caption"], "per_task": 2, "reward": "caption"}
"""Documents 0 and 1 are captions, 2 and 3 choice questions (tasks in sorted order)."""
CAPTIONS = (0, 1)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread while this module runs (restored after): its many tiny-model passes run up to 40 times slower
    with two threads on a machine whose cores are busy. Every comparison here is between passes of this process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@pytest.fixture(scope="module")
def unpruned_answers(retention: TokenRetentionEnv) -> list[str]:
    """The unpruned model's captions of documents 0 and 1, from the harness (``run_condition``, no pruning)."""
    documents = retention.documents[: len(CAPTIONS)]
    return [result.response for result in run_condition(TestbedModel.load(WEIGHTS_DIR), documents, "full", None)]


def expected_quality(
    documents: list[dict[str, Any]], index: int, answer: str | None, logprob: float | None, full_caption: str | None
) -> float:
    """The caption reward's quality of document ``index``'s pass (its caption ``answer``, the reference's mean log p
    ``logprob``), computed here: choices exp(mean log p); captions the mean of CIDEr-D / 10 (capped at 1) against the
    reference and against ``full_caption``, and exp(mean log p); CIDEr-D weighted by the documents' captions."""
    doc = documents[index]
    assert logprob is not None and logprob <= 0.0
    likelihood = math.exp(logprob)
    if doc["choices"]:
        assert answer is None
        return likelihood
    cider = SampleCider([d["answer"] for d in documents if not d["choices"]])
    assert answer is not None and full_caption is not None
    to_reference = min(cider(answer, doc["answer"]) / 10.0, 1.0)
    to_full = min(cider(answer, full_caption) / 10.0, 1.0)
    return (to_reference + to_full + likelihood) / 3.0


def counted_passes(env: Any) -> list[str]:
    """Counts the model passes of ``env``: its PrunedRunner's answers and reference scorings."""
    calls: list[str] = []
    runner = env.samples.runner
    answer, score = runner.answer, runner.score_references
    runner.answer = lambda *args, **kwargs: calls.append("answer") or answer(*args, **kwargs)
    runner.score_references = lambda *args, **kwargs: calls.append("reference") or score(*args, **kwargs)
    return calls


def test_caption_is_a_fourth_reward_and_bad_names_list_all_four() -> None:
    assert REWARDS == ("score", "loglik", "mixed", "caption")
    for env_class in (TokenRetentionEnv, TokenExchangeEnv):
        with pytest.raises(ValueError, match=r"reward='captions'; accepted: \['score', 'loglik', 'mixed', 'caption'\]"):
            env_class(tasks="avsynth_caption", per_task=1, reward="captions")


def test_retention_quality_and_reward_recomputed(retention: TokenRetentionEnv, unpruned_answers: list[str]) -> None:
    """The first pass's caption is the unpruned one (the harness's) and the full-token caption; each quality is the
    formula over the outcome's caption, that full caption and its reference log-probability; the reward subtracts the
    full-token quality; a pruned pass's caption and log-probability are those of the ``score`` and ``loglik``
    rewards' passes of the same action."""
    documents = retention.documents
    actions = (np.array([1, 2, 0, 0, 0, 0]), np.array([4, 4, 1, 1, 1, 2]))
    others = {reward: TokenRetentionEnv(**{**SMALL, "reward": reward}) for reward in ("score", "loglik")}
    try:
        for index in range(len(documents)):
            _, full = retention.first_pass(index)
            assert full.relative_flops == pytest.approx(100.0)
            full_caption = unpruned_answers[index] if index in CAPTIONS else None
            assert full.answer == full_caption
            assert full.quality == pytest.approx(
                expected_quality(documents, index, full.answer, full.reference_logprob, full_caption), abs=1e-12
            )
            for action in actions:
                retention.reset(options={"index": index})
                _, reward, terminated, _, info = retention.step(action)
                outcome = retention.outcome(index, action)
                quality = expected_quality(documents, index, outcome.answer, outcome.reference_logprob, full_caption)
                assert terminated and 0.0 <= quality <= 1.0 and outcome.relative_flops < 100.0
                assert info["quality"] == pytest.approx(quality, abs=1e-12)
                assert info["answer"] == outcome.answer and info["reference_logprob"] == outcome.reference_logprob
                expected = quality - full.quality - retention.flops_weight * outcome.relative_flops / 100.0
                assert reward == pytest.approx(expected, abs=1e-12)
            action = actions[0]
            outcome = retention.outcome(index, action)
            assert outcome.reference_logprob == others["loglik"].outcome(index, action).reference_logprob
            if index in CAPTIONS:
                assert outcome.answer == others["score"].outcome(index, action).answer
    finally:
        for env in others.values():
            env.close()


def test_an_unpruned_claim_is_checked(retention: TokenRetentionEnv) -> None:
    """``run(..., unpruned=True)`` refuses a pass that dropped tokens (its caption would otherwise become the
    full-token one), naming ``kept_per_layer``."""
    action = np.array([1, 2, 0, 0, 0, 0])
    with pytest.raises(ValueError, match=r"run as unpruned: kept_per_layer=\{.*\} drops tokens; accepted: an unpruned"):
        retention.samples.run(0, lambda c: retention.coding.decisions(action[None], c) if c.stage == "global" else None,
                              unpruned=True)  # fmt: skip


def test_exchange_full_caption_is_the_unpruned_answer(exchange: TokenExchangeEnv, unpruned_answers: list[str]) -> None:
    """Under FastAV's config, the full-token caption (one unpruned pass per caption document, before FastAV's, once)
    is the harness's unpruned answer and ``PrunedRunner(adapter, PruningConfig.off())``'s; ``keep_everything`` prunes
    nothing (100% FLOPs, every count whole) while FastAV's own pass does."""
    calls = counted_passes(exchange)
    _, fastav = exchange.first_pass(0)
    assert calls == ["answer", "reference", "answer"]  # full caption, then FastAV's reference score and caption
    assert fastav.relative_flops < 100.0
    adapter = build_adapter("fastav_tiny")
    off = PrunedRunner(adapter, PruningConfig.off(), "off")
    try:
        for index in CAPTIONS:
            doc = exchange.documents[index]
            request = adapter.load_request(Request(request_visuals(doc), doc["question"]), 0)
            expected = off.answer([request], 40, [], [SampleInfo(f"{doc['task']}/{doc['id']}", doc["question"])])[0]
            assert expected.record.relative_flops == pytest.approx(100.0)
            assert exchange.samples.full_caption(index) == expected.text == unpruned_answers[index]
    finally:
        off.close()
    calls.clear()
    unpruned = exchange.samples.run(0, keep_everything)  # the full caption is known: no pass of its own
    assert calls == ["reference", "answer"]
    assert unpruned.answer == unpruned_answers[0] and unpruned.relative_flops == pytest.approx(100.0)
    assert all(len(set(counts)) == 1 for counts in unpruned.kept_per_layer.values())
    assert not exchange.samples.needs_full_caption(2)  # a choice document needs none
    _, choice = exchange.first_pass(2)
    assert choice.answer is None and choice.quality == pytest.approx(math.exp(choice.reference_logprob), abs=1e-12)


def test_exchange_swap_reward_is_the_change_of_caption_quality(
    exchange: TokenExchangeEnv, unpruned_answers: list[str]
) -> None:
    """Each swap (cross-modal ones included) is rewarded (after − before quality) − step cost − λ·ΔFLOPs/100, the
    qualities computed here from the info dicts' caption, the unpruned caption and the reference log-probability."""
    documents = exchange.documents
    for index in CAPTIONS:
        _, before = exchange.reset(options={"index": index})
        quality_before = expected_quality(
            documents, index, before["answer"], before["reference_logprob"], unpruned_answers[index]
        )
        assert before["quality"] == pytest.approx(quality_before, abs=1e-12)
        changes = []
        swaps = [SWAPS.index(("audio", "video")), SWAPS.index(("video", "audio")), SWAPS.index(("video", "video"))]
        for action in swaps:
            _, reward, terminated, _, after = exchange.step(action)
            assert not terminated and after["swapped"] == exchange.coding.bucket_tokens
            quality_after = expected_quality(
                documents, index, after["answer"], after["reference_logprob"], unpruned_answers[index]
            )
            assert after["quality"] == pytest.approx(quality_after, abs=1e-12) and 0.0 <= quality_after <= 1.0
            cost = exchange.flops_weight * (after["relative_flops"] - before["relative_flops"]) / 100.0
            assert reward == pytest.approx(quality_after - quality_before - exchange.step_cost - cost, abs=1e-12)
            changes.append(quality_after - quality_before)
            before, quality_before = after, quality_after
        assert any(abs(change) > 1e-6 for change in changes)  # the swaps moved the caption reward
        _, reward, terminated, _, _ = exchange.step(0)
        assert terminated and reward == 0.0


def test_outcome_keeps_the_reference_logprob() -> None:
    outcome = Outcome(0.5, 61.0, "a caption", None, {"video": [8, 2], "audio": [4, 4]}, -0.25)
    assert outcome.to_dict()["reference_logprob"] == -0.25
    assert Outcome.from_dict(outcome.to_dict()) == outcome
    assert Outcome(0.5, 61.0, None, None, {"video": [8, 2]}).reference_logprob is None  # not computed
    for bad in (0.5, float("nan"), "x", True):
        with pytest.raises(ValueError, match=r"outcome.reference_logprob=.*; accepted: a finite number <= 0"):
            Outcome.from_dict({**outcome.to_dict(), "reference_logprob": bad})
    old = outcome.to_dict()  # a fastav-first-pass/2 outcome
    del old["reference_logprob"]
    with pytest.raises(ValueError, match=r"outcome: not an object of .*kept_per_layer, reference_logprob"):
        Outcome.from_dict(old)


@pytest.mark.parametrize("env_class", [TokenRetentionEnv, TokenExchangeEnv])
def test_cache_round_trip_under_caption(env_class: type, tmp_path: Path) -> None:
    """A second environment reads every first pass (no model pass), equal values and full-token captions; its swaps
    or actions need no full-caption pass; a reference log-probability or full caption missing from an entry is
    refused (and the entry recomputed)."""
    first = env_class(**SMALL, cache_dir=tmp_path)
    computed = [first.first_pass(index) for index in range(4)]
    full = [first.samples.full_caption(index) for index in CAPTIONS]
    first.close()
    paths = sorted(tmp_path.glob("*.json"))
    assert len(paths) == 4
    for path in paths:
        entry = json.loads(path.read_text())
        assert entry["format"] == FORMAT == "fastav-first-pass/3" and entry["key"]["reward"] == "caption"
        assert entry["value"]["outcome"]["reference_logprob"] <= 0.0
        if env_class is TokenExchangeEnv:
            is_caption = not entry["key"]["document"]["choices"]
            assert isinstance(entry["value"]["full_caption"], str) == is_caption
            assert entry["value"]["full_caption"] is not None or not is_caption
    second = env_class(**SMALL, cache_dir=tmp_path)
    calls = counted_passes(second)
    read = [second.first_pass(index) for index in range(4)]
    assert calls == [] and second.cache.hits == 4
    assert [second.samples.full_caption(index) for index in CAPTIONS] == full and calls == []
    for (state, outcome), (other_state, other_outcome) in zip(computed, read, strict=True):
        assert outcome == other_outcome and outcome.reference_logprob is not None
        if isinstance(state, np.ndarray):
            assert np.array_equal(state, other_state)
        else:
            assert np.array_equal(state.kept, other_state.kept) and np.array_equal(state.scores, other_state.scores)
    second.reset(options={"index": 0})
    second.step(1 if env_class is TokenExchangeEnv else np.array([1, 2, 0, 0, 0, 0]))
    assert calls == ["reference", "answer"]  # the pruned pass only
    second.close()
    # Damage: an outcome without its log-probability, (TokenExchange) a caption entry without its full caption.
    path = first.cache.path(first.documents[0])
    entry = json.loads(path.read_text())
    damaged = [{**entry["value"], "outcome": {**entry["value"]["outcome"], "reference_logprob": None}}]
    if env_class is TokenExchangeEnv:
        damaged.append({**entry["value"], "full_caption": None})
    for value in damaged:
        path.write_text(json.dumps({**entry, "value": value}))
        fresh = env_class(**SMALL, cache_dir=tmp_path)
        assert fresh.first_pass(0)[1] == computed[0][1] and fresh.cache.rejected == 1
        fresh.close()


def test_an_entry_of_format_2_is_never_read(tmp_path: Path) -> None:
    """A ``/2`` entry hashes to another file than the ``/3`` one wanted (so it is not even opened); under the
    ``/3`` name it is refused as another format and recomputed."""
    env = TokenExchangeEnv(**SMALL, cache_dir=tmp_path / "new")
    _, outcome = env.first_pass(0)
    new_path = env.cache.path(env.documents[0])
    entry = json.loads(new_path.read_text())
    old_outcome = {k: v for k, v in entry["value"]["outcome"].items() if k != "reference_logprob"}
    old_key = {**entry["key"], "format": "fastav-first-pass/2"}
    old_entry = {"format": "fastav-first-pass/2", "key": old_key, "value": {"state": entry["value"]["state"],
                                                                            "outcome": old_outcome}}  # fmt: skip
    old_folder = tmp_path / "old"
    old_folder.mkdir()
    old_path = old_folder / f"{canonical_hash(old_key)}.json"
    old_path.write_text(json.dumps(old_entry))
    assert old_path.name != new_path.name
    env.close()
    reader = TokenExchangeEnv(**SMALL, cache_dir=old_folder)
    calls = counted_passes(reader)
    assert reader.first_pass(0)[1] == outcome
    assert calls and reader.cache.hits == 0 and reader.cache.rejected == 0  # computed; the /2 file never read
    assert json.loads(old_path.read_text())["format"] == "fastav-first-pass/2"
    reader.close()
    (old_folder / new_path.name).write_text(json.dumps({**old_entry, "key": entry["key"]}))
    renamed = TokenExchangeEnv(**SMALL, cache_dir=old_folder)
    assert renamed.first_pass(0)[1] == outcome and renamed.cache.rejected == 1 and renamed.cache.hits == 0
    assert json.loads((old_folder / new_path.name).read_text())["format"] == FORMAT  # rewritten as /3
    renamed.close()


def test_both_pass_gymnasium_and_sb3_checkers(retention: TokenRetentionEnv, exchange: TokenExchangeEnv) -> None:
    for env in (retention, exchange):
        assert env.samples.reward == "caption"
        assert_passes_both_checkers(env)
