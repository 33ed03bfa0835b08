"""The Qwen2.5-Omni thinker (tiny config): interleaved audio-in-video chunks, TMRoPE, pruning in generate."""

from __future__ import annotations

import torch
from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

from fastav_eval.pruning import Modality, ModalityLayout, PrefixKeep, PruningConfig, PruningProfile, install
from fastav_eval.pruning.compat import output_cache
from fastav_eval.pruning.oracle import kept_masks, masked_decoder

AUDIO, VIDEO = 101, 103


def tiny_thinker() -> Qwen2_5OmniThinkerForConditionalGeneration:
    torch.manual_seed(0)
    config = Qwen2_5OmniThinkerConfig(
        audio_config=dict(
            d_model=32,
            encoder_attention_heads=4,
            encoder_ffn_dim=64,
            encoder_layers=2,
            num_mel_bins=20,
            max_source_positions=1500,
            n_window=100,
            output_dim=64,
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=4,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            out_hidden_size=64,
            fullatt_block_indexes=[1],
            window_size=112,
        ),
        text_config=dict(
            vocab_size=200,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        ),
        audio_token_index=AUDIO,
        image_token_index=102,
        video_token_index=VIDEO,
        audio_start_token_id=104,
        audio_end_token_id=105,
        user_token_id=106,
        vision_start_token_id=107,
        vision_end_token_id=108,
    )
    return Qwen2_5OmniThinkerForConditionalGeneration(config).eval()


def omni_inputs() -> dict:
    """4 video grids of 4 tokens and 100 audio tokens, interleaved in two 2-s chunks: [V×8][A×50][V×8][A×50]."""
    torch.manual_seed(1)
    ids = [1, 2, 3, 107, 104] + [VIDEO] * 8 + [AUDIO] * 50 + [VIDEO] * 8 + [AUDIO] * 50 + [105, 108, 4, 5, 6]
    input_ids = torch.tensor([ids])
    return dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        pixel_values_videos=torch.randn(64, 3 * 14 * 14 * 2),
        video_grid_thw=torch.tensor([[4, 4, 4]]),
        video_second_per_grid=torch.tensor([1.0]),
        input_features=torch.randn(1, 20, 400),
        feature_attention_mask=torch.ones(1, 400, dtype=torch.long),
        use_audio_in_video=True,
    )


def omni_layout(inputs: dict) -> ModalityLayout:
    return ModalityLayout.from_token_ids(
        inputs["input_ids"], {"video": VIDEO, "audio": AUDIO}, inputs["attention_mask"]
    )


FIRST_CHUNK = PruningConfig(
    global_layer=2,
    profile=PruningProfile(keep={"video": PrefixKeep(first_chunks=1), "audio": PrefixKeep(first_chunks=1)}),
    fine_ratio=0.3,
)


def test_layout_reads_interleaved_chunks():
    layout = omni_layout(omni_inputs())
    video = layout.modality[0] == Modality.VIDEO
    audio = layout.modality[0] == Modality.AUDIO
    assert layout.chunk[0][video].tolist() == [0] * 8 + [1] * 8
    assert layout.chunk[0][audio].tolist() == [0] * 50 + [1] * 50
    assert layout.rank[0][audio].tolist() == list(range(100))


def test_pruning_off_matches_stock_thinker():
    model, inputs = tiny_thinker(), omni_inputs()
    stock = model.generate(
        **inputs, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    engine = install(model, PruningConfig.off())
    with engine.layout(omni_layout(inputs)):
        ours = model.generate(
            **inputs, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    engine.uninstall()
    assert torch.equal(ours.sequences, stock.sequences)
    for a, b in zip(ours.logits, stock.logits, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_thinker_generates_under_pruning_and_matches_masking():
    model, inputs = tiny_thinker(), omni_inputs()
    layout = omni_layout(inputs)
    steps = []  # what the thinker hands its text model at prefill and at each decode step

    def capture(_module, _args, kwargs):
        position_ids = kwargs["position_ids"]
        steps.append((kwargs["inputs_embeds"], position_ids[1:] if position_ids.shape[0] == 4 else position_ids))

    hook = model.model.language_model.register_forward_pre_hook(capture, with_kwargs=True)
    engine = install(model, FIRST_CHUNK)
    with engine.layout(layout):
        output = model.generate(
            **inputs, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    stats = engine.last_stats
    hook.remove()
    engine.uninstall()

    cache_lengths = [layer.keys.shape[-2] for layer in output_cache(output).layers]
    assert cache_lengths[:2] == [layout.length + 3] * 2
    assert cache_lengths[3] < cache_lengths[2] < cache_lengths[1]
    # The global stage kept chunk 0 of both modalities: 8 video + 50 audio tokens.
    assert stats.modality_per_layer["video"][0, 2] == 8 and stats.modality_per_layer["audio"][0, 2] == 50
    text = set(torch.nonzero(layout.modality[0] == Modality.TEXT).flatten().tolist())
    assert all(text <= set(positions[0].tolist()) for positions in stats.kv_positions)

    # Oracle: the thinker's text model over the full sequence (prompt + generated tokens, TMRoPE positions
    # as generate produced them) with per-layer key masks; every step's logits must match.
    embeds = torch.cat([step[0] for step in steps], 1)
    position_ids = torch.cat([step[1] for step in steps], -1)
    generated = embeds.shape[1] - layout.length
    visible = [
        torch.cat([mask, torch.ones(1, generated, dtype=torch.bool)], 1)
        for mask in kept_masks(stats.kv_positions, layout.length)
    ]
    hidden, _ = masked_decoder(
        model.model.language_model, embeds, position_ids, visible, torch.ones(1, embeds.shape[1], dtype=torch.long)
    )
    assert len(output.logits) == generated + 1
    for step, logits in enumerate(output.logits):
        assert torch.allclose(model.lm_head(hidden[:, layout.length - 1 + step]), logits, atol=1e-5)
