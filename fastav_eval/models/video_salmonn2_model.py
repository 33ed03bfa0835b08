"""video-SALMONN 2 (bytedance, the original generation) as a transformers 5.x model, loaded from its checkpoint.

The official code (``llava/model/language_model/video_salmonn_2.py``) pins transformers 4.39 and builds its audio
parts from hub ids in its constructor, so it cannot run next to this project. Every part is standard: each is
taken from transformers, or written here with the checkpoint's parameter names.

==================  =============================================  ==============================================
part                module                                         checkpoint keys
==================  =============================================  ==============================================
LLM                 transformers ``Qwen2ForCausalLM``               ``model.embed_tokens/layers/norm``, ``lm_head``
vision tower        transformers ``SiglipVisionModel``, last layer  ``model.vision_tower.vision_tower.vision_model.*``
                    dropped, no post-LN, no head                   (else the ``mm_vision_tower`` checkpoint's)
projector           Linear-GELU-Linear (``mlp2x_gelu``)              ``model.mm_projector.*``
row newline         one learned vector                             ``model.image_newline``
audio encoder       transformers ``WhisperEncoder``                 ``speech_encoder.*`` (else the ``whisper`` one's)
audio glue          LayerNorm, 0.5-s windows, BLIP-2 Q-Former        ``ln_speech``, ``speech_Qformer.bert.*``
                    (transformers ``Blip2QFormerModel``), Linear,    ``speech_query_tokens``, ``speech_llama_proj``,
                    Linear-GELU-Linear                             ``final_linear``
==================  =============================================  ==============================================

The checkpoint does not say which Whisper and which Q-Former config it was built with (the official constructor
takes them as arguments: ``openai/whisper-large-v3``, ``bert-base-uncased`` with 2 layers), so the loader is given
both; their sizes are checked against the tensors.

Per frame the vision path gives 182 tokens (27×27 SigLIP patches → projector → 2×2 max-pool → 13×13, each row
followed by ``image_newline``); the audio path gives 2 tokens per second, 60 per 30-s Whisper chunk (the last chunk's
zero padding included), chunk c ≥ 1 adding row c of a sinusoid table. :func:`interleave` spreads the audio tokens
over the frames exactly as the official code does: ``[frame 0: 182 visual, k audio] … [frame F-1: 182, k]``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    BertConfig,
    Blip2QFormerConfig,
    Qwen2ForCausalLM,
    SiglipVisionConfig,
    SiglipVisionModel,
    WhisperConfig,
    WhisperModel,
)
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from fastav_eval.models.checkpoint import (
    checkpoint_keys,
    layer_indices,
    load_qwen2_llm,
    load_strict,
    mlp_gelu,
    quiet_transformers,
    read_tensors,
)

MODEL_TYPES = ("video_salmonn_2",)
POOL_MODES = ("max", "average")
POOLING_POSITIONS = ("after", "before")
LLM_PREFIXES = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")
VISION_PREFIX = "model.vision_tower.vision_tower.vision_model."
OWN_PREFIXES = {
    "model.mm_projector.": "mm_projector",
    "ln_speech.": "ln_speech",
    "speech_Qformer.bert.": "speech_qformer",
    "speech_llama_proj.": "speech_llama_proj",
    "final_linear.": "final_linear",
}  # checkpoint prefix -> the VideoSALMONN2 attribute whose state_dict the rest of the name is
WHISPER_PREFIX = "speech_encoder."
SINGLE_TENSORS = {"model.image_newline": "image_newline", "speech_query_tokens": "speech_query_tokens"}
QFORMER_RENAMES = (
    ("embeddings.LayerNorm.", "layernorm."),  # only at the start: the layers' own LayerNorms are "output.LayerNorm."
    (".attention.self.", ".attention.attention."),
    (".crossattention.self.", ".crossattention.attention."),
)  # the official BERT Q-Former's names -> transformers' Blip2QFormerModel's (same computation)
WHISPER_FRAMES, WHISPER_SECONDS = 1500, 30  # encoder frames per 30-s chunk (hard-coded by the official windowing)
WINDOW_SECONDS = 0.5  # the official eval's --winqf_second: one Q-Former window, one audio token, per 0.5 s
FRONT_RATE = 50  # the official interleave spreads the first round(real_time · 50) audio tokens over the frames
SEGMENT_ROWS = 200  # sinusoidal_position(200, D): chunks 0..200 (chunk 0's row is zeros)


@dataclass(frozen=True)
class VideoSALMONN2Spec:
    """The multimodal part of a video-SALMONN 2 ``config.json``, checked (the fields ``llava_arch`` reads).

    Attributes:
        vision_tower: the SigLIP checkpoint the official constructor builds the tower from (``mm_vision_tower``).
        vision_width: the tower's hidden size (``mm_hidden_size``).
        projector_depth: Linear layers of the ``mlp<N>x_gelu`` projector.
        pool_mode / pool_stride / pooling_position: the 2-D pooling of each frame's patch grid, after (or before)
            the projector.
        add_time_token: whether a video without audio gets each frame's time as text after its tokens.
        tower_from_checkpoint: whether the tower's weights are the checkpoint's copy (``model.vision_tower.*``): the
            official constructor loads the tower (which the checkpoint then overwrites) only when the config's
            ``mm_tunable_parts`` holds ``mm_vision_tower`` or ``unfreeze_mm_vision_tower`` is true; otherwise the
            official eval loads ``mm_vision_tower``'s own weights after the checkpoint, and the copy is unused.
        max_length: ``tokenizer_model_max_length``, the official cap on a spliced sequence (None: no cap).
        llm_width: the LLM's hidden size.
    """

    vision_tower: str
    vision_width: int
    projector_depth: int
    pool_mode: str
    pool_stride: int
    pooling_position: str
    add_time_token: bool
    tower_from_checkpoint: bool
    max_length: int | None
    llm_width: int

    @classmethod
    def from_config(cls, raw: dict[str, Any], where: str = "config.json") -> VideoSALMONN2Spec:
        def field(name: str, kind: type, accepted: tuple[Any, ...] | None = None) -> Any:
            if name not in raw:
                raise ValueError(f"{where}: no {name!r}; this is not a video-SALMONN 2 checkpoint config")
            value = raw[name]
            if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                raise ValueError(f"{where}: {name}={value!r}; accepted: a {kind.__name__}")
            if accepted is not None and value not in accepted:
                raise ValueError(f"{where}: {name}={value!r}; accepted: {list(accepted)}")
            return value

        if raw.get("model_type") not in MODEL_TYPES:
            raise ValueError(f"{where}: model_type={raw.get('model_type')!r}; accepted: {list(MODEL_TYPES)}")
        projector = re.fullmatch(r"mlp(\d+)x_gelu", str(raw.get("mm_projector_type")))
        if projector is None:
            raise ValueError(
                f"{where}: mm_projector_type={raw.get('mm_projector_type')!r}; accepted: 'mlp<N>x_gelu' (mlp2x_gelu)"
            )
        if not str(raw.get("mm_patch_merge_type", "")).startswith("spatial"):
            raise ValueError(
                f"{where}: mm_patch_merge_type={raw.get('mm_patch_merge_type')!r}; accepted: 'spatial...' "
                "(frames with row newlines, the only layout the official video path has)"
            )
        field("mm_newline_position", str, ("grid",))
        max_length = raw.get("tokenizer_model_max_length")
        if max_length is not None and (not isinstance(max_length, int) or isinstance(max_length, bool)):
            raise ValueError(f"{where}: tokenizer_model_max_length={max_length!r}; accepted: an int or null")
        return cls(
            vision_tower=field("mm_vision_tower", str),
            vision_width=field("mm_hidden_size", int),
            projector_depth=int(projector.group(1)),
            pool_mode=field("mm_spatial_pool_mode", str, POOL_MODES),
            pool_stride=field("mm_spatial_pool_stride", int),
            pooling_position=field("mm_pooling_position", str, POOLING_POSITIONS),
            add_time_token=bool(raw.get("add_time_token", False)),
            tower_from_checkpoint="mm_vision_tower" in str(raw.get("mm_tunable_parts") or "")
            or bool(raw.get("unfreeze_mm_vision_tower")),
            max_length=max_length,
            llm_width=field("hidden_size", int),
        )


def segment_table(width: int) -> torch.Tensor:
    """``[201, width]`` float32: the official ``sinusoidal_position(200, width)``, the per-chunk segment embedding.
    Row 0 is zeros (the first 30-s chunk gets nothing); row j ≥ 1 is sin / cos of ``(j - 1)`` on even / odd channels."""
    position = torch.arange(0, SEGMENT_ROWS, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * -(torch.log(torch.tensor(1e4)) / width))
    table = torch.zeros(SEGMENT_ROWS + 1, width)
    table[1:, 0::2] = torch.sin(position * div_term)
    table[1:, 1::2] = torch.cos(position * div_term)
    return table


@dataclass(frozen=True)
class AudioSplit:
    """How the official interleave spreads ``total`` audio tokens over ``frames`` frames.

    The first ``front`` tokens (``round(real_time · 50)``, capped at ``total``) are resized by nearest neighbour to
    ``frames · per_frame`` tokens (``per_frame = ceil(front / frames)``) and put after each frame's visual tokens;
    the remaining ``back`` tokens follow the last frame. With 2 tokens per second ``back`` is 0 for any clip over
    1.2 s.
    """

    frames: int
    total: int
    front: int
    per_frame: int

    @classmethod
    def of(cls, frames: int, total: int, real_time: float) -> AudioSplit:
        front = min(total, round(real_time * FRONT_RATE))
        if frames < 1 or front < 1:
            raise ValueError(f"cannot spread {front} audio tokens over {frames} frames")
        return cls(frames, total, front, math.ceil(front / frames))

    @property
    def back(self) -> int:
        return self.total - self.front


def interleave(visual: torch.Tensor, audio: torch.Tensor, split: AudioSplit) -> torch.Tensor:
    """``visual [F, V, D]`` and ``audio [A, D]`` -> ``[F·(V + k) + back, D]``: each frame's visual tokens then its
    ``k`` audio tokens, then the audio past ``front`` (the official ``prepare_inputs_labels_for_multimodal``)."""
    front, back = audio[: split.front], audio[split.front :]
    if split.front % split.frames:  # nearest-neighbour resize, as F.interpolate(..., mode="nearest")
        size = split.frames * split.per_frame
        front = F.interpolate(front.T[None], size=size, mode="nearest")[0].T
    per_frame = front.reshape(split.frames, split.per_frame, -1)
    return torch.cat([torch.cat([visual, per_frame], dim=1).flatten(0, 1), back])


class VideoSALMONN2(nn.Module):
    """The towers, audio glue and LLM of video-SALMONN 2; the ``encode_*`` methods give the LLM's embeddings."""

    def __init__(
        self,
        spec: VideoSALMONN2Spec,
        llm: Qwen2ForCausalLM,
        vision: SiglipVisionModel,
        whisper: WhisperEncoder,
        qformer: Blip2QFormerConfig,
        num_queries: int,
        final_linear: bool,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.llm = llm
        self.vision_tower = vision
        self.mm_projector = mlp_gelu(spec.projector_depth, spec.vision_width, spec.llm_width)
        self.image_newline = nn.Parameter(torch.zeros(spec.llm_width))
        self.speech_encoder = whisper
        self.ln_speech = nn.LayerNorm(whisper.config.d_model)
        self.speech_qformer = Blip2QFormerModel(qformer)
        self.speech_query_tokens = nn.Parameter(torch.zeros(1, num_queries, qformer.hidden_size))
        self.speech_llama_proj = nn.Linear(qformer.hidden_size, spec.llm_width)
        self.final_linear = mlp_gelu(2, spec.llm_width, spec.llm_width) if final_linear else nn.Identity()

    @property
    def patches_per_side(self) -> int:
        config = self.vision_tower.config
        return config.image_size // config.patch_size

    def _pool(self, features: torch.Tensor) -> torch.Tensor:
        """``[F, side², C]`` -> ``[F, (side / stride)², C]`` (the official ``get_2dPool``)."""
        frames, _, width = features.shape
        side = self.patches_per_side
        grid = features.view(frames, side, side, width).permute(0, 3, 1, 2)
        pool = F.max_pool2d if self.spec.pool_mode == "max" else F.avg_pool2d
        return pool(grid, self.spec.pool_stride).permute(0, 2, 3, 1).reshape(frames, -1, width)

    def encode_frames(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[F, 3, 384, 384]`` frames -> ``[F, 182, D]``: per frame, row-major, each pooled row then the newline."""
        tower = self.vision_tower
        features = tower.encoder(inputs_embeds=tower.embeddings(pixel_values)).last_hidden_state  # no post-LN
        if self.spec.pooling_position == "before":
            features = self.mm_projector(self._pool(features))
        else:
            features = self._pool(self.mm_projector(features))
        frames, tokens, width = features.shape
        side = math.isqrt(tokens)
        rows = features.view(frames, side, side, width)
        newline = self.image_newline.to(features.dtype).expand(frames, side, 1, width)
        return torch.cat([rows, newline], dim=2).reshape(frames, side * (side + 1), width)

    def encode_audio(self, spectrogram: torch.Tensor) -> torch.Tensor:
        """``[n, 128, 3000]`` log-mel chunks -> ``[60·n, D]`` audio tokens, chunk c's tokens plus segment row c."""
        chunks = spectrogram.shape[0]
        hidden = self.ln_speech(self.speech_encoder(spectrogram).last_hidden_state)  # [n, 1500, C]
        kernel = round(WHISPER_FRAMES * WINDOW_SECONDS / WHISPER_SECONDS)
        windows = hidden.reshape(chunks * (WHISPER_FRAMES // kernel), kernel, hidden.shape[-1])  # [60n, 25, C]
        queries = self.speech_query_tokens.expand(windows.shape[0], -1, -1)
        out = self.speech_qformer(query_embeds=queries, encoder_hidden_states=windows).last_hidden_state
        tokens = self.final_linear(self.speech_llama_proj(out)).reshape(chunks, -1, self.spec.llm_width)
        if chunks > SEGMENT_ROWS + 1:
            raise ValueError(f"{chunks} audio chunks; the segment table has {SEGMENT_ROWS + 1} rows")
        segments = segment_table(self.spec.llm_width).to(tokens.device, tokens.dtype)[:chunks, None]
        return (tokens + segments).flatten(0, 1)


# ---------------------------------------------------------------------------------------------- loading
def _qformer_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in tensors.items():
        if key == "embeddings.position_ids":  # a buffer of the BERT embeddings, which the query-only path never reads
            continue
        for old, new in QFORMER_RENAMES:
            key = key.replace(old, new)
        renamed[key] = value
    return renamed


def _vision_tower(
    spec: VideoSALMONN2Spec, keys: list[str], tensors: dict[str, torch.Tensor], vision_tower: str, **load: Any
) -> SiglipVisionModel:
    """SigLIP with the official tower's last layer removed: from the checkpoint's copy (the ``VISION_PREFIX`` entries
    of ``tensors``) where the official loader takes it (:attr:`VideoSALMONN2Spec.tower_from_checkpoint`), else from
    ``vision_tower``'s own weights."""
    try:
        config = SiglipVisionConfig.from_pretrained(vision_tower)
    except OSError as error:
        raise ValueError(
            f"cannot read the vision tower config {vision_tower!r} (the config's mm_vision_tower): {error}; "
            "pass vision_tower=<SigLIP folder or hub id>"
        ) from None
    layers = layer_indices(keys, re.escape(VISION_PREFIX) + r"encoder\.layers\.(\d+)\.")
    if spec.tower_from_checkpoint and not layers:
        raise ValueError(
            "the config says the vision tower was tuned (mm_tunable_parts / unfreeze_mm_vision_tower), but the "
            f"checkpoint holds no {VISION_PREFIX}* tensors"
        )
    if spec.tower_from_checkpoint:
        config.num_hidden_layers = len(layers)  # the official tower was saved with its last layer deleted
        config.vision_use_head = False
        vision = SiglipVisionModel(config)
        copy = {k[len(VISION_PREFIX) :]: v for k, v in tensors.items() if k.startswith(VISION_PREFIX)}
        load_strict(vision, "vision tower", copy)
    else:
        with quiet_transformers():
            vision = SiglipVisionModel.from_pretrained(vision_tower, dtype=torch.float32, **load)
        del vision.encoder.layers[-1:]
        vision.config.num_hidden_layers -= 1
    if vision.config.hidden_size != spec.vision_width:
        raise ValueError(
            f"vision tower: hidden_size {vision.config.hidden_size}, but the checkpoint's mm_hidden_size is "
            f"{spec.vision_width}"
        )
    return vision


def _whisper(keys: list[str], tensors: dict[str, torch.Tensor], whisper: str) -> WhisperEncoder:
    """Whisper's encoder: the checkpoint's ``speech_encoder.*`` (entries of ``tensors``) when it has them, else
    ``whisper``'s weights."""
    try:
        config = WhisperConfig.from_pretrained(whisper)
    except OSError as error:
        raise ValueError(
            f"cannot read the Whisper config {whisper!r}: {error}; pass whisper=<folder or hub id>"
        ) from None
    if config.max_source_positions != WHISPER_FRAMES:
        raise ValueError(
            f"whisper {whisper!r}: max_source_positions {config.max_source_positions}; accepted: {WHISPER_FRAMES} "
            "(the official windowing assumes 1500 encoder frames per 30 s)"
        )
    if any(key.startswith(WHISPER_PREFIX) for key in keys):
        encoder = WhisperEncoder(config)
        stored = {k[len(WHISPER_PREFIX) :]: v for k, v in tensors.items() if k.startswith(WHISPER_PREFIX)}
        load_strict(encoder, "speech_encoder", stored)
        return encoder
    with quiet_transformers():
        return WhisperModel.from_pretrained(whisper, dtype=torch.float32).get_encoder()


def _qformer_config(qformer_config: str, num_layers: int, encoder_width: int) -> Blip2QFormerConfig:
    """The official ``init_speech_Qformer``: ``qformer_config``'s BERT sizes, ``num_layers`` layers, each with
    cross-attention to ``encoder_width``-wide Whisper frames."""
    try:
        bert = BertConfig.from_pretrained(qformer_config)
    except OSError as error:
        raise ValueError(
            f"cannot read the Q-Former's BERT config {qformer_config!r}: {error}; "
            "pass qformer_config=<folder or hub id>"
        ) from None
    return Blip2QFormerConfig(
        hidden_size=bert.hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=bert.num_attention_heads,
        intermediate_size=bert.intermediate_size,
        hidden_act=bert.hidden_act,
        layer_norm_eps=bert.layer_norm_eps,
        cross_attention_frequency=1,
        encoder_hidden_size=encoder_width,
        use_qformer_text_input=False,
    )


def load_video_salmonn2(
    path: str | Path,
    *,
    whisper: str,
    qformer_config: str,
    vision_tower: str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    attn_implementation: str = "sdpa",
    use_kernels: bool = False,
) -> VideoSALMONN2:
    """A video-SALMONN 2 checkpoint folder -> :class:`VideoSALMONN2` on ``device`` in ``dtype`` (eval mode).

    Args:
        path: the checkpoint folder (``config.json`` plus safetensors).
        whisper: the Whisper checkpoint the official constructor was given (``openai/whisper-large-v3``): its
            config always, its encoder weights when the checkpoint holds no ``speech_encoder.*``.
        qformer_config: the BERT config the official Q-Former was built from (``bert-base-uncased``).
        vision_tower: the SigLIP checkpoint; None means the config's ``mm_vision_tower`` (its config always, its
            weights when the checkpoint holds no tower copy).
        use_kernels: transformers' hub kernels for the LLM (passed to ``from_pretrained``).
    """
    path = Path(path)
    raw = json.loads((path / "config.json").read_text())
    spec = VideoSALMONN2Spec.from_config(raw, where=str(path / "config.json"))
    keys = checkpoint_keys(path)
    known = (*LLM_PREFIXES, VISION_PREFIX, WHISPER_PREFIX, *OWN_PREFIXES, *SINGLE_TENSORS)
    unknown = [k for k in keys if not k.startswith(known)]
    if unknown:
        raise ValueError(f"checkpoint {path}: unexpected tensor(s) {unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
    missing = [k for k in (*SINGLE_TENSORS, "ln_speech.weight", "speech_llama_proj.weight") if k not in keys]
    if missing:
        raise ValueError(f"checkpoint {path}: no {missing}; is it an audio-visual video-SALMONN 2 checkpoint?")
    device = torch.device(device)
    llm = load_qwen2_llm(
        path,
        raw,
        device=device,
        dtype=dtype,
        attn_implementation=attn_implementation,
        use_kernels=use_kernels,
        drop=("rope_scaling",),  # the official constructor forces no rope scaling
    )
    if vision_tower is None:  # a relative mm_vision_tower names a folder next to the config (a local checkpoint)
        vision_tower = str(path / spec.vision_tower) if (path / spec.vision_tower).is_dir() else spec.vision_tower
    # One pass over the checkpoint for everything outside the LLM; the tower's copy only where it is used.
    vision_copy = (VISION_PREFIX,) if spec.tower_from_checkpoint else ()
    own = read_tensors(path, (*vision_copy, WHISPER_PREFIX, *OWN_PREFIXES, *SINGLE_TENSORS))
    vision = _vision_tower(spec, keys, own, vision_tower, use_kernels=use_kernels)
    speech = _whisper(keys, own, whisper)
    parts = {name: {k[len(p) :]: v for k, v in own.items() if k.startswith(p)} for p, name in OWN_PREFIXES.items()}
    parts["speech_qformer"] = _qformer_tensors(parts["speech_qformer"])
    qformer_layers = layer_indices(parts["speech_qformer"], r"encoder\.layer\.(\d+)\.")
    queries = own["speech_query_tokens"]  # [1, num_queries, hidden]
    model = VideoSALMONN2(
        spec,
        llm,
        vision,
        speech,
        _qformer_config(qformer_config, len(qformer_layers), speech.config.d_model),
        num_queries=queries.shape[1],
        final_linear=bool(parts["final_linear"]),
    )
    for name, tensors in parts.items():
        if name != "final_linear" or tensors:
            load_strict(getattr(model, name), name, tensors)
    with torch.no_grad():
        for key, name in SINGLE_TENSORS.items():
            target = getattr(model, name)
            if target.shape != own[key].shape:
                raise ValueError(f"checkpoint {key}: shape {tuple(own[key].shape)}; expected {tuple(target.shape)}")
            target.copy_(own[key])
    for tower in (vision, speech):
        tower.set_attn_implementation(attn_implementation)
    for name, module in model.named_children():
        if name != "llm":
            module.to(device=device, dtype=dtype)
    model.image_newline.data = model.image_newline.data.to(device=device, dtype=dtype)
    model.speech_query_tokens.data = model.speech_query_tokens.data.to(device=device, dtype=dtype)
    return model.eval()
