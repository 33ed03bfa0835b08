"""The tiny VideoLLaMA2-AV checkpoint of ``tests/fixtures/videollama2_tiny`` (made by the official code; see its
README), loaded through the adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fastav_eval.models.videollama2 import VideoLLaMA2Adapter

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "videollama2_tiny"
VISION_TOWER = FIXTURE / "siglip"  # the config names it relative to the fixture folder


def tiny_adapter(attn_implementation: str = "sdpa", **model_args: Any) -> VideoLLaMA2Adapter:
    model_args.setdefault("vision_tower", str(VISION_TOWER))
    return VideoLLaMA2Adapter(str(FIXTURE), "cpu", torch.float32, attn_implementation, **model_args)
