"""Deterministic AV-Synth splits: documents (question, answer, scene) and their rendered media.

A document stores its scene as JSON plus the SHA-1 of the rendered media; :func:`load_media` renders the clip and
checks that fingerprint, so a shipped split of a few hundred kilobytes stands for megabytes of frames and audio and
any drift in the renderer is an error, not a silently different benchmark. ``with_media=True`` stores the frames and
waveform in the dataset as well.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fastav_eval.avsynth.questions import KINDS, TASKS, make_example
from fastav_eval.avsynth.scene import Scene, media_sha1, render_audio, render_video

SPLITS = {"train": 0, "val": 1, "test": 2}
DEFAULT_SEED = 20261121


# Fixed stream ids: adding a task must never reseed the existing ones.
TASK_STREAMS = {"avsynth_caption": 0, "avsynth_halluc": 1, "avsynth_match": 2, "avsynth_qa": 3}
TRAINING_STREAM = 99


def _rng(seed: int, split: str, task: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS[split], TASK_STREAMS[task], index])


def build_documents(split: str, task: str, count: int, seed: int = DEFAULT_SEED) -> list[dict]:
    """``count`` documents of ``task``: its kinds in turn, and each kind's answers in turn (exactly balanced)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}; got {split!r}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}; got {task!r}")
    kinds = TASKS[task]
    documents = []
    for index in range(count):
        kind = KINDS[kinds[index % len(kinds)]]
        turn = index // len(kinds)
        answer = kind.choices[turn % len(kind.choices)] if kind.choices else None
        document = make_example(kind.name, _rng(seed, split, task, index), answer)
        scene = Scene.from_json(document["scene"])
        document["media_sha1"] = media_sha1(render_video(scene), render_audio(scene))
        documents.append({"id": f"{task}-{split}-{index:05d}", "split": split, **document})
    return documents


def load_media(document: dict) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``[8, 32, 32, 3]`` uint8 and waveform ``[32000]`` float32 of a document (stored or rendered+checked)."""
    if document.get("frames") is not None:
        return np.asarray(document["frames"], dtype=np.uint8), np.asarray(document["waveform"], dtype=np.float32)
    scene = Scene.from_json(document["scene"])
    frames, waveform = render_video(scene), render_audio(scene)
    expected = document.get("media_sha1")
    if expected is not None and media_sha1(frames, waveform) != expected:
        raise ValueError(
            f"document {document.get('id')!r}: rendered media do not match media_sha1 {expected}; "
            "the AV-Synth renderer changed since this split was written; rebuild it with "
            "`fastav-eval build-avsynth --split test --per-task 240 --out tasks/avsynth/data`"
        )
    return frames, waveform


def training_stream(kinds: dict[str, float], seed: int) -> Iterator[dict]:
    """An endless, reproducible stream of training examples, kinds drawn with the given weights."""
    names = sorted(kinds)
    weights = np.array([kinds[n] for n in names], dtype=np.float64)
    weights /= weights.sum()
    for index in itertools.count():
        rng = np.random.default_rng([seed, SPLITS["train"], TRAINING_STREAM, index])
        yield make_example(names[int(rng.choice(len(names), p=weights))], rng)


def write_split(
    directory: str | Path, split: str, count: int, seed: int = DEFAULT_SEED, with_media: bool = False
) -> list[Path]:
    """Write ``<directory>/<split>/<task>.parquet`` for the four tasks (a local Hugging Face dataset each)."""
    from datasets import Dataset

    written = []
    for task in sorted(TASKS):
        documents = build_documents(split, task, count, seed)
        if with_media:
            for document in documents:
                frames, waveform = load_media(document)
                document["frames"], document["waveform"] = frames.tolist(), waveform.tolist()
        path = Path(directory) / split / f"{task}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        Dataset.from_list(documents).to_parquet(str(path))
        written.append(path)
    return written
