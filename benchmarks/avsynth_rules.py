"""Per-sample pruning against FastAV on AV-Synth: the unpruned model, FastAV's defaults, random drops at FastAV's
budget, and the hand-written per-question rule (``prune=rule:avsynth_senses``), side by side in one run.

    python benchmarks/avsynth_rules.py                              # the 960 shipped test documents
    python benchmarks/avsynth_rules.py --split val                  # the val split (240 documents per task)
    python benchmarks/avsynth_rules.py --split test --seed 7        # a test split regenerated from another seed

Answers go through the same path as ``lmms-eval --model fastav_tiny`` (testbed adapter, engine, PrunedRunner), so
the figures are those an lmms-eval run gives. Prints the task table (mean relative FLOPs over the four tasks,
accuracy, CIDEr-D) and, per question kind, what each setting kept (video / audio tokens after the cut, cut layer).
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import date
from pathlib import Path

import numpy as np
import torch

from fastav_eval.avsynth import TASKS, build_documents
from fastav_eval.avsynth.dataset import DEFAULT_SEED
from fastav_eval.avsynth.rule import AVSynthSenseRule
from fastav_eval.pruning import PruningConfig, PruningProfile
from fastav_eval.testbed import WEIGHTS_DIR, TestbedModel
from fastav_eval.testbed.evaluate import DocResult, run_condition, summarise

CHOICE_TASKS = ("avsynth_match", "avsynth_halluc", "avsynth_qa")


def kept_after_cut(results: list[DocResult], modality: str) -> float:
    """Mean tokens of ``modality`` the last layer processed (what survives the cut and any fine steps)."""
    return float(np.mean([r.record.kept_per_layer[modality][-1] for r in results]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(WEIGHTS_DIR))
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--per-task", type=int, default=240)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="AV-Synth generator seed of the split")
    parser.add_argument("--json", help="write every figure to this JSON file")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = TestbedModel.load(args.weights)
    shipped = PruningProfile.load(Path(args.weights) / "profile.json")
    documents = [d for task in sorted(TASKS) for d in build_documents(args.split, task, args.per_task, args.seed)]
    settings: dict[str, PruningConfig | None] = {
        "full tokens": None,
        "FastAV defaults": PruningConfig(profile=shipped, fine_ratio=0.2),
        "random, FastAV's budget": PruningConfig(global_rule="random", profile=shipped, fine_rule="random"),
        "rule:avsynth_senses": PruningConfig.chosen_by(AVSynthSenseRule()),
    }
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

    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "summaries": summaries}, indent=1))


if __name__ == "__main__":
    main()
