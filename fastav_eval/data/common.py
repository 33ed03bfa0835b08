"""What the dataset converters share: where prepared data lives, finding the official files, writing the result.

A prepared dataset is a folder ``<data root>/<name>/`` holding ``documents.jsonl`` (one document a line: the
official annotation fields unchanged, plus what the task needs, such as the absolute ``video_path``) and
``manifest.json`` (the source files, their SHA-256, counts). The data root is ``$FASTAV_EVAL_DATA``, else
``$XDG_CACHE_HOME/fastav_eval/data``, else ``~/.cache/fastav_eval/data``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA_ENV = "FASTAV_EVAL_DATA"
"""Environment variable naming the data root (the folder ``prepare-data --out`` wrote to)."""

FORMAT_VERSION = 1
"""Version of the prepared layout; the task loaders refuse a folder written by another version."""

DOCUMENTS_FILE = "documents.jsonl"
MANIFEST_FILE = "manifest.json"
MAX_LISTED = 5
"""How many offending entries an error message lists before it only counts the rest."""


def data_root() -> Path:
    """The folder prepared datasets live in (``$FASTAV_EVAL_DATA`` or the cache default)."""
    explicit = os.environ.get(DATA_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "fastav_eval" / "data"


def listing(items: Sequence[str]) -> str:
    """``a, b, c`` for a few items, ``a, b, ... (12 in all)`` for many."""
    shown = ", ".join(items[:MAX_LISTED])
    return shown if len(items) <= MAX_LISTED else f"{shown}, ... ({len(items)} in all)"


def find_annotation(source: Path, names: Sequence[str], dataset: str) -> Path:
    """The one file under ``source`` (searched recursively) whose name is one of ``names``.

    None or several is a ``ValueError`` that says what was looked for and how to pass the file explicitly.
    """
    found = sorted({path for name in names for path in source.rglob(name) if path.is_file()})
    if len(found) == 1:
        return found[0]
    wanted = " or ".join(names)
    if not found:
        raise ValueError(f"no {dataset} annotation file ({wanted}) under {source}; pass it with --annotations FILE")
    raise ValueError(
        f"several {dataset} annotation files ({wanted}) under {source}: {listing([str(p) for p in found])}; "
        "pick one with --annotations FILE"
    )


def read_json_list(path: Path) -> list[dict[str, Any]]:
    """A JSON file holding a list of objects (every official annotation file here is one)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {path} as JSON: {error}") from None
    if not isinstance(data, list) or not all(isinstance(entry, dict) for entry in data):
        raise ValueError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    if not data:
        raise ValueError(f"{path}: the annotation list is empty")
    return data


def require(entry: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``entry[key]``, checked to exist and to be of ``kind``; otherwise a ``ValueError`` naming the field."""
    if key not in entry:
        raise ValueError(f"{where}: missing field {key!r} (fields: {sorted(entry)})")
    value = entry[key]
    # bool is an int subclass: a JSON true is never a valid id, index or count
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        names = " or ".join(k.__name__ for k in _as_tuple(kind))
        raise ValueError(f"{where}: field {key!r} must be {names}, got {value!r}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


class VideoIndex:
    """Every video file under a folder (recursively), by file stem: the official downloads unpack into
    differently named sub-folders (MUSIC-AVQA's real and synthetic halves, AVHBench's ``videos/``), but every
    annotation names its clip by id, and ids are unique across a release."""

    def __init__(self, root: Path):
        from fastav_eval.models.media import VIDEO_EXTENSIONS

        self.root = root
        self._paths: dict[str, list[Path]] = {}
        for path in root.rglob("*"):
            if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file():
                self._paths.setdefault(path.stem, []).append(path.resolve())
        if not self._paths:
            raise ValueError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) under {root}")

    def __len__(self) -> int:
        return len(self._paths)

    def find(self, stem: str) -> Path | None:
        """The video named ``stem``; None when there is none. Two files of that name are an error."""
        paths = self._paths.get(stem)
        if not paths:
            return None
        if len(paths) > 1:
            raise ValueError(f"two videos named {stem!r} under {self.root}: {listing([str(p) for p in paths])}")
        return paths[0]


@dataclass
class Conversion:
    """The result of converting one official release: documents, and what the manifest records."""

    dataset: str
    documents: list[dict[str, Any]]
    annotations: Path
    videos: Path
    counts: dict[str, int]
    notes: dict[str, Any] = field(default_factory=dict)
    """What is worth recording and is no error: counts (questions the release marks deleted, null options) and,
    under ``--allow-missing``, ``missing_videos`` (:data:`MISSING_NOTE`)."""


MISSING_NOTE = "missing_videos"
"""The manifest note ``resolve_videos(..., allow_missing=True)`` writes: ``{"videos": K, "documents_dropped": D,
"documents_read": M, "first_ids": [...]}`` (the first :data:`MAX_LISTED_NOTE` missing ids, sorted)."""
MAX_LISTED_NOTE = 20


def resolve_videos(
    documents: Iterable[dict[str, Any]],
    index: VideoIndex,
    id_field: str,
    annotations: Path,
    check_audio: bool,
    allow_missing: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Set ``video_path`` on every document from its ``id_field``; return the documents kept and the notes.

    Every missing video is listed in one ``ValueError`` naming the field and the annotation file; with
    ``allow_missing`` their documents are dropped instead and counted under :data:`MISSING_NOTE` (all of them
    missing is still an error). With ``check_audio``, a video without a soundtrack is an error."""
    documents = list(documents)
    kept: list[dict[str, Any]] = []
    missing: list[str] = []
    for document in documents:
        path = index.find(str(document[id_field]))
        if path is None:
            missing.append(str(document[id_field]))
        else:
            document["video_path"] = str(path)
            kept.append(document)
    unique = sorted(set(missing))
    if missing and (not allow_missing or not kept):
        hint = "" if allow_missing else "; --allow-missing drops their documents"
        raise ValueError(
            f"{annotations.name}: {len(unique)} {id_field} value(s) have no video file under {index.root}: "
            f"{listing(unique)} (looked for <{id_field}>.mp4 or another video extension, in any sub-folder){hint}"
        )
    if check_audio:
        from fastav_eval.models.media import has_audio_track

        silent = sorted(path for path in {d["video_path"] for d in kept} if not has_audio_track(path))
        if silent:
            raise ValueError(
                f"{len(silent)} video(s) referenced by {annotations.name} have no audio track: {listing(silent)}; "
                "the audio-visual tasks need the soundtrack (--no-audio-check skips this check)"
            )
    notes: dict[str, Any] = {}
    if missing:
        notes[MISSING_NOTE] = {
            "videos": len(unique),
            "documents_dropped": len(missing),
            "documents_read": len(documents),
            "first_ids": unique[:MAX_LISTED_NOTE],
        }
    return kept, notes


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_prepared(conversion: Conversion, out: Path) -> Path:
    """Write ``<out>/<dataset>/documents.jsonl`` and ``manifest.json``; return that folder."""
    folder = out / conversion.dataset
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / DOCUMENTS_FILE).open("w", encoding="utf-8") as handle:
        for document in conversion.documents:
            handle.write(json.dumps(document, ensure_ascii=False) + "\n")
    manifest = {
        "dataset": conversion.dataset,
        "format_version": FORMAT_VERSION,
        "annotations": str(conversion.annotations.resolve()),
        "annotations_sha256": sha256(conversion.annotations),
        "videos": str(conversion.videos.resolve()),
        "documents": len(conversion.documents),
        "counts": conversion.counts,
        "notes": conversion.notes,
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return folder


def read_prepared(dataset: str) -> list[dict[str, Any]]:
    """The documents ``prepare-data`` wrote for ``dataset`` under :func:`data_root`.

    A missing or stale folder is a ``FileNotFoundError`` / ``ValueError`` that names the command to run.
    """
    folder = data_root() / dataset
    command = f"fastav-eval prepare-data {dataset} <the official {dataset} download folder>"
    manifest_path, documents_path = folder / MANIFEST_FILE, folder / DOCUMENTS_FILE
    if not manifest_path.is_file() or not documents_path.is_file():
        raise FileNotFoundError(
            f"{dataset} is not prepared: no {manifest_path}. Run `{command}` (it writes under {folder.parent}, "
            f"${DATA_ENV} or ~/.cache/fastav_eval/data; after `--out DIR`, set {DATA_ENV}=DIR)"
        )
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{manifest_path} was written by format version {manifest.get('format_version')!r}, this FastAV-Eval "
            f"reads version {FORMAT_VERSION}: run `{command}` again"
        )
    with documents_path.open(encoding="utf-8") as handle:
        documents = [json.loads(line) for line in handle if line.strip()]
    if len(documents) != manifest.get("documents"):
        raise ValueError(
            f"{documents_path} holds {len(documents)} documents, its manifest says {manifest.get('documents')}: "
            f"run `{command}` again"
        )
    return documents


def checked_video(document: dict[str, Any], dataset: str) -> str:
    """The document's ``video_path``, checked to still exist (the data may have moved since it was prepared)."""
    path = document.get("video_path")
    if not path or not Path(path).is_file():
        raise FileNotFoundError(
            f"{dataset} document {document.get('doc_key', '?')}: video {path!r} does not exist (moved since "
            f"`fastav-eval prepare-data {dataset}`? run it again on the download folder)"
        )
    return str(path)
