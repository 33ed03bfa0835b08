"""AV-Synth: determinism, balance, no answer leaks, and the shipped test split matching the generator."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from datasets import load_dataset

from fastav_eval.avsynth import KINDS, TASKS, Scene, build_documents, load_media, render_audio, render_video
from fastav_eval.avsynth.questions import describe, make_example
from fastav_eval.avsynth.world import COLOUR_PITCH_HZ, NUM_SAMPLES, SAMPLE_RATE

SHIPPED = Path(__file__).resolve().parents[2] / "tasks" / "avsynth" / "data" / "test"


def test_documents_and_media_are_deterministic():
    first, second = build_documents("val", "avsynth_qa", 20), build_documents("val", "avsynth_qa", 20)
    assert first == second
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(load_media(a)[0], load_media(b)[0])
        assert np.array_equal(load_media(a)[1], load_media(b)[1])
    assert build_documents("val", "avsynth_qa", 20, seed=1) != first
    assert build_documents("test", "avsynth_qa", 20) != first


@pytest.mark.parametrize("task", sorted(TASKS))
def test_answers_are_balanced_per_kind(task):
    documents = build_documents("val", task, 120)
    for kind in TASKS[task]:
        answers = Counter(d["answer"] for d in documents if d["kind"] == kind)
        if KINDS[kind].choices:
            assert set(answers) == set(KINDS[kind].choices)
            assert max(answers.values()) - min(answers.values()) <= 1, (kind, answers)


def test_the_answer_is_never_in_the_question():
    rng = np.random.default_rng(0)
    for kind, spec in KINDS.items():
        for _ in range(50):
            example = make_example(kind, rng)
            if spec.choices:
                assert example["answer"] not in example["question"].split(), example


def _accuracy_of(rule, kind: str, count: int = 1500) -> float:
    rng = np.random.default_rng(11)
    hits = 0
    for _ in range(count):
        doc = make_example(kind, rng)
        hits += rule(Scene.from_json(doc["scene"]), doc) == doc["answer"]
    return hits / count


def test_single_sense_shortcuts_stay_at_chance():
    """Cues a model could read without the sense (or the link) a question is about carry no answer."""
    yes = lambda ok: "yes" if ok else "no"  # noqa: E731
    asked_colour = lambda doc: doc["question"].split()[2 if doc["kind"] == "halluc_sound" else 3]  # noqa: E731
    shortcuts = {
        "halluc_sound: two or more sounds": (lambda s, d: yes(len(s.events) >= 2), "halluc_sound"),
        "halluc_sound: two objects": (lambda s, d: yes(len(s.objects) == 2), "halluc_sound"),
        "halluc_visible: target heard": (lambda s, d: yes(s.event_count(asked_colour(d)) > 0), "halluc_visible"),
        "halluc_visible: two objects": (lambda s, d: yes(len(s.objects) == 2), "halluc_visible"),
        "match: two or more sounds": (lambda s, d: yes(len(s.events) >= 2), "match"),
        "qa_order: question order": (lambda s, d: "yes", "qa_order"),
    }
    for name, (rule, kind) in shortcuts.items():
        assert abs(_accuracy_of(rule, kind) - 0.5) < 0.05, name
    # qa_sounding: the colour heard most often is one of two candidates, so it is right half the time (chance 25%).
    most_heard = lambda s, d: Counter(e.colour for e in s.events).most_common(1)[0][0]  # noqa: E731
    assert abs(_accuracy_of(most_heard, "qa_sounding") - 0.5) < 0.05
    # qa_count: the number of distinct pitches does not give the count.
    distinct = lambda s, d: ["one", "two", "three"][len({e.colour for e in s.events}) - 1]  # noqa: E731
    assert _accuracy_of(distinct, "qa_count") < 0.6


def test_scene_facts_are_what_the_answer_says():
    rng = np.random.default_rng(1)
    for _ in range(40):
        doc = make_example("match", rng)
        scene = Scene.from_json(doc["scene"])
        (obj,) = scene.objects
        assert (doc["answer"] == "yes") == all(e.colour == obj.colour for e in scene.events)
        doc = make_example("qa_count", rng)
        assert len(Scene.from_json(doc["scene"]).events) == ["one", "two", "three"].index(doc["answer"]) + 1
        doc = make_example("halluc_visible", rng)
        _, _, _, colour, shape, *_ = doc["question"].split()
        assert Scene.from_json(doc["scene"]).visible(colour, shape) == (doc["answer"] == "yes")
        doc = make_example("halluc_sound", rng)
        scene, (_, _, colour, shape, *_) = Scene.from_json(doc["scene"]), doc["question"].split()
        assert scene.visible(colour, shape)
        assert (scene.event_count(colour) > 0) == (doc["answer"] == "yes")
        doc = make_example("qa_order", rng)
        scene, words = Scene.from_json(doc["scene"]), doc["question"].split()
        first = min(scene.events, key=lambda e: e.onset_s).colour
        assert (first == words[2]) == (doc["answer"] == "yes")
        doc = make_example("qa_sounding", rng)
        scene = Scene.from_json(doc["scene"])
        sounding = [o.colour for o in scene.objects if scene.event_count(o.colour) > 0]
        assert sounding == [doc["answer"]] and len(scene.objects) == 2
        doc = make_example("qa_colour", rng)
        scene, shape = Scene.from_json(doc["scene"]), doc["question"].split()[-2]
        assert [o.colour for o in scene.objects if o.shape == shape] == [doc["answer"]]
        doc = make_example("qa_shape", rng)
        scene, colour = Scene.from_json(doc["scene"]), doc["question"].split()[-3]
        assert [o.shape for o in scene.objects if o.colour == colour] == [doc["answer"]]


def test_scenes_are_well_formed():
    """Visible objects have distinct colours and never touch; sound events never overlap in time."""
    rng = np.random.default_rng(4)
    for kind in KINDS:
        for _ in range(100):
            scene = Scene.from_json(make_example(kind, rng)["scene"])
            assert len({o.colour for o in scene.objects}) == len(scene.objects)
            if len(scene.objects) == 2:
                left, right = sorted(scene.objects, key=lambda o: o.x)
                assert left.x + left.radius < right.x - right.radius
            events = sorted(scene.events, key=lambda e: e.onset_s)
            for earlier, later in itertools.pairwise(events):
                assert earlier.onset_s + earlier.duration_s < later.onset_s


def test_rendering_shows_objects_and_sounds_at_their_pitch():
    scene = Scene.from_json(make_example("match", np.random.default_rng(2), "yes")["scene"])
    frames, wave = render_video(scene), render_audio(scene)
    (obj,) = scene.objects
    assert tuple(frames[obj.first_frame, obj.y, obj.x]) != tuple(frames[obj.first_frame, 0, 0])
    event = scene.events[0]
    start = int(event.onset_s * SAMPLE_RATE)
    segment = wave[start : start + 2048]
    peak_hz = np.fft.rfftfreq(2048, 1 / SAMPLE_RATE)[np.abs(np.fft.rfft(segment)).argmax()]
    assert abs(peak_hz - COLOUR_PITCH_HZ[event.colour]) < 16
    assert wave.shape == (NUM_SAMPLES,)


def test_caption_names_every_object_and_off_screen_sound():
    rng = np.random.default_rng(3)
    for _ in range(30):
        doc = make_example("caption", rng)
        scene = Scene.from_json(doc["scene"])
        assert doc["answer"] == describe(scene)
        for obj in scene.objects:
            assert f"{obj.colour} {obj.shape}" in doc["answer"]
        for event in scene.events:
            assert event.colour in doc["answer"]


def test_tampered_scene_fails_the_media_check():
    doc = build_documents("val", "avsynth_match", 1)[0]
    doc["scene"] = doc["scene"].replace('"noise_seed":', '"noise_seed":1')
    with pytest.raises(ValueError, match="media_sha1"):
        load_media(doc)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_shipped_test_split_is_what_the_generator_writes(task):
    shipped = load_dataset("parquet", data_files={"test": str(SHIPPED / f"{task}.parquet")})["test"]
    assert len(shipped) == 240
    regenerated = build_documents("test", task, len(shipped))
    assert shipped.to_list() == regenerated
