"""VideoLLaMA2's preprocessing and STC connector against hand-computed cases (the official outputs are in
``test_videollama2_parity.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastav_eval.models.stc_connector import STCConnectorV35
from fastav_eval.models.videollama2 import audio_file_waveform, clip_bounds, frame_indices, video_audio_waveform


@pytest.mark.parametrize(
    ("count", "num_frames", "expected"),
    [
        (10, 4, [1, 3, 6, 8]),  # middles 1.125, 3.375, 5.625, 7.875
        (5, 4, [1, 2, 3, 4]),  # middles 0.5 ... 3.5: halves round up (the official + 1e-6), not to even
        (3, 4, [0, 1, 1, 2]),  # fewer frames than asked: repeats
        (1, 2, [0, 0]),
    ],
)
def test_frame_indices_are_rounded_segment_middles(count, num_frames, expected):
    assert frame_indices(count, num_frames) == expected


def test_clip_bounds_are_eight_evenly_spaced_two_second_clips():
    bounds = clip_bounds(20 * 16000)  # starts k · 18 / 8 s
    assert bounds == [(int(k * 2.25 * 16000), int(k * 2.25 * 16000) + 32000) for k in range(8)]
    assert clip_bounds(16000) == [(0, 32000)] * 8  # shorter than a clip: the whole track, eight times
    waveform = video_audio_waveform(np.arange(16000, dtype=np.float32))
    assert waveform.shape == (8 * 16000,)  # each clip is cut at the track's end


def test_clip_bounds_floor_exact_fractions():
    # 3.2 s: the maximal start is 3.2 - 2 (1.2000000000000002 in binary), one eighth per clip, floored.
    assert [start for start, _ in clip_bounds(51200)] == [0, 2400, 4800, 7200, 9600, 12000, 14400, 16800]


def test_audio_file_waveform_takes_channel_zero_pads_then_resamples():
    stereo = np.stack([np.ones(8000), -np.ones(8000)], axis=1).astype(np.float32)  # 1 s at 8 kHz
    wave = audio_file_waveform(stereo, 8000)
    assert wave.shape == (480000,)
    assert wave[2000:14000].mean() == pytest.approx(1.0, abs=0.02) and abs(wave[100000:].mean()) < 1e-3
    long = np.zeros(40 * 16000, dtype=np.float32)
    long[:10] = 1.0
    assert audio_file_waveform(long, 16000).shape == (480000,) and audio_file_waveform(long, 16000)[0] == 1.0


def test_stc_connector_counts_and_time_major_order():
    torch.manual_seed(0)
    connector = STCConnectorV35(vision_width=8, llm_width=16, depth=2).eval()
    assert STCConnectorV35.num_tokens(16, 27) == 1352
    features = torch.randn(1, 6, 7 * 7, 8)  # 6 frames of 7×7 patches -> 3 pairs of 3×3 tokens
    with torch.no_grad():
        tokens = connector(features)
        assert tokens.shape == (1, 27, 16)
        moved = features.clone()
        moved[:, 2:4] += 1.0  # frames 2 and 3 are the second pair: only its 9 tokens may change
        changed = (connector(moved) - tokens).abs().amax(-1)[0] > 1e-6
    assert changed.tolist() == [False] * 9 + [True] * 9 + [False] * 9
    with pytest.raises(ValueError, match="not a square grid"):
        connector(torch.randn(1, 2, 12, 8))


def test_read_audio_file_keeps_the_channels_apart(tmp_path):
    import wave

    from fastav_eval.models.media import read_audio_file

    left = (np.arange(4000) % 100 * 300).astype(np.int16)
    right = -left
    path = tmp_path / "stereo.wav"
    with wave.open(str(path), "wb") as handle:  # packed (interleaved) 16-bit PCM, as soundfile reads it
        handle.setnchannels(2)
        handle.setsampwidth(2)
        handle.setframerate(8000)
        handle.writeframes(np.stack([left, right], axis=1).tobytes())
    samples, rate = read_audio_file(path)
    assert rate == 8000 and samples.shape == (4000, 2)
    assert np.array_equal(samples[:, 0], left / 32768.0) and np.array_equal(samples[:, 1], right / 32768.0)


def test_unsigned_8_bit_pcm_is_centred():
    from fastav_eval.models.media import to_float

    assert to_float(np.array([0, 128, 255], dtype=np.uint8)).tolist() == [-1.0, 0.0, 127 / 128]
    assert to_float(np.array([-32768, 16384], dtype=np.int16)).tolist() == [-1.0, 0.5]
