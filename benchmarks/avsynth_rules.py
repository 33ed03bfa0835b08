"""Per-sample pruning against FastAV on AV-Synth: the unpruned model, FastAV's defaults, random drops at FastAV's
budget, the hand-written per-question rule (``prune=rule:avsynth_senses``) and any learned policies
(``policy=<folder>``), side by side in one run.

    python benchmarks/avsynth_rules.py                              # the 960 shipped test documents
    python benchmarks/avsynth_rules.py --split val                  # the val split (240 documents per task)
    python benchmarks/avsynth_rules.py --split test --seed 7        # a test split regenerated from another seed
    python benchmarks/avsynth_rules.py --policy fastav_tiny_retention --policy runs/tiny_exchange --plot pareto.png

Answers go through the same path as ``lmms-eval --model fastav_tiny`` (testbed adapter, engine, PrunedRunner), so
the figures are those an lmms-eval run gives. Prints the task table (mean relative FLOPs over the four tasks,
accuracy, CIDEr-D), each setting's accuracy differences from full tokens paired by document (with a 95% interval),
and, per question kind, what each setting kept (video / audio tokens after the cut, cut layer).
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import date
from pathlib import Path

import numpy as np
import torch

from fastav_eval.analysis.testbed_runs import DocResult, run_condition, summarise
from fastav_eval.avsynth import TASKS, build_documents
from fastav_eval.avsynth.dataset import DEFAULT_SEED
from fastav_eval.avsynth.rule import AVSynthSenseRule
from fastav_eval.policies.chooser import LearnedChooser
from fastav_eval.pruning import PruningConfig, PruningProfile
from fastav_eval.testbed import WEIGHTS_DIR, TestbedModel

CHOICE_TASKS = ("avsynth_match", "avsynth_halluc", "avsynth_qa")


def kept_after_cut(results: list[DocResult], modality: str) -> float:
    """Mean tokens of ``modality`` the last layer processed (what survives the cut and any fine steps)."""
    return float(np.mean([r.record.kept_per_layer[modality][-1] for r in results]))


def pareto_plot(summaries: dict[str, dict[str, dict[str, float]]], path: str, title: str) -> None:
    """One panel per task: its quality (accuracy, CIDEr-D) against the mean relative FLOPs over the four tasks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [*CHOICE_TASKS, "avsynth_caption"]
    figure, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4))
    for axis, task in zip(axes, tasks, strict=True):
        for name, summary in summaries.items():
            flops = np.mean([summary[t]["relative_flops"] for t in TASKS])
            quality = summary[task]["cider"] if task == "avsynth_caption" else 100 * summary[task]["accuracy"]
            axis.scatter(flops, quality, s=40)
            axis.annotate(name, (flops, quality), fontsize=7, xytext=(3, 3), textcoords="offset points")
        axis.set_title(task, fontsize=9)
        axis.set_xlabel("mean relative FLOPs (%)")
        axis.set_ylabel("CIDEr-D" if task == "avsynth_caption" else "accuracy (%)")
        axis.grid(alpha=0.3)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    print(f"\nPareto plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(WEIGHTS_DIR))
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--per-task", type=int, default=240)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="AV-Synth generator seed of the split")
    parser.add_argument("--json", help="write every figure to this JSON file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--policy", action="append", default=[], help="a saved policy (folder or shipped name)")
    parser.add_argument("--plot", help="write the Pareto plot (mean FLOPs against each task's quality) here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = TestbedModel.load(args.weights)
    shipped = PruningProfile.load(Path(args.weights) / "profile.json")
    documents = [d for task in sorted(TASKS) for d in build_documents(args.split, task, args.per_task, args.seed)]
    settings: dict[str, PruningConfig | None] = {
        "full tokens": None,
        "FastAV defaults": PruningConfig(profile=shipped, fine_ratio=0.2),
        # The exchange ablation: FastAV's global selection with its fine stage off (what an exchange action that
        # also set the fine ratio could reach; the exchange environment keeps P = 0.2 after K).
        "FastAV, no fine stage": PruningConfig(profile=shipped, fine_ratio=0.0),
        "random, FastAV's budget": PruningConfig(global_rule="random", profile=shipped, fine_rule="random"),
        "rule:avsynth_senses": PruningConfig.chosen_by(AVSynthSenseRule()),
    }
    for where in args.policy:
        chooser = LearnedChooser(where)
        settings[chooser.__name__] = chooser.config()
    results = {name: run_condition(model, documents, "full", config) for name, config in settings.items()}
    summaries = {name: summarise(items) for name, items in results.items()}

    print(f"\nAV-Synth {args.split} split (seed {args.seed}), {args.per_task} documents per task; "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {date.today()}\n")  # fmt: skip
    print("| setting | mean rel. FLOPs | " + " | ".join(CHOICE_TASKS) + " | caption CIDEr-D |")
    print("|---|---|---|---|---|---|")
    for name, summary in summaries.items():
        flops = np.mean([summary[t]["relative_flops"] for t in TASKS])
        cells = " | ".join(f"{100 * summary[t]['accuracy']:.1f}" for t in CHOICE_TASKS)
        print(f"| {name} | {flops:.1f} | {cells} | {summary['avsynth_caption']['cider']:.2f} |")

    print("\npaired against full tokens on the same documents: accuracy difference in points, mean [95% CI: ± 1.96 "
          "standard errors of the per-document differences]")  # fmt: skip
    print("| setting | " + " | ".join(CHOICE_TASKS) + " |\n|---|---|---|---|")
    for name in list(summaries)[1:]:
        cells = []
        for task in CHOICE_TASKS:
            ours = {r.id: r.accuracy for r in results[name] if r.task == task}
            differences = 100 * np.array([ours[r.id] - r.accuracy for r in results["full tokens"] if r.task == task])
            mean, half = differences.mean(), 1.96 * differences.std(ddof=1) / np.sqrt(len(differences))
            cells.append(f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}]")
        print(f"| {name} | " + " | ".join(cells) + " |")

    print("\nper question kind: accuracy (CIDEr-D for captions) / video and audio tokens at the last layer / cut layer")
    names = list(summaries)
    print("| kind | " + " | ".join(names) + " |\n|" + "---|" * (len(names) + 1))
    kinds = sorted({(r.task, r.kind) for r in results["full tokens"]})
    for task, kind in kinds:
        cells = []
        for name in names:
            members = [r for r in results[name] if r.kind == kind]
            row = summaries[name][f"{task}/{kind}"]
            quality = f"{row['cider']:.2f}" if "cider" in row else f"{100 * row['accuracy']:.1f}"
            cuts = {r.record.decision["cut_layer"] for r in members if r.record.decision}
            cut = f", cut {'/'.join(map(str, sorted(cuts)))}" if cuts else ""
            video, audio = kept_after_cut(members, "video"), kept_after_cut(members, "audio")
            cells.append(f"{quality} / {video:.0f} v, {audio:.0f} a{cut} ({row['relative_flops']:.0f}%)")
        print(f"| {kind} | " + " | ".join(cells) + " |")

    for name, items in results.items():
        actions = [
            (r.kind, r.record.decision["action"]) for r in items if r.record.decision and "action" in r.record.decision
        ]
        if not actions:
            continue
        print(f"\n{name}: the most frequent action per question kind (its share of the kind's documents)")
        print("| kind | video keep | audio keep | video order | audio order | cut layer | fine ratio | share |")
        print("|---|---|---|---|---|---|---|---|")
        for kind in sorted({kind for kind, _ in actions}):
            chosen = [json.dumps(action, sort_keys=True) for k, action in actions if k == kind]
            top = max(set(chosen), key=chosen.count)
            a = json.loads(top)
            print(f"| {kind} | {a['video_keep']} | {a['audio_keep']} | {a['video_order']} | {a['audio_order']} | "
                  f"{a['cut_layer']} | {a['fine_ratio']} | {chosen.count(top) / len(chosen):.0%} |")  # fmt: skip
    swapped = {name: [r.record.decision.get("swap_steps") for r in items if r.record.decision] for name, items in
               results.items()}  # fmt: skip
    for name, steps in swapped.items():
        if steps and all(s is not None for s in steps):
            print(f"\n{name}: {np.mean(steps):.2f} swap steps per sample (max {max(steps)})")
    if args.plot:
        pareto_plot(summaries, args.plot, f"AV-Synth {args.split} (seed {args.seed})")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "summaries": summaries}, indent=1))


if __name__ == "__main__":
    main()
