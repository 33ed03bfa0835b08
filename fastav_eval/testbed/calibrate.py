"""Calibrate the testbed's global-stage profile with attention rollout on AV-Synth's val split."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from fastav_eval.avsynth.dataset import DEFAULT_SEED, build_documents, load_media
from fastav_eval.avsynth.questions import TASKS
from fastav_eval.pruning import ModalityLayout, PruningProfile
from fastav_eval.pruning.rollout import calibrate_profile
from fastav_eval.testbed.model import TestbedModel


def calibration_samples(model: TestbedModel, documents: list[dict]) -> Iterator[tuple[dict, ModalityLayout]]:
    """One ``(decoder inputs, layout)`` pair per document, batch 1 and unpadded as rollout needs."""
    for doc in documents:
        frames, waveform = load_media(doc)
        with torch.no_grad():
            prepared = model.prepare(
                torch.from_numpy(frames[None]), torch.from_numpy(waveform[None]), [doc["question"]]
            )
        yield {"inputs_embeds": prepared.inputs_embeds}, prepared.layout


def calibrate_testbed(
    model: TestbedModel,
    docs_per_task: int = 24,
    global_layer: int | None = None,
    mass: float = 0.9,
    seed: int = DEFAULT_SEED,
) -> PruningProfile:
    """Rollout over ``docs_per_task`` val documents of each task (never the test split)."""
    documents = [doc for task in sorted(TASKS) for doc in build_documents("val", task, docs_per_task, seed)]
    np.random.default_rng(0).shuffle(documents)
    return calibrate_profile(model.decoder, calibration_samples(model, documents), global_layer=global_layer, mass=mass)
