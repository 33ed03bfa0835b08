"""Kaldi-compatible log-mel filterbank in pure torch, and VideoLLaMA2's BEATs input features built on it.

:func:`kaldi_fbank` equals ``torchaudio.compliance.kaldi.fbank(waveform, num_mel_bins=..., sample_frequency=...,
frame_length=..., frame_shift=...)`` with every other argument at torchaudio's default: no dither, DC offset removed
per frame, pre-emphasis 0.97, Povey window, FFT size rounded up to a power of two, ``snip_edges=True`` (only frames
that fit whole), mel bins from 20 Hz to Nyquist on Kaldi's mel scale ``1127 ln(1 + f / 700)``, power spectrum, log
floored at float32's machine epsilon, no energy column. It follows torchaudio's arithmetic step for step (the same
dtypes, the mel bank built in float32), so it matches torchaudio to float rounding, and Kaldi itself (or
kaldi-native-fbank) to the small differences between their FFTs and mel banks.

:func:`beats_fbank` is the rest of VideoLLaMA2's audio preprocessing (``mm_utils.process_audio_file`` /
``process_audio_from_video`` after the 16 kHz mono waveform is decoded): pad or crop to 30 s, scale to the int16
range, fbank, round to bfloat16.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["BEATS_SAMPLE_RATE", "beats_fbank", "kaldi_fbank", "kaldi_mel_banks", "num_frames"]

BEATS_SAMPLE_RATE = 16000
"""The sample rate VideoLLaMA2 feeds BEATs (Hz)."""

_PREEMPHASIS = 0.97
_LOW_FREQ = 20.0
_POVEY_POWER = 0.85
_EPSILON = torch.finfo(torch.float32).eps  # Kaldi's log floor, std::numeric_limits<float>::epsilon()


def _window_sizes(sample_rate: float, frame_length_ms: float, frame_shift_ms: float) -> tuple[int, int, int]:
    """``(window_size, window_shift, fft_size)`` in samples, truncated to ints exactly as torchaudio does."""
    if not sample_rate > 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not frame_length_ms > 0 or not frame_shift_ms > 0:
        raise ValueError(
            f"frame_length_ms and frame_shift_ms must be positive, got {frame_length_ms}, {frame_shift_ms}"
        )
    window_size = int(sample_rate * frame_length_ms * 0.001)
    window_shift = int(sample_rate * frame_shift_ms * 0.001)
    if window_size < 2:
        raise ValueError(f"a {frame_length_ms} ms frame at {sample_rate} Hz is {window_size} samples; need at least 2")
    if window_shift < 1:
        raise ValueError(f"a {frame_shift_ms} ms shift at {sample_rate} Hz is under one sample")
    fft_size = 1 << (window_size - 1).bit_length()  # next power of two >= window_size
    return window_size, window_shift, fft_size


def num_frames(
    num_samples: int, *, sample_rate: float = 16000, frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0
) -> int:
    """Frames :func:`kaldi_fbank` makes from ``num_samples`` samples: ``1 + (n - 400) // 160`` at 16 kHz, 25/10 ms.

    Zero when the signal is shorter than one frame (:func:`kaldi_fbank` rejects such a signal).
    """
    window_size, window_shift, _ = _window_sizes(sample_rate, frame_length_ms, frame_shift_ms)
    return 0 if num_samples < window_size else 1 + (num_samples - window_size) // window_shift


def _mel(freq: float) -> float:
    return 1127.0 * math.log(1.0 + freq / 700.0)


def kaldi_mel_banks(num_mel_bins: int, fft_size: int, sample_rate: float, low_freq: float = _LOW_FREQ) -> Tensor:
    """Kaldi's triangular mel filters, ``[num_mel_bins, fft_size // 2 + 1]`` float32 (the Nyquist column is zero).

    Filter ``i`` rises from mel ``m_lo + i·Δ`` to a peak at ``m_lo + (i+1)·Δ`` and falls to zero at ``m_lo + (i+2)·Δ``,
    with ``Δ = (m_hi - m_lo) / (num_mel_bins + 1)``, ``m_hi`` the mel of Nyquist. Weights are linear in mel (not in Hz)
    and not area-normalised. The edges are Python doubles and the rest float32 tensors, as in torchaudio.
    """
    nyquist = 0.5 * sample_rate
    if not 0.0 <= low_freq < nyquist:
        raise ValueError(f"low_freq {low_freq} must lie in [0, Nyquist {nyquist})")
    mel_low, mel_high = _mel(low_freq), _mel(nyquist)
    mel_delta = (mel_high - mel_low) / (num_mel_bins + 1)

    index = torch.arange(num_mel_bins).unsqueeze(1)  # [bins, 1], int64 promoted to float32 below
    left = mel_low + index * mel_delta
    center = mel_low + (index + 1.0) * mel_delta
    right = mel_low + (index + 2.0) * mel_delta
    bin_mel = 1127.0 * (1.0 + (sample_rate / fft_size) * torch.arange(fft_size // 2, dtype=torch.float32) / 700.0).log()
    bin_mel = bin_mel.unsqueeze(0)  # [1, fft_size // 2]
    rising = (bin_mel - left) / (center - left)
    falling = (right - bin_mel) / (right - center)
    banks = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return torch.nn.functional.pad(banks, (0, 1))


def _mono(waveform: Tensor, name: str, shapes: str, values: str) -> Tensor:
    """``waveform`` checked to be one channel of floats (``[1, N]`` is taken as ``[N]``); errors name ``name`` and
    the accepted ``shapes`` / ``values``."""
    if not isinstance(waveform, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(waveform).__name__}")
    if waveform.dim() == 2 and waveform.shape[0] == 1:
        waveform = waveform[0]
    if waveform.dim() != 1:
        raise ValueError(f"{name} must be mono, {shapes}; got shape {tuple(waveform.shape)}")
    if not waveform.is_floating_point():
        raise TypeError(f"{name} must be {values}, got {waveform.dtype}")
    return waveform


def kaldi_fbank(
    waveform: Tensor,
    *,
    sample_rate: float = 16000,
    num_mel_bins: int = 128,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
) -> Tensor:
    """Log-mel filterbank energies of ``waveform`` ``[num_samples]`` or ``[1, num_samples]``: ``[num_frames, mel]``.

    ``num_frames = 1 + (num_samples - window) // shift`` (window 400 and shift 160 samples at 16 kHz, 25/10 ms).
    The waveform is taken as is, with no scaling: Kaldi (and BEATs) expect int16-range values, so multiply a [-1, 1]
    signal by ``2**15`` first. Computed, like torchaudio, in float64 for a float64 waveform and in float32 for any
    other floating dtype; the result has that dtype.
    """
    waveform = _mono(waveform, "waveform", "[num_samples] or [1, num_samples]", "a floating tensor")
    if isinstance(num_mel_bins, bool) or not isinstance(num_mel_bins, int) or num_mel_bins <= 3:
        raise ValueError(f"num_mel_bins must be an int > 3, got {num_mel_bins!r}")
    window_size, window_shift, fft_size = _window_sizes(sample_rate, frame_length_ms, frame_shift_ms)
    if waveform.shape[0] < window_size:
        raise ValueError(
            f"waveform has {waveform.shape[0]} samples, fewer than one {frame_length_ms} ms frame ({window_size})"
        )
    dtype = torch.float64 if waveform.dtype == torch.float64 else torch.float32
    waveform = waveform.to(dtype)

    frames = waveform.unfold(0, window_size, window_shift)  # [m, window]; only whole frames (snip_edges)
    frames = frames - frames.mean(dim=1, keepdim=True)
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # x[j-1], with x[-1] := x[0] as Kaldi does
    frames = frames - _PREEMPHASIS * previous
    window = torch.hann_window(window_size, periodic=False, dtype=dtype, device=waveform.device).pow(_POVEY_POWER)
    frames = torch.nn.functional.pad(frames * window, (0, fft_size - window_size))

    power = torch.fft.rfft(frames).abs().pow(2.0)  # [m, fft_size // 2 + 1]
    banks = kaldi_mel_banks(num_mel_bins, fft_size, sample_rate).to(device=waveform.device, dtype=dtype)
    energies = torch.mm(power, banks.T)
    return torch.clamp(energies, min=_EPSILON).log()


def beats_fbank(waveform_16k: Tensor, seconds: float = 30, *, crop_start: int = 0) -> Tensor:
    """VideoLLaMA2's BEATs input from a 16 kHz mono waveform in [-1, 1]: ``[1, num_frames, 128]`` (2998 frames at 30 s).

    Mirrors ``mm_utils.process_audio_file`` / ``process_audio_from_video`` once the waveform is decoded:

    1. longer than ``seconds``: keep ``seconds`` from ``crop_start`` (the official code draws the start at random;
       audio from a video never gets here, its 8 clips of 2 s make 16 s); shorter: zero-pad at the end;
    2. multiply by ``2**15`` (int16 range);
    3. :func:`kaldi_fbank` with 128 mel bins, 25 ms frames, 10 ms shift;
    4. round to bfloat16, as the official ``.to(torch.bfloat16)`` does. The result is float32 holding
       bfloat16-exact values, so ``.to(torch.bfloat16)`` on it is lossless and gives the official tensor.

    The dtype of ``waveform_16k`` is kept until the rounding, as the official code keeps it: float32 for audio from a
    video (ffmpeg int16 / 32768), float64 for audio files (``soundfile.read``). Audio files at another rate are padded
    to 30 s *before* resampling in the official code; resample first, then call this.
    """
    waveform_16k = _mono(waveform_16k, "waveform_16k", "[num_samples]", "a floating tensor in [-1, 1]")
    if not seconds > 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    target = int(seconds * BEATS_SAMPLE_RATE)
    length = waveform_16k.shape[0]
    if length > target:
        if not 0 <= crop_start <= length - target:
            raise ValueError(f"crop_start {crop_start} out of [0, {length - target}] for {length} samples")
        waveform_16k = waveform_16k[crop_start : crop_start + target]
    elif length < target:
        waveform_16k = torch.nn.functional.pad(waveform_16k, (0, target - length))
    fbank = kaldi_fbank(waveform_16k * 2**15, sample_rate=BEATS_SAMPLE_RATE, num_mel_bins=128)
    return fbank.to(torch.bfloat16).to(torch.float32).unsqueeze(0)
