"""``fastav-eval sweep``: a grid of pruning settings, each a normal lmms-eval run in its own folder, resumable.

The grid is the paper's ablations: from a base setting (``--model_args``), each axis is varied alone (the global
rule at equal budget, the fine rule, the fine ratio, the global layer), plus the unpruned baseline. Every run is
``lmms-eval --model M --model_args <base + change> --tasks T --output_path <out>/<hash> --log_samples``, where
``hash`` is the sha256 of everything that sets the run's numbers (model, model args, tasks, limit, generation
kwargs, seed). ``<out>/<hash>/run.json`` says ``running`` while it runs and ``done`` once lmms-eval wrote its
results JSON; a finished run is skipped, an interrupted or failed one is started again from scratch.

No scheduler: ``--shard i/n`` takes every n-th run, so n sweeps (one per GPU, ``CUDA_VISIBLE_DEVICES``) share a
grid; ``--launcher`` runs each lmms-eval under ``accelerate launch`` or ``torchrun`` for multi-GPU runs.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from fastav_eval.analysis.results import SWEEP_RUN_FILE as RUN_FILE
from fastav_eval.analysis.tasks import model_class
from fastav_eval.models.model_args import (
    ENGINE_ARGS,
    arg_kinds,
    greedy_settings,
    join_model_args,
    parse_model_args,
    split_items,
    wrapper_settings,
)
from fastav_eval.pruning import PruningConfig, PruningProfile
from fastav_eval.pruning.config import FINE_RULES, GLOBAL_RULES
from fastav_eval.records import canonical_hash, write_json
from fastav_eval.resources import tasks_path

if TYPE_CHECKING:
    from fastav_eval.models.base import ModelAdapter

INDEX_FILE = "sweep.json"
DEFAULT_AXES: dict[str, list[str]] = {
    "global_rule": list(GLOBAL_RULES),
    "fine_rule": list(FINE_RULES),
    "fine_ratio": ["0", "0.1", "0.2", "0.3"],
}
"""The paper's Tables 2-4: global rules at equal budget, fine rules, fine ratios (``global_layer`` needs the
model's depth: give ``--vary global_layer=1,2,...``)."""
AXES = ("global_rule", "global_layer", "fine_rule", "fine_ratio", "sink_tokens", "video_keep", "audio_keep",
        "video_keep_chunks", "audio_keep_chunks", "seed")  # fmt: skip


def parse_vary(items: Sequence[str]) -> dict[str, list[str]]:
    """``["fine_ratio=0,0.1", ...]`` -> ``{"fine_ratio": ["0", "0.1"]}``; an unknown axis is named."""
    axes: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--vary {item!r}; accepted: AXIS=V1,V2,... with AXIS one of {list(AXES)}")
        axis, values = item.split("=", 1)
        if axis not in AXES:
            raise ValueError(f"--vary axis {axis!r}; accepted: {list(AXES)}")
        axes[axis] = [value for value in values.split(",") if value]
        if not axes[axis]:
            raise ValueError(f"--vary {item!r} gives no value")
    return axes


@dataclass(frozen=True)
class SweepRun:
    """One point of the grid.

    Attributes:
        name: what differs from the base, e.g. ``fine_ratio=0.1`` (``base``, ``unpruned``).
        model_args: the full ``--model_args`` string of the run.
        spec: everything that sets the run's numbers; its hash names the run's folder.
    """

    name: str
    model_args: str
    spec: dict[str, Any]

    @property
    def hash(self) -> str:
        return canonical_hash(self.spec)[:16]


def build_grid(
    model: str,
    base_args: str,
    tasks: str,
    axes: dict[str, list[str]],
    limit: int | None = None,
    gen_kwargs: str = "",
    seed: str = "0,1234,1234,1234",
    baseline: bool = True,
) -> list[SweepRun]:
    """The base run, each axis value on its own, and (``baseline``) the unpruned run; duplicates appear once.

    Every grid point is checked as its wrapper would check it before loading (:func:`check_point`), so a bad base
    key, axis value or a global layer the profile cannot serve stops the sweep before any run starts; all bad points
    are named at once.
    """
    adapter_class = model_class(model).adapter_class
    parse_model_args(base_args, arg_kinds(adapter_class))  # types, duplicates, unknown keys, conflicts
    base = dict(split_items(base_args))
    if base.get("prune", "fastav") != "fastav" or "policy" in base:
        given = f"prune={base['prune']!r}" if "prune" in base else f"policy={base['policy']!r}"
        raise ValueError(f"--model_args {given}: the sweep's base is a FastAV setting (prune=fastav, no policy=)")
    points: list[tuple[str, dict[str, str]]] = [("base", {**base, "prune": "fastav"})]
    for axis, values in axes.items():
        for value in values:
            points.append((f"{axis}={value}", {**base, "prune": "fastav", axis: value}))
    if baseline:
        unpruned = {key: value for key, value in base.items() if key not in ENGINE_ARGS}
        points.append(("unpruned", {**unpruned, "prune": "none"}))
    runs: dict[str, SweepRun] = {}
    problems = []
    for name, args in points:
        try:
            pruning = check_point(adapter_class, args)
        except ValueError as error:
            problems.append(f"{name}: {error}")
            continue
        others = {key: value for key, value in args.items() if key not in ENGINE_ARGS}
        spec = {"model": model, "model_args": dict(sorted(others.items())), "pruning": pruning,
                "tasks": tasks, "limit": limit, "gen_kwargs": gen_kwargs, "seed": seed}  # fmt: skip
        run = SweepRun(name, join_model_args(args), spec)
        runs.setdefault(run.hash, run)  # "fine_ratio=0.2" is the base itself when the base's ratio is 0.2
    if problems:
        hint = (
            "\n(a profile calibrated for one global layer serves only that layer: vary global_layer with a keep not "
            "bound to one layer, e.g. --model_args video_keep=0.25,audio_keep=0.25)"
            if any(problem.startswith("global_layer=") and "profile.global_layer" in problem for problem in problems)
            else ""
        )
        raise ValueError(
            f"{len(problems)} of {len(points)} grid points would fail (nothing was run):\n  "
            + "\n  ".join(problems)
            + hint
        )
    return list(runs.values())


def decoder_depth(adapter_class: type[ModelAdapter], pretrained: str | None, config: PruningConfig) -> int | None:
    """The decoder's depth without loading it, where a profile records it: the run's own, else the model's shipped
    one (None when neither says: the run's own load then checks ``global_layer``)."""
    if isinstance(config.profile, PruningProfile) and config.profile.num_layers is not None:
        return config.profile.num_layers
    default = adapter_class.default_profile(pretrained)
    return PruningProfile.load(default).num_layers if default is not None else None


def check_point(adapter_class: type[ModelAdapter], args: dict[str, str]) -> dict[str, Any]:
    """One grid point's ``--model_args`` through the wrapper's own checks (:func:`wrapper_settings`), its engine
    config resolved against the decoder's depth where that is known without loading; returns the config as the run
    record has it (``global_layer`` None means half the depth): equal settings written differently are one run."""
    settings = wrapper_settings(adapter_class, args)
    depth = decoder_depth(adapter_class, settings.pretrained, settings.config)
    if depth is not None:
        settings.config.resolve(depth)
    return settings.config.to_dict()


def check_tasks(model: str, tasks: str, include_path: str | None) -> list[str]:
    """The task names of ``tasks`` (comma-separated), each checked against lmms-eval's task index as the sweep's
    runs will see it (lmms-eval's tasks plus ``include_path``, FastAV-Eval's by default); unknown ones are named."""
    from lmms_eval.tasks import TaskManager

    from fastav_eval.analysis.tasks import quiet_lmms_eval, task_names

    names = task_names(tasks, [include_path] if include_path is not None else [])
    quiet_lmms_eval()
    known = TaskManager("WARNING", include_path=include_path or str(tasks_path()), model_name=model).all_tasks
    missing = [name for name in names if not fnmatch.filter(known, name) and not Path(name).is_file()]
    if missing:
        where = include_path or f"FastAV-Eval's tasks ({tasks_path()})"
        raise ValueError(
            f"--tasks {missing} are not lmms-eval tasks (lmms-eval's own and {where}); see lmms-eval --tasks list"
        )
    return names


def check_gen_kwargs(gen_kwargs: str) -> None:
    """``--gen_kwargs`` as the wrappers read it (greedy decoding only), before any run starts."""
    from lmms_eval.utils import simple_parse_args_string

    try:
        parsed = simple_parse_args_string(gen_kwargs)
    except ValueError:
        raise ValueError(f"--gen_kwargs {gen_kwargs!r}; accepted: key=value items separated by commas") from None
    greedy_settings(parsed)


def lmms_eval_command(run: SweepRun, folder: Path, launcher: Sequence[str], include_path: str | None,
                      device: str | None, batch_size: int | None) -> list[str]:  # fmt: skip
    """The lmms-eval command line of one run (lmms-eval takes one ``--include_path``: FastAV-Eval's tasks unless
    ``include_path`` is given)."""

    spec = run.spec
    command = [*launcher, "-m", "lmms_eval", "--model", spec["model"], "--model_args", run.model_args, "--tasks",
               spec["tasks"], "--output_path", str(folder), "--log_samples", "--seed", spec["seed"]]  # fmt: skip
    command += ["--include_path", include_path or str(tasks_path())]
    if spec["limit"] is not None:
        command += ["--limit", str(spec["limit"])]
    if spec["gen_kwargs"]:
        command += ["--gen_kwargs", spec["gen_kwargs"]]
    if device:
        command += ["--device", device]
    if batch_size:
        command += ["--batch_size", str(batch_size)]
    return command


def run_state(folder: Path) -> str:
    """``done`` (finished: skip), ``running`` (interrupted, or running elsewhere), ``failed`` or ``missing``."""
    marker = folder / RUN_FILE
    if not marker.is_file():
        return "missing"
    try:
        state = json.loads(marker.read_text())["status"]
    except (OSError, ValueError, KeyError):
        return "missing"
    if state == "done" and not any(folder.rglob("*_results.json")):
        return "missing"
    return state


def _write_marker(folder: Path, run: SweepRun, status: str, **extra: Any) -> None:
    write_json(folder / RUN_FILE, {"status": status, "name": run.name, "hash": run.hash, "model_args": run.model_args,
                                   "spec": run.spec, **extra})  # fmt: skip


def _update_index(path: Path, runs: list[SweepRun]) -> None:
    """Add the grid to ``sweep.json`` (hash -> name, model args), atomically: shards start it together."""
    try:
        listed = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:  # another shard is between its write and its rename: start from this grid
        listed = {}
    listed.update({run.hash: {"name": run.name, "model_args": run.model_args} for run in runs})
    write_json(path, listed)


def execute(command: list[str], log_path: Path) -> int:
    """Run one lmms-eval command, its output to ``log_path``; returns its exit status."""
    with log_path.open("w") as log:
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False).returncode


@dataclass
class SweepResult:
    ran: list[str]
    skipped: list[str]
    failed: list[str]


def run_sweep(
    runs: list[SweepRun],
    out: str | Path,
    shard: tuple[int, int] = (0, 1),
    launcher: Sequence[str] | None = None,
    include_path: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    dry_run: bool = False,
    runner: Callable[[list[str], Path], int] = execute,
    say: Callable[[str], None] = tqdm.write,
) -> SweepResult:
    """Run this shard's runs that are not done; ``dry_run`` only says what would run."""
    out = Path(out)
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"--shard {index}/{count}; accepted: i/n with 0 <= i < n")
    mine = [run for position, run in enumerate(runs) if position % count == index]
    launcher = list(launcher) if launcher else [sys.executable]
    result = SweepResult([], [], [])
    if not dry_run:
        out.mkdir(parents=True, exist_ok=True)
        _update_index(out / INDEX_FILE, runs)
    progress = tqdm(mine, desc="sweep", unit="run", disable=dry_run)
    for run in progress:
        folder = out / run.hash
        state = run_state(folder)
        command = lmms_eval_command(run, folder, launcher, include_path, device, batch_size)
        if dry_run:
            say(f"{'skip (done)' if state == 'done' else 'run'}: {run.name} [{run.hash}]\n  {shlex.join(command)}")
            (result.skipped if state == "done" else result.ran).append(run.name)
            continue
        if state == "done":
            result.skipped.append(run.name)
            continue
        progress.set_postfix_str(run.name)
        if folder.exists():
            shutil.rmtree(folder)  # an interrupted or failed run starts again from nothing
        folder.mkdir(parents=True)
        _write_marker(folder, run, "running", command=command)
        started = time.perf_counter()
        code = runner(command, folder / "lmms_eval.log")
        seconds = time.perf_counter() - started
        if code == 0 and any(folder.rglob("*_results.json")):
            _write_marker(folder, run, "done", command=command, seconds=round(seconds, 1))
            result.ran.append(run.name)
            say(f"[sweep] {run.name} [{run.hash}]: done in {seconds:.0f} s")
        else:
            _write_marker(folder, run, "failed", command=command, exit_code=code)
            result.failed.append(run.name)
            log = folder / "lmms_eval.log"
            say(f"[sweep] {run.name} [{run.hash}]: FAILED (exit {code}, no results JSON); see {log}")
    return result
