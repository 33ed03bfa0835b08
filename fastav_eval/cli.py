"""``fastav-eval`` command line: each subcommand is a thin call into the library."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from fastav_eval.data import CONVERTERS, DATA_ENV, data_root, prepare
from fastav_eval.data.common import MANIFEST_FILE, MISSING_NOTE
from fastav_eval.plots import plot_tokens_per_layer
from fastav_eval.pruning.config import FINE_RULES
from fastav_eval.pruning.flops import CONVENTIONS
from fastav_eval.pruning.presets import PRESETS, get_preset, parse_segments


def _flops(args: argparse.Namespace) -> int:
    preset = get_preset(args.preset)
    if args.segments:
        preset = dataclasses.replace(
            preset, name=f"{preset.name}, given layout", segments=parse_segments(args.segments)
        )
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


def tasks_path() -> Path:
    """The folder holding FastAV-Eval's lmms-eval task YAMLs: the repository's ``tasks/``, installed as the
    package ``fastav_eval.tasks`` (the source folder itself in an editable install, or when running from a clone)."""
    import importlib.util

    spec = importlib.util.find_spec("fastav_eval.tasks")
    candidates = [Path(spec.origin).resolve().parent] if spec is not None and spec.origin else []
    candidates.append(Path(__file__).resolve().parent.parent / "tasks")  # a source tree on sys.path, not installed
    for path in candidates:
        if (path / "avsynth" / "avsynth.yaml").is_file():
            return path
    raise ValueError(f"no AV-Synth task YAMLs in {[str(p) for p in candidates]}: this install is incomplete")


def _doctor(args: argparse.Namespace) -> int:
    from fastav_eval.doctor import run

    return run(strict=args.strict)


def _tasks_path(args: argparse.Namespace) -> int:
    print(tasks_path())
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    import logging

    from fastav_eval.analysis.calibrate import calibrate, choose_profile, write_outputs
    from fastav_eval.analysis.sweep import parse_args_string
    from fastav_eval.analysis.tasks import build_model, task_documents, task_objects
    from fastav_eval.lmms.model_args import ENGINE_ARGS

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    pruning = sorted({"prune", *ENGINE_ARGS} & set(parse_args_string(args.model_args)))
    if pruning:
        raise ValueError(
            f"--model_args {pruning}: calibration runs the unpruned model; give the global layer as --global-layer"
        )
    model_args = ",".join(filter(None, [args.model_args, "prune=none"]))
    model = build_model(args.model, model_args, args.device)
    tasks = task_objects(args.tasks.split(","), args.model, args.include_path or [])
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

    from fastav_eval.analysis.sweep import DEFAULT_AXES, build_grid, parse_vary, run_sweep

    axes = parse_vary(args.vary) if args.vary else DEFAULT_AXES
    runs = build_grid(args.model, args.model_args, args.tasks, axes, args.limit, args.gen_kwargs or "",
                      baseline=not args.no_baseline)  # fmt: skip
    try:
        shard = tuple(int(part) for part in args.shard.split("/"))
        assert len(shard) == 2
    except (ValueError, AssertionError):
        raise ValueError(f"--shard {args.shard!r}; accepted: i/n, e.g. 0/2") from None
    print(f"sweep: {len(runs)} runs ({', '.join(run.name for run in runs)}) -> {args.out}")
    result = run_sweep(
        runs, args.out, shard=shard, launcher=shlex.split(args.launcher) if args.launcher else None,
        include_path=args.include_path, device=args.device, batch_size=args.batch_size, dry_run=args.dry_run,
    )  # fmt: skip
    verb = "would run" if args.dry_run else "ran"
    print(f"sweep: {verb} {len(result.ran)}, skipped {len(result.skipped)} finished, {len(result.failed)} failed")
    if not args.dry_run:
        print(f"next: fastav-eval report {args.out} --out {args.out}/report")
    return 1 if result.failed else 0


def _report(args: argparse.Namespace) -> int:
    from fastav_eval.analysis.report import select, write_report
    from fastav_eval.analysis.results import find_runs

    runs = find_runs(args.folders)
    if args.only:
        runs = select(runs, args.only.split(","))
    written = write_report(runs, args.out, args.metric, args.x_axis, args.reference)
    print("\n".join(str(path) for path in written.values()))
    return 0


def _submit(args: argparse.Namespace) -> int:
    from fastav_eval.analysis.bundle import submit

    out = submit(args.results, args.out, args.baseline or [])
    print(f"{out}: results, config, profile, report.md, pareto.png, leaderboard.csv, MANIFEST.sha256")
    print(f"check it: fastav-eval verify {out}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from fastav_eval.analysis.bundle import verify

    result = verify(args.bundle)
    checked = ", ".join(f"{count} {what}" for what, count in result.checked.items())
    for note in result.notes:
        print(f"note: {note}")
    if not result.ok:
        for problem in result.problems:
            print(f"MISMATCH: {problem}", file=sys.stderr)
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
    parser = argparse.ArgumentParser(prog="fastav-eval", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    flops = commands.add_parser(
        "flops",
        help="relative prefill FLOPs of FastAV on a paper's model and layout (prints one JSON object)",
    )
    flops.add_argument("--preset", required=True, choices=sorted(PRESETS))
    flops.add_argument("--fine-ratio", type=float, default=0.2, help="fine-stage ratio P in [0, 1) (default 0.2)")
    flops.add_argument("--fine-rule", choices=FINE_RULES, default="low_attentive")
    flops.add_argument("--convention", choices=CONVENTIONS, default="fastv")
    flops.add_argument(
        "--segments",
        help="a model's own prompt layout instead of the preset's, e.g. text:14,video:1352,audio:1496,text:30 "
        "(the preset's decoder shape and global stage stay)",
    )
    flops.add_argument("--compact", action="store_true", help="print the JSON on one line")
    flops.add_argument("--plot", metavar="PNG", help="also draw the tokens each layer processed, per modality")
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
    build.add_argument("--out", required=True, help="folder; files go to <out>/<split>/<task>.parquet")
    build.add_argument("--split", required=True, choices=["train", "val", "test"])
    build.add_argument("--per-task", type=int, default=240, help="documents per task (default 240)")
    build.add_argument("--seed", type=int, default=20261121)
    build.add_argument("--with-media", action="store_true", help="store frames and waveforms, not only scenes")
    build.set_defaults(handler=_build_avsynth)

    train = commands.add_parser(
        "train-testbed",
        help="train the small AV-Synth model from scratch (2 CPU cores, ~55 min); unset options: TrainConfig's",
    )
    train.add_argument("--out", required=True, help="folder for model.safetensors, config.json, tokenizer.json, log")
    train.add_argument("--steps", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--threads", type=int, help="torch CPU threads")
    train.set_defaults(handler=_train_testbed)

    policy = commands.add_parser(
        "train-policy", help="train a pruning policy (PPO / A2C) in fastav/TokenRetention-v0 or TokenExchange-v0"
    )
    try:
        from fastav_eval.policies.train import add_arguments
    except ModuleNotFoundError:  # a source tree on sys.path, not installed: policies/ is not fastav_eval.policies
        policy.set_defaults(handler=_not_installed)
    else:
        add_arguments(policy)
        policy.set_defaults(handler=_train_policy)

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
        "--tasks", required=True, help="lmms-eval tasks or groups, comma-separated (not the test split you report)"
    )
    calibrate.add_argument("--limit", type=int, default=24, help="documents per task (default 24)")
    calibrate.add_argument(
        "--include_path", action="append", help="more lmms-eval task folders (FastAV-Eval's are always in)"
    )
    calibrate.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if available)")
    calibrate.add_argument("--global-layer", type=int, help="the layer the profile is for (default: half the depth)")
    calibrate.add_argument("--alpha", type=float, default=0.5, help="rollout's attention weight against the residual")
    calibrate.add_argument("--bins", type=int, default=20, help="relative-position bins per modality (default 20)")
    budget = calibrate.add_mutually_exclusive_group()
    budget.add_argument("--mass", type=float, help="keep the shortest prefix holding this rollout mass (default 0.9)")
    budget.add_argument(
        "--target-flops", type=float, help="instead: the largest mass whose mean relative FLOPs <= this"
    )
    calibrate.add_argument("--fine-ratio", type=float, default=0.2, help="fine ratio assumed by --target-flops")
    calibrate.add_argument("--out", required=True, help="profile JSON to write; the PNGs go beside it")
    calibrate.set_defaults(handler=_calibrate)

    sweep = commands.add_parser(
        "sweep",
        help="run a grid of pruning settings through lmms-eval (one results folder each; finished runs are skipped)",
    )
    sweep.add_argument("--model", required=True, help="a FastAV lmms-eval model")
    sweep.add_argument("--model_args", default="", help="the base setting every axis varies from (prune=fastav)")
    sweep.add_argument("--tasks", required=True, help="lmms-eval tasks or groups, comma-separated")
    sweep.add_argument(
        "--vary",
        action="append",
        help="AXIS=V1,V2,... varied alone from the base (repeatable); default: global_rule (all four, equal "
        "budget), fine_rule (all three), fine_ratio=0,0.1,0.2,0.3. Also global_layer, sink_tokens, *_keep, seed",
    )
    sweep.add_argument("--no-baseline", action="store_true", help="leave out the unpruned run (prune=none)")
    sweep.add_argument("--limit", type=int, help="documents per task (lmms-eval --limit)")
    sweep.add_argument("--gen_kwargs", help="lmms-eval --gen_kwargs for every run")
    sweep.add_argument("--include_path", help="lmms-eval --include_path for every run (default: FastAV-Eval's tasks)")
    sweep.add_argument("--device", help="lmms-eval --device for every run (e.g. cuda:1)")
    sweep.add_argument("--batch_size", type=int, help="lmms-eval --batch_size for every run")
    sweep.add_argument(
        "--launcher",
        help="what runs lmms-eval, before '-m lmms_eval' (default: this python), e.g. 'accelerate launch "
        "--multi_gpu --num_processes 8' or 'python -m torch.distributed.run --nproc_per_node 8'",
    )
    sweep.add_argument("--shard", default="0/1", help="i/n: run every n-th grid point from the i-th (one per GPU)")
    sweep.add_argument("--dry-run", action="store_true", help="list the runs and their commands; run nothing")
    sweep.add_argument("--out", required=True, help="folder: <out>/<hash>/ per run, <out>/sweep.json")
    sweep.set_defaults(handler=_sweep)

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
    data.add_argument("--out", help=f"data root to write <out>/<name>/ under (default ${DATA_ENV} or its default)")
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


if __name__ == "__main__":
    sys.exit(main())
