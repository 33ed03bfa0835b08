"""fastav_eval.models.beats: key names, the relative-position buckets, attention and layers against the formulas,
token order, padding, and (when the fixture exists) parity with the official VideoLLaMA2 module.

The tiny config is the one of tests/fixtures/videollama2_tiny: 2 layers, width 32, FFN 64, 4 heads, patch width 48,
5 classes, everything else at the defaults (kernel-128 position conv in 16 groups, 320 buckets up to 800).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastav_eval.models.beats import (
    FBANK_MEAN,
    FBANK_STD,
    BEATsConfig,
    BEATsEncoder,
    pool_padding_mask,
    relative_position_bucket,
)

TINY = {
    "encoder_layers": 2,
    "encoder_embed_dim": 32,
    "encoder_ffn_embed_dim": 64,
    "encoder_attention_heads": 4,
    "embed_dim": 48,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "predictor_class": 5,
}
FIXTURE = Path(__file__).parents[1] / "fixtures" / "videollama2_tiny"


def tiny_encoder(seed: int = 0, **overrides) -> BEATsEncoder:
    """The tiny encoder with every parameter randomised (grep_a, LayerNorms and biases away from their init)."""
    torch.manual_seed(seed)
    model = BEATsEncoder(BEATsConfig.from_dict({**TINY, **overrides})).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            scale = 0.3 if param.dim() == 1 or "grep" in name else 0.5 * float(param.std().clamp(min=0.02))
            param.add_(torch.randn_like(param) * scale)
    return model


def random_fbank(batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 128, generator=generator) * 4 + FBANK_MEAN


# Derived by hand from the official __init__s (BEATs.py, backbone.py): BEATs registers post_extract_proj (as
# embed_dim != encoder_embed_dim), patch_embedding (no bias: conv_bias False), encoder, layer_norm, predictor;
# TransformerEncoder registers pos_conv = Sequential(weight-normed Conv1d, SamePad, GELU), whose torch.nn.utils-style
# weight_norm (weight_norm_fix.py) replaces ``weight`` by ``weight_g`` / ``weight_v``, then layers and layer_norm;
# each MultiheadAttention has relative_attention_bias (layer 0's, re-attached to the others), k/v/q/out_proj,
# grep_linear and the grep_a parameter.
_LAYER_KEYS = [
    "self_attn.grep_a",
    "self_attn.relative_attention_bias.weight",
    "self_attn.k_proj.weight",
    "self_attn.k_proj.bias",
    "self_attn.v_proj.weight",
    "self_attn.v_proj.bias",
    "self_attn.q_proj.weight",
    "self_attn.q_proj.bias",
    "self_attn.out_proj.weight",
    "self_attn.out_proj.bias",
    "self_attn.grep_linear.weight",
    "self_attn.grep_linear.bias",
    "self_attn_layer_norm.weight",
    "self_attn_layer_norm.bias",
    "fc1.weight",
    "fc1.bias",
    "fc2.weight",
    "fc2.bias",
    "final_layer_norm.weight",
    "final_layer_norm.bias",
]
OFFICIAL_TINY_KEYS = {
    "post_extract_proj.weight",
    "post_extract_proj.bias",
    "patch_embedding.weight",
    "encoder.pos_conv.0.bias",
    "encoder.pos_conv.0.weight_g",
    "encoder.pos_conv.0.weight_v",
    *(f"encoder.layers.{i}.{key}" for i in range(2) for key in _LAYER_KEYS),
    "encoder.layer_norm.weight",
    "encoder.layer_norm.bias",
    "layer_norm.weight",
    "layer_norm.bias",
    "predictor.weight",
    "predictor.bias",
}


def test_config_defaults_and_from_dict():
    config = BEATsConfig()
    assert (config.embed_dim, config.encoder_embed_dim, config.encoder_layers, config.encoder_attention_heads) == (
        512,
        768,
        12,
        12,
    )
    assert (config.encoder_ffn_embed_dim, config.conv_pos, config.conv_pos_groups) == (3072, 128, 16)
    assert (config.num_buckets, config.max_distance, config.input_patch_size, config.predictor_class) == (
        320,
        800,
        16,
        527,
    )
    assert config.deep_norm and config.gru_rel_pos and config.relative_position_embedding and config.finetuned_model
    assert not config.layer_norm_first and not config.conv_bias
    assert config.deep_norm_alpha == pytest.approx(24**0.25)
    # a checkpoint's cfg carries training-only fields (and the LLM's hidden_size); they are ignored
    loaded = BEATsConfig.from_dict({**TINY, "dropout": 0.1, "encoder_layerdrop": 0.05, "hidden_size": 3584})
    assert loaded == BEATsConfig(**TINY)
    with pytest.raises(ValueError, match="deep_norm"):
        BEATsConfig(layer_norm_first=True)
    with pytest.raises(ValueError, match="activation_fn"):
        BEATsConfig(activation_fn="glu")
    with pytest.raises(ValueError, match="heads"):
        BEATsConfig(encoder_attention_heads=5)


def test_state_dict_keys_equal_the_official_modules():
    model = BEATsEncoder(BEATsConfig(**TINY))
    state = model.state_dict()
    assert set(state) == OFFICIAL_TINY_KEYS
    shapes = {
        "post_extract_proj.weight": (32, 48),
        "patch_embedding.weight": (48, 1, 16, 16),
        "encoder.pos_conv.0.weight_g": (1, 1, 128),
        "encoder.pos_conv.0.weight_v": (32, 2, 128),
        "encoder.pos_conv.0.bias": (32,),
        "encoder.layers.1.self_attn.relative_attention_bias.weight": (320, 4),
        "encoder.layers.0.self_attn.grep_linear.weight": (8, 8),
        "encoder.layers.0.self_attn.grep_a": (1, 4, 1, 1),
        "encoder.layers.0.fc1.weight": (64, 32),
        "layer_norm.weight": (48,),
        "encoder.layer_norm.weight": (32,),
        "predictor.weight": (5, 32),
    }
    assert {key: tuple(state[key].shape) for key in shapes} == shapes
    # one bias table for all layers, as the official re-attaches layer 0's
    layers = model.encoder.layers
    assert layers[1].self_attn.relative_attention_bias is layers[0].self_attn.relative_attention_bias
    no_predictor = BEATsEncoder(BEATsConfig(**TINY, finetuned_model=False)).state_dict()
    assert set(no_predictor) == OFFICIAL_TINY_KEYS - {"predictor.weight", "predictor.bias"}
    same_width = BEATsEncoder(BEATsConfig(**{**TINY, "embed_dim": 32})).state_dict()
    assert "post_extract_proj.weight" not in same_width


def test_loads_a_checkpoint_strictly():
    source, target = tiny_encoder(seed=1), BEATsEncoder(BEATsConfig(**TINY))
    checkpoint = {f"model.audio_tower.{key}": value for key, value in source.state_dict().items()}
    target.load_state_dict({key.removeprefix("model.audio_tower."): value for key, value in checkpoint.items()})
    fbank = random_fbank(1, 64)
    torch.testing.assert_close(target.eval()(fbank), source(fbank), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("offset", "bucket"),
    # by hand, 320 buckets up to 800: 160 per sign, offsets under 80 exact, then 80 + floor(ln(d/80)/ln(10)·80)
    [
        (0, 0),
        (1, 161),
        (-1, 1),
        (79, 239),
        (-79, 79),
        (80, 240),
        (100, 247),  # ln 1.25 / ln 10 · 80 = 7.75
        (-100, 87),
        (200, 271),  # ln 2.5 / ln 10 · 80 = 31.8
        (-400, 135),  # ln 5 / ln 10 · 80 = 55.9
        (799, 319),  # 79.96
        (800, 319),  # 80, clamped to the last bucket
        (-5000, 159),
    ],
)
def test_relative_position_bucket_default(offset, bucket):
    assert relative_position_bucket(torch.tensor([offset]), 320, 800).item() == bucket


def test_relative_position_bucket_small():
    # 32 buckets up to 128 (T5's): 16 per sign, exact under 8, then 8 + floor(ln(d/8)/ln(16)·8)
    offsets = torch.tensor([[0, 3, -3, 8, -20, 127, 1000]])
    expected = [[0, 19, 3, 24, 10, 31, 31]]  # -20: ln 2.5 / ln 16 · 8 = 2.64; 127: 7.98
    assert relative_position_bucket(offsets, 32, 128).tolist() == expected


def _attention_oracle(attn, x, position_bias, key_padding_mask=None):
    """softmax(q kᵀ/√d + gate · bias) v, head by head and query by query, from the module's weights."""
    batch, length, dim = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    q = (x @ attn.q_proj.weight.T + attn.q_proj.bias).view(batch, length, heads, head_dim)
    k = (x @ attn.k_proj.weight.T + attn.k_proj.bias).view(batch, length, heads, head_dim)
    v = (x @ attn.v_proj.weight.T + attn.v_proj.bias).view(batch, length, heads, head_dim)
    out = torch.zeros(batch, length, heads, head_dim, dtype=x.dtype)
    for b in range(batch):
        for h in range(heads):
            g = q[b, :, h] @ attn.grep_linear.weight.T + attn.grep_linear.bias  # [L, 8]
            gate_a, gate_b = torch.sigmoid(g[:, :4].sum(-1)), torch.sigmoid(g[:, 4:].sum(-1))
            gate = gate_a * (gate_b * attn.grep_a[0, h, 0, 0] - 1) + 2  # [L]
            scores = q[b, :, h] @ k[b, :, h].T / math.sqrt(head_dim) + gate[:, None] * position_bias[h]
            if key_padding_mask is not None:
                scores[:, key_padding_mask[b]] = -math.inf
            out[b, :, h] = torch.softmax(scores, dim=-1) @ v[b, :, h]
    return out.reshape(batch, length, dim) @ attn.out_proj.weight.T + attn.out_proj.bias


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_attention_matches_the_formula(implementation):
    model = tiny_encoder().double()
    attn = model.encoder.layers[1].self_attn
    x = torch.randn(2, 37, 32, dtype=torch.float64)
    position_bias = model.encoder.position_bias(37)
    # the bias is table[bucket(key - query), head]
    table = attn.relative_attention_bias.weight
    assert position_bias.shape == (4, 37, 37)
    assert position_bias[2, 5, 30] == table[relative_position_bucket(torch.tensor(25), 320, 800), 2]
    assert position_bias[2, 30, 5] == table[relative_position_bucket(torch.tensor(-25), 320, 800), 2]
    expected = _attention_oracle(attn, x, position_bias)
    torch.testing.assert_close(attn(x, position_bias, None, implementation), expected, rtol=1e-10, atol=1e-10)
    mask = torch.zeros(2, 37, dtype=torch.bool)
    mask[0, 30:], mask[1, :4] = True, True
    expected = _attention_oracle(attn, x, position_bias, mask)
    torch.testing.assert_close(attn(x, position_bias, mask, implementation), expected, rtol=1e-10, atol=1e-10)


def test_layer_is_post_ln_with_the_deep_norm_scale():
    model = tiny_encoder().double()
    layer = model.encoder.layers[0]
    x = torch.randn(1, 20, 32, dtype=torch.float64)
    bias = model.encoder.position_bias(20)
    alpha = 4**0.25  # (2 · layers)^¼ with 2 layers
    h = layer.self_attn_layer_norm(alpha * x + layer.self_attn(x, bias, None))
    gelu = F.gelu(layer.fc1(h).float()).double()  # the official GELU runs in float32, whatever the module's dtype
    expected = layer.final_layer_norm(alpha * h + layer.fc2(gelu))
    torch.testing.assert_close(layer(x, bias, None, "eager"), expected, rtol=0, atol=1e-12)


def test_position_embedding_uses_the_official_weight_norm():
    model = tiny_encoder()
    conv = model.encoder.pos_conv[0]
    v, g = conv.weight_v.double(), conv.weight_g.double()
    # weight_norm_fix.py: a norm per kernel tap over both channel dims, 1e-6 inside the root (torch's has none)
    weight = g * v / torch.sqrt((v**2).sum(dim=(0, 1), keepdim=True) + 1e-6)
    torch.testing.assert_close(conv.effective_weight().double(), weight, rtol=1e-6, atol=1e-7)
    x = torch.randn(1, 32, 50, dtype=torch.float64)
    # kernel 128, padding 64 on both sides, the one extra step at the end dropped (SamePad), then GELU
    expected = F.gelu(F.conv1d(x, weight, conv.bias.double(), padding=64, groups=16)[:, :, :50])
    torch.testing.assert_close(model.encoder.pos_conv(x.float()).double(), expected, rtol=1e-5, atol=1e-5)


def test_tokens_are_time_major_patches():
    model = tiny_encoder()
    fbank = random_fbank(2, 100)  # 6 time patches (4 frames left over) × 8 frequency patches
    tokens = model.embed_patches(fbank)
    assert tokens.shape == (2, 48, 48)
    assert model.grid(100) == (6, 8)
    normalised = (fbank - FBANK_MEAN) / (2 * FBANK_STD)
    kernel = model.patch_embedding.weight[:, 0]  # [48, 16, 16]
    for t, f in [(0, 0), (0, 7), (1, 0), (5, 3), (5, 7)]:
        patch = normalised[:, 16 * t : 16 * t + 16, 16 * f : 16 * f + 16]
        expected = torch.einsum("bij,eij->be", patch, kernel)
        torch.testing.assert_close(tokens[:, 8 * t + f], expected, rtol=1e-5, atol=1e-5)


def test_forward_shape():
    model = tiny_encoder()
    out = model(random_fbank(1, 2998))  # 30 s
    assert out.shape == (1, 187 * 8, 32) and out.dtype == torch.float32
    assert model.grid(2998) == (187, 8)


def test_implementations_agree_and_clips_are_independent():
    model = tiny_encoder()
    fbank = random_fbank(2, 300)
    eager = model(fbank)
    model.attn_implementation = "sdpa"
    torch.testing.assert_close(model(fbank), eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(fbank[1:]), eager[1:], rtol=1e-5, atol=1e-5)


def test_bfloat16_module_takes_float32_fbank():
    model = tiny_encoder().to(torch.bfloat16)
    fbank = random_fbank(1, 160)
    out = model(fbank)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    torch.testing.assert_close(out, model(fbank.to(torch.bfloat16)), rtol=0, atol=0)


def test_all_false_padding_mask_is_no_mask():
    """What VideoLLaMA2 passes: ``torch.zeros(fbank.shape).bool()``."""
    model = tiny_encoder()
    fbank = random_fbank(2, 160)
    expected = model(fbank)
    torch.testing.assert_close(model(fbank, torch.zeros(fbank.shape, dtype=torch.bool)), expected, rtol=0, atol=0)
    torch.testing.assert_close(model(fbank, torch.zeros(2, 160, dtype=torch.bool)), expected, rtol=0, atol=0)


def test_padding_mask_pools_like_the_official():
    frames = torch.zeros(1, 2998, dtype=torch.bool)
    frames[0, 2000:] = True
    frame_mask = pool_padding_mask(frames, 2998)
    assert frame_mask.equal(frames)
    # 2998 % 1496 = 6 frames dropped; token i <- frames 2i, 2i+1 (not its time-major patch)
    tokens = pool_padding_mask(frame_mask, 1496)
    assert tokens[0].nonzero().flatten().tolist() == list(range(1000, 1496))
    per_bin = frames.unsqueeze(-1).expand(1, 2998, 128).clone()
    per_bin[0, 2500, 5] = False  # a frame counts as padding only if all its bins are
    assert pool_padding_mask(per_bin, 2998)[0].nonzero().flatten().tolist() == [*range(2000, 2500), *range(2501, 2998)]
    with pytest.raises(ValueError, match="fewer than"):
        pool_padding_mask(torch.zeros(1, 10, dtype=torch.bool), 11)


def test_padded_tokens_are_invisible_to_the_others():
    model = tiny_encoder()
    x = torch.randn(2, 40, 32)
    mask = torch.zeros(2, 40, dtype=torch.bool)
    mask[0, 25:], mask[1, 10:15] = True, True
    changed = x.clone()
    changed[mask] = torch.randn(int(mask.sum()), 32) * 10
    for implementation in ("eager", "sdpa"):
        out = model.encoder(x, mask, implementation)
        torch.testing.assert_close(model.encoder(changed, mask, implementation)[~mask], out[~mask], rtol=0, atol=1e-6)
        assert not torch.allclose(model.encoder(changed, None, implementation)[~mask], out[~mask], atol=1e-3)


def test_rejects_bad_input():
    model = tiny_encoder()
    with pytest.raises(ValueError, match=r"\[batch, frames, mel_bins\]"):
        model(torch.zeros(100, 128))
    with pytest.raises(ValueError, match="smaller than one 16x16 patch"):
        model(torch.zeros(1, 15, 128))
    with pytest.raises(ValueError, match="attn_implementation"):
        BEATsEncoder(BEATsConfig(**TINY), attn_implementation="flash")


@pytest.mark.skipif(
    not all((FIXTURE / name).exists() for name in ("model.safetensors", "reference.safetensors", "reference.json")),
    reason="tests/fixtures/videollama2_tiny not generated",
)
def test_matches_official_fixture():
    """The official module's ``extract_features`` on the fixture's tiny weights (``model.audio_tower.*``) and fbank.

    The fixture ran it in float32 on the bfloat16 fbank of ``process_audio_from_video`` cast with ``.float()``.
    """
    from safetensors.torch import load_file

    official_config = json.loads((FIXTURE / "reference.json").read_text())["config"]["beats_full"]
    config = BEATsConfig.from_dict(official_config)  # the official cfg dict, training-only fields and all
    assert config == BEATsConfig(**TINY)
    prefix = "model.audio_tower."
    weights = {k.removeprefix(prefix): v for k, v in load_file(FIXTURE / "model.safetensors").items() if prefix in k}
    reference = load_file(FIXTURE / "reference.safetensors")
    model = BEATsEncoder(config).eval()
    model.load_state_dict(weights)  # strict: the keys are the official module's
    fbank, expected = reference["fbank"], reference["beats_features"]
    assert fbank.shape == (1, 2998, 128) and expected.shape == (1, 187 * 8, 32)
    for implementation in ("eager", "sdpa"):
        model.attn_implementation = implementation
        torch.testing.assert_close(model(fbank.float()), expected, rtol=1e-4, atol=1e-4)
