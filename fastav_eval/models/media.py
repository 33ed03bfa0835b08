"""Media decoding shared by the adapters: frames and soundtracks from video files, audio from files or arrays.

Everything goes through PyAV (FFmpeg), so any container FFmpeg reads works, and nothing needs torchvision,
torchcodec or a system ``ffmpeg`` binary. Errors are :class:`~fastav_eval.models.base.SampleError`-ready
``ValueError`` messages naming the file and what was wrong with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import Any

import av
import numpy as np
from scipy.signal import resample_poly

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".flv")
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac", ".opus")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class Frames:
    """Frames sampled from a video: ``frames [T, H, W, 3]`` uint8 at ``fps`` frames per second of the video."""

    frames: np.ndarray
    fps: float
    duration: float


def _duration(stream: Any, container: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # microseconds
    return None


def _open(path: str | Path, kind: str) -> Any:
    """``path`` opened with PyAV, checked to hold a ``kind`` ("video" / "audio") stream."""
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as error:
        raise ValueError(f"cannot open {path}: {error}") from None
    if not getattr(container.streams, kind):
        container.close()
        raise ValueError(f"{path} has no {'video stream' if kind == 'video' else 'audio track'}")
    return container


def has_audio_track(path: str | Path) -> bool:
    with av.open(str(path)) as container:
        return len(container.streams.audio) > 0


def _frame_times(path: str | Path) -> list[float]:
    """Presentation time (s) of every frame of the first video stream (one decode pass, no pixel conversion)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [float(frame.time) if frame.time is not None else 0.0 for frame in container.decode(stream)]


def sample_frames(path: str | Path, fps: float, max_frames: int, min_frames: int = 2, multiple: int = 2) -> Frames:
    """Frames of ``path`` sampled uniformly at ``fps`` (fewer when that exceeds ``max_frames``).

    The count is rounded down to a ``multiple`` (Qwen's vision tower packs 2 frames per temporal patch) and
    is at least ``min_frames``; the returned ``fps`` is the rate actually sampled (count / duration). Only the
    chosen frames are converted to RGB, so a long clip costs one decode pass, not its frames' memory.
    """
    with _open(path, "video") as container:
        stream = container.streams.video[0]
        duration = _duration(stream, container)
    if not duration or duration <= 0:
        times = _frame_times(path)
        duration = len(times) / float(stream.average_rate or 1) if times else 0.0
    if duration <= 0:
        raise ValueError(f"{path}: no video frame could be decoded")
    count = min(max_frames, max(min_frames, round(duration * fps)))
    count = max(multiple, count // multiple * multiple)
    targets = list((np.arange(count) + 0.5) * duration / count)  # the middle of each of `count` equal intervals
    frames: list[np.ndarray] = []
    last = None
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            last = frame
            while targets and (frame.time or 0.0) >= targets[0] - 1e-6:
                frames.append(frame.to_ndarray(format="rgb24"))
                targets.pop(0)
            if not targets:
                break
    if last is None:
        raise ValueError(f"{path}: no video frame could be decoded")
    while targets:  # the stream ended before its declared duration: repeat the last frame
        frames.append(last.to_ndarray(format="rgb24"))
        targets.pop(0)
    return Frames(frames=np.stack(frames), fps=count / duration, duration=duration)


def _resample(waveform: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    if source_rate == target_rate:
        return waveform.astype(np.float32)
    divisor = gcd(int(source_rate), int(target_rate))
    return resample_poly(waveform, target_rate // divisor, source_rate // divisor).astype(np.float32)


def decode_audio(path: str | Path, sampling_rate: int) -> np.ndarray:
    """The first audio stream of ``path`` (a video or an audio file), mono float32 at ``sampling_rate``.

    Trimmed to the stream's declared duration: AAC pads its last frame (2.000 s written decodes as 2.048 s),
    which would add audio tokens past the end of the clip.
    """
    with _open(path, "audio") as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sampling_rate)
        pieces = []
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                pieces.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            pieces.append(out.to_ndarray().reshape(-1))
        duration = _duration(stream, container)
    if not pieces:
        raise ValueError(f"{path}: the audio track holds no samples")
    waveform = np.concatenate(pieces).astype(np.float32)
    if duration is not None:
        waveform = waveform[: max(1, round(duration * sampling_rate))]
    return waveform


def audio_from_dict(item: dict, sampling_rate: int, field: str = "audio") -> np.ndarray:
    """``{"array": [N] or [N, C] or [C, N], "sampling_rate": int}`` -> mono float32 ``[N']`` at ``sampling_rate``."""
    if "array" not in item or "sampling_rate" not in item:
        raise ValueError(f"{field} must hold 'array' and 'sampling_rate'; got keys {sorted(item)}")
    waveform = np.asarray(item["array"], dtype=np.float32)
    if waveform.ndim == 2:
        waveform = waveform.mean(axis=int(np.argmin(waveform.shape)))  # channels are the short axis
    if waveform.ndim != 1 or waveform.size == 0:
        raise ValueError(
            f"{field} 'array' must be a non-empty [samples] or [samples, channels] array; got {waveform.shape}"
        )
    rate = item["sampling_rate"]
    if not isinstance(rate, int | np.integer) or rate <= 0:
        raise ValueError(f"{field} 'sampling_rate' must be a positive int; got {rate!r}")
    return _resample(waveform, int(rate), sampling_rate)
