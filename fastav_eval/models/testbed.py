"""Adapter for the AV-Synth testbed (the small AV-LLM shipped in ``fastav_eval/testbed/weights``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastav_eval.avsynth.world import FRAME_SIZE, NUM_FRAMES, NUM_SAMPLES, SAMPLE_RATE
from fastav_eval.testbed import WEIGHTS_DIR, PreparedBatch, TestbedModel

PROFILE_FILE = "profile.json"
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


def _find(visuals: list[Any], kind: str, index: int) -> dict:
    found = [v for v in visuals if isinstance(v, dict) and v.get("type") == kind]
    if len(found) != 1:
        described = [v.get("type") if isinstance(v, dict) else type(v).__name__ for v in visuals]
        raise ValueError(
            f"request {index}: the testbed needs exactly one {{'type': '{kind}', ...}} visual; got {described} "
            "(AV-Synth's doc_to_visual returns [video, audio])"
        )
    return found[0]


def media_from_visuals(visuals: list[Any], index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``[8, 32, 32, 3]`` uint8 and waveform ``[32000]`` float32 from one request's ``doc_to_visual`` list."""
    video, audio = _find(visuals, "video", index), _find(visuals, "audio", index)
    frames = np.asarray(video.get("frames"))
    if frames.shape != (NUM_FRAMES, FRAME_SIZE, FRAME_SIZE, 3) or frames.dtype != np.uint8:
        raise ValueError(
            f"request {index}: video 'frames' must be uint8 of shape {(NUM_FRAMES, FRAME_SIZE, FRAME_SIZE, 3)}; "
            f"got {frames.dtype} {frames.shape}"
        )
    if audio.get("sampling_rate") != SAMPLE_RATE:
        raise ValueError(
            f"request {index}: audio 'sampling_rate' must be {SAMPLE_RATE}; got {audio.get('sampling_rate')}"
        )
    waveform = np.asarray(audio.get("array"), dtype=np.float32)
    if waveform.shape != (NUM_SAMPLES,):
        raise ValueError(f"request {index}: audio 'array' must have shape ({NUM_SAMPLES},); got {waveform.shape}")
    return frames, waveform


class TestbedAdapter:
    """Loads the testbed and prepares its inputs: ``[prefix][video 128][audio 144][question]`` per sample."""

    name = "testbed"
    attn_implementations = ATTN_IMPLEMENTATIONS

    def __init__(
        self,
        pretrained: str | Path | None = None,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        attn_implementation: str = "sdpa",
    ) -> None:
        if attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation={attn_implementation!r}; accepted: {list(ATTN_IMPLEMENTATIONS)}")
        self.weights = Path(pretrained) if pretrained else WEIGHTS_DIR
        self.model = TestbedModel.load(self.weights).to(device=device, dtype=dtype)
        self.model.decoder.config._attn_implementation = attn_implementation
        self.device = torch.device(device)

    @property
    def decoder(self) -> nn.Module:
        """The causal LM the pruning engine installs on."""
        return self.model.decoder

    @staticmethod
    def default_profile(pretrained: str | Path | None) -> Path | None:
        """The global-stage profile calibrated for the weights at ``pretrained`` (rollout on the val split), if any."""
        path = (Path(pretrained) if pretrained else WEIGHTS_DIR) / PROFILE_FILE
        return path if path.is_file() else None

    def prepare(self, visuals: list[list[Any]], prompts: list[str]) -> PreparedBatch:
        media = [media_from_visuals(v, i) for i, v in enumerate(visuals)]
        frames = torch.from_numpy(np.stack([m[0] for m in media])).to(self.device)
        waveform = torch.from_numpy(np.stack([m[1] for m in media])).to(self.device)
        with torch.no_grad():
            return self.model.prepare(frames, waveform, [p.strip() for p in prompts])

    def generate(self, prepared: PreparedBatch, max_new_tokens: int) -> list[str]:
        return self.model.generate(prepared, max_new_tokens=max_new_tokens)
