"""``fastav-eval`` command line: each subcommand is a thin call into the library."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from fastav_eval.data import CONVERTERS, DATA_ENV, data_root, prepare
from fastav_eval.data.common import MANIFEST_FILE, MISSING_NOTE
from fastav_eval.env_ids import ENVIRONMENTS
from fastav_eval.plots import plot_tokens_per_layer
from fastav_eval.pruning.config import FINE_RULES
from fastav_eval.pruning.flops import CONVENTIONS
from fastav_eval.pruning.methods import METHODS
from fastav_eval.pruning.presets import PRESETS, SEGMENTS_SYNTAX, get_preset
from fastav_eval.resources import tasks_path


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, except where there is none (None) or it is a flag (False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default in ("", argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """Every ``fastav-eval`` parser and subparser: defaults shown in ``--help``."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


def number(kind: type, low: float | None = None, high: float | None = None, *, open_low: bool = False,
           open_high: bool = False, also: tuple[int, ...] = ()) -> Callable[[str], int | float]:  # fmt: skip
    """An argparse ``type``: ``kind`` (int or float) within ``[low, high]`` (an end left out is unbounded;
    ``open_*`` excludes it), or one of ``also``; otherwise an error saying what is accepted."""
    brackets = ("(" if open_low else "[", ")" if open_high else "]")
    if low is not None and high is not None:
        accepted = f"{'an int' if kind is int else 'a number'} in {brackets[0]}{low:g}, {high:g}{brackets[1]}"
    elif low is not None:
        accepted = f"{'an int' if kind is int else 'a number'} {'>' if open_low else '>='} {low:g}"
    else:
        accepted = "an int" if kind is int else "a number"
    accepted += "".join(f" or {value}" for value in also)

    def convert(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}; accepted: {accepted}") from None
        if value in also:
            return value
        if (
            value != value
            or (low is not None and (value <= low if open_low else value < low))
            or (high is not None and (value >= high if open_high else value > high))
        ):  # value != value: nan
            raise argparse.ArgumentTypeError(f"{text!r}; accepted: {accepted}")
        return value

    convert.__name__ = accepted
    return convert


def text(what: str) -> Callable[[str], str]:
    """An argparse ``type``: a non-empty string."""

    def convert(value: str) -> str:
        if not value.strip():
            raise argparse.ArgumentTypeError(f"{value!r}; accepted: {what}")
        return value

    return convert


def _flops(args: argparse.Namespace) -> int:
    preset = get_preset(args.preset)
    if args.segments is not None:
        preset = preset.with_segments(args.segments)
    result = preset.run(fine_ratio=args.fine_ratio, fine_rule=args.fine_rule, convention=args.convention)
    if args.plot:
        title = f"{args.preset}: FastAV, P = {args.fine_ratio:g}, {result['relative_flops']:.1f}% FLOPs"
        result["plot"] = str(plot_tokens_per_layer(result["kept_per_layer"], title, args.plot))
    print(json.dumps(result, indent=None if args.compact else 2))
    return 0


def _train_testbed(args: argparse.Namespace) -> int:
    import logging

    from fastav_eval.testbed.train import TrainConfig, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    overrides = {"steps": args.steps, "batch_size": args.batch_size, "seed": args.seed, "threads": args.threads}
    config = TrainConfig(**{name: value for name, value in overrides.items() if value is not None})
    train(args.out, config)
    print(f"saved the testbed model to {args.out}")
    return 0


def _not_installed(args: argparse.Namespace) -> int:
    raise ValueError(
        "fastav_eval.policies cannot be imported: this fastav_eval is a source tree on sys.path, not the installed "
        "package (policies/ is installed as fastav_eval.policies); run `bash install.sh` and call it from outside the "
        "source folder"
    )


def _train_policy(args: argparse.Namespace) -> int:
    import logging

    from fastav_eval.policies.train import settings_from, train

    logging.basicConfig(level=logging.INFO, format="[train-policy] %(message)s")
    print(train(settings_from(args)))
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from fastav_eval.doctor import run

    return run(strict=args.strict)


def _tasks_path(args: argparse.Namespace) -> int:
    print(tasks_path())
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    import logging

    from fastav_eval.analysis.calibrate import calibrate, choose_profile, test_split_warning, write_outputs
    from fastav_eval.analysis.tasks import build_model, model_class, task_documents, task_names, task_objects
    from fastav_eval.models.model_args import ENGINE_ARGS, arg_kinds, join_model_args, parse_model_args

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    given = parse_model_args(args.model_args, arg_kinds(model_class(args.model).adapter_class))
    pruning = sorted({"prune", *ENGINE_ARGS} & set(given))
    if pruning:
        raise ValueError(
            f"--model_args {pruning}: calibration runs the unpruned model; give the global layer as --global-layer"
        )
    if Path(args.out).is_dir():
        raise ValueError(f"--out {args.out!r} is a folder; accepted: the profile JSON to write (e.g. DIR/profile.json)")
    names = task_names(args.tasks, args.include_path or [])
    tasks = task_objects(names, args.model, args.include_path or [])  # before loading the model
    warning = test_split_warning(tasks)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    model = build_model(args.model, join_model_args({**given, "prune": "none"}), args.device)
    calibration = calibrate(
        model, task_documents(tasks, args.limit), global_layer=args.global_layer, alpha=args.alpha, bins=args.bins
    )
    profile = choose_profile(calibration, args.mass, args.target_flops, args.fine_ratio)
    written = write_outputs(calibration, profile, args.out)
    shares = ", ".join(f"{name} {100 * share:.0f}%" for name, share in calibration.prefix_for_mass(0.9).items())
    print(f"{written['profile']}: {profile.describe()} (global layer {profile.global_layer} of {profile.num_layers})")
    print(
        f"rollout on {len(calibration.documents)} documents; 90% of the mass lies in the first {shares} of the tokens"
    )
    print(f"heatmap: {written['heatmap']}\nimportance curves: {written['importance']}")
    warning = calibration.flatness_warning()
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    import shlex

    from fastav_eval.analysis.sweep import (
        DEFAULT_AXES,
        build_grid,
        check_gen_kwargs,
        check_tasks,
        parse_vary,
        run_sweep,
    )
    from fastav_eval.models.model_args import split_items

    axes = parse_vary(args.vary) if args.vary else DEFAULT_AXES
    try:
        shard = tuple(int(part) for part in args.shard.split("/"))
        assert len(shard) == 2
    except (ValueError, AssertionError):
        raise ValueError(f"--shard {args.shard!r}; accepted: i/n, e.g. 0/2") from None
    try:
        launcher = shlex.split(args.launcher) if args.launcher is not None else None
    except ValueError as error:
        raise ValueError(f"--launcher {args.launcher!r}: {error}; accepted: a command line") from None
    if launcher == []:
        raise ValueError(f"--launcher {args.launcher!r}; accepted: a command line (leave it out: this python)")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out!r} is a file; accepted: a folder (new, or an earlier sweep's)")
    if args.gen_kwargs:
        check_gen_kwargs(args.gen_kwargs)
    # everything is checked before anything runs (also with --dry-run): each grid point's model args, then the tasks
    runs = build_grid(args.model, args.model_args, args.tasks, axes, args.limit, args.gen_kwargs or "",
                      baseline=not args.no_baseline)  # fmt: skip
    check_tasks(args.model, args.tasks, args.include_path)
    base = dict(split_items(args.model_args))
    for key, value in (("batch_size", args.batch_size), ("device", args.device)):  # what every run's wrapper refuses
        if value is not None and key in base and base[key] != str(value):
            raise ValueError(f"{key} is given twice, --model_args {key}={base[key]} and --{key} {value}; give one")
    print(f"sweep: {len(runs)} runs ({', '.join(run.name for run in runs)}) -> {args.out}")
    result = run_sweep(
        runs, args.out, shard=shard, launcher=launcher, include_path=args.include_path, device=args.device,
        batch_size=args.batch_size, dry_run=args.dry_run,
    )  # fmt: skip
    verb = "would run" if args.dry_run else "ran"
    print(f"sweep: {verb} {len(result.ran)}, skipped {len(result.skipped)} finished, {len(result.failed)} failed")
    if not args.dry_run:
        print(f"next: fastav-eval report {args.out} --out {args.out}/report")
    return 1 if result.failed else 0


def _compare(args: argparse.Namespace) -> int:
    import logging

    from fastav_eval.analysis.calibrate import calibration_inputs, test_split_warning
    from fastav_eval.analysis.compare import (
        check_base,
        check_methods,
        check_targets,
        compare_runs,
        solve,
        write_budgets,
    )
    from fastav_eval.analysis.report import write_report
    from fastav_eval.analysis.results import find_runs
    from fastav_eval.analysis.sweep import check_gen_kwargs, check_tasks, run_sweep
    from fastav_eval.analysis.tasks import build_model, task_documents, task_names, task_objects
    from fastav_eval.models.model_args import ENGINE_ARGS, join_model_args
    from fastav_eval.pruning import DecoderShape
    from fastav_eval.pruning.decoder import find_text_model

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.target_flops is not None and args.target_retention is not None:
        raise ValueError("--target-flops and --target-retention both given; accepted: one of them (a method's budget "
                         "is solved for one measure)")  # fmt: skip
    measure = "retention" if args.target_retention is not None else "flops"
    targets = (check_targets(args.target_retention, "--target-retention") if measure == "retention"
               else check_targets(args.target_flops or "60,40,25"))  # fmt: skip
    methods = check_methods(args.methods)
    base = check_base(args.model, args.model_args)
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out!r} is a file; accepted: a folder (new, or an earlier compare's)")
    if args.gen_kwargs:
        check_gen_kwargs(args.gen_kwargs)
    check_tasks(args.model, args.tasks, args.include_path)
    includes = [args.include_path] if args.include_path else []
    calibration_tasks = task_objects(task_names(args.calibrate_on, includes), args.model, includes)
    if set(calibration_tasks) & set(task_objects(task_names(args.tasks, includes), args.model, includes)):
        raise ValueError(f"--calibrate-on {args.calibrate_on!r} shares tasks with --tasks: budgets are solved on other "
                         "documents than the reported ones (e.g. avsynth_val for avsynth)")  # fmt: skip
    warning = test_split_warning(calibration_tasks)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    unpruned = {key: value for key, value in base.items() if key not in ENGINE_ARGS}
    model = build_model(args.model, join_model_args({**unpruned, "prune": "none"}), args.device)
    documents = list(task_documents(calibration_tasks, args.calibration_limit))
    layouts = [layout for _, _, layout in calibration_inputs(model, documents)]
    if not layouts:
        raise ValueError(f"--calibrate-on {args.calibrate_on!r}: no document could be laid out")
    shape = DecoderShape.from_config(find_text_model(model.adapter.decoder).config)
    budgets = [solve(method, target, base, layouts, shape, measure) for method in methods for target in targets]
    calibration = {"tasks": args.calibrate_on, "limit": args.calibration_limit, "documents": len(layouts)}
    written = write_budgets(budgets, calibration, Path(args.out))
    print((Path(args.out) / "budgets.md").read_text(), end="")
    runs = compare_runs(args.model, base, budgets, args.tasks, args.limit, args.gen_kwargs or "", policies=args.policy)
    print(f"compare: {len(runs)} runs ({', '.join(run.name for run in runs)}) -> {args.out}; budgets: {written}")
    result = run_sweep(
        runs, args.out, launcher=args.launcher.split() if args.launcher else None, include_path=args.include_path,
        device=args.device, batch_size=args.batch_size, dry_run=args.dry_run,
    )  # fmt: skip
    if args.dry_run or result.failed:
        print(f"compare: {len(result.failed)} failed" if result.failed else "compare: dry run, nothing ran")
        return 1 if result.failed else 0
    results = find_runs([args.out])
    report = Path(args.out) / "report"
    print("\n".join(str(path) for path in write_report(results, report).values()))
    for task in sorted({task for run in results for task in run.tasks}):
        metric = f"{task}/{results[0].primary_metric(task)}"
        print("\n".join(str(path) for path in write_report(results, report / task, metric=metric).values()))
    return 0


def _report(args: argparse.Namespace) -> int:
    from fastav_eval.analysis.report import select, write_report
    from fastav_eval.analysis.results import COSTS_FROM_RECORD, COSTS_UNKNOWN, find_runs

    runs = find_runs(args.folders)
    if args.only is not None:
        runs = select(runs, [name.strip() for name in args.only.split(",")], "--only")
    written = write_report(runs, args.out, args.metric, args.x_axis, args.reference)
    print("\n".join(str(path) for path in written.values()))
    for run in runs:
        if run.costs_source == COSTS_FROM_RECORD:
            print(f"note: {run.name}: no samples files; costs from its run record, marked † in report.md")
        elif run.costs_source == COSTS_UNKNOWN:
            print(f"note: {run.name}: no FastAV run record; its FLOPs are unknown, so it is not plotted")
    return 0


def _submit(args: argparse.Namespace) -> int:
    from fastav_eval.analysis.bundle import submit

    out = submit(args.results, args.out, args.baseline or [])
    print(f"{out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    print(f"check it: fastav-eval verify {out}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from fastav_eval.analysis.bundle import verify

    result = verify(args.bundle, args.include_path or [])
    checked = ", ".join(f"{count} {what}" for what, count in result.checked.items())
    for task, source in sorted(result.sources.items()):
        print(f"task {task}: {source.path} ({source.origin})")
    for note in result.notes:
        print(f"note: {note}")
    if not result.ok:
        for problem in result.problems:
            print(f"PROBLEM: {problem}", file=sys.stderr)
        print(f"fastav-eval verify: {len(result.problems)} problem(s) ({checked} checked)", file=sys.stderr)
        return 1
    print(f"fastav-eval verify: ok ({checked} checked)")
    return 0


def _build_avsynth(args: argparse.Namespace) -> int:
    from fastav_eval.avsynth.dataset import write_split

    for path in write_split(args.out, args.split, args.per_task, args.seed, with_media=args.with_media):
        print(path)
    return 0


def _prepare_data(args: argparse.Namespace) -> int:
    folder, conversion = prepare(
        args.name,
        args.source,
        out=args.out,
        annotations=args.annotations,
        check_audio=not args.no_audio_check,
        allow_missing=args.allow_missing,
    )
    counts = ", ".join(f"{key} {value}" for key, value in conversion.counts.items())
    print(f"{folder}: {len(conversion.documents)} documents from {conversion.annotations} ({counts})")
    missing = conversion.notes.get(MISSING_NOTE)
    if missing:
        print(
            f"{len(conversion.documents)} of {missing['documents_read']} documents kept ({missing['videos']} videos "
            f"missing; the first ids are in {folder / MANIFEST_FILE}, notes.{MISSING_NOTE})"
        )
    if folder.parent.resolve() != data_root().resolve():
        print(f"lmms-eval looks in {data_root()}: run it with {DATA_ENV}={folder.parent.resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fastav-eval", description=__doc__)  # its subparsers are Parsers too
    commands = parser.add_subparsers(dest="command", required=True)

    flops = commands.add_parser(
        "flops",
        help="relative prefill FLOPs of FastAV on a paper's model and layout (prints one JSON object)",
    )
    flops.add_argument("--preset", required=True, choices=sorted(PRESETS), help="the paper's model and layout")
    flops.add_argument("--fine-ratio", type=float, default=0.2, help="fine-stage ratio P in [0, 1)")
    flops.add_argument("--fine-rule", choices=FINE_RULES, default="low_attentive", help="the fine stage's rule")
    flops.add_argument(
        "--convention", choices=CONVENTIONS, default="fastv", help="fastv: FastV's 4nd²+2n²d+2ndm; exact: GQA, SwiGLU"
    )
    flops.add_argument(
        "--segments",
        help="a model's own prompt layout instead of the preset's (the preset's decoder shape and global stage "
        f"stay; the JSON's 'segments' shows the preset's own in this syntax): {SEGMENTS_SYNTAX}",
    )
    flops.add_argument("--compact", action="store_true", help="print the JSON on one line")
    flops.add_argument(
        "--plot", metavar="PNG", type=text("a PNG path"), help="also draw the tokens each layer processed, per modality"
    )
    flops.set_defaults(handler=_flops)

    doctor = commands.add_parser(
        "doctor",
        help="check this environment: versions against the tested ranges, imports, the engine on a tiny Qwen2",
    )
    doctor.add_argument("--strict", action="store_true", help="also fail on a version outside its tested range")
    doctor.set_defaults(handler=_doctor)

    where = commands.add_parser("tasks-path", help="print the folder to pass to lmms-eval as --include_path")
    where.set_defaults(handler=_tasks_path)

    build = commands.add_parser("build-avsynth", help="write an AV-Synth split: one parquet dataset per task")
    build.add_argument(
        "--out", required=True, type=text("a folder"), help="folder; files go to <out>/<split>/<task>.parquet"
    )
    build.add_argument("--split", required=True, choices=["train", "val", "test"])
    build.add_argument("--per-task", type=number(int, 1), default=240, help="documents per task")
    build.add_argument(
        "--seed",
        type=int,
        default=20261121,
        help="the generator's seed (with the split, task and index: each document's)",
    )
    build.add_argument("--with-media", action="store_true", help="store frames and waveforms, not only scenes")
    build.set_defaults(handler=_build_avsynth)

    train = commands.add_parser(
        "train-testbed",
        help="train the small AV-Synth model from scratch (2 CPU cores, ~55 min); unset options: TrainConfig's",
    )
    train.add_argument(
        "--out",
        required=True,
        type=text("a new folder"),
        help="folder for model.safetensors, config.json, tokenizer.json, log",
    )
    train.add_argument("--steps", type=number(int, 1), help="training steps (TrainConfig's if unset)")
    train.add_argument("--batch_size", type=number(int, 1), help="clips per step (TrainConfig's if unset)")
    train.add_argument("--seed", type=int, help="the run's seed (TrainConfig's if unset)")
    train.add_argument("--threads", type=number(int, 1), help="torch CPU threads")
    train.set_defaults(handler=_train_testbed)

    policy = commands.add_parser(
        "train-policy",
        help=f"train a pruning policy (PPO / A2C) in {' or '.join(env.env_id for env in ENVIRONMENTS.values())}",
    )
    convert = commands.add_parser(
        "convert-policy",
        help="convert a policy YOU trained before fastav-policy/2 (pickled policy.zip) to policy.safetensors + "
        "policy.json; it runs the zip's code: never use it on a file someone else gave you",
    )
    try:
        from fastav_eval.policies.convert import add_arguments as add_convert_arguments
        from fastav_eval.policies.convert import run as convert_policy
        from fastav_eval.policies.train import add_arguments
    except ModuleNotFoundError:  # a source tree on sys.path, not installed: policies/ is not fastav_eval.policies
        policy.set_defaults(handler=_not_installed)
        convert.set_defaults(handler=_not_installed)
    else:
        add_arguments(policy)
        policy.set_defaults(handler=_train_policy)
        add_convert_arguments(convert)
        convert.set_defaults(handler=convert_policy)

    calibrate = commands.add_parser(
        "calibrate",
        help="attention rollout of the unpruned model on N documents per task -> the global stage's profile JSON, a "
        "heatmap and importance curves (PNG beside it), and a warning when the curves are flat",
    )
    calibrate.add_argument(
        "--model", required=True, help="a FastAV lmms-eval model: fastav_tiny, fastav_videollama2, ..."
    )
    calibrate.add_argument("--model_args", default="", help="as for lmms-eval, without prune or pruning settings")
    calibrate.add_argument(
        "--tasks",
        required=True,
        type=text("lmms-eval tasks or groups, comma-separated"),
        help="lmms-eval tasks or groups, comma-separated: a val split, not the test split you report (warned)",
    )
    calibrate.add_argument("--limit", type=number(int, 1), default=24, help="documents per task")
    calibrate.add_argument(
        "--include_path", action="append", help="more lmms-eval task folders (FastAV-Eval's are always in)"
    )
    calibrate.add_argument("--device", help="cpu, cuda, cuda:N (unset: cuda if available)")
    calibrate.add_argument(
        "--global-layer", type=number(int, 1, also=(-1,)), help="the layer the profile is for, -1 the last (unset: "
        "half the depth)"
    )  # fmt: skip
    calibrate.add_argument(
        "--alpha", type=number(float, 0, 1, open_low=True), default=0.5, help="rollout's attention weight against "
        "the residual"
    )  # fmt: skip
    calibrate.add_argument("--bins", type=number(int, 1), default=20, help="relative-position bins per modality")
    budget = calibrate.add_mutually_exclusive_group()
    budget.add_argument(
        "--mass", type=number(float, 0, 1, open_low=True), help="keep the shortest prefix holding this rollout mass "
        "(unset, and no --target-flops: 0.9)"
    )  # fmt: skip
    budget.add_argument(
        "--target-flops", type=number(float, 0, 100, open_low=True),
        help="instead: the largest mass whose mean relative FLOPs (%% of the unpruned) <= this",
    )  # fmt: skip
    calibrate.add_argument(
        "--fine-ratio", type=number(float, 0, 1, open_high=True), default=0.2, help="fine ratio assumed by "
        "--target-flops"
    )  # fmt: skip
    calibrate.add_argument(
        "--out", required=True, type=text("a JSON path"), help="profile JSON to write; the PNGs go beside it"
    )
    calibrate.set_defaults(handler=_calibrate)

    sweep = commands.add_parser(
        "sweep",
        help="run a grid of pruning settings through lmms-eval (one results folder each; finished runs are skipped)",
    )
    sweep.add_argument("--model", required=True, help="a FastAV lmms-eval model")
    sweep.add_argument("--model_args", default="", help="the base setting every axis varies from (prune=fastav)")
    sweep.add_argument(
        "--tasks", required=True, type=text("lmms-eval tasks or groups, comma-separated"),
        help="lmms-eval tasks or groups, comma-separated (checked before anything runs)",
    )  # fmt: skip
    sweep.add_argument(
        "--vary",
        action="append",
        help="AXIS=V1,V2,... varied alone from the base (repeatable); default: global_rule (all four, equal "
        "budget), fine_rule (all three), fine_ratio=0,0.1,0.2,0.3. Also global_layer, sink_tokens, *_keep, seed",
    )
    sweep.add_argument("--no-baseline", action="store_true", help="leave out the unpruned run (prune=none)")
    sweep.add_argument("--limit", type=number(int, 1), help="documents per task (lmms-eval --limit; unset: all)")
    sweep.add_argument("--gen_kwargs", help="lmms-eval --gen_kwargs for every run")
    sweep.add_argument("--include_path", help="lmms-eval --include_path for every run (unset: FastAV-Eval's tasks)")
    sweep.add_argument("--device", help="lmms-eval --device for every run (e.g. cuda:1)")
    sweep.add_argument("--batch_size", type=number(int, 1), help="lmms-eval --batch_size for every run")
    sweep.add_argument(
        "--launcher",
        help="what runs lmms-eval, before '-m lmms_eval' (unset: this python), e.g. 'accelerate launch "
        "--multi_gpu --num_processes 8' or 'python -m torch.distributed.run --nproc_per_node 8'",
    )
    sweep.add_argument("--shard", default="0/1", help="i/n: run every n-th grid point from the i-th (one per GPU)")
    sweep.add_argument(
        "--dry-run", action="store_true", help="check everything, list the runs and their commands; run nothing"
    )
    sweep.add_argument(
        "--out", required=True, type=text("a folder"), help="folder: <out>/<hash>/ per run, <out>/sweep.json"
    )
    sweep.set_defaults(handler=_sweep)

    compare = commands.add_parser(
        "compare",
        help="pruning methods side by side at equal FLOPs: budgets solved on calibration documents, one lmms-eval run "
        "per method and target plus the unpruned one, then the report and a Pareto plot per task",
    )
    compare.add_argument("--model", required=True, help="a FastAV lmms-eval model")
    compare.add_argument(
        "--model_args", default="", help="the model's own keys (and FastAV's global_layer, fine_ratio, fine_rule, "
        "sink_tokens, seed); compare sets each method and its budget",
    )  # fmt: skip
    compare.add_argument("--tasks", required=True, type=text("lmms-eval tasks or groups, comma-separated"),
                         help="the tasks reported")  # fmt: skip
    compare.add_argument("--calibrate-on", required=True, type=text("lmms-eval tasks, comma-separated"),
                         help="tasks whose documents the budgets are solved on (never the reported ones)")  # fmt: skip
    compare.add_argument("--calibration-limit", type=number(int, 1), default=24, help="documents per calibration task")
    compare.add_argument("--methods", default=",".join(("fastav", *METHODS)),
                         help="comma-separated methods (default: all)")  # fmt: skip
    compare.add_argument("--policy", action="append", default=[], type=text("a saved policy folder"),
                         help="a policy saved by train-policy, run as a point of its own at the FLOPs it chooses "
                         "(repeatable)")  # fmt: skip
    compare.add_argument("--target-flops", help="comma-separated %% of the unpruned prefill FLOPs (default: 60,40,25)")
    compare.add_argument("--target-retention", help="instead: comma-separated %% of the audio-visual tokens kept, mean "
                         "over the layers (AVEX-Prune's retention)")  # fmt: skip
    compare.add_argument("--limit", type=number(int, 1), help="documents per reported task (unset: all)")
    compare.add_argument("--gen_kwargs", help="lmms-eval --gen_kwargs for every run")
    compare.add_argument("--include_path", help="lmms-eval --include_path for every run (unset: FastAV-Eval's tasks)")
    compare.add_argument("--device", help="lmms-eval --device for every run")
    compare.add_argument("--batch_size", type=number(int, 1), help="lmms-eval --batch_size for every run")
    compare.add_argument("--launcher", help="what runs lmms-eval, as for sweep")
    compare.add_argument("--dry-run", action="store_true", help="solve the budgets and list the runs; run nothing")
    compare.add_argument("--out", required=True, type=text("a folder"),
                         help="folder: compare.json, budgets.md, <out>/<hash>/ per run, <out>/report/")  # fmt: skip
    compare.set_defaults(handler=_compare)

    report = commands.add_parser(
        "report",
        help="Markdown table, Pareto plot and paired differences from the unpruned run, from lmms-eval results",
    )
    report.add_argument("folders", nargs="+", help="lmms-eval output folders (searched for *_results.json) or files")
    report.add_argument("--out", required=True, help="folder for report.md and pareto.png")
    report.add_argument("--metric", help="TASK/METRIC for the plot's y (default: each task's first metric, "
                        "relative to the unpruned run, averaged)")  # fmt: skip
    report.add_argument("--only", help="the runs to report, by sweep name (base,fine_ratio=0.1,...), in that order")
    report.add_argument("--x-axis", help="also plot score and FLOPs against this pruning setting (global_layer, ...)")
    report.add_argument("--reference", help="a run's name: every other run is also paired against it (e.g. base)")
    report.set_defaults(handler=_report)

    bundle = commands.add_parser(
        "submit", help="pack one run (results, samples, run record, config, profile, report, CSV row) with sha256 sums"
    )
    bundle.add_argument("results", help="one run: its lmms-eval output folder or its *_results.json")
    bundle.add_argument("--out", required=True, help="the bundle folder to write (must be empty or new)")
    bundle.add_argument("--baseline", action="append", help="a run the bundled report compares against (unpruned)")
    bundle.set_defaults(handler=_submit)

    check = commands.add_parser(
        "verify", help="check a bundle: sha256 sums, every metric and each sample's FLOPs recomputed from its samples"
    )
    check.add_argument("bundle", help="a folder written by fastav-eval submit")
    check.add_argument(
        "--include_path",
        action="append",
        help="a folder of task YAMLs you have read, for tasks neither lmms-eval nor FastAV-Eval installs "
        "(repeatable); task files in the bundle or named by it are never used",
    )
    check.set_defaults(handler=_verify)

    data = commands.add_parser(
        "prepare-data",
        help="convert a paper benchmark's official download (annotations + videos) into what its lmms-eval task reads",
    )
    data.add_argument("name", choices=sorted(CONVERTERS), help="the dataset")
    data.add_argument("source", help="the unpacked official download: its videos are found in any sub-folder")
    data.add_argument(
        "--annotations", help="the annotation file, when it is not under SOURCE or there are several (README)"
    )
    data.add_argument(
        "--out",
        type=text("a folder"),
        help=f"data root to write <out>/<name>/ under (unset: ${DATA_ENV}, or its default)",
    )
    data.add_argument("--no-audio-check", action="store_true", help="do not check that every video has a soundtrack")
    data.add_argument(
        "--allow-missing",
        action="store_true",
        help="drop the questions whose video is missing (counted in manifest.json) instead of stopping",
    )
    data.set_defaults(handler=_prepare_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ValueError as error:
        print(f"fastav-eval {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a path that is a file where a folder is needed, exists, cannot be written, ...
        where = f"{error.filename!s}" if error.filename is not None else ""
        print(f"fastav-eval {args.command}: error: {where}: {error.strerror or error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
