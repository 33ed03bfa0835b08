"""``fastav_tiny`` end to end through lmms-eval (the Python API and the CLI), on a few AV-Synth samples."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from fastav_eval.analysis.testbed_runs import run_condition, summarise
from fastav_eval.avsynth import build_documents
from fastav_eval.lmms.models import FastAVTiny
from fastav_eval.models.model_args import pruning_config
from fastav_eval.models.testbed import TestbedAdapter
from fastav_eval.pruning import PruningConfig
from fastav_eval.pruning.config import LAST_LAYER
from fastav_eval.resources import tasks_path
from fastav_eval.testbed import WEIGHTS_DIR, TestbedModel
from fastav_eval.testbed.model import media_tensors

lmms_eval = pytest.importorskip("lmms_eval")


def evaluate(model_args: str, tasks: list[str], limit: int = 2) -> dict:
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    return simple_evaluate(
        model="fastav_tiny",
        model_args=model_args,
        tasks=tasks,
        limit=limit,
        bootstrap_iters=0,
        log_samples=True,
        task_manager=TaskManager(include_path=str(tasks_path()), model_name="fastav_tiny"),  # selects its prompts
    )


def test_entry_point_resolves_fastav_tiny():
    from lmms_eval import models

    assert models.get_model("fastav_tiny") is FastAVTiny


def harness_accuracy(config, task: str, count: int) -> float:
    """The oracle: the testbed answers the task's first ``count`` shipped documents without lmms-eval."""
    model = TestbedModel.load(WEIGHTS_DIR)
    results = run_condition(model, build_documents("test", task, count), "full", pruning=config, batch_size=1)
    return summarise(results)[task]["accuracy"]


def test_fastav_run_reports_accuracy_flops_and_kept_tokens_per_sample():
    limit = 12
    output = evaluate("prune=fastav", ["avsynth"], limit=limit)
    results = output["results"]
    config = pruning_config("fastav", {}, TestbedAdapter.default_profile(None))
    # docs/avsynth.md: FastAV's defaults keep match at 100% on the whole split, so on any part of it.
    assert results["avsynth_match"]["accuracy,none"] == 1.0
    for task in ("avsynth_halluc", "avsynth_qa"):
        assert results[task]["accuracy,none"] == pytest.approx(harness_accuracy(config, task, limit))
    assert results["avsynth_caption"]["cider,none"] > 1.0, "docs/avsynth.md: CIDEr-D 3.22 under FastAV's defaults"
    throughput = output["throughput"]
    assert 30.0 < throughput["avg_relative_flops"] < 80.0
    assert throughput["avg_prefill_ms"] > 0
    for samples in output["samples"].values():
        for sample in samples:
            counts = sample["token_counts"][0]
            assert counts["prune"] == "fastav"
            kept = counts["kept_per_layer"]
            assert kept["video"][0] == counts["video_tokens"] == 128
            assert kept["audio"][0] == counts["audio_tokens"] == 144
            assert kept["audio"][-1] < 144 and counts["relative_flops"] < 100


def test_unpruned_run_matches_the_stock_model():
    """prune=none goes through the engine with pruning off: same answers as the bare model, 100% FLOPs."""
    output = evaluate("prune=none,batch_size=2", ["avsynth_qa"], limit=4)
    assert output["throughput"]["avg_relative_flops"] == pytest.approx(100.0)
    assert output["results"]["avsynth_qa"]["accuracy,none"] == pytest.approx(harness_accuracy(None, "avsynth_qa", 4))
    docs = build_documents("test", "avsynth_qa", 4)
    model = TestbedModel.load(WEIGHTS_DIR)
    with torch.no_grad():
        prepared = model.prepare(*media_tensors(docs), [d["question"] for d in docs])
    expected = model.generate(prepared, max_new_tokens=4)
    got = [s["filtered_resps"][0] for s in sorted(output["samples"]["avsynth_qa"], key=lambda s: s["doc_id"])]
    assert got == expected


def test_senses_leave_a_modality_out_as_the_stock_model_does():
    """senses=audio (the harness's no_video ablation) through lmms-eval: the stock model without video tokens."""
    output = evaluate("prune=none,senses=audio", ["avsynth_qa"], limit=4)
    docs = build_documents("test", "avsynth_qa", 4)
    model = TestbedModel.load(WEIGHTS_DIR)
    with torch.no_grad():
        prepared = model.prepare(*media_tensors(docs), [d["question"] for d in docs], use_video=[False] * 4)
    samples = sorted(output["samples"]["avsynth_qa"], key=lambda s: s["doc_id"])
    assert [s["filtered_resps"][0] for s in samples] == model.generate(prepared, max_new_tokens=4)
    for sample in samples:
        assert sample["token_counts"][0]["video_tokens"] == 0 and sample["token_counts"][0]["audio_tokens"] == 144


@pytest.mark.parametrize(
    ("model_args", "message"),
    [
        ({"senses": "smell"}, r"senses='smell'; accepted: \['both', 'video', 'audio', 'none'\]"),
        (
            {"prune": "fast"},
            r"prune='fast'; accepted: fastav, none, random, divprune, pdrop, vidcom2, vidcom2_av, seats, "
            r"rule:<name> with <name> in "
            r"\['avsynth_senses'\]",
        ),
        ({"prune": "rule:best"}, r"prune=rule:best; accepted rules: \['avsynth_senses'\]"),
        ({"prune": "rule:avsynth_senses", "fine_ratio": 0.2}, r"takes only \['sink_tokens'\] .*fine_ratio"),
        ({"fine_ratio": 1.5}, r"fine_ratio=1\.5; accepted"),
        ({"global_rule": "best"}, r"global_rule='best'; accepted"),
        ({"audio_keep": "ten"}, r"audio_keep='ten'; accepted"),
        ({"finer_ratio": 0.1}, r"unknown --model_args key\(s\) \['finer_ratio'\]"),
        ({"prune": "none", "fine_ratio": 0.3}, r"prune=none takes no pruning arguments"),
        ({"attn_implementation": "flash"}, r"attn_implementation='flash'; accepted"),
        ({"video_keep": -3}, r"video_keep=-3; accepted"),
        ({"audio_keep": 1.5}, r"audio_keep=1\.5; accepted"),
        ({"max_batch_size": 8}, r"unknown --model_args key\(s\) \['max_batch_size'\]"),
        ({"sink_tokens": -1}, r"sink_tokens=-1; accepted: an int >= 0"),
        ({"sink_tokens": "-1"}, r"sink_tokens=-1; accepted: an int >= 0"),
        ({"global_layer": "-1.0"}, r"global_layer=-1\.0; accepted: an int >= 1 .* or -1 \(the last layer\)"),
        ({"prune": "fastav", "policy": "fastav_tiny_retention"}, r"a policy decides the pruning, leave prune out"),
        ({"global_rule": "none", "audio_keep": 10}, r"global_rule=none turns the global stage off.*\['audio_keep'\]"),
        ({"global_rule": "none", "profile": "p.json"}, r"global_rule=none turns the global stage off.*\['profile'\]"),
        ({"audio_keep": 10, "audio_keep_chunks": 1}, r"audio_keep and audio_keep_chunks both given"),
        ({"pretrained": ""}, r"pretrained=''; accepted: a non-empty string"),
        ({"on_error": "skip"}, r"on_error='skip'; accepted: \['raise', 'record'\]"),
        ({"dtype": "fp8"}, r"dtype='fp8'; accepted"),
    ],
)
def test_bad_model_args_name_the_field(model_args, message):
    with pytest.raises(ValueError, match=message):
        FastAVTiny(**model_args)


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed here")
def test_flash_attention_without_flash_attn_is_refused_before_loading():
    with pytest.raises(ValueError, match=r"'flash_attention_2' needs the 'flash_attn' package, which is not installed"):
        FastAVTiny(attn_implementation="flash_attention_2")


@pytest.mark.parametrize(
    ("model_args", "cli", "batch_size"),
    [
        ("batch_size=4", {"batch_size": 1, "max_batch_size": None, "device": None}, 4),  # lmms-eval's default 1
        ("prune=none", {"batch_size": "3", "device": "cpu"}, 3),  # --batch_size only (the CLI passes a str)
        ("batch_size=2", {"batch_size": "2"}, 2),  # both, agreeing
    ],
)
def test_batch_size_from_model_args_or_the_cli(model_args, cli, batch_size):
    assert FastAVTiny.create_from_arg_string(model_args, cli).batch_size_per_gpu == batch_size


def test_batch_size_given_two_different_ways_is_refused():
    with pytest.raises(ValueError, match=r"batch_size is given twice, --model_args batch_size=4 and --batch_size 2"):
        FastAVTiny.create_from_arg_string("batch_size=4", {"batch_size": "2"})


def test_cli_run_with_a_bad_key_writes_no_results_and_names_the_key(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "lmms_eval", "--model", "fastav_tiny",
               "--model_args", "prune=fastav,fine_ration=0.2", "--tasks", "avsynth_match",
               "--include_path", str(tasks_path()), "--limit", "1", "--output_path", str(tmp_path)]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert "unknown --model_args key(s) ['fine_ration']" in run.stdout + run.stderr
    assert not list(tmp_path.rglob("*_results.json"))


def test_cli_main_job_writes_results_with_flops(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "lmms_eval", "--model", "fastav_tiny",
               "--model_args", "prune=fastav,batch_size=4", "--tasks", "avsynth", "--include_path", str(tasks_path()),
               "--limit", "4", "--output_path", str(tmp_path), "--log_samples"]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    files = list(tmp_path.rglob("*_results.json"))
    assert files, run.stdout[-3000:] + run.stderr[-3000:]
    log = run.stdout + run.stderr
    assert "Metric summary" not in log, "lmms-eval's per-sample INFO line"
    assert log.count("FastAVTiny (prune=fastav): 16 requests, batch size 4; means per sample") == 1
    results = json.loads(files[0].read_text())
    assert set(results["results"]) >= {"avsynth_match", "avsynth_halluc", "avsynth_qa", "avsynth_caption"}
    assert results["throughput"]["avg_relative_flops"] < 100
    assert len(list(tmp_path.rglob("*_samples_avsynth_*.jsonl"))) == 4


def test_the_hand_written_rule_runs_through_lmms_eval_with_its_decisions_in_the_samples():
    """prune=rule:avsynth_senses: the answers and kept counts are the harness's (the same chooser, no lmms-eval), and
    every sample's decision (its question's kind, cut layer, kept set) is in the samples file."""
    from fastav_eval.avsynth.rule import SETTINGS, AVSynthSenseRule

    limit = 6
    output = evaluate("prune=rule:avsynth_senses,batch_size=3", ["avsynth_qa", "avsynth_halluc"], limit=limit)
    config = PruningConfig(global_rule=None, global_layer=LAST_LAYER, fine_ratio=0.0, chooser=AVSynthSenseRule())
    for task in ("avsynth_qa", "avsynth_halluc"):
        harness = run_condition(TestbedModel.load(WEIGHTS_DIR), build_documents("test", task, limit), pruning=config)
        samples = sorted(output["samples"][task], key=lambda sample: sample["doc_id"])
        assert output["results"][task]["accuracy,none"] == pytest.approx(summarise(harness)[task]["accuracy"])
        for sample, oracle in zip(samples, harness, strict=True):
            counts = sample["token_counts"][0]
            decision = counts["decision"]
            assert counts["prune"] == "rule:avsynth_senses"
            assert decision["kind"] == oracle.kind and decision["by"] == "rule:avsynth_senses"
            setting = SETTINGS[oracle.kind]
            assert decision["cut_layer"] == setting.cut_layer
            kept = counts["kept_per_layer"]
            # Whole frames of 16 tokens, plus the first video token when no kept frame holds it: it is the 4th
            # token of the prompt, one of the engine's sink_tokens=4, which are never dropped.
            assert kept["video"][setting.cut_layer] - 16 * setting.video_frames in (0, 1)
            assert kept["audio"][setting.cut_layer] == 4 * setting.audio_steps  # whole time steps of 4
            assert kept["video"][-1] == kept["video"][setting.cut_layer]  # no fine stage after the cut
            assert kept == oracle.record.kept_per_layer


def test_the_shipped_policy_runs_through_the_lmms_eval_cli_with_its_decisions_and_hash(tmp_path):
    """policy=fastav_tiny_retention: results written, each sample's decision (the policy's action) and FLOPs in the
    samples file, the policy's path and hash in the run record; the same answers as the harness with that policy."""
    from fastav_eval.policies.chooser import LearnedChooser
    from fastav_eval.policies.saved import policy_hash, resolve_policy

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "lmms_eval", "--model", "fastav_tiny",
               "--model_args", "policy=fastav_tiny_retention,batch_size=3", "--tasks", "avsynth_qa",
               "--include_path", str(tasks_path()), "--limit", "6", "--output_path", str(tmp_path),
               "--log_samples"]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    files = list(tmp_path.rglob("*_results.json"))
    assert files, run.stdout[-3000:] + run.stderr[-3000:]
    lines = [line for path in tmp_path.rglob("*_samples_avsynth_qa.jsonl") for line in path.read_text().splitlines()]
    samples = [json.loads(line) for line in lines if line.strip()]
    assert len(samples) == 6
    chooser = LearnedChooser("fastav_tiny_retention")
    harness = run_condition(TestbedModel.load(WEIGHTS_DIR), build_documents("test", "avsynth_qa", 6), "full",
                            chooser.config(), batch_size=3)  # fmt: skip
    # The shipped policy's figures before it was converted from SB3's pickled policy.zip to safetensors + JSON
    # (commit a51c17b, lmms-eval --limit 8, batch_size=8): (video_keep, audio_keep, video_order, audio_order,
    # fine_ratio) at cut layer 1, relative FLOPs, answer; every answer scored 1.0.
    before = [
        (0.125, 0.125, "evenly_spaced", "most_attended", 0.2, 24.443708550113765, "red"),
        (0.125, 0.125, "evenly_spaced", "evenly_spaced", 0.0, 27.38787523118509, "circle"),
        (0.125, 0.25, "evenly_spaced", "evenly_spaced", 0.0, 31.040852344291352, "one"),
        (0.125, 0.125, "evenly_spaced", "most_attended", 0.2, 25.012145881476336, "yes"),
        (0.125, 0.125, "evenly_spaced", "most_attended", 0.2, 24.634359185415523, "red"),
        (0.125, 0.125, "evenly_spaced", "most_attended", 0.2, 24.443708550113765, "green"),
    ]
    ordered = sorted(samples, key=lambda s: s["doc_id"])
    for sample, oracle, pinned in zip(ordered, harness, before, strict=True):
        counts = sample["token_counts"][0]
        assert counts["prune"] == "policy"
        assert counts["decision"]["by"] == "policy:fastav_tiny_retention"
        assert counts["decision"]["action"] == oracle.record.decision["action"]
        assert counts["relative_flops"] == pytest.approx(oracle.relative_flops)
        action = counts["decision"]["action"]
        assert action["cut_layer"] == 1 and (
            action["video_keep"], action["audio_keep"], action["video_order"], action["audio_order"],
            action["fine_ratio"], counts["relative_flops"], sample["filtered_resps"],
        ) == pinned  # fmt: skip
        assert sample["accuracy"] == 1.0
    record = json.loads(next(tmp_path.rglob("*_fastav.json")).read_text())
    described = record["pruning"]["chooser"]
    assert described["sha256"] == policy_hash(resolve_policy("fastav_tiny_retention"))
    assert (
        described["path"].endswith("fastav_tiny_retention") and "policy=fastav_tiny_retention" in record["model_args"]
    )


def test_every_wrapper_takes_policy_and_refuses_one_trained_for_another_model():
    """fastav_videollama2 (its tiny checkpoint) with the testbed's policy: refused when the engine is installed."""
    from fastav_eval.lmms.models import FastAVVideoLLaMA2
    from tests.models.videollama2_fixtures import FIXTURE, VISION_TOWER

    with pytest.raises(ValueError, match=r"trained on fastav_tiny .*this decoder is"):
        FastAVVideoLLaMA2(pretrained=str(FIXTURE), vision_tower=str(VISION_TOWER), dtype="float32", device="cpu",
                          policy="fastav_tiny_retention")  # fmt: skip
    with pytest.raises(ValueError, match=r"policy= takes no other pruning arguments .*\['fine_ratio'\]"):
        pruning_config("fastav", {"policy": "fastav_tiny_retention", "fine_ratio": 0.2}, None)
    with pytest.raises(ValueError, match="a policy decides the pruning"):
        pruning_config("none", {"policy": "fastav_tiny_retention"}, None)
