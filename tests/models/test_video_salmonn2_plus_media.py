"""video-SALMONN 2+'s media path against what the official code computed from the same clips
(tests/fixtures/video_salmonn2_plus_tiny, saved by the official 2+ code with torchcodec and torchvision): frame
indices, decoded frames, resized frames, patches, the soundtrack, the log-mels and the per-grid audio counts."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from fastav_eval.models.video_salmonn2_plus_media import (
    SAMPLE_RATE,
    audio_per_grid,
    audio_pieces,
    decode_frames,
    float_soundtrack,
    frame_indices,
    frame_pixel_cap,
    patches,
    resize_frames,
    smart_resize,
    video_pixels,
)
from tests.models.video_salmonn2_fixtures import PLUS_FIXTURE as FIXTURE
from tests.models.video_salmonn2_fixtures import PLUS_META, has_plus_ref, official_waveform, plus_ref

CASES = ("clip10s", "odd", "long")
META = PLUS_META
ref, waveform = plus_ref, official_waveform


def sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


@pytest.mark.parametrize("case", CASES)
def test_frames_and_length_are_the_official_ones(case):
    meta = META["cases"][case]
    frames, length = decode_frames(FIXTURE / meta["file"])
    assert length == pytest.approx(meta["video_length"], abs=1e-9)
    assert frame_indices(meta["torchcodec_video_metadata"]["num_frames"], length) == meta["frame_idx"]
    assert torch.equal(frames, ref(case, "frames_u8"))


@pytest.mark.parametrize("case", CASES)
def test_pixels_are_the_official_ones(case):
    meta = META["cases"][case]
    frames = ref(case, "frames_u8")
    assert frame_pixel_cap(len(frames)) == meta["per_frame_max_pixels"]
    resized = resize_frames(frames, frame_pixel_cap(len(frames)))
    assert list(resized.shape[-2:]) == meta["resized_hw"]
    if has_plus_ref(case, "resized_u8"):
        assert torch.equal(resized, ref(case, "resized_u8"))
    pixels = video_pixels(frames, meta["video_length"])
    assert list(pixels.grid) == meta["video_grid_thw"] and pixels.second_per_grid == meta["second_per_grid_ts"]
    assert sha256(pixels.pixel_values) == meta["pixel_values_videos"]["sha256_float32"]


def test_an_odd_frame_count_repeats_the_last_frame():
    frames = torch.randint(0, 255, (3, 3, 28, 28), dtype=torch.uint8)
    flat, grid = patches(frames)
    assert grid == (2, 2, 2)
    repeated, _ = patches(torch.cat([frames, frames[-1:]]))
    assert torch.equal(flat, repeated)


def test_smart_resize_refuses_what_the_official_code_cannot_take():
    assert smart_resize(48, 64, 446879.99999999994) == (56, 56)
    with pytest.raises(ValueError, match="both sides >= 28 px"):
        smart_resize(16, 64, 61250)


@pytest.mark.parametrize("case", CASES)
def test_soundtrack_and_log_mels_are_the_official_ones(case):
    meta = META["cases"][case]
    ours = float_soundtrack(FIXTURE / meta["file"])
    official = waveform(case)
    assert ours.shape == official.shape
    np.testing.assert_allclose(ours, official, atol=2e-7, rtol=0)  # FFmpeg 7.1 (PyAV) vs 5.1: 9e-8
    extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=SAMPLE_RATE, hop_length=160, chunk_length=30)
    pieces = audio_pieces(official)
    features = torch.stack(
        [extractor(p, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features[0] for p in pieces]
    )
    assert sha256(features) == meta["audio_feature"]["sha256_float32"]
    assert len(pieces) * 60 == meta["audio_lengths"][0]


@pytest.mark.parametrize("case", CASES)
def test_audio_per_grid_is_the_official_split(case):
    meta = META["cases"][case]
    grids = meta["video_grid_thw"][0]
    assert (
        audio_per_grid(meta["audio_lengths"][0], grids, meta["second_per_grid_ts"])
        == (meta["audio_tokens_per_grid_official"])
    )


def test_a_soundtrack_far_shorter_than_the_video_is_refused():
    with pytest.raises(ValueError, match="much shorter than the video"):
        audio_per_grid(60, 500, 0.2)
