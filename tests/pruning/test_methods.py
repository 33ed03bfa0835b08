"""The other pruning methods (fastav_eval.pruning.methods) against direct implementations of their papers'
equations written here, and through the engine: cuts before the decoder (layer 0) and PyramidDrop's stages equal
the masked recompute of the stock model, in left-padded batches, with FLOPs counted against the whole prompt."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastav_eval.models.model_args import pruning_config
from fastav_eval.pruning import Modality, ModalityLayout, install
from fastav_eval.pruning.methods import METHODS, DivPrune, PyramidDrop, RandomInput, max_min_diversity
from fastav_eval.pruning.oracle import kept_masks, masked_forward
from fastav_eval.records import SampleRecord
from tests.conftest import tiny_qwen2

SEGMENTS = [
    [("text", 5), ("video", 20), ("audio", 16), ("text", 4)],
    [("text", 2), ("video", 12), ("audio", 10), ("text", 5)],
]


def batch() -> tuple[torch.Tensor, torch.Tensor, ModalityLayout]:
    """Two left-padded prompts of different lengths: ids, mask, layout."""
    layout = ModalityLayout.from_segments(SEGMENTS)
    generator = torch.Generator().manual_seed(5)
    ids = torch.randint(1, 90, (2, layout.length), generator=generator).masked_fill(~layout.valid, 0)
    return ids, layout.valid.long(), layout


def divprune_by_the_paper(x: np.ndarray, k: int) -> list[int]:
    """DivPrune's MMDP greedy, written from its equations: D = 1 - cos; first argmax_i min_{j != i} D_ij, then
    argmax_i min_{s in S} D_is over the tokens not chosen."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    distance = 1.0 - unit @ unit.T
    n = len(x)
    first = max(range(n), key=lambda i: min(distance[i, j] for j in range(n) if j != i))
    chosen = [first]
    while len(chosen) < k:
        rest = [i for i in range(n) if i not in chosen]
        chosen.append(max(rest, key=lambda i: min(distance[i, s] for s in chosen)))
    return chosen


@pytest.mark.parametrize(("n", "k"), [(12, 3), (30, 9), (5, 5)])
def test_divprune_selection_is_the_papers(n, k):
    x = np.random.default_rng(n).normal(size=(n, 16)).astype(np.float64)
    assert max_min_diversity(torch.tensor(x), k).tolist() == divprune_by_the_paper(x, k)


def generate(model, ids, mask, layout, method):
    engine = install(model, method.config())
    with engine.layout(layout), torch.no_grad():
        output = model.generate(
            ids, attention_mask=mask, max_new_tokens=3, do_sample=False, output_logits=True,
            return_dict_in_generate=True, pad_token_id=0,
        )  # fmt: skip
    stats = engine.last_stats
    engine.uninstall()
    return output, stats, engine.shape


def assert_masked_recompute(model, ids, mask, layout, output, stats) -> None:
    """Every step's logits equal the stock layers over [prompt + answer] with each layer's keys limited to what it
    kept (pruning.oracle), the padding masked."""
    length = layout.length
    for step, logits in enumerate(output.logits):
        sequence = output.sequences[:, : length + step]
        full_mask = torch.cat([mask, torch.ones(2, step, dtype=torch.long)], 1)
        visible = [
            torch.cat([m, torch.ones(2, step, dtype=torch.bool)], 1) for m in kept_masks(stats.kv_positions, length)
        ]
        with torch.no_grad():
            expected = masked_forward(model, sequence, visible, full_mask)[0][:, -1]
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["random", "divprune"])
def test_a_cut_before_the_decoder_is_the_masked_recompute(name):
    model = tiny_qwen2()
    ids, mask, layout = batch()
    method = METHODS[name](retain=0.5)
    output, stats, shape = generate(model, ids, mask, layout, method)
    assert_masked_recompute(model, ids, mask, layout, output, stats)
    av = [int(((layout.modality[b] > 0) & layout.valid[b]).sum()) for b in range(2)]  # 36 and 22
    protected = [0, 2]  # the 4 sink tokens cover 2 video tokens of the second prompt
    kept = stats.modality_per_layer["video"] + stats.modality_per_layer["audio"]  # [B, layers]
    for b in range(2):
        budget = int(np.floor((av[b] - protected[b]) * 0.5 + 0.5))
        assert kept[b].tolist() == [budget + protected[b]] * 6  # layer 0 already sees the cut
    prompt = stats.prompt_tokens.tolist()
    assert prompt == [45, 29] and stats.tokens_per_layer[:, 0].tolist() != prompt
    # FLOPs against the whole prompt: every layer at n kept of N is f(n) / f(N)
    from fastav_eval.pruning.flops import layer_flops

    for b in range(2):
        n, whole = int(stats.tokens_per_layer[b, 0]), prompt[b]
        expected = 100 * float(layer_flops(torch.tensor(n), shape) / layer_flops(torch.tensor(whole), shape))
        assert float(stats.relative_flops(shape)[b]) == pytest.approx(expected)


def test_divprune_keeps_the_most_diverse_input_embeddings():
    model = tiny_qwen2()
    ids, mask, layout = batch()
    _, stats, _ = generate(model, ids, mask, layout, DivPrune(retain=0.25))
    embeds = model.model.embed_tokens(ids).detach()
    for b in range(2):
        eligible = ((layout.modality[b] > 0) & layout.valid[b]).nonzero().flatten()
        first_real = int(layout.length - layout.valid[b].sum())
        eligible = eligible[eligible >= first_real + 4]  # the 4 sink tokens are protected, not chosen
        k = int(np.floor(len(eligible) * 0.25 + 0.5))
        chosen = set(eligible[divprune_by_the_paper(embeds[b, eligible].double().numpy(), k)].tolist())
        kept = set(stats.kv_positions[0][b].tolist()) & set(eligible.tolist())
        assert kept == chosen, b


def test_pyramiddrop_keeps_lambda_by_last_token_attention_at_each_stage():
    """Oracle: the last query's head-averaged attention of each stage layer, from the masked recompute, ranks the
    tokens; each stage keeps the top half (lambda 0.5) of what was left."""
    model = tiny_qwen2(layers=8)
    ids, mask, layout = batch()
    method = PyramidDrop()
    assert method.cut_layers(8) == (2, 4, 6) and method.cut_layers(28) == (7, 14, 21)
    assert method.cut_layers(32) == (8, 16, 24)  # its release: layer 8 is the first to see the reduced tokens
    output, stats, _ = generate(model, ids, mask, layout, method)
    assert_masked_recompute(model, ids, mask, layout, output, stats)
    visible = kept_masks(stats.kv_positions, layout.length)
    with torch.no_grad():
        _, last_rows = masked_forward(model, ids, visible, mask)
    for cut in method.cut_layers(8):
        for b in range(2):
            before = set(stats.kv_positions[cut - 1][b].tolist()) - {-1}
            droppable = [p for p in before if p >= 4 + (layout.length - layout.valid[b].sum()) and
                         int(layout.modality[b, p]) in (Modality.VIDEO, Modality.AUDIO)]  # fmt: skip
            k = int(np.floor(len(droppable) * 0.5 + 0.5))
            ranked = sorted(droppable, key=lambda p: (-float(last_rows[cut - 1][b, p]), p))
            kept = set(stats.kv_positions[cut][b].tolist()) & set(droppable)
            assert kept == set(ranked[:k]), (cut, b)


def test_random_is_seeded_and_a_record_carries_the_prompt_before_the_cut():
    model = tiny_qwen2()
    ids, mask, layout = batch()
    _, first, shape = generate(model, ids, mask, layout, RandomInput(retain=0.3))
    _, again, _ = generate(model, ids, mask, layout, RandomInput(retain=0.3))
    assert all(torch.equal(a, b) for a, b in zip(first.kv_positions, again.kv_positions, strict=True))
    record = SampleRecord.measured("random", first.sample(0, shape), 3, 1.0)
    assert record.input_tokens == 45 and record.video_tokens == 20 and record.audio_tokens == 16
    assert record.prompt_per_modality == {"text": 9, "video": 20, "audio": 16}
    assert record.retention == pytest.approx(100 * (first.modality_per_layer["video"][0, 0] +
                                                    first.modality_per_layer["audio"][0, 0]).item() / 36)  # fmt: skip
    assert SampleRecord.from_dict(record.to_dict()) == record


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"prune": "divprune"}, 0.098),
        ({"prune": "divprune", "retain": 0.4}, 0.4),
        ({"prune": "pdrop"}, 0.5),
        ({"prune": "vidcom2"}, 0.25),
        ({"prune": "vidcom2_av"}, 0.25),
        ({"prune": "seats"}, 0.30),
    ],
)
def test_prune_names_a_method_with_its_published_default(args, expected):
    config = pruning_config(args.pop("prune"), args, None)
    assert config.chooser.retain == expected and config.global_rule is None


def test_seats_takes_its_audio_target():
    config = pruning_config("seats", {"retain": 0.2, "audio_retain": 0.55}, None)
    assert config.chooser.targets() == {"video": 0.2, "audio": 0.55}
    assert pruning_config("seats", {}, None).chooser.targets() == pytest.approx({"video": 0.30, "audio": 0.65})


@pytest.mark.parametrize(
    ("prune", "args", "message"),
    [
        (
            "divprune",
            {"fine_ratio": 0.2},
            r"prune=divprune takes only \['retain', 'audio_retain', 'sink_tokens', 'seed'\]",
        ),
        ("divprune", {"audio_retain": 0.5}, "audio_retain= is a knob of prune=seats; prune=divprune has none"),
        ("seats", {"audio_retain": 1.5}, "audio_retain"),
        ("fastav", {"audio_retain": 0.5}, r"audio_retain= is the budget of a method \(prune=seats\)"),
        ("fastav", {"retain": 0.5}, "retain= is the budget of a method"),
        ("divprune", {"retain": 0.0}, r"retain.*accepted: a number in \(0, 1\]"),
        ("nonesuch", {}, "accepted: fastav, none, random, divprune, pdrop, vidcom2, vidcom2_av, seats"),
    ],
)
def test_bad_method_args_name_the_field(prune, args, message):
    with pytest.raises(ValueError, match=message):
        pruning_config(prune, args, None)


def test_pyramiddrop_scores_only_the_layers_before_its_cuts():
    from fastav_eval.pruning.plan import PrefillPlan

    method = PyramidDrop()
    config = method.config().resolve(8)
    plan = PrefillPlan(ModalityLayout.from_segments([SEGMENTS[0]]), config, 8)
    assert [layer for layer in range(7) if plan.needs_scores(layer)] == [1, 3, 5]  # before cuts 2, 4, 6


def test_random_draws_per_sample_id_the_same_alone_or_in_a_batch():
    """Two samples of one layout keep different tokens when the caller names them; each keeps the same alone."""
    from fastav_eval.pruning import PruningConfig
    from fastav_eval.pruning.plan import PrefillPlan
    from fastav_eval.pruning.rules import SampleInfo

    layout = ModalityLayout.from_segments([SEGMENTS[0], SEGMENTS[0]])
    method = RandomInput(retain=0.5)

    def kept(rows_layout, samples):
        plan = PrefillPlan(rows_layout, PruningConfig.chosen_by(method).resolve(6), 6, samples)
        plan.step(0)
        return [set(row[row >= 0].tolist()) for row in plan.stats().kv_positions[0]]

    names = (SampleInfo("avsynth_qa/1"), SampleInfo("avsynth_qa/2"))
    both = kept(layout, names)
    assert both[0] != both[1]
    alone = kept(ModalityLayout.from_segments([SEGMENTS[0]]), names[1:])
    assert alone[0] == both[1]
    assert kept(layout, None)[0] == kept(layout, None)[1]  # no ids: the config's seed alone


def test_a_record_whose_prompt_is_smaller_than_what_layer_0_saw_is_refused():
    model = tiny_qwen2()
    ids, mask, layout = batch()
    _, stats, shape = generate(model, ids, mask, layout, RandomInput(retain=0.3))
    data = SampleRecord.measured("random", stats.sample(0, shape), 3, 1.0).to_dict()
    with pytest.raises(ValueError, match=r"prompt_per_modality.*at least layer 0's count"):
        SampleRecord.from_dict({**data, "prompt_per_modality": {"text": 9, "video": 1, "audio": 1}})
