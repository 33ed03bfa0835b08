"""VidCom² and SEATS (fastav_eval.pruning.methods) against direct implementations of their papers' equations written
here in plain Python / NumPy, and through the engine on a tiny Qwen2 with a left-padded batch of interleaved
video/audio chunks: what each layer keeps is what the oracle picks, and the logits equal the masked recompute."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastav_eval.pruning import Modality, ModalityLayout
from fastav_eval.pruning.methods import (
    SEATS,
    VidCom2,
    VidCom2AV,
    frame_uniqueness_keep,
    paired_runs,
    seats_keep_ratios,
    seats_window_budgets,
)
from fastav_eval.pruning.oracle import kept_masks, masked_forward
from tests.conftest import VOCAB, tiny_qwen2
from tests.pruning.test_methods import assert_masked_recompute, divprune_by_the_paper, generate

SINK = 4  # the methods' default sink_tokens


def interleaved(chunks: int, frames_per_chunk: int, frame_tokens: int, audio_per_chunk: int, text: int) -> list:
    segments = [("text", text)]
    for chunk in range(chunks):
        segments += [("video", frames_per_chunk * frame_tokens, chunk, frame_tokens), ("audio", audio_per_chunk, chunk)]
    return [*segments, ("text", 4)]


SEGMENTS = [interleaved(3, 2, 4, 20, text=5), interleaved(2, 2, 4, 28, text=3)]  # 60 and 56 audio tokens


def batch() -> tuple[torch.Tensor, torch.Tensor, ModalityLayout]:
    layout = ModalityLayout.from_segments(SEGMENTS)
    generator = torch.Generator().manual_seed(3)  # distinct ids in a row: no two tokens with one embedding (a tie)
    ids = torch.stack([torch.randperm(VOCAB - 1, generator=generator)[: layout.length] + 1 for _ in range(2)])
    return ids.masked_fill(~layout.valid, 0), layout.valid.long(), layout


def droppable(layout: ModalityLayout, row: int, modality: Modality) -> np.ndarray:
    """Positions of ``row``'s tokens of ``modality`` past the sink."""
    first = int(layout.length - layout.valid[row].sum())
    positions = (layout.modality[row] == modality).nonzero().flatten().numpy()
    return positions[positions >= first + SINK]


# ---------------------------------------------------------------------------------------------- VidCom²
def vidcom2_by_the_paper(x: np.ndarray, frames: list[int], ratio: float) -> set[int]:
    """VidCom²: low-variance half of the channels, L2-normalised; s_i = G(x_i, video mean) + G(x_i, frame mean),
    G = sum over alpha in 2^-3..2^1 of exp(-|x - c|^2 / (2 alpha)); frame uniqueness u_f = -mean G(x, video mean);
    r_f = min(1, R (1 + softmax(u / 0.01)_f - 1/F)); frame f keeps its max(1, round(r_f n_f)) lowest s_i."""
    variance = x.var(axis=0)
    channels = np.argsort(variance, kind="stable")[: x.shape[1] // 2]
    y = x[:, channels] / np.linalg.norm(x[:, channels], axis=1, keepdims=True)

    def similarity(vector: np.ndarray, center: np.ndarray) -> float:
        squared = float(((vector - center) ** 2).sum())
        return sum(math.exp(-squared / (2 * 2.0**k)) for k in range(-3, 2))

    labels = sorted(set(frames))
    video_center = y.mean(axis=0)
    members = {f: [i for i, label in enumerate(frames) if label == f] for f in labels}
    to_video = [similarity(y[i], video_center) for i in range(len(y))]
    score = {}
    for f in labels:
        center = y[members[f]].mean(axis=0)
        for i in members[f]:
            score[i] = to_video[i] + similarity(y[i], center)
    uniqueness = np.array([-np.mean([to_video[i] for i in members[f]]) for f in labels])
    weights = np.exp((uniqueness - uniqueness.max()) / 0.01)
    weights /= weights.sum()
    kept = set()
    for index, f in enumerate(labels):
        share = min(1.0, ratio * (1 + weights[index] - 1 / len(labels)))
        count = max(1, int(np.round(share * len(members[f]))))
        kept |= set(sorted(members[f], key=lambda i: (score[i], i))[:count])
    return kept


@pytest.mark.parametrize(("frames", "ratio"), [([16] * 4, 0.25), ([9] * 6, 0.4), ([5, 12, 7], 0.3)])
def test_vidcom2_selection_is_the_papers(frames, ratio):
    rng = np.random.default_rng(len(frames))
    labels = [f for f, count in enumerate(frames) for _ in range(count)]
    x = rng.normal(size=(len(labels), 24)) + np.repeat(rng.normal(size=(len(frames), 24)), frames, axis=0)
    keep = frame_uniqueness_keep(torch.tensor(x, dtype=torch.float32), torch.tensor(labels), ratio)
    assert set(keep.nonzero().flatten().tolist()) == vidcom2_by_the_paper(x.astype(np.float32).astype(np.float64),
                                                                          labels, ratio)  # fmt: skip


@pytest.mark.parametrize("method", [VidCom2(retain=0.5), VidCom2AV(retain=0.5)], ids=["vidcom2", "vidcom2_av"])
def test_vidcom2_cuts_before_the_decoder_per_frame(method):
    """Video frames are the layout's (4-token grids, two per chunk); ``vidcom2_av`` treats each audio chunk as a
    frame of the audio stream. Audio stays whole under ``vidcom2``."""
    model = tiny_qwen2()
    ids, mask, layout = batch()
    output, stats, _ = generate(model, ids, mask, layout, method)
    assert_masked_recompute(model, ids, mask, layout, output, stats)
    embeds = model.model.embed_tokens(ids).detach().double().numpy()
    for b in range(2):
        expected = set()
        for modality, labels in ((Modality.VIDEO, layout.frame), (Modality.AUDIO, layout.chunk)):
            positions = droppable(layout, b, modality)
            if modality == Modality.AUDIO and isinstance(method, VidCom2) and not isinstance(method, VidCom2AV):
                expected |= set(positions.tolist())
                continue
            frames = labels[b, positions].tolist()
            chosen = vidcom2_by_the_paper(embeds[b, positions].astype(np.float32).astype(np.float64), frames, 0.5)
            expected |= {int(positions[i]) for i in chosen}
        av = {p for p in stats.kv_positions[0][b].tolist() if p >= 0 and int(layout.modality[b, p]) > 0}
        sink = set(range(int(layout.length - layout.valid[b].sum()), int(layout.length - layout.valid[b].sum()) + SINK))
        assert av - sink == expected, b


# ---------------------------------------------------------------------------------------------- SEATS
def test_seats_schedule_meets_the_mean_retention_with_exponentially_growing_drops():
    """Σ segment length · N = target · L with N_0 = e, N_i = N_{i-1} k_i, and drops δ_i ∝ e^i."""
    cases = ((28, (16, 18, 20), 23, 0.30), (28, (16, 18, 20), 23, 0.65), (48, (27, 31, 34), 39, 0.2))
    for layers, drops, late, target in cases:
        encoder = min(1.4 * target, 1.0)
        ratios = seats_keep_ratios(layers, drops, late, encoder, target)
        levels = [encoder]
        for ratio in ratios:
            levels.append(levels[-1] * ratio)
        bounds = [0, *drops, late]
        covered = sum((bounds[i + 1] - bounds[i]) * levels[i] for i in range(len(levels)))
        assert covered == pytest.approx(target * layers, rel=2e-3), (layers, target)
        deltas = [levels[i] - levels[i + 1] for i in range(len(ratios))]
        for i in range(1, len(deltas)):
            assert deltas[i] / deltas[i - 1] == pytest.approx(math.e, rel=5e-3)
    # a target the encoder stage alone meets: no drop inside; one it cannot reach: everything goes by the last drop
    assert seats_keep_ratios(28, (16, 18, 20), 23, 0.1, 0.09) == [1.0, 1.0, 1.0]  # 0.1 · 23 <= 0.09 · 28
    assert seats_keep_ratios(28, (16, 18, 20), 23, 0.5, 0.01)[-1] == 0.0
    assert seats_keep_ratios(4, (2,), 3, 0.7, 0.5) == [round((0.5 * 4 - 2 * 0.7) / 0.7, 4)]  # one drop: solved exactly


def window_budgets_by_the_paper(v_mean, a_mean, v_size, a_size, k_v, k_a, tau=0.1):
    """SEATS's top-down allocation: windows get round(mean of the two modality softmaxes · (K_v + K_a)) (>= 1, <= its
    tokens), moved one by one from the largest / to the smallest until they sum to K_v + K_a; within a window video
    takes round(B · K_v s_v / (K_v s_v + K_a s_a)), audio the rest, capped; a remainder fills video then audio; a
    present modality keeps at least one token."""

    def softmax(values):
        top = max(values)
        e = [math.exp((v - top) / tau) for v in values]
        return [x / sum(e) for x in e]

    s_v, s_a = softmax(v_mean), softmax(a_mean)
    cap = [v + a for v, a in zip(v_size, a_size, strict=True)]
    total = k_v + k_a
    budget = [min(max(int(np.round((s_v[w] + s_a[w]) / 2 * total)), 1), cap[w]) for w in range(len(cap))]
    while sum(budget) != total:
        if sum(budget) > total:
            movable = [w for w in range(len(budget)) if budget[w] > 1]
            if not movable:
                break
            budget[max(movable, key=lambda w: (budget[w], -w))] -= 1
        else:
            movable = [w for w in range(len(budget)) if budget[w] < cap[w]]
            if not movable:
                break
            budget[min(movable, key=lambda w: (budget[w], w))] += 1
    video, audio = [], []
    for w in range(len(budget)):
        demand_v, demand_a = s_v[w] * k_v, s_a[w] * k_a
        v = min(max(int(np.round(budget[w] * demand_v / (demand_v + demand_a + 1e-12))), 0), v_size[w])
        a = min(max(budget[w] - v, 0), a_size[w])
        extra = min(max(budget[w] - v - a, 0), max(v_size[w] - v, 0))
        v += extra
        a += min(max(budget[w] - v - a, 0), max(a_size[w] - a, 0))
        if v_size[w] > 0 and v < 1:
            v = 1
            a = max(min(a_size[w], max(budget[w] - v, 0)), 1) if a > 1 else a
        if a_size[w] > 0 and a < 1:
            a = 1
            v = max(min(v_size[w], max(budget[w] - a, 0)), 1) if v > 1 else v
        video.append(v)
        audio.append(a)
    return video, audio


def test_seats_window_budgets_move_tokens_off_the_largest_window_when_rounding_gives_too_many():
    """Three equal windows, 4 to keep: round(4/3) = 1 each is too few, so the smallest (first) gets one more; with
    five windows of weight 1/5 and 7 to keep, round(1.4) = 1 each plus two; with two windows sharing 3, round(1.5) = 2
    each (half to even) is one too many, taken off the first. (A window's modalities may then hold more than its
    budget: a present modality keeps at least one token, as in the release.)"""
    flat = lambda n: torch.zeros(n)  # noqa: E731
    for windows, v_keep, a_keep in ((3, 2, 2), (5, 4, 3), (2, 2, 1)):
        sizes = torch.full((windows,), 5)
        got = seats_window_budgets(flat(windows), flat(windows), sizes, sizes, v_keep, a_keep)
        want = window_budgets_by_the_paper(
            [0.0] * windows, [0.0] * windows, [5] * windows, [5] * windows, v_keep, a_keep
        )
        assert (got[0].tolist(), got[1].tolist()) == want


@pytest.mark.parametrize("seed", range(6))
def test_seats_window_budgets_are_the_papers(seed):
    rng = np.random.default_rng(seed)
    windows = int(rng.integers(2, 7))
    v_size = rng.integers(0 if seed == 5 else 1, 20, windows).tolist()
    a_size = rng.integers(1, 15, windows).tolist()
    v_mean, a_mean = (rng.uniform(0, 0.05 * (1 + seed), windows).tolist() for _ in range(2))
    k_v, k_a = max(1, round(0.4 * sum(v_size))), max(1, round(0.7 * sum(a_size)))
    got = seats_window_budgets(
        torch.tensor(v_mean, dtype=torch.float32), torch.tensor(a_mean, dtype=torch.float32), torch.tensor(v_size),
        torch.tensor(a_size), k_v, k_a,
    )  # fmt: skip
    f32 = lambda values: np.array(values, dtype=np.float32).astype(np.float64).tolist()  # noqa: E731
    assert (got[0].tolist(), got[1].tolist()) == window_budgets_by_the_paper(
        f32(v_mean), f32(a_mean), v_size, a_size, k_v, k_a
    )


def release_windows(codes: list[int], positions: list[int]) -> dict[int, int]:
    """SEATS's ``build_temporal_windows``: the i-th contiguous segment of video tokens and the i-th of audio tokens
    make window i. ``codes`` are the modality codes of the current sequence, ``positions`` its tokens."""
    window, runs, previous = {}, {Modality.VIDEO: -1, Modality.AUDIO: -1}, None
    for code, position in zip(codes, positions, strict=True):
        if code in runs:
            if code != previous:
                runs[code] += 1
            window[position] = runs[code]
        previous = code
    return window


def test_seats_windows_pair_the_ith_video_run_with_the_ith_audio_run():
    layout = ModalityLayout.from_segments([[("text", 2), ("video", 3), ("audio", 2), ("video", 2), ("text", 1),
                                            ("audio", 3), ("audio", 1, ), ("text", 1)]])  # fmt: skip
    got = paired_runs(layout.modality[0], layout.valid[0]).tolist()
    want = release_windows(layout.modality[0].tolist(), list(range(layout.length)))
    assert got == [want.get(p, -1) for p in range(layout.length)]
    assert got == [-1, -1, 0, 0, 0, 0, 0, 1, 1, -1, 1, 1, 1, 1, -1]  # the two last audio runs touch: one run


def test_seats_stages_through_the_engine():
    """28 layers: stage I (windowed max-min diversity of the input embeddings, video windows of two frames, audio
    windows of 50 tokens), stage II at layers 16, 18, 20 (each window's budget from the last query's attention of
    the layer before, from the masked recompute), stage III at layer 23 (no audio-visual token left)."""
    model = tiny_qwen2(layers=28)
    ids, mask, layout = batch()
    method = SEATS()  # its default pair: video 0.30, audio 0.65 (stage I keeps 0.42 and 0.91)
    assert method.layers(28) == ((16, 18, 20), 23) and method.layers(48) == ((27, 31, 34), 39)
    output, stats, _ = generate(model, ids, mask, layout, method)
    assert_masked_recompute(model, ids, mask, layout, output, stats)
    embeds = model.model.embed_tokens(ids).detach().double().numpy()
    visible = kept_masks(stats.kv_positions, layout.length)
    with torch.no_grad():
        _, last_rows = masked_forward(model, ids, visible, mask)
    targets = {Modality.VIDEO: 0.30, Modality.AUDIO: 0.65}
    for b in range(2):
        kept = [set(stats.kv_positions[layer][b].tolist()) - {-1} for layer in range(28)]
        # stage I
        expected = set()
        for modality, target in targets.items():
            positions = droppable(layout, b, modality)
            windows = (
                (layout.frame[b, positions] // 2) if modality == Modality.VIDEO else layout.rank[b, positions] // 50
            )
            for window in sorted(set(windows.tolist())):
                members = positions[(windows == window).numpy()]
                count = max(1, min(len(members), round(min(1.4 * target, 1.0) * len(members))))
                expected |= {int(members[i]) for i in divprune_by_the_paper(embeds[b, members], count)}
        eligible = set(droppable(layout, b, Modality.VIDEO)) | set(droppable(layout, b, Modality.AUDIO))
        sink_av = {p for p in kept[0] if int(layout.modality[b, p]) > 0} - eligible
        assert {p for p in kept[0] if int(layout.modality[b, p]) > 0} - sink_av == expected, b
        # stage II
        for step, layer in enumerate((16, 18, 20)):
            before = kept[layer - 1]
            split = {
                m: sorted(p for p in before if int(layout.modality[b, p]) == m and p not in sink_av) for m in targets
            }
            ratio = {m: seats_keep_ratios(28, (16, 18, 20), 23, min(1.4 * t, 1.0), t)[step] for m, t in targets.items()}
            keep_count = {m: max(1, round(ratio[m] * len(split[m]))) for m in targets}
            score = last_rows[layer - 1][b]
            window = release_windows([int(layout.modality[b, p]) for p in sorted(before)], sorted(before))
            chunks = sorted({window[p] for m in targets for p in split[m]})
            means, sizes = {}, {}
            for m in targets:
                sizes[m] = [sum(1 for p in split[m] if window[p] == c) for c in chunks]
                means[m] = [sum(float(score[p]) for p in split[m] if window[p] == c) / max(n, 1)
                            for c, n in zip(chunks, sizes[m], strict=True)]  # fmt: skip
            video_budget, audio_budget = window_budgets_by_the_paper(
                means[Modality.VIDEO], means[Modality.AUDIO], sizes[Modality.VIDEO], sizes[Modality.AUDIO],
                keep_count[Modality.VIDEO], keep_count[Modality.AUDIO],
            )  # fmt: skip
            expected = set()
            for w, c in enumerate(chunks):
                for m, budget in ((Modality.VIDEO, video_budget), (Modality.AUDIO, audio_budget)):
                    members = [p for p in split[m] if window[p] == c]
                    expected |= set(sorted(members, key=lambda p: (-float(score[p]), p))[: budget[w]])
            assert {p for p in kept[layer] if int(layout.modality[b, p]) > 0} - sink_av == expected, (b, layer)
        # stage III
        assert all({p for p in kept[layer] if int(layout.modality[b, p]) > 0} <= sink_av for layer in range(23, 28))


@pytest.mark.parametrize(
    ("knobs", "message"),
    [({"frames_per_window": 0}, "frames_per_window=0; accepted: an int >= 1"),
     ({"audio_window": 2.5}, "audio_window=2.5; accepted: an int >= 1"),
     ({"temperature": 0}, "temperature=0; accepted: a number > 0"),
     ({"audio_retain": 0}, r"audio_retain=0; accepted: a number in \(0, 1\], or None")],
)  # fmt: skip
def test_bad_seats_knobs_name_the_field(knobs, message):
    with pytest.raises(ValueError, match=message):
        SEATS(**knobs)


def test_seats_on_shallow_decoders_and_a_target_out_of_its_reach(caplog):
    """Its layers never fall on layer 1 (nobody is asked there after the cut before layer 0) and the late removal
    needs a layer to remove before; a target above ``min(1, 1.4 t) · late / L`` is logged, once."""
    assert SEATS().layers(2) == ((), None) and SEATS().layers(3) == ((), 2) and SEATS().layers(6) == ((3, 4), 5)
    model = tiny_qwen2()
    ids, mask, layout = batch()
    method = SEATS(retain=0.7)  # video: min(1, 0.98) · 5/6 = 0.82 reaches 0.7; audio (1.0): 5/6 does not
    with caplog.at_level("WARNING", logger="fastav_eval.pruning.methods"):
        generate(model, ids, mask, layout, method)
        generate(model, ids, mask, layout, method)
    warned = [record.getMessage() for record in caplog.records]
    assert warned == ["seats: audio target 1.000 is above the most it keeps on 6 layers (0.833: every audio-visual "
                      "token goes before layer 5); it keeps that"]  # fmt: skip
