"""Question builders: each samples a scene whose correct answer is the one asked for, so splits are balanced.

Every builder has the signature ``(rng, answer) -> (scene, question, choices)``; ``answer`` must be one of
``KINDS[kind].choices``. ``needs`` says which senses the answer depends on: for ``video`` and ``audio`` kinds the
other sense is a distractor whose content is independent of the answer (the AVHBench hallucination traps), and for
``both`` kinds each sense alone leaves the answer open.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fastav_eval.avsynth.scene import Scene, SoundEvent, VisibleObject
from fastav_eval.avsynth.world import CLIP_SECONDS, COLOURS, MAX_EVENTS, NUMBER_WORDS, SHAPES

YES_NO = ("yes", "no")
Source = tuple[str, str]  # (colour, shape)
Builder = Callable[[np.random.Generator, str], tuple[Scene, str, tuple[str, ...]]]


QUESTIONS: dict[str, str] = {
    "match": "does the sound match the visible object ?",
    "halluc_sound": "is the {colour} {shape} making a sound ?",
    "halluc_visible": "is there a {colour} {shape} in the video ?",
    "qa_colour": "what colour is the {shape} ?",
    "qa_shape": "what shape is the {colour} object ?",
    "qa_count": "how many sounds are there ?",
    "qa_order": "was the {colour} sound before the {other} sound ?",
    "qa_sounding": "what colour is the sounding object ?",
    "caption": "describe the clip .",
    "sound_colour": "what colour is the sound ?",
}
"""The question each kind asks: ``{colour}`` / ``{other}`` stand for a colour, ``{shape}`` for a shape."""


def _pick(rng: np.random.Generator, options: list[str] | tuple[str, ...]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _other_colours(*taken: str) -> list[str]:
    return [c for c in COLOURS if c not in taken]


def _objects(rng: np.random.Generator, sources: list[Source]) -> tuple[VisibleObject, ...]:
    """Big objects visible in at least six of the eight frames; two objects sit left and right."""
    if len(sources) == 1:
        ((colour, shape),) = sources
        return (
            VisibleObject(
                colour,
                shape,
                x=int(rng.integers(13, 20)),
                y=int(rng.integers(13, 20)),
                radius=int(rng.integers(8, 11)),
                first_frame=int(rng.integers(0, 2)),
                last_frame=int(rng.integers(6, 8)),
            ),
        )
    placed = []
    # Left x <= 8 and right x >= 23 with radius <= 7: the two shapes can never touch.
    for (colour, shape), x_range in zip(sources, ((7, 9), (23, 25)), strict=True):
        placed.append(
            VisibleObject(
                colour,
                shape,
                x=int(rng.integers(*x_range)),
                y=int(rng.integers(12, 21)),
                radius=int(rng.integers(6, 8)),
                first_frame=int(rng.integers(0, 2)),
                last_frame=int(rng.integers(6, 8)),
            )
        )
    return tuple(placed)


def _events(rng: np.random.Generator, sources: list[Source]) -> tuple[SoundEvent, ...]:
    """One sound per entry of ``sources`` (in that order), each in its own equal slot of the clip, never overlapping."""
    if len(sources) > MAX_EVENTS:
        raise ValueError(f"at most {MAX_EVENTS} sound events per clip; got {len(sources)}")
    events = []
    slot = CLIP_SECONDS / max(len(sources), 1)
    for index, (colour, shape) in enumerate(sources):
        duration = float(rng.uniform(0.25, min(0.45, slot - 0.15)))
        onset = index * slot + float(rng.uniform(0.05, slot - duration - 0.05))
        events.append(SoundEvent(colour, shape, onset_s=round(onset, 4), duration_s=round(duration, 4)))
    return tuple(events)


def _shuffled(rng: np.random.Generator, items: list[Source]) -> list[Source]:
    order = rng.permutation(len(items))
    return [items[i] for i in order]


def _scene(rng: np.random.Generator, visible: list[Source], sounds: list[Source]) -> Scene:
    return Scene(_objects(rng, visible), _events(rng, sounds), noise_seed=int(rng.integers(2**31 - 1)))


def _random_source(rng: np.random.Generator, colours: list[str] | tuple[str, ...] = COLOURS) -> Source:
    return _pick(rng, colours), _pick(rng, SHAPES)


def _two_visible(rng: np.random.Generator, first: Source | None = None) -> list[Source]:
    """One or two visible objects with distinct colours, the first one given or random."""
    first = first or _random_source(rng)
    if rng.random() < 0.5:
        return [first]
    return [first, _random_source(rng, _other_colours(first[0]))]


def match(rng: np.random.Generator, answer: str) -> tuple[Scene, str, tuple[str, ...]]:
    obj = _random_source(rng)
    source = obj if answer == "yes" else _random_source(rng, _other_colours(obj[0]))
    sounds = [source] * int(rng.integers(1, MAX_EVENTS + 1))
    return _scene(rng, [obj], sounds), QUESTIONS["match"], YES_NO


def halluc_sound(rng: np.random.Generator, answer: str) -> tuple[Scene, str, tuple[str, ...]]:
    """Video-driven audio hallucination: a visible object that may be silent while other sources sound.

    The answer is in the audio (is the target's pitch heard?). The number of sounds has the same distribution
    (1: 1/4, 2: 1/2, 3: 1/4) whatever the answer, so counting sounds says nothing.
    """
    visible = _shuffled(rng, _two_visible(rng))
    target = visible[int(rng.integers(len(visible)))]
    others = [v for v in visible if v != target] + [_random_source(rng, _other_colours(*[v[0] for v in visible]))]
    if answer == "yes":
        sounds = [target] * int(rng.integers(1, 3))
        if rng.random() < 0.5:
            sounds.append(others[int(rng.integers(len(others)))])
    else:
        total = int(rng.choice([1, 2, 2, 3]))
        sounds = [others[int(rng.integers(len(others)))] for _ in range(total)]
    colour, shape = target
    return (
        _scene(rng, visible, _shuffled(rng, sounds)),
        QUESTIONS["halluc_sound"].format(colour=colour, shape=shape),
        YES_NO,
    )


def halluc_visible(rng: np.random.Generator, answer: str) -> tuple[Scene, str, tuple[str, ...]]:
    """Audio-driven video hallucination: the target may be heard but not seen. The answer is in the video.

    One or two objects are visible (50/50 whatever the answer); a "no" shows another colour, or in a third of the
    cases the same colour with another shape. Whether the target is heard is a coin flip independent of the answer.
    """
    target = _random_source(rng)
    if answer == "yes":
        first = target
    elif rng.random() < 1 / 3:  # same colour, another shape
        first = (target[0], _pick(rng, [s for s in SHAPES if s != target[1]]))
    else:
        first = _random_source(rng, _other_colours(target[0]))
    visible = [first]
    if rng.random() < 0.5:
        visible.append(_random_source(rng, _other_colours(target[0], first[0])))
    sounds = [target] * int(rng.integers(1, 3)) if rng.random() < 0.5 else []
    if rng.random() < 0.3:
        sounds.append(_random_source(rng, _other_colours(target[0])))
    colour, shape = target
    scene = _scene(rng, _shuffled(rng, visible), _shuffled(rng, sounds))
    return scene, QUESTIONS["halluc_visible"].format(colour=colour, shape=shape), YES_NO


def _random_sounds(rng: np.random.Generator) -> list[Source]:
    return [_random_source(rng) for _ in range(int(rng.integers(0, 3)))]


def qa_colour(rng: np.random.Generator, answer: str) -> tuple[Scene, str, tuple[str, ...]]:
    target = (answer, _pick(rng, SHAPES))
    visible = [target]
    if rng.random() < 0.5:
        visible.append((_pick(rng, _other_colours(answer)), _pick(rng, [s for s in SHAPES if s != target[1]])))
    scene = _scene(rng, _shuffled(rng, visible), _random_sounds(rng))
    return scene, QUESTIONS["qa_colour"].format(shape=target[1]), COLOURS


def qa_shape(rng: np.random.Generator, answer: str) -> tuple[Scene, str, tuple[str, ...]]:
    target = (_pick(rng, COLOURS), answer)
    visible = [target]
    if rng.random() < 0.5:
        visible.append((_pick(rng, _other_colours(target[0])), _pick(rng, SHAPES)))
    scene = _scene(rng, _shuffled(rng, visible), _random_sounds(rng))
    return scene, QUESTIONS["qa_shape"].format(colour=target[0]), SHAPES


def qa_count(rng: np.random.Generator, answer: str) -> tuple[Scene, str, tuple[str, ...]]:
    count = NUMBER_WORDS.index(answer)
    palette = [_random_source(rng) for _ in range(int(rng.integers(1, 3)))]
    sounds = [palette[int(rng.integers(len(palette)))] for _ in range(count)]
    scene = _scene(rng, _two_visible(rng), sounds)
    return scene, QUESTIONS["qa_count"], NUMBER_WORDS[1 : MAX_EVENTS + 1]


def qa_order(rng: np.random.Generator, answer: str) -> tuple[Scene, str, tuple[str, ...]]:
    first = _random_source(rng)
    second = _random_source(rng, _other_colours(first[0]))
    asked = (first, second) if answer == "yes" else (second, first)
    scene = _scene(rng, _two_visible(rng), [first, second])
    return scene, QUESTIONS["qa_order"].format(colour=asked[0][0], other=asked[1][0]), YES_NO


def qa_sounding(rng: np.random.Generator, answer: str) -> tuple[Scene, str, tuple[str, ...]]:
    """Two visible objects, one silent, plus an off-screen sound: only both senses together single out the answer."""
    silent_colour, offscreen_colour = rng.permutation(_other_colours(answer))[:2]
    sounding = (answer, _pick(rng, SHAPES))
    visible = _shuffled(rng, [sounding, (str(silent_colour), _pick(rng, SHAPES))])
    # Counts (sounding, off-screen) uniform over (1, 1), (1, 2), (2, 1): the colour heard most often is right
    # only half the time, as often as a coin flip between the two pitches heard.
    sounding_count, offscreen_count = ((1, 1), (1, 2), (2, 1))[int(rng.integers(3))]
    sounds = [sounding] * sounding_count + [(str(offscreen_colour), _pick(rng, SHAPES))] * offscreen_count
    return _scene(rng, visible, _shuffled(rng, sounds)), QUESTIONS["qa_sounding"], COLOURS


def caption_scene(rng: np.random.Generator) -> Scene:
    """A free scene for captioning: one or two objects, each silent or sounding, maybe an off-screen sound."""
    visible = _two_visible(rng)
    sounds: list[Source] = []
    for source in visible:
        if rng.random() < 0.6:
            sounds += [source] * int(rng.integers(1, 3))
    if rng.random() < 0.35:
        sounds.append(_random_source(rng, _other_colours(*[v[0] for v in visible])))
    return _scene(rng, visible, _shuffled(rng, sounds[:MAX_EVENTS]))


def describe(scene: Scene) -> str:
    """The reference caption: objects left to right, what each one does, then any off-screen sound."""
    objects = sorted(scene.objects, key=lambda o: o.x)
    parts = [" and ".join(f"a {o.colour} {o.shape}" for o in objects) + " ."]
    for obj in objects:
        count = scene.event_count(obj.colour)
        action = "is silent" if count == 0 else f"makes {NUMBER_WORDS[count]} sound{'s' if count > 1 else ''}"
        parts.append(f"the {obj.colour} {obj.shape} {action} .")
    for colour in dict.fromkeys(e.colour for e in scene.events):
        if not scene.visible(colour):
            parts.append(f"a {colour} sound comes from off screen .")
    return " ".join(parts)


def caption(rng: np.random.Generator, answer: str) -> tuple[Scene, str, tuple[str, ...]]:
    del answer  # captions have no answer set: the reference is described from the scene
    return caption_scene(rng), QUESTIONS["caption"], ()


def sound_colour(rng: np.random.Generator, answer: str) -> tuple[Scene, str, tuple[str, ...]]:
    """Training-only warm-up: name the colour bound to the (single) pitch heard."""
    source = (answer, _pick(rng, SHAPES))
    sounds = [source] * int(rng.integers(1, MAX_EVENTS + 1))
    return _scene(rng, _two_visible(rng), sounds), QUESTIONS["sound_colour"], COLOURS


@dataclass(frozen=True)
class QuestionKind:
    name: str
    task: str  # the lmms-eval task it belongs to ("train" for training-only kinds)
    needs: str  # "video", "audio" or "both"
    choices: tuple[str, ...]  # the valid answers; empty for free text
    build: Builder


KINDS: dict[str, QuestionKind] = {
    kind.name: kind
    for kind in (
        QuestionKind("match", "avsynth_match", "both", YES_NO, match),
        QuestionKind("halluc_sound", "avsynth_halluc", "audio", YES_NO, halluc_sound),
        QuestionKind("halluc_visible", "avsynth_halluc", "video", YES_NO, halluc_visible),
        QuestionKind("qa_colour", "avsynth_qa", "video", COLOURS, qa_colour),
        QuestionKind("qa_shape", "avsynth_qa", "video", SHAPES, qa_shape),
        QuestionKind("qa_count", "avsynth_qa", "audio", NUMBER_WORDS[1 : MAX_EVENTS + 1], qa_count),
        QuestionKind("qa_order", "avsynth_qa", "audio", YES_NO, qa_order),
        QuestionKind("qa_sounding", "avsynth_qa", "both", COLOURS, qa_sounding),
        QuestionKind("caption", "avsynth_caption", "both", (), caption),
        QuestionKind("sound_colour", "train", "audio", COLOURS, sound_colour),
    )
}
TASKS: dict[str, tuple[str, ...]] = {
    task: tuple(k.name for k in KINDS.values() if k.task == task)
    for task in ("avsynth_match", "avsynth_halluc", "avsynth_qa", "avsynth_caption")
}


def make_example(kind: str, rng: np.random.Generator, answer: str | None = None) -> dict:
    """One question of ``kind`` with its scene; ``answer`` defaults to a uniform draw from the kind's choices."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}; got {kind!r}")
    spec = KINDS[kind]
    if answer is None and spec.choices:
        answer = _pick(rng, spec.choices)
    if spec.choices and answer not in spec.choices:
        raise ValueError(f"answer for kind {kind!r} must be one of {spec.choices}; got {answer!r}")
    scene, question, choices = spec.build(rng, answer or "")
    return {
        "kind": kind,
        "task": spec.task,
        "needs": spec.needs,
        "question": question,
        "answer": describe(scene) if kind == "caption" else answer,
        "choices": list(choices),
        "scene": scene.to_json(),
    }
