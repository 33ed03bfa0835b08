"""lmms-eval output folders as runs: the results JSON, its samples files, and the FastAV run record beside them.

lmms-eval 0.7.3 writes ``<folder>/<date>_results.json`` and, with ``--log_samples``, one
``<date>_samples_<task>.jsonl`` per task; a FastAV wrapper adds ``<date>_fastav.json``
(:class:`~fastav_eval.records.RunRecord`). Each sample line's ``token_counts[0]`` is its
:class:`~fastav_eval.records.SampleRecord`.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastav_eval.records import RunRecord, SampleRecord, means, read_json, run_record_path

STDERR_MARK = "_stderr"
SWEEP_RUN_FILE = "run.json"
"""What ``fastav-eval sweep`` writes in each run's folder (its name, spec and status)."""
COSTS_FROM_SAMPLES = "samples files"
COSTS_FROM_RECORD = "run record"
COSTS_UNKNOWN = "unknown"
COSTS_SOURCES = (COSTS_FROM_SAMPLES, COSTS_FROM_RECORD, COSTS_UNKNOWN)
"""Where a run's mean costs come from: its per-sample records; the run record's means (no samples files); nowhere
(no FastAV run record)."""


@dataclass(frozen=True)
class Metric:
    """One task metric as lmms-eval reports it: value and standard error (None when it reports "N/A")."""

    value: float
    stderr: float | None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _malformed(where: str, value: Any, accepted: str) -> ValueError:
    text = repr(value)
    return ValueError(f"{where}={text if len(text) <= 80 else text[:77] + '...'}; accepted: {accepted}")


TASK_OBJECTS = ("results", "groups", "configs", "higher_is_better", "n-samples")
"""The results JSON's entries that map each task (or group) to an object."""


def _check_results_layout(path: Path, results: dict[str, Any]) -> None:
    """The parts of an lmms-eval results JSON that are read here have lmms-eval's shapes (a ValueError naming the
    entry, its value and what is accepted otherwise), so that nothing downstream trips over a hand-edited file."""
    for key in TASK_OBJECTS:
        if key not in results:
            continue
        value = results[key]
        if not isinstance(value, dict):
            raise _malformed(f"{path.name} {key}", value, "an object of task -> object")
        for task, entry in value.items():
            if not isinstance(entry, dict):
                raise _malformed(f"{path.name} {key}.{task}", entry, "an object")
    subtasks = results.get("group_subtasks", {})
    if not isinstance(subtasks, dict):
        raise _malformed(f"{path.name} group_subtasks", subtasks, "an object of group -> list of task names")
    for group, names in subtasks.items():
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise _malformed(f"{path.name} group_subtasks.{group}", names, "a list of task names")
    config = results.get("config", {})
    if not isinstance(config, dict):
        raise _malformed(f"{path.name} config", config, "an object")
    if not isinstance(config.get("resolved_cli_args", {}), dict):
        raise _malformed(f"{path.name} config.resolved_cli_args", config["resolved_cli_args"], "an object")
    if not isinstance(results.get("throughput", {}), dict):
        raise _malformed(f"{path.name} throughput", results["throughput"], "an object")


@dataclass
class RunResults:
    """One lmms-eval run read back from disk.

    Attributes:
        path: the ``<date>_results.json``.
        results: its JSON.
        samples: task -> the sample lines of ``<date>_samples_<task>.jsonl`` (in file order).
        record: the FastAV run record beside it, or None (a run of another model, or an older FastAV-Eval).
    """

    path: Path
    results: dict[str, Any]
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    record: RunRecord | None = None

    @classmethod
    def load(cls, path: str | Path) -> RunResults:
        path = Path(path)
        results = read_json(path, "lmms-eval results")
        if not isinstance(results, dict) or "results" not in results:
            raise ValueError(f"{str(path)!r} has no 'results': not an lmms-eval results JSON")
        _check_results_layout(path, results)
        prefix = path.name.removesuffix("_results.json")
        samples = {}
        for samples_path in sorted(path.parent.glob(f"{prefix}_samples_*.jsonl")):
            task = samples_path.name.removeprefix(f"{prefix}_samples_").removesuffix(".jsonl")
            samples[task] = []
            for number, line in enumerate(samples_path.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    sample = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{samples_path.name}: line {number} is not JSON ({error.msg})") from error
                if not isinstance(sample, dict):
                    raise _malformed(f"{samples_path.name} line {number}", sample, "a JSON object (one sample)")
                samples[task].append(sample)
        record_path = run_record_path(path)
        record = RunRecord.load(record_path) if record_path.is_file() else None
        return cls(path, results, samples, record)

    @property
    def name(self) -> str:
        """The sweep's name for the run (``fine_ratio=0.1``), else its folder and date (``results/20261202_113104``)."""
        for folder in (self.path.parent, self.path.parent.parent):
            marker = folder / SWEEP_RUN_FILE
            if marker.is_file():
                try:
                    return str(json.loads(marker.read_text())["name"])
                except (ValueError, KeyError):
                    break
        return f"{self.path.parent.name}/{self.path.name.removesuffix('_results.json')}"

    @property
    def tasks(self) -> list[str]:
        """Tasks with their own metrics (groups without an aggregate are left out)."""
        return sorted(task for task, values in self.results["results"].items() if self.metrics_of(task))

    def primary_metric(self, task: str) -> str:
        """The task's first metric in its YAML's metric_list (what a leaderboard column shows)."""
        listed = self.results.get("configs", {}).get(task, {}).get("metric_list") or []
        names = [entry["metric"] for entry in listed if isinstance(entry, dict) and "metric" in entry]
        available = self.metrics_of(task)
        for name in names:
            if name in available:
                return name
        if not available:
            raise ValueError(f"{self.name}: task {task!r} has no metric in its results")
        return sorted(available)[0]

    def metrics_of(self, task: str) -> dict[str, Metric]:
        """metric -> value and standard error, from ``results[task]`` (keys ``metric,filter``; filter "none")."""
        values = self.results["results"].get(task) or self.results.get("groups", {}).get(task) or {}
        found = {}
        for key, value in values.items():
            if "," not in key:
                continue
            metric, filter_name = key.split(",", 1)
            number = _number(value)
            if filter_name != "none" or STDERR_MARK in metric or number is None:
                continue
            found[metric] = Metric(number, _number(values.get(f"{metric}{STDERR_MARK},{filter_name}")))
        return found

    def higher_is_better(self, task: str, metric: str) -> bool:
        return bool(self.results.get("higher_is_better", {}).get(task, {}).get(metric, True))

    def sample_records(self, task: str) -> list[SampleRecord]:
        """Each sample's :class:`SampleRecord` (``token_counts[0]``), in file order."""
        records = []
        for line in self.samples.get(task, []):
            counts = line.get("token_counts") or [None]
            records.append(SampleRecord.from_dict(counts[0], where=f"{task} doc {line.get('doc_id')} token_counts[0]"))
        return records

    def all_sample_records(self) -> list[SampleRecord]:
        """Every task's sample records; none for a run without a FastAV run record (another model's run)."""
        if self.record is None:
            return []
        return [record for task in sorted(self.samples) for record in self.sample_records(task)]

    @property
    def groups(self) -> dict[str, list[str]]:
        """group -> its subtasks, for the groups lmms-eval ran (a task run alone is listed with no subtasks)."""
        listed = self.results.get("group_subtasks") or {}
        return {name: list(subtasks) for name, subtasks in listed.items() if subtasks}

    def samples_file(self, task: str) -> Path:
        """Where lmms-eval's ``--log_samples`` writes ``task``'s samples, beside the results JSON."""
        return self.path.with_name(f"{self.path.name.removesuffix('_results.json')}_samples_{task}.jsonl")

    @property
    def missing_samples(self) -> list[str]:
        """The tasks with metrics (groups aside) that have no samples file: lmms-eval ran without
        ``--log_samples``, so their scores and FLOPs cannot be recomputed or paired."""
        groups = self.groups
        return [task for task in self.tasks if task not in groups and task not in self.samples]

    @functools.cached_property
    def costs(self) -> dict[str, float]:
        """Mean costs of the run (read once: report and CSV both use it), from :attr:`costs_source`: the
        :func:`~fastav_eval.records.means` over every sample record; for a run without samples files, the run
        record's ``overall`` means (what the wrapper computed from the same records); none without a run record
        (another model's run: its FLOPs are unknown, never assumed)."""
        source = self.costs_source
        if source == COSTS_FROM_SAMPLES:
            return means(self.all_sample_records())
        if source == COSTS_FROM_RECORD:
            return dict(self.record.overall)
        return {}

    @property
    def costs_source(self) -> str:
        """One of :data:`COSTS_SOURCES`: where :attr:`costs` come from."""
        if self.record is None:
            return COSTS_UNKNOWN
        return COSTS_FROM_RECORD if self.missing_samples else COSTS_FROM_SAMPLES

    def per_sample_scores(self, task: str, metric: str) -> dict[int, float] | None:
        """doc_id -> the sample's numeric score for ``metric``; None when the metric has no per-sample number
        (a corpus metric such as CIDEr logs its (reference, answer) pairs). Samples without the key (a metric
        split by kind) are left out."""
        scores = {}
        for line in self.samples.get(task, []):
            if metric not in line:
                continue
            value = float(line[metric]) if isinstance(line[metric], bool) else _number(line[metric])
            if value is None:
                return None
            scores[int(line["doc_id"])] = value
        return scores

    def document_keys(self, task: str) -> dict[int, tuple[str, str]]:
        """doc_id -> (target, input) of each sample: what pairs two runs' samples as the same document."""
        return {
            int(line["doc_id"]): (str(line.get("target")), str(line.get("input")))
            for line in self.samples.get(task, [])
        }

    @property
    def is_unpruned(self) -> bool:
        return self.record is not None and self.record.prune == "none"

    def label(self) -> str:
        """A short description of the pruning setting."""
        if self.record is None:
            return self.name
        if self.record.prune == "none":
            return "unpruned"
        config = self.record.pruning
        chooser = config.get("chooser")
        if isinstance(chooser, dict) and "method" in chooser:  # prune=<method> (fastav_eval.pruning.methods)
            defaults = method_defaults(chooser["method"])
            shown = {key: value for key, value in chooser.items()
                     if key == "retain" or (key in defaults and value != defaults[key])}  # fmt: skip
            knobs = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
            return f"{chooser['method']} {knobs}".strip()
        if isinstance(chooser, dict) and str(chooser.get("name", "")).startswith("policy:"):  # policy=<saved policy>
            return str(chooser["name"])
        parts = []
        if config.get("global_rule"):
            parts.append(f"global {config['global_rule']}@{config.get('global_layer')}")
        if config.get("fine_ratio"):
            parts.append(f"fine {config['fine_rule']} P={config['fine_ratio']:g}")
        return ", ".join(parts) or (f"chooser {chooser}" if chooser else "fastav, nothing pruned")


def method_defaults(name: str) -> dict[str, Any]:
    """The knobs of method ``name`` (:data:`fastav_eval.pruning.methods.METHODS`) at their defaults, as a run record
    stores them (tuples as lists); empty for a name it does not know (a record from another version)."""
    from dataclasses import MISSING, fields

    from fastav_eval.pruning.methods import METHODS

    if name not in METHODS:
        return {}
    known = {item.name: item.default for item in fields(METHODS[name]) if item.default is not MISSING}
    return {key: list(value) if isinstance(value, tuple) else value for key, value in known.items()}


def find_runs(paths: Iterable[str | Path]) -> list[RunResults]:
    """Every lmms-eval run under ``paths`` (results JSON files, or folders searched recursively), by date."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            matches = sorted(path.rglob("*_results.json"))
            if not matches:
                raise ValueError(f"{str(path)!r} holds no lmms-eval results (*_results.json): did the run fail?")
            found += matches
        else:
            raise ValueError(f"{str(path)!r} is neither a results JSON nor a folder")
    runs = [RunResults.load(path) for path in dict.fromkeys(p.resolve() for p in found)]
    return sorted(runs, key=lambda run: (str(run.results.get("date")), run.name))


def mean_and_interval(differences: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of paired differences and its two-sided t confidence interval (both ends the mean for n < 2)."""
    from scipy import stats

    n = len(differences)
    mean = sum(differences) / n
    if n < 2:
        return mean, mean, mean
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half
