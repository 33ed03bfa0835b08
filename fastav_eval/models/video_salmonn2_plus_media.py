"""video-SALMONN 2+'s media path (``video_SALMONN2_plus/qwenvl/data/dataset.py`` at commit 61faec0, official
evaluation settings ``--interval 0.1 --max_frames 768 --max_pixels 61250``) on PyAV and torch alone.

The official code decodes with torchcodec and resizes with torchvision; neither is needed here, and the results
are the same to the bit (tests/fixtures/video_salmonn2_plus_tiny):

- **frames**: ``n = min(max(round(length / 0.1), 16), 768)`` (:class:`FrameSettings`) indices
  ``unique(linspace(0, N - 1, n))`` of the clip's N decoded frames (RGB as FFmpeg's default conversion gives them;
  checked against torchcodec on untagged clips only: on a BT.709-tagged HD clip torchcodec 0.17 converts colour
  differently, and the pinned 0.4 could not be run here), ``length`` the stream's span;
- **pixels**: each frame resized to Qwen2.5-VL's ``smart_resize`` grid (multiples of 28) under a per-frame pixel cap
  of ``0.95 · 768 / n · 61250`` (61,250 at 768 frames), by antialiased bicubic on the uint8 frames (torchvision's
  uint8 kernel, which ``F.interpolate`` on uint8 is), normalised with CLIP's mean and std, an odd count padded by
  repeating the last frame, then cut into 2×14×14 patches in the vision tower's merge order;
- **audio**: the video's own soundtrack as FFmpeg's *float* mono downmix at 16 kHz (``(L + R) / √2`` for stereo,
  what torchcodec asks swresample for, unlike the CLI's int16 ``(L + R) / 2``), its AAC tail kept, padded to 1 s,
  split every 30 s, a 128-bin Whisper log-mel per piece; 60 audio tokens per started 30 s;
- **per-grid audio**: temporal grid t (2 frames, ``s = 2 / fps`` seconds) gets ``⌊2s(t+1)⌋ − ⌊2st⌋`` audio tokens
  (float32, as the official ``split_into_groups``), the last grid the remainder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastav_eval.models.media import _open, soundtrack

BASE_INTERVAL = 0.1  # seconds between sampled frames
MIN_FRAMES, MAX_FRAMES = 16, 768  # inference.py's video_min_frames / video_max_frames (scripts/test.sh: 64, 768)
MAX_FRAME_PIXELS = 61_250  # the official evaluation's --max_pixels (at 768 frames)
MIN_FRAME_PIXELS = 4 * 28 * 28  # the default video_min_frame_pixels inference.py keeps (scripts/test.sh: 784)
PATCH, MERGE, TEMPORAL = 14, 2, 2  # Qwen2.5-VL's vision tower
FACTOR = PATCH * MERGE
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SAMPLE_RATE = 16_000
CHUNK_SECONDS, TOKENS_PER_CHUNK = 30, 60


@dataclass(frozen=True)
class FrameSettings:
    """The official sampling settings: frames per clip within ``[min_frames, max_frames]``, pixels per frame within
    ``[min_pixels, max_pixels]`` (``max_pixels`` at ``max_frames`` frames, more below). The defaults are
    ``inference.py``'s; ``scripts/test.sh`` (the README's evaluation script) passes ``min_frames=64, min_pixels=784``,
    which changes clips under 6.4 s."""

    min_frames: int = MIN_FRAMES
    max_frames: int = MAX_FRAMES
    min_pixels: int = MIN_FRAME_PIXELS
    max_pixels: int = MAX_FRAME_PIXELS


INFERENCE_PY = FrameSettings()


def frame_indices(frame_count: int, length: float, settings: FrameSettings = INFERENCE_PY) -> list[int]:
    """The official torchcodec sampling: ``min(max(round(length / 0.1), min_frames), max_frames)`` evenly spaced
    indices of ``frame_count`` frames (``np.linspace``, truncated), duplicates removed."""
    wanted = min(max(round(length / BASE_INTERVAL), settings.min_frames), settings.max_frames)
    return np.unique(np.linspace(0, frame_count - 1, wanted, dtype=int)).tolist()


def frame_pixel_cap(frames: int, settings: FrameSettings = INFERENCE_PY) -> float:
    """Pixels per frame at most: ``max_pixels`` (61,250) at ``max_frames`` frames, ``0.95 · max_frames / frames``
    times that below (a float, as the official code leaves it)."""
    top, cap = settings.max_frames, settings.max_pixels
    return cap if frames >= top else 0.95 * top / frames * cap


def smart_resize(height: int, width: int, max_pixels: float, min_pixels: float = MIN_FRAME_PIXELS) -> tuple[int, int]:
    """Qwen2.5-VL's resize target (transformers 4.51): both sides multiples of 28, the aspect ratio kept as nearly
    as possible, the area within ``[min_pixels, max_pixels]``. A side under 28 px is refused, as there."""
    if height < FACTOR or width < FACTOR:
        raise ValueError(f"a {width}x{height} video: video-SALMONN 2+ needs both sides >= {FACTOR} px")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"a {width}x{height} video: the aspect ratio must be under 200")
    h_bar, w_bar = round(height / FACTOR) * FACTOR, round(width / FACTOR) * FACTOR
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar, w_bar = math.floor(height / beta / FACTOR) * FACTOR, math.floor(width / beta / FACTOR) * FACTOR
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / FACTOR) * FACTOR, math.ceil(width * beta / FACTOR) * FACTOR
    return h_bar, w_bar


@dataclass(frozen=True)
class VideoPixels:
    """A clip's vision-tower input: ``pixel_values [T·h·w, 1176]`` and its grid ``(T, h, w)`` in 14-px patches
    (``T`` temporal grids of 2 frames), ``second_per_grid`` seconds per temporal grid."""

    pixel_values: torch.Tensor
    grid: tuple[int, int, int]
    second_per_grid: float


def resize_frames(frames: torch.Tensor, max_pixels: float, min_pixels: float = MIN_FRAME_PIXELS) -> torch.Tensor:
    """``[n, 3, H, W]`` uint8 -> ``[n, 3, h, w]`` uint8 at :func:`smart_resize`'s size: antialiased bicubic on the
    uint8 tensor, which is torchvision's uint8 kernel (rounding a float resize would differ)."""
    height, width = frames.shape[-2:]
    size = smart_resize(height, width, max_pixels, min_pixels)
    return F.interpolate(frames, size=size, mode="bicubic", antialias=True, align_corners=False)


def patches(resized: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """``[n, 3, h, w]`` uint8 -> CLIP-normalised ``[T·h/14·w/14, 1176]`` patches in the merge order, an odd count
    padded with the last frame (the official fused rescale-and-normalise: ``(x - 255·mean) / (255·std)``)."""
    mean = torch.tensor(CLIP_MEAN) * (1.0 / (1 / 255))
    std = torch.tensor(CLIP_STD) * (1.0 / (1 / 255))
    x = (resized.float() - mean[:, None, None]) / std[:, None, None]
    if x.shape[0] % TEMPORAL:
        x = torch.cat([x, x[-1:].expand(TEMPORAL - x.shape[0] % TEMPORAL, -1, -1, -1)])
    grid_t, (height, width) = x.shape[0] // TEMPORAL, x.shape[-2:]
    grid_h, grid_w = height // PATCH, width // PATCH
    x = x.view(grid_t, TEMPORAL, 3, grid_h // MERGE, MERGE, PATCH, grid_w // MERGE, MERGE, PATCH)
    flat = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(grid_t * grid_h * grid_w, 3 * TEMPORAL * PATCH * PATCH)
    return flat, (grid_t, grid_h, grid_w)


def video_pixels(frames: torch.Tensor, length: float, settings: FrameSettings = INFERENCE_PY) -> VideoPixels:
    """The sampled frames ``[n, 3, H, W]`` uint8 of a clip lasting ``length`` s -> its :class:`VideoPixels`."""
    flat, grid = patches(resize_frames(frames, frame_pixel_cap(len(frames), settings), settings.min_pixels))
    fps = len(frames) / length
    return VideoPixels(flat, grid, TEMPORAL / fps)


def decode_frames(path: str | Path, settings: FrameSettings = INFERENCE_PY) -> tuple[torch.Tensor, float]:
    """The frames :func:`frame_indices` picks, ``[n, 3, H, W]`` uint8 RGB, and the stream's span in seconds (from the
    first frame's start to the last frame's end, as torchcodec scans it)."""
    times: list[float] = []
    rgb: dict[int, np.ndarray] = {}
    with _open(path, "video") as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 0)
        for frame in container.decode(stream):
            times.append(float(frame.time) if frame.time is not None else len(times) / rate)
        if not times:
            raise ValueError(f"{path}: no video frame could be decoded")
        step = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 1 / rate
        length = times[-1] + step - times[0]  # a constant-rate stream: the last frame lasts as long as the others
        wanted = set(frame_indices(len(times), length, settings))
        container.seek(0)  # a second pass: the indices need the count and span a full scan gives (as torchcodec's)
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                rgb[index] = frame.to_ndarray(format="rgb24")
    picked = np.stack([rgb[index] for index in sorted(rgb)])
    return torch.from_numpy(picked).permute(0, 3, 1, 2).contiguous(), length


def float_soundtrack(path: str | Path) -> np.ndarray | None:
    """The first audio track as torchcodec's ``AudioDecoder(..., sample_rate=16000, num_channels=1)`` gives it:
    FFmpeg's float mono downmix, float32 ``[N]``, or None when ``path`` has none."""
    return soundtrack(path, SAMPLE_RATE, "flt")


def audio_pieces(waveform: np.ndarray) -> list[np.ndarray]:
    """A 16-kHz waveform padded to at least 1 s, split every 30 s (the official ``process_audio``; no cut to the
    video's length)."""
    if len(waveform) < SAMPLE_RATE:
        waveform = np.pad(waveform, (0, SAMPLE_RATE - len(waveform)))
    step = CHUNK_SECONDS * SAMPLE_RATE
    return [waveform[k : k + step] for k in range(0, len(waveform), step)]


def audio_per_grid(audio_tokens: int, grids: int, second_per_grid: float) -> list[int]:
    """Audio tokens after each temporal grid's video tokens (the official ``split_into_groups`` with
    ``second_per_grid_ts``): ``⌊2s(t+1)⌋ − ⌊2st⌋`` in float32 for every grid but the last, which takes the rest."""
    starts = (torch.arange(grids) * second_per_grid * 2).long()
    counts = torch.diff(starts).tolist()
    rest = audio_tokens - sum(counts)
    if rest < 0:
        raise ValueError(
            f"{audio_tokens} audio tokens cannot fill {grids} grids of {second_per_grid:.3f} s: the soundtrack is "
            "much shorter than the video (the official code fails here too)"
        )
    return [*counts, rest]
