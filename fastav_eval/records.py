"""The two records an evaluation leaves behind, one definition each.

- :class:`SampleRecord` (``fastav-sample/1``): what one evaluated sample cost and kept. The lmms-eval wrappers
  write it as the sample's ``token_counts[0]`` in lmms-eval's samples file; ``report``, ``verify``, the testbed
  harness and the RL environments read it back with :meth:`SampleRecord.from_dict`.
- :class:`RunRecord` (``fastav-run/1``): the provenance of one run (the resolved pruning config and its hash, the
  profile and the weights with their hashes, versions, device, dtype, the decoder's shape) and the per-task means
  of the sample records. The wrappers write it next to lmms-eval's results JSON as ``<date>_fastav.json``.

Both are plain JSON; reading checks the format tag and every field, and names the one that is wrong.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastav_eval.decoder_shape import MOE_FIELDS, SHAPE_FIELDS

if TYPE_CHECKING:
    from fastav_eval.pruning.plan import SampleStats

SAMPLE_FORMAT = "fastav-sample/1"
RUN_FORMAT = "fastav-run/1"
RUN_SUFFIX = "_fastav.json"
"""The run record of ``<date>_results.json`` is ``<date>_fastav.json`` in the same folder."""

MEAN_FIELDS: tuple[str, ...] = ("relative_flops", "relative_flops_exact", "prefill_ms", "peak_memory_mb",
                                "video_tokens", "audio_tokens", "video_kept_mean", "audio_kept_mean",
                                "retention")  # fmt: skip
"""The per-sample figures whose means a run reports (per task and pooled)."""
LATER_MEAN_FIELDS: tuple[str, ...] = ("retention",)
"""Means added to :data:`MEAN_FIELDS` after the first run records: a record written before has none of them."""
DERIVED_FIELDS: tuple[str, ...] = ("input_tokens", "video_tokens", "audio_tokens", "video_kept_mean", "audio_kept_mean")
"""The :class:`SampleRecord` fields that follow from its ``kept_per_layer`` (:func:`derived_fields`)."""


def _fail(where: str, value: Any, accepted: str) -> ValueError:
    text = repr(value)
    return ValueError(f"{where}={text if len(text) <= 80 else text[:77] + '...'}; accepted: {accepted}")


def _number(where: str, value: Any, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(where, value, "a finite number" + (" or absent" if optional else ""))
    return float(value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _count(where: str, value: Any) -> int:
    if not _is_count(value):
        raise _fail(where, value, "an int >= 0")
    return value


def read_json(path: str | Path, what: str) -> Any:
    """The JSON in ``path``; an unreadable file or invalid JSON is a ValueError naming ``what`` and the path."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{what} {str(path)!r} cannot be read as JSON: {error}") from error


def write_atomic(path: str | Path, content: bytes | str) -> Path:
    """Write ``content`` (text as UTF-8) to ``path`` atomically: a reader never sees half a file, and two processes
    writing the same path (sweep shards) each rename a whole file of their own into place."""
    path = Path(path)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    partial.replace(path)
    return path


def write_json(path: str | Path, data: Any, indent: int = 2, sort_keys: bool = False) -> Path:
    """Write ``data`` as JSON (strict: no NaN) to ``path`` atomically (:func:`write_atomic`)."""
    return write_atomic(path, json.dumps(data, indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n")


def sha256_of(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def canonical_hash(value: Any) -> str:
    """sha256 of ``value`` as canonical JSON (sorted keys, no spaces): equal settings hash equal."""
    return sha256_of(json.dumps(value, sort_keys=True, separators=(",", ":")))


def prompt_counts(
    kept_per_layer: Mapping[str, Sequence[int]], prompt_per_modality: Mapping[str, int] | None = None
) -> dict[str, int]:
    """modality -> the prompt's tokens of it before the decoder: ``prompt_per_modality`` where an input cut dropped
    some before layer 0, else layer 0's counts."""
    if prompt_per_modality is not None:
        return {name: int(count) for name, count in prompt_per_modality.items()}
    return {name: int(counts[0]) for name, counts in kept_per_layer.items() if len(counts)}


def derived_fields(
    kept_per_layer: Mapping[str, Sequence[int]], prompt_per_modality: Mapping[str, int] | None = None
) -> dict[str, int | float]:
    """The :data:`DERIVED_FIELDS` of a sample that kept ``kept_per_layer`` (modality -> ``[num_layers]`` counts):
    the prompt's tokens (all modalities, before any cut: :func:`prompt_counts`), each audio-visual modality's tokens
    before pruning and their mean over layers (0 for a modality the sample lacks). Both the record's writer and
    ``verify`` derive them here."""
    num_layers = len(next(iter(kept_per_layer.values()), ()))
    prompt = prompt_counts(kept_per_layer, prompt_per_modality)
    derived: dict[str, int | float] = {"input_tokens": sum(prompt.values())}
    for modality in ("video", "audio"):
        derived[f"{modality}_tokens"] = prompt.get(modality, 0)
        derived[f"{modality}_kept_mean"] = sum(kept_per_layer.get(modality, [0])) / num_layers
    return derived


def retention(
    kept_per_layer: Mapping[str, Sequence[int]], prompt_per_modality: Mapping[str, int] | None = None
) -> float:
    """The share (%) of a sample's audio-visual tokens the decoder kept, as AVEX-Prune's "40% token retention":
    the mean over decoder layers of the video + audio tokens each layer processed, over the video + audio tokens
    before pruning (the prompt's: :func:`prompt_counts`)::

        retention = 100 · Σ_l (video_l + audio_l) / (num_layers · (video_0 + audio_0))

    For pruning before the decoder (a cut at layer 0, as AVEX-Prune keeps 40% of its input) this is the share
    kept; a cut at layer ``c`` keeping a share ``r`` is charged ``(c + (num_layers - c) · r) / num_layers``, so the
    full-token layers before a cut count, as they do in the FLOPs, and a fine stage's further drops count too.
    Unlike relative FLOPs it leaves out the text tokens and how attention's cost grows with the sequence.
    ``kept_per_layer``: modality -> ``[num_layers]`` counts (a :class:`SampleRecord`'s); a modality it lacks
    counts 0. A sample with no audio-visual tokens has no retention: a ValueError names it."""
    counts = [kept_per_layer.get(name, ()) for name in ("video", "audio")]
    num_layers = len(next(iter(kept_per_layer.values()), ()))
    if num_layers == 0 or any(len(c) not in (0, num_layers) for c in counts):
        raise _fail("kept_per_layer", dict(kept_per_layer), "modality -> one count per decoder layer, equal lengths")
    prompt = prompt_counts(kept_per_layer, prompt_per_modality)
    total = prompt.get("video", 0) + prompt.get("audio", 0)
    if total == 0:
        raise _fail(
            "kept_per_layer", dict(kept_per_layer),
            "counts with audio-visual (video or audio) tokens at layer 0 (retention is their kept share)",
        )  # fmt: skip
    kept = sum(int(value) for c in counts for value in c)
    return 100.0 * kept / (num_layers * total)


@dataclass(frozen=True)
class SampleRecord:
    """One evaluated sample, as the wrapper measured it.

    Attributes:
        prune: the wrapper's ``prune`` mode ("fastav" or "none").
        input_tokens: the prompt's tokens (text + audio-visual), before any cut; 0 for a failed sample.
        output_tokens: tokens generated.
        kept_per_layer: modality ("text" / "video" / "audio") -> tokens of it each decoder layer processed.
        relative_flops: prefill FLOPs against the unpruned prefill (= 100), FastV's convention; None if failed.
        relative_flops_exact: the same with grouped-query projections and a SwiGLU MLP.
        prefill_ms: the prefill's wall time (a batch's time divided by its size).
        video_tokens, audio_tokens: the sample's audio-visual tokens before pruning.
        video_kept_mean, audio_kept_mean: mean over layers of the tokens of that modality each layer processed.
        peak_memory_mb: peak CUDA memory of the batch (None on CPU).
        error: why the sample could not be answered (``on_error=record``), else None.
        decision: what a learned policy chose for this sample (its own JSON), else None.
        prompt_per_modality: modality -> the prompt's tokens before the decoder, present only where a cut before
            layer 0 (input pruning) dropped some; absent, layer 0's counts are the prompt's.
    """

    prune: str
    input_tokens: int
    output_tokens: int
    kept_per_layer: dict[str, list[int]] = field(default_factory=dict)
    relative_flops: float | None = None
    relative_flops_exact: float | None = None
    prefill_ms: float | None = None
    video_tokens: int = 0
    audio_tokens: int = 0
    video_kept_mean: float = 0.0
    audio_kept_mean: float = 0.0
    peak_memory_mb: float | None = None
    error: str | None = None
    decision: dict[str, Any] | None = None
    prompt_per_modality: dict[str, int] | None = None

    @classmethod
    def measured(
        cls,
        prune: str,
        stats: SampleStats,
        output_tokens: int,
        prefill_ms: float,
        peak_memory_mb: float | None = None,
        decision: dict[str, Any] | None = None,
    ) -> SampleRecord:
        """The record of an answered sample from the engine's per-sample statistics (``PrefillStats.sample``,
        given the decoder's shape); the :data:`DERIVED_FIELDS` come from :func:`derived_fields`."""
        if stats.relative_flops is None or stats.relative_flops_exact is None:
            raise ValueError("SampleStats without relative FLOPs; accepted: PrefillStats.sample(index, shape)")
        kept = {name: [int(c) for c in counts] for name, counts in stats.kept_per_layer.items()}
        prompt = stats.prompt_per_modality
        return cls(
            prune=prune,
            output_tokens=int(output_tokens),
            kept_per_layer=kept,
            relative_flops=float(stats.relative_flops),
            relative_flops_exact=float(stats.relative_flops_exact),
            prefill_ms=float(prefill_ms),
            peak_memory_mb=peak_memory_mb,
            decision=decision,
            prompt_per_modality=None if prompt is None else {name: int(c) for name, c in prompt.items()},
            **derived_fields(kept, prompt),
        )

    @classmethod
    def failed(cls, prune: str, reason: str) -> SampleRecord:
        return cls(prune=prune, input_tokens=0, output_tokens=0, error=reason)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def retention(self) -> float | None:
        """The share (%) of the sample's audio-visual tokens kept (:func:`retention`); None for a failed sample or
        one without audio-visual tokens."""
        if not self.ok:
            return None
        prompt = prompt_counts(self.kept_per_layer, self.prompt_per_modality)
        if not prompt.get("video", 0) + prompt.get("audio", 0):
            return None
        return retention(self.kept_per_layer, self.prompt_per_modality)

    @property
    def tokens_per_layer(self) -> list[int]:
        """Tokens each layer processed, all modalities together."""
        return [sum(layer) for layer in zip(*self.kept_per_layer.values(), strict=True)]

    def figures(self) -> dict[str, float]:
        """The :data:`MEAN_FIELDS` this sample has (none for a failed one)."""
        if not self.ok:
            return {}
        return {name: float(getattr(self, name)) for name in MEAN_FIELDS if getattr(self, name) is not None}

    def to_dict(self) -> dict[str, Any]:
        """JSON object with the format tag; unset optional fields are left out."""
        data = {name: value for name, value in asdict(self).items() if value is not None}
        if not self.ok:
            data = {key: data[key] for key in ("prune", "input_tokens", "output_tokens", "error")}
        return {"format": SAMPLE_FORMAT, **data}

    @classmethod
    def from_dict(cls, data: Any, where: str = "sample record") -> SampleRecord:
        """The record a :meth:`to_dict` object describes; keys other than its fields are ignored (lmms-eval adds
        ``reasoning_tokens``), a missing or malformed field is a ValueError naming it."""
        if not isinstance(data, dict):
            raise _fail(where, data, f"a JSON object with format {SAMPLE_FORMAT!r}")
        if data.get("format") != SAMPLE_FORMAT:
            raise _fail(f"{where} format", data.get("format"), repr(SAMPLE_FORMAT))
        for name in ("prune", "input_tokens", "output_tokens"):
            if name not in data:
                raise ValueError(f"{where} has no {name!r}")
        if not isinstance(data["prune"], str):
            raise _fail(f"{where} prune", data["prune"], "a string")
        values: dict[str, Any] = {
            "prune": data["prune"],
            "input_tokens": _count(f"{where} input_tokens", data["input_tokens"]),
            "output_tokens": _count(f"{where} output_tokens", data["output_tokens"]),
        }
        if data.get("error") is not None:
            if not isinstance(data["error"], str):
                raise _fail(f"{where} error", data["error"], "a string")
            return cls(**values, error=data["error"])
        kept = data.get("kept_per_layer")
        if not isinstance(kept, dict) or not kept:
            raise _fail(f"{where} kept_per_layer", kept, "an object of modality -> list of per-layer counts")
        lengths = {len(v) if isinstance(v, list) else -1 for v in kept.values()}
        if len(lengths) != 1 or -1 in lengths:
            raise _fail(f"{where} kept_per_layer", kept, "lists of equal length, one count per layer")
        values["kept_per_layer"] = {
            name: [_count(f"{where} kept_per_layer.{name}", c) for c in counts] for name, counts in kept.items()
        }
        for name in ("relative_flops", "relative_flops_exact", "prefill_ms", "video_kept_mean", "audio_kept_mean"):
            values[name] = _number(f"{where} {name}", data.get(name))
        values["peak_memory_mb"] = _number(f"{where} peak_memory_mb", data.get("peak_memory_mb"), optional=True)
        for name in ("video_tokens", "audio_tokens"):
            values[name] = _count(f"{where} {name}", data.get(name))
        decision = data.get("decision")
        if decision is not None and not isinstance(decision, dict):
            raise _fail(f"{where} decision", decision, "an object or absent")
        prompt = data.get("prompt_per_modality")
        layer_0 = {name: counts[0] for name, counts in values["kept_per_layer"].items()}
        if prompt is not None and (
            not isinstance(prompt, dict) or set(prompt) != set(layer_0)
            or not all(_is_count(count) and count >= layer_0[name] for name, count in prompt.items())
            or prompt.get("text", 0) != layer_0.get("text", 0)
        ):  # fmt: skip
            raise _fail(
                f"{where} prompt_per_modality", prompt,
                "absent, or kept_per_layer's modalities -> ints at least layer 0's count, text equal to it (a cut "
                "before the decoder drops audio-visual tokens only)",
            )  # fmt: skip
        return cls(**values, decision=decision, prompt_per_modality=prompt)


def means(records: Iterable[SampleRecord]) -> dict[str, float]:
    """Means of the :data:`MEAN_FIELDS` over the answered records, plus ``n`` and ``failed`` counts."""
    records = list(records)
    answered = [r.figures() for r in records if r.ok]
    result: dict[str, float] = {"n": len(records), "failed": len(records) - len(answered)}
    for name in MEAN_FIELDS:
        values = [figures[name] for figures in answered if name in figures]
        if values:
            result[name] = sum(values) / len(values)
    return result


@dataclass(frozen=True)
class RunRecord:
    """Where one run's numbers came from.

    Attributes:
        model: the lmms-eval model name (``fastav_tiny``, ...); ``adapter``: the adapter's name.
        model_args: the ``--model_args`` string as given.
        prune: "fastav" or "none".
        pruning: the resolved engine config (:meth:`fastav_eval.pruning.PruningConfig.to_dict`).
        pruning_hash: :func:`canonical_hash` of ``pruning``.
        profile: ``{"path", "sha256", "describe"}`` of the profile file the config read, or None.
        weights: ``{"name", "files": {relative path: sha256}, "revision"}`` of the model's weights.
        versions: fastav-eval (and its git commit when run from a checkout), torch, transformers, lmms-eval, python.
        device, dtype, attn_implementation: where and how it ran (``device``: type, name, count).
        language_model: the text decoder's family and size (:meth:`~fastav_eval.decoder_shape.DecoderShape.label`),
            e.g. ``qwen2 (28 layers, d 3584)``.
        decoder_shape: the text decoder's sizes (:meth:`fastav_eval.decoder_shape.DecoderShape.to_dict`), from which
            ``verify`` recomputes each sample's FLOPs.
        tasks: task -> the :func:`means` of its sample records; ``overall``: the means over all samples.
        seed: the engine's seed (random rules); lmms-eval's seeds are in its results JSON.
        date: lmms-eval's ``date`` of the run (the results file's prefix).
        use_kernels: whether transformers' hub kernels were swapped in at load (the ``use_kernels`` model arg);
            a record written before the field existed ran without them (transformers < 5.25 kept them off).
    """

    model: str
    adapter: str
    model_args: str
    prune: str
    pruning: dict[str, Any]
    pruning_hash: str
    profile: dict[str, Any] | None
    weights: dict[str, Any]
    versions: dict[str, Any]
    device: dict[str, Any]
    dtype: str
    attn_implementation: str
    language_model: str
    decoder_shape: dict[str, int]
    tasks: dict[str, dict[str, float]]
    overall: dict[str, float]
    seed: int
    date: str
    use_kernels: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"format": RUN_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Any, where: str = "run record") -> RunRecord:
        if not isinstance(data, dict):
            raise _fail(where, data, f"a JSON object with format {RUN_FORMAT!r}")
        if data.get("format") != RUN_FORMAT:
            raise _fail(f"{where} format", data.get("format"), repr(RUN_FORMAT))
        names = [f.name for f in fields(cls)]
        optional = {f.name for f in fields(cls) if f.default is not MISSING}
        missing = [name for name in names if name not in data and name not in optional]
        if missing:
            raise ValueError(f"{where} lacks {missing}; a {RUN_FORMAT} record has {names}")
        for name in ("model", "adapter", "model_args", "prune", "pruning_hash", "dtype", "attn_implementation",
                     "language_model", "date"):  # fmt: skip
            if not isinstance(data[name], str):
                raise _fail(f"{where} {name}", data[name], "a string")
        for name in ("pruning", "weights", "versions", "device", "tasks", "overall", "decoder_shape"):
            if not isinstance(data[name], dict):
                raise _fail(f"{where} {name}", data[name], "an object")
        if data["profile"] is not None and not isinstance(data["profile"], dict):
            raise _fail(f"{where} profile", data["profile"], "an object or null")
        shape = data["decoder_shape"]
        moe = sorted(shape) == sorted((*SHAPE_FIELDS, *MOE_FIELDS))
        counts = [key for key in shape if key != "dense_layers"]
        dense_layers = shape.get("dense_layers", [])
        if (
            (sorted(shape) != sorted(SHAPE_FIELDS) and not moe)
            or not all(_is_count(shape[key]) and shape[key] > 0 for key in counts)
            or not (isinstance(dense_layers, list) and all(_is_count(layer) for layer in dense_layers))
        ):
            raise _fail(
                f"{where} decoder_shape",
                shape,
                f"an object of ints >= 1 with exactly {list(SHAPE_FIELDS)}, plus {list(MOE_FIELDS)} for a "
                "mixture-of-experts decoder (dense_layers a list of layer indices)",
            )
        if not _is_count(data["seed"]):
            raise _fail(f"{where} seed", data["seed"], "an int >= 0")
        if not isinstance(data.get("use_kernels", False), bool):
            raise _fail(f"{where} use_kernels", data["use_kernels"], "true or false")
        record = cls(**{name: data[name] for name in names if name in data})
        if canonical_hash(record.pruning) != record.pruning_hash:
            raise ValueError(f"{where} pruning_hash {record.pruning_hash} is not the hash of its pruning config")
        return record

    def save(self, path: str | Path) -> Path:
        """Write atomically (a reader never sees half a file)."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> RunRecord:
        return cls.from_dict(read_json(path, "run record"), where=f"run record {Path(path).name}")


def run_record_path(results_json: str | Path) -> Path:
    """``<folder>/<date>_results.json`` -> ``<folder>/<date>_fastav.json``."""
    path = Path(results_json)
    if not path.name.endswith("_results.json"):
        raise ValueError(f"{str(path)!r} is not an lmms-eval results file (<date>_results.json)")
    return path.with_name(path.name.removesuffix("_results.json") + RUN_SUFFIX)
