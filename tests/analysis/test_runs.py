"""Real lmms-eval runs of fastav_tiny (the two-run sweep ``tiny_sweep`` of conftest.py): the run record, resuming a
sweep, report, submit/verify."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
from pathlib import Path

import pytest
import torch

from fastav_eval.analysis import sweep as sweeping
from fastav_eval.analysis.bundle import MANIFEST, submit, verify, write_manifest
from fastav_eval.analysis.report import paired_difference, pareto_front, select, write_report
from fastav_eval.analysis.results import RunResults, find_runs
from fastav_eval.models import testbed
from fastav_eval.models.model_args import pruning_config
from fastav_eval.pruning import DecoderShape, PruningConfig
from fastav_eval.testbed import WEIGHTS_DIR, TestbedModel
from tests.analysis.sweep_fixture import TASKS

ROOT = Path(__file__).resolve().parents[2]


def _run(out: Path, run: sweeping.SweepRun) -> RunResults:
    (found,) = find_runs([out / run.hash])
    return found


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _lines(run: RunResults, task: str) -> list[dict]:
    return [json.loads(line) for line in next(run.path.parent.glob(f"*_samples_{task}.jsonl")).read_text().splitlines()]


def test_every_run_records_its_provenance_beside_the_results(tiny_sweep):
    out, runs = tiny_sweep
    base, unpruned = (_run(out, run) for run in runs)
    assert base.results["model_name"] == "fastav-eval/testbed"  # lmms-eval leaves it "" for these model_args
    record = base.record
    assert record.model == "fastav_tiny" and record.adapter == "testbed" and record.prune == "fastav"
    expected = pruning_config("fastav", {}, testbed.TestbedAdapter.default_profile(None)).resolve(6).to_dict()
    assert record.pruning == expected and record.pruning["global_layer"] == 3 and record.pruning["fine_ratio"] == 0.2
    assert (
        record.pruning_hash
        == hashlib.sha256(json.dumps(expected, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    )
    assert record.profile["path"] == str(WEIGHTS_DIR / "profile.json")
    assert record.profile["sha256"] == _sha256(WEIGHTS_DIR / "profile.json")
    (weights,) = record.weights["sources"]
    assert weights["files"]["model.safetensors"] == _sha256(WEIGHTS_DIR / "model.safetensors")
    assert record.versions["torch"] == torch.__version__
    for name, distribution in (
        ("transformers", "transformers"),
        ("lmms_eval", "lmms-eval"),
        ("fastav_eval", "fastav-eval"),
    ):
        assert record.versions[name] == importlib.metadata.version(distribution)
    assert record.device["type"] == "cpu" and record.dtype == "float32" and record.attn_implementation == "sdpa"
    assert DecoderShape(**record.decoder_shape) == DecoderShape.from_config(
        TestbedModel.load(WEIGHTS_DIR).decoder.config
    )
    for task in TASKS.split(","):
        counts = [line["token_counts"][0] for line in _lines(base, task)]
        flops = sum(c["relative_flops"] for c in counts) / len(counts)
        assert record.tasks[task]["n"] == len(counts) == 6
        assert record.tasks[task]["relative_flops"] == pytest.approx(flops)
        assert base.results["throughput"][f"avg_{task}/relative_flops"] == pytest.approx(flops)
        assert all(c["format"] == "fastav-sample/1" for c in counts)
    assert unpruned.record.pruning == PruningConfig.off().resolve(6).to_dict() and unpruned.record.profile is None
    assert unpruned.record.tasks["avsynth_qa"]["relative_flops"] == pytest.approx(100.0)


def test_an_interrupted_sweep_redoes_only_the_unfinished_run(tiny_sweep, tmp_path):
    out, runs = tiny_sweep
    copy = tmp_path / "sweep"
    shutil.copytree(out, copy)
    interrupted = copy / runs[1].hash  # what Ctrl-C during the unpruned run leaves: its marker says running
    marker = json.loads((interrupted / sweeping.RUN_FILE).read_text())
    (interrupted / sweeping.RUN_FILE).write_text(json.dumps({**marker, "status": "running"}))
    for path in interrupted.rglob("*_results.json"):
        path.unlink()
    said = []
    assert sweeping.run_sweep(runs, copy, dry_run=True, say=said.append).ran == ["unpruned"]
    assert said[0].startswith("skip (done): base") and said[1].startswith("run: unpruned")
    executed = []

    def counting(command: list[str], log: Path) -> int:
        executed.append(command[command.index("--model_args") + 1])
        return sweeping.execute(command, log)

    result = sweeping.run_sweep(runs, copy, runner=counting, say=lambda _: None)
    assert executed == ["prune=none"] and result.skipped == ["base"] and result.ran == ["unpruned"]
    assert sweeping.run_state(interrupted) == "done" and find_runs([interrupted])[0].is_unpruned
    assert sweeping.run_sweep(runs, copy, runner=counting, say=lambda _: None).skipped == ["base", "unpruned"]


def test_a_failed_run_is_marked_and_redone(tmp_path):
    runs = sweeping.build_grid("fastav_tiny", "", "avsynth_qa", {"fine_ratio": ["0.1"]}, limit=1, baseline=False)

    def fails(command: list[str], log: Path) -> int:
        return 1

    def succeeds(command: list[str], log: Path) -> int:
        folder = Path(command[command.index("--output_path") + 1])
        (folder / "20261202_000000_results.json").write_text("{}")
        return 0

    first = sweeping.run_sweep(runs, tmp_path, runner=fails, say=lambda _: None)
    assert first.failed == ["base", "fine_ratio=0.1"] and sweeping.run_state(tmp_path / runs[0].hash) == "failed"
    assert sweeping.run_sweep(runs, tmp_path, runner=succeeds, say=lambda _: None).ran == ["base", "fine_ratio=0.1"]


def test_grid_points_with_equal_settings_are_one_run():
    axes = {"fine_ratio": ["0.2", "0.3"], "global_rule": ["positional", "random"]}
    names = [run.name for run in sweeping.build_grid("fastav_tiny", "", "avsynth", axes)]
    assert names == ["base", "fine_ratio=0.3", "global_rule=random", "unpruned"]  # 0.2 and positional are the base
    with pytest.raises(ValueError, match="accepted"):
        sweeping.parse_vary(["fine_ratios=0.1"])
    with pytest.raises(ValueError, match="prune=fastav"):
        sweeping.build_grid("fastav_tiny", "prune=none", "avsynth", {})


def test_report_reads_the_real_runs_and_pairs_them_by_document(tiny_sweep, tmp_path):
    out, _ = tiny_sweep
    found = find_runs([out])
    assert [run.name for run in found] == ["base", "unpruned"]
    written = write_report(found, tmp_path)
    text = written["report"].read_text()
    base, unpruned = found
    assert "| base | global positional@3, fine low_attentive P=0.2 |" in text and "| unpruned | unpruned |" in text
    assert f"{base.record.pruning_hash[:12]}" in text and written["plot"].stat().st_size > 0
    assert "AV retention %" in text and unpruned.costs["retention"] == pytest.approx(100.0)  # AVEX-Prune's budget
    assert 0 < base.costs["retention"] < 100 and f"| {base.costs['retention']:.2f} |" in text
    accuracy = {line["doc_id"]: line["accuracy"] for line in _lines(base, "avsynth_qa")}
    reference = {line["doc_id"]: line["accuracy"] for line in _lines(unpruned, "avsynth_qa")}
    diff = paired_difference(base, unpruned, "avsynth_qa", "accuracy")
    assert diff.n == 6 and diff.mean == pytest.approx(sum(accuracy[d] - reference[d] for d in accuracy) / 6)
    assert diff.low <= diff.mean <= diff.high
    caption = paired_difference(base, unpruned, "avsynth_caption", "cider")
    assert caption.mean is None and caption.corpus_difference == pytest.approx(
        base.metrics_of("avsynth_caption")["cider"].value - unpruned.metrics_of("avsynth_caption")["cider"].value
    )
    assert "(corpus)" in text


def test_report_selects_runs_by_name_and_plots_against_a_setting(tiny_sweep, tmp_path):
    out, _ = tiny_sweep
    found = find_runs([out])
    assert [run.name for run in select(found, ["unpruned", "base"])] == ["unpruned", "base"]
    with pytest.raises(ValueError, match="no such run"):
        select(found, ["fine_ratio=0.9"])
    written = write_report(found, tmp_path, x_axis="fine_ratio", reference="base")
    text = written["report"].read_text()
    assert written["by_setting"].name == "by_fine_ratio.png" and "by_fine_ratio.png" in text
    assert "## Against the reference run (base)" in text  # with these two runs it holds no row: base is the
    assert text.split("## Against the reference run")[1].split("## Provenance")[0].count("| avsynth_qa |") == 0
    assert text.split("## Against the unpruned run")[1].count("| base | global positional@3") == 2  # qa, caption
    with pytest.raises(ValueError, match="x-axis='no_such_setting': no run has a number for it"):
        write_report(found, tmp_path, x_axis="no_such_setting")


def test_pareto_front():
    assert pareto_front([(100, 1.0), (60, 0.8), (70, 0.7), (59, 0.8)]) == [3, 0]


def _edit_sample(bundle: Path, task: str, doc_id: int, change) -> None:
    (path,) = (bundle / "results").glob(f"*_samples_{task}.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    change(next(line for line in lines if line["doc_id"] == doc_id))
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_submit_then_verify_and_verify_catches_edits(tiny_sweep, tmp_path):
    out, runs = tiny_sweep
    bundle = submit(out / runs[0].hash, tmp_path / "bundle", baselines=[out / runs[1].hash])
    for name in ("config.json", "profile.json", "report.md", "pareto.png", "leaderboard.csv", MANIFEST):
        assert (bundle / name).is_file(), name
    original = next((out / runs[0].hash).rglob("*_samples_avsynth_qa.jsonl"))
    assert (bundle / "results" / original.name).read_bytes() == original.read_bytes()  # untouched
    assert _sha256(bundle / "profile.json") == _sha256(WEIGHTS_DIR / "profile.json")
    result = verify(bundle)
    assert result.ok, result.problems
    assert (
        result.checked["metrics"] >= 7
        and result.checked["sample FLOPs"] == 12
        and result.checked["answers re-scored"] == 12
    )

    unsealed = tmp_path / "unsealed"
    shutil.copytree(bundle, unsealed)
    _edit_sample(unsealed, "avsynth_qa", 0, lambda line: line.update(filtered_resps="blue"))
    assert any("sha256 differs" in problem for problem in verify(unsealed).problems)

    forged = tmp_path / "forged"
    shutil.copytree(bundle, forged)
    qa = {
        line["doc_id"]: line
        for line in _lines(RunResults.load(next((forged / "results").glob("*_results.json"))), "avsynth_qa")
    }
    flipped = next(doc for doc, line in qa.items() if line["accuracy"] == 1.0)
    _edit_sample(forged, "avsynth_qa", flipped, lambda line: line.update(accuracy=0.0))  # a score, not its answer
    _edit_sample(
        forged, "avsynth_caption", 1, lambda line: line["token_counts"][0]["kept_per_layer"]["audio"].__setitem__(5, 1)
    )
    _edit_sample(forged, "avsynth_caption", 2, lambda line: line.update(filtered_resps="a red circle ."))
    write_manifest(forged)  # what a careful forger does: the manifest rewritten to match the edited files
    problems = verify(forged).problems
    assert any(p.startswith("avsynth_qa accuracy: results") for p in problems), problems
    assert any(f"avsynth_qa doc {flipped} accuracy: logged 0.0, its answer scores 1.0" in p for p in problems), problems
    assert any("avsynth_caption doc 1: relative_flops" in p for p in problems), problems
    assert any("avsynth_caption doc 2 cider" in p for p in problems), problems
