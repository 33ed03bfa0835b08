"""The pruned decoder against oracles: the stock model, a masking-equivalent computation, a no-cache recompute."""

from __future__ import annotations

import pytest
import torch

from fastav_eval.pruning import (
    Modality,
    ModalityLayout,
    PruneDecision,
    PruningConfig,
    PruningProfile,
    install,
)
from tests.conftest import VOCAB, tiny_llama, tiny_qwen2
from tests.pruning.oracle import kept_masks, masked_forward

SEGMENTS = [("text", 3), ("video", 16), ("audio", 24), ("text", 5)]  # 48 tokens, VideoLLaMA2's order
FASTAV = PruningConfig(global_layer=3, profile=PruningProfile.prefix(audio=4), fine_ratio=0.3, sink_tokens=1)


def prompt(segments=SEGMENTS, seed: int = 1) -> tuple[torch.Tensor, ModalityLayout]:
    generator = torch.Generator().manual_seed(seed)
    layout = ModalityLayout.from_segments([segments])
    return torch.randint(1, VOCAB, (1, layout.length), generator=generator), layout


@pytest.mark.parametrize("build", [tiny_qwen2, tiny_llama])
def test_pruning_off_matches_stock_model(build):
    model = build()
    input_ids, layout = prompt()
    stock = model(input_ids).logits
    engine = install(model, PruningConfig.off())
    with engine.layout(layout):
        ours = model(input_ids).logits
        generated = model.generate(input_ids, max_new_tokens=5, do_sample=False)
    engine.uninstall()
    assert torch.allclose(ours, stock, atol=1e-5)
    assert torch.equal(generated, model.generate(input_ids, max_new_tokens=5, do_sample=False))


def test_install_is_reversible():
    model = tiny_qwen2()
    input_ids, layout = prompt()
    stock = model(input_ids).logits
    engine = install(model, FASTAV)
    assert model.config._attn_implementation == "fastav_sdpa"
    with pytest.raises(ValueError, match="already installed"):
        install(model, FASTAV)
    with engine.layout(layout):
        assert model(input_ids).logits.shape[1] < input_ids.shape[1]
    engine.uninstall()
    assert model.config._attn_implementation == "sdpa"
    assert "forward" not in vars(model.model)
    assert torch.equal(model(input_ids).logits, stock)


@pytest.mark.parametrize("build", [tiny_qwen2, tiny_llama])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_dropping_equals_masking(build, attn):
    model = build(attn=attn)
    input_ids, layout = prompt()
    engine = install(model, FASTAV)
    with engine.layout(layout):
        pruned_last = model(input_ids).logits[:, -1]
    stats = engine.last_stats
    engine.uninstall()
    visible = kept_masks(stats.kv_positions, layout.length)
    oracle_logits, oracle_scores = masked_forward(model, input_ids, visible)
    assert torch.allclose(pruned_last, oracle_logits[:, -1], atol=1e-5)

    # The global stage kept the profile's prefix: every video token and the first 4 audio tokens.
    global_kept = visible[3][0]
    audio = layout.modality[0] == Modality.AUDIO
    assert global_kept[layout.modality[0] == Modality.VIDEO].all()
    assert global_kept[audio].sum() == 4 and global_kept[audio][:4].all()
    assert visible[2].all(), "layers before global_layer see every token"

    # Each fine step dropped floor(0.3 * n) of the droppable tokens, the ones the oracle's last query attends least.
    protected = layout.protected(sink_tokens=1)[0]
    for layer_idx in range(4, len(visible)):
        before, after = visible[layer_idx - 1][0], visible[layer_idx][0]
        droppable = before & ~protected
        dropped = before & ~after
        assert int(dropped.sum()) == int(0.3 * int(droppable.sum()))
        scores = oracle_scores[layer_idx - 1][0]
        if dropped.any():
            assert scores[dropped].max() <= scores[droppable & after].min() + 1e-6


def test_sdpa_equals_eager_under_pruning():
    input_ids, layout = prompt()
    results = []
    for attn in ("sdpa", "eager"):
        model = tiny_qwen2(attn=attn)
        engine = install(model, FASTAV)
        with engine.layout(layout):
            logits = model(input_ids).logits
        results.append((logits, engine.last_stats.kv_positions))
        engine.uninstall()
    (sdpa_logits, sdpa_kept), (eager_logits, eager_kept) = results
    assert all(torch.equal(a, b) for a, b in zip(sdpa_kept, eager_kept, strict=True))
    assert torch.allclose(sdpa_logits, eager_logits, atol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cached_generate_equals_no_cache_recompute(attn):
    model = tiny_qwen2(attn=attn)
    input_ids, layout = prompt()
    engine = install(model, FASTAV)
    with engine.layout(layout):
        output = model.generate(
            input_ids, max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    stats = engine.last_stats
    cache_lengths = [layer.keys.shape[-2] for layer in output.past_key_values.layers]
    engine.uninstall()

    prompt_length = layout.length
    new_tokens = output.sequences[0, prompt_length:]
    assert cache_lengths[0] == prompt_length + len(new_tokens) - 1
    assert cache_lengths[-1] < cache_lengths[3] < cache_lengths[0], "deeper layers hold shorter caches"
    prompt_visible = kept_masks(stats.kv_positions, prompt_length)
    for step in range(len(new_tokens)):
        sequence = output.sequences[:, : prompt_length + step]
        visible = [torch.cat([mask, torch.ones(1, step, dtype=torch.bool)], 1) for mask in prompt_visible]
        recomputed = masked_forward(model, sequence, visible)[0][:, -1]
        assert torch.allclose(output.logits[step], recomputed, atol=1e-4)
        assert int(recomputed.argmax()) == int(new_tokens[step])


def test_generate_from_inputs_embeds():
    """VideoLLaMA2's path: the LLM is fed embeddings and generate returns the new tokens only."""
    model = tiny_qwen2()
    input_ids, layout = prompt()
    embeds = model.model.embed_tokens(input_ids)
    engine = install(model, FASTAV)
    with engine.layout(layout):
        from_embeds = model.generate(inputs_embeds=embeds, max_new_tokens=4, do_sample=False)
        from_ids = model.generate(input_ids, max_new_tokens=4, do_sample=False)
    engine.uninstall()
    assert torch.equal(from_embeds[0], from_ids[0, layout.length :])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_left_padded_batch_equals_each_sample_alone(attn):
    model = tiny_qwen2(attn=attn)
    samples = [SEGMENTS, [("text", 2), ("video", 8), ("audio", 10), ("text", 3)]]
    prompts = [prompt(segments, seed=seed) for seed, segments in enumerate(samples, start=3)]
    engine = install(model, FASTAV)

    singles = []
    for input_ids, layout in prompts:
        with engine.layout(layout):
            out = model.generate(
                input_ids, max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True
            )
        singles.append((out, engine.last_stats))

    length = max(ids.shape[1] for ids, _ in prompts)
    batch_ids = torch.zeros(2, length, dtype=torch.long)
    batch_mask = torch.zeros(2, length, dtype=torch.long)
    for row, (ids, _) in enumerate(prompts):
        batch_ids[row, length - ids.shape[1] :] = ids[0]
        batch_mask[row, length - ids.shape[1] :] = 1
    batch_layout = ModalityLayout.from_segments(samples)
    with engine.layout(batch_layout):
        batch = model.generate(
            batch_ids,
            attention_mask=batch_mask,
            max_new_tokens=5,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    batch_stats = engine.last_stats
    engine.uninstall()

    for row, (single, single_stats) in enumerate(singles):
        assert torch.equal(batch.sequences[row, length:], single.sequences[0, prompts[row][0].shape[1] :])
        for step_logits, single_logits in zip(batch.logits, single.logits, strict=True):
            assert torch.allclose(step_logits[row], single_logits[0], atol=1e-4)
        assert torch.equal(batch_stats.tokens_per_layer[row], single_stats.tokens_per_layer[0])


def test_text_and_last_token_are_never_dropped():
    model = tiny_qwen2()
    input_ids, layout = prompt([("text", 2), ("video", 12), ("text", 2), ("audio", 20), ("video", 4)])
    config = PruningConfig(
        global_layer=1, profile=PruningProfile.prefix(video=0, audio=0), fine_ratio=0.9, sink_tokens=0
    )
    engine = install(model, config)
    with engine.layout(layout):
        model.generate(input_ids, max_new_tokens=2, do_sample=False)
    stats = engine.last_stats
    engine.uninstall()
    text = torch.nonzero(layout.modality[0] == Modality.TEXT).flatten().tolist()
    last = layout.length - 1
    for positions in stats.kv_positions:
        kept = set(positions[0].tolist())
        assert set(text) <= kept and last in kept
    assert stats.tokens_per_layer[0, -1] == len(text) + 1, "every droppable token but the last is gone"


def test_attentive_global_rules_keep_the_profile_budget():
    model = tiny_qwen2()
    input_ids, layout = prompt()
    kept_av = {}
    for rule in ("positional", "random", "low_attentive", "top_attentive"):
        config = PruningConfig(
            global_rule=rule,
            global_layer=3,
            profile=PruningProfile.prefix(audio=4),
            fine_ratio=0.0,
            sink_tokens=0,
        )
        engine = install(model, config)
        with engine.layout(layout):
            model(input_ids)
        stats = engine.last_stats
        engine.uninstall()
        kept_av[rule] = set(stats.kv_positions[3][0].tolist()) - set(range(3)) - set(range(43, 48))
        assert len(kept_av[rule]) == 16 + 4
    assert kept_av["low_attentive"].isdisjoint(kept_av["top_attentive"])
    assert kept_av["positional"] == set(range(3, 23))


def test_chooser_supplies_keep_fractions_and_positions():
    model = tiny_qwen2()
    input_ids, layout = prompt()
    seen = []

    def chooser(context):
        seen.append((context.stage, context.layer_idx, context.scores is not None))
        if context.stage == "global":
            return PruneDecision(keep_fraction={"video": 0.5, "audio": torch.tensor([0.25])})
        if context.layer_idx == 5:
            keep = context.positions[context.valid & (context.modality == Modality.VIDEO)][:2]
            return PruneDecision(keep_positions=keep[None])
        return None

    engine = install(
        model, PruningConfig(global_rule=None, global_layer=3, fine_ratio=0.0, sink_tokens=0, chooser=chooser)
    )
    with engine.layout(layout):
        model(input_ids)
    stats = engine.last_stats
    engine.uninstall()
    assert seen == [("global", 3, True), ("fine", 4, True), ("fine", 5, True)]
    assert stats.modality_per_layer["video"][0].tolist() == [16, 16, 16, 8, 8, 2]
    assert stats.modality_per_layer["audio"][0].tolist() == [24, 24, 24, 6, 6, 0]


def test_layout_that_does_not_match_the_input_is_rejected():
    model = tiny_qwen2()
    input_ids, _ = prompt()
    engine = install(model, FASTAV)
    with (
        engine.layout(ModalityLayout.from_segments([[("text", 4), ("audio", 4)]])),
        pytest.raises(ValueError, match=r"layout is \[1, 8\] but the prefill input is \[1, 48\]"),
    ):
        model(input_ids)
    engine.uninstall()
