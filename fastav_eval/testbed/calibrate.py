"""Calibrate the testbed's global-stage profile with attention rollout on AV-Synth's val split.

Rollout runs once; the kept prefix per modality then follows either from ``mass`` (the shortest prefix holding that
share of each modality's rollout mass) or from ``target_flops``: the largest mass whose profile, with the fine
stage at ``fine_ratio``, keeps the mean relative prefill FLOPs of the calibration samples at or under the target.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch

from fastav_eval.avsynth.dataset import DEFAULT_SEED, build_documents
from fastav_eval.avsynth.questions import TASKS
from fastav_eval.pruning import DecoderShape, ModalityLayout, PruningConfig, PruningProfile, simulate_prefill
from fastav_eval.pruning.rollout import RolloutCurves, rollout_curves
from fastav_eval.testbed.model import TestbedModel, media_tensors

log = logging.getLogger(__name__)


def calibration_samples(model: TestbedModel, documents: list[dict]) -> Iterator[tuple[dict, ModalityLayout]]:
    """One ``(decoder inputs, layout)`` pair per document, batch 1 and unpadded as rollout needs."""
    for doc in documents:
        with torch.no_grad():
            prepared = model.prepare(*media_tensors([doc]), [doc["question"]])
        yield {"inputs_embeds": prepared.inputs_embeds}, prepared.layout


def mean_relative_flops(model: TestbedModel, layouts: list[ModalityLayout], config: PruningConfig) -> float:
    shape = DecoderShape.from_config(model.decoder.config)
    num_layers = model.config.num_layers
    return float(
        np.mean([float(simulate_prefill(lay, config, num_layers).relative_flops(shape)[0]) for lay in layouts])
    )


def profile_for_target(
    model: TestbedModel, curves: RolloutCurves, layouts: list[ModalityLayout], target_flops: float, fine_ratio: float
) -> PruningProfile:
    """The profile of the largest mass (in steps of 0.01) whose mean relative FLOPs stay <= ``target_flops``."""
    for mass in np.arange(1.0, 0.0, -0.01):
        profile = curves.profile(round(float(mass), 2), quiet=True)
        flops = mean_relative_flops(model, layouts, PruningConfig(profile=profile, fine_ratio=fine_ratio))
        if flops <= target_flops:
            log.info("target %.1f%% FLOPs at fine ratio %g: mass %.2f -> %.1f%% (%s)",
                     target_flops, fine_ratio, mass, flops, profile.describe())  # fmt: skip
            rollout = {**(profile.rollout or {}), "target_flops": target_flops, "fine_ratio": fine_ratio,
                       "calibration_flops": flops}  # fmt: skip
            return PruningProfile(profile.keep, profile.num_layers, profile.global_layer, profile.source, rollout)
    raise ValueError(f"target_flops={target_flops}: no rollout prefix reaches it (the text alone costs more)")


def calibrate_testbed(
    model: TestbedModel,
    docs_per_task: int = 24,
    global_layer: int | None = None,
    mass: float = 0.9,
    target_flops: float | None = None,
    fine_ratio: float = 0.2,
    seed: int = DEFAULT_SEED,
) -> PruningProfile:
    """Rollout over ``docs_per_task`` val documents of each task (never the test split), then pick the prefix."""
    documents = [doc for task in sorted(TASKS) for doc in build_documents("val", task, docs_per_task, seed)]
    np.random.default_rng(0).shuffle(documents)
    samples = list(calibration_samples(model, documents))
    curves = rollout_curves(model.decoder, samples, global_layer=global_layer)
    if target_flops is None:
        return curves.profile(mass)
    return profile_for_target(model, curves, [layout for _, layout in samples], target_flops, fine_ratio)
