"""AV-Synth: a deterministic, offline audio-visual benchmark (scenes, questions, splits)."""

from fastav_eval.avsynth.dataset import build_documents, load_media, write_split
from fastav_eval.avsynth.questions import KINDS, TASKS, make_example
from fastav_eval.avsynth.scene import Scene, render_audio, render_video

__all__ = [
    "KINDS",
    "TASKS",
    "Scene",
    "build_documents",
    "load_media",
    "make_example",
    "render_audio",
    "render_video",
    "write_split",
]
