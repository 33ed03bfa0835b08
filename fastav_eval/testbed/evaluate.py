"""Evaluate the testbed on AV-Synth documents under one condition: full tokens, a modality left out, or pruned.

This is the harness behind ``benchmarks/avsynth_quality.py`` (modality ablations cannot go through lmms-eval,
whose requests always carry both senses). Scoring is the tasks' own (:mod:`fastav_eval.avsynth.scoring`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from fastav_eval.avsynth.scoring import corpus_bleu4, corpus_cider, score_choice
from fastav_eval.pruning import PruningConfig, install
from fastav_eval.testbed.model import TestbedModel, media_tensors

CONDITIONS = {"full": (True, True), "no_audio": (True, False), "no_video": (False, True), "no_av": (False, False)}


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
    relative_flops: float


@contextmanager
def _engine(model: TestbedModel, config: PruningConfig | None) -> Iterator[object]:
    if config is None:
        yield None
        return
    engine = install(model.decoder, config)
    try:
        yield engine
    finally:
        engine.uninstall()


@torch.no_grad()
def run_condition(
    model: TestbedModel,
    documents: list[dict],
    condition: str = "full",
    pruning: PruningConfig | None = None,
    batch_size: int = 48,
    max_new_tokens: int = 40,
) -> list[DocResult]:
    """Answer every document; ``condition`` leaves modalities out, ``pruning`` installs FastAV for the run."""
    if condition not in CONDITIONS:
        raise ValueError(f"condition={condition!r}; accepted: {sorted(CONDITIONS)}")
    use_video, use_audio = CONDITIONS[condition]
    results: list[DocResult] = []
    with _engine(model, pruning) as engine:
        label = condition if pruning is None else f"{condition} + {pruning.describe()}"
        for start in tqdm(range(0, len(documents), batch_size), desc=label[:60], unit="batch", leave=False):
            batch = documents[start : start + batch_size]
            prepared = model.prepare(
                *media_tensors(batch),
                [d["question"] for d in batch],
                use_video=[use_video] * len(batch),
                use_audio=[use_audio] * len(batch),
            )
            limit = max_new_tokens if any(d["kind"] == "caption" for d in batch) else 4
            if engine is None:
                responses = model.generate(prepared, max_new_tokens=limit)
                flops = [100.0] * len(batch)
            else:
                with engine.layout(prepared.layout):
                    responses = model.generate(prepared, max_new_tokens=limit)
                flops = engine.last_stats.relative_flops(engine.shape).tolist()
            for doc, response, relative in zip(batch, responses, flops, strict=True):
                scores = score_choice(response, doc["answer"], doc["choices"]) if doc["choices"] else {}
                results.append(
                    DocResult(
                        doc["id"],
                        doc["task"],
                        doc["kind"],
                        doc["needs"],
                        doc["answer"],
                        response,
                        scores.get("accuracy"),
                        scores.get("invalid"),
                        float(relative),
                    )
                )
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
