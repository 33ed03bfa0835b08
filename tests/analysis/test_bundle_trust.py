"""What others share runs no code here, and nothing wrong passes in silence: ``verify`` reads a bundle as data (task
definitions come from the installed packages and the verifier's own ``--include_path``, never from the bundle or a
path it names), and ``submit`` / ``report`` / ``verify`` refuse or flag what they cannot do faithfully. Every case
goes through the real CLI, on the real lmms-eval runs of ``tiny_sweep`` (conftest.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from fastav_eval.analysis import bundle as bundling
from fastav_eval.analysis.bundle import MANIFEST, verify, write_manifest
from fastav_eval.analysis.report import markdown, select
from fastav_eval.analysis.results import RunResults, find_runs
from fastav_eval.analysis.tasks import TaskSource, code_that_runs_strings, lmms_eval_folders_that_run_strings
from fastav_eval.cli import main
from fastav_eval.records import RunRecord
from fastav_eval.resources import tasks_path

ROOT = Path(__file__).resolve().parents[2]

PLANTED_UTILS = """import pathlib

pathlib.Path({marker!r}).write_text("the bundle's code ran")


def process_choice(doc, results):
    return {{"accuracy": 1.0}}
"""


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _run_folder(tiny_sweep, name: str) -> Path:
    out, runs = tiny_sweep
    (run,) = find_runs([out / next(r.hash for r in runs if r.name == name)])
    return run.path.parent


def _copy_run(source: Path, target: Path, samples: bool = True, rename: dict[str, str] | None = None) -> Path:
    """The run's files (results JSON, run record, samples files unless ``samples`` is False) in ``target``; each
    ``old -> new`` of ``rename`` replaced in the JSON files and the samples files' names (a renamed task)."""
    target.mkdir(parents=True)
    for path in source.glob("*_*"):
        if path.suffix == ".jsonl" and not samples:
            continue
        name, data = path.name, path.read_bytes()
        for old, new in (rename or {}).items():
            name = name.replace(old, new)
            if path.suffix == ".json":
                data = data.replace(old.encode(), new.encode())
        (target / name).write_bytes(data)
    return target


@pytest.fixture
def planted(tiny_sweep, tmp_path) -> tuple[Path, Path]:
    """A bundle whose task avsynth_qa was renamed evil_qa, carrying that task's YAML and a utils.py that writes a
    marker file when imported, with ``include_path`` in its results pointing there (relative and absolute); the
    manifest resealed as its author would. Returns the bundle and the marker's path."""
    bundle, marker = tmp_path / "bundle", tmp_path / "marker.txt"
    run = _copy_run(_run_folder(tiny_sweep, "base"), tmp_path / "renamed", rename={"avsynth_qa": "evil_qa"})
    (results_path,) = run.glob("*_results.json")
    results = json.loads(results_path.read_text())
    results["config"].setdefault("resolved_cli_args", {})["include_path"] = ["tasks", str(bundle / "tasks")]
    results_path.write_text(json.dumps(results))
    assert main(["submit", str(run), "--out", str(bundle)]) == 0
    tasks = bundle / "tasks"
    tasks.mkdir()
    (tasks / "evil_qa.yaml").write_text(
        f"include: {tasks_path() / 'avsynth' / 'avsynth_qa.yaml'}\ntask: evil_qa\n"
        "process_results: !function utils.process_choice\n"
    )
    (tasks / "utils.py").write_text(PLANTED_UTILS.format(marker=str(marker)))
    write_manifest(bundle)
    return bundle, marker


def test_verify_never_runs_the_task_code_a_bundle_carries(planted, tmp_path, capsys, monkeypatch):
    bundle, marker = planted
    monkeypatch.chdir(bundle)  # the relative include_path "tasks" resolves into the bundle from here
    code, out, err = _cli(capsys, "verify", bundle)
    assert not marker.exists(), "verify imported the bundle's utils.py"
    assert code == 1
    assert "PROBLEM: evil_qa: no task definition of that name" in err and "--include_path DIR" in err
    assert "['tasks/evil_qa.yaml', 'tasks/utils.py']: not files submit writes" in out
    assert "the results name include_path ['tasks'," in out
    assert f"task avsynth_caption: {tasks_path() / 'avsynth' / 'avsynth_caption.yaml'} (fastav-eval package)" in out
    assert "task evil_qa" not in out
    # the verifier cannot point --include_path into the bundle, or at a folder holding it, either
    for inside in (bundle / "tasks", tmp_path):
        code, _, err = _cli(capsys, "verify", bundle, "--include_path", inside)
        assert code == 2 and f"--include_path={str(inside)!r}" in err and "never runs task code from a bundle" in err
    assert not marker.exists()


def test_verify_uses_the_verifiers_own_copy_of_a_task(planted, tmp_path, capsys):
    bundle, marker = planted
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "evil_qa.yaml").write_text(f"include: {tasks_path() / 'avsynth' / 'avsynth_qa.yaml'}\ntask: evil_qa\n")
    code, out, err = _cli(capsys, "verify", bundle, "--include_path", trusted)
    assert not marker.exists()
    assert code == 0, err
    assert f"task evil_qa: {(trusted / 'evil_qa.yaml').resolve()} (--include_path)" in out
    assert "12 answers re-scored" in out and "fastav-eval verify: ok" in out


def test_submit_refuses_a_run_without_samples_and_report_flags_it(tiny_sweep, tmp_path, capsys):
    base = _run_folder(tiny_sweep, "base")
    unsampled = _copy_run(base, tmp_path / "unsampled", samples=False)  # what lmms-eval without --log_samples leaves
    accepted = "accepted: a run made with lmms-eval's --log_samples"
    code, _, err = _cli(capsys, "submit", unsampled, "--out", tmp_path / "bundle")
    assert code == 2 and f"results={str(unsampled)!r}: run unsampled/" in err, err
    assert "_samples_avsynth_qa.jsonl" in err and "ran without --log_samples" in err and accepted in err
    assert not (tmp_path / "bundle").exists()
    code, _, err = _cli(
        capsys, "submit", base, "--baseline", unsampled, "--out", tmp_path / "bundle"
    )  # nor as the baseline
    assert code == 2 and f"--baseline={str(unsampled)!r}: run unsampled/" in err and accepted in err
    assert not (tmp_path / "bundle").exists()

    code, out, err = _cli(capsys, "report", unsampled, _run_folder(tiny_sweep, "unpruned"), "--out", tmp_path / "r")
    assert code == 0, err
    (record_path,) = unsampled.glob("*_fastav.json")
    flops = RunRecord.load(record_path).overall["relative_flops"]
    assert flops < 90  # the oracle: the wrapper's own mean for this pruned run
    text = (tmp_path / "r" / "report.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| unsampled/"))
    assert " †" in row and f"| {flops:.2f} |" in row and "100.00" not in row
    assert "its costs are the run record's means" in text and "not paired: unsampled/" in text
    assert "no samples files; costs from its run record, marked † in report.md" in out


def test_a_failed_submit_leaves_nothing_and_the_corrected_command_works(tiny_sweep, tmp_path, capsys, monkeypatch):
    base, unpruned = _run_folder(tiny_sweep, "base"), _run_folder(tiny_sweep, "unpruned")
    bundle = tmp_path / "bundle"
    code, _, err = _cli(capsys, "submit", base, "--baseline", tmp_path / "typo", "--out", bundle)
    assert code == 2 and f"--baseline={str(tmp_path / 'typo')!r}" in err
    code, _, err = _cli(capsys, "submit", base, "--baseline", base, "--out", bundle)
    assert code == 2 and "is the run being submitted" in err
    code, _, err = _cli(capsys, "submit", tiny_sweep[0], "--out", bundle)  # the sweep folder: two runs
    assert code == 2 and "holds 2 runs" in err
    other = _copy_run(unpruned, tmp_path / "other", rename={"avsynth_qa": "qa2", "avsynth_caption": "caption2"})
    code, _, err = _cli(capsys, "submit", base, "--baseline", other, "--out", bundle)
    assert code == 2 and f"--baseline={str(other)!r}: other/" in err and "shares no task with the run" in err
    shutil.rmtree(other)

    def fails(*args, **kwargs):
        raise ValueError("the report failed halfway")

    monkeypatch.setattr("fastav_eval.analysis.report.write_report", fails)  # a failure after files were copied
    code, _, err = _cli(capsys, "submit", base, "--baseline", unpruned, "--out", bundle)
    assert code == 2 and "the report failed halfway" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no bundle, no partial folder beside it
    code, _, err = _cli(capsys, "submit", base, "--out", tmp_path / "new" / "deeper" / "bundle")
    assert code == 2 and "the report failed halfway" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nor the parent folders submit made for --out
    (tmp_path / "kept").mkdir()  # a parent that was there before is kept, even when empty
    code, _, err = _cli(capsys, "submit", base, "--out", tmp_path / "kept" / "new" / "bundle")
    assert code == 2 and sorted(p.name for p in tmp_path.rglob("*")) == ["kept"]
    (tmp_path / "kept").rmdir()
    monkeypatch.undo()

    code, out, err = _cli(capsys, "submit", base, "--baseline", unpruned, "--out", bundle)
    assert code == 0, err
    assert "report.md" in out and (bundle / MANIFEST).is_file()
    code, out, err = _cli(capsys, "verify", bundle)
    assert code == 0, err
    for task in ("avsynth_qa", "avsynth_caption"):
        assert f"task {task}: {tasks_path() / 'avsynth' / f'{task}.yaml'} (fastav-eval package)" in out
    assert "note:" not in out  # the results' include_path is FastAV-Eval's own tasks folder: nothing to say


def test_report_options_are_checked_before_anything_is_written(tiny_sweep, tmp_path, capsys):
    sweep, report = tiny_sweep[0], tmp_path / "report"
    cases = {
        ("--reference", "nosuch"): "--reference='nosuch': no such run: ['nosuch']; accepted: ['base', 'unpruned']",
        ("--metric", "nosuch/accuracy"): "--metric='nosuch/accuracy'; accepted: TASK/METRIC, one of [",
        ("--metric", "accuracy"): "'avsynth_qa/accuracy'",
        ("--x-axis", "nosuch"): "--x-axis='nosuch': no run has a number for it in its pruning config; accepted: [",
        ("--only", "base,base"): "--only='base,base': ['base'] named more than once; accepted: each run once",
        ("--only", "base,nosuch"): "--only='base,nosuch': no such run: ['nosuch']; accepted: ['base', 'unpruned']",
    }
    for option, message in cases.items():
        code, _, err = _cli(capsys, "report", sweep, "--out", report, *option)
        assert code == 2 and message in err, (option, err)
        assert "--only" not in err or option[0] == "--only"
        assert not report.exists()
    code, _, err = _cli(capsys, "report", sweep, "--out", report, "--x-axis", "fine_ratio")
    assert code == 0, err
    assert "'fine_ratio'" in _cli(capsys, "report", sweep, "--out", report, "--x-axis", "nosuch")[2]
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _cli(capsys, "report", empty, "--out", report)
    assert code == 2 and "holds no lmms-eval results" in err
    afile = tmp_path / "afile"
    afile.write_text("")
    code, _, err = _cli(capsys, "report", sweep, "--out", afile)
    assert code == 2 and f"--out={str(afile)!r} is a file" in err
    code, _, err = _cli(capsys, "submit", _run_folder(tiny_sweep, "base"), "--out", afile / "bundle")
    assert code == 2 and f"--out={str(afile / 'bundle')!r}: cannot create a folder beside it" in err


def test_verify_refuses_what_is_not_a_bundle(tiny_sweep, tmp_path, capsys):
    code, out, err = _cli(capsys, "verify", tmp_path / "missing")
    assert code == 2 and f"bundle={str(tmp_path / 'missing')!r} does not exist" in err and "sha256" not in err + out
    code, _, err = _cli(capsys, "verify", tmp_path)
    assert code == 2 and f"has neither {MANIFEST} nor results/" in err

    bundle = tmp_path / "bundle"
    assert main(["submit", str(_run_folder(tiny_sweep, "base")), "--out", str(bundle)]) == 0
    capsys.readouterr()
    code, _, err = _cli(capsys, "verify", bundle, "--include_path", tmp_path / "nosuch")
    assert code == 2 and f"--include_path={str(tmp_path / 'nosuch')!r} is not a folder" in err
    escaped = tmp_path / "bundle-escaped"
    shutil.copytree(bundle, escaped)
    with (escaped / MANIFEST).open("a") as manifest:
        manifest.write(f"{'0' * 64}  ../bundle/config.json\n")
    code, _, err = _cli(capsys, "verify", escaped)
    assert code == 1 and f"{MANIFEST} line" in err and "not '<sha256>  <path inside the bundle>'" in err
    linked = tmp_path / "bundle-linked"
    shutil.copytree(bundle, linked)
    (linked / "extra.json").symlink_to(bundle / "config.json")
    code, _, err = _cli(capsys, "verify", linked)
    assert code == 1 and "['extra.json']: symbolic links" in err


def test_verify_does_not_pass_answers_to_task_code_that_runs_strings(tiny_sweep, tmp_path, capsys):
    """A bundle naming an installed lmms-eval task whose code calls eval() (vsibench) is not re-scored with it."""
    run = _copy_run(_run_folder(tiny_sweep, "base"), tmp_path / "renamed", rename={"avsynth_qa": "vsibench"})
    assert main(["submit", str(run), "--out", str(tmp_path / "bundle")]) == 0
    capsys.readouterr()
    code, out, err = _cli(capsys, "verify", tmp_path / "bundle")
    assert code == 1
    problem = next(line for line in err.splitlines() if line.startswith("PROBLEM: vsibench:"))
    assert "(lmms-eval: " in problem and "/vsibench/utils.py:" in problem and " eval(...)" in problem
    assert "task vsibench" not in out and "task avsynth_caption" in out


def test_the_static_check_finds_code_that_runs_strings(tmp_path):
    (tmp_path / "task.yaml").write_text("task: t\n")
    (tmp_path / "utils.py").write_text("import pickle\n\n\ndef score(a):\n    return eval(a), pickle.loads(a)\n")
    (tmp_path / "clean.py").write_text("def score(a):\n    return a.strip() == 'yes'\n")
    found = code_that_runs_strings(TaskSource("t", str(tmp_path / "task.yaml"), "lmms-eval"))
    assert found == [f"{tmp_path / 'utils.py'}:5 eval(...)", f"{tmp_path / 'utils.py'}:5 pickle.loads(...)"]


@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_the_bundle_folder_has_the_permissions_of_a_folder_made_with_mkdir(tiny_sweep, tmp_path, capsys, umask):
    """Built in a hidden folder and renamed: that folder is made as ``mkdir`` makes one under the user's umask
    (``tempfile.mkdtemp``'s 0o700 would keep the bundle from everyone but its owner)."""
    previous = os.umask(umask)
    try:
        code, _, err = _cli(capsys, "submit", _run_folder(tiny_sweep, "base"), "--out", tmp_path / "bundle")
        (tmp_path / "made_with_mkdir").mkdir()
    finally:
        os.umask(previous)
    assert code == 0, err
    expected = stat.S_IMODE((tmp_path / "made_with_mkdir").stat().st_mode)
    assert expected == 0o777 & ~umask
    for folder in (tmp_path / "bundle", tmp_path / "bundle" / "results"):
        assert oct(stat.S_IMODE(folder.stat().st_mode)) == oct(expected), folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "made_with_mkdir"]  # no hidden folder left


def test_malformed_bundle_data_is_a_problem_and_a_bug_in_the_checks_is_not_hidden(tiny_sweep, tmp_path, monkeypatch):
    bundle = tmp_path / "bundle"
    assert main(["submit", str(_run_folder(tiny_sweep, "base")), "--out", str(bundle)]) == 0
    (record_path,) = (bundle / "results").glob("*_fastav.json")
    original = record_path.read_text()
    record = json.loads(original)
    record["tasks"]["avsynth_qa"]["relative_flops"] = "fifty"  # what a hand-edited record could hold
    record_path.write_text(json.dumps(record))
    write_manifest(bundle)
    result = verify(bundle)
    assert "malformed bundle data (run record tasks.avsynth_qa={" in "\n".join(result.problems)
    assert "'relative_flops': 'fifty'" in "\n".join(result.problems)
    assert "accepted: an object of numbers (the means of its samples)" in "\n".join(result.problems)

    (samples,) = (bundle / "results").glob("*_samples_avsynth_qa.jsonl")
    samples.write_text("[1, 2]\n" + samples.read_text())  # a samples line that is not an object
    write_manifest(bundle)
    problems = "\n".join(verify(bundle).problems)
    assert f"{samples.name} line 1=[1, 2]; accepted: a JSON object (one sample)" in problems

    def broken(*args, **kwargs):
        raise TypeError("a bug in FastAV-Eval's own check")

    monkeypatch.setattr(bundling, "_check_flops", broken)
    samples.write_text(samples.read_text().split("\n", 1)[1])
    record_path.write_text(original)
    write_manifest(bundle)  # well-formed again: the checks run
    with pytest.raises(TypeError, match="a bug in FastAV-Eval's own check"):  # not "malformed bundle data"
        verify(bundle)


def test_a_results_json_of_the_wrong_shape_is_refused_naming_the_field(tmp_path):
    path = tmp_path / "20261206_000000_results.json"
    cases = {
        "group_subtasks": ({"grp": "avsynth_qa"}, "group_subtasks.grp='avsynth_qa'; accepted: a list of task names"),
        "n-samples": ({"avsynth_qa": 6}, "n-samples.avsynth_qa=6; accepted: an object"),
        "config": ([], "config=[]; accepted: an object"),
    }
    for key, (value, message) in cases.items():
        path.write_text(json.dumps({"results": {"avsynth_qa": {"accuracy,none": 0.5}}, key: value}))
        with pytest.raises(ValueError, match=re.escape(f"{path.name} {message}")):
            RunResults.load(path)


def _synthetic(folder: str, values: list[float], samples: bool = True) -> RunResults:
    """A run of the group ``grp`` (one subtask ``sub``) in ``<tmp>/<folder>/``, as lmms-eval writes it."""
    mean = sum(values) / len(values)
    results = {
        "results": {"grp": {"alias": "grp", "acc,none": mean}, "sub": {"alias": " - sub", "acc,none": mean}},
        "groups": {"grp": {"alias": "grp", "acc,none": mean}},
        "group_subtasks": {"sub": [], "grp": ["sub"]},
    }
    lines = [{"doc_id": i, "target": "t", "input": f"q{i}", "acc": v} for i, v in enumerate(values)]
    return RunResults(Path("/nonexistent") / folder / "20261206_000000_results.json", results,
                      {"sub": lines} if samples else {})  # fmt: skip


def _paired_lines(text: str, task: str) -> list[str]:
    section = text.split("## Against the reference run")[1].split("## Provenance")[0]
    return [line for line in section.splitlines() if f"| {task} |" in line]


def test_a_group_gets_its_corpus_difference_and_runs_without_samples_are_not_paired():
    run, reference = _synthetic("pruned", [1, 0, 1, 1]), _synthetic("full", [1, 1, 1, 1])
    text = markdown([run, reference], reference=reference)
    (group,) = _paired_lines(text, "grp")
    assert group == "| pruned/20261206_000000 | pruned/20261206_000000 | grp | acc | 4 | -0.2500 (corpus) | " \
        "a group: its subtasks ['sub'] are paired |"  # fmt: skip
    (sub,) = _paired_lines(text, "sub")
    assert "| sub | acc | 4 | -0.2500 | [" in sub
    unsampled = _synthetic("unsampled", [1, 0, 1, 1], samples=False)
    text = markdown([unsampled, reference], reference=reference)
    for task in ("grp", "sub"):
        (line,) = _paired_lines(text, task)
        assert f"| {task} | acc | 0 |  | not paired: unsampled/20261206_000000 has no samples file" in line


def test_an_ambiguous_missing_or_repeated_name_is_spelled_as_the_option_and_its_value():
    runs = [_synthetic("a/same", [1]), _synthetic("b/same", [0]), _synthetic("other", [1])]
    cases = {
        ("same/20261206_000000",): "--reference='same/20261206_000000': several runs are named "
        "['same/20261206_000000'] (several sweeps?); accepted: a name only one run has",
        ("nosuch",): "--reference='nosuch': no such run: ['nosuch']; accepted: [",
        ("other/20261206_000000", "other/20261206_000000"): "--reference='other/20261206_000000,other/20261206_000000'"
        ": ['other/20261206_000000'] named more than once; accepted: each run once",
    }
    for names, message in cases.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            select(runs, list(names), "--reference")


def test_the_docs_give_the_number_of_lmms_eval_task_folders_verify_will_not_run():
    flagged = lmms_eval_folders_that_run_strings()
    text = " ".join((ROOT / "docs" / "analysis.md").read_text().split())
    assert f"that is {len(flagged)} task folders ({', '.join(f'`{name}`' for name in flagged)})" in text
    assert "vsibench" in flagged
