"""Reading the checkpoints of models transformers does not know as one class: their safetensors by key prefix,
their tokenizer, and the small modules their configs name.

An adapter whose model is assembled from transformers parts (a Qwen2 LLM, a SigLIP tower, a Whisper encoder) loads
each part's tensors from the one checkpoint by prefix; a missing or unexpected key is an error naming it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
from transformers.utils import logging as hf_logging


def mlp_gelu(depth: int, in_width: int, out_width: int) -> nn.Module:
    """``Linear(in, out)`` then ``depth - 1`` times ``GELU, Linear(out, out)`` (``mlp<depth>x_gelu``); depth 0 is
    the official ``linear`` projector, a bare ``nn.Linear`` (its keys have no index)."""
    if depth == 0:
        return nn.Linear(in_width, out_width)
    layers: list[nn.Module] = [nn.Linear(in_width, out_width)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(out_width, out_width)]
    return nn.Sequential(*layers)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings and progress bars off: loading parts of a checkpoint of a model type it does not
    know (``videollama2_qwen2``, ``video_salmonn_2``) with its own classes warns about the type and about every
    tensor they do not hold."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_tokenizer(path: str | Path) -> Any:
    with quiet_transformers():
        return AutoTokenizer.from_pretrained(path)


def weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / name for name in names]
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")


def read_tensors(path: Path, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors whose names start with one of ``prefixes``, on the CPU."""
    tensors: dict[str, torch.Tensor] = {}
    for file in weight_files(path):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                if key.startswith(prefixes):
                    tensors[key] = handle.get_tensor(key)
    return tensors


def checkpoint_keys(path: Path) -> list[str]:
    keys: list[str] = []
    for file in weight_files(path):
        with safe_open(str(file), framework="pt") as handle:
            keys += list(handle.keys())
    return keys


def local_folder(pretrained: str) -> Path:
    """``pretrained`` as a folder: itself, or the hub snapshot (downloaded unless HF_HUB_OFFLINE is set)."""
    if Path(pretrained).is_dir():
        return Path(pretrained)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(pretrained))


def load_qwen2_llm(
    path: Path,
    raw_config: dict[str, Any],
    *,
    device: torch.device,
    dtype: torch.dtype,
    attn_implementation: str,
    use_kernels: bool,
    drop: tuple[str, ...] = (),
) -> Qwen2ForCausalLM:
    """The Qwen2 LLM of a multimodal checkpoint (``model.layers.*``, ``lm_head`` ...), its config the checkpoint's
    ``config.json`` less its model type and the keys in ``drop``; a missing or wrongly shaped LLM tensor is an error.
    The checkpoint's other tensors (towers, projectors) are left to the caller."""
    skip = ("architectures", "auto_map", "model_type", *drop)
    with quiet_transformers():  # it would list the towers' and projectors' tensors as unexpected
        config = Qwen2Config.from_dict({k: v for k, v in raw_config.items() if k not in skip})
        llm, info = Qwen2ForCausalLM.from_pretrained(
            path,
            config=config,
            dtype=dtype,
            device_map={"": device},
            attn_implementation=attn_implementation,
            output_loading_info=True,
            use_kernels=use_kernels,
        )
    if info["missing_keys"] or info["mismatched_keys"]:
        raise ValueError(
            f"checkpoint {path}: LLM tensors missing {sorted(info['missing_keys'])[:8]}, "
            f"wrong shape {list(info['mismatched_keys'])[:8]}"
        )
    return llm


def repetition_penalty(folder: Path) -> float:
    """The ``repetition_penalty`` of the checkpoint's ``generation_config.json`` (a ``generate`` call applies it under
    greedy decoding too), 1.0 when there is none."""
    path = folder / "generation_config.json"
    if not path.is_file():
        return 1.0
    value = json.loads(path.read_text()).get("repetition_penalty", 1.0)
    return float(value) if value is not None else 1.0


def layer_indices(keys: Iterable[str], pattern: str) -> set[int]:
    """The numbers ``pattern``'s first group matches at the start of ``keys`` (the layers a checkpoint stores)."""
    return {int(match.group(1)) for key in keys if (match := re.match(pattern, key))}


def load_strict(module: nn.Module, what: str, tensors: dict[str, torch.Tensor], prefix: str = "") -> None:
    """``tensors`` (checkpoint names less ``prefix``) into ``module``; a missing or unexpected key is an error naming
    each such key with its ``prefix``."""
    result = module.load_state_dict(tensors, strict=False)
    problems = [f"missing {prefix}{key}" for key in result.missing_keys]
    problems += [f"unexpected {prefix}{key}" for key in result.unexpected_keys]
    if problems:
        raise ValueError(f"checkpoint {what}: " + "; ".join(problems))
