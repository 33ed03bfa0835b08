"""AV-Synth documents are checked against their scene before they are scored: edited documents are refused by name."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fastav_eval.avsynth import KINDS, TASKS, Scene, build_documents, make_example, render_audio, render_video
from fastav_eval.avsynth import dataset as dataset_module
from fastav_eval.avsynth.dataset import (
    ANSWERERS,
    QUESTIONS,
    check_document,
    load_media,
    rebuild_command,
    scene_answer,
)
from fastav_eval.avsynth.questions import describe
from fastav_eval.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "tasks" / "avsynth" / "data" / "test"
REBUILD = re.escape("`fastav-eval build-avsynth --split test --per-task 240 --out tasks/avsynth/data`")


def _task_hooks():
    """tasks/avsynth/utils.py, the module lmms-eval loads from the task YAML (it is not a package)."""
    spec = importlib.util.spec_from_file_location("avsynth_task_utils", ROOT / "tasks" / "avsynth" / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


doc_to_visual = _task_hooks().doc_to_visual


def _shipped_documents() -> list[dict]:
    return [row for path in sorted(SHIPPED.glob("*.parquet")) for row in pq.read_table(path).to_pylist()]


def _document(kind: str, answer: str | None = None) -> dict:
    """The first test-split document of ``kind`` (with ``answer`` when given), as shipped."""
    task = KINDS[kind].task
    for document in build_documents("test", task, 60):
        if document["kind"] == kind and answer in (None, document["answer"]):
            return document
    raise AssertionError(f"no {kind} document with answer {answer!r}")


def _edit_scene(document: dict, edit: Callable[[dict], None]) -> dict:
    raw = json.loads(document["scene"])
    edit(raw)
    return {**document, "scene": json.dumps(raw, separators=(",", ":"))}


def _refused(document: dict, message: str) -> None:
    """Every way a document reaches evaluation refuses it with ``message``."""
    for load in (check_document, load_media, doc_to_visual):
        with pytest.raises(ValueError, match=message):
            load(document)


def test_every_shipped_document_passes_and_renders_to_its_media_sha1():
    documents = _shipped_documents()
    assert len(documents) == 960
    assert {d["task"] for d in documents} == set(TASKS)
    for document in documents:
        assert check_document(document) == Scene.from_json(document["scene"])
        load_media(document, strict=True)  # renders and compares media_sha1 (about 1.5 ms a document)
    video, audio = doc_to_visual(documents[0])
    assert video["type"] == "video" and video["frames"].shape == (8, 32, 32, 3)
    assert audio["type"] == "audio" and audio["array"].shape == (32000,)


def test_every_kind_has_a_question_template_and_an_answer():
    assert set(QUESTIONS) == set(ANSWERERS) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_scene_gives_the_answer_the_builder_chose(kind):
    """The answer recomputed from the scene is the one each builder makes true, for every kind and answer."""
    rng = np.random.default_rng([5, sorted(KINDS).index(kind)])
    answers = set()
    for _ in range(300):
        example = make_example(kind, rng)
        assert scene_answer(kind, example["question"], Scene.from_json(example["scene"])) == example["answer"]
        answers.add(example["answer"])
    if KINDS[kind].choices:
        assert answers == set(KINDS[kind].choices)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_freshly_built_documents_pass(task):
    for document in build_documents("val", task, 40):
        check_document(document)


def test_null_or_missing_media_sha1_is_refused():
    document = _document("qa_colour")
    expected = r"expected a string of 40 lowercase hex digits, the SHA-1 of its rendered media"
    _refused({**document, "media_sha1": None}, rf"^document 'avsynth_qa-test-00000': media_sha1=None; {expected}")
    missing = {k: v for k, v in document.items() if k != "media_sha1"}
    _refused(missing, rf"^document 'avsynth_qa-test-00000': field 'media_sha1' is missing; {expected}")
    _refused({**document, "media_sha1": "abc123"}, rf"media_sha1='abc123'; {expected}")
    _refused({**document, "media_sha1": document["media_sha1"].upper()}, rf"media_sha1='[0-9A-F]{{40}}'; {expected}")


def test_a_count_question_on_a_scene_without_sounds_is_refused():
    document = _document("qa_count")

    def silence(raw: dict) -> None:
        raw["events"] = []

    _refused(
        _edit_scene(document, silence),
        rf"^document '{document['id']}': its scene does not answer 'how many sounds are there \?': "
        r"the scene has 0 sounds; expected 1 to 3 sounds to count$",
    )


def test_an_object_question_on_an_empty_scene_is_refused():
    document = _document("qa_colour")
    assert document["question"] == "what colour is the circle ?"

    def empty(raw: dict) -> None:
        raw["objects"] = []

    _refused(
        _edit_scene(document, empty),
        r"^document 'avsynth_qa-test-00000': its scene does not answer 'what colour is the circle \?': "
        r"the scene has 0 circles; expected exactly one visible circle, whose colour is the answer$",
    )
    shape = _document("qa_shape")
    _refused(_edit_scene(shape, empty), r"the scene has 0 blue objects; expected exactly one visible blue object")
    sound = _document("halluc_sound")
    _refused(_edit_scene(sound, empty), r"does not answer 'is the \w+ \w+ making a sound \?': the scene has no \w+ \w+")
    _refused(_edit_scene(_document("caption"), empty), r"the scene has no visible objects; expected one or two objects")
    _refused(_edit_scene(_document("match"), empty), r"the scene has 0 visible objects; expected exactly one")


def test_questions_the_scene_cannot_answer_are_refused():
    order = _document("qa_order")  # "was the green sound before the red sound ?"

    def drop_first_sound(raw: dict) -> None:
        raw["events"] = raw["events"][1:]

    _refused(_edit_scene(order, drop_first_sound), r"the scene has 0 green sounds; expected exactly one green sound")
    sounding = _document("qa_sounding")

    def silence(raw: dict) -> None:
        raw["events"] = []

    _refused(_edit_scene(sounding, silence), r"the scene has 0 sounding visible objects \[\]; expected exactly one")
    _refused(_edit_scene(_document("match"), silence), r"the scene has 0 sound colours \[\]; expected sounds")


@pytest.mark.parametrize(
    ("kind", "answer", "edited"),
    [("qa_count", "one", "two"), ("match", "yes", "no"), ("halluc_visible", "no", "yes"), ("qa_colour", "red", "blue")],
)
def test_an_answer_changed_by_hand_is_refused(kind, answer, edited):
    document = _document(kind, answer)
    question = re.escape(document["question"])
    _refused(
        {**document, "answer": edited},
        rf"^document '{document['id']}': answer='{edited}' contradicts its scene, which answers '{answer}' to "
        rf"'{question}'; expected answer='{answer}' \(the document was edited: restore it, or rebuild the split "
        rf"with {REBUILD}\)$",
    )


def test_an_edited_caption_is_refused():
    document = _document("caption")
    assert document["answer"] == describe(Scene.from_json(document["scene"]))
    _refused({**document, "answer": document["answer"] + " a red sound comes from off screen ."}, r"contradicts")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"answer": "four"}, r"answer='four'; expected one of \['one', 'two', 'three'\]"),
        ({"answer": None}, r"answer=None; expected one of"),
        ({"kind": "qa_total"}, r"kind='qa_total' is not an AV-Synth question kind; expected one of \['caption'"),
        ({"kind": "qa_order"}, r"choices=\['one', 'two', 'three'\]; expected \['yes', 'no'\] for kind 'qa_order'"),
        (
            {"kind": "qa_order", "choices": ["yes", "no"], "answer": "yes"},
            r"question='how many sounds are there \?' is not what kind 'qa_order' asks",
        ),
        ({"needs": "video"}, r"needs='video'; expected 'audio' for kind 'qa_count'"),
        ({"task": "avsynth_match"}, r"task='avsynth_match'; expected 'avsynth_qa' for kind 'qa_count'"),
        ({"choices": ["one", "two"]}, r"choices=\['one', 'two'\]; expected \['one', 'two', 'three'\] for kind"),
        ({"question": "how many sounds are there?"}, r"is not what kind 'qa_count' asks; expected a qa_count question"),
        ({"scene": "{not json"}, r"scene does not parse \(JSONDecodeError: .*\); expected the scene JSON"),
        ({"scene": '{"objects": []}'}, r"scene does not parse \(KeyError: 'events'\)"),
        ({"scene": None}, r"scene=None is not a string"),
    ],
)
def test_fields_that_do_not_belong_together_are_refused(changes, message):
    _refused({**_document("qa_count"), **changes}, rf"^document 'avsynth_qa-test-00002': .*{message}")


def test_questions_naming_unknown_words_are_refused():
    document = _document("qa_colour")
    _refused({**document, "question": "what colour is the star ?"}, r"question='what colour is the star \?' names")
    order = _document("qa_order")
    same = "was the green sound before the green sound ?"
    _refused({**order, "question": same}, r"compares the green sound with itself")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda raw: raw["objects"][0].update(colour="purple"), r"scene object .*'purple'.*; expected colour in"),
        (lambda raw: raw["objects"][0].update(last_frame=8), r"expected frames with 0 <= first_frame <= last_frame"),
        (lambda raw: raw["objects"].append(dict(raw["objects"][0])), r"expected at most two visible objects, of"),
        (lambda raw: raw["events"][0].update(duration_s=5.0), r"scene sound .*; expected onset_s >= 0, duration_s"),
        (lambda raw: raw["events"][0].update(onset_s="soon"), r"expected numbers onset_s and duration_s"),
        (lambda raw: raw["events"].append(dict(raw["events"][0])), r"overlap in time; expected sound events that"),
        (lambda raw: raw.update(noise_seed=-1), r"scene noise_seed=-1; expected an int >= 0"),
    ],
)
def test_scenes_the_world_cannot_contain_are_refused(edit, message):
    _refused(_edit_scene(_document("qa_order"), edit), message)


def test_a_consistent_scene_edit_fails_the_media_check_naming_both_causes():
    document = _document("qa_count")

    def shift(raw: dict) -> None:
        raw["noise_seed"] += 1

    edited = _edit_scene(document, shift)
    check_document(edited)  # still self-consistent: only the media can tell
    message = (
        rf"^document '{document['id']}': rendered media \(sha1 [0-9a-f]{{40}}\) differ from media_sha1 "
        rf"{document['media_sha1']}, although its question and answer agree with its scene \(check_document passes\); "
        r"either the document's scene \(or media_sha1\) was edited, or the AV-Synth renderer changed since the split "
        rf"was written; expected matching media: restore the document, or rebuild the split with {REBUILD}$"
    )
    for load in (load_media, doc_to_visual):
        with pytest.raises(ValueError, match=message):
            load(edited)


def test_a_changed_renderer_fails_the_media_check(monkeypatch):
    document = _document("match")
    monkeypatch.setattr(dataset_module, "render_audio", lambda scene: render_audio(scene) * 0.5)
    with pytest.raises(ValueError, match=r"or the AV-Synth renderer changed since the split was written"):
        load_media(document)


def test_an_inconsistent_edit_blames_the_document_not_the_renderer():
    document = _document("qa_count", "two")

    def drop_a_sound(raw: dict) -> None:
        raw["events"] = raw["events"][:1]

    with pytest.raises(ValueError, match=r"answer='two' contradicts its scene, which answers 'one'") as raised:
        load_media(_edit_scene(document, drop_a_sound))
    assert "renderer" not in str(raised.value)


def test_stored_media_are_checked_against_media_sha1():
    document = _document("qa_sounding")
    scene = Scene.from_json(document["scene"])
    frames, waveform = render_video(scene), render_audio(scene)
    stored = {**document, "frames": frames.tolist(), "waveform": waveform.tolist()}
    got_frames, got_waveform = load_media(stored)
    assert np.array_equal(got_frames, frames) and np.array_equal(got_waveform, waveform)
    frames[0, 0, 0] += 1
    with pytest.raises(ValueError, match=r"stored frames and waveform \(sha1 [0-9a-f]{40}\) differ from media_sha1"):
        load_media({**stored, "frames": frames.tolist()})


def test_training_examples_render_unchecked_but_not_for_evaluation():
    example = make_example("sound_colour", np.random.default_rng(0))
    frames, waveform = load_media(example)
    assert frames.shape == (8, 32, 32, 3) and waveform.shape == (32000,)
    for load in (lambda d: load_media(d, strict=True), doc_to_visual):
        with pytest.raises(ValueError, match=r"^document None: field 'media_sha1' is missing"):
            load(example)


def test_the_rebuild_command_in_messages_is_a_real_command():
    args = build_parser().parse_args(rebuild_command().split()[1:])
    assert (args.command, args.split, args.per_task, args.out) == ("build-avsynth", "test", 240, "tasks/avsynth/data")
    assert build_parser().parse_args(rebuild_command("val").split()[1:]).split == "val"


def test_non_mappings_are_refused():
    with pytest.raises(ValueError, match=r"document=\['qa_count'\]; expected a mapping"):
        check_document(["qa_count"])
