"""Last-query scores equal eager attention's last row, head-averaged; rollout equals its definition."""

from __future__ import annotations

import torch
from transformers import AttentionInterface

from fastav_eval.analysis.calibrate import aggregate
from fastav_eval.pruning import DecoderShape, ModalityLayout, install, last_query_scores
from fastav_eval.pruning.rollout import attention_rollout, rollout_last_row, rollout_last_rows
from fastav_eval.pruning.scoring import base_attention
from tests.conftest import VOCAB, tiny_qwen2

CAPTURED: list[tuple] = []


def _capture(module, query, key, value, attention_mask, **kwargs):
    output, weights = base_attention("eager", module)(module, query, key, value, attention_mask, **kwargs)
    CAPTURED.append((query, key, attention_mask, kwargs["scaling"], weights))
    return output, weights


def test_scores_equal_eager_attention_last_row_with_padding():
    AttentionInterface.register("capture_for_test", _capture)
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionMaskInterface.register("capture_for_test", ALL_MASK_ATTENTION_FUNCTIONS["eager"])
    model = tiny_qwen2(attn="capture_for_test")
    input_ids = torch.randint(1, VOCAB, (2, 20), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :6] = 0
    CAPTURED.clear()
    model(input_ids, attention_mask=attention_mask)
    assert len(CAPTURED) == model.config.num_hidden_layers
    for query, key, mask, scaling, weights in CAPTURED:
        expected = weights[:, :, -1, :].mean(1)
        assert torch.allclose(last_query_scores(query, key, mask, scaling), expected, atol=1e-6)
        boolean = mask == 0  # the same mask as sdpa's boolean form
        assert torch.allclose(last_query_scores(query, key, boolean, scaling), expected, atol=1e-6)
        key_padding = attention_mask  # FlashAttention's 2-D form
        assert torch.allclose(last_query_scores(query, key, key_padding, scaling), expected, atol=1e-6)
    assert torch.all(expected[1, :6] == 0)


def test_attention_rollout_is_the_residual_product():
    torch.manual_seed(0)
    layers = [torch.softmax(torch.randn(1, 2, 5, 5), -1) for _ in range(3)]
    expected = torch.eye(5)
    for attention in layers:
        mixed = 0.5 * attention.mean(1)[0] + 0.5 * torch.eye(5)
        expected = (mixed / mixed.sum(-1, keepdim=True)) @ expected
    assert torch.allclose(attention_rollout(layers, alpha=0.5)[0], expected, atol=1e-6)


def test_rollout_last_row_matches_output_attentions():
    model = tiny_qwen2(attn="eager")
    input_ids = torch.randint(1, VOCAB, (1, 24), generator=torch.Generator().manual_seed(2))
    attentions = model(input_ids, output_attentions=True).attentions
    expected = attention_rollout(attentions[:3], alpha=0.6)[0, -1]
    model.config._attn_implementation = "sdpa"
    assert torch.allclose(
        rollout_last_row(model, {"input_ids": input_ids}, num_layers=3, alpha=0.6), expected, atol=1e-5
    )
    assert model.config._attn_implementation == "sdpa"


def test_calibrated_profile_drives_the_positional_rule(tmp_path):
    model = tiny_qwen2()
    segments = [("text", 3), ("video", 20), ("audio", 40), ("text", 4)]
    layout = ModalityLayout.from_segments([segments])
    samples = [
        (
            {"input_ids": torch.randint(1, VOCAB, (1, layout.length), generator=torch.Generator().manual_seed(s))},
            layout,
        )
        for s in range(3)
    ]
    measured = [(str(s), rollout_last_rows(model, inputs, 3), lay) for s, (inputs, lay) in enumerate(samples)]
    profile = aggregate(measured, DecoderShape.from_config(model.config), alpha=0.5, bins=10).curves.profile(0.5)
    assert profile.source == "rollout" and profile.num_layers == 6 and profile.global_layer == 3
    assert profile.rollout["num_samples"] == 3
    for name in ("video", "audio"):
        curve = torch.tensor(profile.rollout["curves"][name])
        kept = round(profile.keep[name].first_fraction * 10)
        assert abs(float(curve.sum()) - 1) < 1e-5
        assert curve[:kept].sum() >= 0.5 - 1e-6 and (kept == 1 or curve[: kept - 1].sum() < 0.5)
    profile.save(tmp_path / "profile.json")
    from fastav_eval.pruning import PruningConfig

    engine = install(model, PruningConfig(profile=tmp_path / "profile.json", fine_ratio=0.0))
    with engine.layout(layout):
        model(samples[0][0]["input_ids"])
    kept_audio = engine.last_stats.modality_per_layer["audio"][0, 3]
    engine.uninstall()
    assert kept_audio == -(-40 * round(profile.keep["audio"].first_fraction * 10) // 10)
