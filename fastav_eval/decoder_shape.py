"""Which text decoder this is: its sizes (:class:`DecoderShape`), from which the engine counts FLOPs, the run record
stores ``decoder_shape`` and ``language_model``, and a learned policy records the decoder it was trained for.

A leaf that imports nothing of the package, nor torch: the engine (:mod:`fastav_eval.pruning.flops`) and the
records (:mod:`fastav_eval.records`, read by ``report`` without torch) both read it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class DecoderShape:
    """The sizes that set a decoder layer's cost.

    A mixture-of-experts decoder also has ``num_experts`` (> 0), ``num_experts_per_tok`` (the experts each token
    runs), ``moe_intermediate_size`` (one expert's width) and ``dense_layers``, the layers whose MLP is a dense one of
    ``intermediate_size`` (Qwen3's ``mlp_only_layers`` and those ``decoder_sparse_step`` skips). A dense decoder
    leaves them at 0 / empty.
    """

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    dense_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "dense_layers", tuple(int(layer) for layer in self.dense_layers))  # JSON gives lists
        if self.num_experts and not 0 < self.num_experts_per_tok <= self.num_experts:
            raise ValueError(
                f"num_experts_per_tok={self.num_experts_per_tok}; accepted: 1 to num_experts ({self.num_experts})"
            )

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @classmethod
    def from_config(cls, config: Any) -> DecoderShape:
        """Read the shape from a transformers text config (or a config with a ``text_config``)."""
        config = getattr(config, "text_config", None) or config
        num_heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
        num_layers = config.num_hidden_layers
        moe: dict[str, Any] = {}
        num_experts = getattr(config, "num_experts", 0) or 0
        if num_experts:  # Qwen3-MoE's rule for which layers get experts
            step = getattr(config, "decoder_sparse_step", 1) or 1
            dense_only = set(getattr(config, "mlp_only_layers", None) or [])
            moe = {
                "num_experts": num_experts,
                "num_experts_per_tok": config.num_experts_per_tok,
                "moe_intermediate_size": config.moe_intermediate_size,
                "dense_layers": tuple(i for i in range(num_layers) if i in dense_only or (i + 1) % step),
            }
        return cls(
            num_layers=num_layers,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_heads=num_heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or num_heads,
            head_dim=head_dim,
            **moe,
        )

    def to_dict(self) -> dict[str, Any]:
        """``{field: size}``: the run record's ``decoder_shape`` (a dense decoder's without the expert fields)."""
        shape = asdict(self)
        if not self.is_moe:
            for name in MOE_FIELDS:
                del shape[name]
        else:
            shape["dense_layers"] = list(self.dense_layers)
        return shape

    def identity(self, model_type: str | None) -> dict[str, Any]:
        """What a learned policy is bound to: ``{"model_type", "num_layers", "hidden_size"}``."""
        return {"model_type": model_type, "num_layers": int(self.num_layers), "hidden_size": int(self.hidden_size)}

    def label(self, model_type: str | None) -> str:
        """The run record's ``language_model``: the family and size, e.g. ``qwen2 (28 layers, d 3584)`` or
        ``qwen3_omni_moe_text (48 layers, d 2048, 8 of 128 experts)``."""
        experts = f", {self.num_experts_per_tok} of {self.num_experts} experts" if self.is_moe else ""
        return f"{model_type} ({self.num_layers} layers, d {self.hidden_size}{experts})"


MOE_FIELDS: tuple[str, ...] = ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "dense_layers")
""":class:`DecoderShape`'s mixture-of-experts fields: in a run record's ``decoder_shape`` for such a decoder only."""
SHAPE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(DecoderShape) if f.name not in MOE_FIELDS)
""":class:`DecoderShape`'s other fields: the keys of every run record's ``decoder_shape``."""
