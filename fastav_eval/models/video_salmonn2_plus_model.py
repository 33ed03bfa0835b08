"""video-SALMONN 2+ (bytedance, ``video_SALMONN2_plus/``) as a transformers 5.x model, loaded from a ``_full``
checkpoint, and its two kinds of M-RoPE positions.

The official model is Qwen2.5-VL (4.51) with an audio branch; transformers 5.x has Qwen2.5-VL, and the audio branch
is standard parts:

==================  =================================================  ===========================================
part                module                                             checkpoint keys
==================  =================================================  ===========================================
LLM + vision tower  transformers ``Qwen2_5_VLForConditionalGeneration``  ``model.*``, ``visual.*``, ``lm_head``
                    (the 4.51 names are mapped by its loader)
audio encoder       transformers ``WhisperEncoder`` (its final LayerNorm)  ``audio.{conv1,conv2,embed_positions,...}``
audio glue          0.5-s windows, BLIP-2 Q-Former (transformers          ``audio.qformer.bert.*``, ``audio.q_tokens``,
                    ``Blip2QFormerModel``), Linear                       ``audio.audio_proj``
==================  =================================================  ===========================================

Unlike the original generation there is no LayerNorm after Whisper, no segment embedding and no ``final_linear``.
The sizes come from ``config.json → audio_config`` (a Whisper config holding ``qformer_config``, a BERT config).

**Positions.** The official ``generate`` never gives its model the audio lengths, so it takes Qwen2.5-VL's standard
video branch (:func:`official_positions`): the first ``T·h·w`` tokens after ``<|vision_start|>`` — whatever they are —
get the video grid's positions at 2 units per temporal grid, the rest count on from past the grid. The weights were
trained with audio-aware positions (:func:`trained_positions`): video at ``⌊2·s·t⌋`` for grid t (``s`` seconds per
grid), audio token j at ``(j, 0, j)``, text after at one past the block's time. transformers 5.x's own
``get_rope_index`` is neither (it advances text after a video by ``max(h, w)``), so both are computed here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Qwen2_5_VLForConditionalGeneration, WhisperConfig
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from fastav_eval.models.checkpoint import checkpoint_keys, load_strict, quiet_transformers, read_tensors

MODEL_TYPES = ("qwen2_5_vl",)
AUDIO_PREFIX = "audio."
QFORMER_PREFIX = "qformer.bert."
QFORMER_RENAMES = (
    ("embeddings.LayerNorm.", "layernorm."),
    (".attention.self.", ".attention.attention."),
    (".crossattention.self.", ".crossattention.attention."),
)  # the official BERT Q-Former's names -> transformers' Blip2QFormerModel's (same computation)
WHISPER_FRAMES, WHISPER_SECONDS = 1500, 30  # encoder frames per 30-s chunk (hard-coded by the official windowing)
QFORMER_DEFAULTS = {"hidden_size": 3072, "num_hidden_layers": 2, "num_attention_heads": 12, "intermediate_size": 12288}
"""The official ``qformer_config`` defaults (its BertConfig subclass), for a config that leaves a size out."""
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class VideoSALMONN2PlusSpec:
    """What the adapter needs from a 2+ ``config.json``, checked.

    Attributes:
        video_token_id / audio_token_id / vision_start_token_id / vision_end_token_id: the placeholder ids.
        window / stride: Whisper frames per Q-Former window and between windows (``second_per_window`` and
            ``second_stride`` of 0.5 s: 25 and 25).
        spatial_merge_size: the vision tower's merge (2: one LLM token per 2×2 patches).
    """

    video_token_id: int
    audio_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int
    window: int
    stride: int
    spatial_merge_size: int

    @classmethod
    def from_config(cls, raw: dict[str, Any], where: str = "config.json") -> VideoSALMONN2PlusSpec:
        if raw.get("model_type") not in MODEL_TYPES:
            raise ValueError(f"{where}: model_type={raw.get('model_type')!r}; accepted: {list(MODEL_TYPES)}")
        audio = raw.get("audio_config")
        if not isinstance(audio, dict) or not isinstance(audio.get("qformer_config"), dict):
            raise ValueError(
                f"{where}: no audio_config with a qformer_config; this is a Qwen2.5-VL config, not a video-SALMONN 2+ "
                "_full checkpoint (tsinghua-ee/video-SALMONN2_plus_7B_full or _3B_full)"
            )
        ids = {}
        for name in ("video_token_id", "audio_token_id", "vision_start_token_id", "vision_end_token_id"):
            value = raw.get(name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{where}: {name}={value!r}; accepted: an int (the token's id)")
            ids[name] = value
        window, stride = (
            round(WHISPER_FRAMES * float(audio.get(key, 0.5)) / WHISPER_SECONDS)
            for key in ("second_per_window", "second_stride")
        )
        if window < 1 or stride < 1:
            raise ValueError(f"{where}: audio_config second_per_window / second_stride must be at least 0.02 s")
        merge = raw.get("vision_config", {}).get("spatial_merge_size", 2)
        return cls(**ids, window=window, stride=stride, spatial_merge_size=int(merge))


def whisper_config(audio: dict[str, Any]) -> WhisperConfig:
    """The encoder's config: ``audio_config`` less its Q-Former part."""
    config = WhisperConfig(**{k: v for k, v in audio.items() if k not in ("qformer_config", "model_type")})
    if config.max_source_positions != WHISPER_FRAMES:
        raise ValueError(
            f"audio_config: max_source_positions {config.max_source_positions}; accepted: {WHISPER_FRAMES} (the "
            "official windowing assumes 1500 encoder frames per 30 s)"
        )
    return config


def qformer_config(bert: dict[str, Any], encoder_width: int) -> Blip2QFormerConfig:
    """The official ``BertLMHeadModel`` Q-Former's sizes as a BLIP-2 Q-Former: every layer cross-attends (the
    official ``cross_attention_freq`` 1) to ``encoder_width``-wide Whisper frames."""
    if bert.get("cross_attention_freq", 1) != 1:
        raise ValueError(f"qformer_config: cross_attention_freq={bert['cross_attention_freq']!r}; accepted: 1")
    if bert.get("encoder_width", encoder_width) != encoder_width:
        raise ValueError(f"qformer_config: encoder_width {bert['encoder_width']}, but Whisper is {encoder_width} wide")
    sizes = {**QFORMER_DEFAULTS, **bert}
    return Blip2QFormerConfig(
        hidden_size=sizes["hidden_size"],
        num_hidden_layers=sizes["num_hidden_layers"],
        num_attention_heads=sizes["num_attention_heads"],
        intermediate_size=sizes["intermediate_size"],
        hidden_act=bert.get("hidden_act", "gelu"),
        layer_norm_eps=bert.get("layer_norm_eps", 1e-12),
        cross_attention_frequency=1,
        encoder_hidden_size=encoder_width,
        use_qformer_text_input=False,
    )


class AudioBranch(nn.Module):
    """Whisper encoder → 0.5-s windows → Q-Former (one query per window) → ``audio_proj``: 60 LLM tokens per 30-s
    chunk (the official ``WhisperEncoder.forward`` of ``qwenvl/model/modeling_whisper.py``)."""

    def __init__(
        self, whisper: WhisperConfig, qformer: Blip2QFormerConfig, queries: int, width: int, window: int, stride: int
    ) -> None:
        super().__init__()
        self.encoder = WhisperEncoder(whisper)
        self.qformer = Blip2QFormerModel(qformer)
        self.q_tokens = nn.Parameter(torch.zeros(1, queries, qformer.hidden_size))
        self.audio_proj = nn.Linear(qformer.hidden_size, width)
        self.window, self.stride = window, stride

    @property
    def tokens_per_chunk(self) -> int:
        """LLM tokens per 30-s chunk: one per query and window (60 at 0.5-s windows)."""
        return ((WHISPER_FRAMES - self.window) // self.stride + 1) * self.q_tokens.shape[1]

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        """``[n, 128, 3000]`` log-mel chunks -> ``[n · windows · queries, D]`` (60 per chunk at 0.5-s windows)."""
        hidden = self.encoder(spectrogram).last_hidden_state  # [n, 1500, C]
        windows = hidden.unfold(1, self.window, self.stride)  # [n, windows, C, window]
        windows = windows.permute(0, 1, 3, 2).flatten(0, 1)  # [n · windows, window, C]
        queries = self.q_tokens.expand(windows.shape[0], -1, -1)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=windows).last_hidden_state
        return self.audio_proj(out).flatten(0, 1)

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        """The checkpoint's ``audio.*`` tensors (``audio.`` stripped) into the three parts; strict."""
        qformer, encoder = {}, {}
        for key, value in tensors.items():
            if key.startswith(QFORMER_PREFIX):
                name = key[len(QFORMER_PREFIX) :]
                if name == "embeddings.position_ids":  # a BERT buffer the query-only path never reads
                    continue
                for old, new in QFORMER_RENAMES:
                    name = name.replace(old, new)
                qformer[name] = value
            elif not key.startswith(("q_tokens", "audio_proj.")):
                encoder[key] = value
        load_strict(self.encoder, "audio encoder", encoder, AUDIO_PREFIX)
        load_strict(self.qformer, "audio Q-Former", qformer, AUDIO_PREFIX + QFORMER_PREFIX)
        projection = {k.removeprefix("audio_proj."): v for k, v in tensors.items() if k.startswith("audio_proj.")}
        load_strict(self.audio_proj, "audio_proj", projection, AUDIO_PREFIX + "audio_proj.")
        if "q_tokens" not in tensors or tensors["q_tokens"].shape != self.q_tokens.shape:
            raise ValueError(f"checkpoint audio.q_tokens: expected shape {tuple(self.q_tokens.shape)}")
        with torch.no_grad():
            self.q_tokens.copy_(tensors["q_tokens"])


class VideoSALMONN2Plus(nn.Module):
    """The Qwen2.5-VL model (``vl``: vision tower, text decoder, ``lm_head``) and the audio branch."""

    def __init__(self, spec: VideoSALMONN2PlusSpec, vl: Qwen2_5_VLForConditionalGeneration, audio: AudioBranch):
        super().__init__()
        self.spec, self.vl, self.audio = spec, vl, audio

    def encode_video(self, pixel_values: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """``[T·h·w, 1176]`` patches of grid ``(T, h, w)`` -> ``[T·h·w / 4, D]`` LLM tokens, grid by grid."""
        visual = self.vl.model.visual
        thw = torch.tensor([grid], device=pixel_values.device)
        return visual(pixel_values.to(visual.dtype), grid_thw=thw).pooler_output

    def encode_audio(self, spectrogram: torch.Tensor) -> torch.Tensor:
        """``[n, 128, 3000]`` -> ``[60·n, D]``."""
        return self.audio(spectrogram)


def refuse_peft(path: Path) -> None:
    """A PEFT adapter folder (``video-SALMONN-2_plus_7B`` ...) is refused: it needs the audio-aligned base the official
    ``gen_audio_model.py`` builds under transformers 4.51, and PEFT on 5.x can leave it silently unapplied."""
    found = [name for name in PEFT_FILES if (path / name).is_file()]
    if found:
        raise ValueError(
            f"{path} is a PEFT adapter ({found[0]}); fastav_video_salmonn2_plus loads only the merged checkpoints: "
            "pretrained=tsinghua-ee/video-SALMONN2_plus_7B_full or tsinghua-ee/video-SALMONN2_plus_3B_full"
        )


def load_video_salmonn2_plus(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    attn_implementation: str = "sdpa",
    use_kernels: bool = False,
) -> VideoSALMONN2Plus:
    """A 2+ ``_full`` checkpoint folder -> :class:`VideoSALMONN2Plus` on ``device`` in ``dtype`` (eval mode): every
    tensor loaded (the official loader leaves the Q-Former and ``audio_proj`` in bfloat16 whatever is asked; here
    everything takes ``dtype``), a missing or unknown one an error naming it."""
    path = Path(path)
    refuse_peft(path)
    raw = json.loads((path / "config.json").read_text())
    spec = VideoSALMONN2PlusSpec.from_config(raw, where=str(path / "config.json"))
    keys = checkpoint_keys(path)
    if not any(k.startswith(AUDIO_PREFIX) for k in keys):
        raise ValueError(f"checkpoint {path}: no {AUDIO_PREFIX}* tensors; is it an audio-visual 2+ _full checkpoint?")
    device = torch.device(device)
    with quiet_transformers():  # it would list every audio.* tensor as unexpected
        vl, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            path,
            dtype=dtype,
            device_map={"": device},
            attn_implementation=attn_implementation,
            output_loading_info=True,
            use_kernels=use_kernels,
        )
    unexpected = [k for k in info["unexpected_keys"] if not k.startswith(AUDIO_PREFIX)]
    if info["missing_keys"] or info["mismatched_keys"] or unexpected:
        raise ValueError(
            f"checkpoint {path}: Qwen2.5-VL tensors missing {sorted(info['missing_keys'])[:8]}, wrong shape "
            f"{list(info['mismatched_keys'])[:8]}, unknown {unexpected[:8]}"
        )
    audio_raw = raw["audio_config"]
    whisper = whisper_config(audio_raw)
    tensors = {k[len(AUDIO_PREFIX) :]: v for k, v in read_tensors(path, (AUDIO_PREFIX,)).items()}
    queries = tensors["q_tokens"].shape[1] if "q_tokens" in tensors else 1
    audio = AudioBranch(
        whisper,
        qformer_config(audio_raw["qformer_config"], whisper.d_model),
        queries,
        vl.config.get_text_config().hidden_size,
        spec.window,
        spec.stride,
    )
    audio.load(tensors)
    audio.encoder.set_attn_implementation(attn_implementation)
    audio.to(device=device, dtype=dtype)
    return VideoSALMONN2Plus(spec, vl, audio).eval()


# ---------------------------------------------------------------------------------------------- positions
@dataclass(frozen=True)
class VisionBlock:
    """Where one prompt's audio-visual block sits and what it holds.

    Attributes:
        start: the index of the block's first token (the one after ``<|vision_start|>``).
        grid: ``(T, h, w)`` merged: temporal grids, then LLM tokens per grid row and column.
        audio_per_grid: audio tokens after each grid's video tokens (``[T]``; all zero for a silent video).
        second_per_grid: seconds per temporal grid.
    """

    start: int
    grid: tuple[int, int, int]
    audio_per_grid: tuple[int, ...]
    second_per_grid: float

    @property
    def video_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def length(self) -> int:
        return self.video_tokens + sum(self.audio_per_grid)


def _video_grid_positions(block: VisionBlock, second_per_grid: float) -> torch.Tensor:
    """``[3, T·h·w]``: (time, row, column) of each video token, grid by grid, row-major; time ``⌊2·s·t⌋`` in float32
    (Qwen2.5-VL's ``tokens_per_second`` 2)."""
    t, h, w = block.grid
    time = (torch.arange(t) * second_per_grid * 2).long()
    return torch.stack(
        [
            time.view(-1, 1, 1).expand(t, h, w).flatten(),
            torch.arange(h).view(1, -1, 1).expand(t, h, w).flatten(),
            torch.arange(w).view(1, 1, -1).expand(t, h, w).flatten(),
        ]
    )


def official_positions(length: int, block: VisionBlock) -> torch.Tensor:
    """``[3, length]``: what the official ``generate`` computes (Qwen2.5-VL 4.51's standard video branch without
    ``second_per_grid_ts``, so 1 s per grid): the first ``T·h·w`` tokens of the block get the video grid's positions
    whatever their type, every later token counts on from one past the grid's largest position."""
    start, count = block.start, block.video_tokens
    grid = _video_grid_positions(block, 1.0)
    positions = torch.empty(3, length, dtype=torch.long)
    positions[:, :start] = torch.arange(start)
    positions[:, start : start + count] = start + grid
    after = start + int(grid.max()) + 1
    positions[:, start + count :] = after + torch.arange(length - start - count)
    return positions


def trained_positions(length: int, block: VisionBlock) -> torch.Tensor:
    """``[3, length]``: the audio-aware positions the weights were trained with (the official ``get_rope_index_25``):
    video token (grid t, row r, column c) at ``(⌊2·s·t⌋, r, c)``, audio token j of the block at ``(j, 0, j)``, both
    offset by the block's start; text after at one past the block's largest time. A silent video takes Qwen2.5-VL's
    standard branch with the real ``s``: text after at one past the grid's largest position on any axis."""
    start, audio_total = block.start, sum(block.audio_per_grid)
    grid = _video_grid_positions(block, block.second_per_grid)
    positions = torch.empty(3, length, dtype=torch.long)
    positions[:, :start] = torch.arange(start)
    inside = torch.empty(3, block.length, dtype=torch.long)
    is_audio = torch.zeros(block.length, dtype=torch.bool)
    at = 0
    per_grid = block.grid[1] * block.grid[2]
    for audio in block.audio_per_grid:
        is_audio[at + per_grid : at + per_grid + audio] = True
        at += per_grid + audio
    inside[:, ~is_audio] = grid
    j = torch.arange(audio_total)
    inside[:, is_audio] = torch.stack([j, torch.zeros_like(j), j])
    positions[:, start : start + block.length] = start + inside
    after = start + (int(inside[0].max()) if audio_total else int(grid.max())) + 1
    positions[:, start + block.length :] = after + torch.arange(length - start - block.length)
    return positions


POSITIONS = {"official_inference": official_positions, "trained": trained_positions}
"""``positions=`` -> the function giving one prompt's ``[3, L]`` M-RoPE positions."""
