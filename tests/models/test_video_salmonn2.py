"""``fastav_video_salmonn2``'s adapter: the per-frame layout, the paper's pruning on it, prune=none, batches, the
FLOPs presets from the adapter's own layout, reference scoring, loading and bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from fastav_eval.models.base import Request, SampleError
from fastav_eval.models.model_args import pruning_config
from fastav_eval.models.video_salmonn2 import PLACEHOLDER, VideoSALMONN2Adapter, VideoSALMONN2Sample
from fastav_eval.pruning import Modality, install, relative_flops, simulate_prefill
from fastav_eval.pruning.presets import get_preset
from tests.models.embeds_adapter_checks import (
    assert_a_batch_of_two_equals_each_alone,
    assert_engine_off_is_the_stock_model,
    assert_sdpa_answers_as_eager,
)
from tests.models.video_salmonn2_fixtures import AUDIO_PARTS, FIXTURE, tiny_adapter

QUESTION = "What instrument is playing?"
VISUAL = 182  # SigLIP-384/14: 27x27 patches, pooled to 13x13, each row with its newline
CLIPS = {"clip.mp4": (10, 6), "clip_long.mp4": (47, 3)}  # frames at 1 fps, audio tokens per frame (60·⌈T/30⌉ / F)
REFERENCES = ["a violin", "the drums are playing loudly"]


@pytest.fixture(scope="module")
def adapter():
    return tiny_adapter()


def load(adapter, *visuals, prompt: str = QUESTION):
    return adapter.load_request(Request([str(v) if not isinstance(v, dict) else v for v in visuals], prompt), 0)


@pytest.mark.parametrize("clip", sorted(CLIPS))
def test_layout_marks_each_frames_visual_then_audio_tokens_as_its_chunk(adapter, clip):
    frames, per_frame = CLIPS[clip]
    sample = load(adapter, FIXTURE / clip)
    at = sample.input_ids.tolist().index(PLACEHOLDER)
    inputs = adapter.prepare([sample])
    layout = inputs.layout
    expected_codes, expected_chunks = [Modality.TEXT] * at, [-1] * at
    for f in range(frames):
        expected_codes += [Modality.VIDEO] * VISUAL + [Modality.AUDIO] * per_frame
        expected_chunks += [f] * (VISUAL + per_frame)
    tail = len(sample.input_ids) - at - 1
    expected_codes += [Modality.TEXT] * tail
    chunks = layout.chunk[0].tolist()
    assert layout.modality[0].tolist() == [int(c) for c in expected_codes]
    av = [c for c, m in zip(chunks, layout.modality[0].tolist(), strict=True) if m != Modality.TEXT]
    assert av == expected_chunks[at:]
    embeds = inputs.generate_kwargs["inputs_embeds"][0]
    with torch.no_grad():  # the rows the layout calls frame f's are its visual tokens, then its share of the audio
        visual = adapter.model.encode_frames(sample.pixel_values)
        audio = adapter.model.encode_audio(sample.spectrogram)
    stride = VISUAL + per_frame
    for f in (0, frames - 1):
        assert torch.equal(embeds[at + f * stride : at + f * stride + VISUAL], visual[f])
    first_rows = [0, 1, 2, 3, 4, 5] if frames == 10 else [0, 0, 1]  # 60 / 10 frames; 120 resized to 141 = 47 x 3
    assert torch.equal(embeds[at + VISUAL : at + VISUAL + per_frame], audio[first_rows])
    assert audio.shape[0] == 60 * (1 + (frames > 30))


def test_the_papers_global_rule_keeps_the_first_4_frames():
    model = tiny_adapter()
    config = pruning_config("fastav", {"fine_ratio": 0.0}, VideoSALMONN2Adapter.default_profile(None))
    engine = install(model.decoder, config)
    assert engine.config.global_layer == 2  # half of the tiny LLM's 4 layers (14 of 28 on the real one)
    sample = load(model, FIXTURE / "clip.mp4")
    at = sample.input_ids.tolist().index(PLACEHOLDER)
    inputs = model.prepare([sample])
    with engine.layout(inputs.layout):
        assert model.generate(inputs, 4, [])[0].num_tokens > 0
    kept = engine.last_stats.kv_positions[2][0].tolist()
    frames, per_frame = CLIPS["clip.mp4"]
    stride = VISUAL + per_frame
    assert kept == [*range(at + 4 * stride), *range(at + frames * stride, inputs.layout.length)]


def test_the_fine_stage_never_drops_text_and_flops_match_the_schedule(adapter):
    config = pruning_config("fastav", {}, VideoSALMONN2Adapter.default_profile(None))  # the paper's P = 0.2
    model = tiny_adapter()
    engine = install(model.decoder, config)
    inputs = model.prepare([load(model, FIXTURE / "clip.mp4"), load(model, FIXTURE / "clip_long.mp4", prompt="Hi?")])
    with engine.layout(inputs.layout):
        model.generate(inputs, 2, [])
    stats = engine.last_stats
    text = inputs.layout.count("text")
    for b in range(2):
        summary = stats.sample(b, engine.shape)
        assert summary.kept_per_layer["text"] == [int(text[b])] * 4
    simulated = simulate_prefill(inputs.layout, engine.config, 4)  # what `fastav-eval flops` runs
    assert torch.equal(simulated.tokens_per_layer, stats.tokens_per_layer)
    assert torch.equal(relative_flops(simulated.tokens_per_layer, engine.shape), stats.relative_flops(engine.shape))


@pytest.mark.parametrize(("preset", "seconds"), [("video_salmonn2", 10), ("video_salmonn2_60s", 60)])
def test_the_flops_presets_are_the_adapters_layout(adapter, preset, seconds):
    """The presets' audio-visual segments are what the adapter lays out for a clip of that length at 1 fps (its
    real encoders: 182 tokens per 384-px frame, 60 per 30-s Whisper chunk, spread over the frames)."""
    chunks = -(-seconds // 30)
    sample = VideoSALMONN2Sample(
        input_ids=torch.tensor([PLACEHOLDER]),
        pixel_values=torch.zeros(seconds, 3, 384, 384),
        spectrogram=torch.zeros(chunks, 128, 3000),
        real_time=float(seconds),
    )
    _, segments = adapter.media(sample)
    assert list(get_preset(preset).segments[1:-1]) == segments
    flops = get_preset(preset).run(fine_ratio=0.2)["relative_flops"]
    if preset == "video_salmonn2":
        assert abs(flops - 58) <= 1.5  # the paper's Table 1
    else:
        assert flops == pytest.approx(50.95, abs=0.01)  # README: the paper gives no MUSIC-AVQA figure


def test_prune_none_equals_the_model_without_the_engine():
    assert_engine_off_is_the_stock_model(tiny_adapter, FIXTURE / "clip.mp4", QUESTION)


def test_a_batch_of_two_equals_each_alone(adapter):
    assert_a_batch_of_two_equals_each_alone(adapter, (FIXTURE / "clip.mp4", FIXTURE / "clip_long.mp4"), QUESTION)


def test_sdpa_and_eager_give_the_same_answer():
    assert_sdpa_answers_as_eager(tiny_adapter, FIXTURE / "clip.mp4", QUESTION)


def test_media_combinations(adapter, tmp_path):
    from tests.lmms.av_task_fixtures import write_wav

    wav = tmp_path / "a.wav"
    write_wav(wav, seconds=3.0)
    video_and_audio = load(adapter, FIXTURE / "clip.mp4", wav)  # the task's audio replaces the soundtrack
    own = load(adapter, FIXTURE / "clip.mp4")
    assert video_and_audio.spectrogram.shape == own.spectrogram.shape == (1, 128, 3000)
    assert not torch.equal(video_and_audio.spectrogram, own.spectrogram)
    audio_alone = load(adapter, wav)
    assert audio_alone.pixel_values is None and audio_alone.real_time == 30.0
    inputs = adapter.prepare([audio_alone])
    assert inputs.layout.count("video").item() == 0 and inputs.layout.count("audio").item() == 60
    assert inputs.layout.chunk[0][inputs.layout.modality[0] == Modality.AUDIO].max().item() == 29  # 1 chunk per s


def test_video_audio_modes(tmp_path):
    from tests.lmms.av_task_fixtures import write_clip

    silent = tmp_path / "silent.mp4"
    write_clip(silent, seconds=3.0, fps=4, size=32, audio=False)
    required = tiny_adapter()
    with pytest.raises(SampleError, match=r"has no audio track.*video_audio=if_present"):
        load(required, silent)
    for adapter in (tiny_adapter(video_audio="if_present"), tiny_adapter(video_audio="off")):
        sample = load(adapter, silent if adapter.options["video_audio"] == "if_present" else FIXTURE / "clip.mp4")
        assert sample.spectrogram is None
        inputs = adapter.prepare([sample])
        frames = len(sample.pixel_values)
        assert inputs.layout.count("audio").item() == 0 and inputs.layout.count("video").item() == frames * VISUAL
        # the official video-only path: each frame's time as text after its tokens (add_time_token)
        modality = inputs.layout.modality[0].tolist()
        first_frame_end = modality.index(int(Modality.VIDEO)) + VISUAL
        assert modality[first_frame_end] == int(Modality.TEXT)


@pytest.mark.parametrize(
    ("visuals", "message"),
    [
        ([], "no video or audio"),
        (["missing.mp4"], "does not exist"),
        ([FIXTURE / "clip.mp4", FIXTURE / "clip_long.mp4"], "takes one video per prompt"),
        ([object()], "accepted: a video or audio file path"),
    ],
)
def test_unanswerable_requests_name_the_reason(adapter, visuals, message):
    with pytest.raises(SampleError, match=message):
        adapter.load_request(Request([str(v) if isinstance(v, type(FIXTURE)) else v for v in visuals], QUESTION), 0)


def test_an_image_is_refused_naming_why(adapter, tmp_path):
    from tests.lmms.av_task_fixtures import write_png

    png = tmp_path / "a.png"
    write_png(png)
    with pytest.raises(SampleError, match="needs at least 2 frames"):
        load(adapter, png)


def test_a_question_with_its_own_modal_tag_fails_its_sample(adapter):
    with pytest.raises(SampleError, match="modal tag"):
        load(adapter, FIXTURE / "clip.mp4", prompt="<image>\nWhat is it?")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"video_audio": "sometimes"}, "video_audio='sometimes'; accepted"),
        ({"prompt_im_end": "maybe"}, "prompt_im_end='maybe'; accepted"),
        ({"max_frames": 1}, "max_frames=1; accepted: an int >= 2"),
        ({"whisper": "/nonexistent/whisper"}, "cannot read the Whisper config"),
    ],
)
def test_bad_model_args_name_the_field(args, message):
    with pytest.raises(ValueError, match=message):
        tiny_adapter(**args)


def test_prompt_im_end_modes(adapter):
    """keep (default): the official evaluation's prompt; drop: its demo's and forward passes' (the collator masks
    the tokenizer's eos, <|im_end|> here)."""
    im_end = adapter.tokenizer.convert_tokens_to_ids("<|im_end|>")
    kept = adapter.prompt_ids(QUESTION).tolist()
    dropped = tiny_adapter(prompt_im_end="drop").prompt_ids(QUESTION).tolist()
    assert kept.count(im_end) == 2 and im_end not in dropped
    assert [i for i in kept if i != im_end] == dropped


def test_a_missing_or_unexpected_tensor_is_an_error_naming_it(tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, folder, ignore=shutil.ignore_patterns("*.mp4", "*.wav", "reference*"))
    tensors = load_file(folder / "model.safetensors")
    extra = dict(tensors, **{"speech_extra.weight": torch.zeros(1)})
    save_file(extra, folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"unexpected tensor.*speech_extra\.weight"):
        VideoSALMONN2Adapter(str(folder), "cpu", torch.float32, "sdpa", **AUDIO_PARTS)
    missing = {k: v for k, v in tensors.items() if k != "final_linear.2.bias"}
    save_file(missing, folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"final_linear: missing 2\.bias"):
        VideoSALMONN2Adapter(str(folder), "cpu", torch.float32, "sdpa", **AUDIO_PARTS)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "llava_qwen"}, "model_type='llava_qwen'; accepted"),
        ({"mm_spatial_pool_mode": "bilinear"}, "mm_spatial_pool_mode='bilinear'; accepted"),
        ({"mm_newline_position": "frame"}, "mm_newline_position='frame'; accepted"),
    ],
)
def test_a_config_this_model_was_not_written_for_is_refused(tmp_path, change, message):
    folder = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, folder, ignore=shutil.ignore_patterns("*.mp4", "*.wav", "reference*"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match=message):
        VideoSALMONN2Adapter(str(folder), "cpu", torch.float32, "sdpa", **AUDIO_PARTS)


def reference_batch(adapter):
    return [load(adapter, FIXTURE / "clip.mp4"), load(adapter, FIXTURE / "clip_long.mp4", prompt="Which one?")]


def test_reference_logprob_is_minus_the_teacher_forced_loss(adapter):
    """Oracle: the stock LLM's own loss over one forward of [prompt + answer] per sample (no cache, no padding)."""
    samples = reference_batch(adapter)
    logprob = adapter.reference_logprob(adapter.prepare(samples), REFERENCES)
    llm = adapter.model.llm
    for i, (sample, reference) in enumerate(zip(samples, REFERENCES, strict=True)):
        prompt = adapter.prepare([sample]).generate_kwargs["inputs_embeds"]
        answer = torch.tensor([adapter.ends.reference_ids(adapter.tokenizer, reference)])
        with torch.no_grad():
            embeds = torch.cat([prompt, llm.get_input_embeddings()(answer)], 1)
            labels = torch.cat([torch.full((1, prompt.shape[1]), -100), answer], 1)
            loss = llm(inputs_embeds=embeds, labels=labels).loss
        assert float(logprob[i]) == pytest.approx(-float(loss), abs=1e-4), i
    pairs = zip(samples, REFERENCES, strict=True)
    alone = torch.cat([adapter.reference_logprob(adapter.prepare([s]), [r]) for s, r in pairs])
    torch.testing.assert_close(logprob, alone, atol=1e-5, rtol=0)
