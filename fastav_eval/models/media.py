"""Media decoding shared by the adapters: frames and soundtracks from video files, audio from files or arrays.

Everything goes through PyAV (FFmpeg), so any container FFmpeg reads works, and nothing needs torchvision,
torchcodec or a system ``ffmpeg`` binary. Errors are :class:`~fastav_eval.models.base.SampleError`-ready
``ValueError`` messages naming the file and what was wrong with it.
"""

from __future__ import annotations

from collections.abc import Callable
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
    try:
        with av.open(str(path)) as container:
            return len(container.streams.audio) > 0
    except (av.error.FFmpegError, OSError) as error:
        raise ValueError(f"cannot open {path}: {error}") from None


def _start(stream: Any) -> float:
    return float(stream.start_time * stream.time_base) if stream.start_time is not None and stream.time_base else 0.0


def _frame_time(frame: Any, index: int, rate: float) -> float:
    return float(frame.time) if frame.time is not None else index / rate


def video_duration(path: str | Path) -> float:
    """Seconds of the first video stream (its metadata, or one decode pass over its frames when it has none)."""
    with _open(path, "video") as container:
        stream = container.streams.video[0]
        duration = _duration(stream, container)
        if duration and duration > 0:
            return duration
        rate = float(stream.average_rate or 25)
        count = sum(1 for _ in container.decode(stream))
    if count == 0:
        raise ValueError(f"{path}: no video frame could be decoded")
    return count / rate


VIDEO_DICT = '{"type": "video", "frames": uint8 [T, H, W, 3], "fps": float > 0}'
"""The in-memory video the adapters take (AV-Synth's ``doc_to_visual``), as error messages name it. It carries no
soundtrack: a request gives its sound as a separate audio item."""


def is_video_dict(visual: Any) -> bool:
    """Whether ``visual`` is meant as an in-memory video: a dict typed ``video`` or holding ``frames``."""
    return isinstance(visual, dict) and (visual.get("type") == "video" or "frames" in visual)


def checked_frames(video: dict[str, Any]) -> np.ndarray:
    """The ``frames`` ``[T, H, W, 3]`` uint8 of an in-memory video (:data:`VIDEO_DICT`); a ValueError naming the
    field and what is accepted otherwise."""
    missing = [name for name in ("frames", "fps") if name not in video]
    if missing:
        raise ValueError(f"video dict lacks {missing} (got keys {sorted(video)}); accepted: {VIDEO_DICT}")
    if video.get("type", "video") != "video":
        raise ValueError(f"video 'type'={video['type']!r}; accepted: 'video' ({VIDEO_DICT})")
    frames = np.asarray(video["frames"])
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ValueError(
            f"video 'frames' is {frames.dtype} {tuple(frames.shape)}; accepted: uint8 [T, H, W, 3] RGB with T, H, "
            "W >= 1"
        )
    fps = video["fps"]
    if isinstance(fps, bool) or not isinstance(fps, int | float | np.integer | np.floating) or not 0 < fps < np.inf:
        raise ValueError(f"video 'fps'={fps!r}; accepted: a finite number > 0 (frames per second of 'frames')")
    return frames


def sampling_rate_for(durations: list[float], fps: float, max_frames: int) -> float:
    """One frame rate for every video of a prompt: ``fps``, lowered so that the longest gets ``max_frames``.

    Qwen-style processors time every video of a call at one rate, so the videos of one prompt share it.
    """
    return min(fps, max_frames / max(durations))


def frame_times(duration: float, rate: float, max_frames: int, multiple: int = 2) -> np.ndarray:
    """``[count]`` seconds from a clip's start at which :func:`sample_frames` takes its frames: ``(k + 0.5) / rate``,
    ``count`` the most whole frames of ``rate`` in ``duration`` s, rounded down to a ``multiple`` (at least one) and
    capped at ``max_frames``."""
    count = min(max_frames, int(duration * rate + 1e-6))
    count = max(multiple, count // multiple * multiple)
    steps = np.arange(count) + 0.5
    # A clip shorter than `count` frames of the rate (next to a longer video of the prompt) is spread over its span.
    return np.minimum(steps / rate, steps * duration / count)


def sample_frames_in_memory(video: dict[str, Any], rate: float, max_frames: int, multiple: int = 2) -> Frames:
    """Frames of an in-memory video (:data:`VIDEO_DICT`) sampled at ``rate`` as :func:`sample_frames` samples a
    file: frame k of ``frames`` is on screen over ``[k / fps, (k + 1) / fps)``, the clip lasts ``T / fps`` s."""
    frames = checked_frames(video)
    fps = float(video["fps"])
    times = frame_times(len(frames) / fps, rate, max_frames, multiple)
    indices = np.minimum(np.floor(times * fps + 1e-6).astype(np.int64), len(frames) - 1)
    return Frames(frames=frames[indices], fps=rate)


def in_memory_duration(video: dict[str, Any]) -> float:
    """Seconds of an in-memory video (:data:`VIDEO_DICT`): its ``T`` frames at ``fps``."""
    return len(checked_frames(video)) / float(video["fps"])


def sample_frames(
    path: str | Path, rate: float, max_frames: int, multiple: int = 2, duration: float | None = None
) -> Frames:
    """Frames of ``path`` sampled at exactly ``rate`` frames per second of the video.

    Frame k is the one on screen at ``(k + 0.5) / rate`` s from the stream's start; the count is the most whole
    frames of that rate in the clip, rounded down to a ``multiple`` (Qwen's vision tower packs 2 frames per
    temporal patch; at least one such pack) and capped at ``max_frames``. The returned ``fps`` is ``rate``, so a
    processor told it times every frame right. Only the chosen frames are converted to RGB. ``duration``: the
    clip's :func:`video_duration`, when the caller has it already (it can cost a decode pass).
    """
    duration = video_duration(path) if duration is None else duration
    targets = list(frame_times(duration, rate, max_frames, multiple))
    frames: list[np.ndarray] = []
    with _open(path, "video") as container:
        stream = container.streams.video[0]
        start, average = _start(stream), float(stream.average_rate or 25)
        previous = None
        for index, frame in enumerate(container.decode(stream)):
            time = _frame_time(frame, index, average) - start
            while targets and time > targets[0] + 1e-6:  # `previous` is on screen at that target
                frames.append((frame if previous is None else previous).to_ndarray(format="rgb24"))
                targets.pop(0)
            if not targets:
                break
            previous = frame
    if previous is None and not frames:
        raise ValueError(f"{path}: no video frame could be decoded")
    while targets:  # past the last frame: it stays on screen
        frames.append(previous.to_ndarray(format="rgb24"))
        targets.pop(0)
    return Frames(frames=np.stack(frames), fps=rate)


def _resample(waveform: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    if source_rate == target_rate:
        return waveform.astype(np.float32)
    divisor = gcd(int(source_rate), int(target_rate))
    return resample_poly(waveform, target_rate // divisor, source_rate // divisor).astype(np.float32)


EMPTY_TRACK = "the audio track holds no samples"


def decode_audio(path: str | Path, sampling_rate: int, from_video_start: bool = False) -> np.ndarray:
    """The first audio stream of ``path`` (a video or an audio file), mono float32 at ``sampling_rate``.

    Trimmed to the stream's declared duration: AAC pads its last frame (2.000 s written decodes as 2.048 s),
    which would add audio tokens past the end of the clip. With ``from_video_start`` the waveform starts when
    the video stream does (silence before a later audio start, the part before the video's start dropped), so
    that second t of the audio is second t of the frames.
    """
    with _open(path, "audio") as container:
        stream = container.streams.audio[0]
        video = container.streams.video
        offset = _start(stream) - _start(video[0]) if from_video_start and video else 0.0
        # Channels kept apart and averaged here, as for an audio array (librosa's and the Qwen authors' mono),
        # rather than FFmpeg's downmix, which weights each channel by 1/sqrt(2).
        resampler = av.AudioResampler(format="fltp", rate=sampling_rate)
        pieces = []
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                pieces.append(out.to_ndarray().mean(axis=0))
        for out in resampler.resample(None):
            pieces.append(out.to_ndarray().mean(axis=0))
        duration = _duration(stream, container)
    if not pieces:
        raise ValueError(f"{path}: {EMPTY_TRACK}")
    waveform = np.concatenate(pieces).astype(np.float32)
    if duration is not None:
        waveform = waveform[: max(1, round(duration * sampling_rate))]
    shift = round(offset * sampling_rate)
    if shift > 0:
        waveform = np.concatenate([np.zeros(shift, np.float32), waveform])
    elif shift < 0:
        waveform = waveform[-shift:]
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


# ------------------------------------------------------------------------ frames and audio as decord / soundfile read
# AVColorSpace -> the swscale matrix decord's conversion uses (SMPTE 170M has BT.601's coefficients, BT.2020 CL
# its NCL ones); untagged and other frames get swscale's default, BT.601.
SWS_MATRICES = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9, 10: 9}
BT601, BT709 = 5, 1


def rgb(frame: av.VideoFrame) -> np.ndarray:
    """``[H, W, 3]`` uint8 with the YUV matrix and range the frame is tagged with, as decord (and so the official
    code) converts; PyAV's plain ``to_ndarray(format="rgb24")`` applies BT.601 whatever the tag (an HD clip's
    BT.709 colours would be off by up to 43 levels)."""
    source = SWS_MATRICES.get(frame.colorspace, BT601)
    full = frame.color_range == 2 or frame.format.name.startswith("yuvj")  # AVCOL_RANGE_JPEG
    options = {
        "src_colorspace": source,
        "dst_colorspace": BT709 if source == BT601 else BT601,  # PyAV skips the matrix when source == target
        # 2 reads as full range in PyAV 12 (which hands the number to swscale) and 15 (which maps JPEG to it), 0 as
        # limited in both; both are tested against decord.
        "src_color_range": 2 if full else 0,
    }
    try:
        return frame.reformat(format="rgb24", **options).to_ndarray()
    except KeyError:  # a PyAV whose Colorspace enum lacks the matrix (PyAV 12 has no BT.2020)
        raise ValueError(
            f"PyAV {av.__version__} cannot convert colorspace {frame.colorspace} (BT.2020) frames as decord does; "
            "a newer PyAV (15) can"
        ) from None


def decode_frames_at(path: str | Path, wanted: list[int]) -> tuple[dict[int, np.ndarray], int]:
    """The frames at the (sorted) decode indices ``wanted``, and how many frames were decoded."""
    picked: dict[int, np.ndarray] = {}
    decoded = 0
    with _open(path, "video") as container:
        for index, frame in enumerate(container.decode(container.streams.video[0])):
            decoded = index + 1
            if index in wanted:
                picked[index] = rgb(frame)
            if index >= wanted[-1]:
                break
    return picked, decoded


def decode_picked_frames(
    path: str | Path, pick: Callable[[int, float], list[int]]
) -> tuple[list[np.ndarray], int, float]:
    """The RGB frames ``[H, W, 3]`` at the sorted decode indices ``pick(count, fps)`` of ``path``, as decord reads
    them, with that ``count`` and ``fps`` (the stream's average rate, 0 when it has none).

    The count comes from the container (as decord's ``len``) or, without one, a decode pass; when fewer frames
    decode than the container states (an edit list trims the start), the indices are picked again over the
    frames that do decode, so the samples still span the clip.
    """
    with _open(path, "video") as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 0)
        count = stream.frames or sum(1 for _ in container.decode(stream))
    if count == 0:
        raise ValueError(f"{path}: no video frame could be decoded")
    wanted = pick(count, fps)
    picked, decoded = decode_frames_at(path, wanted)
    if decoded == 0:
        raise ValueError(f"{path}: no video frame could be decoded")
    if decoded <= wanted[-1]:
        count, wanted = decoded, pick(decoded, fps)
        picked, _ = decode_frames_at(path, wanted)
    return [picked[index] for index in wanted], count, fps


def soundtrack(path: str | Path, rate: int = 16_000, sample_format: str = "s16") -> np.ndarray | None:
    """The first audio track as FFmpeg's mono downmix at ``rate`` gives it, float32 ``[N]``, or None when ``path`` has
    none. ``s16`` (default): what ``ffmpeg -ac 1 -ar <rate> -f s16le`` writes (a user extracting a clip's audio for an
    official pipeline), ``(L + R) / 2`` for stereo, in [-1, 1); ``flt``: FFmpeg's float output, whose downmix is not
    normalised, ``(L + R) / √2`` (torchcodec's ``AudioDecoder(num_channels=1)``)."""
    if sample_format not in ("s16", "flt"):
        raise ValueError(f"sample_format={sample_format!r}; accepted: 's16', 'flt'")
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        resampler = av.AudioResampler(format=sample_format, layout="mono", rate=rate)
        pieces = []
        for frame in container.decode(container.streams.audio[0]):
            pieces += [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
        pieces += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    if not pieces:
        return None
    samples = np.concatenate(pieces).astype(np.float32)
    return samples / 32768.0 if sample_format == "s16" else samples


def float_mono(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Samples ``[N]`` or ``[N, C]`` (mono or stereo) as :func:`soundtrack` gives a file's track with ``flt``: FFmpeg's
    float mono downmix (``(L + R) / √2``) and resampler. float32 ``[N']``"""
    layouts = {1: "mono", 2: "stereo"}
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    if channels not in layouts:
        raise ValueError(f"audio with {channels} channels; accepted: mono or stereo arrays ([N] or [N, 2])")
    packed = np.ascontiguousarray(samples.astype(np.float32).reshape(1, -1))  # channels interleaved
    frame = av.AudioFrame.from_ndarray(packed, format="flt", layout=layouts[channels])
    frame.sample_rate = int(rate)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target_rate)
    pieces = [out.to_ndarray().reshape(-1) for out in (*resampler.resample(frame), *resampler.resample(None))]
    return np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, np.float32)


def read_audio_file(path: str | Path) -> tuple[np.ndarray, int]:
    """``[N, C]`` float64 samples of ``path``'s first audio stream at its own rate."""
    pieces: list[np.ndarray] = []  # [C, n] each
    with av.open(str(path)) as container:  # everything read while it is open (a closed stream's fields crash PyAV 12)
        if not container.streams.audio:
            raise ValueError(f"{path} has no audio stream")
        stream = container.streams.audio[0]
        rate = int(stream.rate)
        for frame in container.decode(stream):
            samples = frame.to_ndarray()  # planar: [C, n]; packed: [1, n · C], channels interleaved
            channels = len(frame.layout.channels)
            pieces.append(samples if frame.format.is_planar else samples.reshape(-1, channels).T)
    if not pieces:
        raise ValueError(f"{path}: the audio stream holds no samples")
    return to_float(np.concatenate(pieces, axis=1).T), rate


def to_float(samples: np.ndarray) -> np.ndarray:
    """PCM samples as float64 in [-1, 1), as soundfile reads them (unsigned 8-bit is offset by 128)."""
    if samples.dtype == np.uint8:
        return (samples.astype(np.float64) - 128) / 128
    if np.issubdtype(samples.dtype, np.integer):
        return samples / float(np.iinfo(samples.dtype).max + 1)
    return samples.astype(np.float64)


def read_audio_item(visual: Any) -> tuple[np.ndarray, int]:
    """An audio file path or ``{"array": [N] / [N, C] / [C, N], "sampling_rate": int}`` -> its samples as float64
    ``[N]`` or ``[N, C]`` in [-1, 1) (integer PCM scaled as soundfile reads it) and its rate, unresampled."""
    if isinstance(visual, dict):
        if "array" not in visual or "sampling_rate" not in visual:
            raise ValueError(f"audio must hold 'array' and 'sampling_rate'; got keys {sorted(visual)}")
        rate = visual["sampling_rate"]
        if isinstance(rate, bool) or not isinstance(rate, int | np.integer) or rate <= 0:
            raise ValueError(f"audio 'sampling_rate'={rate!r}; accepted: a positive int")
        samples, rate = to_float(np.asarray(visual["array"])), int(rate)
        if samples.ndim == 2 and samples.shape[0] < samples.shape[1]:
            samples = samples.T  # [C, N] -> [N, C]
    else:
        samples, rate = read_audio_file(visual)
    if samples.size == 0 or samples.ndim not in (1, 2):
        raise ValueError(f"the audio holds no samples (shape {samples.shape}); accepted: [N] or [N, C] samples")
    return samples, rate


def audio_and_video(visuals: list[Any], model: str, image_refusal: str) -> dict[str, list[tuple[int, Any]]]:
    """A request's visuals -> ``{"audio": [(position, item)], "video": [...]}``, at most one of each (a model that
    takes one video and one audio track: video-SALMONN 2 and 2+). A ValueError names the offending visual's position
    and what is accepted; ``image_refusal`` says why ``model`` takes no image and what it takes."""
    found: dict[str, list[tuple[int, Any]]] = {"audio": [], "video": []}
    for position, visual in enumerate(visuals):
        if isinstance(visual, str | Path):
            if not Path(visual).is_file():
                raise ValueError(f"visual {position}: {visual} does not exist")
            name = str(visual).lower()
            if name.endswith(IMAGE_EXTENSIONS):
                raise ValueError(f"visual {position}: {visual} is an image; {image_refusal}")
            found["audio" if name.endswith(AUDIO_EXTENSIONS) else "video"].append((position, visual))
        elif is_video_dict(visual):
            try:
                checked_frames(visual)
            except ValueError as error:
                raise ValueError(f"visual {position}: {error}") from None
            found["video"].append((position, visual))
        elif isinstance(visual, dict) and "array" in visual:
            found["audio"].append((position, visual))
        else:
            raise ValueError(
                f"visual {position}: a {type(visual).__name__} is not a visual {model} takes; accepted: a video or "
                f'audio file path, an in-memory video {VIDEO_DICT}, {{"array", "sampling_rate"}} audio'
            )
    for kind, items in found.items():
        if len(items) > 1:
            raise ValueError(f"visuals {[p for p, _ in items]}: {model} takes one {kind} per prompt")
    return found
