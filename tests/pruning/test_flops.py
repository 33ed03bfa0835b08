"""FLOPs accounting: the formulas, the paper's Table 4 from the engine's own schedule, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from fastav_eval.cli import main
from fastav_eval.pruning import (
    DecoderShape,
    ModalityLayout,
    PruningConfig,
    PruningProfile,
    layer_flops,
    relative_flops,
)
from fastav_eval.pruning.plan import simulate_prefill
from fastav_eval.pruning.presets import QWEN2_7B, get_preset
from tests.conftest import tiny_qwen2

TABLE_4 = {0.0: 65, 0.1: 59, 0.2: 56, 0.3: 54}


def test_fastv_formula_by_hand():
    shape = DecoderShape(num_layers=2, hidden_size=10, intermediate_size=30, num_heads=2, num_kv_heads=2, head_dim=5)
    n = torch.tensor(7)
    assert float(layer_flops(n, shape, "fastv")) == 4 * 7 * 100 + 2 * 49 * 10 + 2 * 7 * 10 * 30
    # exact: q, k, v, o projections (no GQA here) + QK^T and AV + three SwiGLU matrices.
    assert float(layer_flops(n, shape, "exact")) == 4 * 7 * 10 * 10 + 2 * 49 * 10 + 3 * 7 * 10 * 30
    gqa = DecoderShape(num_layers=2, hidden_size=10, intermediate_size=30, num_heads=2, num_kv_heads=1, head_dim=5)
    assert float(layer_flops(n, gqa, "exact")) == 7 * 10 * (2 * 2 + 2 * 1) * 5 + 2 * 49 * 10 + 3 * 7 * 10 * 30
    assert float(relative_flops(torch.tensor([7, 7]), shape)) == 100.0
    with pytest.raises(ValueError, match=r"convention='flash'; accepted: \['fastv', 'exact'\]"):
        layer_flops(n, shape, "flash")


def test_mixture_of_experts_counts_the_router_and_the_active_experts_by_hand():
    """A token's MLP in an MoE layer: the router (d·E) and k experts of width m_e, not the E it holds; a dense layer
    of the same decoder (mlp_only_layers) as dense."""
    d, m, e, k, m_e, n = 10, 30, 8, 2, 6, 7
    moe = DecoderShape(num_layers=3, hidden_size=d, intermediate_size=m, num_heads=2, num_kv_heads=1, head_dim=5,
                       num_experts=e, num_experts_per_tok=k, moe_intermediate_size=m_e, dense_layers=(1,))  # fmt: skip
    attention = 4 * n * d * d + 2 * n * n * d
    assert float(layer_flops(torch.tensor(n), moe, "fastv", layer=0)) == attention + n * (d * e + k * 2 * d * m_e)
    assert float(layer_flops(torch.tensor(n), moe, "fastv", layer=1)) == attention + n * 2 * d * m
    exact = n * d * (2 * 2 + 2 * 1) * 5 + 2 * n * n * 2 * 5
    assert float(layer_flops(torch.tensor(n), moe, "exact", layer=2)) == exact + n * (d * e + k * 3 * d * m_e)
    tokens = torch.tensor([n, n, 3])
    total = 2 * (attention + n * (d * e + k * 2 * d * m_e)) + attention + n * 2 * d * m
    pruned = total - (4 * n * d * d + 2 * n * n * d + n * (d * e + k * 2 * d * m_e))
    pruned += 4 * 3 * d * d + 2 * 9 * d + 3 * (d * e + k * 2 * d * m_e)
    assert float(relative_flops(tokens, moe)) == pytest.approx(100 * pruned / total)
    with pytest.raises(ValueError, match="num_experts_per_tok=9; accepted: 1 to num_experts"):
        DecoderShape(**{**vars(moe), "num_experts_per_tok": 9})


def test_qwen3_omni_preset_counts_active_experts():
    result = get_preset("qwen3_omni_30b_a3b").run(fine_ratio=0.2)
    assert result["prompt_tokens"] == {"text": 120, "video": 4608, "audio": 1833}
    assert result["shape"]["num_experts"] == 128 and result["shape"]["num_experts_per_tok"] == 8
    assert result["global_layer"] == 24 and result["tokens_per_layer"][23] == 6561
    assert result["relative_flops"] == pytest.approx(50.98, abs=0.01)
    assert "8 run per token" in result["assumptions"]
    video_chunks = [s for s in get_preset("qwen3_omni_30b_a3b").segments if s[0] == "video"]
    assert len(video_chunks) == 32 and all(s[1] == 144 for s in video_chunks)


def test_interleave_by_time_is_the_processors_token_order():
    """Oracle: Qwen3-Omni's processor's own merge (replace_video_with_audio_token) on the same grid and audio."""
    from types import SimpleNamespace

    import numpy as np
    from transformers import Qwen3OmniMoeProcessor

    from fastav_eval.pruning.presets import interleave_by_time

    stub = SimpleNamespace(audio_bos_token="[", audio_eos_token="]", video_token="V", audio_token="A",
                           video_processor=SimpleNamespace(merge_size=2))  # fmt: skip
    for grids, seconds, audio in ((5, 0.8, 40), (3, 2.0, 100), (7, 0.5, 9)):
        video = {"video_grid_thw": [np.array([grids, 4, 6])], "video_second_per_grid": [seconds]}
        text = Qwen3OmniMoeProcessor.replace_video_with_audio_token(
            stub, video, 0, {"num_audio_tokens": [audio]}, 0, position_id_per_seconds=13
        )[1:-1]
        times = [t * seconds * 13 for t in range(grids)]
        segments = interleave_by_time(times, 6, [float(j) for j in range(audio)])
        assert "".join(("V" if name == "video" else "A") * count for name, count, _ in segments) == text


@pytest.mark.parametrize(("fine_ratio", "paper"), sorted(TABLE_4.items()))
def test_videollama2_preset_reproduces_table_4(fine_ratio, paper):
    result = get_preset("videollama2").run(fine_ratio=fine_ratio)
    assert abs(result["relative_flops"] - paper) <= 1.5
    assert result["prompt_tokens"] == {"text": 44, "video": 676, "audio": 1496}
    assert result["tokens_per_layer"][:14] == [2216] * 14 and result["tokens_per_layer"][14] == 44 + 676 + 10


def test_video_salmonn2_preset_reproduces_table_1():
    assert abs(get_preset("video_salmonn2").run(fine_ratio=0.2)["relative_flops"] - 58) <= 1.5


def test_engine_stats_equal_the_simulated_schedule():
    """The FLOPs presets rely on simulate_prefill: it must count what a real prefill processed."""
    model = tiny_qwen2()
    layout = ModalityLayout.from_segments([[("text", 3), ("video", 16), ("audio", 24), ("text", 5)]])
    config = PruningConfig(global_layer=3, profile=PruningProfile.prefix(audio=4), fine_ratio=0.3)
    from fastav_eval.pruning import install

    engine = install(model, config)
    with engine.layout(layout):
        model(torch.randint(1, 90, (1, layout.length)))
    real = engine.last_stats
    engine.uninstall()
    simulated = simulate_prefill(layout, config, num_layers=6)
    assert torch.equal(real.tokens_per_layer, simulated.tokens_per_layer)
    assert real.relative_flops(DecoderShape.from_config(model.config)).item() < 100


def test_cli_prints_one_json_object(capsys):
    assert main(["flops", "--preset", "videollama2", "--fine-ratio", "0.2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert abs(result["relative_flops"] - 56) <= 1.5
    assert result["shape"] == QWEN2_7B.to_dict() and "8 frames" in result["assumptions"]
    assert main(["flops", "--preset", "video_salmonn2", "--fine-ratio", "0.2", "--convention", "exact"]) == 0
    assert abs(json.loads(capsys.readouterr().out)["relative_flops"] - 58) <= 2
    assert main(["flops", "--preset", "videollama2", "--fine-ratio", "1"]) == 2
    assert "fine_ratio=1.0; accepted: a number in [0, 1)" in capsys.readouterr().err


def test_cli_plot_writes_a_png(tmp_path, capsys):
    path = tmp_path / "tokens.png"
    assert main(["flops", "--preset", "video_salmonn2", "--plot", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["plot"] == str(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_qwen2_5_omni_preset_lays_out_the_clip_as_the_model_chunks_it():
    """Recompute: 32 grids of 180 tokens and 3,525 audio tokens in 2-s chunks; the global stage keeps every video
    token and the first chunk's 50 audio tokens."""
    preset = get_preset("qwen2_5_omni_7b")
    result = preset.run(fine_ratio=0.2)
    assert result["prompt_tokens"] == {"text": 120, "video": 5760, "audio": 3525}
    audio_chunks = [s for s in preset.segments if s[0] == "audio"]
    assert len(audio_chunks) == 71 and [s[2] for s in audio_chunks] == list(range(71))
    assert all(s[1] == 50 for s in audio_chunks[:-1]) and audio_chunks[-1][1] == 25
    # The thinker's own grouping of the video tokens (per token, as get_chunked_index runs on TMRoPE positions):
    # sparse grids split into a first token and the rest, each group followed by the next 2 s of audio.
    import numpy as np
    from transformers import Qwen2_5OmniProcessor

    times = np.repeat((np.arange(32) * 4.4 * 25).astype(int), 180)
    stock = [end - start for start, end in Qwen2_5OmniProcessor.get_chunked_index(None, times, 50)]
    video_chunks = [s for s in preset.segments if s[0] == "video"]
    assert [s[1] for s in video_chunks] == [n for n in stock if n] and sum(stock) == 5760
    assert [s[2] for s in video_chunks] == [j for j, n in enumerate(stock) if n]
    assert result["kept_per_layer"]["audio"][14] == 50 and result["kept_per_layer"]["video"][14] == 5760
    assert 40 < result["relative_flops"] < 80


def test_chunk_groups_follow_the_models_get_chunked_index():
    """Oracle: transformers' own Qwen2.5-Omni chunking, on dense grids, sparse grids and audio."""
    import numpy as np
    from transformers import Qwen2_5OmniProcessor

    from fastav_eval.pruning.presets import chunk_groups

    for times in ([0] * 4 + [25] * 4 + [50] * 4, [int(k * 4.4 * 25) for k in range(32)], list(range(3525)), [0]):
        stock = Qwen2_5OmniProcessor.get_chunked_index(None, np.array(times), 50)
        assert chunk_groups(times) == [end - start for start, end in stock], times[:8]


def test_cli_takes_a_models_own_layout(capsys):
    """The 16-frame layout given to the 8-frame preset is the 16-frame preset; a bad layout names the format."""
    layout = "text:14,video:1352,audio:1496,text:30"
    assert main(["flops", "--preset", "videollama2", "--segments", layout, "--compact"]) == 0
    given = json.loads(capsys.readouterr().out)
    assert given["prompt_tokens"] == {"text": 44, "video": 1352, "audio": 1496}
    assert given["relative_flops"] == get_preset("videollama2_16f").run()["relative_flops"] == 58.19
    assert main(["flops", "--preset", "videollama2", "--segments", "text:14,image:3,text:2"]) == 2
    assert "accepted: comma-separated modality:count pairs" in capsys.readouterr().err
    assert main(["flops", "--preset", "videollama2", "--segments", "text:14,audio:10"]) == 2
    assert "must end with text" in capsys.readouterr().err


def test_segments_syntax_numbers_each_modalitys_chunks_in_order():
    from fastav_eval.pruning.presets import format_segments, parse_segments

    assert parse_segments("text:2,(video:4,audio:2)*2,audio:3*2,text:1") == (
        ("text", 2), ("video", 4, 0), ("audio", 2, 0), ("video", 4, 1), ("audio", 2, 1), ("audio", 3, 2),
        ("audio", 3, 3), ("text", 1),
    )  # fmt: skip
    # a group of groups is not a chunk itself: each inner group is; the old syntax keeps one chunk per run
    assert [s[2] for s in parse_segments("text:1,((video:1,audio:5),(video:9,audio:5))*2,text:1")[1:-1]] == [
        0, 0, 1, 1, 2, 2, 3, 3,
    ]  # fmt: skip
    old = parse_segments("text:14,video:182,audio:2,video:182,audio:2,text:30")
    assert old == (("text", 14), ("video", 182, 0), ("audio", 2, 0), ("video", 182, 1), ("audio", 2, 1), ("text", 30))
    assert format_segments(old) == "text:14,(video:182,audio:2)*2,text:30"
