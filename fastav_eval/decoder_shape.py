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
    """The sizes that set a decoder layer's cost."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config: Any) -> DecoderShape:
        """Read the shape from a transformers text config (or a config with a ``text_config``)."""
        config = getattr(config, "text_config", None) or config
        num_heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
        return cls(
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_heads=num_heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or num_heads,
            head_dim=head_dim,
        )

    def to_dict(self) -> dict[str, int]:
        """``{field: size}``: the run record's ``decoder_shape``."""
        return asdict(self)

    def identity(self, model_type: str | None) -> dict[str, Any]:
        """What a learned policy is bound to: ``{"model_type", "num_layers", "hidden_size"}``."""
        return {"model_type": model_type, "num_layers": int(self.num_layers), "hidden_size": int(self.hidden_size)}

    def label(self, model_type: str | None) -> str:
        """The run record's ``language_model``: the family and size, e.g. ``qwen2 (28 layers, d 3584)``."""
        return f"{model_type} ({self.num_layers} layers, d {self.hidden_size})"


SHAPE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(DecoderShape))
""":class:`DecoderShape`'s fields: the keys of a run record's ``decoder_shape``."""
