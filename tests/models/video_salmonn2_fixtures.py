"""The tiny video-SALMONN 2 and 2+ checkpoints of ``tests/fixtures/video_salmonn2_tiny`` and
``tests/fixtures/video_salmonn2_plus_tiny`` (made by the official code; see their READMEs), loaded through the
adapters, and the 2+ references."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from fastav_eval.models.video_salmonn2 import VideoSALMONN2Adapter
from fastav_eval.models.video_salmonn2_plus import VideoSALMONN2PlusAdapter

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "video_salmonn2_tiny"
AUDIO_PARTS = {"whisper": str(FIXTURE / "whisper"), "qformer_config": str(FIXTURE / "bert-base-uncased")}
"""What the official constructor is given beside the checkpoint: a Whisper folder and the Q-Former's BERT config."""


def tiny_adapter(attn_implementation: str = "sdpa", **model_args: Any) -> VideoSALMONN2Adapter:
    return VideoSALMONN2Adapter(
        str(FIXTURE), "cpu", torch.float32, attn_implementation, **{**AUDIO_PARTS, **model_args}
    )


PLUS_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "video_salmonn2_plus_tiny"
"""The tiny video-SALMONN 2+ ``_full``-style checkpoint (made by the official 2+ code; see its README)."""


def tiny_plus_adapter(attn_implementation: str = "sdpa", **model_args: Any) -> VideoSALMONN2PlusAdapter:
    return VideoSALMONN2PlusAdapter(str(PLUS_FIXTURE), "cpu", torch.float32, attn_implementation, **model_args)


PLUS_META = json.loads((PLUS_FIXTURE / "reference.json").read_text())
_PLUS_REFERENCE: dict[str, torch.Tensor] = {}


def plus_ref(case: str, name: str) -> torch.Tensor:
    """Tensor ``name`` the official 2+ code saved for ``case`` (clip10s, odd, long)."""
    if not _PLUS_REFERENCE:
        _PLUS_REFERENCE.update(load_file(PLUS_FIXTURE / "reference.safetensors"))
    return _PLUS_REFERENCE[f"{case}.{name}"]


def has_plus_ref(case: str, name: str) -> bool:
    plus_ref(case, "input_ids")
    return f"{case}.{name}" in _PLUS_REFERENCE


def official_waveform(case: str) -> np.ndarray:
    """The official (torchcodec) 16-kHz mono waveform, rebuilt from its stored non-silent segments. ``[N]``"""
    out = np.zeros(PLUS_META["cases"][case]["waveform"]["num_samples"], np.float32)
    values, at = plus_ref(case, "waveform_values").numpy(), 0
    for start, end in plus_ref(case, "waveform_segments").tolist():
        out[start:end] = values[at : at + end - start]
        at += end - start
    return out


def official_audio_feature(case: str) -> torch.Tensor:
    """The official ``audio_feature`` ``[chunks, 128, 3000]``, rebuilt from its stored columns (README)."""
    const = plus_ref(case, "audio_feature_const")
    feature = const[:, None, None].expand(len(const), 128, 3000).clone()
    feature.permute(0, 2, 1)[plus_ref(case, "audio_feature_mask") == 1] = plus_ref(case, "audio_feature_cols")
    return feature
