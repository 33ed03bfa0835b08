"""Every bad knob raises a ValueError that names the field and what is accepted."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import StaticCache

from fastav_eval.pruning import (
    ModalityLayout,
    PrefixKeep,
    PruneDecision,
    PruningConfig,
    PruningProfile,
    install,
)
from tests.conftest import CACHE_NAME, tiny_qwen2, with_cache

PROFILE = PruningProfile.prefix(audio=10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"global_rule": "rollout"},
            r"global_rule='rollout'; accepted: \['positional', 'random', 'top_attentive'",
        ),
        (
            {"fine_rule": "lowest"},
            r"fine_rule='lowest'; accepted: \['low_attentive', 'top_attentive', 'random'\]",
        ),
        ({"fine_ratio": 1.0}, r"fine_ratio=1.0; accepted: a number in \[0, 1\)"),
        ({"fine_ratio": -0.1}, r"fine_ratio=-0.1; accepted: a number in \[0, 1\)"),
        ({"global_layer": 0}, r"global_layer=0; accepted: an int in \[1, num_layers - 1\]"),
        ({"sink_tokens": -1}, r"sink_tokens=-1; accepted: an int >= 0"),
        ({"chooser": "policy"}, r"chooser='policy'; accepted: a callable or None"),
        ({"profile": 10}, r"profile=10; accepted: a PruningProfile, a JSON path, or None"),
    ],
)
def test_bad_values_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PruningConfig(profile=PROFILE, **kwargs) if "profile" not in kwargs else PruningConfig(**kwargs)


def test_global_layer_must_be_inside_the_model():
    config = PruningConfig(global_layer=6, profile=PROFILE)
    with pytest.raises(ValueError, match=r"global_layer=6; accepted: an int in \[1, 5\] for a 6-layer decoder"):
        install(tiny_qwen2(layers=6), config)
    assert config.resolve(28).global_layer == 6
    assert PruningConfig(profile=PROFILE).resolve(28).global_layer == 14, "default: half the depth"


def test_profile_must_match_the_model(tmp_path):
    calibrated = PruningProfile(keep={"audio": PrefixKeep(first_fraction=0.1)}, num_layers=28, global_layer=14)
    with pytest.raises(ValueError, match=r"profile.num_layers=28 does not match the model's 6 decoder layers"):
        install(tiny_qwen2(layers=6), PruningConfig(profile=calibrated))
    with pytest.raises(ValueError, match=r"profile.global_layer=14 does not match config global_layer=10"):
        PruningConfig(global_layer=10, profile=calibrated).resolve(28)
    with pytest.raises(ValueError, match="needs a profile"):
        PruningConfig(global_rule="random").resolve(28)
    with pytest.raises(ValueError, match=r"profile='.*missing.json' is not a file"):
        PruningConfig(profile=str(tmp_path / "missing.json")).resolve(28)
    path = tmp_path / "profile.json"
    path.write_text('{"format": "other", "keep": {}}')
    with pytest.raises(ValueError, match=r"profile format='other'; accepted: 'fastav-profile/1'"):
        PruningConfig(profile=path).resolve(28)


def test_profile_and_decision_fields():
    with pytest.raises(ValueError, match=r"profile keep key 'text' is not prunable; accepted: \['video', 'audio'\]"):
        PruningProfile(keep={"text": PrefixKeep(first_tokens=1)})
    with pytest.raises(ValueError, match="exactly one of first_tokens, first_fraction, first_chunks"):
        PrefixKeep(first_tokens=1, first_chunks=1)
    with pytest.raises(ValueError, match=r"first_fraction=1.5 must be in \[0, 1\]"):
        PrefixKeep(first_fraction=1.5)
    with pytest.raises(ValueError, match="exactly one of keep_fraction, keep_positions"):
        PruneDecision()
    with pytest.raises(ValueError, match=r"keep_fraction\['audio'\]=2.0; accepted: values in \[0, 1\]"):
        PruneDecision(keep_fraction={"audio": 2.0})
    with pytest.raises(ValueError, match=r"samples\[0\]\[1\].modality='speech' is not a modality"):
        ModalityLayout.from_segments([[("text", 2), ("speech", 3)]])


@pytest.mark.parametrize("kernel", ["flex_attention", "paged|eager", "fastav_sdpa"])
def test_unsupported_attention_and_models_are_named(kernel):
    model = tiny_qwen2()
    model.config._attn_implementation = kernel
    accepted = r"accepted: \['eager', 'sdpa', 'flash_attention_2', 'flash_attention_3'\]"
    with pytest.raises(ValueError, match=rf"attn_implementation='{re.escape(kernel)}'; {accepted}"):
        install(model, PruningConfig(profile=PROFILE))
    with pytest.raises(ValueError, match="has no supported text decoder"):
        install(model.lm_head)


def test_right_padding_and_static_caches_are_refused():
    with pytest.raises(ValueError, match="padding must be on the left"):
        ModalityLayout.from_token_ids(torch.tensor([[5, 6, 0]]), {"audio": 6}, torch.tensor([[1, 1, 0]]))
    model = tiny_qwen2()
    engine = install(model, PruningConfig(profile=PROFILE))
    cache = StaticCache(config=model.config, max_cache_len=16)
    with pytest.raises(ValueError, match=f"{CACHE_NAME}=StaticCache; accepted: DynamicCache or None"):
        model(torch.tensor([[1, 2, 3]]), **with_cache(cache))
    engine.uninstall()


def test_profile_json_round_trip(tmp_path):
    profile = PruningProfile(
        keep={"video": PrefixKeep(first_chunks=4), "audio": PrefixKeep(first_fraction=0.25)},
        num_layers=28,
        global_layer=14,
        source="rollout",
        rollout={"alpha": 0.5},
    )
    profile.save(tmp_path / "p.json")
    loaded = PruningProfile.load(tmp_path / "p.json")
    assert loaded == profile and loaded.rollout == {"alpha": 0.5}
    assert PruningConfig(profile=tmp_path / "p.json").resolve(28).profile == profile
