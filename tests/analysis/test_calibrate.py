"""``fastav-eval calibrate``: rollout by hand, the aggregation by hand, and the command on real models."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastav_eval.analysis.calibrate import Calibration, aggregate, choose_profile
from fastav_eval.pruning import DecoderShape, ModalityLayout, PruningProfile
from fastav_eval.pruning.rollout import RolloutCurves, attention_rollout, rollout_last_rows
from fastav_eval.testbed import WEIGHTS_DIR
from tests.conftest import VOCAB, tiny_qwen2

ROOT = Path(__file__).resolve().parents[2]
SHAPE = DecoderShape(num_layers=4, hidden_size=8, intermediate_size=16, num_heads=2, num_kv_heads=1, head_dim=4)


def test_three_layer_rollout_by_hand():
    """Tokens [text, video, audio, last]; alpha 1 (no residual), so each step is a plain product."""
    a1 = torch.tensor([[1, 0, 0, 0], [0.5, 0.5, 0, 0], [0, 0.5, 0.5, 0], [0, 0.5, 0.25, 0.25]])
    a2 = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0.5, 0, 0, 0.5]])
    a3 = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0.5, 0.5]])
    # after layer 2: 0.5 * row t0 of R1 + 0.5 * last row of R1 = [0.5, 0.25, 0.125, 0.125];
    # after layer 3: 0.5 * row a of R2 (= [0, 0.5, 0.5, 0]) + 0.5 * [0.5, 0.25, 0.125, 0.125]
    expected_last_rows = [[0, 0.5, 0.25, 0.25], [0.5, 0.25, 0.125, 0.125], [0.25, 0.375, 0.3125, 0.0625]]
    for depth, expected in enumerate(expected_last_rows, start=1):
        rollout = attention_rollout([a[None] for a in (a1, a2, a3)[:depth]], alpha=1.0)
        assert torch.allclose(rollout[0, -1], torch.tensor(expected))
    # alpha 0.5 mixes in the identity: layer 1 alone gives 0.5 * [0, 0.5, 0.25, 0.25] + 0.5 * [0, 0, 0, 1]
    assert torch.allclose(attention_rollout([a1[None]], alpha=0.5)[0, -1], torch.tensor([0, 0.25, 0.125, 0.625]))


def test_model_rollout_rows_are_each_layers_product_and_stop_at_the_global_layer():
    model = tiny_qwen2(attn="eager")
    input_ids = torch.randint(1, VOCAB, (1, 9), generator=torch.Generator().manual_seed(0))
    attentions = model(input_ids, output_attentions=True).attentions
    ran = []
    handles = [layer.register_forward_hook(lambda *_, i=i: ran.append(i)) for i, layer in enumerate(model.model.layers)]
    rows = rollout_last_rows(model, {"input_ids": input_ids}, num_layers=3, alpha=0.5)
    for handle in handles:
        handle.remove()
    assert rows.shape == (3, 9) and ran == [0, 1, 2]  # layers 3.. never ran
    for layer in range(3):
        assert torch.allclose(rows[layer], attention_rollout(attentions[: layer + 1], 0.5)[0, -1], atol=1e-5)


def _layout() -> ModalityLayout:
    return ModalityLayout.from_segments([[("text", 1), ("video", 2), ("audio", 2), ("text", 1)]])


def test_aggregation_by_hand():
    """Two documents [t, v, v, a, a, last], one layer, 2 bins per modality."""
    rows_a = torch.tensor([[0.1, 0.3, 0.1, 0.2, 0.0, 0.3]])
    rows_b = torch.tensor([[0.2, 0.1, 0.1, 0.1, 0.1, 0.4]])
    calibration = aggregate([("a", rows_a, _layout()), ("b", rows_b, _layout())], SHAPE, alpha=0.5, bins=2)
    # each document's mass along each modality, normalised, then averaged: video (0.75, 0.25) and (0.5, 0.5)
    assert calibration.curves.curves["video"] == pytest.approx([0.625, 0.375])
    assert calibration.curves.curves["audio"] == pytest.approx([0.75, 0.25])
    # mass per token against a uniform share (x 6 tokens): video a (1.8, 0.6), b (0.6, 0.6)
    assert calibration.density["video"][0] == pytest.approx([1.2, 0.6])
    assert calibration.density["text"][0] == pytest.approx([(0.6 + 1.2) / 2, (1.8 + 2.4) / 2])
    assert calibration.modality_share["video"] == pytest.approx([0.3])
    assert calibration.modality_share["audio"] == pytest.approx([0.2])
    profile = calibration.curves.profile(0.7, quiet=True)  # audio: 0.75 >= 0.7 in one bin; video needs both
    assert profile.keep["audio"].first_fraction == 0.5 and profile.keep["video"].first_fraction == 1.0
    assert profile.global_layer == 1 and profile.num_layers == 4 and calibration.documents == ["a", "b"]
    refused = [
        ({"mass": 0.0}, "mass=0.0; accepted: a number in (0, 1]"),
        ({"mass": 1.5}, "mass=1.5; accepted"),
        ({"target_flops": 0.0}, "target_flops=0.0; accepted: a number in (0, 100]"),
        ({"target_flops": 60.0, "fine_ratio": 1.0}, "fine_ratio=1.0; accepted: a number in [0, 1)"),
    ]
    for bad, message in refused:
        with pytest.raises(ValueError, match=re.escape(message)):
            choose_profile(calibration, **bad)


def test_a_modality_absent_from_some_documents_is_averaged_over_those_that_have_it():
    audio_only = ModalityLayout.from_segments([[("text", 1), ("audio", 2), ("text", 1)]])
    both = aggregate(
        [("av", torch.tensor([[0.1, 0.3, 0.1, 0.2, 0.0, 0.3]]), _layout()),
         ("a", torch.tensor([[0.2, 0.2, 0.2, 0.4]]), audio_only)], SHAPE, 0.5, 2,
    )  # fmt: skip
    assert both.curves.curves["video"] == pytest.approx([0.75, 0.25])
    assert both.curves.curves["audio"] == pytest.approx([0.75, 0.25])  # (1, 0) and (0.5, 0.5)


def _calibration(curves: dict[str, list[float]]) -> Calibration:
    return Calibration(RolloutCurves(curves, 4, 2, 0.5, 1), {}, {}, [], SHAPE, [])


def test_flat_curves_are_flagged_and_peaked_ones_are_not():
    peaked = _calibration({"audio": [0.94, 0.02, 0.02, 0.02], "video": [0.4, 0.3, 0.2, 0.1]})
    assert peaked.flatness_warning() is None and peaked.prefix_for_mass(0.9) == {"audio": 0.25, "video": 0.75}
    flat = _calibration({"audio": [0.25] * 4, "video": [0.4, 0.3, 0.2, 0.1]})
    assert flat.flat_modalities() == {"audio": 1.0}
    warning = flat.flatness_warning()
    assert "audio 100%" in warning and "video" not in warning.split("tokens")[0] and "global_rule=random" in warning


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_calibrate_through_lmms_eval_tasks_reproduces_the_shipped_testbed_profile(tmp_path):
    """The shipped profile was calibrated on the first 24 val documents of each task by the testbed's own loop;
    the command reads the same documents through lmms-eval's avsynth_val tasks and fastav_tiny's adapter."""
    out = tmp_path / "profile.json"
    done = _run("-m", "fastav_eval.cli", "calibrate", "--model", "fastav_tiny", "--tasks", "avsynth_val",
                "--limit", "24", "--target-flops", "60", "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    shipped, calibrated = PruningProfile.load(WEIGHTS_DIR / "profile.json"), PruningProfile.load(out)
    assert calibrated.keep == shipped.keep and calibrated.global_layer == shipped.global_layer == 3
    assert calibrated.rollout["num_samples"] == 96 and calibrated.rollout["mass"] == shipped.rollout["mass"]
    for name in ("video", "audio"):
        assert np.allclose(calibrated.rollout["curves"][name], shipped.rollout["curves"][name], atol=1e-6)
    assert (tmp_path / "profile_rollout.png").stat().st_size > 0 and (tmp_path / "profile_importance.png").is_file()
    assert "warning: flat rollout at layer 3" in done.stderr  # docs/avsynth.md: the testbed's curves are flat


def test_calibrate_runs_on_the_tiny_qwen2_5_omni(tmp_path):
    out = tmp_path / "omni_profile.json"
    done = _run("-m", "tests.lmms.av_cli", str(tmp_path / "omni"), "fastav-eval", "calibrate",
                "--model", "fastav_qwen2_5_omni", "--tasks", "worldsense,vggsound", "--limit", "2",
                "--model_args", f"pretrained={tmp_path / 'omni' / 'checkpoint'},dtype=float32,video_audio=if_present",
                "--global-layer", "2", "--mass", "0.5", "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    profile = json.loads(out.read_text())
    assert profile["source"] == "rollout" and profile["global_layer"] == 2 and profile["rollout"]["num_samples"] == 4
    assert set(profile["keep"]) == {"video", "audio"}  # worldsense has both, vggsound audio only
    for curve in profile["rollout"]["curves"].values():
        assert sum(curve) == pytest.approx(1.0, abs=1e-5)
    assert (tmp_path / "omni_profile_rollout.png").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model_args", "prune=fastav"], "calibration runs the unpruned model"),
        (["--model_args", "fine_ratio=0.1"], "calibration runs the unpruned model"),
        (["--model", "llava"], "is not a FastAV wrapper"),
        (["--tasks", "no_such_task"], "are not lmms-eval tasks"),
    ],
)
def test_bad_calibrate_arguments_are_named(tmp_path, capsys, args, message):
    from fastav_eval.cli import main

    base = {"--model": "fastav_tiny", "--tasks": "avsynth_qa_val", "--model_args": ""}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    flags = [item for pair in base.items() for item in pair]
    assert main(["calibrate", *flags, "--limit", "1", "--out", str(tmp_path / "p.json")]) == 2
    assert message in capsys.readouterr().err
