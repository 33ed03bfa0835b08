"""The grid behind ``rule:avsynth_senses``'s per-kind settings: every kind under one setting at a time, on val.

    python benchmarks/avsynth_rule_grid.py            # 36 settings x 960 val documents, ~15 min on 2 CPU cores

Settings: frames kept (0, 1, 2, 8; two frames either the middle ones or evenly spaced), audio steps kept (0, 9, 18,
36, evenly spaced), cut layer (1, 2); no fine stage. Prints, per question kind, the full-token score and the three
cheapest settings within ``--tolerance`` of it (accuracy points; CIDEr-D for captions uses ten times less).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from fastav_eval.analysis.testbed_runs import run_condition, summarise
from fastav_eval.avsynth import TASKS, build_documents
from fastav_eval.avsynth.rule import SETTINGS, AVSynthSenseRule, KindSetting
from fastav_eval.pruning import PruningConfig
from fastav_eval.testbed import WEIGHTS_DIR, TestbedModel


def quality(row: dict[str, float]) -> float:
    return row["cider"] if "cider" in row else 100 * row["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-task", type=int, default=240)
    parser.add_argument("--tolerance", type=float, default=2.0, help="accuracy points (CIDEr-D: a tenth of it)")
    parser.add_argument("--json", help="write every figure to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = TestbedModel.load(WEIGHTS_DIR)
    documents = [d for task in sorted(TASKS) for d in build_documents("val", task, args.per_task)]
    summaries = {"full": summarise(run_condition(model, documents))}
    for frames, steps, cut in itertools.product((0, 1, 2, 8), (0, 9, 18, 36), (1, 2)):
        for middle in (False, True) if frames == 2 else (False,):
            setting = KindSetting(frames, steps, cut, middle)
            chooser = AVSynthSenseRule(dict.fromkeys(SETTINGS, setting))
            config = PruningConfig.chosen_by(chooser)
            name = f"{frames}{' middle' if middle else ''} frames, {steps} steps, cut {cut}"
            summaries[name] = summarise(run_condition(model, documents, pruning=config))
    for key in sorted(k for k in summaries["full"] if "/" in k):
        full = quality(summaries["full"][key])
        margin = args.tolerance / (10 if "cider" in summaries["full"][key] else 1)
        fits = sorted(
            (row[key]["relative_flops"], name, quality(row[key]))
            for name, row in summaries.items()
            if name != "full" and quality(row[key]) >= full - margin
        )
        cheapest = "; ".join(f"{name}: {score:.2f} at {flops:.0f}%" for flops, name, score in fits[:3])
        print(f"{key}: full {full:.2f}; {cheapest or 'no setting within the tolerance'}")
    if args.json:
        Path(args.json).write_text(json.dumps(summaries, indent=1))


if __name__ == "__main__":
    main()
