"""Deterministic AV-Synth splits: documents (question, answer, scene) and their rendered media.

A document stores its scene as JSON plus the SHA-1 of the rendered media; :func:`load_media` renders the clip and
checks that fingerprint, so a shipped split of a few hundred kilobytes stands for megabytes of frames and audio and
any drift in the renderer is an error, not a silently different benchmark. ``with_media=True`` stores the frames and
waveform in the dataset as well.

Before it renders anything, :func:`load_media` runs :func:`check_document`, which answers the document's question
from its scene and refuses a document whose stored answer (or anything else) disagrees: an edited document is an
error that names it, not a wrong score.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fastav_eval.avsynth.questions import KINDS, QUESTIONS, TASKS, describe, make_example
from fastav_eval.avsynth.scene import Scene, media_sha1, render_audio, render_video
from fastav_eval.avsynth.world import CLIP_SECONDS, COLOURS, MAX_EVENTS, NUM_FRAMES, NUMBER_WORDS, SAMPLE_RATE, SHAPES

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


# ---------------------------------------------------------------------------------------------- document checks
SHA1_HEX = re.compile(r"[0-9a-f]{40}")
MEDIA_SHA1_EXPECTED = "a string of 40 lowercase hex digits, the SHA-1 of its rendered media (as build_documents writes)"
MIN_EVENT_SECONDS = 0.02  # the renderer fades each sound in and out over 10 ms

_SLOT_VALUES: dict[str, tuple[str, ...]] = {"colour": COLOURS, "other": COLOURS, "shape": SHAPES}
_QUESTION_PATTERNS: dict[str, re.Pattern[str]] = {
    kind: re.compile(re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>\\w+)", re.escape(template)))
    for kind, template in QUESTIONS.items()
}


class _Refusal(Exception):
    """What is wrong with a document and what was expected; :func:`check_document` adds the document id."""

    def __init__(self, what: str, expected: str):
        super().__init__(what)
        self.what, self.expected = what, expected


def rebuild_command(split: str = "test") -> str:
    """The command that rewrites a split with the current generator and renderer."""
    return f"fastav-eval build-avsynth --split {split} --per-task 240 --out tasks/avsynth/data"


def _rebuild_hint(document: Mapping[str, Any]) -> str:
    split = document.get("split")
    return rebuild_command(split if split in SPLITS else "test")


def _field(document: Mapping[str, Any], name: str, expected: str) -> Any:
    if name not in document:
        raise _Refusal(f"field {name!r} is missing", expected)
    return document[name]


def _is_seconds(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _parse_scene(document: Mapping[str, Any]) -> Scene:
    """The document's scene, refused unless it is one the AV-Synth world can contain and the renderer can draw."""
    expected = "the scene JSON Scene.to_json() writes: objects, events and noise_seed"
    text = _field(document, "scene", expected)
    if not isinstance(text, str):
        raise _Refusal(f"scene={text!r} is not a string", expected)
    try:
        scene = Scene.from_json(text)
    except (ValueError, KeyError, TypeError) as error:
        raise _Refusal(f"scene does not parse ({type(error).__name__}: {error})", expected) from None
    if scene.noise_seed < 0:
        raise _Refusal(f"scene noise_seed={scene.noise_seed}", "an int >= 0")
    for obj in scene.objects:
        what = f"scene object {obj}"
        if obj.colour not in COLOURS or obj.shape not in SHAPES:
            raise _Refusal(what, f"colour in {list(COLOURS)} and shape in {list(SHAPES)}")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (obj.x, obj.y, obj.radius)):
            raise _Refusal(what, "int x, y and radius")
        frames = (obj.first_frame, obj.last_frame)
        if not all(isinstance(v, int) for v in frames) or not 0 <= obj.first_frame <= obj.last_frame < NUM_FRAMES:
            raise _Refusal(what, f"frames with 0 <= first_frame <= last_frame <= {NUM_FRAMES - 1}")
    if len(scene.objects) > 2 or len({o.colour for o in scene.objects}) != len(scene.objects):
        raise _Refusal(
            f"scene has objects {[f'{o.colour} {o.shape}' for o in scene.objects]}",
            "at most two visible objects, of distinct colours",
        )
    if len(scene.events) > MAX_EVENTS:
        raise _Refusal(f"scene has {len(scene.events)} sound events", f"at most {MAX_EVENTS}")
    timing = f"onset_s >= 0, duration_s >= {MIN_EVENT_SECONDS} and onset_s + duration_s <= {CLIP_SECONDS}"
    for event in scene.events:
        what = f"scene sound {event}"
        if event.colour not in COLOURS or event.shape not in SHAPES:
            raise _Refusal(what, f"colour in {list(COLOURS)} and shape in {list(SHAPES)}")
        if not (_is_seconds(event.onset_s) and _is_seconds(event.duration_s)):
            raise _Refusal(what, f"numbers onset_s and duration_s with {timing}")
        if event.onset_s < 0 or event.duration_s < MIN_EVENT_SECONDS or event.onset_s + event.duration_s > CLIP_SECONDS:
            raise _Refusal(what, timing)
    timeline = sorted(scene.events, key=lambda e: e.onset_s)
    for earlier, later in itertools.pairwise(timeline):
        if earlier.onset_s + earlier.duration_s >= later.onset_s:
            raise _Refusal(f"scene sounds {earlier} and {later} overlap in time", "sound events that never overlap")
    return scene


def _question_slots(kind: str, question: Any) -> dict[str, str]:
    """The colour / shape words of a question of ``kind`` (refused unless it is that kind's template)."""
    template = QUESTIONS[kind]
    expected = (
        f"a {kind} question: {template!r} with {{colour}}/{{other}} in {list(COLOURS)} and {{shape}} in {list(SHAPES)}"
    )
    match = _QUESTION_PATTERNS[kind].fullmatch(question) if isinstance(question, str) else None
    if match is None:
        raise _Refusal(f"question={question!r} is not what kind {kind!r} asks", expected)
    slots = match.groupdict()
    for slot, value in slots.items():
        if value not in _SLOT_VALUES[slot]:
            raise _Refusal(f"question={question!r} names {{{slot}}} {value!r}", expected)
    if slots.get("colour") is not None and slots.get("colour") == slots.get("other"):
        raise _Refusal(f"question={question!r} compares the {slots['colour']} sound with itself", expected)
    return slots


def _only(items: list[str], what: str, expected: str) -> str:
    if len(items) != 1:
        raise _Refusal(what.format(count=len(items), items=items), expected)
    return items[0]


def _answer_match(scene: Scene, slots: dict[str, str]) -> str:
    obj = _only(
        [o.colour for o in scene.objects],
        "the scene has {count} visible objects",
        "exactly one visible object (the one the sound may match)",
    )
    heard = _only(
        sorted({e.colour for e in scene.events}),
        "the scene has {count} sound colours {items}",
        "sounds of exactly one colour (the sound that may match the object)",
    )
    return "yes" if heard == obj else "no"


def _answer_halluc_sound(scene: Scene, slots: dict[str, str]) -> str:
    colour, shape = slots["colour"], slots["shape"]
    if not scene.visible(colour, shape):
        raise _Refusal(
            f"the scene has no {colour} {shape} (objects: {[f'{o.colour} {o.shape}' for o in scene.objects]})",
            f"the {colour} {shape} the question asks about to be visible",
        )
    return "yes" if scene.event_count(colour) > 0 else "no"


def _answer_halluc_visible(scene: Scene, slots: dict[str, str]) -> str:
    return "yes" if scene.visible(slots["colour"], slots["shape"]) else "no"


def _answer_qa_colour(scene: Scene, slots: dict[str, str]) -> str:
    shape = slots["shape"]
    return _only(
        [o.colour for o in scene.objects if o.shape == shape],
        f"the scene has {{count}} {shape}s",
        f"exactly one visible {shape}, whose colour is the answer",
    )


def _answer_qa_shape(scene: Scene, slots: dict[str, str]) -> str:
    colour = slots["colour"]
    return _only(
        [o.shape for o in scene.objects if o.colour == colour],
        f"the scene has {{count}} {colour} objects",
        f"exactly one visible {colour} object, whose shape is the answer",
    )


def _answer_qa_count(scene: Scene, slots: dict[str, str]) -> str:
    count = len(scene.events)
    if not 1 <= count <= MAX_EVENTS:
        raise _Refusal(f"the scene has {count} sounds", f"1 to {MAX_EVENTS} sounds to count")
    return NUMBER_WORDS[count]


def _answer_qa_order(scene: Scene, slots: dict[str, str]) -> str:
    onsets = {}
    for colour in (slots["colour"], slots["other"]):
        times = [e.onset_s for e in scene.events if e.colour == colour]
        if len(times) != 1:
            raise _Refusal(f"the scene has {len(times)} {colour} sounds", f"exactly one {colour} sound to order")
        onsets[colour] = times[0]
    return "yes" if onsets[slots["colour"]] < onsets[slots["other"]] else "no"


def _answer_qa_sounding(scene: Scene, slots: dict[str, str]) -> str:
    return _only(
        [o.colour for o in scene.objects if scene.event_count(o.colour) > 0],
        "the scene has {count} sounding visible objects {items}",
        "exactly one visible object that makes a sound",
    )


def _answer_caption(scene: Scene, slots: dict[str, str]) -> str:
    if not scene.objects:
        raise _Refusal("the scene has no visible objects", "one or two objects to describe")
    return describe(scene)


def _answer_sound_colour(scene: Scene, slots: dict[str, str]) -> str:
    return _only(
        sorted({e.colour for e in scene.events}),
        "the scene has {count} sound colours {items}",
        "sounds of exactly one colour",
    )


ANSWERERS: dict[str, Callable[[Scene, dict[str, str]], str]] = {
    "match": _answer_match,
    "halluc_sound": _answer_halluc_sound,
    "halluc_visible": _answer_halluc_visible,
    "qa_colour": _answer_qa_colour,
    "qa_shape": _answer_qa_shape,
    "qa_count": _answer_qa_count,
    "qa_order": _answer_qa_order,
    "qa_sounding": _answer_qa_sounding,
    "caption": _answer_caption,
    "sound_colour": _answer_sound_colour,
}
"""Kind -> the answer its question has in a scene: what the kind's builder in questions.py makes true."""


def scene_answer(kind: str, question: str, scene: Scene) -> str:
    """The answer a question of ``kind`` has in ``scene``; ValueError if the scene does not answer it."""
    try:
        return ANSWERERS[_known_kind(kind)](scene, _question_slots(kind, question))
    except _Refusal as refusal:
        raise ValueError(f"{refusal.what}; expected {refusal.expected}") from None


def _known_kind(kind: Any) -> str:
    if kind not in KINDS or kind not in ANSWERERS:
        raise _Refusal(f"kind={kind!r} is not an AV-Synth question kind", f"one of {sorted(ANSWERERS)}")
    return kind


def _check(document: Mapping[str, Any]) -> Scene:
    media = _field(document, "media_sha1", MEDIA_SHA1_EXPECTED)
    if not isinstance(media, str) or SHA1_HEX.fullmatch(media) is None:
        raise _Refusal(f"media_sha1={media!r}", MEDIA_SHA1_EXPECTED)
    kind = _known_kind(_field(document, "kind", f"one of {sorted(ANSWERERS)}"))
    spec = KINDS[kind]
    for name, want in (("task", spec.task), ("needs", spec.needs)):
        value = _field(document, name, f"{want!r} (kind {kind!r})")
        if value != want:
            raise _Refusal(f"{name}={value!r}", f"{want!r} for kind {kind!r}")
    choices = _field(document, "choices", f"{list(spec.choices)} (kind {kind!r})")
    choices = choices.tolist() if isinstance(choices, np.ndarray) else choices
    if not isinstance(choices, list | tuple) or list(choices) != list(spec.choices):
        raise _Refusal(f"choices={choices!r}", f"{list(spec.choices)} for kind {kind!r}")
    answer = _field(document, "answer", "the answer its scene gives")
    if not isinstance(answer, str) or (spec.choices and answer not in spec.choices):
        raise _Refusal(f"answer={answer!r}", f"one of {list(spec.choices)}" if spec.choices else "a caption string")
    slots = _question_slots(kind, _field(document, "question", QUESTIONS[kind]))
    scene = _parse_scene(document)
    try:
        truth = ANSWERERS[kind](scene, slots)
    except _Refusal as refusal:
        raise _Refusal(
            f"its scene does not answer {document['question']!r}: {refusal.what}", refusal.expected
        ) from None
    if answer != truth:
        raise _Refusal(
            f"answer={answer!r} contradicts its scene, which answers {truth!r} to {document['question']!r}",
            f"answer={truth!r} (the document was edited: restore it, or rebuild the split with "
            f"`{_rebuild_hint(document)}`)",
        )
    return scene


def check_document(document: Mapping[str, Any]) -> Scene:
    """Validate an evaluation document against its scene and return the scene.

    Refused with a ValueError that names the document id, what is wrong and what is expected: a missing or
    malformed ``media_sha1``; a ``kind`` / ``task`` / ``needs`` / ``choices`` that do not belong together; a question
    that is not its kind's template; a scene that does not parse or that the AV-Synth world cannot contain; a scene
    that does not answer the question (no sounds to count, no circle to name the colour of, ...); and a stored
    ``answer`` that differs from the answer the scene gives (recomputed from the scene as the kind's builder makes
    it true). Checking does not render: :func:`load_media` renders and compares ``media_sha1``.
    """
    if not isinstance(document, Mapping):
        raise ValueError(f"document={document!r:.80}; expected a mapping with the fields build_documents writes")
    try:
        return _check(document)
    except _Refusal as refusal:
        raise ValueError(f"document {document.get('id')!r}: {refusal.what}; expected {refusal.expected}") from None


def request_visuals(document: Mapping[str, Any]) -> list[dict]:
    """What a model is given for a document (the tasks' ``doc_to_visual``): ``[video, audio]``, frames
    ``[8, 32, 32, 3]`` uint8 and a 16 kHz float32 waveform.

    Both are dicts with an explicit ``type`` (a bare ``{"array", "sampling_rate"}`` dict would reach chat models as
    a video item). The document is checked first (``check_document``: media_sha1, question and answer against its
    scene) and its rendered media against ``media_sha1``; an edited or stale document is a ValueError naming its id.
    """
    frames, waveform = load_media(document, strict=True)
    return [
        {"type": "video", "frames": frames, "fps": NUM_FRAMES / CLIP_SECONDS},
        {"type": "audio", "array": waveform, "sampling_rate": SAMPLE_RATE},
    ]


def load_media(document: Mapping[str, Any], *, strict: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``[8, 32, 32, 3]`` uint8 and waveform ``[32000]`` float32 of a document (stored or rendered+checked).

    A split document (one with an ``id`` or a ``media_sha1`` field; every dict when ``strict``, as ``doc_to_visual``
    asks) is first validated by :func:`check_document`, then its media (stored or rendered) are hashed and compared
    with ``media_sha1``. A bare :func:`make_example` dict (training data, no fingerprint) is rendered unchecked.
    """
    if not strict and "id" not in document and "media_sha1" not in document:
        if document.get("frames") is not None:
            return np.asarray(document["frames"], dtype=np.uint8), np.asarray(document["waveform"], dtype=np.float32)
        scene = Scene.from_json(document["scene"])
        return render_video(scene), render_audio(scene)
    scene = check_document(document)
    expected = document["media_sha1"]
    if document.get("frames") is not None:
        frames = np.asarray(document["frames"], dtype=np.uint8)
        waveform = np.asarray(document["waveform"], dtype=np.float32)
        actual = media_sha1(frames, waveform)
        if actual != expected:
            raise ValueError(
                f"document {document.get('id')!r}: stored frames and waveform (sha1 {actual}) differ from media_sha1 "
                f"{expected}; expected the media of its scene: the stored media were edited, or rebuild the split "
                f"with `{_rebuild_hint(document)} --with-media`"
            )
        return frames, waveform
    frames, waveform = render_video(scene), render_audio(scene)
    actual = media_sha1(frames, waveform)
    if actual != expected:
        raise ValueError(
            f"document {document.get('id')!r}: rendered media (sha1 {actual}) differ from media_sha1 {expected}, "
            "although its question and answer agree with its scene (check_document passes); either the document's "
            "scene (or media_sha1) was edited, or the AV-Synth renderer changed since the split was written; "
            f"expected matching media: restore the document, or rebuild the split with `{_rebuild_hint(document)}`"
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
