"""``fastav-eval compare``: pruning methods side by side at equal FLOPs on one model, task set and set of documents.

For each method (``fastav`` and :data:`fastav_eval.pruning.methods.METHODS`) and each FLOPs target, the method's
budget knob is solved on *calibration* documents (never the reported ones): the largest budget whose mean relative
prefill FLOPs over those documents' layouts is at most the target (or, with ``--target-retention``, whose mean
audio-visual retention is), the engine's own schedule simulated
(:func:`~fastav_eval.pruning.plan.simulate_prefill`: for most methods token counts do not depend on which tokens go;
VidCom²'s and SEATS's do a little, so their runs' FLOPs may differ from the calibration figure, and the report shows
the achieved FLOPs beside each target). The knobs:

- ``fastav``: the share of each audio-visual modality the global stage keeps (``video_keep = audio_keep``, its
  first tokens), the fine stage at the base's ratio (0.2 by default); its global layer is the base's, or, unless
  the base fixes it, the layer from 1 to half the depth whose solved keep keeps the most audio-visual tokens over
  the layers at that FLOPs (:func:`solve`);
- a method of :data:`~fastav_eval.pruning.methods.METHODS`: its ``retain``.

A saved learned policy (``--policy``) is a point of its own, at the FLOPs it chooses. A target a method cannot reach
(PyramidDrop's first quarter of layers, FastAV's layers before a global cut at layer
1, always see every token) is reported as unreachable with the lowest FLOPs it can give, not run. Then every solved
point, and the unpruned baseline, is an ordinary lmms-eval run of ``fastav-eval sweep`` (resumable, shardable, one
folder each), and ``fastav-eval report`` writes the table (metrics ± stderr, achieved FLOPs beside the target, paired
differences against full tokens on the same documents) and a Pareto plot per task. ``compare.json`` records every
solved budget.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastav_eval.analysis.sweep import SweepRun, check_point
from fastav_eval.analysis.tasks import model_class
from fastav_eval.models.model_args import (
    ENGINE_ARGS,
    arg_kinds,
    join_model_args,
    parse_model_args,
    pruning_config,
    split_items,
)
from fastav_eval.pruning import DecoderShape, ModalityLayout, simulate_prefill
from fastav_eval.pruning.methods import METHODS
from fastav_eval.records import prompt_counts, retention

log = logging.getLogger(__name__)

COMPARE_METHODS: tuple[str, ...] = ("fastav", *METHODS)
"""What ``--methods`` accepts."""
BASE_ENGINE_ARGS = ("global_layer", "fine_ratio", "fine_rule", "sink_tokens", "seed")
"""The engine args ``--model_args`` may hold: FastAV's setting apart from its keep (which compare solves)."""
STEPS = 30  # bisection steps over a budget in (0, 1]
MEASURES: tuple[str, ...] = ("flops", "retention")
"""What a target equalises: mean relative prefill FLOPs (``--target-flops``) or mean audio-visual retention
(``--target-retention``), both in % over the calibration documents."""


@dataclass(frozen=True)
class Budget:
    """One method at one target: the knob solved on the calibration documents and the mean FLOPs it gives there.

    ``value`` is None when the target is out of the method's reach (``achieved`` is then its lowest mean). ``measure``
    is what the target and ``achieved`` measure (:data:`MEASURES`).
    """

    method: str
    target: float
    value: float | None
    achieved: float
    model_args: dict[str, str]
    measure: str = "flops"

    @property
    def name(self) -> str:
        return f"{self.method}@{self.target:g}%" + ("" if self.measure == "flops" else " retention")


def knob_args(method: str, value: float, base: dict[str, str]) -> dict[str, str]:
    """The ``--model_args`` of ``method`` with its budget knob at ``value`` over the base setting ``base``."""
    if method == "fastav":
        return {**base, "prune": "fastav", "video_keep": f"{value:.6f}", "audio_keep": f"{value:.6f}"}
    others = {key: val for key, val in base.items() if key not in ENGINE_ARGS or key in ("sink_tokens", "seed")}
    return {**others, "prune": method, "retain": f"{value:.6f}"}


def simulate(method: str, value: float, base: dict[str, str], layouts: Sequence[ModalityLayout],
             shape: DecoderShape) -> tuple[float, float]:  # fmt: skip
    """Mean relative prefill FLOPs (FastV's convention) and mean audio-visual retention (%) of ``method`` at budget
    ``value`` over ``layouts``, the engine's schedule simulated."""
    args = knob_args(method, value, base)
    engine = {key: args[key] for key in (*ENGINE_ARGS, "retain") if key in args}
    config = pruning_config(args["prune"], engine, None)
    flops, kept = [], []
    for layout in layouts:
        stats = simulate_prefill(layout, config, shape.num_layers)
        flops.append(float(stats.relative_flops(shape)[0]))
        sample = stats.sample(0)
        prompt = prompt_counts(sample.kept_per_layer, sample.prompt_per_modality)
        has_av = prompt.get("video", 0) + prompt.get("audio", 0) > 0
        kept.append(retention(sample.kept_per_layer, sample.prompt_per_modality) if has_av else 0.0)
    return sum(flops) / len(flops), sum(kept) / len(kept)


def mean_flops(method: str, value: float, base: dict[str, str], layouts: Sequence[ModalityLayout],
               shape: DecoderShape, measure: str = "flops") -> float:  # fmt: skip
    """Mean relative prefill FLOPs (or, with ``measure="retention"``, mean audio-visual retention) of ``method`` at
    ``value`` over ``layouts`` (:func:`simulate`)."""
    return simulate(method, value, base, layouts, shape)[MEASURES.index(measure)]


def _bisect(method: str, target: float, base: dict[str, str], layouts: Sequence[ModalityLayout],
            shape: DecoderShape, measure: str) -> Budget:  # fmt: skip
    """The largest budget whose mean ``measure`` is at most ``target`` with the knobs of ``base`` (it grows with the
    budget)."""
    at = lambda value: mean_flops(method, value, base, layouts, shape, measure)  # noqa: E731
    lowest = at(1e-6)
    if lowest > target:
        return Budget(method, target, None, lowest, {}, measure)
    low, high = 1e-6, 1.0
    if at(high) <= target:
        low = high
    else:
        for _ in range(STEPS):
            middle = (low + high) / 2
            low, high = (middle, high) if at(middle) <= target else (low, middle)
    return Budget(method, target, low, at(low), knob_args(method, low, base), measure)


def solve(method: str, target: float, base: dict[str, str], layouts: Sequence[ModalityLayout],
          shape: DecoderShape, measure: str = "flops") -> Budget:  # fmt: skip
    """The largest budget of ``method`` whose mean FLOPs (or retention, ``measure``) over ``layouts`` is at most
    ``target``.

    FastAV has two knobs, its global layer and its keep. Unless the base fixes ``global_layer``, its keep is solved
    at every layer from 1 to half the depth, and the layer kept is the one whose solution is cheapest on the other
    measure: the most audio-visual tokens over the decoder's layers (retention) at a FLOPs target, the fewest FLOPs
    at a retention target. The rule is fixed in advance, so a target is never met by the latest layer with an empty
    keep."""
    if measure not in MEASURES:
        raise ValueError(f"measure={measure!r}; accepted: {list(MEASURES)}")
    if not 0.0 < target <= 100.0:
        raise ValueError(f"target {measure} {target!r}; accepted: a number in (0, 100] (% of the unpruned prompt's)")
    if method != "fastav" or "global_layer" in base:
        budget = _bisect(method, target, base, layouts, shape, measure)
    else:
        candidates = [_bisect(method, target, {**base, "global_layer": str(layer)}, layouts, shape, measure)
                      for layer in range(1, shape.num_layers // 2 + 1)]  # fmt: skip
        reachable = [budget for budget in candidates if budget.value is not None]
        if not reachable:
            budget = min(candidates, key=lambda b: b.achieved)
        else:
            other = [
                simulate(method, b.value, {**base, "global_layer": b.model_args["global_layer"]}, layouts, shape)  # type: ignore[arg-type]
                for b in reachable
            ]
            if measure == "flops":  # the first of equals, as max() of the budgets
                best = max(range(len(reachable)), key=lambda i: other[i][1])
                why = f"keeps the most audio-visual tokens ({other[best][1]:.1f}%)"
            else:
                best = min(range(len(reachable)), key=lambda i: other[i][0])
                why = f"costs the fewest FLOPs ({other[best][0]:.1f}%)"
            budget = reachable[best]
            log.info("fastav at %.1f%% %s: global layer %s %s", target, measure, budget.model_args["global_layer"], why)
    if method in METHODS and METHODS[method].content_dependent_counts:  # type: ignore[attr-defined]
        log.info("%s keeps a number of tokens that depends on the content: the calibration FLOPs are from its "
                 "content-free counts, its runs' may differ (the report shows them)", method)  # fmt: skip
    if budget.value is None:
        log.info("%s cannot reach %.1f%% %s: its lowest is %.1f%%", method, target, measure, budget.achieved)
    else:
        log.info("%s at %.1f%% %s: budget %.4f gives %.2f%% on the calibration documents",
                 method, target, measure, budget.value, budget.achieved)  # fmt: skip
    return budget


def check_base(model: str, base_args: str) -> dict[str, str]:
    """The base ``--model_args``: the model's own keys and FastAV's setting apart from its keep; anything that sets a
    method or a keep is refused (compare sets them)."""
    adapter_class = model_class(model).adapter_class
    parse_model_args(base_args, arg_kinds(adapter_class))
    base = dict(split_items(base_args))
    refused = sorted(key for key in base if key in (*ENGINE_ARGS, "prune") and key not in BASE_ENGINE_ARGS)
    if refused:
        raise ValueError(
            f"--model_args {refused}: compare sets each method and its budget; the base may hold the model's own "
            f"keys and {list(BASE_ENGINE_ARGS)}"
        )
    return base


def check_methods(methods: str) -> list[str]:
    names = [name.strip() for name in methods.split(",") if name.strip()]
    unknown = [name for name in names if name not in COMPARE_METHODS]
    if not names or unknown:
        raise ValueError(f"--methods {methods!r}; accepted: a comma-separated subset of {list(COMPARE_METHODS)}")
    return names


def check_targets(targets: str, option: str = "--target-flops") -> list[float]:
    try:
        values = [float(value) for value in targets.split(",") if value.strip()]
    except ValueError:
        values = []
    if not values or not all(0.0 < value <= 100.0 for value in values):
        raise ValueError(f"{option} {targets!r}; accepted: comma-separated numbers in (0, 100], e.g. 60,40,25")
    return values


def compare_runs(
    model: str,
    base: dict[str, str],
    budgets: Sequence[Budget],
    tasks: str,
    limit: int | None,
    gen_kwargs: str,
    seed: str = "0,1234,1234,1234",
    policies: Sequence[str] = (),
) -> list[SweepRun]:
    """A sweep run per reachable budget, one per saved learned policy (``policy=<path>``, at the FLOPs it chooses per
    sample: a policy has no budget knob to solve), plus the unpruned baseline; each checked as its wrapper would."""
    adapter_class = model_class(model).adapter_class
    unpruned = {key: value for key, value in base.items() if key not in ENGINE_ARGS}
    points = [(budget.name, budget.model_args) for budget in budgets if budget.value is not None]
    points += [(f"policy:{Path(path).name}", {**unpruned, "policy": str(path)}) for path in policies]
    points.append(("unpruned", {**unpruned, "prune": "none"}))
    runs = []
    for name, args in points:
        pruning = check_point(adapter_class, args)
        others = {key: value for key, value in args.items() if key not in (*ENGINE_ARGS, "prune")}
        spec = {"model": model, "model_args": dict(sorted(others.items())), "prune": args.get("prune", "policy"),
                "pruning": pruning, "tasks": tasks, "limit": limit, "gen_kwargs": gen_kwargs, "seed": seed}  # fmt: skip
        runs.append(SweepRun(name, join_model_args(args), spec))
    return runs


def budgets_record(budgets: Sequence[Budget], calibration: dict[str, Any]) -> dict[str, Any]:
    """What ``compare.json`` holds: every solved budget and the calibration documents it was solved on."""
    return {"format": "fastav-compare/1", "calibration": calibration, "budgets": [asdict(b) for b in budgets]}


def budgets_table(budgets: Sequence[Budget]) -> str:
    """Markdown: each method's solved budget and its calibration FLOPs beside the target."""
    shown = "FLOPs" if all(budget.measure == "flops" for budget in budgets) else "retention"
    lines = [
        f"| method | target {shown} % | budget | global layer | calibration {shown} % |",
        "| --- | --- | --- | --- | --- |",
    ]
    for budget in budgets:
        value = "unreachable" if budget.value is None else f"{budget.value:.4f}"
        achieved = f"{budget.achieved:.2f}" + (" (lowest)" if budget.value is None else "")
        layer = budget.model_args.get("global_layer", "default" if budget.method == "fastav" else "")
        lines.append(f"| {budget.method} | {budget.target:g} | {value} | {layer} | {achieved} |")
    return "\n".join(lines) + "\n"


def write_budgets(budgets: Sequence[Budget], calibration: dict[str, Any], out: Path) -> Path:
    from fastav_eval.records import write_json

    out.mkdir(parents=True, exist_ok=True)
    (out / "budgets.md").write_text(budgets_table(budgets))
    return write_json(out / "compare.json", budgets_record(budgets, calibration))
