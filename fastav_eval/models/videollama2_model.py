"""VideoLLaMA2.1-AV (DAMO-NLP-SG, branch ``audio_visual``) as a transformers 5.x model, loaded from its checkpoint.

The official code pins transformers 4.42, so it cannot run next to this project. Its parts are all standard, and
each is taken from transformers or written here with the checkpoint's parameter names:

==================  ==========================================  ==========================================
part                module                                      checkpoint keys
==================  ==========================================  ==========================================
LLM                 transformers ``Qwen2ForCausalLM``            ``model.embed_tokens/layers/norm``, ``lm_head``
vision tower        transformers ``SiglipVisionModel``           its own checkpoint (``mm_vision_tower``)
video connector     :class:`~.stc_connector.STCConnectorV35`    ``model.mm_projector.*``
audio tower         :class:`~.beats.BEATsEncoder`               ``model.audio_tower.*``
audio projector     Linear-GELU-Linear (``mlp2x_gelu``)          ``model.mm_projector_a.*``
==================  ==========================================  ==========================================

As in the official loader, the vision tower comes from the SigLIP checkpoint the config names
(``mm_vision_tower``): the copies of the frozen SigLIP that training saved under ``model.vision_tower.*`` are not
read. Every other tensor of the checkpoint must land in a parameter and every parameter must be loaded; a
missing or unexpected key is an error naming it.

One prompt holds one ``<video>`` (or ``<audio>``) placeholder; its embedding row is replaced by the video tokens
then the audio tokens: ``[text][video (T/2)·(h/2)·(w/2)][audio 187·8][text]``, 1-D RoPE positions.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Qwen2ForCausalLM, SiglipVisionModel

from fastav_eval.models.base import splice_media
from fastav_eval.models.beats import BEATsConfig, BEATsEncoder
from fastav_eval.models.checkpoint import (
    checkpoint_keys,
    layer_indices,
    load_qwen2_llm,
    load_strict,
    mlp_gelu,
    quiet_transformers,
    read_tensors,
)
from fastav_eval.models.stc_connector import STCConnectorV35

MODEL_TYPES = ("videollama2_qwen2",)
VIDEO_PROJECTOR_TYPES = ("stc_connector_v35",)
OWN_PREFIXES = {
    "model.mm_projector.": "mm_projector",
    "model.mm_projector_a.": "mm_projector_a",
    "model.audio_tower.": "audio_tower",
}  # checkpoint prefix -> the VideoLLaMA2AV attribute whose state_dict the rest of the name is
VISION_COPY_PREFIX = "model.vision_tower."
LLM_PREFIXES = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")
DEFAULT_NUM_FRAMES = 8  # the official NUM_FRAMES, for a config without num_frames


@dataclass(frozen=True)
class VideoLLaMA2Spec:
    """The multimodal part of a VideoLLaMA2 ``config.json``, checked.

    Attributes:
        num_frames: frames per video (16 for VideoLLaMA2.1-7B-AV; the official default 8 when the config has none).
        vision_tower: the SigLIP checkpoint the tower loads from (a hub id or a folder).
        vision_select_layer: which hidden state of the tower feeds the connector (-2: the second to last).
        vision_width: the tower's hidden size (``mm_hidden_size``).
        audio_width: BEATs' width (``mm_hidden_size_a``).
        audio_projector_depth: Linear layers of the ``mlp<N>x_gelu`` audio projector; 0: a bare ``linear`` one.
        llm_width: the LLM's hidden size.
    """

    num_frames: int
    vision_tower: str
    vision_select_layer: int
    vision_width: int
    audio_width: int
    audio_projector_depth: int
    llm_width: int

    @classmethod
    def from_config(cls, raw: dict[str, Any], where: str = "config.json") -> VideoLLaMA2Spec:
        def field(name: str, kind: type) -> Any:
            if name not in raw:
                raise ValueError(f"{where}: no {name!r}; this is not a VideoLLaMA2-AV checkpoint config")
            value = raw[name]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"{where}: {name}={value!r}; accepted: a {kind.__name__}")
            return value

        if raw.get("model_type") not in MODEL_TYPES:
            raise ValueError(f"{where}: model_type={raw.get('model_type')!r}; accepted: {list(MODEL_TYPES)}")
        if field("mm_projector_type", str) not in VIDEO_PROJECTOR_TYPES:
            raise ValueError(
                f"{where}: mm_projector_type={raw['mm_projector_type']!r}; accepted: {list(VIDEO_PROJECTOR_TYPES)}"
            )
        audio_type = raw.get("mm_projector_a_type", "linear")  # the official default
        depth = re.fullmatch(r"mlp(\d+)x_gelu", audio_type) if isinstance(audio_type, str) else None
        if depth is None and audio_type != "linear":
            raise ValueError(
                f"{where}: mm_projector_a_type={audio_type!r}; accepted: 'linear' or 'mlp<N>x_gelu' (e.g. mlp2x_gelu)"
            )
        if raw.get("mm_vision_select_feature", "patch") != "patch":
            feature = raw["mm_vision_select_feature"]
            raise ValueError(f"{where}: mm_vision_select_feature={feature!r}; accepted: 'patch'")
        if raw.get("hidden_size_a", raw.get("hidden_size")) != raw.get("hidden_size"):
            widths = f"hidden_size_a={raw['hidden_size_a']!r}, hidden_size={raw['hidden_size']!r}"
            raise ValueError(f"{where}: {widths}; the audio projector must output the LLM's width")
        num_frames = raw.get("num_frames", DEFAULT_NUM_FRAMES)
        if not isinstance(num_frames, int) or isinstance(num_frames, bool):
            raise ValueError(f"{where}: num_frames={num_frames!r}; accepted: an even int >= 2")
        if num_frames < 2 or num_frames % 2:
            raise ValueError(f"{where}: num_frames={num_frames}; accepted: an even int >= 2 (frames pair up)")
        return cls(
            num_frames=num_frames,
            vision_tower=field("mm_vision_tower", str),
            vision_select_layer=field("mm_vision_select_layer", int),
            vision_width=field("mm_hidden_size", int),
            audio_width=field("mm_hidden_size_a", int),
            audio_projector_depth=int(depth.group(1)) if depth else 0,
            llm_width=field("hidden_size", int),
        )


class VideoLLaMA2AV(nn.Module):
    """The encoders, connectors and LLM of VideoLLaMA2.1-AV; :meth:`embed` builds the LLM's ``inputs_embeds``."""

    def __init__(self, spec: VideoLLaMA2Spec, llm: Qwen2ForCausalLM, vision: SiglipVisionModel, beats: BEATsConfig):
        super().__init__()
        self.spec = spec
        self.llm = llm
        self.vision_tower = vision
        self.mm_projector = STCConnectorV35(spec.vision_width, spec.llm_width)
        self.audio_tower = BEATsEncoder(beats)
        self.mm_projector_a = mlp_gelu(spec.audio_projector_depth, spec.audio_width, spec.llm_width)

    @property
    def patches_per_side(self) -> int:
        config = self.vision_tower.config
        return config.image_size // config.patch_size

    def video_tokens_per_clip(self, num_frames: int | None = None) -> int:
        """Video tokens of a clip of ``num_frames`` frames (None: the config's)."""
        return STCConnectorV35.num_tokens(num_frames or self.spec.num_frames, self.patches_per_side)

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` frames -> ``[N, h·w, C]``: the tower's hidden state ``vision_select_layer``."""
        out = self.vision_tower(pixel_values=pixel_values, output_hidden_states=True)
        return out.hidden_states[self.spec.vision_select_layer]

    def encode_video(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, T, 3, H, W]`` -> ``[B, (T/2)·(h/2)·(w/2), D]`` video tokens, time-major."""
        batch, frames = pixel_values.shape[:2]
        features = self.vision_features(pixel_values.flatten(0, 1))
        return self.mm_projector(features.reshape(batch, frames, *features.shape[1:]))

    def encode_audio(self, fbank: torch.Tensor) -> torch.Tensor:
        """``[B, 2998, 128]`` log-mel frames -> ``[B, 187·8, D]`` audio tokens, time-major."""
        return self.mm_projector_a(self.audio_tower(fbank))

    def embed(self, input_ids: torch.Tensor, placeholder: int, media: torch.Tensor) -> torch.Tensor:
        """One prompt's ids ``[L]`` holding ``placeholder`` once -> ``[L - 1 + N, D]``, its row replaced by
        ``media [N, D]`` (the video tokens then the audio tokens)."""
        return splice_media(self.llm, input_ids, placeholder, media)


def beats_config_from_tensors(tensors: dict[str, torch.Tensor]) -> BEATsConfig:
    """BEATs' sizes read off its tensors (the official loader builds the default BEATs_iter3+ sizes, which a
    real checkpoint has; reading them makes a smaller test checkpoint load too, and checks the real one)."""
    layers = layer_indices(tensors, r"encoder\.layers\.(\d+)\.")
    try:
        patch = tensors["patch_embedding.weight"]  # [embed_dim, 1, p, p]
        fc1 = tensors["encoder.layers.0.fc1.weight"]  # [ffn, D]
        bias = tensors["encoder.layers.0.self_attn.relative_attention_bias.weight"]  # [buckets, heads]
        pos_conv = tensors["encoder.pos_conv.0.weight_v"]  # [D, D / groups, kernel]
        predictor = tensors.get("predictor.weight")  # [classes, D]
    except KeyError as missing:
        raise ValueError(f"checkpoint: audio tower tensor model.audio_tower.{missing.args[0]} is missing") from None
    return BEATsConfig(
        input_patch_size=patch.shape[-1],
        embed_dim=patch.shape[0],
        encoder_layers=len(layers),
        encoder_embed_dim=fc1.shape[1],
        encoder_ffn_embed_dim=fc1.shape[0],
        encoder_attention_heads=bias.shape[1],
        num_buckets=bias.shape[0],
        conv_pos=pos_conv.shape[-1],
        conv_pos_groups=fc1.shape[1] // pos_conv.shape[1],
        conv_bias="patch_embedding.bias" in tensors,
        gru_rel_pos="encoder.layers.0.self_attn.grep_a" in tensors,
        finetuned_model=predictor is not None,
        predictor_class=predictor.shape[0] if predictor is not None else BEATsConfig().predictor_class,
    )


def share_bias_table(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BEATs' tensors with every layer's copy of the relative-position table (one table, shared by the layers):
    a checkpoint may store it once (layer 0) or once per layer; stored copies must be equal."""
    first = tensors.get("encoder.layers.0.self_attn.relative_attention_bias.weight")
    if first is None:
        return tensors
    layers = layer_indices(tensors, r"encoder\.layers\.(\d+)\.")
    shared = dict(tensors)
    for layer in sorted(layers - {0}):
        key = f"encoder.layers.{layer}.self_attn.relative_attention_bias.weight"
        if key in tensors and not torch.equal(tensors[key], first):
            raise ValueError(f"checkpoint: model.audio_tower.{key} differs from layer 0's (BEATs shares one table)")
        shared[key] = first
    return shared


def load_videollama2(
    path: str | Path,
    *,
    vision_tower: str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float16,
    attn_implementation: str = "sdpa",
    use_kernels: bool = False,
) -> VideoLLaMA2AV:
    """A VideoLLaMA2-AV checkpoint folder -> :class:`VideoLLaMA2AV` on ``device`` in ``dtype`` (eval mode).

    Args:
        path: the checkpoint folder (``config.json`` plus safetensors).
        vision_tower: the SigLIP checkpoint; None means the config's ``mm_vision_tower``.
        use_kernels: transformers' hub kernels for the LLM and the vision tower (passed to both
            ``from_pretrained`` calls: transformers 5.25 turns them on when it is not given).
    """
    path = Path(path)
    raw = json.loads((path / "config.json").read_text())
    spec = VideoLLaMA2Spec.from_config(raw, where=str(path / "config.json"))
    if vision_tower is not None:
        spec = VideoLLaMA2Spec(**{**spec.__dict__, "vision_tower": vision_tower})
    keys = checkpoint_keys(path)
    unknown = [k for k in keys if not k.startswith((*LLM_PREFIXES, *OWN_PREFIXES, VISION_COPY_PREFIX))]
    if unknown:
        raise ValueError(f"checkpoint {path}: unexpected tensor(s) {unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
    device = torch.device(device)
    llm = load_qwen2_llm(
        path, raw, device=device, dtype=dtype, attn_implementation=attn_implementation, use_kernels=use_kernels
    )
    try:
        with quiet_transformers():  # SigLIP's full checkpoint also holds its text tower, which is not read
            vision, vision_info = SiglipVisionModel.from_pretrained(
                spec.vision_tower,
                dtype=dtype,
                device_map={"": device},
                attn_implementation=attn_implementation,
                output_loading_info=True,
                use_kernels=use_kernels,
            )
    except OSError as error:
        raise ValueError(
            f"cannot load the vision tower {spec.vision_tower!r} (the config's mm_vision_tower): {error}; "
            "pass vision_tower=<SigLIP folder or hub id>"
        ) from None
    if vision_info["missing_keys"] or vision_info["mismatched_keys"]:
        raise ValueError(
            f"vision tower {spec.vision_tower}: tensors missing {sorted(vision_info['missing_keys'])[:8]}, "
            f"wrong shape {list(vision_info['mismatched_keys'])[:8]} (is it a SigLIP checkpoint?)"
        )
    if vision.config.hidden_size != spec.vision_width:
        raise ValueError(
            f"vision tower {spec.vision_tower}: hidden_size {vision.config.hidden_size}, but the checkpoint's "
            f"mm_hidden_size is {spec.vision_width}"
        )
    own = read_tensors(path, tuple(OWN_PREFIXES))
    parts = {name: {k[len(p) :]: v for k, v in own.items() if k.startswith(p)} for p, name in OWN_PREFIXES.items()}
    parts["audio_tower"] = share_bias_table(parts["audio_tower"])
    model = VideoLLaMA2AV(spec, llm, vision, beats_config_from_tensors(parts["audio_tower"]))
    for name, tensors in parts.items():
        prefix = next(p for p, n in OWN_PREFIXES.items() if n == name)
        load_strict(getattr(model, name), name, tensors, prefix)
    for name in OWN_PREFIXES.values():
        getattr(model, name).to(device=device, dtype=dtype)
    return model.eval()
