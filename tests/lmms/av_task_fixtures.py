"""Tiny offline fixtures for lmms-eval 0.7.3's own ``worldsense``, ``av_odyssey``, ``videomme`` and ``vggsound`` tasks.

The stock task YAMLs and utils run untouched. :func:`prepare_task_fixtures` writes, under a root folder:

* each task's documents as a prepared Hugging Face ``datasets`` cache (``dataset_info.json`` plus one Arrow file in
  ``<cache>/<namespace>___<name>/<config>/0.0.0/<commit>/``), the layout a first online ``load_dataset(dataset_path)``
  leaves behind. With ``HF_DATASETS_OFFLINE=1``, ``datasets`` cannot reach the Hub and falls back to exactly that
  cache, so ``load_dataset("lmms-lab/worldsense")`` resolves to the fixture without a network;
* the media where each task's ``doc_to_visual`` looks: ``$HF_HOME/<dataset_kwargs.cache_dir>/...``. That folder
  existing is also what makes lmms-eval skip its ``snapshot_download`` of the video archives (``video: True``).

It returns the environment a caller sets before importing ``lmms_eval`` (or passes to a ``python -m lmms_eval``
subprocess). Three lmms-eval quirks shape how it is used:

* ``vggsound``'s YAML has no ``video: True``, so its relative ``cache_dir: vggsound`` reaches ``load_dataset`` as is
  and is resolved against the working directory. Its datasets cache is written to ``<root>/vggsound``: run lmms-eval
  with ``cwd=root`` (``subprocess.run(..., cwd=root)`` or ``monkeypatch.chdir(root)``); the other tasks don't mind.
  With that cwd the CLI reads a lone ``--tasks vggsound`` as a folder of YAMLs (``os.path.isdir``) and finds no task:
  name it among others (``--tasks worldsense,vggsound``, or ``--tasks vggsound,vggsound``) or use
  ``simple_evaluate(tasks=["vggsound"])``, which has no such check.
* ``lmms_eval.api.task._resolve_hf_datasets_cache_dir`` is ``lru_cache``'d: the first task loaded in a process fixes
  the datasets cache for the rest of it. In-process runs against a second root call
  :func:`reset_lmms_eval_datasets_cache` first; the task utils re-read ``HF_HOME`` on every task load.
* The CLI exits 0 even when the evaluation fails (it logs the error): check for the ``*_results.json`` it writes.
"""

from __future__ import annotations

import hashlib
import wave
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np

TASK_NAMES = ("worldsense", "av_odyssey", "videomme", "vggsound")
"""The lmms-eval 0.7.3 tasks this module has fixtures for."""

VggsoundAudio = Literal["dict", "path", "feature"]
"""How the ``vggsound`` ``audio`` column is stored (see :func:`prepare_task_fixtures`)."""

HF_HOME_DIR = "hf_home"
"""``HF_HOME`` is ``<root>/hf_home``; ``<root>`` itself is the working directory ``vggsound`` needs."""

SAMPLE_RATE = 16000
CLIP_SECONDS = 2.0
AUDIO_SECONDS = 1.0


@dataclass(frozen=True)
class TaskFixture:
    """Where one stock task reads its documents and media from, and what it reports."""

    task: str
    dataset_path: str
    """The YAML's ``dataset_path`` (the Hub repository ``load_dataset`` is given)."""
    config_name: str
    """The config the cached dataset is stored under (``load_dataset`` gets ``name=None`` and picks the only one)."""
    split: str
    media_dir: str
    """The YAML's ``dataset_kwargs.cache_dir``: media live under ``$HF_HOME/<media_dir>``."""
    metric: str
    datasets_cache_in_cwd: bool = False
    """True when the YAML's relative ``cache_dir`` is handed to ``load_dataset`` itself (resolved against the cwd)."""


TASKS: dict[str, TaskFixture] = {
    "worldsense": TaskFixture("worldsense", "lmms-lab/worldsense", "default", "test", "WorldSense", "worldsense_score"),
    "av_odyssey": TaskFixture(
        "av_odyssey", "AV-Odyssey/AV_Odyssey_Bench_LMMs_Eval", "default", "test", "AV_Odyssey", "av_odyssey_score"
    ),
    "videomme": TaskFixture(
        "videomme", "lmms-eval/Video-MME", "videomme", "test", "videomme", "videomme_perception_score"
    ),
    "vggsound": TaskFixture(
        "vggsound", "lmms-lab-eval/vggsound", "default", "test", "vggsound", "acc", datasets_cache_in_cwd=True
    ),
}


# --------------------------------------------------------------------------------------------------------------------
# Media writers


def _frames(seconds: float, fps: int, size: int, seed: int) -> Iterable[np.ndarray]:
    """Deterministic RGB frames: a colour gradient with a square that moves across it."""
    count = max(1, round(seconds * fps))
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    base = np.empty((size, size, 3), dtype=np.uint8)
    base[..., 0] = ramp[None, :]
    base[..., 1] = ramp[:, None]
    base[..., 2] = (37 * seed) % 256
    side = max(4, size // 6)
    for index in range(count):
        frame = base.copy()
        offset = (index * max(1, (size - side) // count) + 11 * seed) % (size - side)
        frame[offset : offset + side, offset : offset + side] = (255, 255, 255)
        yield frame


def _tone(seconds: float, sample_rate: int, frequency: float) -> np.ndarray:
    """A mono float32 sine at half amplitude."""
    samples = max(1, round(seconds * sample_rate))
    t = np.arange(samples, dtype=np.float64) / sample_rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def write_clip(
    path: str | Path,
    seconds: float,
    fps: int = 8,
    size: int = 112,
    audio: bool = True,
    sample_rate: int = SAMPLE_RATE,
    *,
    seed: int = 0,
    frequency: float = 440.0,
) -> Path:
    """Write an H.264 (yuv420p) mp4 of ``seconds`` at ``fps``, ``size`` x ``size``, with PyAV.

    With ``audio`` it also carries a mono AAC track at ``sample_rate``: a sine at ``frequency`` Hz. ``seed`` varies the
    picture (gradient tint, square position) so clips differ. Encoding is single-threaded, so output is reproducible.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width = size
        video.height = size
        video.pix_fmt = "yuv420p"
        video.codec_context.options = {"preset": "ultrafast", "crf": "30", "threads": "1"}
        sound = container.add_stream("aac", rate=sample_rate, layout="mono") if audio else None

        for index, rgb in enumerate(_frames(seconds, fps, size, seed)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))

        if sound is not None:
            waveform = _tone(seconds, sample_rate, frequency)
            chunk = sound.codec_context.frame_size or 1024
            for start in range(0, waveform.size, chunk):
                piece = waveform[start : start + chunk][np.newaxis, :]
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), format="fltp", layout="mono")
                frame.sample_rate = sample_rate
                frame.pts = start
                frame.time_base = Fraction(1, sample_rate)
                container.mux(sound.encode(frame))
            container.mux(sound.encode(None))
    return path


def write_wav(
    path: str | Path, seconds: float = AUDIO_SECONDS, sample_rate: int = SAMPLE_RATE, *, frequency: float = 440.0
) -> Path:
    """Write a mono 16-bit PCM wav: a sine at ``frequency`` Hz (stdlib ``wave``; no audio library needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.round(_tone(seconds, sample_rate, frequency) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(pcm.tobytes())
    return path


def write_png(path: str | Path, size: int = 112, *, seed: int = 0) -> Path:
    """Write a small RGB png (the first frame :func:`write_clip` would draw for ``seed``)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(next(iter(_frames(1.0, 1, size, seed)))).save(path)
    return path


def write_srt(path: str | Path, cues: list[tuple[float, float, str]]) -> Path:
    """Write a SubRip file from ``(start_s, end_s, text)`` cues."""

    def stamp(seconds: float) -> str:
        millis = round(seconds * 1000)
        return f"{millis // 3600000:02d}:{millis // 60000 % 60:02d}:{millis // 1000 % 60:02d},{millis % 1000:03d}"

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blocks = [f"{i}\n{stamp(start)} --> {stamp(end)}\n{text}\n" for i, (start, end, text) in enumerate(cues, 1)]
    path.write_text("\n".join(blocks), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------------------------
# The offline datasets cache


def _commit(dataset_path: str) -> str:
    """A fixed 40-hex "commit" naming the cache folder (a real first load uses the Hub commit there)."""
    return hashlib.sha1(f"fastav-eval fixture {dataset_path}".encode()).hexdigest()


def write_datasets_cache(cache_dir: Path, fixture: TaskFixture, rows: list[dict[str, Any]], features: Any) -> Path:
    """Store ``rows`` as the prepared cache ``load_dataset(fixture.dataset_path)`` falls back to when offline.

    That is ``<cache_dir>/<namespace>___<snake_name>/<config>/0.0.0/<commit>/`` with ``dataset_info.json`` (features,
    config name, split sizes) and ``<snake_name>-<split>.arrow`` (Arrow stream), which ``datasets``'
    ``CachedDatasetModuleFactory`` and its ``cache`` builder read back.
    """
    import datasets
    import pyarrow as pa
    from datasets.arrow_writer import ArrowWriter
    from datasets.naming import camelcase_to_snakecase, filename_prefix_for_split

    namespace, name = fixture.dataset_path.split("/")
    snake = camelcase_to_snakecase(name)
    folder = cache_dir / f"{namespace}___{snake}" / fixture.config_name / "0.0.0" / _commit(fixture.dataset_path)
    folder.mkdir(parents=True, exist_ok=True)
    # Rows are already in storage form; pyarrow skips ``Features.encode_example`` (datasets>=4 wants torchcodec
    # even to *encode* an ``Audio`` value).
    table = pa.Table.from_pylist(rows, schema=features.arrow_schema)
    arrow = folder / f"{filename_prefix_for_split(name, fixture.split)}.arrow"
    with ArrowWriter(features=features, path=str(arrow)) as writer:
        writer.write_table(table)
        num_examples, num_bytes = writer.finalize()
    splits = datasets.SplitDict(dataset_name=snake)
    splits.add(
        datasets.SplitInfo(name=fixture.split, num_bytes=num_bytes, num_examples=num_examples, dataset_name=snake)
    )
    info = datasets.DatasetInfo(
        features=features,
        builder_name="parquet",
        dataset_name=snake,
        config_name=fixture.config_name,
        version="0.0.0",
        splits=splits,
    )
    info.write_to_directory(str(folder))
    return folder


# --------------------------------------------------------------------------------------------------------------------
# Per-task documents and media


def _schema(columns: dict[str, str]) -> Any:
    """``datasets.Features`` from ``{column: "string" | "int64" | "strings"}``, in column order."""
    import datasets

    kinds = {
        "string": lambda: datasets.Value("string"),
        "int64": lambda: datasets.Value("int64"),
        "strings": lambda: datasets.List(datasets.Value("string")),
    }
    return datasets.Features({name: kinds[kind]() for name, kind in columns.items()})


def _worldsense(media: Path) -> tuple[list[dict[str, Any]], Any]:
    """WorldSense: ``video_path``/``subtitle_path`` are relative to ``$HF_HOME/WorldSense``; one 3-option question."""
    specs = [
        ("What sound accompanies the white square?", ["A. A steady tone", "B. Applause", "C. Rain", "D. Silence"],
         "A", "Audio Recognition", "Daily Life", "<1min", ["Music"]),
        ("How many white squares are visible?", ["A. Two", "B. One", "C. Three", "D. None"],
         "B", "Object Counting", "Tech & Science", "1-2min", ["Speech", "Music"]),
        ("Where does the square move?", ["A. Upward", "B. It stays still", "C. Down and to the right"],
         "C", "Spatial Relation", "Games", "<1min", ["Event"]),
    ]  # fmt: skip
    rows = []
    for index, (question, candidates, answer, task_type, domain, duration, audio_class) in enumerate(specs):
        stem = f"ws_{index:04d}"
        write_clip(media / "videos" / f"{stem}.mp4", CLIP_SECONDS, seed=index, frequency=330.0 + 110 * index)
        write_srt(media / "subtitles" / f"{stem}.srt", [(0.0, 1.0, "A square appears."), (1.0, 2.0, "It moves.")])
        rows.append(
            {
                "index": index,
                "video_path": f"videos/{stem}.mp4",
                "subtitle_path": f"subtitles/{stem}.srt",
                "question": question,
                "candidates": candidates,
                "answer": answer,
                "task_type": task_type,
                "task_domain": domain,
                "duration": duration,
                "audio_class": audio_class,
            }
        )
    columns = {"index": "int64", "video_path": "string", "subtitle_path": "string", "question": "string"}
    columns |= {"candidates": "strings", "answer": "string", "task_type": "string", "task_domain": "string"}
    columns |= {"duration": "string", "audio_class": "strings"}
    return rows, _schema(columns)


def _av_odyssey(media: Path) -> tuple[list[dict[str, Any]], Any]:
    """AV-Odyssey: ``[audioN]``/``[imgN]``/``[videoN]`` tags in the question pick the media, in tag order."""
    images = [f"images/avo_{i}.png" for i in range(4)]
    for i, relative in enumerate(images):
        write_png(media / relative, seed=i)
    audios = [f"audios/avo_{i}.wav" for i in range(3)]
    for i, relative in enumerate(audios):
        write_wav(media / relative, frequency=220.0 * (i + 1))
    write_clip(media / "videos" / "avo_0.mp4", CLIP_SECONDS, audio=False, seed=7)

    options = ["A. The first one", "B. The second one", "C. The third one", "D. The fourth one"]
    rows = [
        {
            "question_id": "avo_1_0001",
            "question_type_id": 1,
            "data_type": "image",
            "subfield": "Timbre",
            "question": "[audio1] Which image shows the instrument that makes this sound? [img1] [img2] [img3] [img4]",
            "options": options,
            "answer": "A",
            "image_path": images,
            "video_path": [],
            "audio_path": audios[:1],
        },
        {
            "question_id": "avo_9_0001",
            "question_type_id": 9,
            "data_type": "video",
            "subfield": "Time",
            "question": "[video1] Which audio clip was recorded with this video? [audio1] [audio2] [audio3]",
            "options": [*options[:3], "D. None of them"],
            "answer": "B",
            "image_path": [],
            "video_path": ["videos/avo_0.mp4"],
            "audio_path": audios,
        },
        {
            "question_id": "avo_5_0001",
            "question_type_id": 5,
            "data_type": "image",
            "subfield": "Space",
            "question": "[img1] Which audio comes from the object on the left? [audio1] [audio2]",
            "options": options,
            "answer": "C",
            "image_path": images[:1],
            "video_path": [],
            "audio_path": audios[1:],
        },
    ]
    columns = {"question_id": "string", "question_type_id": "int64", "data_type": "string", "subfield": "string"}
    columns |= {"question": "string", "options": "strings", "answer": "string"}
    columns |= {"image_path": "strings", "video_path": "strings", "audio_path": "strings"}
    return rows, _schema(columns)


def _videomme(media: Path) -> tuple[list[dict[str, Any]], Any]:
    """Video-MME: ``$HF_HOME/videomme/data/<videoID>.mp4`` (``subtitle/<videoID>.srt``); two questions share a video.

    ``duration``/``domain``/``sub_category``/``task_type`` must come from the lists in the task's utils: its
    aggregation indexes a table built from them.
    """
    videos = [
        ("fxtvid00001", "001", "short", "Knowledge", "Technology"),
        ("fxtvid00002", "002", "medium", "Life Record", "Daily Life"),
    ]
    font = '<font color="white" size=".72c">{}</font>'  # the markup the task's subtitle reader extracts
    for i, (video_id, *_rest) in enumerate(videos):
        write_clip(media / "data" / f"{video_id}.mp4", CLIP_SECONDS, seed=20 + i, frequency=500.0 + 100 * i)
        cues = [(0.0, 1.0, font.format("Look at the square.")), (1.0, 2.0, font.format("It moves."))]
        write_srt(media / "subtitle" / f"{video_id}.srt", cues)
    questions = [
        (0, 1, "What colour is the moving square?", ["White", "Red", "Blue", "Green"], "A", "Attribute Perception"),
        (0, 2, "How many squares are there?", ["Three", "One", "Two", "Four"], "B", "Counting Problem"),
        (1, 1, "Which way does the square move?", ["Left", "Up", "Down-right", "Nowhere"], "C", "Temporal Perception"),
    ]
    rows = []
    for video, number, question, options, answer, task_type in questions:
        video_id, short_id, duration, domain, sub_category = videos[video]
        rows.append(
            {
                "video_id": short_id,
                "duration": duration,
                "domain": domain,
                "sub_category": sub_category,
                "url": f"https://www.youtube.com/watch?v={video_id}",
                "videoID": video_id,
                "question_id": f"{short_id}-{number}",
                "task_type": task_type,
                "question": question,
                "options": [f"{letter}. {text}" for letter, text in zip("ABCD", options, strict=True)],
                "answer": answer,
            }
        )
    return rows, _schema({name: "strings" if name == "options" else "string" for name in rows[0]})


def _vggsound(media: Path, audio_mode: VggsoundAudio) -> tuple[list[dict[str, Any]], Any]:
    """VGGSound: an ``audio`` column (stored per ``audio_mode``), a ``label``, and an ``audio_id``."""
    import datasets

    labels = [
        ("fxtaud00001", "dog barking", 440.0),
        ("fxtaud00002", "playing acoustic guitar", 660.0),
        ("fxtaud00003", "rain", 880.0),
    ]
    rows = []
    for audio_id, label, frequency in labels:
        wav = write_wav(media / "audio" / f"{audio_id}.wav", frequency=frequency)
        if audio_mode == "dict":
            array = _tone(AUDIO_SECONDS, SAMPLE_RATE, frequency).tolist()
            audio: Any = {"path": wav.name, "array": array, "sampling_rate": SAMPLE_RATE}
        elif audio_mode == "path":
            audio = wav.name
        else:
            audio = {"path": wav.name, "bytes": wav.read_bytes()}
        rows.append({"audio_id": audio_id, "audio": audio, "label": label})
    if audio_mode == "dict":
        audio_feature: Any = {
            "path": datasets.Value("string"),
            "array": datasets.List(datasets.Value("float32")),
            "sampling_rate": datasets.Value("int32"),
        }
    elif audio_mode == "path":
        audio_feature = datasets.Value("string")
    else:
        audio_feature = datasets.Audio(sampling_rate=SAMPLE_RATE)
    features = datasets.Features(
        {"audio_id": datasets.Value("string"), "audio": audio_feature, "label": datasets.Value("string")}
    )
    return rows, features


_BUILDERS: dict[str, Callable[[Path], tuple[list[dict[str, Any]], Any]]] = {
    "worldsense": _worldsense,
    "av_odyssey": _av_odyssey,
    "videomme": _videomme,
}


def prepare_task_fixtures(
    root: str | Path, tasks: Iterable[str], *, vggsound_audio: VggsoundAudio = "dict"
) -> dict[str, str]:
    """Write 3 documents per task in ``tasks`` with their media under ``root``; return the environment to run with.

    Layout (``H`` = ``root/hf_home`` = ``HF_HOME``):

    * ``worldsense``: ``H/datasets/lmms-lab___worldsense/...``; media ``H/WorldSense/{videos,subtitles}/``.
    * ``av_odyssey``: ``H/datasets/AV-Odyssey___av_odyssey_bench_lm_ms_eval/...`` (``datasets``' snake case of
      ``LMMs``); media ``H/AV_Odyssey/{images,audios,videos}/``.
    * ``videomme``: ``H/datasets/lmms-eval___video-mme/videomme/...``; media ``H/videomme/{data,subtitle}/``.
    * ``vggsound``: ``root/vggsound/lmms-lab-eval___vggsound/...`` (the YAML's relative ``cache_dir``, so lmms-eval
      must run with ``cwd=root``); wavs in ``H/vggsound/audio/``. ``vggsound_audio`` picks the ``audio`` column:
      ``"dict"`` (default) a plain struct ``{"path", "array", "sampling_rate"}`` that reads back as that dict (the
      array a ``list`` of 16000 floats, 1 s at 16 kHz), the shape ``datasets<4``'s ``Audio`` decoded to; ``"path"``
      the wav's file name, which the task's ``resolve_media_reference`` turns into an absolute path; ``"feature"`` a
      real ``datasets.Audio`` column of wav bytes, which ``datasets>=4`` decodes to a torchcodec ``AudioDecoder``.
      Without torchcodec that decode raises ``ImportError``, and the stock task already fails to construct
      (``ConfigurableTask.__init__`` reads ``test_docs()[0]``, media included).

    The returned variables must be in the environment before ``datasets``/``huggingface_hub``/``lmms_eval`` are
    imported (the offline switches are read at import time).
    """
    root = Path(root).resolve()
    names = list(tasks)
    unknown = sorted(set(names) - set(TASKS))
    if unknown:
        raise ValueError(f"no fixtures for {unknown}; known tasks: {list(TASK_NAMES)}")
    if vggsound_audio not in ("dict", "path", "feature"):
        raise ValueError(f"vggsound_audio={vggsound_audio!r}; accepted: 'dict', 'path', 'feature'")
    hf_home = root / HF_HOME_DIR
    datasets_cache = hf_home / "datasets"
    for name in dict.fromkeys(names):
        fixture = TASKS[name]
        media = hf_home / fixture.media_dir
        media.mkdir(parents=True, exist_ok=True)
        if name == "vggsound":
            rows, features = _vggsound(media, vggsound_audio)
        else:
            rows, features = _BUILDERS[name](media)
        # vggsound: the YAML's cache_dir (== media_dir), relative to the cwd, is load_dataset's own cache_dir.
        cache = root / fixture.media_dir if fixture.datasets_cache_in_cwd else datasets_cache
        write_datasets_cache(cache, fixture, rows, features)
    datasets_cache.mkdir(parents=True, exist_ok=True)
    return {
        "HF_HOME": str(hf_home),
        "HF_DATASETS_CACHE": str(datasets_cache),
        # lmms-eval prefers this one over HF_DATASETS_CACHE; pinning it keeps a global setting from winning.
        "LMMS_EVAL_DATASETS_CACHE": str(datasets_cache),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        # vggsound's resolver searches this before HF_HOME (matters for vggsound_audio="path" only).
        "VGGSOUND_AUDIO_DIR": str(hf_home / TASKS["vggsound"].media_dir / "audio"),
    }


def reset_lmms_eval_datasets_cache() -> None:
    """Forget the datasets cache folder lmms-eval resolved first in this process (it is ``lru_cache``'d).

    Call it after switching to another fixture root in the same process, before the next ``simple_evaluate``.
    """
    from lmms_eval.api.task import _resolve_hf_datasets_cache_dir

    _resolve_hf_datasets_cache_dir.cache_clear()
