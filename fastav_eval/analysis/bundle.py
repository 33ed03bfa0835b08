"""``fastav-eval submit`` packs one run for others to check; ``fastav-eval verify`` checks a bundle.

A bundle holds lmms-eval's results JSON and samples files and the run record, untouched (``results/``), the
resolved config and its profile, the report and its plot, a leaderboard CSV row and ``MANIFEST.sha256``.
``verify`` re-derives everything a reader would take on trust: every file's sha256; each task metric from the
per-sample values in the samples files, through the task's own aggregation (and each sample's score from its
answer through the task's own ``process_results``, where the task's documents can be loaded); each sample's FLOPs
from the tokens each layer processed and the decoder's shape; the per-task and pooled means; the CSV row.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fastav_eval.analysis.results import RunResults, find_runs
from fastav_eval.provenance import file_sha256
from fastav_eval.pruning import DecoderShape
from fastav_eval.pruning.flops import relative_flops
from fastav_eval.records import MEAN_FIELDS, canonical_hash, means

MANIFEST = "MANIFEST.sha256"
RESULTS_DIR = "results"
LEADERBOARD = "leaderboard.csv"
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
    row["Relative FLOPs (%)"] = repr(run.costs.get("relative_flops", 100.0))
    return row


def _single_run(path: str | Path) -> RunResults:
    runs = find_runs([path])
    if len(runs) != 1:
        raise ValueError(
            f"{str(path)!r} holds {len(runs)} runs ({[r.name for r in runs]}); give one results JSON or run folder"
        )
    return runs[0]


def submit(path: str | Path, out: str | Path, baselines: list[str | Path] = ()) -> Path:
    """Write the bundle of the run at ``path`` (a results JSON or a folder with one run) to ``out``.

    ``baselines``: other runs (e.g. the unpruned one) the bundled report compares against; only ``path``'s files
    are bundled.
    """
    from fastav_eval.analysis.report import write_report

    run = _single_run(path)
    if run.record is None:
        raise ValueError(
            f"{run.path} has no FastAV run record beside it (<date>_fastav.json): was it a FastAV wrapper's run?"
        )
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {str(out)!r} is not empty")
    results = out / RESULTS_DIR
    results.mkdir(parents=True)
    prefix = run.path.name.removesuffix("_results.json")
    for source in sorted(run.path.parent.glob(f"{prefix}_*")):
        shutil.copy2(source, results / source.name)  # byte for byte
    record = run.record
    config = {"model": record.model, "model_args": record.model_args, "prune": record.prune, "pruning": record.pruning,
              "pruning_hash": record.pruning_hash, "lmms_eval": run.results.get("config", {})}  # fmt: skip
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    profile_file = Path(record.profile["path"]) if record.profile else None
    if profile_file is not None and profile_file.is_file() and file_sha256(profile_file) == record.profile["sha256"]:
        shutil.copy2(profile_file, out / "profile.json")
    elif isinstance(record.pruning.get("profile"), dict):
        (out / "profile.json").write_text(json.dumps(record.pruning["profile"], indent=2) + "\n")
    bundled = RunResults.load(results / run.path.name)
    others = [other for other in find_runs(baselines)] if baselines else []
    write_report([bundled, *others], out)
    row = leaderboard_row(bundled)
    with (out / LEADERBOARD).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    write_manifest(out)
    return out


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
    for line in manifest.read_text().splitlines():
        digest, _, name = line.partition("  ")
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


def _check_flops(run: RunResults, result: Verification) -> None:
    record = run.record
    if record is None:
        result.problems.append("no run record: FLOPs cannot be recomputed")
        return
    shape = DecoderShape(**record.decoder_shape)
    pooled = []
    for task in sorted(run.samples):
        records = run.sample_records(task)
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
            for name, convention in (("relative_flops", "fastv"), ("relative_flops_exact", "exact")):
                recomputed = float(relative_flops(tokens, shape, convention))
                if not _close(recomputed, getattr(sample, name)):
                    result.problems.append(
                        f"{where}: {name} {getattr(sample, name)} != {recomputed} from kept_per_layer"
                    )
            for modality in ("video", "audio"):
                kept = sample.kept_per_layer.get(modality, [0] * shape.num_layers)
                if kept[0] != getattr(sample, f"{modality}_tokens") or not _close(
                    sum(kept) / len(kept), getattr(sample, f"{modality}_kept_mean")
                ):
                    result.problems.append(
                        f"{where}: {modality}_tokens / {modality}_kept_mean disagree with kept_per_layer"
                    )
            if sample.input_tokens != int(tokens[0]):
                result.problems.append(
                    f"{where}: input_tokens {sample.input_tokens} != layer 0's {int(tokens[0])} tokens"
                )
            result.count("sample FLOPs")
        task_means = means(records)
        stored = record.tasks.get(task)
        if stored is None:
            result.problems.append(f"run record has no means for {task}")
        else:
            for name in ("n", "failed", *MEAN_FIELDS):
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


def _check_metrics(run: RunResults, result: Verification) -> None:
    from lmms_eval.api.metrics import mean, mean_stderr

    from fastav_eval.analysis.tasks import load_tasks, task_objects

    model = str(run.results.get("config", {}).get("model") or "")
    include = run.results.get("config", {}).get("resolved_cli_args", {}).get("include_path")
    includes = [p for p in ([include] if isinstance(include, str) else include or []) if Path(p).is_dir()]
    groups = {name: subtasks for name, subtasks in run.results.get("group_subtasks", {}).items() if subtasks}
    tasks = [task for task in run.tasks if task not in groups]  # a task run alone is listed with no subtasks
    try:
        loaded, group_configs = load_tasks([*tasks, *(g for g in groups if g in run.tasks)], model, includes)
    except Exception:  # one task that does not load: try each alone, so the others are still checked
        loaded, group_configs = {}, {}
    for task in tasks:
        samples = run.samples.get(task)
        if samples is None:
            result.problems.append(f"{task}: no samples file (run lmms-eval with --log_samples)")
            continue
        n_samples = run.results.get("n-samples", {}).get(task, {}).get("effective")
        if n_samples is not None and n_samples != len(samples):
            result.problems.append(f"{task}: n-samples effective {n_samples} != {len(samples)} samples in the file")
        try:
            task_object = loaded[task] if task in loaded else task_objects([task], model, includes)[task]
        except Exception as error:  # the task's code must load to recompute its metrics
            result.problems.append(f"{task}: cannot load the task to recompute its metrics ({error})")
            continue
        aggregations = task_object.aggregation()
        for metric, reported in run.metrics_of(task).items():
            values = [line[metric] for line in samples if metric in line]
            if metric not in aggregations:
                result.problems.append(f"{task}: the task has no aggregation for {metric}")
                continue
            try:
                recomputed = float(_aggregate(aggregations[metric], values, task_object))
            except Exception as error:  # the task's own code failed on its own samples: that is a finding
                result.problems.append(f"{task} {metric}: its aggregation fails on the samples ({error!r})")
                continue
            if not _close(recomputed, reported.value):
                result.problems.append(f"{task} {metric}: results {reported.value} != {recomputed} from the samples")
            by_mean = aggregations[metric] is mean and reported.stderr is not None and len(values) > 1
            if by_mean and not _close(float(mean_stderr(values)), reported.stderr):
                result.problems.append(f"{task} {metric}_stderr: results {reported.stderr} != {mean_stderr(values)}")
            result.count("metrics")
        _rescore(task_object, task, samples, result)
    for group, subtasks in groups.items():
        if group in run.tasks:
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
        doc_id = int(line["doc_id"])
        doc = docs[doc_id]
        answer = line.get("filtered_resps")
        answer = answer[0] if isinstance(answer, list) else answer
        scores = _plain(task_object.process_results(doc, [answer]))
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
    expected = leaderboard_row(run)
    if len(rows) != 1 or rows[0] != expected:
        result.problems.append(f"{LEADERBOARD} row {rows} is not the results' {expected}")


def verify(bundle: str | Path) -> Verification:
    """Check a bundle written by :func:`submit`."""
    bundle = Path(bundle)
    result = Verification()
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
        config = json.loads((bundle / "config.json").read_text()) if (bundle / "config.json").is_file() else {}
        hashes = {config.get("pruning_hash"), canonical_hash(config.get("pruning"))}
        if hashes != {run.record.pruning_hash}:
            result.problems.append("config.json's pruning settings are not the run record's (pruning_hash differs)")
    try:
        _check_flops(run, result)
        _check_metrics(run, result)
    except ValueError as error:  # a malformed sample record
        result.problems.append(str(error))
    _check_leaderboard(bundle, run, result)
    return result
