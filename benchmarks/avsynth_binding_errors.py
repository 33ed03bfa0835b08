"""Where the testbed fails to bind a colour to a shape: the visual kinds broken down by scene, on the val split.

    python benchmarks/avsynth_binding_errors.py                         # the shipped weights
    python benchmarks/avsynth_binding_errors.py --weights DIR           # any saved testbed

Rows (accuracy, right / asked):
- ``halluc_visible`` ("is there a <colour> <shape> in the video?") by answer and distractor: ``no, same colour``
  shows an object of the asked colour but another shape, so only a model that binds shape to colour says no;
  ``heard`` says whether the asked object's sound is in the clip (the audio trap);
- ``qa_colour`` ("what colour is the <shape>?") and ``qa_shape`` ("what shape is the <colour> object?") by answer
  and number of objects on screen: with two objects the model has to tell which one is asked about.

The val split, never the test split, so that reading these rows to change training cannot tune the benchmark.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from fastav_eval.analysis.testbed_runs import run_condition
from fastav_eval.avsynth import build_documents
from fastav_eval.avsynth.scene import Scene
from fastav_eval.testbed import WEIGHTS_DIR, TestbedModel


def scene_group(doc: dict) -> str:
    """The row a document falls in (see the module docstring)."""
    scene = Scene.from_json(doc["scene"])
    if doc["kind"] == "halluc_visible":
        colour = doc["question"].split()[3]  # "is there a <colour> <shape> in the video ?"
        heard = "heard" if scene.event_count(colour) else "not heard"
        if doc["answer"] == "yes":
            return f"yes, {heard}"
        return f"no, {'same' if scene.visible(colour) else 'other'} colour, {heard}"
    return f"{doc['answer']}, {len(scene.objects)} object{'s' if len(scene.objects) > 1 else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default=str(WEIGHTS_DIR), help="a saved testbed directory")
    parser.add_argument("--per-task", type=int, default=400, help="val documents built per task before filtering")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = TestbedModel.load(args.weights)
    docs = [d for d in build_documents("val", "avsynth_halluc", args.per_task) if d["kind"] == "halluc_visible"]
    docs += [d for d in build_documents("val", "avsynth_qa", args.per_task) if d["kind"] in ("qa_colour", "qa_shape")]
    tally: dict[tuple[str, str], list[float]] = defaultdict(list)
    for doc, result in zip(docs, run_condition(model, docs), strict=True):
        tally[doc["kind"], scene_group(doc)].append(result.accuracy)
    print(f"weights: {args.weights}; val split, {len(docs)} documents\n")
    print("| kind | answer, scene | accuracy | right / asked |\n|---|---|---|---|")
    for (kind, group), hits in sorted(tally.items()):
        print(f"| {kind} | {group} | {100 * sum(hits) / len(hits):.1f} | {sum(hits):.0f} / {len(hits)} |")


if __name__ == "__main__":
    main()
