"""The environments' per-sample first pass, cached on disk and shared by processes and runs.

A first pass is what an environment computes once per document before any action: TokenRetention's unpruned pass
(the observation at layer 1 and the full-token outcome), TokenExchange's FastAV pass (the starting keep set at K,
FastAV's outcome and, under ``reward="caption"``, the document's full-token caption from one unpruned pass more).
On a 7B model it is a full prefill and an answer, so ``train-policy``'s workers share one folder of them
(``--cache-dir``) instead of each computing every document again.

Format: one JSON file per (setting, document), ``<folder>/<sha256 of the key>.json``::

    {"format": "fastav-first-pass/3", "key": {...}, "value": {...}}

(``/3``: an outcome holds the reference answer's log-probability, ``reference_logprob``, null where the reward
computes none, beside its generated ``answer``, so that ``reward="caption"`` can score it again on read, and a
TokenExchange value holds ``full_caption``, the document's full-token caption under ``caption``, else null. ``/2``
had neither; ``/1`` held the last layer's counts only, where ``/2`` holds the tokens of each modality every layer
processed, ``kept_per_layer``, from which both the kept counts and the retention budget follow. The format is part
of the key, so an older entry hashes to another file name and is never read as a ``/3`` one.)

The key holds everything the value depends on (:meth:`FirstPassCache.key`): the model (name, model args other than
the device, the sha256 of every weight file, dtype, the device type and GPU model, torch / transformers /
fastav-eval versions), the environment's settings that shape the pass (the resolved engine config with its profile,
the observation coding, the reward kind, the answer lengths) and the document (id, media SHA-1, question, reference
answer, choices). Not the corpus of caption references a CIDEr-D is weighted by (the environment's documents): a
value keeps what its quality is computed from (the generated answer, the reference's log-probability, the
full-token caption), and the environment scores it again on read. A file is read as data (``json``; nothing is
unpickled or imported), its key compared in full with the one wanted and every field checked for type, dtype and
shape: a corrupt or mismatched file is recomputed and rewritten, with a warning, never trusted. Arrays are stored as
``{"dtype", "shape", "values"}``; float32 and float64 values round-trip through JSON exactly.

Concurrency: an entry is written by :func:`~fastav_eval.records.write_atomic` (a file of the writer's own, renamed
into place), so a reader sees a whole file or none, and two processes computing the same entry at once each rename
a whole, equal file: the last one stays. Nothing is locked: two workers that reach the same cold document at the
same moment both compute it.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from fastav_eval.provenance import weights_identity
from fastav_eval.records import canonical_hash, write_json

logger = logging.getLogger(__name__)

FORMAT = "fastav-first-pass/3"
"""Bump when what a first pass computes changes in a way its key does not show."""
DTYPES = ("float32", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
"""The array dtypes an entry may hold."""
T = TypeVar("T")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def model_identity(model: str, model_args: Mapping[str, Any], adapter: Any) -> dict[str, Any]:
    """What a loaded model's outputs depend on, device placement aside: ``model``, its typed ``model_args`` without
    ``device`` (arguments naming a weight folder are replaced by that folder's file hashes, so a copy of the same
    weights elsewhere hits), the weights (:func:`~fastav_eval.provenance.weights_identity`), the parameters' dtype,
    the device type (and GPU model: numerics differ between kinds of device, not between two equal GPUs) and the
    versions of torch, transformers and fastav-eval."""
    weights = weights_identity(adapter.weight_sources())
    hashed = {entry["source"] for entry in weights["sources"] if entry["files"]}
    args = {
        key: str(value) for key, value in sorted(model_args.items()) if key != "device" and str(value) not in hashed
    }
    sources = [
        {"files": entry["files"], "revision": entry["revision"]}
        if entry["files"]
        else {"source": entry["source"], "revision": entry["revision"]}
        for entry in weights["sources"]
    ]
    device = torch.device(adapter.device)
    parameter = next(adapter.decoder.parameters(), None)
    return {
        "model": model,
        "model_args": args,
        "weights": sources,
        "dtype": str(parameter.dtype) if parameter is not None else None,
        "device": {"type": device.type, "name": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "versions": {name: _version(name) for name in ("torch", "transformers", "fastav-eval")},
    }


def document_identity(document: Mapping[str, Any]) -> dict[str, Any]:
    """What a pass reads of an AV-Synth document: its id, media SHA-1, question, reference answer and choices."""
    return {name: document.get(name) for name in ("task", "id", "media_sha1", "question", "answer", "choices")}


def first_pass_of(
    memo: dict[int, T],
    index: int,
    cache: FirstPassCache | None,
    document: Mapping[str, Any],
    compute: Callable[[], T],
    encode: Callable[[T], dict[str, Any]],
    decode: Callable[[Mapping[str, Any]], T],
) -> T:
    """Document ``index``'s first pass, held in ``memo``: computed once per process, and with a ``cache`` read from
    or written to its entry (:meth:`FirstPassCache.fetch`) instead of recomputed by every process and run."""
    if index not in memo:
        memo[index] = compute() if cache is None else cache.fetch(document, compute, encode, decode)
    return memo[index]


class FirstPassCache:
    """One environment setting's first passes in ``folder``.

    Args:
        folder: the cache folder (created on the first write); several settings and processes may share it.
        setting: what every entry of this environment depends on beside the document (:func:`model_identity`
            and the environment's own settings), JSON data.

    Attributes:
        hits, computed, rejected: entries read, computed (missing or rejected), and rejected as corrupt or
            mismatched, by this instance.
    """

    def __init__(self, folder: str | Path, setting: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.setting = dict(setting)
        self.hits = self.computed = self.rejected = 0

    def key(self, document: Mapping[str, Any]) -> dict[str, Any]:
        return {"format": FORMAT, **self.setting, "document": document_identity(document)}

    def path(self, document: Mapping[str, Any]) -> Path:
        return self._path_of(self.key(document))

    def _path_of(self, key: Mapping[str, Any]) -> Path:
        return self.folder / f"{canonical_hash(key)}.json"

    def fetch(
        self,
        document: Mapping[str, Any],
        compute: Callable[[], T],
        encode: Callable[[T], dict[str, Any]],
        decode: Callable[[Mapping[str, Any]], T],
    ) -> T:
        """``document``'s first pass: read from its entry when that is whole and of this key (``decode`` checks the
        value and raises ValueError, KeyError or TypeError on anything else), else ``compute()``-d and written."""
        key = self.key(document)
        path = self._path_of(key)
        if path.is_file():
            try:
                value = decode(self._read(path, key))
            except (ValueError, KeyError, TypeError) as error:
                self.rejected += 1
                logger.warning("first-pass cache entry %s is not usable (%s): recomputing it", path, error)
            else:
                self.hits += 1
                return value
        value = compute()
        self.computed += 1
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json(path, {"format": FORMAT, "key": key, "value": encode(value)}, indent=None, sort_keys=True)
        except (OSError, ValueError) as error:  # a read-only folder, a non-finite value: the pass still counts
            logger.warning("first pass of %s not cached in %s: %s", document.get("id"), path, error)
        return value

    @staticmethod
    def _read(path: Path, key: dict[str, Any]) -> Mapping[str, Any]:
        import json

        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"not JSON: {error}") from error
        if not isinstance(entry, dict) or entry.get("format") != FORMAT:
            raise ValueError(f"format={entry.get('format') if isinstance(entry, dict) else None!r}; wanted {FORMAT!r}")
        if entry.get("key") != json.loads(json.dumps(key)):
            raise ValueError("its key is not the one wanted (another setting or document)")
        value = entry.get("value")
        if not isinstance(value, dict):
            raise ValueError("value: not a JSON object")
        return value


# ---------------------------------------------------------------------------------------------- values as JSON
def encode_array(array: np.ndarray) -> dict[str, Any]:
    """``{"dtype", "shape", "values"}`` (flat, in C order): exact for every dtype of :data:`DTYPES`."""
    if array.dtype.name not in DTYPES:
        raise ValueError(f"dtype={array.dtype.name!r}; accepted: {list(DTYPES)}")
    return {"dtype": array.dtype.name, "shape": list(array.shape), "values": array.reshape(-1).tolist()}


def decode_array(
    data: Any, name: str, dtypes: tuple[str, ...] = DTYPES, shape: tuple[int | None, ...] | None = None
) -> np.ndarray:
    """The array :func:`encode_array` wrote, checked: a dtype of ``dtypes``, ``shape`` (None: any size on that
    axis), as many values as the shape holds, each of the dtype's kind and finite."""
    if not isinstance(data, dict) or set(data) != {"dtype", "shape", "values"}:
        raise ValueError(f"{name}: not an array entry")
    dtype, dims, values = data["dtype"], data["shape"], data["values"]
    if dtype not in dtypes:
        raise ValueError(f"{name}.dtype={dtype!r}; accepted: {list(dtypes)}")
    if not isinstance(dims, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise ValueError(f"{name}.shape={dims!r}; accepted: a list of ints >= 0")
    if shape is not None and (
        len(dims) != len(shape) or any(w is not None and w != d for w, d in zip(shape, dims, strict=True))
    ):
        raise ValueError(f"{name}.shape={dims}; accepted: {list(shape)}")
    if not isinstance(values, list) or len(values) != math.prod(dims):
        raise ValueError(f"{name}.values: not a list of {math.prod(dims)} values")
    if dtype == "bool":
        kind_ok = all(isinstance(v, bool) for v in values)
    elif dtype.startswith(("int", "uint")):
        kind_ok = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    else:
        kind_ok = all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    if not kind_ok:
        raise ValueError(f"{name}.values: not all {dtype}")
    try:
        return np.asarray(values, dtype=dtype).reshape(dims)
    except OverflowError as error:
        raise ValueError(f"{name}.values: out of the range of {dtype}") from error
