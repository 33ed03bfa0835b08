"""AVHBench (Sung-Bin et al., ICLR 2025; https://github.com/kaist-ami/AVHBench): the official release to documents.

The release is a video archive (``<video_id>.mp4``, real clips from VALOR and AudioCaps and synthetic ones with a
swapped soundtrack) and ``QA.json``, a list of ``{"video_id", "task", "text", "label"}`` entries. ``task`` is one of
the four names below (or one of :data:`TASK_ALIASES`); ``label`` is ``"Yes"`` / ``"No"`` for the three judgment
tasks and the reference caption for "AV Captioning". Each document keeps those four fields and adds ``subset`` (the
lmms-eval task's short name), ``answer`` (``yes`` / ``no``, or the caption), ``video_path`` and ``doc_key``
(``<video_id>#<position in QA.json>``).
"""

from __future__ import annotations

from pathlib import Path

from fastav_eval.data.common import (
    Conversion,
    VideoIndex,
    find_annotation,
    listing,
    read_json_list,
    require,
    resolve_videos,
)

NAME = "avhbench"
ANNOTATION_FILES = ("QA.json",)
SUBSETS = {
    "Audio-driven Video Hallucination": "a2v",
    "Video-driven Audio Hallucination": "v2a",
    "AV Matching": "match",
    "AV Captioning": "caption",
}
"""The official ``task`` names and the lmms-eval task each feeds (``avhbench_<subset>``)."""
TASK_ALIASES = {
    "AV Hallucination (Audio)": "Video-driven Audio Hallucination",
    "AV Hallucination (Video)": "Audio-driven Video Hallucination",
}
"""Other names of the same tasks: the authors' fine-tuning code (AVHBench-Align-FT) calls the hallucination tasks
by the modality hallucinated. Its audio- or video-only variants are not AVHBench tasks and stay refused."""
ACCEPTED_TASKS = (*SUBSETS, *TASK_ALIASES)
JUDGMENT_LABELS = ("yes", "no")


def convert(
    source: Path, annotations: Path | None = None, check_audio: bool = True, allow_missing: bool = False
) -> Conversion:
    annotations = annotations or find_annotation(source, ANNOTATION_FILES, NAME)
    entries = read_json_list(annotations)
    documents = []
    unknown_tasks: set[str] = set()
    for position, entry in enumerate(entries):
        where = f"{annotations.name} entry {position}"
        video_id = require(entry, "video_id", str, where)
        task = require(entry, "task", str, where)
        text = require(entry, "text", str, where)
        label = require(entry, "label", str, where)
        if task not in ACCEPTED_TASKS:
            unknown_tasks.add(task)
            continue
        subset = SUBSETS[TASK_ALIASES.get(task, task)]
        if subset == "caption":
            if not label.strip():
                raise ValueError(f"{where}: field 'label' (the reference caption) is empty")
            answer = label.strip()
        else:
            answer = label.strip().lower()
            if answer not in JUDGMENT_LABELS:
                raise ValueError(f"{where}: field 'label' is {label!r}; accepted for {task!r}: 'Yes', 'No'")
        if not text.strip():
            raise ValueError(f"{where}: field 'text' (the question) is empty")
        documents.append(
            {
                **entry,
                "subset": subset,
                "answer": answer,
                "doc_key": f"{video_id}#{position}",
            }
        )
    if unknown_tasks:
        raise ValueError(
            f"{annotations.name}: field 'task' has value(s) {listing(sorted(unknown_tasks))}; accepted: "
            f"{', '.join(map(repr, ACCEPTED_TASKS))}"
        )
    documents, notes = resolve_videos(
        documents, VideoIndex(source), "video_id", annotations, check_audio, allow_missing
    )
    counts = {subset: sum(d["subset"] == subset for d in documents) for subset in SUBSETS.values()}
    return Conversion(NAME, documents, annotations, source, counts, notes)
