"""video-SALMONN 2's sampling, audio split and interleave against the official formulas, written out here on their
own (llava/dataset/av_dataset.py and prepare_inputs_labels_for_multimodal at commit 61faec0), and the FLOPs presets
against the layout the adapter builds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastav_eval.models.video_salmonn2 import audio_chunks, frame_indices, time_texts
from fastav_eval.models.video_salmonn2_model import AudioSplit, interleave, segment_table


def official_frames(total: int, fps: float, max_frames: int = 110) -> list[int]:
    step = max(round(fps / 1), 1)
    indices = [k for k in range(0, total, round(step))]
    return np.linspace(0, total - 1, max_frames, dtype=int).tolist() if len(indices) > max_frames else indices


@pytest.mark.parametrize(("total", "fps"), [(100, 10.0), (300, 29.97), (7, 2.5), (5000, 25.0), (40, 0.5)])
def test_frame_indices_are_the_official_1_fps_sampling(total, fps):
    assert frame_indices(total, fps) == official_frames(total, fps)


def test_a_long_clip_gets_110_evenly_spaced_frames():
    indices = frame_indices(25 * 600, 25.0)
    assert len(indices) == 110 and indices[0] == 0 and indices[-1] == 25 * 600 - 1


@pytest.mark.parametrize(("frames", "audio", "seconds"), [(10, 60, 10.0), (47, 120, 47.0), (7, 60, 7.3), (2, 60, 1.0)])
def test_interleave_is_the_official_nearest_resize_per_frame(frames, audio, seconds):
    width = 3
    visual = torch.randn(frames, 5, width)
    speech = torch.randn(audio, width)
    split = AudioSplit.of(frames, audio, seconds)
    block = interleave(visual, speech, split)
    front_num = round(seconds * 50)
    front, back = speech[:front_num], speech[front_num:]
    if front.shape[0] % frames:
        size = front.shape[0] + frames - front.shape[0] % frames
        front = F.interpolate(front.unsqueeze(0).transpose(1, 2), size=size, mode="nearest").transpose(1, 2).squeeze()
    expected = torch.cat([visual, front.view(frames, -1, width)], dim=1).view(-1, width)
    expected = torch.cat([expected, back])
    assert torch.equal(block, expected)
    assert split.per_frame == math.ceil(min(audio, front_num) / frames) and split.back == len(back)


def test_nearest_resize_takes_floor_of_i_times_in_over_out():
    speech = torch.arange(120.0)[:, None]
    block = interleave(torch.zeros(47, 0, 1), speech, AudioSplit.of(47, 120, 47.0))  # 141 = 47 x 3
    assert block.flatten().tolist() == [math.floor(i * 120 / 141) for i in range(141)]


def test_segment_table_zero_for_the_first_chunk_then_sinusoids():
    table = segment_table(8)
    assert table.shape == (201, 8) and not table[0].any()
    assert table[1].tolist() == [0.0, 1.0] * 4
    assert torch.allclose(table[3, 0::2], torch.sin(2 * torch.exp(torch.arange(0, 8, 2) * -(math.log(1e4) / 8))))


def test_audio_chunks_pad_to_a_second_cut_to_the_clip_and_split_every_30_s():
    assert [len(c) for c in audio_chunks(np.ones(8000), 10.0)] == [16000]
    assert [len(c) for c in audio_chunks(np.ones(16000 * 70), 47.2)] == [480000, 16000 * 47 + 3200 - 480000]


def test_time_texts_are_the_official_frame_times():
    assert time_texts(10.0, 10) == [f"{float(t)}" for t in range(1, 11)]
    assert time_texts(7.0, 3) == ["2.3", "4.7", "7.0"]
