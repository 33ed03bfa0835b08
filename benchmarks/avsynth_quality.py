"""AV-Synth quality bars for the shipped testbed: full tokens, modality ablations, and FastAV, on the test splits.

    python benchmarks/avsynth_quality.py                    # all 960 test documents, ~5 min on 2 CPU cores
    python benchmarks/avsynth_quality.py --per-task 48      # a quick look

Conditions (each answers every document; prompts, decoding and scoring are the lmms-eval tasks'):
- ``full``: every token;  ``no_audio`` / ``no_video`` / ``no_av``: that modality's tokens left out of the sequence;
- ``fastav``: the defaults ``prune=fastav`` uses (the shipped rollout profile at half depth, fine ratio 0.2);
- ``fastav P=x``: the same global stage with other fine ratios; ``rollout mass 0.9``: the prefix holding 90% of the
  rollout mass (the paper-style calibration, whatever its FLOPs); ``global low_attentive``: keep as many tokens as
  the profile but the ones the last query attends to most (FastV-style); ``random``: random drops, same budget.

Chance is known because answers are balanced: 1 / (number of valid answers), averaged over a task's kinds.
Prints markdown tables and the quality-bar verdicts; ``--json`` writes every figure, ``--plot`` accuracy vs FLOPs.
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import date
from pathlib import Path

import numpy as np
import torch

from fastav_eval.analysis.testbed_runs import run_condition, summarise
from fastav_eval.avsynth import KINDS, TASKS, build_documents
from fastav_eval.pruning import PruningConfig, PruningProfile
from fastav_eval.pruning.rollout import RolloutCurves
from fastav_eval.testbed import WEIGHTS_DIR, TestbedModel

CHOICE_TASKS = ("avsynth_match", "avsynth_halluc", "avsynth_qa")


def chance(task_or_kind: str) -> float:
    kinds = TASKS.get(task_or_kind, (task_or_kind.split("/")[-1],))
    return float(np.mean([1.0 / len(KINDS[k].choices) for k in kinds]))


def mean_flops(summary: dict[str, dict[str, float]]) -> float:
    """Mean relative FLOPs over the four tasks (each task's own mean over its documents)."""
    return float(np.mean([summary[t]["relative_flops"] for t in TASKS]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(WEIGHTS_DIR))
    parser.add_argument("--per-task", type=int, default=240, help="test documents per task (240 = all shipped)")
    parser.add_argument("--json", help="write every figure to this JSON file")
    parser.add_argument("--plot", help="write accuracy vs relative FLOPs to this PNG")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = TestbedModel.load(args.weights)
    profile = Path(args.weights) / "profile.json"
    documents = [d for task in sorted(TASKS) for d in build_documents("test", task, args.per_task)]
    shipped = PruningProfile.load(profile)
    rollout = shipped.rollout or {}
    curves = RolloutCurves(rollout["curves"], shipped.num_layers, shipped.global_layer, rollout["alpha"], 0)
    runs: dict[str, tuple[str, PruningConfig | None]] = {
        "full": ("full", None),
        "no_audio": ("no_audio", None),
        "no_video": ("no_video", None),
        "no_av": ("no_av", None),
        "fastav": ("full", PruningConfig(profile=shipped, fine_ratio=0.2)),
        "fastav P=0": ("full", PruningConfig(profile=shipped, fine_ratio=0.0)),
        "fastav P=0.3": ("full", PruningConfig(profile=shipped, fine_ratio=0.3)),
        "rollout mass 0.9, P=0.2": ("full", PruningConfig(profile=curves.profile(0.9, quiet=True), fine_ratio=0.2)),
        "global low_attentive, same budget": ("full", PruningConfig(global_rule="low_attentive", profile=shipped)),
        "random, same budget": ("full", PruningConfig(global_rule="random", profile=shipped, fine_rule="random")),
    }
    summaries = {}
    for name, (condition, pruning) in runs.items():
        summaries[name] = summarise(run_condition(model, documents, condition, pruning))
        print(f"[avsynth] {name}: done", flush=True)

    print(f"\nAV-Synth test splits, {args.per_task} documents per task; {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {date.today()}\n")  # fmt: skip
    header = "| condition | rel. FLOPs | " + " | ".join(CHOICE_TASKS) + " | caption CIDEr | caption BLEU-4 |"
    print(header + "\n|" + "---|" * (header.count("|") - 1))
    print("| chance | | " + " | ".join(f"{100 * chance(t):.1f}" for t in CHOICE_TASKS) + " | | |")
    for name, summary in summaries.items():
        flops = mean_flops(summary)
        cells = " | ".join(f"{100 * summary[t]['accuracy']:.1f}" for t in CHOICE_TASKS)
        caption = summary["avsynth_caption"]
        print(f"| {name} | {flops:.1f} | {cells} | {caption['cider']:.3f} | {100 * caption['bleu4']:.1f} |")

    kinds = [k for t in CHOICE_TASKS for k in TASKS[t]]
    print("\n| kind (needs) | chance | " + " | ".join(summaries) + " |\n|" + "---|" * (len(summaries) + 2))
    for kind in kinds:
        key = f"{KINDS[kind].task}/{kind}"
        cells = " | ".join(f"{100 * s[key]['accuracy']:.1f}" for s in summaries.values())
        print(f"| {kind} ({KINDS[kind].needs}) | {100 * chance(kind):.1f} | {cells} |")
    invalid = {n: float(np.mean([s[t]["invalid"] for t in CHOICE_TASKS])) for n, s in summaries.items()}
    print("\ninvalid answers (share, mean over the three choice tasks): "
          + ", ".join(f"{n} {100 * v:.1f}%" for n, v in invalid.items()))  # fmt: skip

    full, fastav = summaries["full"], summaries["fastav"]
    print("\nquality bars")
    bars = {
        "match >= 85": full["avsynth_match"]["accuracy"] >= 0.85,
        "halluc >= 85": full["avsynth_halluc"]["accuracy"] >= 0.85,
        "qa >= 80": full["avsynth_qa"]["accuracy"] >= 0.80,
        "no_av within 10 of chance (every task)": all(
            abs(summaries["no_av"][t]["accuracy"] - chance(t)) <= 0.10 for t in CHOICE_TASKS
        ),
    }
    for removed, sense in (("no_audio", "audio"), ("no_video", "video")):
        dependent = [k for k in kinds if KINDS[k].needs in (sense, "both") and k != "qa_sounding"]
        bars[f"{removed}: {sense}-dependent kinds within 10 of chance ({', '.join(dependent)})"] = all(
            abs(summaries[removed][f"{KINDS[k].task}/{k}"]["accuracy"] - chance(k)) <= 0.10 for k in dependent
        )
    fastav_flops = mean_flops(fastav)
    worst_drop = max(full[t]["accuracy"] - fastav[t]["accuracy"] for t in CHOICE_TASKS)
    bars[f"fastav <= 60 FLOPs ({fastav_flops:.1f})"] = fastav_flops <= 60
    bars[f"fastav within 2 points of full on every task (worst drop {100 * worst_drop:.1f})"] = worst_drop <= 0.02
    bars = {bar: bool(ok) for bar, ok in bars.items()}
    for bar, ok in bars.items():
        print(f"- [{'x' if ok else ' '}] {bar}")

    if args.json:
        Path(args.json).write_text(
            json.dumps({"per_task": args.per_task, "summaries": summaries, "bars": bars}, indent=1)
        )
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(6, 4))
        for name, summary in summaries.items():
            if not name.startswith("no_"):
                flops = mean_flops(summary)
                accuracy = np.mean([summary[t]["accuracy"] for t in CHOICE_TASKS])
                axis.scatter(flops, 100 * accuracy, label=name)
        axis.set_xlabel("relative prefill FLOPs (%)")
        axis.set_ylabel("mean accuracy, match / halluc / qa (%)")
        axis.set_title("AV-Synth test: accuracy vs FLOPs (testbed)")
        axis.legend()
        figure.tight_layout()
        figure.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
