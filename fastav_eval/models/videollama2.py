"""Adapter for VideoLLaMA2.1-AV (``DAMO-NLP-SG/VideoLLaMA2.1-7B-AV``): the model of the FastAV paper's headline.

``lmms-eval --model fastav_videollama2``, soundtracks fed. ``prune=fastav`` (the default) is the paper's setting:
the global stage at half the depth (layer 14 of 28) keeps every video token and the first 10 audio tokens,
then the fine stage drops P = 20% before every later layer.

The model is :mod:`fastav_eval.models.videollama2_model` (transformers' Qwen2 and SigLIP, our STC connector and
BEATs). This file reproduces the official inference path (``videollama2.mm_infer`` on ``process_video(...,
va=True)``) on our media stack:

- **frames**: ``num_frames`` (16) at the middles of equal segments of the clip's frame indices, rounded half
  up; the SigLIP image processor (PIL backend, as transformers 4.42's) resizes each to 384×384.
- **soundtrack**: mono 16-kHz int16 PCM (FFmpeg's own downmix and resampler, through PyAV), then eight 2-s clips
  at evenly spaced starts (pytorchvideo's ``ConstantClipsPerVideoSampler``: start k = k·(duration − 2)/8),
  concatenated, zero-padded to 30 s, scaled by 2¹⁵, a 128-bin Kaldi fbank (2,998 frames), rounded to bfloat16.
- **audio files**: the first channel, the first 30 s (the official crop of a longer file is random), padded to
  30 s, FFT-resampled to 16 kHz.
- **prompt**: one user turn ``"<video>\\n" + question`` (``<audio>`` for audio alone) in the tokenizer's chat
  template, whose default system turn Qwen2 supplies; the placeholder becomes the video then the audio tokens.

A request may hold one video (its soundtrack fed per ``video_audio``), one video or image plus one audio (which
replaces the soundtrack), or one audio alone. An image is a still video of ``num_frames`` copies (the official
``encode_images_or_videos``). A video is a file path or decoded frames in memory, ``{"type": "video", "frames":
uint8 [T, H, W, 3], "fps": float}`` (AV-Synth's ``doc_to_visual``): sampled at the same :func:`frame_indices` of its
``T`` frames as a file's decoded frames (the official sampling reads only the frame count, not ``fps``); it carries
no soundtrack, so the sample's audio is a separate audio item (or silence / none per ``video_audio``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from scipy.signal import resample as fft_resample
from torch import nn
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from fastav_eval.models.base import (
    AdapterArg,
    ChatEnds,
    EmbedsAdapter,
    ModelInputs,
    Request,
    SampleError,
)
from fastav_eval.models.checkpoint import load_tokenizer, local_folder
from fastav_eval.models.fbank import beats_fbank
from fastav_eval.models.media import (
    AUDIO_EXTENSIONS,
    IMAGE_EXTENSIONS,
    VIDEO_DICT,
    checked_frames,
    decode_picked_frames,
    is_video_dict,
    read_audio_item,
    soundtrack,
)
from fastav_eval.models.videollama2_model import VideoLLaMA2AV, load_videollama2
from fastav_eval.pruning.layout import Segment

SAMPLE_RATE = 16_000
AUDIO_SECONDS = 30
CLIPS_PER_VIDEO, CLIP_SECONDS = 8, 2
MAX_FRAMES = 32  # the official cap
PLACEHOLDER = -201  # the official index of <video> (and the one slot we splice media into)
VIDEO_AUDIO = ("required", "if_present", "off")
PROFILES = Path(__file__).parent / "profiles"


# ---------------------------------------------------------------------------------------------- preprocessing
def frame_indices(frame_count: int, num_frames: int) -> list[int]:
    """The official uniform sampling: the middle of each of ``num_frames`` equal segments of
    ``[0, frame_count - 1]``, rounded half up (``np.round(x + 1e-6)``)."""
    segment = (frame_count - 1) / num_frames
    middles = np.array([(segment * i + segment * (i + 1)) / 2 for i in range(num_frames)])
    return np.round(middles + 1e-6).astype(int).tolist()


def decode_video_frames(path: str | Path, num_frames: int) -> list[np.ndarray]:
    """``num_frames`` RGB frames ``[H, W, 3]`` of ``path`` at :func:`frame_indices` of its decoded frames
    (:func:`~fastav_eval.models.media.decode_picked_frames`)."""
    frames, _, _ = decode_picked_frames(path, lambda count, _fps: frame_indices(count, num_frames))
    return frames


def sample_video_frames(video: dict[str, Any], num_frames: int) -> list[np.ndarray]:
    """``num_frames`` RGB frames ``[H, W, 3]`` of an in-memory video (:data:`VIDEO_DICT`) at the
    :func:`frame_indices` of its ``T`` frames, as :func:`decode_video_frames` samples a file's decoded frames."""
    frames = checked_frames(video)
    return [frames[index] for index in frame_indices(len(frames), num_frames)]


def clip_bounds(num_samples: int, rate: int = SAMPLE_RATE) -> list[tuple[int, int]]:
    """Sample ranges of the eight 2-s clips the official code cuts from a soundtrack of ``num_samples``.

    pytorchvideo's ``ConstantClipsPerVideoSampler(2, 8)``: clip k starts at ``k · max(duration − 2, 0) / 8`` s,
    computed in exact fractions and floored to a sample.
    """
    duration = num_samples / rate
    step = Fraction(max(duration - CLIP_SECONDS, 0)) / CLIPS_PER_VIDEO
    bounds = []
    for k in range(CLIPS_PER_VIDEO):
        start = step * k
        bounds.append((int(start * rate), int((start + CLIP_SECONDS) * rate)))
    return bounds


def video_audio_waveform(track: np.ndarray) -> np.ndarray:
    """A soundtrack -> the 16-s waveform the official code feeds BEATs (the clips of :func:`clip_bounds`)."""
    return np.concatenate([track[start:end] for start, end in clip_bounds(len(track))])


def audio_file_waveform(channels: np.ndarray, rate: int) -> np.ndarray:
    """An audio file's samples ``[N]`` or ``[N, C]`` at ``rate`` -> 30 s at 16 kHz (float64), as
    ``process_audio_file``:
    the first channel, cut to 30 s (from the start; the official crop is random), zero-padded to 30 s, then
    FFT-resampled (librosa's ``res_type="fft"``: ``ceil(N · 16000 / rate)`` samples)."""
    wave = channels[:, 0] if channels.ndim == 2 else channels
    wave = wave[: AUDIO_SECONDS * rate].astype(np.float64)
    wave = np.pad(wave, (0, AUDIO_SECONDS * rate - len(wave)))
    if rate != SAMPLE_RATE:
        wave = fft_resample(wave, int(np.ceil(len(wave) * (SAMPLE_RATE / rate))))
    return wave  # float64, as soundfile and librosa give it: the fbank then runs in float64 as the official


def prompt_segments(input_ids: torch.Tensor, video_tokens: int, audio_tokens: int, frames: int = 1) -> list[Segment]:
    """The layout of a prompt ``[L]`` once its placeholder is replaced: text, video (``frames`` time steps of the
    STC connector, time-major), audio, text."""
    at = int((input_ids == PLACEHOLDER).nonzero()[0])
    after = len(input_ids) - at - 1
    video: Segment = ("video", video_tokens, 0, video_tokens // frames) if video_tokens else ("video", 0, 0)
    return [("text", at), video, ("audio", audio_tokens, 0), ("text", after)]


# ---------------------------------------------------------------------------------------------- adapter
@dataclass
class VideoLLaMA2Sample:
    """One request, preprocessed: ``pixel_values [T, 3, S, S]`` (None: audio alone), ``fbank [2998, 128]``
    (None: no audio fed) and the prompt's ids ``[L]`` with :data:`PLACEHOLDER` once."""

    input_ids: torch.Tensor
    pixel_values: torch.Tensor | None
    fbank: torch.Tensor | None


class VideoLLaMA2Adapter(EmbedsAdapter):
    """``[text][video][audio][text]`` per sample, merged into ``inputs_embeds`` for transformers' Qwen2."""

    name = "videollama2"
    default_pretrained = "DAMO-NLP-SG/VideoLLaMA2.1-7B-AV"
    default_dtype = "float16"  # the official inference's
    model_args: ClassVar[dict[str, AdapterArg]] = {
        **EmbedsAdapter.model_args,
        "vision_tower": AdapterArg(None, str, "the SigLIP checkpoint; default: the config's mm_vision_tower"),
        "num_frames": AdapterArg(0, int, "frames per video; 0: the checkpoint's num_frames (16)"),
        "video_audio": AdapterArg(
            "required",
            str,
            "a video's soundtrack: fed, and a clip without one fails its sample (required); fed, and 30 s of "
            "silence for a clip without one, as the official code does (if_present); never fed (off: video only)",
            choices=VIDEO_AUDIO,
        ),
    }

    def __init__(
        self,
        pretrained: str | None = None,
        device: str = "cpu",
        dtype: torch.dtype = torch.float16,
        attn_implementation: str = "sdpa",
        **model_args: Any,
    ) -> None:
        super().__init__(pretrained, device, dtype, attn_implementation, **model_args)
        folder = local_folder(str(self.pretrained))
        self.model: VideoLLaMA2AV = load_videollama2(
            folder,
            vision_tower=self.options["vision_tower"],
            device=self.device,
            dtype=dtype,
            attn_implementation=attn_implementation,
            use_kernels=self.use_kernels,
        )
        frames = self.options["num_frames"] or self.model.spec.num_frames
        if frames < 2 or frames % 2 or frames > MAX_FRAMES:
            raise ValueError(f"num_frames={frames!r}; accepted: an even int in [2, {MAX_FRAMES}] (or 0: the config's)")
        self.num_frames = frames
        self.tokenizer = load_tokenizer(folder)
        self.image_processor = SiglipImageProcessorPil.from_pretrained(self.model.spec.vision_tower)
        tokenizer = self.tokenizer
        self.ends = ChatEnds.of(tokenizer)

    def weight_sources(self) -> list[str]:
        return [str(self.pretrained), str(self.model.spec.vision_tower)]

    @classmethod
    def default_profile(cls, pretrained: str | None) -> Path | None:
        """The paper's global stage for VideoLLaMA2: every video token and the first 10 audio tokens (FastAV,
        Table 1); at half the depth, i.e. layer 14 of 28, unless ``global_layer`` says otherwise."""
        return PROFILES / "videollama2_fastav.json"

    @property
    def decoder(self) -> nn.Module:
        return self.model.llm

    # ------------------------------------------------------------------ requests
    def _pixels(self, frames: list[np.ndarray] | list[Image.Image]) -> torch.Tensor:
        images = [Image.fromarray(f) if isinstance(f, np.ndarray) else f.convert("RGB") for f in frames]
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"]

    def _video(self, video: str | dict[str, Any], soundtrack_wanted: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``pixel_values [num_frames, 3, S, S]`` of a video file or in-memory video (:data:`VIDEO_DICT`), and the
        fbank ``[2998, 128]`` of its soundtrack when one is wanted (None otherwise)."""
        in_memory = isinstance(video, dict)
        if in_memory:
            pixels = self._pixels(sample_video_frames(video, self.num_frames))
        else:
            pixels = self._pixels(decode_video_frames(video, self.num_frames))
        mode = self.options["video_audio"]
        if mode == "off" or not soundtrack_wanted:
            return pixels, None
        track = None if in_memory else soundtrack(video)
        if track is None:
            if mode == "required":
                what = (
                    "an in-memory video carries no soundtrack: give the sample's audio as a separate "
                    '{"type": "audio", "array", "sampling_rate"} item'
                    if in_memory
                    else f"{video} has no audio track"
                )
                raise ValueError(
                    f"{what}, and this model is asked to hear each clip (video_audio=required); "
                    "video_audio=if_present feeds 30 s of silence instead, as the official code does"
                )
            track = np.zeros(AUDIO_SECONDS * SAMPLE_RATE, np.float32)
        return pixels, beats_fbank(torch.from_numpy(video_audio_waveform(track)))[0]

    def _audio(self, visual: Any) -> torch.Tensor:
        samples, rate = read_audio_item(visual)
        return beats_fbank(torch.from_numpy(audio_file_waveform(samples, rate)))[0]

    @staticmethod
    def _kind(visual: Any) -> str:
        """ "audio", "image" or "video"; a ValueError naming what is accepted otherwise."""
        if isinstance(visual, str | Path):
            if not Path(visual).is_file():
                raise ValueError(f"{visual} does not exist")
            name = str(visual).lower()
            return (
                "audio" if name.endswith(AUDIO_EXTENSIONS) else "image" if name.endswith(IMAGE_EXTENSIONS) else "video"
            )
        if is_video_dict(visual):
            checked_frames(visual)
            return "video"
        if isinstance(visual, dict) and "array" in visual:
            return "audio"
        if isinstance(visual, Image.Image):
            return "image"
        raise ValueError(
            f"a {type(visual).__name__} is not a visual this model takes; accepted: a video, image or audio file "
            f'path, an in-memory video {VIDEO_DICT}, {{"array", "sampling_rate"}} audio, a PIL image'
        )

    def _still(self, visual: Any) -> torch.Tensor:
        """An image as a video of ``num_frames`` copies (the official ``encode_images_or_videos``)."""
        image = visual if isinstance(visual, Image.Image) else Image.open(visual)
        return self._pixels([image]).expand(self.num_frames, -1, -1, -1)

    @staticmethod
    def _decoded(index: int, position: int, decode: Callable[[], Any]) -> Any:
        try:
            return decode()
        except (ValueError, OSError, RuntimeError) as error:  # OSError: PIL's unreadable or truncated images
            raise SampleError(index, f"visual {position}: {error}") from None

    def load_request(self, request: Request, index: int) -> VideoLLaMA2Sample:
        found: dict[str, list[tuple[int, str, Any]]] = {"audio": [], "picture": []}  # picture: a video or image
        for position, visual in enumerate(request.visuals):
            kind = self._decoded(index, position, lambda visual=visual: self._kind(visual))
            found["audio" if kind == "audio" else "picture"].append((position, kind, visual))
        for group, what in (("audio", "audio"), ("picture", "video or image")):
            if len(found[group]) > 1:
                positions = [position for position, _, _ in found[group]]
                raise SampleError(index, f"visuals {positions}: VideoLLaMA2 takes one {what} per prompt")
        if not found["audio"] and not found["picture"]:
            raise SampleError(index, "no video, image or audio; VideoLLaMA2-AV answers about media")
        pixels = fbank = None
        if found["audio"]:  # the task's own audio, in place of a clip's soundtrack
            position, _, visual = found["audio"][0]
            fbank = self._decoded(index, position, lambda: self._audio(visual))
        if found["picture"]:
            position, kind, visual = found["picture"][0]
            if kind == "image":
                pixels = self._decoded(index, position, lambda: self._still(visual))
            else:
                video = visual if isinstance(visual, dict) else str(visual)
                pixels, track = self._decoded(index, position, lambda: self._video(video, fbank is None))
                fbank = track if fbank is None else fbank
        try:
            input_ids = self.prompt_ids(request.prompt, audio_only=pixels is None)
        except ValueError as error:
            raise SampleError(index, str(error)) from None
        return VideoLLaMA2Sample(input_ids, pixels, fbank)

    def prompt_ids(self, question: str, audio_only: bool = False) -> torch.Tensor:
        """The official prompt: ``[{"role": "user", "content": "<video>\\n" + question}]`` in the chat template,
        the modal tag tokenised as :data:`PLACEHOLDER`. ``[L]``"""
        tag = "<audio>" if audio_only else "<video>"
        if any(t in question for t in ("<video>", "<audio>", "<image>")):
            raise ValueError(f"the question holds a modal tag ({question[:80]!r}); the adapter adds the one it needs")
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{tag}\n{question}"}], tokenize=False, add_generation_prompt=True
        )
        before, after = text.split(tag)
        encode = lambda part: self.tokenizer(part, add_special_tokens=False).input_ids  # noqa: E731
        return torch.tensor([*encode(before), PLACEHOLDER, *encode(after)], dtype=torch.long)

    # ------------------------------------------------------------------ batch
    @torch.no_grad()
    def prepare(self, loaded: list[VideoLLaMA2Sample]) -> ModelInputs:
        model, dtype = self.model, self.model.llm.dtype
        rows: list[torch.Tensor] = []
        segments: list[list[Segment]] = []
        for sample in loaded:
            parts = []
            if sample.pixel_values is not None:
                parts.append(model.encode_video(sample.pixel_values[None].to(self.device, dtype))[0])
            if sample.fbank is not None:
                parts.append(model.encode_audio(sample.fbank[None].to(self.device, dtype))[0])
            media = torch.cat(parts)
            video = parts[0].shape[0] if sample.pixel_values is not None else 0
            rows.append(model.embed(sample.input_ids.to(self.device), PLACEHOLDER, media))
            stride = model.mm_projector.downsample[0]  # the STC connector's time step: one frame of its output
            frames = max(sample.pixel_values.shape[0] // stride, 1) if sample.pixel_values is not None else 1
            segments.append(prompt_segments(sample.input_ids, video, media.shape[0] - video, frames))
        return self.batch(rows, segments)
