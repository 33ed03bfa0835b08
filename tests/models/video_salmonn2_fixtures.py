"""The tiny video-SALMONN 2 checkpoint of ``tests/fixtures/video_salmonn2_tiny`` (made by the official code; see its
README), loaded through the adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fastav_eval.models.video_salmonn2 import VideoSALMONN2Adapter

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "video_salmonn2_tiny"
AUDIO_PARTS = {"whisper": str(FIXTURE / "whisper"), "qformer_config": str(FIXTURE / "bert-base-uncased")}
"""What the official constructor is given beside the checkpoint: a Whisper folder and the Q-Former's BERT config."""


def tiny_adapter(attn_implementation: str = "sdpa", **model_args: Any) -> VideoSALMONN2Adapter:
    return VideoSALMONN2Adapter(
        str(FIXTURE), "cpu", torch.float32, attn_implementation, **{**AUDIO_PARTS, **model_args}
    )
