"""``fastav-eval report``: lmms-eval runs -> a Markdown table, an accuracy-vs-FLOPs Pareto plot, and each run's
paired difference from the unpruned run on the same documents (with a t confidence interval)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from fastav_eval.analysis.results import COSTS_FROM_RECORD, COSTS_UNKNOWN, RunResults, mean_and_interval

NOT_LOGGED = "no samples file (lmms-eval ran without --log_samples)"


@dataclass(frozen=True)
class PairedDifference:
    """``run - baseline`` on one task metric over the documents both answered.

    ``low``/``high`` bound the mean difference (95% t interval over per-sample differences); all three are None
    for a corpus metric (no per-sample score), whose ``corpus_difference`` is then the only figure.
    """

    task: str
    metric: str
    n: int
    mean: float | None
    low: float | None
    high: float | None
    corpus_difference: float


def paired_difference(run: RunResults, baseline: RunResults, task: str, metric: str) -> PairedDifference:
    """Pair the two runs' samples by document (doc_id, checked by target and prompt) and difference them."""
    mine, theirs = run.document_keys(task), baseline.document_keys(task)
    shared = sorted(set(mine) & set(theirs))
    different = [doc for doc in shared if mine[doc] != theirs[doc]]
    if different:
        raise ValueError(
            f"{run.name} and {baseline.name} hold different documents for {task} (doc_id {different[0]}: target or "
            "prompt differ): a paired comparison needs the same task data"
        )
    corpus = run.metrics_of(task)[metric].value - baseline.metrics_of(task)[metric].value
    scores, base_scores = run.per_sample_scores(task, metric), baseline.per_sample_scores(task, metric)
    if scores is None or base_scores is None:
        return PairedDifference(task, metric, len(shared), None, None, None, corpus)
    paired = [doc for doc in shared if doc in scores and doc in base_scores]
    if not paired:
        raise ValueError(f"{run.name} and {baseline.name} share no scored document for {task}/{metric}")
    mean, low, high = mean_and_interval([scores[doc] - base_scores[doc] for doc in paired])
    return PairedDifference(task, metric, len(paired), mean, low, high, corpus)


def find_baseline(runs: list[RunResults]) -> RunResults | None:
    """The latest unpruned FastAV run (``prune=none``) among ``runs``."""
    unpruned = [run for run in runs if run.is_unpruned]
    return unpruned[-1] if unpruned else None


def shared_tasks(runs: list[RunResults]) -> list[str]:
    tasks = [task for task in runs[0].tasks if all(task in run.tasks for run in runs)]
    if not tasks:
        raise ValueError(f"runs {[run.name for run in runs]} share no task with metrics")
    return tasks


def score(run: RunResults, tasks: list[str], baseline: RunResults | None, metric: str | None = None) -> float:
    """The Pareto plot's y: ``task/metric`` if given; else each task's primary metric relative to the unpruned
    run (100 = kept), averaged over tasks (lower-is-better metrics inverted), or their plain mean without one."""
    if metric is not None:
        task, name = metric.split("/", 1)  # checked by check_metric
        return run.metrics_of(task)[name].value
    values = []
    for task in tasks:
        name = baseline.primary_metric(task) if baseline is not None else run.primary_metric(task)
        value = run.metrics_of(task)[name].value
        if baseline is None:
            values.append(value)
            continue
        reference = baseline.metrics_of(task)[name].value
        if run.higher_is_better(task, name):
            ratio = value / reference if reference else float(value == reference)
        else:  # an error rate: the unpruned run's over this run's, a perfect 0 counted as keeping it
            ratio = reference / value if value else 1.0
        values.append(100 * ratio)
    return sum(values) / len(values)


def check_metric(runs: list[RunResults], metric: str) -> None:
    """``--metric`` must be ``TASK/METRIC`` with a metric every run reports for that task."""
    tasks = shared_tasks(runs)
    accepted = sorted(
        f"{task}/{name}" for task in tasks for name in runs[0].metrics_of(task)
        if all(name in run.metrics_of(task) for run in runs)
    )  # fmt: skip
    if metric not in accepted:
        raise ValueError(f"--metric={metric!r}; accepted: TASK/METRIC, one of {accepted}")


def numeric_settings(runs: list[RunResults]) -> list[str]:
    """The pruning settings with a number in some run's resolved config (what ``--x-axis`` accepts)."""
    return sorted({name for run in runs for name in (run.record.pruning if run.record else {})
                   if pruning_value(run, name) is not None})  # fmt: skip


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both cost (lower) and score (higher), by cost."""
    front = [
        i for i, (cost, value) in enumerate(points)
        if not any(c <= cost and v >= value and (c, v) != (cost, value) for c, v in points)
    ]  # fmt: skip
    return sorted(front, key=lambda i: points[i][0])


def _cell(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _metric_cell(run: RunResults, task: str, metric: str) -> str:
    found = run.metrics_of(task).get(metric)
    if found is None:
        return ""
    return f"{found.value:.4f}" + (f" ± {found.stderr:.4f}" if found.stderr is not None else "")


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _provenance_row(run: RunResults) -> str:
    config = run.results.get("config", {})
    seeds = ",".join(str(config.get(key)) for key in ("random_seed", "numpy_seed", "torch_seed"))
    record = run.record
    if record is None:
        return _row([run.name, str(config.get("model")), "no FastAV run record", *[""] * 8, seeds])
    files = [digest for source in record.weights.get("sources", []) for digest in source["files"].values()]
    git = record.versions.get("fastav_eval_git") or {}
    fastav = str(record.versions.get("fastav_eval"))
    if git:
        fastav += f" @{git['commit'][:8]}{'+dirty' if git.get('dirty') else ''}"
    versions = [str(record.versions.get(name)) for name in ("torch", "transformers", "lmms_eval")]
    return _row([
        run.name, record.model, record.pruning_hash[:12], (record.profile or {}).get("sha256", "")[:12],
        f"{record.weights.get('name')} ({len(files)} files hashed)", fastav, *versions,
        f"{record.device.get('type')}: {record.device.get('name')}", record.dtype, f"{seeds}, engine {record.seed}",
    ])  # fmt: skip


def _why_not_paired(run: RunResults, baseline: RunResults, task: str) -> str:
    """Why the two runs cannot be paired on ``task`` (a group: on any of its subtasks); "" when they can."""
    subtasks = run.groups.get(task) or baseline.groups.get(task) or [task]
    missing = [other.name for other in (run, baseline) if set(subtasks) & set(other.missing_samples)]
    return f"not paired: {', '.join(missing)} has {NOT_LOGGED}" if missing else ""


def _group_row(run: RunResults, baseline: RunResults, group: str, metric: str) -> str:
    """A group has no samples of its own: the difference of its reported values (corpus), over the documents
    both runs answered in its subtasks (each subtask's paired row is in the same table)."""
    subtasks = run.groups.get(group) or baseline.groups.get(group) or []
    documents = sum(len(set(run.document_keys(task)) & set(baseline.document_keys(task))) for task in subtasks)
    corpus = run.metrics_of(group)[metric].value - baseline.metrics_of(group)[metric].value
    cells = [f"{corpus:+.4f} (corpus)", f"a group: its subtasks {subtasks} are paired"]
    return _row([run.name, run.label(), group, metric, str(documents), *cells])


def _paired_rows(runs: list[RunResults], baseline: RunResults, tasks: list[str], primary: dict[str, str]) -> list[str]:
    rows = []
    for run in runs:
        if run is baseline:
            continue
        for task in tasks:
            unpaired = _why_not_paired(run, baseline, task)
            if unpaired:
                rows.append(_row([run.name, run.label(), task, primary[task], "0", "", unpaired]))
                continue
            if task in run.groups or task in baseline.groups:
                rows.append(_group_row(run, baseline, task, primary[task]))
                continue
            diff = paired_difference(run, baseline, task, primary[task])
            if diff.mean is None:
                cells = [f"{diff.corpus_difference:+.4f} (corpus)", "no per-sample scores"]
            else:
                cells = [f"{diff.mean:+.4f}", f"[{diff.low:+.4f}, {diff.high:+.4f}]"]
            rows.append(_row([run.name, run.label(), task, diff.metric, str(diff.n), *cells]))
    return rows


def _paired_section(title: str, runs: list[RunResults], against: RunResults, tasks: list[str],
                    primary: dict[str, str]) -> list[str]:  # fmt: skip
    return [
        "",
        f"## {title} ({against.name}), paired on the same documents",
        "",
        f"Δ = run − {against.name}, mean over documents, with its 95% t interval over the per-sample differences. "
        "A corpus metric (no per-sample score), or a group (its subtasks are paired on their own rows), shows the "
        "difference of the corpus values only.",
        "",
        _row(["run", "setting", "task", "metric", "documents", "Δ", "95% CI"]),
        "|---|---|---|---|---|---|---|",
        *_paired_rows(runs, against, tasks, primary),
    ]


def markdown(
    runs: list[RunResults], plot: str | None = None, metric: str | None = None, reference: RunResults | None = None
) -> str:
    """The report's Markdown: results, paired differences from the unpruned run (and from ``reference``),
    provenance."""
    tasks = shared_tasks(runs)
    baseline = find_baseline(runs)
    primary = {task: (baseline or runs[0]).primary_metric(task) for task in tasks}
    lines = [f"# FastAV-Eval report ({len(runs)} runs, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)", ""]
    lines += [
        "Task metrics are lmms-eval's (± its standard error); costs are means over every sample of the per-sample "
        "records in the samples files (relative prefill FLOPs, FastV's convention, unpruned = 100; the share of "
        "audio-visual tokens kept, mean over layers, AVEX-Prune's retention; prefill time; "
        "peak CUDA memory; audio-visual tokens each layer processed, averaged over layers).",
        "",
        "## Results",
        "",
    ]
    header = ["run", "setting", *(f"{task} {primary[task]}" for task in tasks), "rel. FLOPs %",
              "AV retention %", "prefill ms", "peak MB", "video kept/layer", "audio kept/layer", "failed"]  # fmt: skip
    lines += [_row(header), "|" + "---|" * len(header)]
    footnotes = []
    for run in runs:
        cost = run.costs
        mark = ""
        if run.costs_source == COSTS_FROM_RECORD:
            mark = " †"
            footnotes.append(
                f"† {run.name}: {NOT_LOGGED} for {run.missing_samples}: its costs are the run record's means "
                f"({run.record.date}_fastav.json), written by the wrapper, not recomputed here from per-sample "
                "records; it has no paired differences on those tasks."
            )
        elif run.costs_source == COSTS_UNKNOWN:
            mark = " ‡"
            footnotes.append(f"‡ {run.name}: no FastAV run record (not a FastAV wrapper's run): costs unknown, "
                             "not plotted.")  # fmt: skip
        failed = cost.get("failed")
        lines.append(_row([
            run.name + mark, run.label(), *(_metric_cell(run, task, primary[task]) for task in tasks),
            _cell(cost.get("relative_flops")), _cell(cost.get("retention")), _cell(cost.get("prefill_ms")),
            _cell(cost.get("peak_memory_mb"), 0),
            _cell(cost.get("video_kept_mean"), 1), _cell(cost.get("audio_kept_mean"), 1),
            "" if failed is None else str(int(failed)),
        ]))  # fmt: skip
    if footnotes:
        lines += ["", *footnotes]
    if baseline is not None:
        lines += _paired_section("Against the unpruned run", runs, baseline, tasks, primary)
    if reference is not None and reference is not baseline:
        others = [run for run in runs if run is not baseline]
        lines += _paired_section("Against the reference run", others, reference, tasks, primary)
    header = ["run", "model", "config hash", "profile sha256", "weights", "fastav-eval", "torch", "transformers",
              "lmms-eval", "device", "dtype", "seeds"]  # fmt: skip
    lines += ["", "## Provenance", "", _row(header), "|" + "---|" * len(header), *map(_provenance_row, runs)]
    unplotted = [run.name for run in runs if "relative_flops" not in run.costs]
    if plot or unplotted:
        y = metric or ("mean primary metric, % of unpruned" if baseline is not None else "mean primary metric")
        lines += ["", "## Accuracy against FLOPs", ""]
        if plot:
            lines += [f"y: {y}; the dashed line is the Pareto front.", "", f"![pareto]({plot})"]
        if unplotted:
            lines += ["", f"Not plotted (no relative FLOPs: no FastAV run record, or no answered sample): {unplotted}."]
    return "\n".join(lines) + "\n"


def select(runs: list[RunResults], names: list[str], option: str = "--only") -> list[RunResults]:
    """The runs named ``names`` (sweep names or ``folder/date``), in that order; an unknown, repeated or ambiguous
    name is an error naming ``option`` (the command-line option that gave the names)."""
    by_name = {run.name: run for run in runs}
    given = ",".join(names)
    ambiguous = sorted({run.name for run in runs if sum(other.name == run.name for other in runs) > 1} & set(names))
    if ambiguous:
        raise ValueError(
            f"{option}={given!r}: several runs are named {ambiguous} (several sweeps?); accepted: a name only one "
            "run has (report one sweep's folder)"
        )
    missing = [name for name in names if name not in by_name]
    if missing:
        raise ValueError(f"{option}={given!r}: no such run: {missing}; accepted: {sorted(by_name)}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{option}={given!r}: {repeated} named more than once; accepted: each run once")
    return [by_name[name] for name in names]


def pruning_value(run: RunResults, field: str) -> float | None:
    """A numeric setting of the run's resolved pruning config (None for the unpruned run or a missing field)."""
    if run.record is None or run.is_unpruned:
        return None
    value = run.record.pruning.get(field)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def write_report(
    runs: list[RunResults],
    out: str | Path,
    metric: str | None = None,
    x_axis: str | None = None,
    reference: str | None = None,
) -> dict[str, Path]:
    """``<out>/report.md`` and ``<out>/pareto.png`` (and ``<out>/by_<x_axis>.png``: score and FLOPs against a
    pruning setting such as ``global_layer``, the unpruned run as a reference line). ``reference``: a run's name;
    every other run is also paired against it (e.g. a setting against FastAV's defaults).

    Every option is checked before anything is written. A run without samples files is shown with its run
    record's costs, marked † (table and plot), and is not paired; a run without a FastAV run record has no FLOPs
    figure and is not plotted (report.md says so); no cost is ever assumed."""
    from fastav_eval.plots import plot_against_setting, plot_pareto

    if not runs:
        raise ValueError("no runs to report")
    if Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out={str(out)!r} is a file; accepted: a folder (new or existing)")
    tasks = shared_tasks(runs)
    if metric is not None:
        check_metric(runs, metric)
    if x_axis is not None and x_axis not in numeric_settings(runs):
        raise ValueError(
            f"--x-axis={x_axis!r}: no run has a number for it in its pruning config; accepted: {numeric_settings(runs)}"
        )
    against = select(runs, [reference], "--reference")[0] if reference is not None else None
    baseline = find_baseline(runs)
    scores = [score(run, tasks, baseline, metric) for run in runs]
    shown = [i for i, run in enumerate(runs) if "relative_flops" in run.costs]  # never a made-up FLOPs figure
    points = [(runs[i].costs["relative_flops"], scores[i]) for i in shown]
    labels = [
        (runs[i].name if "/" not in runs[i].name else runs[i].label())  # a sweep's names are short
        + (" †" if runs[i].costs_source == COSTS_FROM_RECORD else "")  # as in the table: the run record's FLOPs
        for i in shown
    ]
    ylabel = metric or ("mean primary metric (% of unpruned)" if baseline is not None else "mean primary metric")
    swept = []
    if x_axis is not None:
        swept = sorted(
            (x, point) for x, point in ((pruning_value(runs[i], x_axis), p) for i, p in zip(shown, points, strict=True))
            if x is not None
        )  # fmt: skip
        if not swept:
            raise ValueError(f"--x-axis={x_axis!r}: no run with a number for it has a relative FLOPs figure")
    text = markdown(runs, "pareto.png" if points else None, metric, against)  # fails before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if points:
        written["plot"] = plot_pareto(
            points, labels, pareto_front(points), [runs[i] is baseline for i in shown], ylabel, out / "pareto.png"
        )
    if swept:
        where = runs.index(baseline) if baseline is not None else None
        baseline_point = points[shown.index(where)] if where in shown else None
        written["by_setting"] = plot_against_setting(
            [x for x, _ in swept], [p for _, p in swept], baseline_point, x_axis, ylabel, out / f"by_{x_axis}.png"
        )
    report = out / "report.md"
    if "by_setting" in written:
        text += f"\n![by {x_axis}]({written['by_setting'].name})\n"
    report.write_text(text)
    return {"report": report, **written}
