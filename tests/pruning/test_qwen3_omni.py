"""The engine in Qwen3-Omni's thinker (tiny config: a mixture of experts, DeepStack after layers 0-2): pruned
generate against a masked recompute of the stock decoder that adds DeepStack's features as the stock one does,
for a cut before layer 1 (inside DeepStack's layers) and one before layer 3 (after them)."""

from __future__ import annotations

import pytest
import torch

from fastav_eval.pruning import ModalityLayout, PrefixKeep, PruningConfig, PruningProfile, install
from fastav_eval.pruning.compat import DEEPSTACK_METHOD
from fastav_eval.pruning.oracle import kept_masks, masked_decoder
from tests.models.qwen3_omni_fixtures import tiny_thinker, tiny_thinker_config


def thinker_inputs(model) -> dict:
    """4 video grids of 3×3 tokens and 52 audio tokens (4 s), merged by time as the thinker orders them."""
    config = model.config
    torch.manual_seed(1)
    grids, per_grid, audio = 4, 9, 52
    times = [t * 1.0 * config.position_id_per_seconds for t in range(grids) for _ in range(per_grid)]
    order, v, a = [], 0, 0
    while v < len(times) and a < audio:
        if times[v] <= a:
            order, v = [*order, config.video_token_id], v + 1
        else:
            order, a = [*order, config.audio_token_id], a + 1
    order += [config.video_token_id] * (len(times) - v) + [config.audio_token_id] * (audio - a)
    ids = [40, 41, 42, config.vision_start_token_id, config.audio_start_token_id, *order]
    ids += [config.audio_end_token_id, config.vision_end_token_id, 43, 44, 45]  # words, not special tokens
    input_ids = torch.tensor([ids])
    return dict(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
        pixel_values_videos=torch.randn(grids * 36, 3 * 16 * 16 * 2), video_grid_thw=torch.tensor([[grids, 6, 6]]),
        video_second_per_grid=torch.tensor([1.0]), input_features=torch.randn(1, 20, 400),
        feature_attention_mask=torch.ones(1, 400, dtype=torch.long), use_audio_in_video=True,
    )  # fmt: skip


def layout_of(model, inputs) -> ModalityLayout:
    config = model.config
    tokens = {"video": config.video_token_id, "audio": config.audio_token_id}
    return ModalityLayout.from_token_ids(inputs["input_ids"], tokens, inputs["attention_mask"])


def generate(model, inputs):
    return model.generate(**inputs, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)


def test_pruning_off_is_the_stock_thinker():
    model = tiny_thinker()
    inputs = thinker_inputs(model)
    stock = generate(model, inputs)
    engine = install(model, PruningConfig.off())
    with engine.layout(layout_of(model, inputs)):
        ours = generate(model, inputs)
    engine.uninstall()
    assert torch.equal(ours.sequences, stock.sequences)
    for a, b in zip(ours.logits, stock.logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert DEEPSTACK_METHOD not in vars(model.model.language_model)  # uninstall restores the stock method


@pytest.mark.parametrize("cut", [1, 3])
def test_pruned_generate_is_the_masked_recompute_with_deepstack(cut):
    model = tiny_thinker()
    inputs = thinker_inputs(model)
    layout = layout_of(model, inputs)
    text_model = model.model.language_model
    steps = []

    def capture(_module, _args, kwargs):
        positions = kwargs["position_ids"]
        steps.append((kwargs["inputs_embeds"], positions[1:], kwargs.get("visual_pos_masks"),
                      kwargs.get("deepstack_visual_embeds")))  # fmt: skip

    keep = PruningProfile(keep={"video": PrefixKeep(first_chunks=1), "audio": PrefixKeep(first_chunks=1)})
    hook = text_model.register_forward_pre_hook(capture, with_kwargs=True)
    engine = install(model, PruningConfig(global_layer=cut, profile=keep, fine_ratio=0.3))
    with engine.layout(layout):
        output = generate(model, inputs)
    stats = engine.last_stats
    hook.remove()
    engine.uninstall()
    assert stats.tokens_per_layer[0, cut] < layout.length  # the cut happened where asked
    embeds = torch.cat([step[0] for step in steps], 1)
    positions = torch.cat([step[1] for step in steps], -1)
    length, generated = layout.length, embeds.shape[1] - layout.length
    visual, features = steps[0][2], steps[0][3]
    assert visual is not None and len(features) == 3  # DeepStack ran, after layers 0, 1 and 2
    visual = torch.cat([visual, torch.zeros(1, generated, dtype=torch.bool)], 1)
    visible = [
        torch.cat([mask, torch.ones(1, generated, dtype=torch.bool)], 1)
        for mask in kept_masks(stats.kv_positions, length)
    ]

    def deepstack(layer: int, hidden: torch.Tensor) -> torch.Tensor:  # every visual position, pruned or not
        return text_model._deepstack_process(hidden, visual, features[layer]) if layer < len(features) else hidden

    with torch.no_grad():
        hidden, _ = masked_decoder(text_model, embeds, positions, visible, torch.ones(1, embeds.shape[1]).long(),
                                   after_layer=deepstack)  # fmt: skip
    for step, logits in enumerate(output.logits):
        torch.testing.assert_close(model.lm_head(hidden[:, length - 1 + step]), logits, atol=1e-5, rtol=0)


def test_a_cut_inside_deepstack_needs_the_engine_to_take_the_kept_features():
    """Without the engine's DeepStack wrapper, a cut before layer 1 hands the stock method a pruned row count."""
    model = tiny_thinker()
    inputs = thinker_inputs(model)
    keep = PruningProfile(keep={"video": PrefixKeep(first_chunks=1), "audio": PrefixKeep(first_chunks=1)})
    engine = install(model, PruningConfig(global_layer=1, profile=keep, fine_ratio=0.0))
    text_model = model.model.language_model
    del text_model._deepstack_process  # the stock method again
    with engine.layout(layout_of(model, inputs)), pytest.raises((IndexError, RuntimeError)):
        generate(model, inputs)


def test_the_decoder_shape_counts_experts():
    from fastav_eval.pruning import DecoderShape

    shape = DecoderShape.from_config(tiny_thinker_config().text_config)
    assert (shape.num_experts, shape.num_experts_per_tok, shape.moe_intermediate_size) == (4, 2, 32)
    assert shape.dense_layers == ()
    sparse_every_2nd = DecoderShape.from_config(tiny_thinker_config(decoder_sparse_step=2).text_config)
    assert sparse_every_2nd.dense_layers == (0, 2)
    dense_first = DecoderShape.from_config(tiny_thinker_config(mlp_only_layers=[0]).text_config)
    assert dense_first.dense_layers == (0,)
