"""``fastav_video_salmonn2_plus``'s adapter: the per-grid layout, the first-4-frames rule and the fine stage on it,
prune=none, batches, sdpa vs eager, reference scoring, the soundtrack modes, loading and bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fastav_eval.models.base import Request, SampleError
from fastav_eval.models.model_args import pruning_config
from fastav_eval.models.registry import build_adapter
from fastav_eval.models.video_salmonn2_plus import VideoSALMONN2PlusAdapter
from fastav_eval.pruning import Modality, install, relative_flops, simulate_prefill
from tests.models.embeds_adapter_checks import (
    assert_a_batch_of_two_equals_each_alone,
    assert_engine_off_is_the_stock_model,
    assert_sdpa_answers_as_eager,
)
from tests.models.video_salmonn2_fixtures import PLUS_FIXTURE as FIXTURE
from tests.models.video_salmonn2_fixtures import tiny_plus_adapter

QUESTION = "What instrument is playing?"
CLIP, ODD = FIXTURE / "clip10s.mp4", FIXTURE / "clip_odd.mp4"
REFERENCES = ["a violin", "the drums are playing loudly"]


@pytest.fixture(scope="module")
def adapter():
    return tiny_plus_adapter()


def load(adapter, *visuals, prompt: str = QUESTION):
    return adapter.load_request(Request([str(v) if not isinstance(v, dict) else v for v in visuals], prompt), 0)


def test_the_registry_builds_it_with_its_model_args():
    built = build_adapter(
        "fastav_video_salmonn2_plus", {"pretrained": str(FIXTURE), "dtype": "float32", "positions": "trained"}
    )
    assert isinstance(built, VideoSALMONN2PlusAdapter) and built.options["positions"] == "trained"


def test_the_first_4_frames_rule_keeps_the_first_2_grids():
    model = tiny_plus_adapter()
    config = pruning_config("fastav", {"fine_ratio": 0.0}, VideoSALMONN2PlusAdapter.default_profile(None))
    engine = install(model.decoder, config)
    assert engine.config.global_layer == 2  # half of the tiny LLM's 4 layers
    sample = load(model, CLIP)
    inputs = model.prepare([sample])
    with engine.layout(inputs.layout):
        assert model.generate(inputs, 4, [])[0].num_tokens > 0
    kept = engine.last_stats.kv_positions[2][0].tolist()
    block = sample.block
    per_grid = block.grid[1] * block.grid[2]
    first_two = 2 * per_grid + sum(block.audio_per_grid[:2])  # grids 0 and 1: 4 frames
    end = block.start + block.length
    assert kept == [*range(block.start + first_two), *range(end, inputs.layout.length)]


def test_the_fine_stage_never_drops_text_and_flops_match_the_schedule():
    config = pruning_config("fastav", {}, VideoSALMONN2PlusAdapter.default_profile(None))
    model = tiny_plus_adapter()
    engine = install(model.decoder, config)
    inputs = model.prepare([load(model, CLIP), load(model, ODD, prompt="Hi?")])
    with engine.layout(inputs.layout):
        model.generate(inputs, 2, [])
    stats = engine.last_stats
    text = inputs.layout.count("text")
    for b in range(2):
        assert stats.sample(b, engine.shape).kept_per_layer["text"] == [int(text[b])] * 4
    simulated = simulate_prefill(inputs.layout, engine.config, 4)
    assert torch.equal(simulated.tokens_per_layer, stats.tokens_per_layer)
    assert torch.equal(relative_flops(simulated.tokens_per_layer, engine.shape), stats.relative_flops(engine.shape))


def test_prune_none_equals_the_model_without_the_engine():
    assert_engine_off_is_the_stock_model(tiny_plus_adapter, CLIP, QUESTION)


@pytest.mark.parametrize("positions", ["official_inference", "trained"])
def test_a_batch_of_two_equals_each_alone(positions):
    assert_a_batch_of_two_equals_each_alone(tiny_plus_adapter(positions=positions), (CLIP, ODD), QUESTION)


def test_sdpa_and_eager_give_the_same_answer():
    assert_sdpa_answers_as_eager(tiny_plus_adapter, CLIP, QUESTION)


def test_an_audio_item_replaces_the_soundtrack_and_an_in_memory_video_takes_one(adapter, tmp_path):
    from tests.lmms.av_task_fixtures import write_wav

    wav = write_wav(tmp_path / "a.wav", seconds=3.0)
    own, replaced = load(adapter, CLIP), load(adapter, CLIP, wav)
    assert own.spectrogram.shape == replaced.spectrogram.shape == (1, 128, 3000)
    assert not torch.equal(own.spectrogram, replaced.spectrogram)
    frames = np.zeros((20, 56, 56, 3), np.uint8)
    frames[:, :28] = 200
    video = {"type": "video", "frames": frames, "fps": 10.0}
    with pytest.raises(SampleError, match="in-memory video carries no soundtrack"):
        load(adapter, video)
    sample = load(adapter, video, {"array": np.zeros((16000, 2)), "sampling_rate": 16000})
    assert sample.grid == (10, 4, 4) and sum(sample.block.audio_per_grid) == 60
    assert adapter.generate(adapter.prepare([sample]), 2, [])[0].num_tokens > 0


def test_video_audio_modes(tmp_path):
    from tests.lmms.av_task_fixtures import write_clip

    silent = write_clip(tmp_path / "silent.mp4", seconds=3.0, fps=4, size=56, audio=False)
    with pytest.raises(SampleError, match=r"has no audio track.*video_audio=if_present"):
        load(tiny_plus_adapter(), silent)
    for mode, clip in (("if_present", silent), ("off", CLIP)):
        adapter = tiny_plus_adapter(video_audio=mode)
        sample = load(adapter, clip)
        assert sample.spectrogram is None and sum(sample.block.audio_per_grid) == 0
        inputs = adapter.prepare([sample])
        assert inputs.layout.count("audio").item() == 0
        assert inputs.layout.count("video").item() == sample.block.video_tokens
        assert adapter.generate(inputs, 2, [])[0].num_tokens > 0


def test_trained_positions_on_a_silent_video_are_qwen2_5_vls_video_branch(tmp_path):
    from fastav_eval.models.video_salmonn2_plus_model import VisionBlock, trained_positions

    block = VisionBlock(start=3, grid=(2, 2, 3), audio_per_grid=(0, 0), second_per_grid=2.0)
    positions = trained_positions(block.start + block.length + 2, block)
    assert positions[0, 3:15].tolist() == [3] * 6 + [7] * 6  # grid 1 at 2·2 s·1 = 4 units later
    assert positions[:, -2:].tolist() == [[8, 9]] * 3  # one past the block's largest position on any axis


@pytest.mark.parametrize(
    ("visuals", "message"),
    [
        ([], "no video"),
        (["missing.mp4"], "does not exist"),
        ([CLIP, ODD], "takes one video"),
        ([object()], "accepted: a video or audio file path"),
    ],
)
def test_unanswerable_requests_name_the_reason(adapter, visuals, message):
    with pytest.raises(SampleError, match=message):
        adapter.load_request(Request([str(v) if isinstance(v, type(FIXTURE)) else v for v in visuals], QUESTION), 0)


def test_an_image_or_audio_alone_is_refused_naming_why(adapter, tmp_path):
    from tests.lmms.av_task_fixtures import write_png, write_wav

    with pytest.raises(SampleError, match="is an image"):
        load(adapter, write_png(tmp_path / "a.png"))
    with pytest.raises(SampleError, match="no video"):
        load(adapter, write_wav(tmp_path / "a.wav", seconds=2.0))


def test_a_question_with_its_own_modal_tag_fails_its_sample(adapter):
    with pytest.raises(SampleError, match="modal tag"):
        load(adapter, CLIP, prompt="<video>\nWhat is it?")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"positions": "native"}, "positions='native'; accepted"),
        ({"video_audio": "sometimes"}, "video_audio='sometimes'; accepted"),
        ({"max_frames": 0}, "max_frames=0; accepted: an int >= 1"),
    ],
)
def test_bad_model_args_name_the_field(args, message):
    with pytest.raises(ValueError, match=message):
        tiny_plus_adapter(**args)


def copy_checkpoint(tmp_path):
    return shutil.copytree(FIXTURE, tmp_path / "ckpt", ignore=shutil.ignore_patterns("*.mp4", "reference*", "make_*"))


def test_a_peft_adapter_is_refused_naming_the_full_checkpoints(tmp_path):
    folder = copy_checkpoint(tmp_path)
    (folder / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"PEFT adapter.*video-SALMONN2_plus_7B_full.*_3B_full"):
        VideoSALMONN2PlusAdapter(str(folder), "cpu", torch.float32, "sdpa")


def test_a_plain_qwen2_5_vl_config_is_refused(tmp_path):
    folder = copy_checkpoint(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    del config["audio_config"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"no audio_config.*_full checkpoint"):
        VideoSALMONN2PlusAdapter(str(folder), "cpu", torch.float32, "sdpa")


def test_a_missing_or_unknown_audio_tensor_is_an_error_naming_it(tmp_path):
    folder = copy_checkpoint(tmp_path)
    tensors = load_file(folder / "model.safetensors")
    save_file({**tensors, "audio.extra.weight": torch.zeros(1)}, folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"unexpected audio\.extra\.weight"):
        VideoSALMONN2PlusAdapter(str(folder), "cpu", torch.float32, "sdpa")
    missing = {k: v for k, v in tensors.items() if k != "audio.audio_proj.bias"}
    save_file(missing, folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing audio\.audio_proj\.bias"):
        VideoSALMONN2PlusAdapter(str(folder), "cpu", torch.float32, "sdpa")


def test_reference_logprob_is_minus_the_teacher_forced_loss(adapter):
    """Oracle: the stock model's own loss over one forward of [prompt + answer] per sample (no cache, no padding),
    the answer's positions one past the prompt's last on every axis."""
    samples = [load(adapter, CLIP), load(adapter, ODD, prompt="Which one?")]
    logprob = adapter.reference_logprob(adapter.prepare(samples), REFERENCES)
    for i, (sample, reference) in enumerate(zip(samples, REFERENCES, strict=True)):
        kwargs = adapter.prepare([sample]).generate_kwargs
        answer = torch.tensor([adapter.ends.reference_ids(adapter.tokenizer, reference)])
        positions = kwargs["position_ids"]
        follow = positions[..., -1:] + torch.arange(1, answer.shape[1] + 1)
        with torch.no_grad():
            embeds = torch.cat([kwargs["inputs_embeds"], adapter.decoder.get_input_embeddings()(answer)], 1)
            labels = torch.cat([torch.full((1, positions.shape[-1]), -100), answer], 1)
            loss = adapter.decoder(
                inputs_embeds=embeds, position_ids=torch.cat([positions, follow], -1), labels=labels
            ).loss
        assert float(logprob[i]) == pytest.approx(-float(loss), abs=1e-4), i
    pairs = zip(samples, REFERENCES, strict=True)
    alone = torch.cat([adapter.reference_logprob(adapter.prepare([s]), [r]) for s, r in pairs])
    torch.testing.assert_close(logprob, alone, atol=1e-5, rtol=0)


def test_each_grid_is_one_chunk_of_its_video_then_its_audio(adapter):
    sample = load(adapter, CLIP)
    layout = adapter.prepare([sample]).layout
    modality, chunk = layout.modality[0].tolist(), layout.chunk[0].tolist()
    block, at = sample.block, sample.block.start
    per_grid = block.grid[1] * block.grid[2]
    for t, audio in enumerate(block.audio_per_grid):
        assert modality[at : at + per_grid] == [int(Modality.VIDEO)] * per_grid
        assert modality[at + per_grid : at + per_grid + audio] == [int(Modality.AUDIO)] * audio
        assert chunk[at : at + per_grid + audio] == [t] * (per_grid + audio)
        at += per_grid + audio


def test_pruned_generate_matches_a_masked_recompute_of_the_stock_decoder():
    """Oracle: Qwen2.5-VL's text model over the whole sequence (prompt + generated, at the positions generate gave
    it) with each layer's keys masked to what the engine kept; every step's logits must match."""
    from fastav_eval.pruning.oracle import kept_masks, masked_decoder

    model = tiny_plus_adapter()
    config = pruning_config("fastav", {"fine_ratio": 0.3}, VideoSALMONN2PlusAdapter.default_profile(None))
    engine = install(model.decoder, config)
    inputs = model.prepare([load(model, CLIP)])
    text_model = model.decoder.model.language_model
    steps = []

    def capture(_module, _args, kwargs):
        steps.append((kwargs["inputs_embeds"], kwargs["position_ids"][1:]))  # [4, B, L]: text row, then M-RoPE

    hook = text_model.register_forward_pre_hook(capture, with_kwargs=True)
    with engine.layout(inputs.layout), torch.no_grad():
        output = model.decoder.generate(
            **inputs.generate_kwargs, max_new_tokens=4, do_sample=False, output_logits=True,
            return_dict_in_generate=True, eos_token_id=[10**6],
        )  # fmt: skip
    hook.remove()
    stats, length = engine.last_stats, inputs.layout.length
    assert stats.tokens_per_layer[0, -1] < stats.tokens_per_layer[0, 2] < length
    embeds = torch.cat([step[0] for step in steps], 1)
    positions = torch.cat([step[1] for step in steps], -1)
    generated = embeds.shape[1] - length
    visible = [
        torch.cat([mask, torch.ones(1, generated, dtype=torch.bool)], 1)
        for mask in kept_masks(stats.kv_positions, length)
    ]
    with torch.no_grad():
        hidden, _ = masked_decoder(text_model, embeds, positions, visible, torch.ones(1, embeds.shape[1]).long())
        for step, logits in enumerate(output.logits):
            torch.testing.assert_close(model.decoder.lm_head(hidden[:, length - 1 + step]), logits, atol=1e-5, rtol=0)


def test_frame_settings_follow_the_model_args():
    """inference.py's settings by default, scripts/test.sh's when asked: a 3-s clip at 30 fps gets 30 frames under the
    first and 64 under the second."""
    from fastav_eval.models.video_salmonn2_plus_media import frame_indices

    default, test_sh = tiny_plus_adapter(), tiny_plus_adapter(min_frames=64, min_pixels=784)
    assert len(frame_indices(90, 3.0, default.frame_settings)) == 30
    assert len(frame_indices(90, 3.0, test_sh.frame_settings)) == 64
    with pytest.raises(ValueError, match="min_frames=800, max_frames=768; accepted: min_frames <= max_frames"):
        tiny_plus_adapter(min_frames=800)


def test_stereo_audio_arrays_take_ffmpegs_float_downmix(tmp_path):
    """Oracle: the same stereo signal written to a wav file and read by the file path (FFmpeg's float downmix)."""
    import wave

    from fastav_eval.models.media import float_mono, soundtrack

    stereo = (np.random.default_rng(0).uniform(-0.5, 0.5, (8000, 2)) * 32767).astype("<i2")
    path = tmp_path / "stereo.wav"
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(2)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(stereo.tobytes())
    from_file = soundtrack(path, 16000, "flt")
    from_array = float_mono(stereo / 32768.0, 16000, 16000)
    np.testing.assert_allclose(from_array, from_file, atol=1e-6)
    np.testing.assert_allclose(from_array, stereo.sum(1) / 32768.0 / np.sqrt(2), atol=1e-6)
    with pytest.raises(ValueError, match="3 channels; accepted: mono or stereo"):
        float_mono(np.zeros((10, 3)), 16000, 16000)
