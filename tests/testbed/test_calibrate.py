"""Testbed calibration: rollout once, then the largest mass whose FLOPs meet the target (checked by recompute)."""

from __future__ import annotations

import pytest

from fastav_eval.avsynth import build_documents
from fastav_eval.pruning import PruningConfig
from fastav_eval.pruning.rollout import rollout_curves
from fastav_eval.testbed.calibrate import calibration_samples, mean_relative_flops, profile_for_target
from tests.testbed.test_model import tiny_testbed


def _setup():
    model = tiny_testbed()
    samples = list(calibration_samples(model, build_documents("val", "avsynth_qa", 3)))
    return model, rollout_curves(model.decoder, samples), [layout for _, layout in samples]


def test_target_flops_picks_the_largest_mass_under_the_target():
    model, curves, layouts = _setup()
    profile = profile_for_target(model, curves, layouts, target_flops=75.0, fine_ratio=0.2)
    mass = profile.rollout["mass"]
    assert profile.source == "rollout" and profile.global_layer == 1
    recomputed = mean_relative_flops(model, layouts, PruningConfig(profile=profile, fine_ratio=0.2))
    assert recomputed == pytest.approx(profile.rollout["calibration_flops"]) and recomputed <= 75.0
    more = curves.profile(min(1.0, round(mass + 0.01, 2)), quiet=True)
    if more.keep != profile.keep:  # one step more mass keeps more tokens, and that breaks the target
        assert mean_relative_flops(model, layouts, PruningConfig(profile=more, fine_ratio=0.2)) > 75.0


def test_unreachable_target_is_an_error():
    model, curves, layouts = _setup()
    with pytest.raises(ValueError, match=r"target_flops=1\.0"):
        profile_for_target(model, curves, layouts, 1.0, 0.2)
