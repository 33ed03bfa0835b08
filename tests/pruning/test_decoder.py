"""The pruned decoder against oracles: the stock model, a masking-equivalent computation, a no-cache recompute."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from fastav_eval.pruning import (
    Modality,
    ModalityLayout,
    PruneDecision,
    PruningConfig,
    PruningProfile,
    install,
    scoring,
)
from fastav_eval.pruning.compat import output_cache
from fastav_eval.pruning.oracle import kept_masks, masked_forward
from fastav_eval.pruning.rules import evenly_spaced
from fastav_eval.pruning.scoring import register_wrapper
from tests.conftest import VOCAB, tiny_llama, tiny_qwen2, with_cache

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
    cache_lengths = [layer.keys.shape[-2] for layer in output_cache(output).layers]
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
    audio_visual = layout.modality[0] > 0
    for rule in ("positional", "random", "low_attentive", "top_attentive"):
        config = PruningConfig(
            global_rule=rule, global_layer=3, profile=PruningProfile.prefix(audio=4), fine_ratio=0.0, sink_tokens=0
        )
        engine = install(model, config)
        with engine.layout(layout):
            model(input_ids)
        stats = engine.last_stats
        engine.uninstall()
        kept = kept_masks(stats.kv_positions, layout.length)[3][0]
        kept_av[rule] = set(torch.nonzero(kept & audio_visual).flatten().tolist())
        assert len(kept_av[rule]) == 16 + 4
        if rule.endswith("attentive"):
            # The oracle's last-query attention at layer K-1 = 2 separates kept from dropped tokens.
            scores = masked_forward(model, input_ids, kept_masks(stats.kv_positions, layout.length))[1][2][0]
            kept_scores, dropped_scores = scores[kept & audio_visual], scores[~kept & audio_visual]
            if rule == "low_attentive":
                assert kept_scores.min() >= dropped_scores.max()
            else:
                assert kept_scores.max() <= dropped_scores.min()
    assert kept_av["low_attentive"].isdisjoint(kept_av["top_attentive"])
    assert kept_av["positional"] == set(range(3, 23))


def test_chooser_supplies_keep_fractions_and_positions():
    model = tiny_qwen2()
    input_ids, layout = prompt()
    seen = []

    def chooser(context):
        seen.append((context.stage, context.layer_idx, context.scores is not None))
        if context.stage == "global":  # asked at layer 1, it schedules the cut for layer 3
            return PruneDecision(keep_fraction={"video": 0.5, "audio": torch.tensor([0.25])}, cut_layer=3)
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
    assert seen == [("global", 1, True), ("fine", 4, True), ("fine", 5, True)]
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


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_continuing_a_pruned_cache_with_several_tokens(attn):
    """A multi-token forward over a pruned cache (a second turn) sees each layer's own cache."""
    model = tiny_qwen2(attn=attn)
    input_ids, layout = prompt()
    extra = torch.randint(1, VOCAB, (1, 4), generator=torch.Generator().manual_seed(9))
    engine = install(model, FASTAV)
    cache = DynamicCache(config=model.config)
    with engine.layout(layout):
        model(input_ids, **with_cache(cache))
        continued = model(extra, **with_cache(cache), attention_mask=torch.ones(1, layout.length + 4)).logits
    stats = engine.last_stats
    engine.uninstall()
    visible = [torch.cat([m, torch.ones(1, 4, dtype=torch.bool)], 1) for m in kept_masks(stats.kv_positions, 48)]
    expected = masked_forward(model, torch.cat([input_ids, extra], 1), visible)[0][:, -4:]
    assert torch.allclose(continued, expected, atol=1e-5)


def test_interleaved_conversations_keep_their_own_caches():
    model = tiny_qwen2()
    (ids_a, layout_a), (ids_b, layout_b) = prompt(seed=1), prompt([("text", 2), ("audio", 30), ("text", 3)], seed=2)
    engine = install(model, FASTAV)

    def greedy_steps(ids, cache, steps):
        tokens = [ids]
        for _ in range(steps):
            logits = model(tokens[-1], **with_cache(cache)).logits[:, -1]
            tokens.append(logits.argmax(-1, keepdim=True))
        return torch.cat(tokens[1:], 1)

    alone = []
    for ids, layout in ((ids_a, layout_a), (ids_b, layout_b)):
        with engine.layout(layout):
            alone.append(greedy_steps(ids, DynamicCache(config=model.config), 4))
    cache_a, cache_b = DynamicCache(config=model.config), DynamicCache(config=model.config)
    with engine.layout(layout_a):
        first_a = greedy_steps(ids_a, cache_a, 1)
    with engine.layout(layout_b):
        first_b = greedy_steps(ids_b, cache_b, 1)
    rest_a = greedy_steps(first_a[:, -1:], cache_a, 3)
    rest_b = greedy_steps(first_b[:, -1:], cache_b, 3)
    engine.uninstall()
    assert torch.equal(torch.cat([first_a, rest_a], 1), alone[0])
    assert torch.equal(torch.cat([first_b, rest_b], 1), alone[1])


def test_stats_belong_to_the_last_prefill_and_stray_layouts_are_refused():
    model = tiny_qwen2()
    input_ids, layout = prompt()
    engine = install(model, FASTAV)
    with engine.layout(layout):
        model(input_ids)
    assert engine.last_stats is not None
    model(input_ids)  # a prefill without a layout: stock computation, no stats
    assert engine.last_stats is None
    cache = DynamicCache(config=model.config)
    model(input_ids[:, :10], **with_cache(cache))  # an unpruned cache ...
    with engine.layout(layout), pytest.raises(ValueError, match="continues a cache of 10 tokens that FastAV did not"):
        model(input_ids[:, 10:], **with_cache(cache))  # ... continued while a layout is set
    engine.uninstall()


def test_scored_wrapper_scores_only_the_requested_layer_and_runs_the_real_kernel(monkeypatch):
    """The wrapper hands the kernel its own name back (FlashAttention dispatches on it) and the same tensors."""
    seen = []

    def spy_kernel(module, query, key, value, attention_mask, **kwargs):
        seen.append((module.layer_idx, module.config._attn_implementation))
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)

    register_wrapper("spy_kernel", spy_kernel, masks_of="sdpa")
    monkeypatch.setattr(scoring, "SUPPORTED_KERNELS", (*scoring.SUPPORTED_KERNELS, "spy_kernel"))
    model = tiny_qwen2(attn="spy_kernel")
    input_ids, _ = prompt()
    stock = model(input_ids).logits
    engine = install(
        model, PruningConfig(global_rule="low_attentive", global_layer=3, profile=FASTAV.profile, fine_ratio=0.0)
    )
    sink = engine._sink
    recorded = []
    take = sink.take
    monkeypatch.setattr(sink, "take", lambda: recorded.append(sink.layer) or take())
    seen.clear()
    with engine.layout(ModalityLayout.from_segments([[("text", 48)]])):  # nothing to drop: same computation
        ours = model(input_ids).logits
    engine.uninstall()
    assert seen == [(layer, "spy_kernel") for layer in range(6)]
    # Before each layer the engine takes the scores of the layer before: only layer K-1 = 2 was asked for them.
    assert recorded == [None, None, None, 2, None, None], "scores are requested at layer K-1 only"
    assert torch.allclose(ours, stock, atol=1e-6)


def test_evenly_spaced_keeps_the_middle_of_equal_stretches():
    eligible = torch.tensor([[True] * 10, [False, True, True, False, True, True, True, False, True, True]])
    keep = evenly_spaced(eligible, torch.tensor([3, 2]))
    # row 0: floor((0.5, 1.5, 2.5) * 10 / 3) = 1, 5, 8; row 1 (7 eligible at 1,2,4,5,6,8,9): floor((0.5, 1.5) * 7 / 2)
    # = 1, 5 -> columns 2 and 8
    assert torch.nonzero(keep[0]).flatten().tolist() == [1, 5, 8]
    assert torch.nonzero(keep[1]).flatten().tolist() == [2, 8]
    assert not evenly_spaced(eligible, torch.tensor([0, 0])).any()
    assert torch.equal(evenly_spaced(eligible, torch.tensor([10, 7])), eligible)


def test_a_decision_chooses_the_order_per_modality():
    """At the global cut: video evenly spaced, audio the most attended (scores there: an attentive fine stage
    needs none at layer 2, so the global rule is low_attentive), each keeping a quarter of its tokens."""
    model = tiny_qwen2()
    input_ids, layout = prompt()
    video, audio = (torch.nonzero(layout.modality[0] == code).flatten() for code in (Modality.VIDEO, Modality.AUDIO))
    attended = {}

    def chooser(context):
        if context.stage != "global" or context.layer_idx < 3:  # None: ask again at the next layer
            return None
        is_audio = context.valid & (context.modality == Modality.AUDIO)
        top = torch.topk(context.scores[0].masked_fill(~is_audio[0], float("-inf")), len(audio) // 4).indices
        attended["audio"] = set(context.positions[0, top].tolist())
        return PruneDecision(keep_fraction={"video": 0.25, "audio": 0.25},
                             order={"video": "evenly_spaced", "audio": "most_attended"})  # fmt: skip

    config = PruningConfig(global_rule="low_attentive", global_layer=3, fine_ratio=0.0, sink_tokens=0,
                           chooser=chooser, profile=PruningProfile.prefix(video=1, audio=1))  # fmt: skip
    engine = install(model, config)
    with engine.layout(layout):
        model(input_ids)
    kept = set(engine.last_stats.kv_positions[3][0].tolist())
    engine.uninstall()
    count = len(video) // 4
    spread = {int(video[int((i + 0.5) * len(video) / count)]) for i in range(count)}
    assert kept & set(video.tolist()) == spread
    assert kept & set(audio.tolist()) == attended["audio"]


def test_bad_decision_orders_are_named():
    with pytest.raises(ValueError, match=r"order\['audio'\]='middle'; accepted: \['rule', 'prefix', 'evenly_spaced'"):
        PruneDecision(keep_fraction={"audio": 0.5}, order={"audio": "middle"})
    with pytest.raises(ValueError, match="order applies to keep_fraction"):
        PruneDecision(keep_positions=torch.tensor([[1]]), order={"audio": "prefix"})


def test_per_sample_cut_layers_and_fine_ratios_equal_masking():
    """A batch of two cut at layers 1 and 4 with fine ratios 0 and 0.5: each row's logits equal the masked oracle's
    over the kept sets its stats report, and the counts follow each row's own schedule."""
    model = tiny_qwen2()
    samples = [SEGMENTS, SEGMENTS]
    prompts = [prompt(segments, seed=seed) for seed, segments in enumerate(samples, start=5)]
    input_ids = torch.cat([ids for ids, _ in prompts])
    layout = ModalityLayout.from_segments(samples)
    calls = []

    def chooser(context):
        calls.append((context.layer_idx, context.undecided.tolist()))
        return PruneDecision(keep_fraction={"video": 0.5, "audio": 0.25}, order={"video": "evenly_spaced"},
                             cut_layer=torch.tensor([1, 4]), fine_ratio=torch.tensor([0.0, 0.5]))  # fmt: skip

    config = PruningConfig(global_rule=None, global_layer=5, fine_ratio=0.2, sink_tokens=0, chooser=chooser)
    engine = install(model, config)
    with engine.layout(layout):
        logits = model(input_ids).logits[:, -1]
    stats = engine.last_stats
    engine.uninstall()
    assert calls == [(1, [True, True])]  # decided once, for both rows
    video, audio = stats.modality_per_layer["video"].tolist(), stats.modality_per_layer["audio"].tolist()
    assert video[0] == [16, 8, 8, 8, 8, 8] and audio[0] == [24, 6, 6, 6, 6, 6]  # cut at 1, no fine steps
    assert video[1][:5] == [16, 16, 16, 16, 8] and audio[1][:5] == [24, 24, 24, 24, 6]  # cut at 4
    assert video[1][5] + audio[1][5] == 7  # then its fine step drops half of the 14 (pooled over modalities)
    oracle, _ = masked_forward(model, input_ids, kept_masks(stats.kv_positions, layout.length))
    assert torch.allclose(logits, oracle[:, -1], atol=1e-5)


def test_a_chooser_can_wait_and_undecided_samples_get_the_global_rule():
    model = tiny_qwen2()
    input_ids = torch.cat([prompt(seed=seed)[0] for seed in (7, 8)])
    layout = ModalityLayout.from_segments([SEGMENTS, SEGMENTS])
    asked = []

    def chooser(context):
        asked.append((context.layer_idx, context.undecided.tolist()))
        if context.layer_idx == 2:  # decides row 0 only, to be cut now
            return PruneDecision(keep_fraction={"audio": 0.0}, rows=torch.tensor([True, False]))
        return None

    config = PruningConfig(global_layer=3, profile=PruningProfile.prefix(audio=4), fine_ratio=0.0, sink_tokens=0,
                           chooser=chooser)  # fmt: skip
    engine = install(model, config)
    with engine.layout(layout):
        model(input_ids)
    audio = engine.last_stats.modality_per_layer["audio"].tolist()
    engine.uninstall()
    # Then asked at the fine steps after global_layer, where no sample is undecided.
    assert asked == [(1, [True, True]), (2, [True, True]), (3, [False, True]), (4, [False, False]), (5, [False, False])]
    assert audio == [[24, 24, 0, 0, 0, 0], [24, 24, 24, 4, 4, 4]]  # row 1: the profile's prefix at layer 3


def test_bad_cut_layers_and_ratios_are_named():
    model = tiny_qwen2()
    input_ids, layout = prompt()

    def chooser(context):
        return PruneDecision(keep_fraction={"audio": 0.5}, cut_layer=5)

    engine = install(model, PruningConfig(global_rule=None, global_layer=3, sink_tokens=0, chooser=chooser))
    with engine.layout(layout), pytest.raises(ValueError, match=r"cut_layer=5; accepted: 1\.\.3"):
        model(input_ids)
    engine.uninstall()
    with pytest.raises(ValueError, match=r"fine_ratio=1.0; accepted: values in \[0, 1\)"):
        PruneDecision(keep_fraction={"audio": 0.5}, fine_ratio=1.0)
    with pytest.raises(ValueError, match=r"cut_layer=-1; accepted: ints >= 0"):
        PruneDecision(keep_fraction={"audio": 0.5}, cut_layer=-1)


def test_float32_and_python_fractions_keep_the_same_count():
    """0.15 of 10 tokens: 1.5 in exact arithmetic, 1.5000000596 as a float32; both keep 2 (round half up)."""
    from fastav_eval.pruning.rules import keep_budget

    counts = torch.tensor([10, 30, 7])
    for fraction in (0.15, 0.35, 0.05, 0.5, 0.25):
        as_float32 = keep_budget(counts, torch.tensor(fraction, dtype=torch.float32))
        assert torch.equal(as_float32, keep_budget(counts, fraction)), fraction
    assert keep_budget(torch.tensor([10]), 0.15).tolist() == [2]
    assert keep_budget(torch.tensor([10]), 0.25).tolist() == [3]  # 2.5 rounds up


def test_evenly_spaced_chunks_keep_whole_chunks():
    """Video as 4 frames of 4 tokens: half the chunks, evenly spaced, are frames 1 and 3 (the middle of each half)."""
    model = tiny_qwen2()
    frames = [("video", 4, frame) for frame in range(4)]
    segments = [("text", 3), *frames, ("audio", 24), ("text", 5)]
    input_ids, layout = prompt(segments)

    def chooser(context):
        return PruneDecision(keep_fraction={"video": 0.5}, order={"video": "evenly_spaced_chunks"})

    engine = install(model, PruningConfig(global_rule=None, global_layer=3, fine_ratio=0.0, sink_tokens=0,
                                          chooser=chooser))  # fmt: skip
    with engine.layout(layout):
        model(input_ids)
    kept = set(engine.last_stats.kv_positions[1][0].tolist())
    engine.uninstall()
    assert kept & set(range(3, 19)) == set(range(7, 11)) | set(range(15, 19))


def test_a_list_of_decisions_for_disjoint_rows_equals_each_decision_alone():
    """Row 0 keeps the most-attended audio quarter, row 1 an evenly spaced quarter, in one call (two decisions):
    each row keeps what its decision alone keeps it, and its logits equal the masked oracle's."""
    model = tiny_qwen2()
    input_ids = torch.cat([prompt(seed=seed)[0] for seed in (7, 8)])
    layout = ModalityLayout.from_segments([SEGMENTS, SEGMENTS])

    def decisions(rows):
        return [
            PruneDecision(keep_fraction={"audio": 0.25}, order={"audio": order}, rows=torch.tensor(mask), cut_layer=2)
            for order, mask in (("most_attended", [True, False]), ("evenly_spaced", [False, True]))
            if any(m and r for m, r in zip(mask, rows, strict=True))
        ]

    def run(ids, rows_layout, chooser):
        engine = install(model, PruningConfig.chosen_by(chooser, sink_tokens=0))
        with engine.layout(rows_layout):
            logits = model(ids).logits[:, -1]
        stats = engine.last_stats
        engine.uninstall()
        return logits, stats

    both, stats = run(input_ids, layout, lambda context: decisions([True, True]) if context.layer_idx == 1 else None)
    single = ModalityLayout.from_segments([SEGMENTS])
    for row, rows in ((0, [True, False]), (1, [False, True])):
        alone = [decision for decision in decisions(rows)]
        only = [PruneDecision(keep_fraction=d.keep_fraction, order=d.order, cut_layer=2) for d in alone]
        _, own = run(
            input_ids[row : row + 1], single, lambda context, only=only: only if context.layer_idx == 1 else None
        )
        assert stats.kv_positions[2][row].tolist() == own.kv_positions[2][0].tolist()
    oracle, _ = masked_forward(model, input_ids, kept_masks(stats.kv_positions, layout.length))
    assert torch.allclose(both, oracle[:, -1], atol=1e-5)
    assert stats.decisions[0]["order"] == {"audio": "most_attended"}
    assert stats.decisions[1]["order"] == {"audio": "evenly_spaced"}


def test_overlapping_decisions_of_one_call_are_refused():
    model = tiny_qwen2()
    input_ids, layout = prompt()
    twice = [PruneDecision(keep_fraction={"audio": 0.5}), PruneDecision(keep_fraction={"audio": 0.25})]
    engine = install(model, PruningConfig.chosen_by(lambda context: twice))
    with (
        pytest.raises(ValueError, match="both decide sample 0; give each decision of a list disjoint rows"),
        engine.layout(layout),
    ):
        model(input_ids)
    engine.uninstall()
    engine = install(model, PruningConfig.chosen_by(lambda context: ["keep all"]))
    with pytest.raises(TypeError, match="a chooser returned str"), engine.layout(layout):
        model(input_ids)
    engine.uninstall()
