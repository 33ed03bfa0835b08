"""PyAV media decoding: soundtrack length, mono downmix, resampling, and what a file without a track says."""

from __future__ import annotations

import av
import numpy as np
import pytest

from fastav_eval.models.media import audio_from_dict, decode_audio, has_audio_track, sample_frames
from tests.lmms.av_task_fixtures import write_clip


def write_stereo_wav(path, left: float, right: float, rate: int = 16000, seconds: int = 1):
    samples = np.zeros((1, 2 * rate * seconds), np.int16)  # packed s16: L, R, L, R, ...
    samples[0, 0::2], samples[0, 1::2] = int(left * 32767), int(right * 32767)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="stereo")
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="stereo")
        frame.sample_rate, frame.pts = rate, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path


def test_an_aac_soundtrack_is_trimmed_to_its_declared_duration(tmp_path):
    """AAC pads its last frame (2 s decodes as 2.048 s): 51 audio tokens instead of the clip's 50."""
    waveform = decode_audio(write_clip(tmp_path / "clip.mp4", 2), 16000)
    assert waveform.shape == (32000,) and waveform.dtype == np.float32 and 0.3 < np.abs(waveform).max() < 0.6


def test_stereo_is_averaged_alike_from_a_file_and_from_an_array(tmp_path):
    from_file = decode_audio(write_stereo_wav(tmp_path / "stereo.wav", 0.5, 0.0), 16000)
    from_array = audio_from_dict(
        {"array": np.stack([np.full(16000, 0.5), np.zeros(16000)], 1), "sampling_rate": 16000}, 16000
    )
    assert from_file.shape == from_array.shape == (16000,)
    assert np.allclose(from_file, 0.25, atol=1e-3) and np.allclose(from_array, 0.25)


def test_arrays_are_resampled_to_the_models_rate():
    tone = np.sin(2 * np.pi * 440 * np.arange(44100) / 44100).astype(np.float32)
    resampled = audio_from_dict({"array": tone, "sampling_rate": 44100}, 16000)
    expected = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    assert resampled.shape == (16000,) and np.abs(resampled[100:-100] - expected[100:-100]).max() < 1e-2


def test_bad_audio_and_silent_clips_are_named(tmp_path):
    silent = write_clip(tmp_path / "silent.mp4", 2, audio=False)
    assert not has_audio_track(silent) and has_audio_track(write_clip(tmp_path / "sound.mp4", 2))
    with pytest.raises(ValueError, match=r"silent\.mp4 has no audio track"):
        decode_audio(silent, 16000)
    with pytest.raises(ValueError, match=r"'sampling_rate' must be a positive int; got 0"):
        audio_from_dict({"array": np.zeros(10), "sampling_rate": 0}, 16000)
    with pytest.raises(ValueError, match=r"must hold 'array' and 'sampling_rate'"):
        audio_from_dict({"path": "x.wav"}, 16000)
    with pytest.raises(ValueError, match=r"cannot open .*nothing\.mp4"):
        sample_frames(tmp_path / "nothing.mp4", 2.0, 8)
