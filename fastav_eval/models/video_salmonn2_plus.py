"""Adapter for video-SALMONN 2+ (``tsinghua-ee/video-SALMONN2_plus_7B_full`` / ``_3B_full``), with its audio.

``lmms-eval --model fastav_video_salmonn2_plus``. The model is :mod:`fastav_eval.models.video_salmonn2_plus_model`
(transformers' Qwen2.5-VL plus Whisper and a BLIP-2 Q-Former); the media path is
:mod:`fastav_eval.models.video_salmonn2_plus_media`, bit-exact with the official evaluation's (``inference.py`` at
``--interval 0.1 --max_frames 768 --max_pixels 61250``). This file builds the official prompt:

- ``<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n<|vision_start|>``, then per
  temporal grid t (2 frames) its ``h·w`` ``<|video_pad|>`` and ``a_t`` ``<|audio_pad|>`` (the audio's 60 tokens per
  30 s spread by time, the last grid taking the rest), then ``<|vision_end|>\\n{question}<|im_end|>\\n<|im_start|>
  assistant\\n``;
- the video features and audio tokens scattered into their pads, M-RoPE positions computed here
  (``positions=official_inference``: what the official ``generate`` computes, which produced the reported numbers;
  ``positions=trained``: the audio-aware positions the weights were trained with), greedy decoding with the
  checkpoint's ``generation_config.json`` repetition penalty.

Each temporal grid's video and audio tokens are one chunk, so "the first 4 frames" is ``first_chunks: 2``.

Where a clip has no soundtrack the official code silently answers from the video alone (its ``process_audio``
returns nothing on any error); here that is a choice (``video_audio=if_present``), and by default an error.
Audio alone and images are refused: the official audio-only and image paths are not reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from transformers import WhisperFeatureExtractor

from fastav_eval.models.base import (
    CHECKPOINT_REPETITION_PENALTY,
    AdapterArg,
    ChatEnds,
    EmbedsAdapter,
    ModelInputs,
    Request,
    SampleError,
)
from fastav_eval.models.checkpoint import load_tokenizer, local_folder, repetition_penalty
from fastav_eval.models.media import (
    audio_and_video,
    checked_frames,
    float_mono,
    read_audio_item,
    soundtrack,
)
from fastav_eval.models.video_salmonn2_plus_media import (
    MAX_FRAME_PIXELS,
    MAX_FRAMES,
    MIN_FRAME_PIXELS,
    MIN_FRAMES,
    SAMPLE_RATE,
    FrameSettings,
    audio_per_grid,
    audio_pieces,
    decode_frames,
    float_soundtrack,
    frame_indices,
    video_pixels,
)
from fastav_eval.models.video_salmonn2_plus_model import (
    POSITIONS,
    VideoSALMONN2Plus,
    VisionBlock,
    load_video_salmonn2_plus,
)
from fastav_eval.pruning.layout import ModalityLayout, Segment

SYSTEM_MESSAGE = "You are a helpful assistant."
VIDEO_AUDIO = ("required", "if_present", "off")
PROFILES = Path(__file__).parent / "profiles"
IMAGE_REFUSAL = "video-SALMONN 2+ runs here on videos: accepted: a video file"


@dataclass
class VideoSALMONN2PlusSample:
    """One request, preprocessed.

    Attributes:
        input_ids: the prompt's ids ``[L]``, the block's pads included.
        block: where the block sits and what it holds.
        pixel_values: ``[T·H/14·W/14, 1176]`` patches; ``grid`` their ``(T, H/14, W/14)``.
        spectrogram: ``[n, 128, 3000]`` Whisper log-mel chunks (None: the video alone).
    """

    input_ids: torch.Tensor
    block: VisionBlock
    pixel_values: torch.Tensor
    grid: tuple[int, int, int]
    spectrogram: torch.Tensor | None


class VideoSALMONN2PlusAdapter(EmbedsAdapter):
    """``[text][grid t: video, audio]*T[text]`` per sample, merged into Qwen2.5-VL's ``inputs_embeds`` with our own
    M-RoPE positions."""

    name = "video_salmonn2_plus"
    default_pretrained = "tsinghua-ee/video-SALMONN2_plus_7B_full"
    default_dtype = "bfloat16"  # the official inference's
    model_args: ClassVar[dict[str, AdapterArg]] = {
        **EmbedsAdapter.model_args,
        "positions": AdapterArg(
            "official_inference",
            str,
            "M-RoPE positions: what the official generate computes (Qwen2.5-VL's video branch over the first T·h·w "
            "block tokens whatever their type; the reported numbers) (official_inference); the audio-aware positions "
            "the weights were trained with (trained)",
            choices=tuple(POSITIONS),
        ),
        "min_frames": AdapterArg(
            MIN_FRAMES, int, "frames per video at least (inference.py's 16; scripts/test.sh passes 64)"
        ),
        "max_frames": AdapterArg(MAX_FRAMES, int, "frames per video at most (the official 768; one per 0.1 s)"),
        "min_pixels": AdapterArg(
            MIN_FRAME_PIXELS, int, "pixels per frame at least (inference.py's 3136; scripts/test.sh passes 784)"
        ),
        "max_pixels": AdapterArg(
            MAX_FRAME_PIXELS, int, "pixels per frame at max_frames frames (the official 61250; more below)"
        ),
        "video_audio": AdapterArg(
            "required",
            str,
            "a video's soundtrack: fed, and a clip without one fails its sample (required); fed when the clip has "
            "one, else the video alone, as the official code silently does (if_present); never fed (off)",
            choices=VIDEO_AUDIO,
        ),
        "repetition_penalty": CHECKPOINT_REPETITION_PENALTY,
    }

    def __init__(
        self,
        pretrained: str | None = None,
        device: str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        attn_implementation: str = "sdpa",
        **model_args: Any,
    ) -> None:
        super().__init__(pretrained, device, dtype, attn_implementation, **model_args)
        options = self.options
        for key in ("min_frames", "max_frames", "min_pixels", "max_pixels"):
            if options[key] < 1:
                raise ValueError(f"{key}={options[key]!r}; accepted: an int >= 1")
        for low, high in (("min_frames", "max_frames"), ("min_pixels", "max_pixels")):
            if options[low] > options[high]:
                raise ValueError(f"{low}={options[low]}, {high}={options[high]}; accepted: {low} <= {high}")
        self.frame_settings = FrameSettings(
            options["min_frames"], options["max_frames"], options["min_pixels"], options["max_pixels"]
        )
        folder = local_folder(str(self.pretrained))
        self.model: VideoSALMONN2Plus = load_video_salmonn2_plus(
            folder,
            device=self.device,
            dtype=dtype,
            attn_implementation=attn_implementation,
            use_kernels=self.use_kernels,
        )
        self.tokenizer = load_tokenizer(folder)
        self.ends = ChatEnds.of(self.tokenizer)
        spec = self.model.spec
        for name, token in (("<|video_pad|>", spec.video_token_id), ("<|audio_pad|>", spec.audio_token_id)):
            if self.tokenizer.convert_tokens_to_ids(name) != token:
                raise ValueError(f"{folder}: the tokenizer's {name} is not the config's id {token}")
        # The official inference builds this extractor itself rather than reading the checkpoint's.
        self.features = WhisperFeatureExtractor(
            feature_size=128, sampling_rate=SAMPLE_RATE, hop_length=160, chunk_length=30
        )
        self.positions = POSITIONS[self.options["positions"]]
        self.repetition_penalty = self.options["repetition_penalty"] or repetition_penalty(folder)

    @classmethod
    def default_profile(cls, pretrained: str | None) -> Path | None:
        """FastAV's positional rule for this family: the audio-visual tokens of the first 4 frames (2 temporal grids)
        at half the depth."""
        return PROFILES / "video_salmonn2_plus_fastav.json"

    @property
    def decoder(self) -> nn.Module:
        return self.model.vl

    def generation_options(self) -> dict[str, Any]:
        return {"repetition_penalty": self.repetition_penalty}

    # ------------------------------------------------------------------ requests
    def prompt_ids(self, question: str, block: list[int]) -> tuple[torch.Tensor, int]:
        """The official test-mode ids around the block's ids, and where the block starts. ``[L]``"""
        if any(tag in question for tag in ("<image>", "<video>", "<audio>", "<|vision_start|>")):
            raise ValueError(f"the question holds a modal tag ({question[:80]!r}); the adapter adds the one it needs")
        encode = lambda text: self.tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
        head = encode(f"<|im_start|>system\n{SYSTEM_MESSAGE}<|im_end|>\n<|im_start|>user\n<|vision_start|>")
        tail = encode(f"<|vision_end|>\n{question}<|im_end|>\n<|im_start|>assistant\n")
        return torch.tensor([*head, *block, *tail], dtype=torch.long), len(head)

    def _spectrogram(self, waveform: np.ndarray) -> torch.Tensor:
        pieces = audio_pieces(waveform)
        return torch.stack(
            [self.features(p, sampling_rate=SAMPLE_RATE, return_tensors="pt")["input_features"][0] for p in pieces]
        )

    @staticmethod
    def _audio_item(visual: Any) -> np.ndarray:
        """An audio file or ``{"array", "sampling_rate"}`` as the official decoder reads any audio: FFmpeg's float mono
        downmix at 16 kHz. float32 ``[N]``"""
        if isinstance(visual, str | Path):
            waveform = soundtrack(visual, SAMPLE_RATE, "flt")
            if waveform is None:
                raise ValueError(f"{visual} has no audio stream")
            return waveform
        samples, rate = read_audio_item(visual)
        return float_mono(samples, rate, SAMPLE_RATE)

    def load_request(self, request: Request, index: int) -> VideoSALMONN2PlusSample:
        try:
            found = audio_and_video(request.visuals, "video-SALMONN 2+", IMAGE_REFUSAL)
        except (ValueError, OSError) as error:
            raise SampleError(index, str(error)) from None
        if not found["video"]:
            raise SampleError(
                index, "no video; video-SALMONN 2+ is run here on a video (with its soundtrack or an audio item)"
            )
        try:
            return self._load(found, request.prompt)
        except (ValueError, OSError, RuntimeError) as error:
            raise SampleError(index, str(error)) from None

    def _frames(self, video: Any) -> tuple[torch.Tensor, float]:
        """``[n, 3, H, W]`` uint8 sampled frames and the clip's length in seconds."""
        if not isinstance(video, dict):
            return decode_frames(video, self.frame_settings)
        frames = checked_frames(video)
        length = len(frames) / float(video["fps"])
        picked = frames[frame_indices(len(frames), length, self.frame_settings)]
        return torch.from_numpy(np.ascontiguousarray(picked)).permute(0, 3, 1, 2).contiguous(), length

    def _load(self, found: dict[str, list[tuple[int, Any]]], prompt: str) -> VideoSALMONN2PlusSample:
        position, video = found["video"][0]
        frames, length = self._frames(video)
        pixels = video_pixels(frames, length, self.frame_settings)
        mode = self.options["video_audio"]
        waveform = self._audio_item(found["audio"][0][1]) if found["audio"] else None
        if waveform is None and mode != "off":
            waveform = None if isinstance(video, dict) else float_soundtrack(video)
            if waveform is None and mode == "required":
                what = (
                    "an in-memory video carries no soundtrack: give the sample's audio as a separate "
                    '{"type": "audio", "array", "sampling_rate"} item'
                    if isinstance(video, dict)
                    else f"{video} has no audio track"
                )
                raise ValueError(
                    f"visual {position}: {what}, and this model is asked to hear each clip (video_audio=required); "
                    "video_audio=if_present answers from the video alone instead"
                )
        spectrogram = None if waveform is None else self._spectrogram(waveform)
        t, h, w = pixels.grid
        merge = self.model.spec.spatial_merge_size
        merged = (t, h // merge, w // merge)
        audio = 0 if spectrogram is None else len(spectrogram) * self.model.audio.tokens_per_chunk
        counts = audio_per_grid(audio, t, pixels.second_per_grid) if audio else [0] * t
        spec, per_grid = self.model.spec, merged[1] * merged[2]
        block = [i for a in counts for i in [spec.video_token_id] * per_grid + [spec.audio_token_id] * a]
        input_ids, start = self.prompt_ids(prompt, block)
        return VideoSALMONN2PlusSample(
            input_ids,
            VisionBlock(start, merged, tuple(counts), pixels.second_per_grid),
            pixels.pixel_values,
            pixels.grid,
            spectrogram,
        )

    # ------------------------------------------------------------------ batch
    def embeds(self, sample: VideoSALMONN2PlusSample) -> torch.Tensor:
        """``[L, D]``: the prompt's token embeddings with the video features and audio tokens in their pads."""
        model, spec = self.model, self.model.spec
        ids = sample.input_ids.to(self.device)
        table = model.vl.get_input_embeddings()
        embeds = table(ids)
        video = model.encode_video(sample.pixel_values.to(self.device), sample.grid)
        is_video = ids == spec.video_token_id
        if int(is_video.sum()) != len(video):
            raise ValueError(f"{int(is_video.sum())} video pads for {len(video)} video features (an adapter bug)")
        embeds[is_video] = video.to(embeds.dtype)
        if sample.spectrogram is not None:
            audio = model.encode_audio(sample.spectrogram.to(self.device, embeds.dtype))
            is_audio = ids == spec.audio_token_id
            if int(is_audio.sum()) != len(audio):
                raise ValueError(f"{int(is_audio.sum())} audio pads for {len(audio)} audio tokens (an adapter bug)")
            embeds[is_audio] = audio.to(embeds.dtype)
        return embeds

    def segments(self, sample: VideoSALMONN2PlusSample) -> list[Segment]:
        """Text up to the block, each temporal grid's video then audio tokens as chunk t, text after."""
        block = sample.block
        per_grid = block.grid[1] * block.grid[2]
        segments: list[Segment] = [("text", block.start)]
        for t, audio in enumerate(block.audio_per_grid):
            segments.append(("video", per_grid, t))
            if audio:
                segments.append(("audio", audio, t))
        return [*segments, ("text", len(sample.input_ids) - block.start - block.length)]

    def rope_positions(self, sample: VideoSALMONN2PlusSample) -> torch.Tensor:
        """``[4, L]``: text positions (what ``generate`` derives from the mask), then the three M-RoPE axes."""
        length = len(sample.input_ids)
        return torch.cat([torch.arange(length)[None], self.positions(length, sample.block)])

    @torch.no_grad()
    def prepare(self, loaded: list[VideoSALMONN2PlusSample]) -> ModelInputs:
        rows = [self.embeds(sample) for sample in loaded]
        positions = [self.rope_positions(sample).to(self.device) for sample in loaded]
        inputs = self.batch(rows, [self.segments(sample) for sample in loaded], positions)
        # The prompt's ids too, left-padded, as the official generate gets them: its repetition penalty (the
        # checkpoint's generation_config) then covers the prompt's tokens, not only the answer's.
        mask = inputs.generate_kwargs["attention_mask"]
        input_ids = torch.full_like(mask, self.ends.pad_id)
        for b, sample in enumerate(loaded):
            input_ids[b, mask.shape[1] - len(sample.input_ids) :] = sample.input_ids
        inputs.generate_kwargs["input_ids"] = input_ids
        pads = {"video": self.model.spec.video_token_id, "audio": self.model.spec.audio_token_id}
        by_ids = ModalityLayout.from_token_ids(input_ids, pads, mask)
        if not torch.equal(by_ids.modality, inputs.layout.modality):
            raise ValueError("the layout's modalities differ from the batch's pad tokens (an adapter bug)")
        return inputs
