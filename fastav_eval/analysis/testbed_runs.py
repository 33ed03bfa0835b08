"""Evaluate the testbed on AV-Synth documents under one condition: full tokens, a modality left out, or pruned.

This is the harness behind ``benchmarks/avsynth_quality.py``: many conditions over one loaded model, in one
process. It answers through the same path as ``lmms-eval --model fastav_tiny`` (the testbed adapter, the
engine and :class:`~fastav_eval.evaluation.PrunedRunner`, the tasks' ``doc_to_visual`` media), so each answer comes
with the same :class:`~fastav_eval.records.SampleRecord`; a modality left out is the adapter's ``senses`` option
(``--model_args senses=audio`` does the same through lmms-eval). Scoring is the tasks' own
(:mod:`fastav_eval.avsynth.scoring`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from fastav_eval.avsynth.dataset import request_visuals
from fastav_eval.avsynth.scoring import corpus_bleu4, corpus_cider, score_choice
from fastav_eval.evaluation import PrunedRunner
from fastav_eval.models.base import Request
from fastav_eval.models.testbed import TestbedAdapter
from fastav_eval.pruning import PruningConfig, SampleInfo
from fastav_eval.records import SampleRecord
from fastav_eval.testbed.model import TestbedModel

CONDITIONS = {"full": "both", "no_audio": "video", "no_video": "audio", "no_av": "none"}
"""Condition -> the testbed adapter's ``senses``."""


@dataclass
class DocResult:
    id: str
    task: str
    kind: str
    needs: str
    answer: str
    response: str
    accuracy: float | None  # None for captions
    invalid: float | None
    record: SampleRecord

    @property
    def relative_flops(self) -> float:
        return float(self.record.relative_flops)


@torch.no_grad()
def run_condition(
    model: TestbedModel,
    documents: list[dict],
    condition: str = "full",
    pruning: PruningConfig | None = None,
    batch_size: int = 48,
    max_new_tokens: int = 40,
) -> list[DocResult]:
    """Answer every document; ``condition`` leaves modalities out, ``pruning`` installs FastAV for the run
    (None: the unpruned model, through the engine with pruning off)."""
    if condition not in CONDITIONS:
        raise ValueError(f"condition={condition!r}; accepted: {sorted(CONDITIONS)}")
    device = next(model.parameters()).device
    adapter = TestbedAdapter(device=str(device), model=model, senses=CONDITIONS[condition])
    runner = PrunedRunner(adapter, pruning or PruningConfig.off(), "none" if pruning is None else "fastav")
    results: list[DocResult] = []
    label = condition if pruning is None else f"{condition} + {pruning.describe()}"
    try:
        for start in tqdm(range(0, len(documents), batch_size), desc=label[:60], unit="batch", leave=False):
            batch = documents[start : start + batch_size]
            loaded = [
                adapter.load_request(Request(request_visuals(doc), doc["question"]), i) for i, doc in enumerate(batch)
            ]
            limit = max_new_tokens if any(d["kind"] == "caption" for d in batch) else 4
            samples = [SampleInfo(f"{doc['task']}/{doc['id']}", doc["question"]) for doc in batch]
            for doc, answered in zip(batch, runner.answer(loaded, limit, [], samples), strict=True):
                scores = score_choice(answered.text, doc["answer"], doc["choices"]) if doc["choices"] else {}
                results.append(
                    DocResult(
                        doc["id"],
                        doc["task"],
                        doc["kind"],
                        doc["needs"],
                        doc["answer"],
                        answered.text,
                        scores.get("accuracy"),
                        scores.get("invalid"),
                        answered.record,
                    )
                )
    finally:
        runner.close()
    return results


def summarise(results: list[DocResult]) -> dict[str, dict[str, float]]:
    """Per task and per kind: accuracy and invalid rate (CIDEr / BLEU-4 for captions), mean relative FLOPs."""
    summary: dict[str, dict[str, float]] = {}
    groups: dict[str, list[DocResult]] = {}
    for result in results:
        groups.setdefault(result.task, []).append(result)
        groups.setdefault(f"{result.task}/{result.kind}", []).append(result)
    for name, members in sorted(groups.items()):
        row: dict[str, float] = {
            "n": len(members),
            "relative_flops": float(np.mean([m.relative_flops for m in members])),
        }
        if members[0].accuracy is None:
            pairs = [(m.answer, m.response) for m in members]
            row.update(cider=corpus_cider(pairs), bleu4=corpus_bleu4(pairs))
        else:
            row.update(
                accuracy=float(np.mean([m.accuracy for m in members])),
                invalid=float(np.mean([m.invalid for m in members])),
            )
        summary[name] = row
    return summary


__all__ = ["CONDITIONS", "DocResult", "run_condition", "summarise"]
