"""Tiny official releases of the paper benchmarks, in their exact published schemas, for the converter and task tests.

Each writer lays out a folder the way the official download unpacks (annotation file + video folders) with a few
2-s clips that carry an AAC soundtrack (:func:`tests.lmms.av_task_fixtures.write_clip`), and returns the folder.
The annotation entries copy real ones' shape (field names, types, the JSON-in-a-string fields of MUSIC-AVQA, the
task names and labels of AVHBench's ``QA.json``); ids and answers are made up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.lmms.av_task_fixtures import CLIP_SECONDS, write_clip

# --------------------------------------------------------------------------------------------------------------------
# AVHBench: QA.json + <video_id>.mp4 (https://github.com/kaist-ami/AVHBench, README "Download the AVHBench Dataset")

AVHBENCH_VIDEOS = ("00191", "01162")
AVHBENCH_QA: list[dict[str, str]] = [
    {"video_id": "00191", "task": "Video-driven Audio Hallucination",
     "text": "Is the sleeping man making sound in the audio?", "label": "Yes"},
    {"video_id": "00191", "task": "Video-driven Audio Hallucination",
     "text": "Is the couch making sound in the audio?", "label": "No"},
    {"video_id": "00191", "task": "Audio-driven Video Hallucination",
     "text": "Is the sleeping man visible in the video?", "label": "Yes"},
    {"video_id": "00191", "task": "Audio-driven Video Hallucination",
     "text": "Is the person walking visible in the video?", "label": "No"},
    {"video_id": "00191", "task": "AV Matching",
     "text": "Are the contexts of audio and visual content matching?", "label": "Yes"},
    {"video_id": "00191", "task": "AV Captioning", "text": "Describe what you see and hear in a single sentence.",
     "label": "A young man with no shirt on is laying in bed, with footsteps walking on a hard surface followed by "
              "a person snoring."},
    {"video_id": "01162", "task": "AV Matching",
     "text": "Are the contexts of audio and visual content matching?", "label": "No"},
    {"video_id": "01162", "task": "AV Captioning", "text": "Describe what you see and hear in a single sentence.",
     "label": "A dog barks in a yard while a car engine idles nearby."},
    {"video_id": "01162", "task": "Audio-driven Video Hallucination", "text": "Is the car visible in the video?",
     "label": "No"},
]  # fmt: skip
"""Two entries per task and a third audio-driven one (3 a2v, 2 v2a: the pooled "AV hallucination" accuracy is not
the mean of the two tasks'); the first six are the example of the AVHBench README."""


def write_avhbench(root: Path, qa: list[dict[str, Any]] | None = None) -> Path:
    """``<root>/AVHBench/QA.json`` and ``<root>/AVHBench/videos/<video_id>.mp4``."""
    folder = root / "AVHBench"
    for i, video_id in enumerate(AVHBENCH_VIDEOS):
        write_clip(folder / "videos" / f"{video_id}.mp4", CLIP_SECONDS, seed=40 + i, frequency=300.0 + 150 * i)
    _dump(folder / "QA.json", AVHBENCH_QA if qa is None else qa)
    return folder


# --------------------------------------------------------------------------------------------------------------------
# MUSIC-AVQA: avqa-test.json (https://github.com/GeWu-Lab/MUSIC-AVQA, data/json_update/) + the two video archives


def _music(video_id: str, question_id: int, kind: str, question: str, values: list[str], answer: str) -> dict:
    modality, question_type = kind.split("/")
    return {
        "video_id": video_id,
        "question_id": question_id,
        "type": json.dumps([modality, question_type]),
        "question_content": question,
        "templ_values": json.dumps(values),
        "question_deleted": 0,
        "anser": answer,
    }


MUSIC_AVQA_VIDEOS = {"00000093": "MUSIC-AVQA-videos-Real", "00005868": "MUSIC-AVQA-videos-Real",
                     "va00003871": "MUCIS-AVQA-videos-Synthetic"}  # fmt: skip
"""Real clips have 8-digit ids, synthetic ones a ``va`` prefix; the folder names are the download's."""
MUSIC_AVQA_TEST: list[dict[str, Any]] = [
    _music("00000093", 12, "Audio/Counting", "How many musical instruments were heard throughout the video?", [],
           "one"),
    _music("00000093", 40, "Audio/Comparative", "Is the <Object> louder than the <Object>?",
           ["clarinet", "acoustic_guitar"], "yes"),
    _music("00000093", 41, "Visual/Counting", "Are there <Object> and <Object> instruments in the video?",
           ["accordion", "violin"], "yes"),
    _music("00005868", 3533, "Audio-Visual/Temporal", "Where is the <FL> sounding instrument?", ["first"], "left"),
    _music("00005868", 3534, "Visual/Location", "What is the instrument on the <LR> of <Object>?",
           ["left", "saxophone"], "saxophone"),
    _music("00005868", 3535, "Audio-Visual/Counting", "How many sounding <Object> in the video？", ["violin"], "three"),
    _music("va00003871", 28154, "Audio-Visual/Existential", "Is the <Object> in the video always playing?",
           ["trumpet"], "no"),
    _music("va00003871", 28155, "Audio-Visual/Location",
           "Which is the musical instrument that sounds at the same time as the <Object>?", ["pipa"],
           "acoustic_guitar"),
    _music("va00003871", 28156, "Audio-Visual/Comparative",
           "Is the instrument on the <LR> more rhythmic than the instrument on the <LR>?", ["right", "left"], "no"),
    {**_music("va00003871", 28157, "Audio/Counting", "Is there a <Object> sound?", ["xylophone"], "yes"),
     "question_deleted": 1},
]  # fmt: skip
"""One question of each of the nine types (templates and values from the real test file), plus a deleted one."""


def write_music_avqa(root: Path, test: list[dict[str, Any]] | None = None) -> Path:
    """``<root>/MUSIC-AVQA/data/json_update/avqa-test.json`` and the clips in their two archive folders."""
    folder = root / "MUSIC-AVQA"
    for i, (video_id, archive) in enumerate(MUSIC_AVQA_VIDEOS.items()):
        write_clip(folder / archive / f"{video_id}.mp4", CLIP_SECONDS, seed=50 + i, frequency=350.0 + 120 * i)
    _dump(folder / "data" / "json_update" / "avqa-test.json", MUSIC_AVQA_TEST if test is None else test)
    return folder


# --------------------------------------------------------------------------------------------------------------------
# AVQA: train_qa.json / val_qa.json (https://github.com/AlyssaYoung/AVQA, data/annotation/) + VGGSound clips


def _avqa(qid: int, video: str, vid: int, question: str, choices: list[str], answer: int, kind: str) -> dict:
    return {"id": qid, "video_name": video, "video_id": vid, "question_text": question, "multi_choice": choices,
            "answer": answer, "question_relation": "View", "question_type": kind}  # fmt: skip


AVQA_VIDEOS = ("-HG3Omg_89c_000030", "0012y1s1bJI_000350")
AVQA_VAL: list[dict[str, Any]] = [
    _avqa(183, "-HG3Omg_89c_000030", 341, "What happened in the video?",
          ["motorboat", "Yacht consignment", "Sailing", "Water skiing"], 1, "Happening"),
    _avqa(184, "-HG3Omg_89c_000030", 341, "Where does the sound come from?",
          ["engine", "wind", "people", "birds"], 0, "Come From"),
    _avqa(9001, "0012y1s1bJI_000350", 7, "Which animal makes the sound?", ["dog", "cat", "cow", "horse"], 2, "Which"),
    _avqa(9002, "0012y1s1bJI_000350", 7, "Why is the animal making the sound?",
          ["it is hungry", "it is playing", "it is scared", "it is asleep"], 3, "Why"),
]  # fmt: skip


def write_avqa(root: Path, val: list[dict[str, Any]] | None = None) -> Path:
    """``<root>/AVQA/{train_qa,val_qa}.json`` and ``<root>/AVQA/video/<video_name>.mp4``."""
    folder = root / "AVQA"
    for i, video in enumerate(AVQA_VIDEOS):
        write_clip(folder / "video" / f"{video}.mp4", CLIP_SECONDS, seed=60 + i, frequency=420.0 + 110 * i)
    _dump(folder / "val_qa.json", AVQA_VAL if val is None else val)
    _dump(folder / "train_qa.json", AVQA_VAL[:1])  # the release ships both; the task reads val
    return folder


def _dump(path: Path, entries: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries, indent=4, ensure_ascii=False), encoding="utf-8")
