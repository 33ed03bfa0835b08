"""``fastav-eval submit`` packs one run for others to check; ``fastav-eval verify`` checks a bundle.

A bundle holds lmms-eval's results JSON and samples files and the run record, untouched (``results/``), the
resolved config and its profile, the report and its plot, a leaderboard CSV row and ``MANIFEST.sha256``.
``verify`` re-derives everything a reader would take on trust: every file's sha256; each task metric from the
per-sample values in the samples files, through the task's own aggregation (and each sample's score from its
answer through the task's own ``process_results``, where the task's documents can be loaded); each sample's FLOPs
from the tokens each layer processed and the decoder's shape; the per-task and pooled means; the CSV row.

A bundle is data: ``verify`` reads its JSON, JSONL and CSV files and nothing else, never a task definition or any
code it carries or names (``config.resolved_cli_args.include_path`` in its results is ignored). The tasks it
recomputes with come from the installed lmms-eval and FastAV-Eval and from the verifier's own ``--include_path``;
it reports which definition it used for each task, and a task whose code could run a submitted answer as code
(an ``eval``/``exec`` in an lmms-eval task's folder) is not run on the bundle.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fastav_eval.analysis.results import RunResults, find_runs
from fastav_eval.analysis.tasks import FROM_INCLUDE_PATH, FROM_PACKAGE, TaskSource
from fastav_eval.provenance import file_sha256
from fastav_eval.pruning import DecoderShape
from fastav_eval.pruning.flops import relative_flops
from fastav_eval.records import (
    LATER_MEAN_FIELDS,
    MEAN_FIELDS,
    SampleRecord,
    canonical_hash,
    derived_fields,
    means,
    prompt_counts,
    read_json,
    run_record_path,
    write_json,
)
from fastav_eval.resources import tasks_path

MANIFEST = "MANIFEST.sha256"
RESULTS_DIR = "results"
LEADERBOARD = "leaderboard.csv"
SUBMITTED = ("config.json", "profile.json", "report.md", "pareto.png", LEADERBOARD)
"""The files :func:`submit` writes beside ``results/`` and the manifest."""
TOLERANCE = 1e-6


def _close(a: float, b: float, tolerance: float = TOLERANCE) -> bool:
    return math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance)


def leaderboard_row(run: RunResults) -> dict[str, str]:
    """Model, Language Model, Date, then each task's primary metric as lmms-eval reports it, and the FLOPs."""
    model = run.results.get("model_name") or run.results.get("config", {}).get("model") or ""
    row = {
        "Model": f"{model} ({run.label()})",
        "Language Model": run.record.language_model if run.record is not None else "",
        "Date": str(run.results.get("date")),
    }
    for task in run.tasks:
        metric = run.primary_metric(task)
        row[f"{task} ({metric})"] = repr(run.metrics_of(task)[metric].value)
    flops = run.costs.get("relative_flops")
    if flops is None:  # never a made-up figure
        why = "no FastAV run record" if run.record is None else "no answered sample"
        raise ValueError(f"{run.name}: no relative FLOPs ({why}); a leaderboard row needs one")
    row["Relative FLOPs (%)"] = repr(flops)
    return row


def require_samples(run: RunResults, option: str, given: str | Path) -> None:
    """A run whose metrics and FLOPs can be recomputed: every task with metrics has its samples file. ``option``
    and ``given``: the command-line option (or argument) that named the run, and its value, for the error."""
    missing = run.missing_samples
    if missing:
        raise ValueError(
            f"{option}={str(given)!r}: run {run.name} has no samples file for {missing} (expected "
            f"{[run.samples_file(task).name for task in missing]} beside {run.path.name}): lmms-eval ran without "
            "--log_samples, so its metrics and FLOPs cannot be recomputed from per-sample records; accepted: a run "
            "made with lmms-eval's --log_samples"
        )


def _single_run(path: str | Path) -> RunResults:
    runs = find_runs([path])
    if len(runs) != 1:
        raise ValueError(
            f"{str(path)!r} holds {len(runs)} runs ({[r.name for r in runs]}); give one results JSON or run folder"
        )
    return runs[0]


def submit(path: str | Path, out: str | Path, baselines: Sequence[str | Path] = ()) -> Path:
    """Write the bundle of the run at ``path`` (a results JSON or a folder with one run) to ``out``.

    ``baselines``: other runs (e.g. the unpruned one) the bundled report compares against; only ``path``'s files
    are bundled. Every input is checked before anything is written; the bundle is built in a hidden folder beside
    ``out`` (made as ``mkdir`` makes any folder, under the user's umask) and renamed to ``out`` when complete. A
    failure leaves nothing behind: neither that folder nor the parent folders of ``out`` that submit created.
    """
    run = _single_run(path)
    if run.record is None:
        raise ValueError(
            f"results={str(path)!r}: {run.path.name} has no FastAV run record beside it "
            f"({run_record_path(run.path).name}); accepted: a run of a FastAV wrapper (lmms-eval --model "
            "fastav_tiny, ...), which writes one"
        )
    require_samples(run, "results", path)
    others: list[RunResults] = []
    for given in baselines:
        try:
            found = find_runs([given])
        except ValueError as error:
            raise ValueError(f"--baseline={str(given)!r}: {error}; accepted: a run's folder or results JSON") from error
        for other in found:
            if other.path.resolve() == run.path.resolve():
                raise ValueError(f"--baseline={str(given)!r} is the run being submitted; accepted: another run")
            require_samples(other, "--baseline", given)
            if not set(other.tasks) & set(run.tasks):
                raise ValueError(
                    f"--baseline={str(given)!r}: {other.name} shares no task with the run (its tasks {other.tasks}, "
                    f"the run's {run.tasks}); accepted: a run of the same tasks"
                )
        others += found
    leaderboard_row(run)  # its FLOPs figure exists
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "is not empty" if out.is_dir() else "is a file"
        raise ValueError(f"--out={str(out)!r} {what}; accepted: a new or empty folder")
    if out.resolve().is_relative_to(run.path.parent.resolve()):
        raise ValueError(f"--out={str(out)!r} lies inside the run's folder {str(run.path.parent)!r}; accepted: a "
                         "folder outside it (the bundle's copy would make it a second run there)")  # fmt: skip
    parent = out.resolve().parent
    created = [folder for folder in (parent, *parent.parents) if not folder.exists()]  # deepest first
    staging, emptied = None, False
    try:
        try:
            parent.mkdir(parents=True, exist_ok=True)
            staging = _staging_folder(parent, out.name)
        except OSError as error:
            raise ValueError(
                f"--out={str(out)!r}: cannot create a folder beside it ({error}); accepted: a writable path"
            ) from error
        _write_bundle(run, others, staging)
        if out.exists():
            out.rmdir()  # empty, checked above
            emptied = True
        staging.rename(out)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if emptied and not out.exists():  # the user's empty folder, as it was
            out.mkdir()
        _remove_empty(created)
        raise
    return out


def _staging_folder(parent: Path, name: str) -> Path:
    """A new hidden folder ``.<name>.partial-<random>`` in ``parent``, made by ``mkdir`` (mode 0o777 less the
    umask, as any folder the user makes: ``tempfile.mkdtemp``'s 0o700 would stay with the bundle)."""
    for _ in range(100):
        staging = parent / f".{name}.partial-{secrets.token_hex(8)}"
        try:
            staging.mkdir()
        except FileExistsError:
            continue
        return staging
    raise FileExistsError(f"no unused name .{name}.partial-<random> in {str(parent)!r}")


def _remove_empty(folders: Sequence[Path]) -> None:
    """Remove ``folders`` (deepest first: the parents of ``--out`` that submit created), each only if empty."""
    for folder in folders:
        with contextlib.suppress(OSError):  # not there (never created) or not empty (others' files): left as is
            folder.rmdir()


def _write_bundle(run: RunResults, others: list[RunResults], out: Path) -> None:
    from fastav_eval.analysis.report import write_report

    results = out / RESULTS_DIR
    results.mkdir(parents=True)
    prefix = run.path.name.removesuffix("_results.json")
    for source in sorted(run.path.parent.glob(f"{prefix}_*")):
        shutil.copy2(source, results / source.name)  # byte for byte
    record = run.record
    config = {"model": record.model, "model_args": record.model_args, "prune": record.prune, "pruning": record.pruning,
              "pruning_hash": record.pruning_hash, "lmms_eval": run.results.get("config", {})}  # fmt: skip
    write_json(out / "config.json", config)
    profile_file = Path(record.profile["path"]) if record.profile else None
    if profile_file is not None and profile_file.is_file() and file_sha256(profile_file) == record.profile["sha256"]:
        shutil.copy2(profile_file, out / "profile.json")
    elif isinstance(record.pruning.get("profile"), dict):
        write_json(out / "profile.json", record.pruning["profile"])
    bundled = RunResults.load(results / run.path.name)
    write_report([bundled, *others], out)
    row = leaderboard_row(bundled)
    with (out / LEADERBOARD).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    write_manifest(out)


def write_manifest(bundle: Path) -> Path:
    """``MANIFEST.sha256`` (``sha256sum`` format) over every other file of the bundle."""
    files = sorted(p for p in bundle.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = bundle / MANIFEST
    manifest.write_text("".join(f"{file_sha256(p)}  {p.relative_to(bundle).as_posix()}\n" for p in files))
    return manifest


@dataclass
class Verification:
    """What ``verify`` checked and what did not hold."""

    problems: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    sources: dict[str, TaskSource] = field(default_factory=dict)
    """task -> the definition its metrics were recomputed with (never one from the bundle)."""

    def count(self, what: str, n: int = 1) -> None:
        self.checked[what] = self.checked.get(what, 0) + n

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_manifest(bundle: Path, result: Verification) -> None:
    manifest = bundle / MANIFEST
    if not manifest.is_file():
        result.problems.append(f"{MANIFEST} is missing")
        return
    listed = {}
    for number, line in enumerate(manifest.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        digest, _, name = line.partition("  ")
        if not name or Path(name).is_absolute() or ".." in Path(name).parts:
            result.problems.append(f"{MANIFEST} line {number} {line!r}: not '<sha256>  <path inside the bundle>'")
            continue
        listed[name] = digest
    present = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file() and p.name != MANIFEST}
    for name in sorted(present - set(listed)):
        result.problems.append(f"{name} is not in {MANIFEST}")
    for name, digest in sorted(listed.items()):
        if name not in present:
            result.problems.append(f"{name} is listed in {MANIFEST} but missing")
        elif file_sha256(bundle / name) != digest:
            result.problems.append(f"{name}: sha256 differs from {MANIFEST} (the file was changed)")
        else:
            result.count("files")


def _parse_bundle_data(run: RunResults) -> dict[str, list[SampleRecord]]:
    """task -> its samples' records, once the bundle data the checks read is known to be well formed (a
    ValueError naming the field, its value and what is accepted otherwise). The results JSON's own layout and the
    run record were checked as they were read (:meth:`RunResults.load`)."""
    records = {task: run.sample_records(task) for task in sorted(run.samples)}
    if run.record is not None:
        for task, stored in run.record.tasks.items():
            if not isinstance(stored, dict) or not all(_is_number(value) for value in stored.values()):
                raise ValueError(
                    f"run record tasks.{task}={stored!r}; accepted: an object of numbers (the means of its samples)"
                )
    for key, value in run.results.get("throughput", {}).items():
        if key.startswith("avg_") and not _is_number(value):
            raise ValueError(f"results throughput.{key}={value!r}; accepted: a number")
    return records


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_flops(run: RunResults, parsed: dict[str, list[SampleRecord]], result: Verification) -> None:
    record = run.record
    if record is None:
        result.problems.append("no run record: FLOPs cannot be recomputed")
        return
    try:
        shape = DecoderShape(**record.decoder_shape)
    except (TypeError, ValueError) as error:
        result.problems.append(f"run record decoder_shape {record.decoder_shape!r} is not a decoder's shape ({error})")
        return
    pooled = []
    for task in sorted(run.samples):
        records = parsed[task]
        for line, sample in zip(run.samples[task], records, strict=True):
            where = f"{task} doc {line.get('doc_id')}"
            if not sample.ok:
                continue
            tokens = torch.tensor(sample.tokens_per_layer)
            if len(tokens) != shape.num_layers:
                result.problems.append(
                    f"{where}: {len(tokens)} layers of token counts, the decoder has {shape.num_layers}"
                )
                continue
            prompt = sum(prompt_counts(sample.kept_per_layer, sample.prompt_per_modality).values())
            for name, convention in (("relative_flops", "fastv"), ("relative_flops_exact", "exact")):
                recomputed = float(relative_flops(tokens, shape, convention, prompt_tokens=torch.tensor(prompt)))
                if not _close(recomputed, getattr(sample, name)):
                    result.problems.append(
                        f"{where}: {name} {getattr(sample, name)} != {recomputed} from kept_per_layer"
                    )
            for name, derived in derived_fields(sample.kept_per_layer, sample.prompt_per_modality).items():
                stored = getattr(sample, name)
                same = stored == derived if isinstance(derived, int) else _close(stored, derived)
                if not same:
                    result.problems.append(f"{where}: {name} {stored} != {derived} from kept_per_layer")
            result.count("sample FLOPs")
        task_means = means(records)
        stored = record.tasks.get(task)
        if stored is None:
            result.problems.append(f"run record has no means for {task}")
        else:
            for name in ("n", "failed", *MEAN_FIELDS):
                if name in LATER_MEAN_FIELDS and name not in stored:
                    continue  # a record from before the field
                if (name in stored) != (name in task_means) or (
                    name in stored and not _close(stored[name], task_means[name])
                ):
                    result.problems.append(
                        f"run record tasks.{task}.{name} {stored.get(name)} != {task_means.get(name)} from the samples"
                    )
        throughput = run.results.get("throughput", {})
        for name in MEAN_FIELDS:
            key = f"avg_{task}/{name}"
            if key in throughput and name in task_means and not _close(throughput[key], task_means[name]):
                result.problems.append(
                    f"results throughput {key} {throughput[key]} != {task_means[name]} from the samples"
                )
        pooled += records
    overall = means(pooled)
    throughput = run.results.get("throughput", {})
    for name in MEAN_FIELDS:
        if name in overall and f"avg_{name}" in throughput and not _close(throughput[f"avg_{name}"], overall[name]):
            result.problems.append(
                f"results throughput avg_{name} {throughput[f'avg_{name}']} != {overall[name]} from the samples"
            )


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _task_definitions(wanted: list[str], manager: Any, include_paths: Sequence[str], result: Verification) -> list[str]:
    """The tasks of ``wanted`` whose definition verify may run on the bundle's data, recording each one's source
    in ``result.sources``; each other task is a problem naming it and how to supply a definition."""
    from fastav_eval.analysis.tasks import code_that_runs_strings, task_source

    usable = []
    for task in wanted:
        source = task_source(manager, task, include_paths)
        if source is None:
            result.problems.append(
                f"{task}: no task definition of that name in lmms-eval's tasks, FastAV-Eval's "
                f"({tasks_path()}) or --include_path {list(map(str, include_paths))}; its metrics were not "
                "recomputed. To check them, pass a folder holding its YAML (and the utils.py that YAML names), read "
                "and trusted by you, with --include_path DIR (verify never uses task files from a bundle or a path "
                "written in it)"
            )
            continue
        if source.origin not in (FROM_PACKAGE, FROM_INCLUDE_PATH):  # lmms-eval's: thousands of files, not ours
            runs_strings = code_that_runs_strings(source)
            if runs_strings:
                result.problems.append(
                    f"{task}: its definition ({source.origin}: {source.path}) has code that runs strings as code "
                    f"({'; '.join(runs_strings[:3])}{'; ...' if len(runs_strings) > 3 else ''}): the bundle's "
                    "answers and scores are not passed to it, so its metrics were not recomputed"
                )
                continue
        result.sources[task] = source
        usable.append(task)
    return usable


def _check_metrics(run: RunResults, result: Verification, include_paths: Sequence[str] = ()) -> None:
    from lmms_eval.api.metrics import mean, mean_stderr

    from fastav_eval.analysis.tasks import load_tasks, task_manager

    model = str(run.results.get("config", {}).get("model") or "")
    declared = run.results.get("config", {}).get("resolved_cli_args", {}).get("include_path")
    declared = [str(path) for path in (declared if isinstance(declared, list) else [declared] if declared else [])]
    used = {str(Path(path).resolve()) for path in (tasks_path(), *include_paths)}
    if any(str(Path(path).resolve()) not in used for path in declared):  # the same folders as ours say nothing
        result.notes.append(
            f"the results name include_path {declared!r}: not used (verify runs no task code from a bundle or a "
            "path written in it; its tasks come from lmms-eval, FastAV-Eval and your --include_path)"
        )
    groups = run.groups
    tasks = [task for task in run.tasks if task not in groups]
    manager = task_manager(model, include_paths)
    usable = _task_definitions([*tasks, *(g for g in groups if g in run.tasks)], manager, include_paths, result)
    try:
        loaded, group_configs = load_tasks(usable, model, manager=manager)
    except Exception:  # one task that does not load: try each alone, so the others are still checked
        loaded, group_configs = {}, {}
    for task in tasks:
        samples = run.samples.get(task)
        if samples is None:
            result.problems.append(
                f"{task}: no samples file ({run.samples_file(task).name}; run lmms-eval with --log_samples)"
            )
            continue
        if task not in result.sources:
            continue  # a problem already says why
        n_samples = run.results.get("n-samples", {}).get(task, {}).get("effective")
        if n_samples is not None and n_samples != len(samples):
            result.problems.append(f"{task}: n-samples effective {n_samples} != {len(samples)} samples in the file")
        try:
            task_object = loaded[task] if task in loaded else load_tasks([task], model, manager=manager)[0][task]
        except Exception as error:  # the task's code must load to recompute its metrics
            result.problems.append(
                f"{task}: cannot load the task ({result.sources[task].path}) to recompute its metrics ({error})"
            )
            continue
        aggregations = task_object.aggregation()
        for metric, reported in run.metrics_of(task).items():
            values = [line[metric] for line in samples if metric in line]
            if metric not in aggregations:
                result.problems.append(f"{task}: the task has no aggregation for {metric}")
                continue
            by_mean = aggregations[metric] is mean and reported.stderr is not None and len(values) > 1
            try:
                recomputed = float(_aggregate(aggregations[metric], values, task_object))
                stderr = float(mean_stderr(values)) if by_mean else None
            except Exception as error:  # the task's own code failed on the bundle's samples: that is a finding
                result.problems.append(f"{task} {metric}: its aggregation fails on the samples ({error!r})")
                continue
            if not _close(recomputed, reported.value):
                result.problems.append(f"{task} {metric}: results {reported.value} != {recomputed} from the samples")
            if stderr is not None and not _close(stderr, reported.stderr):
                result.problems.append(f"{task} {metric}_stderr: results {reported.stderr} != {stderr}")
            result.count("metrics")
        _rescore(task_object, task, samples, result)
    for group, subtasks in groups.items():
        if group in run.tasks and group in result.sources:
            _check_group(run, group, subtasks, group_configs.get(group), result)


def _check_group(
    run: RunResults, group: str, subtasks: list[str], config: dict[str, Any] | None, result: Verification
) -> None:
    """A group's metrics from its subtasks' (checked above), combined as its ``aggregate_metric_list`` says."""
    from lmms_eval.api.metrics import aggregate_subtask_metrics

    listed = (config or {}).get("aggregate_metric_list") or []
    if not listed:
        result.problems.append(f"group {group}: its config (aggregate_metric_list) could not be loaded")
        return
    for entry in listed:
        entry = entry if isinstance(entry, dict) else vars(entry)
        metric = entry["metric"]
        reported = run.metrics_of(group).get(metric)
        having = [task for task in subtasks if metric in run.metrics_of(task)]
        if reported is None or not having:
            continue
        values = [run.metrics_of(task)[metric].value for task in having]
        sizes = [len(run.samples.get(task, [])) for task in having]
        recomputed = aggregate_subtask_metrics(values, sizes, bool(entry.get("weight_by_size", False)))
        if not _close(recomputed, reported.value):
            result.problems.append(f"group {group} {metric}: results {reported.value} != {recomputed} from {having}")
        result.count("metrics")


def _aggregate(function: Any, values: list[Any], task_object: Any) -> Any:
    """Call a task's aggregation as lmms-eval does: with ``args`` when its signature asks for them."""
    import inspect

    if "args" in inspect.signature(function).parameters:
        return function(values, args=getattr(task_object, "args", None))
    return function(values)


def _rescore(task_object: Any, task: str, samples: list[dict[str, Any]], result: Verification) -> None:
    """Each sample's scores again from its logged answer, through the task's process_results (where the task's
    documents load: a task whose data is not on this machine is noted, not failed)."""
    try:
        docs = task_object.eval_docs
    except Exception as error:
        result.notes.append(f"{task}: documents not available here ({type(error).__name__}); answers not re-scored")
        return
    for line in samples:
        doc_id = line.get("doc_id")
        if not isinstance(doc_id, int) or not 0 <= doc_id < len(docs):
            result.problems.append(f"{task}: doc_id {doc_id!r} is not one of the task's {len(docs)} documents")
            continue
        doc = docs[doc_id]
        answer = line.get("filtered_resps")
        answer = answer[0] if isinstance(answer, list) else answer
        try:
            scores = _plain(task_object.process_results(doc, [answer]))
        except Exception as error:  # the task's own code failed on the bundle's answer: that is a finding
            result.problems.append(f"{task} doc {doc_id}: its process_results fails on the logged answer ({error!r})")
            continue
        for metric, value in scores.items():
            if metric in line and _plain(line[metric]) != value:
                result.problems.append(
                    f"{task} doc {doc_id} {metric}: logged {line[metric]!r}, its answer scores {value!r}"
                )
        target = task_object.doc_to_target(doc)
        if "target" in line and str(line["target"]) != str(target):
            result.problems.append(
                f"{task} doc {doc_id}: logged target {line['target']!r} is not the document's {target!r}"
            )
        result.count("answers re-scored")


def _check_leaderboard(bundle: Path, run: RunResults, result: Verification) -> None:
    path = bundle / LEADERBOARD
    if not path.is_file():
        result.problems.append(f"{LEADERBOARD} is missing")
        return
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    try:
        expected = leaderboard_row(run)
    except ValueError as error:
        result.problems.append(f"{LEADERBOARD}: the results give no row ({error})")
        return
    if len(rows) != 1 or rows[0] != expected:
        result.problems.append(f"{LEADERBOARD} row {rows} is not the results' {expected}")


def _check_include_paths(bundle: Path, include_paths: Sequence[str | Path]) -> list[Path]:
    """The verifier's ``--include_path`` folders; none may hold the bundle or lie inside it (TaskManager reads
    every YAML under them, and a bundle's files are never task definitions)."""
    folders = []
    inside = bundle.resolve()
    for given in include_paths:
        folder = Path(given)
        if not folder.is_dir():
            raise ValueError(f"--include_path={str(given)!r} is not a folder; accepted: a folder of task YAMLs")
        resolved = folder.resolve()
        if resolved.is_relative_to(inside) or inside.is_relative_to(resolved):
            raise ValueError(
                f"--include_path={str(given)!r} {'lies inside' if resolved.is_relative_to(inside) else 'holds'} the "
                f"bundle {str(bundle)!r}: verify never runs task code from a bundle; accepted: a folder apart from "
                "it, with task definitions you have read (copy them out of the bundle and review them first)"
            )
        folders.append(folder)
    return folders


def _check_layout(bundle: Path, result: Verification) -> bool:
    """Plain files only (False, with a problem, for a symbolic link: verify reads nothing through one); a note
    names each file submit does not write, which verify reads as nothing at all."""
    links = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_symlink())
    if links:
        result.problems.append(f"{links}: symbolic links; a bundle holds plain files (nothing else was checked)")
        return False
    extra = sorted(
        p.relative_to(bundle).as_posix() for p in bundle.rglob("*")
        if p.is_file() and p.parent != bundle / RESULTS_DIR and p.name not in (*SUBMITTED, MANIFEST)
    )  # fmt: skip
    if extra:
        result.notes.append(f"{extra}: not files submit writes; not read, imported or run (a bundle is data)")
    return True


def verify(bundle: str | Path, include_paths: Sequence[str | Path] = ()) -> Verification:
    """Check a bundle written by :func:`submit`, recomputing with the task definitions installed here and in
    ``include_paths`` (the verifier's own ``--include_path`` folders), never with any the bundle carries or names."""
    bundle = Path(bundle)
    if not bundle.exists():
        raise ValueError(f"bundle={str(bundle)!r} does not exist; accepted: a folder written by fastav-eval submit")
    if not bundle.is_dir():
        raise ValueError(f"bundle={str(bundle)!r} is a file; accepted: a folder written by fastav-eval submit")
    if not (bundle / MANIFEST).is_file() and not (bundle / RESULTS_DIR).is_dir():
        raise ValueError(
            f"bundle={str(bundle)!r} has neither {MANIFEST} nor {RESULTS_DIR}/; accepted: a folder written by "
            "fastav-eval submit"
        )
    includes = [str(folder) for folder in _check_include_paths(bundle, include_paths)]
    result = Verification()
    if not _check_layout(bundle, result):
        return result
    _check_manifest(bundle, result)
    try:
        run = _single_run(bundle / RESULTS_DIR)
    except ValueError as error:
        result.problems.append(str(error))
        return result
    if run.record is not None:
        profile = bundle / "profile.json"
        if run.record.profile and profile.is_file() and file_sha256(profile) != run.record.profile["sha256"]:
            result.problems.append("profile.json's sha256 is not the run record's profile.sha256")
        try:
            config = read_json(bundle / "config.json", "config") if (bundle / "config.json").is_file() else {}
        except ValueError as error:
            result.problems.append(str(error))
            config = {}
        config = config if isinstance(config, dict) else {}
        hashes = {config.get("pruning_hash"), canonical_hash(config.get("pruning"))}
        if hashes != {run.record.pruning_hash}:
            result.problems.append("config.json's pruning settings are not the run record's (pruning_hash differs)")
    try:
        parsed = _parse_bundle_data(run)
    except ValueError as error:  # malformed data in the bundle: the checks below would only trip over it
        result.problems.append(f"malformed bundle data ({error}); its FLOPs and metrics were not checked")
    else:
        _check_flops(run, parsed, result)
        _check_metrics(run, result, includes)
    _check_leaderboard(bundle, run, result)
    return result
