"""VideoLLaMA2's spatial-temporal convolution connector (``stc_connector_v35``), written without timm.

The official connector builds its two stages from timm's ``RegStage`` (RegNet bottlenecks with squeeze-excite,
``LayerNorm2d`` and SiLU). timm imports torchvision, which cannot be installed beside the CPU torch these
machines use, so the few blocks it needs are written here with the same parameter names (``s1.b1.conv1.conv.weight``,
``s1.b1.se.fc1.bias``, ...), so that the checkpoint's ``model.mm_projector.*`` tensors load as they are.

Data flow for one video (``T`` frames of ``h×w`` vision patches of width ``C``)::

    [B, T, h·w, C] -> stage s1 per frame (C -> D) -> Conv3d 2×2×2, stride 2, no padding, SiLU
                   -> stage s2 per frame pair (D -> D) -> [B, (T/2)·(h/2)·(w/2), D] -> 2-layer MLP readout

Tokens come out time-major, then raster order within a frame pair: 16 frames of 27×27 give 8×13×13 = 1,352.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LayerNormAct2d(nn.LayerNorm):
    """LayerNorm over the channels of ``[B, C, H, W]``, then an optional SiLU (timm's ``LayerNormAct2d``).

    timm turns the connector's ``LayerNorm2d`` into this class and so uses its eps (1e-5, not LayerNorm2d's 1e-6).
    """

    def __init__(self, channels: int, apply_act: bool = True, eps: float = 1e-5) -> None:
        super().__init__(channels, eps=eps)
        self.act = nn.SiLU() if apply_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return self.act(x.permute(0, 3, 1, 2))


class ConvNormAct(nn.Module):
    """A bias-free ``k×k`` conv with "same" padding, then :class:`LayerNormAct2d` (named ``conv`` and ``bn``)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, groups: int = 1, apply_act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, padding=(kernel_size - 1) // 2, groups=groups, bias=False)
        self.bn = LayerNormAct2d(out_chs, apply_act=apply_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class SqueezeExcite(nn.Module):
    """Channel gating from the spatial mean: ``x · sigmoid(fc2(silu(fc1(mean_hw(x)))))``."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(F.silu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class RegBottleneck(nn.Module):
    """RegNet's bottleneck as the connector configures it: stride 1, bottleneck width = ``out_chs``, a depthwise
    3×3 (group size 1), squeeze-excite at a quarter of ``in_chs``, and a 1×1 conv shortcut when widths differ."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_chs, out_chs, 1)
        self.conv2 = ConvNormAct(out_chs, out_chs, 3, groups=out_chs)
        self.se = SqueezeExcite(out_chs, round(in_chs * 0.25))
        self.conv3 = ConvNormAct(out_chs, out_chs, 1, apply_act=False)
        self.downsample = ConvNormAct(in_chs, out_chs, 1, apply_act=False) if in_chs != out_chs else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(self.se(self.conv2(self.conv1(x))))
        return F.silu(y + self.downsample(x))


class RegStage(nn.Module):
    """``depth`` bottlenecks named ``b1 … b<depth>``; the first maps ``in_chs`` to ``out_chs``."""

    def __init__(self, depth: int, in_chs: int, out_chs: int) -> None:
        super().__init__()
        for i in range(depth):
            self.add_module(f"b{i + 1}", RegBottleneck(in_chs if i == 0 else out_chs, out_chs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.children():
            x = block(x)
        return x


class STCConnectorV35(nn.Module):
    """Vision features of a clip -> LLM tokens (``mm_projector_type: stc_connector_v35``).

    Args:
        vision_width: the vision tower's hidden size (``mm_hidden_size``: 1152 for SigLIP-so400m).
        llm_width: the LLM's hidden size (3584 for Qwen2-7B).
        depth: bottlenecks per stage (4 in VideoLLaMA2).
    """

    downsample = (2, 2, 2)

    def __init__(self, vision_width: int, llm_width: int, depth: int = 4) -> None:
        super().__init__()
        self.s1 = RegStage(depth, vision_width, llm_width)
        pairs = nn.Conv3d(llm_width, llm_width, self.downsample, stride=self.downsample)  # no padding: 27 -> 13
        self.sampler = nn.Sequential(pairs, nn.SiLU())
        self.s2 = RegStage(depth, llm_width, llm_width)
        self.readout = nn.Sequential(nn.Linear(llm_width, llm_width), nn.GELU(), nn.Linear(llm_width, llm_width))

    @staticmethod
    def num_tokens(num_frames: int, patches_per_side: int) -> int:
        """Tokens out for ``num_frames`` frames of ``patches_per_side²`` patches (16, 27 -> 1,352)."""
        return (num_frames // 2) * (patches_per_side // 2) ** 2

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, T, h·w, C]`` vision patches (square grid) -> ``[B, (T/2)·(h/2)·(w/2), D]`` tokens."""
        batch, frames, patches, width = features.shape
        side = math.isqrt(patches)
        if side * side != patches:
            raise ValueError(f"STC connector: {patches} patches per frame is not a square grid")
        x = features.reshape(batch * frames, side, side, width).permute(0, 3, 1, 2)  # [(B T), C, h, w]
        x = self.s1(x)
        x = x.reshape(batch, frames, *x.shape[1:]).transpose(1, 2)  # [B, D, T, h, w]
        x = self.sampler(x)
        pairs = x.shape[2]
        x = x.transpose(1, 2).flatten(0, 1)  # [(B T'), D, h', w']
        x = self.s2(x)
        x = x.reshape(batch, pairs, *x.shape[1:]).permute(0, 1, 3, 4, 2)  # [B, T', h', w', D]
        return self.readout(x.reshape(batch, -1, x.shape[-1]))
