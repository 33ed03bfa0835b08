"""BEATs, the audio encoder of VideoLLaMA2.1-7B-AV (the fine-tuned BEATs_iter3+ AS2M), inference only.

``BEATsEncoder(config)(fbank)`` equals the official ``BEATs.extract_features(fbank, padding_mask,
feature_only=True)[0]`` (``videollama2/model/beats/BEATs.py``), and its ``state_dict()`` keys are the official
module's (stored under ``model.audio_tower.`` in the VideoLLaMA2 checkpoint). The path, for ``fbank [B, frames, 128]``
from :func:`fastav_eval.models.fbank.beats_fbank`:

1. normalise, ``(fbank - 15.41663) / (2 · 6.55582)``;
2. 16×16 patches (a stride-16 ``Conv2d``): ``[B, embed_dim, T, F]`` with ``T = frames // 16`` (187 for 30 s) and
   ``F = 128 // 16 = 8``, flattened time-major (token ``t·F + f`` is time patch ``t``, frequency patch ``f``);
3. ``LayerNorm(embed_dim)``, then ``Linear`` to ``encoder_embed_dim``;
4. a convolutional position embedding (weight-normalised grouped ``Conv1d`` over the tokens, kernel 128, GELU) added
   to the tokens, then ``LayerNorm``;
5. post-LN ("deep norm") transformer layers, ``x = LN(α·x + f(x))`` with ``α = (2·layers)^¼``, whose attention adds
   a T5-style bucketed relative position bias, gated per query by ``grep_linear`` / ``grep_a`` (WavLM's gated
   relative position bias). The bias table is shared by all layers (layer 0's ``nn.Embedding``).

No dropout, layer drop or label predictor run here; ``predictor`` exists only so the checkpoint's keys load.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FBANK_MEAN",
    "FBANK_STD",
    "BEATsConfig",
    "BEATsEncoder",
    "pool_padding_mask",
    "relative_position_bucket",
]

FBANK_MEAN = 15.41663
FBANK_STD = 6.55582
"""The fbank statistics BEATs normalises with (the official ``extract_features`` defaults)."""

_ATTN_ALPHA = 32  # the official attention's overflow guard: q / 32 before q·k, (scores - max) · 32 after
_WEIGHT_NORM_EPS = 1e-6  # added to the squared norm by the official weight_norm_fix.py (torch's weight_norm adds none)

AttnImplementation = Literal["sdpa", "eager"]


@dataclass
class BEATsConfig:
    """The BEATs hyper-parameters inference uses, at the official defaults (those of VideoLLaMA2's audio tower)."""

    input_patch_size: int = 16
    embed_dim: int = 512  # patch embedding width
    conv_bias: bool = False  # bias in the patch embedding
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_norm_first: bool = False  # pre-LN layers (the default is post-LN)
    deep_norm: bool = True  # scale the residual by (2·layers)^¼ in post-LN layers
    conv_pos: int = 128  # kernel of the convolutional position embedding
    conv_pos_groups: int = 16
    relative_position_embedding: bool = True
    num_buckets: int = 320
    max_distance: int = 800
    gru_rel_pos: bool = True  # gate the relative position bias per query
    finetuned_model: bool = True  # has the AudioSet label predictor
    predictor_class: int = 527

    def __post_init__(self) -> None:
        if self.activation_fn not in ("gelu", "relu"):
            raise ValueError(f"activation_fn {self.activation_fn!r} not supported (gelu, relu)")
        if self.deep_norm and self.layer_norm_first:
            raise ValueError("deep_norm applies to post-LN layers only; layer_norm_first must be False")
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise ValueError(
                f"encoder_embed_dim {self.encoder_embed_dim} not divisible by {self.encoder_attention_heads} heads"
            )
        if self.encoder_embed_dim % self.conv_pos_groups:
            raise ValueError(
                f"encoder_embed_dim {self.encoder_embed_dim} not divisible by {self.conv_pos_groups} groups"
            )
        if self.relative_position_embedding and self.num_buckets < 4:
            raise ValueError(f"num_buckets must be at least 4, got {self.num_buckets}")

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> BEATsConfig:
        """From a BEATs checkpoint's ``cfg`` dict, ignoring keys inference does not use (dropouts, layer drop...)."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in config.items() if key in names})

    @property
    def deep_norm_alpha(self) -> float:
        return math.pow(2 * self.encoder_layers, 1 / 4) if self.deep_norm else 1.0


def relative_position_bucket(relative_position: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """Bidirectional T5 buckets of ``relative_position = key - query`` (int64, any shape), in ``[0, num_buckets)``.

    Half the buckets are for positive offsets (``num_buckets // 2`` plus the bucket of ``|offset|``). Within a half,
    offsets below ``num_buckets // 4`` get a bucket each; larger ones share log-spaced buckets up to ``max_distance``,
    beyond which they all fall in the last.
    """
    half = num_buckets // 2
    exact = half // 2
    distance = relative_position.abs()
    scaled = torch.log(distance.float() / exact) / math.log(max_distance / exact) * (half - exact)
    log_bucket = torch.clamp(exact + scaled.to(torch.long), max=half - 1)  # distance 0: log(0), never picked below
    bucket = torch.where(distance < exact, distance, log_bucket)
    return bucket + (relative_position > 0).to(torch.long) * half


def pool_padding_mask(padding_mask: Tensor, length: int) -> Tensor:
    """The official ``BEATs.forward_padding_mask``: ``[B, N, ...]`` bool (True = padding) to ``[B, length]``.

    It drops the last ``N % length`` entries, groups the rest into ``length`` *contiguous* runs and marks a position
    padded when its whole run is. The official applies it twice, frames → frames and then frames → tokens, and the
    second ignores the time-major token layout (token ``i`` takes frames ``2i, 2i+1`` at 30 s, not its own patch's).
    VideoLLaMA2 only ever passes an all-False mask, for which this is moot; it is kept as is for parity.
    """
    if padding_mask.dim() < 2:
        raise ValueError(f"padding_mask must be [batch, positions, ...], got shape {tuple(padding_mask.shape)}")
    if padding_mask.shape[1] < length:
        raise ValueError(f"padding_mask has {padding_mask.shape[1]} positions, fewer than the {length} to pool onto")
    extra = padding_mask.shape[1] % length
    if extra:
        padding_mask = padding_mask[:, :-extra]
    return padding_mask.reshape(padding_mask.shape[0], length, -1).all(-1)


class WeightNormConv1d(nn.Module):
    """``Conv1d`` with weight normalisation over dim 2, stored as ``weight_g`` ``[1, 1, K]`` and ``weight_v``.

    The effective weight is the official ``weight_norm_fix.py``'s: ``g · v / sqrt(Σ v² + 1e-6)``, the sum over the
    output and input channels for each kernel tap, computed in float32 and cast back to ``v``'s dtype before ``g``.
    """

    def __init__(self, channels: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.padding = kernel_size // 2
        self.groups = groups
        self.bias = nn.Parameter(torch.zeros(channels))
        weight = torch.randn(channels, channels // groups, kernel_size) * math.sqrt(4 / (kernel_size * channels))
        self.weight_g = nn.Parameter(weight.norm(dim=(0, 1), keepdim=True))
        self.weight_v = nn.Parameter(weight)

    def effective_weight(self) -> Tensor:
        v = self.weight_v.float()
        v = v * torch.rsqrt(v.pow(2).sum(dim=(0, 1), keepdim=True) + _WEIGHT_NORM_EPS)
        return self.weight_g * v.to(self.weight_v.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, C, L]`` -> ``[B, C, L + 1]`` for an even kernel (the caller trims it)."""
        return F.conv1d(x, self.effective_weight(), self.bias, padding=self.padding, groups=self.groups)


class _SamePad(nn.Module):
    """Drops the extra last step an even kernel with ``padding = K // 2`` adds."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, : -self.remove] if self.remove else x


class BEATsAttention(nn.Module):
    """Multi-head self-attention with a gated relative position bias (the official ``MultiheadAttention``)."""

    def __init__(self, config: BEATsConfig, relative_attention_bias: nn.Embedding | None) -> None:
        super().__init__()
        dim = config.encoder_embed_dim
        self.num_heads = config.encoder_attention_heads
        self.head_dim = dim // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.gru_rel_pos = config.gru_rel_pos
        if relative_attention_bias is not None:
            self.relative_attention_bias = relative_attention_bias  # [num_buckets, heads], shared across layers
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        if self.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, self.num_heads, 1, 1))

    def _split(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def gated_bias(self, query: Tensor, position_bias: Tensor) -> Tensor:
        """``position_bias [H, L, S]`` scaled per head and query by ``a·(b·grep_a - 1) + 2``: ``[B, H, L, S]``.

        ``query [B, H, L, head_dim]`` is the unscaled projection; ``a, b`` are the sigmoids of the two 4-sums of
        ``grep_linear(query)``, so the gate lies in (1, 1 + grep_a) for ``grep_a`` ≥ 0.
        """
        if not self.gru_rel_pos:
            return position_bias.unsqueeze(0)
        batch, heads, length, _ = query.shape
        logits = self.grep_linear(query).view(batch, heads, length, 2, 4).sum(-1)
        gate_a, gate_b = torch.sigmoid(logits).chunk(2, dim=-1)  # each [B, H, L, 1]
        gate = gate_a * (gate_b * self.grep_a - 1.0) + 2.0
        return gate * position_bias.unsqueeze(0)

    def forward(
        self,
        x: Tensor,
        position_bias: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        implementation: AttnImplementation = "eager",
    ) -> Tensor:
        """``x [B, L, D]``, ``position_bias [H, L, L]``, ``key_padding_mask [B, L]`` (True: skip) -> ``[B, L, D]``."""
        q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(x)), self._split(self.v_proj(x))
        if implementation == "eager":
            out = self._eager(q, k, v, position_bias, key_padding_mask)
        elif implementation == "sdpa":
            mask = None if position_bias is None else self.gated_bias(q, position_bias).to(q.dtype)
            if key_padding_mask is not None:
                padding = torch.zeros(key_padding_mask.shape, dtype=q.dtype, device=q.device)
                padding = padding.masked_fill(key_padding_mask, float("-inf"))[:, None, None, :]
                mask = padding if mask is None else mask + padding
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling)
        else:
            raise ValueError(f"attention implementation {implementation!r} not supported (sdpa, eager)")
        batch, _, length, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, -1))

    def _eager(
        self, q: Tensor, k: Tensor, v: Tensor, position_bias: Tensor | None, key_padding_mask: Tensor | None
    ) -> Tensor:
        """The official arithmetic, operation for operation, so bfloat16 rounds as it does."""
        q = q * self.scaling * (1 / _ATTN_ALPHA)
        scores = q @ k.transpose(-1, -2)
        scores = (scores - scores.amax(dim=-1, keepdim=True)) * _ATTN_ALPHA
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        if position_bias is not None:
            scores = scores + self.gated_bias(q * _ATTN_ALPHA / self.scaling, position_bias)
        return torch.softmax(scores, dim=-1) @ v  # softmax in the input dtype, as the official


class BEATsLayer(nn.Module):
    """One transformer layer: attention and a GELU MLP, post-LN with the deep-norm residual scale (or pre-LN)."""

    def __init__(self, config: BEATsConfig, relative_attention_bias: nn.Embedding | None) -> None:
        super().__init__()
        dim = config.encoder_embed_dim
        self.self_attn = BEATsAttention(config, relative_attention_bias)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, config.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.layer_norm_first = config.layer_norm_first
        self.alpha = config.deep_norm_alpha
        self.activation_fn = config.activation_fn

    def _mlp(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        h = F.gelu(h.float()).type_as(h) if self.activation_fn == "gelu" else F.relu(h)  # official GELU is float32
        return self.fc2(h)

    def forward(
        self,
        x: Tensor,
        position_bias: Tensor | None,
        key_padding_mask: Tensor | None,
        implementation: AttnImplementation,
    ) -> Tensor:
        """``x [B, L, D]`` -> ``[B, L, D]``."""
        if self.layer_norm_first:
            x = x + self.self_attn(self.self_attn_layer_norm(x), position_bias, key_padding_mask, implementation)
            return x + self._mlp(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(
            x * self.alpha + self.self_attn(x, position_bias, key_padding_mask, implementation)
        )
        return self.final_layer_norm(x * self.alpha + self._mlp(x))


class BEATsTransformer(nn.Module):
    """The official ``TransformerEncoder``: convolutional position embedding, LayerNorm, the layers."""

    def __init__(self, config: BEATsConfig) -> None:
        super().__init__()
        dim = config.encoder_embed_dim
        self.pos_conv = nn.Sequential(
            WeightNormConv1d(dim, config.conv_pos, config.conv_pos_groups), _SamePad(config.conv_pos), nn.GELU()
        )
        self.num_buckets = config.num_buckets
        self.max_distance = config.max_distance
        bias_table = (
            nn.Embedding(config.num_buckets, config.encoder_attention_heads)
            if config.relative_position_embedding
            else None
        )
        self.layers = nn.ModuleList(BEATsLayer(config, bias_table) for _ in range(config.encoder_layers))
        self.layer_norm = nn.LayerNorm(dim)
        self.layer_norm_first = config.layer_norm_first

    def position_bias(self, length: int) -> Tensor | None:
        """The relative position bias, ``[heads, length, length]`` (query, key), or None without one."""
        attention = self.layers[0].self_attn if len(self.layers) else None
        table = getattr(attention, "relative_attention_bias", None)
        if table is None:
            return None
        positions = torch.arange(length, device=table.weight.device)
        buckets = relative_position_bucket(positions[None, :] - positions[:, None], self.num_buckets, self.max_distance)
        return table(buckets).permute(2, 0, 1)

    def forward(
        self, x: Tensor, padding_mask: Tensor | None = None, implementation: AttnImplementation = "eager"
    ) -> Tensor:
        """``x [B, L, D]``, ``padding_mask [B, L]`` (True = padding) -> ``[B, L, D]``."""
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        position_bias = self.position_bias(x.shape[1])
        for layer in self.layers:
            x = layer(x, position_bias, padding_mask, implementation)
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return x


class BEATsEncoder(nn.Module):
    """BEATs feature extractor: ``fbank [B, frames, mel]`` -> ``[B, (frames // 16) · (mel // 16), encoder_embed_dim]``.

    ``attn_implementation``: ``"eager"`` (default) repeats the official attention operation for operation (``q/32``,
    the row-max subtraction, the softmax in the module's dtype); on CPU it matches the official module bit for bit in
    float32, and in float16 / bfloat16 for a batch of one (for larger batches the official's time-major ``[L, B, D]``
    layout sends its Linear layers down other half-precision kernels). ``"sdpa"`` computes the same
    ``softmax(q·kᵀ/√d + gated bias)`` with ``F.scaled_dot_product_attention`` (float32: equal to rounding; half
    precision: its own rounding). The eager scores are ``[B, heads, L, L]``, about 27 M elements per clip at 30 s.

    Precision: the official ``mm_infer`` runs the whole model in float16 (``load_pretrained_model`` loads it with
    ``torch_dtype=torch.float16`` and the fbank is sent ``.half()``); the ``q/32`` step keeps float16 scores from
    overflowing. In any dtype the MLP's GELU and the position conv's weight norm are computed in float32, as there.
    """

    def __init__(self, config: BEATsConfig | None = None, *, attn_implementation: AttnImplementation = "eager") -> None:
        super().__init__()
        self.config = config = config or BEATsConfig()
        if attn_implementation not in ("sdpa", "eager"):
            raise ValueError(f"attn_implementation {attn_implementation!r} not supported (sdpa, eager)")
        self.attn_implementation: AttnImplementation = attn_implementation
        self.post_extract_proj = (
            nn.Linear(config.embed_dim, config.encoder_embed_dim)
            if config.embed_dim != config.encoder_embed_dim
            else None
        )
        patch = config.input_patch_size
        self.patch_embedding = nn.Conv2d(1, config.embed_dim, patch, stride=patch, bias=config.conv_bias)
        self.encoder = BEATsTransformer(config)
        self.layer_norm = nn.LayerNorm(config.embed_dim)
        self.predictor = nn.Linear(config.encoder_embed_dim, config.predictor_class) if config.finetuned_model else None

    def grid(self, num_frames: int, num_mel_bins: int = 128) -> tuple[int, int]:
        """``(T, F)``, the patch grid of a ``[frames, mel]`` fbank; the output has ``T · F`` tokens, time-major."""
        patch = self.config.input_patch_size
        return num_frames // patch, num_mel_bins // patch

    def embed_patches(self, fbank: Tensor) -> Tensor:
        """Normalised ``fbank [B, frames, mel]`` cut into patches: ``[B, T · F, embed_dim]``, token ``t·F + f``.

        The input is cast to the module's dtype first; the official module expects it there already (bfloat16
        from ``process_audio_*``), so the normalisation runs in that dtype.
        """
        if fbank.dim() != 3:
            raise ValueError(f"fbank must be [batch, frames, mel_bins], got shape {tuple(fbank.shape)}")
        patch = self.config.input_patch_size
        if fbank.shape[1] < patch or fbank.shape[2] < patch:
            raise ValueError(f"fbank {tuple(fbank.shape[1:])} is smaller than one {patch}x{patch} patch")
        fbank = fbank.to(self.patch_embedding.weight.dtype)
        fbank = (fbank - FBANK_MEAN) / (2 * FBANK_STD)
        patches = self.patch_embedding(fbank.unsqueeze(1))  # [B, embed_dim, T, F]
        return patches.flatten(2).transpose(1, 2)

    def forward(self, fbank: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """``fbank [B, frames, mel]`` -> ``[B, T · F, encoder_embed_dim]``.

        ``padding_mask``: optional, ``[B, frames]`` or ``[B, frames, mel]``, True = padding, pooled onto the tokens as
        the official does (see :func:`pool_padding_mask`).
        """
        if padding_mask is not None:
            padding_mask = pool_padding_mask(padding_mask.to(device=fbank.device, dtype=torch.bool), fbank.shape[1])
        x = self.layer_norm(self.embed_patches(fbank))
        if padding_mask is not None:
            padding_mask = pool_padding_mask(padding_mask, x.shape[1])
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        return self.encoder(x, padding_mask, self.attn_implementation)
