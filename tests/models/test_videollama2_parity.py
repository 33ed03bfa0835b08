"""``fastav_videollama2``'s model and preprocessing against the official VideoLLaMA2 code on the same tiny weights.

The oracle is ``tests/fixtures/videollama2_tiny/``: a tiny random checkpoint saved by the official classes
(transformers 4.42.3, branch ``audio_visual``) and what the official code computed from it and from ``clip.mp4``
(``make_fixture.py`` and the folder's README say how). Each module is fed the official inputs of that module, so a
difference is located where it arises.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fastav_eval.models.base import Request
from fastav_eval.models.fbank import beats_fbank
from fastav_eval.models.videollama2 import (
    PLACEHOLDER,
    VideoLLaMA2Sample,
    clip_bounds,
    decode_video_frames,
    frame_indices,
    soundtrack,
    video_audio_waveform,
)
from tests.models.videollama2_fixtures import FIXTURE, tiny_adapter

REFERENCE = load_file(FIXTURE / "reference.safetensors")
META = json.loads((FIXTURE / "reference.json").read_text())
CLIPS = {"clip.mp4": "frames_rgb", "clip_long.mp4": "long_frames_rgb", "silent.mp4": "silent_frames_rgb",
         "clip_bt709.mp4": "bt709_frames_rgb"}  # fmt: skip


@pytest.fixture(scope="module")
def adapter():
    return tiny_adapter(attn_implementation=META["attn_implementation"])


@pytest.mark.parametrize("clip", sorted(CLIPS))
def test_frames_are_the_official_ones(clip):
    info = META["media"][clip]
    assert frame_indices(info["decord_num_frames"], 4) == info["frame_indices"]
    frames = np.stack(decode_video_frames(FIXTURE / clip, 4))
    assert np.array_equal(frames, REFERENCE[CLIPS[clip]].numpy())  # decord's RGB frames, pixel for pixel


def test_a_bt709_clip_is_converted_with_its_own_matrix():
    """An HD-style clip tagged BT.709: decord (the official reader) converts with that matrix; PyAV's plain rgb24
    uses BT.601 whatever the tag, which would move these saturated colours by up to 22 levels."""
    import av

    with av.open(str(FIXTURE / "clip_bt709.mp4")) as container:
        first = next(container.decode(container.streams.video[0]))
        plain = first.to_ndarray(format="rgb24").astype(int)
    official = REFERENCE["bt709_frames_rgb"].numpy()
    assert np.abs(plain - official[0]).max() > 10  # the trap this test guards against
    assert np.array_equal(np.stack(decode_video_frames(FIXTURE / "clip_bt709.mp4", 4)), official)


def test_pixel_values_are_the_official_ones(adapter):
    assert torch.equal(adapter._pixels(list(REFERENCE["frames_rgb"].numpy())), REFERENCE["pixel_values"])
    for clip, key in (("clip_long.mp4", "long"), ("silent.mp4", "silent")):
        resized = REFERENCE[f"{key}_pixel_u8"].permute(0, 3, 1, 2).float()  # the processor's resized image
        expected = (resized * (1 / 255) - 0.5) / 0.5
        pixels = adapter._pixels(decode_video_frames(FIXTURE / clip, 4))
        assert torch.allclose(pixels, expected, atol=1e-6, rtol=0), clip


def test_audio_clips_and_fbank_are_the_official_ones():
    info = META["media"]["clip.mp4"]
    expected = [(int(start * 16000), int(end * 16000)) for start, end in info["clip_timepoints"]]
    assert clip_bounds(info["audio_num_samples_16k"]) == expected
    official_track = REFERENCE["waveform_s16"].numpy().astype(np.float32) / 32768.0  # what the ffmpeg CLI gave
    fbank = beats_fbank(torch.from_numpy(video_audio_waveform(official_track)))
    # Clips, padding, ×2¹⁵, fbank, bf16: exact on the machine that made the reference. Another CPU's float32 FFT
    # (an AMD EPYC here) moves a few values across a bf16 rounding boundary, on 0.2% of them: by one bf16 step, or
    # near 0 (where a step is finer than the float32 round-off of a log energy) by at most 4e-3.
    official = REFERENCE["fbank"].float()
    larger = torch.maximum(official.abs(), fbank.abs()).clamp_min(2**-126)
    bf16_step = torch.exp2(torch.floor(torch.log2(larger)) - 7)  # the spacing of bf16 values around each one
    apart = (fbank - official).abs()
    assert bool((apart <= torch.clamp(bf16_step, min=4e-3)).all()) and float((apart > 0).float().mean()) < 0.01
    ours = soundtrack(FIXTURE / "clip.mp4")  # PyAV's FFmpeg, another release than the CLI's
    assert ours.shape == official_track.shape
    assert np.abs(ours - official_track).max() <= 1 / 32768 + 1e-9  # at most one int16 step apart


def test_the_long_clip_and_the_silent_fallback():
    track = soundtrack(FIXTURE / "clip_long.mp4")
    head = REFERENCE["long_fbank_head"].float()[0]
    fbank = beats_fbank(torch.from_numpy(video_audio_waveform(track)))[0]
    assert fbank.shape == (2998, 128) and torch.all(fbank[1600:] == fbank[-1])  # past 16 s: the padding
    assert (fbank[: head.shape[0]] - head).abs().mean() < 0.05  # one-LSB resampler differences, in quiet bins
    assert soundtrack(FIXTURE / "silent.mp4") is None
    silence = beats_fbank(torch.from_numpy(video_audio_waveform(np.zeros(480000, np.float32))))[0]
    assert torch.all(silence == REFERENCE["silent_fbank_row"].float())  # the official 30 s of zeros


def test_an_audio_file_gives_the_official_fbank(adapter):
    """``process_audio_file``: channel 0 of an 8-kHz stereo wav, padded to 30 s, FFT-resampled in float64."""
    fbank = adapter._audio(str(FIXTURE / "tone_8k_stereo.wav"))
    head = REFERENCE["wav_fbank_head"].float()[0]
    assert fbank.shape == (2998, 128)
    assert torch.equal(fbank[: head.shape[0]], head)
    assert torch.all(fbank[head.shape[0] :] == REFERENCE["wav_fbank_tail_row"].float())


def test_modules_match_the_official_ones(adapter):
    model = adapter.model
    with torch.no_grad():
        vision = model.vision_features(REFERENCE["pixel_values"])
        video = model.mm_projector(REFERENCE["vision_features"][None])
        beats = model.audio_tower(REFERENCE["fbank"].float())
        audio = model.mm_projector_a(REFERENCE["beats_features"])
    assert torch.allclose(vision, REFERENCE["vision_features"], atol=1e-5, rtol=0)
    assert torch.allclose(video, REFERENCE["video_tokens"], atol=1e-5, rtol=0)
    assert torch.allclose(beats, REFERENCE["beats_features"], atol=1e-4, rtol=0)
    assert torch.allclose(audio, REFERENCE["audio_tokens"], atol=1e-5, rtol=0)


def test_prompt_ids_are_the_official_ones(adapter):
    ids = adapter.prompt_ids(META["question"])
    assert ids.tolist() == REFERENCE["input_ids"][0].tolist()
    assert ids.tolist().index(PLACEHOLDER) == META["video_token_position"]


def test_first_answer_logits_and_greedy_answer_are_the_official_ones(adapter):
    official = VideoLLaMA2Sample(REFERENCE["input_ids"][0], REFERENCE["pixel_values"], REFERENCE["fbank"][0].float())
    inputs = adapter.prepare([official])
    assert inputs.generate_kwargs["inputs_embeds"].shape[1] == META["expanded_length"]
    with torch.no_grad():
        logits = adapter.model.llm(**inputs.generate_kwargs).logits[0, -1]
    assert torch.allclose(logits, REFERENCE["first_token_logits"], atol=1e-4, rtol=0)
    answer = adapter.generate(inputs, 8, [])[0]
    greedy = REFERENCE["greedy_ids"][0].tolist()
    assert answer.num_tokens == len(greedy)
    assert answer.text == adapter.tokenizer.decode(greedy, skip_special_tokens=True).strip()
    # From the file, through our media stack: the same answer (the soundtrack differs by at most one LSB).
    from_file = adapter.prepare([adapter.load_request(Request([str(FIXTURE / "clip.mp4")], META["question"]), 0)])
    assert adapter.generate(from_file, 8, [])[0] == answer
