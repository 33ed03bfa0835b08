"""Adapter for video-SALMONN 2 (``tsinghua-ee/video-SALMONN-2``), the FastAV paper's second model, with its audio.

``lmms-eval --model fastav_video_salmonn2``. ``prune=fastav`` (the default) is the paper's setting: the global stage
at half the depth (layer 14 of 28) keeps the audio-visual tokens of the first 4 frames, then the fine stage drops
P = 20% before every later layer.

The model is :mod:`fastav_eval.models.video_salmonn2_model` (transformers' Qwen2, SigLIP, Whisper encoder and
BLIP-2 Q-Former, with the official glue). This file reproduces the official evaluation path
(``LazyAVSupervisedDataset(is_test=True)`` + the collator + ``prepare_inputs_labels_for_multimodal``, at ``--fps 1
--max_time 110``) on our media stack:

- **frames**: every ``round(fps)``-th decoded frame (1 per second), or ``max_frames`` (110) evenly spaced ones
  (``np.linspace``, truncated) when there are more; decoded with decord's colour conversion; resized to 384×384
  (PIL bicubic, no crop), scaled to [-1, 1]. The clip's length is its frame count over its frame rate.
- **audio**: the clip's soundtrack as FFmpeg's mono 16-kHz downmix (what ``ffmpeg -ac 1 -ar 16000`` writes for the
  official ``audio`` wav), or the request's own audio item (its first channel, as the official ``soundfile`` read;
  resampled to 16 kHz where it is not — the official code asserts 16 kHz). Padded to 1 s, cut to the clip's length,
  split into 30-s chunks, each a 128-bin Whisper log-mel of 3,000 frames.
- **layout**: ``[prefix][frame 0: 182 visual, k audio] … [frame F-1: 182 visual, k audio][tail]``: the
  ``60·⌈T/30⌉`` audio tokens (the last chunk's padding included) resized to ``F·k`` by nearest neighbour, as the
  official code does; each frame's visual and audio tokens are its chunk (``video_keep_chunks``, "the first 4
  frames").
- **prompt**: the official ``preprocess_qwen`` ids, ``<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
  <|im_start|>user\\n<media>\\n`` + ``"\\n" + question`` + ``<|im_end|>\\n<|im_start|>assistant\\n``, both
  ``<|im_end|>`` kept as the official evaluation keeps them (its ``generate`` gets no attention mask; the demo and
  forward passes, which get the collator's mask, drop them when the tokenizer's eos is ``<|im_end|>``:
  ``prompt_im_end=drop``).
- **decoding**: greedy, stopped at ``<|im_end|>`` or eos; the checkpoint's ``generation_config.json``
  ``repetition_penalty`` applies, as under the official ``generate`` (1.0 when it has none).

A video without audio (``video_audio=if_present`` on a silent clip, or ``off``) takes the official video-only path:
each frame's 182 tokens are followed by its time as text (``add_time_token``), zero-padded to the longest. Audio
alone takes the official audio-only path (its tokens in place of the media, chunked per second here). An image is
refused: the official video path needs at least two frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import WhisperFeatureExtractor
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from fastav_eval.models.base import (
    CHECKPOINT_REPETITION_PENALTY,
    AdapterArg,
    ChatEnds,
    EmbedsAdapter,
    ModelInputs,
    Request,
    SampleError,
    splice_media,
)
from fastav_eval.models.checkpoint import load_tokenizer, local_folder, quiet_transformers, repetition_penalty
from fastav_eval.models.media import (
    _resample,
    audio_and_video,
    checked_frames,
    decode_picked_frames,
    read_audio_item,
    soundtrack,
)
from fastav_eval.models.video_salmonn2_model import (
    WHISPER_SECONDS,
    AudioSplit,
    VideoSALMONN2,
    interleave,
    load_video_salmonn2,
)
from fastav_eval.pruning.layout import Segment

SAMPLE_RATE = 16_000
IMAGE_SIZE = 384
PLACEHOLDER = -200  # the official IMAGE_TOKEN_INDEX, where the audio-visual block is spliced in
VIDEO_FPS = 1  # the official eval's --fps
MAX_TIME = 110  # the official eval's --max_time (s): at most 110 frames, audio alone cut to 110 s
SYSTEM_MESSAGE = "You are a helpful assistant."
VIDEO_AUDIO = ("required", "if_present", "off")
PROMPT_IM_END = ("keep", "drop")
PROFILES = Path(__file__).parent / "profiles"
IMAGE_REFUSAL = (
    "video-SALMONN 2's official video path needs at least 2 frames, and it has no image path: accepted: a video or "
    "audio file"
)


# ---------------------------------------------------------------------------------------------- preprocessing
def frame_indices(frame_count: int, fps: float, max_frames: int = MAX_TIME * VIDEO_FPS) -> list[int]:
    """The official 1-fps sampling: every ``max(round(fps), 1)``-th frame, or ``max_frames`` evenly spaced ones
    (``np.linspace(0, count - 1, max_frames, dtype=int)``) when that gives more."""
    step = max(round(fps / VIDEO_FPS), 1)
    indices = list(range(0, frame_count, step))
    if len(indices) > max_frames:
        indices = np.linspace(0, frame_count - 1, max_frames, dtype=int).tolist()
    return indices


def video_frames(path: str | Path, max_frames: int) -> tuple[list[np.ndarray], float]:
    """RGB frames ``[H, W, 3]`` of a video file at :func:`frame_indices`, and its length in seconds (frame count
    over the stream's average rate, as decord's ``len(vr) / vr.get_avg_fps()``)."""
    frames, count, fps = decode_picked_frames(path, lambda count, fps: frame_indices(count, fps, max_frames))
    if fps <= 0:
        raise ValueError(f"{path}: the video stream states no frame rate")
    return frames, count / fps


def in_memory_frames(video: dict[str, Any], max_frames: int) -> tuple[list[np.ndarray], float]:
    """An in-memory video (:data:`VIDEO_DICT`) sampled as :func:`video_frames` samples a file's decoded frames."""
    frames = checked_frames(video)
    fps = float(video["fps"])
    return [frames[index] for index in frame_indices(len(frames), fps, max_frames)], len(frames) / fps


def audio_chunks(waveform: np.ndarray, seconds: float) -> list[np.ndarray]:
    """A 16-kHz waveform -> the official 30-s pieces: padded to at least 1 s, cut to ``seconds`` (rounded to a
    sample), split every 30 s."""
    if len(waveform) < SAMPLE_RATE:
        waveform = np.concatenate([waveform, np.zeros(SAMPLE_RATE - len(waveform), waveform.dtype)])
    waveform = waveform[: round(SAMPLE_RATE * seconds)]
    step = WHISPER_SECONDS * SAMPLE_RATE
    return [waveform[k : k + step] for k in range(0, len(waveform), step)]


def time_texts(real_time: float, frames: int) -> list[str]:
    """The official ``add_time_token`` strings: frame f (from 1) at ``round(real_time / F · f, 1)`` s."""
    return [str(round(real_time / frames * f, 1)) for f in range(1, frames + 1)]


@dataclass
class VideoSALMONN2Sample:
    """One request, preprocessed.

    Attributes:
        input_ids: the prompt's ids ``[L]`` with :data:`PLACEHOLDER` once.
        pixel_values: ``[F, 3, 384, 384]`` (None: audio alone).
        spectrogram: ``[n, 128, 3000]`` Whisper log-mel chunks (None: no audio fed).
        real_time: the clip's length in seconds (audio alone: 30 s per chunk, as the official code sets it).
    """

    input_ids: torch.Tensor
    pixel_values: torch.Tensor | None
    spectrogram: torch.Tensor | None
    real_time: float


# ---------------------------------------------------------------------------------------------- adapter
class VideoSALMONN2Adapter(EmbedsAdapter):
    """``[text][frame f: visual, audio]*F[text]`` per sample, merged into ``inputs_embeds`` for transformers' Qwen2."""

    name = "video_salmonn2"
    default_pretrained = "tsinghua-ee/video-SALMONN-2"
    default_dtype = "bfloat16"  # the official inference's
    model_args: ClassVar[dict[str, AdapterArg]] = {
        **EmbedsAdapter.model_args,
        "whisper": AdapterArg(
            "openai/whisper-large-v3",
            str,
            "the Whisper checkpoint the official constructor is given: its config and log-mel settings, and its "
            "encoder weights when the checkpoint holds no speech_encoder.*",
        ),
        "qformer_config": AdapterArg(
            "bert-base-uncased", str, "the BERT config the official window Q-Former is built from (its sizes)"
        ),
        "vision_tower": AdapterArg(None, str, "the SigLIP checkpoint; default: the config's mm_vision_tower"),
        "max_frames": AdapterArg(MAX_TIME * VIDEO_FPS, int, "frames per video at most (the official 110)"),
        "video_audio": AdapterArg(
            "required",
            str,
            "a video's soundtrack: fed, and a clip without one fails its sample (required); fed when the clip has "
            "one, else the official video-only path (if_present); never fed (off)",
            choices=VIDEO_AUDIO,
        ),
        "prompt_im_end": AdapterArg(
            "keep",
            str,
            "the prompt's two <|im_end|>: kept, as the official evaluation (eval.sh -> LLaVATrainer.prediction_step "
            "calls generate without an attention mask) (keep); dropped, as the official demo and forward passes "
            "do when the tokenizer's eos is <|im_end|> and the checkpoint path lacks 'qwen' (drop)",
            choices=PROMPT_IM_END,
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
        folder = local_folder(str(self.pretrained))
        self.model: VideoSALMONN2 = load_video_salmonn2(
            folder,
            whisper=self.options["whisper"],
            qformer_config=self.options["qformer_config"],
            vision_tower=self.options["vision_tower"],
            device=self.device,
            dtype=dtype,
            attn_implementation=attn_implementation,
            use_kernels=self.use_kernels,
        )
        if not self.options["max_frames"] >= 2:
            raise ValueError(f"max_frames={self.options['max_frames']!r}; accepted: an int >= 2")
        self.tokenizer = load_tokenizer(folder)
        self.ends = ChatEnds.of(self.tokenizer)
        with quiet_transformers():
            self.features = WhisperFeatureExtractor.from_pretrained(self.options["whisper"])
        self.image_processor = SiglipImageProcessorPil(
            size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
            resample=Image.Resampling.BICUBIC,
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        )
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.dropped_ids = {im_end} if self.options["prompt_im_end"] == "drop" else set()
        penalty = self.options["repetition_penalty"]
        self.repetition_penalty = penalty or repetition_penalty(folder)

    def weight_sources(self) -> list[str]:
        return [str(self.pretrained), self.options["whisper"]]

    @classmethod
    def default_profile(cls, pretrained: str | None) -> Path | None:
        """The paper's global stage for video-SALMONN 2: the audio-visual tokens of the first 4 frames (FastAV,
        Table 1), at half the depth (layer 14 of 28) unless ``global_layer`` says otherwise."""
        return PROFILES / "video_salmonn2_fastav.json"

    @property
    def decoder(self) -> nn.Module:
        return self.model.llm

    def generation_options(self) -> dict[str, Any]:
        return {"repetition_penalty": self.repetition_penalty}

    # ------------------------------------------------------------------ requests
    def prompt_ids(self, question: str) -> torch.Tensor:
        """The official ``preprocess_qwen`` ids for one human turn ``"<image>\\n" + question`` and an empty
        assistant turn cut before its end, less :attr:`dropped_ids`. ``[L]``"""
        if any(tag in question for tag in ("<image>", "<video>", "<audio>")):
            raise ValueError(f"the question holds a modal tag ({question[:80]!r}); the adapter adds the one it needs")
        tokenizer = self.tokenizer
        encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
        im_start, im_end = (tokenizer.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>"))
        newline = encode("\n")
        ids = [im_start, *encode("system"), *newline, *encode(SYSTEM_MESSAGE), im_end, *newline]
        ids += [*encode("<|im_start|>user"), *newline, PLACEHOLDER, *newline, *encode("\n" + question), im_end]
        ids += [*newline, *encode("<|im_start|>assistant"), *newline]
        return torch.tensor([i for i in ids if i not in self.dropped_ids], dtype=torch.long)

    def _pixels(self, frames: list[np.ndarray]) -> torch.Tensor:
        images = [Image.fromarray(frame) for frame in frames]
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"]

    def _spectrogram(self, waveform: np.ndarray, seconds: float) -> torch.Tensor:
        """``[n, 128, 3000]``: the log-mel of each 30-s piece of :func:`audio_chunks`, each padded to 30 s."""
        pieces = audio_chunks(waveform.astype(np.float64), seconds)
        return torch.stack(
            [self.features(p, sampling_rate=SAMPLE_RATE, return_tensors="pt")["input_features"][0] for p in pieces]
        )

    @staticmethod
    def _audio_item(visual: Any) -> np.ndarray:
        """An audio file or ``{"array", "sampling_rate"}`` -> its first channel at 16 kHz (float64)."""
        samples, rate = read_audio_item(visual)
        first = samples[:, 0] if samples.ndim == 2 else samples
        return _resample(first, rate, SAMPLE_RATE).astype(np.float64) if rate != SAMPLE_RATE else first

    def load_request(self, request: Request, index: int) -> VideoSALMONN2Sample:
        try:
            found = audio_and_video(request.visuals, "video-SALMONN 2", IMAGE_REFUSAL)
        except (ValueError, OSError) as error:
            raise SampleError(index, str(error)) from None
        if not found["audio"] and not found["video"]:
            raise SampleError(index, "no video or audio; video-SALMONN 2 answers about media")
        try:
            return self._load(found, request.prompt)
        except (ValueError, OSError, RuntimeError) as error:
            raise SampleError(index, str(error)) from None

    def _load(self, found: dict[str, list[tuple[int, Any]]], prompt: str) -> VideoSALMONN2Sample:
        input_ids = self.prompt_ids(prompt)
        waveform = self._audio_item(found["audio"][0][1]) if found["audio"] else None
        if not found["video"]:  # audio alone: cut to 110 s; the official real_time is 30 s per chunk
            assert waveform is not None
            spectrogram = self._spectrogram(waveform, MAX_TIME)
            return VideoSALMONN2Sample(input_ids, None, spectrogram, float(WHISPER_SECONDS * len(spectrogram)))
        position, video = found["video"][0]
        max_frames = self.options["max_frames"]
        in_memory = isinstance(video, dict)
        frames, real_time = in_memory_frames(video, max_frames) if in_memory else video_frames(video, max_frames)
        if len(frames) < 2:
            raise ValueError(f"visual {position}: {len(frames)} frame at 1 fps; the official video path needs 2")
        mode = self.options["video_audio"]
        if waveform is None and mode != "off":
            waveform = None if in_memory else soundtrack(video, SAMPLE_RATE)
            if waveform is None and mode == "required":
                what = (
                    "an in-memory video carries no soundtrack: give the sample's audio as a separate "
                    '{"type": "audio", "array", "sampling_rate"} item'
                    if in_memory
                    else f"{video} has no audio track"
                )
                raise ValueError(
                    f"{what}, and this model is asked to hear each clip (video_audio=required); "
                    "video_audio=if_present takes the official video-only path instead"
                )
        spectrogram = None if waveform is None else self._spectrogram(waveform, real_time)
        return VideoSALMONN2Sample(input_ids, self._pixels(frames), spectrogram, real_time)

    # ------------------------------------------------------------------ batch
    def _time_tokens(self, real_time: float, frames: int) -> torch.Tensor:
        """``[F, n, D]``: each frame's time text embedded, zero-padded to the longest (the official video-only
        ``add_time_token``)."""
        table = self.model.llm.get_input_embeddings()
        rows = [
            table(torch.tensor(self.tokenizer(t).input_ids, device=self.device)) for t in time_texts(real_time, frames)
        ]
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)

    def media(self, sample: VideoSALMONN2Sample) -> tuple[torch.Tensor, list[Segment]]:
        """One sample's audio-visual block ``[N, D]`` and its segments, each frame's visual and audio tokens one
        chunk (audio alone: one chunk per second)."""
        model, dtype = self.model, self.model.llm.dtype
        audio = None
        if sample.spectrogram is not None:
            audio = model.encode_audio(sample.spectrogram.to(self.device, dtype))  # [60n, D]
        if sample.pixel_values is None:
            assert audio is not None
            per_second = 2 * VIDEO_FPS
            return audio, [
                ("audio", min(per_second, len(audio) - s), s // per_second) for s in range(0, len(audio), per_second)
            ]
        visual = model.encode_frames(sample.pixel_values.to(self.device, dtype))  # [F, 182, D]
        frames, per_frame = visual.shape[:2]
        if audio is not None:
            split = AudioSplit.of(frames, len(audio), sample.real_time)
            segments: list[Segment] = []
            for f in range(frames):
                back = split.back if f == frames - 1 else 0
                segments += [("video", per_frame, f), ("audio", split.per_frame + back, f)]
            return interleave(visual, audio, split), segments
        if not model.spec.add_time_token:
            return visual.flatten(0, 1), [("video", per_frame, f) for f in range(frames)]
        times = self._time_tokens(sample.real_time, frames).to(dtype)
        segments = [s for f in range(frames) for s in (("video", per_frame, f), ("text", times.shape[1]))]
        return torch.cat([visual, times], dim=1).flatten(0, 1), segments

    @torch.no_grad()
    def prepare(self, loaded: list[VideoSALMONN2Sample]) -> ModelInputs:
        rows: list[torch.Tensor] = []
        segments: list[list[Segment]] = []
        for sample in loaded:
            block, block_segments = self.media(sample)
            row = splice_media(self.model.llm, sample.input_ids.to(self.device), PLACEHOLDER, block)
            limit = self.model.spec.max_length
            if limit is not None and len(row) > limit:
                raise ValueError(
                    f"a prompt of {len(row)} tokens; the checkpoint's tokenizer_model_max_length is {limit} (the "
                    "official code would cut the question off): lower max_frames"
                )
            at = int((sample.input_ids == PLACEHOLDER).nonzero()[0])
            segments.append([("text", at), *block_segments, ("text", len(sample.input_ids) - at - 1)])
            rows.append(row)
        return self.batch(rows, segments)
