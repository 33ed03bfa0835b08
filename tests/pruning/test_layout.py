"""Modality layouts and the selection rules, on hand-made layouts."""

from __future__ import annotations

import pytest
import torch

from fastav_eval.pruning import Modality, ModalityLayout, PruningConfig, PruningProfile, simulate_prefill
from fastav_eval.pruning.rules import select_top


def test_segments_are_left_padded_with_ranks_and_chunks():
    layout = ModalityLayout.from_segments(
        [
            [("text", 2), ("video", 2), ("audio", 3), ("video", 2), ("audio", 1), ("text", 1)],
            [("text", 1), ("audio", 2), ("text", 1)],
        ]
    )
    assert layout.length == 11 and layout.batch_size == 2
    a, t, p = int(Modality.AUDIO), int(Modality.TEXT), int(Modality.PAD)
    assert layout.modality[1].tolist() == [p] * 7 + [t, a, a, t]
    assert layout.rank[0].tolist() == [0, 1, 0, 1, 0, 1, 2, 2, 3, 3, 2]
    assert layout.chunk[0].tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert layout.count("audio").tolist() == [4, 2]
    protected = layout.protected(sink_tokens=3)
    assert protected[0].tolist() == [True, True, True] + [False] * 7 + [True]
    assert protected[1].tolist() == [False] * 7 + [True] * 4


def test_frames_count_on_across_a_videos_runs_and_other_runs_are_one_frame_each():
    """A run with ``frame_tokens`` continues the frames of the runs before it of the same size (a chunk may end inside
    a frame); a run without is a frame of its own; text and padding are -1."""
    layout = ModalityLayout.from_segments([
        [("text", 2), ("video", 3, 0, 2), ("audio", 2, 0), ("video", 3, 1, 2), ("audio", 1, 1), ("text", 1)],
        [("text", 1), ("video", 4, 0, 4), ("audio", 3, 0), ("text", 1)],
    ])  # fmt: skip
    assert layout.frame[0].tolist() == [-1, -1, 0, 0, 1, 0, 0, 1, 2, 2, 1, -1]
    assert layout.frame[1].tolist() == [-1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, -1]
    assert torch.equal(
        ModalityLayout.from_codes(layout.modality).frame, ModalityLayout.from_codes(layout.modality).chunk
    )
    with pytest.raises(ValueError, match=r"samples\[0\]\[1\].frame_tokens=0; accepted: an int >= 1"):
        ModalityLayout.from_segments([[("text", 1), ("video", 4, 0, 0)]])


def test_select_top_keeps_budget_per_row_and_breaks_ties_by_position():
    priority = torch.tensor([[0.1, 0.9, 0.9, 0.5], [1.0, 1.0, 1.0, 1.0]])
    eligible = torch.tensor([[True, True, True, True], [True, False, True, True]])
    keep = select_top(priority, eligible, torch.tensor([2, 2]))
    assert keep.tolist() == [[False, True, True, False], [True, False, True, False]]


def test_fine_stage_drops_floor_ratio_of_droppable_tokens_per_sample():
    layout = ModalityLayout.from_segments(
        [
            [("text", 4), ("video", 40), ("audio", 60), ("text", 6)],
            [("text", 4), ("video", 10), ("audio", 5), ("text", 6)],
        ]
    )
    config = PruningConfig(global_layer=2, profile=PruningProfile.prefix(audio=10), fine_ratio=0.2, sink_tokens=0)
    stats = simulate_prefill(layout, config, num_layers=5)
    droppable = [50, 15]  # after the global stage: 40 video + 10 audio; 10 video + 5 audio
    for row, n in enumerate(droppable):
        expected = [n]
        for _ in range(2):
            expected.append(expected[-1] - int(0.2 * expected[-1]))
        av = stats.modality_per_layer["video"][row] + stats.modality_per_layer["audio"][row]
        assert av[2:].tolist() == expected
    # The batch stays dense: the short row's slots are filled up to the long row's count.
    assert stats.slots_per_layer[2:] == [int(stats.tokens_per_layer[0, i]) for i in range(2, 5)]
