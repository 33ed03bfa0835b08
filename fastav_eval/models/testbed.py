"""Adapter for the AV-Synth testbed (the small AV-LLM shipped in ``fastav_eval/testbed/weights``).

``lmms-eval --model fastav_tiny``: runnable anywhere (CPU, no downloads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fastav_eval.avsynth.world import FRAME_SIZE, NUM_FRAMES, NUM_SAMPLES, SAMPLE_RATE
from fastav_eval.models.base import (
    AdapterArg,
    Answer,
    ModelAdapter,
    ModelInputs,
    Request,
    SampleError,
    cut_at_stop,
    generate_positions,
    teacher_forced_logprob,
)
from fastav_eval.testbed import WEIGHTS_DIR, TestbedModel

PROFILE_FILE = "profile.json"
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
SENSES = {"both": (True, True), "video": (True, False), "audio": (False, True), "none": (False, False)}
"""``senses``: which of (video, audio) reach the decoder; the others are left out of the sequence (an ablation)."""


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


class TestbedAdapter(ModelAdapter):
    """The testbed: ``[prefix][video 128][audio 144][question]`` per sample, merged into ``inputs_embeds``."""

    name = "testbed"
    attn_implementations = ATTN_IMPLEMENTATIONS
    model_args: ClassVar[dict[str, AdapterArg]] = {
        **ModelAdapter.model_args,
        "senses": AdapterArg(
            "both", str, "which senses reach the decoder; the others' tokens are left out (ablation)",
            choices=tuple(SENSES),
        ),
    }  # fmt: skip

    def __init__(
        self,
        pretrained: str | None = None,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        attn_implementation: str = "sdpa",
        *,
        model: TestbedModel | None = None,
        **model_args: Any,
    ) -> None:
        """``model``: an already loaded testbed (the harness's), used as it is instead of loading ``pretrained``."""
        super().__init__(pretrained, device, dtype, attn_implementation, **model_args)
        if attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation={attn_implementation!r}; accepted: {list(ATTN_IMPLEMENTATIONS)}")
        if self.use_kernels:
            raise ValueError(
                "use_kernels=True: the testbed is built from its own weights file, not through from_pretrained, so "
                "no hub kernels can be swapped in; accepted: false"
            )
        self.weights = Path(self.pretrained) if self.pretrained else WEIGHTS_DIR
        if model is None:
            model = TestbedModel.load(self.weights).to(device=self.device, dtype=dtype)
            model.decoder.config._attn_implementation = attn_implementation
        self.model = model
        self.senses = SENSES[self.options["senses"]]

    def weight_sources(self) -> list[str]:
        return [str(self.weights)]

    @property
    def decoder(self) -> nn.Module:
        return self.model.decoder

    @classmethod
    def default_profile(cls, pretrained: str | None) -> Path | None:
        """The profile calibrated for the weights at ``pretrained`` (rollout on the val split), if any."""
        path = (Path(pretrained) if pretrained else WEIGHTS_DIR) / PROFILE_FILE
        return path if path.is_file() else None

    def load_request(self, request: Request, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        try:
            frames, waveform = media_from_visuals(request.visuals, index)
        except ValueError as error:
            raise SampleError(index, str(error).removeprefix(f"request {index}: ")) from None
        return frames, waveform, request.prompt.strip()

    def prepare(self, loaded: list[tuple[np.ndarray, np.ndarray, str]]) -> ModelInputs:
        frames = torch.from_numpy(np.stack([item[0] for item in loaded])).to(self.device)
        waveform = torch.from_numpy(np.stack([item[1] for item in loaded])).to(self.device)
        use_video, use_audio = self.senses
        with torch.no_grad():
            batch = self.model.prepare(
                frames, waveform, [item[2] for item in loaded], use_video=[use_video] * len(loaded),
                use_audio=[use_audio] * len(loaded),
            )  # fmt: skip
        return ModelInputs(
            generate_kwargs={"inputs_embeds": batch.inputs_embeds, "attention_mask": batch.attention_mask},
            layout=batch.layout,
        )

    @torch.no_grad()
    def generate(self, inputs: ModelInputs, max_new_tokens: int, until: list[str]) -> list[Answer]:
        tokenizer = self.model.tokenizer
        output = self.model.decoder.generate(
            **inputs.generate_kwargs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_id,
            pad_token_id=tokenizer.pad_id,
        )  # [B, new tokens]: inputs_embeds alone returns only the generated ids
        answers = []
        for row in output.tolist():
            generated = row.index(tokenizer.eos_id) + 1 if tokenizer.eos_id in row else len(row)  # EOS included
            answers.append(Answer(cut_at_stop(tokenizer.decode(row), until).strip(), generated))
        return answers

    def reference_logprob(self, inputs: ModelInputs, references: list[str]) -> torch.Tensor:
        """``[B]``; each reference ends with the tokenizer's EOS, the one token the testbed's answers end with."""
        tokenizer = self.model.tokenizer
        answers = [[*tokenizer.encode(reference), tokenizer.eos_id] for reference in references]
        positions = generate_positions(inputs.generate_kwargs["attention_mask"])
        return teacher_forced_logprob(self.model.decoder, inputs.generate_kwargs, positions, answers, tokenizer.pad_id)
