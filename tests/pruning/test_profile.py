"""Profile JSON: valid files load as before; every other shape is a ValueError naming the field and what is accepted."""

from __future__ import annotations

import json
import re

import pytest

from fastav_eval.pruning import PrefixKeep, PruningConfig, PruningProfile
from fastav_eval.testbed import WEIGHTS_DIR

RULE = (
    r"accepted: an object with exactly one of first_tokens \(an int >= 0\), first_fraction \(a number in \[0, 1\]\) "
    r"or first_chunks \(an int >= 0\)"
)
KEEP = r"accepted: an object mapping 'video' / 'audio' to an object with exactly one of first_tokens"


def _profile(**fields) -> dict:
    return {"format": "fastav-profile/1", "keep": {"audio": {"first_tokens": 10}}, **fields}


def test_the_shipped_profile_loads_as_written():
    path = WEIGHTS_DIR / "profile.json"
    raw = json.loads(path.read_text())
    profile = PruningProfile.load(path)
    assert profile.keep == {"video": PrefixKeep(first_fraction=0.25), "audio": PrefixKeep(first_fraction=0.25)}
    assert (profile.num_layers, profile.global_layer, profile.source) == (6, 3, "rollout")
    assert profile.rollout == raw["rollout"]
    assert profile.to_dict() == raw


@pytest.mark.parametrize(
    "data",
    [
        {"format": "fastav-profile/1", "keep": {}},
        _profile(num_layers=None, global_layer=None, source="manual", rollout=None),
        _profile(keep={"video": {"first_chunks": 0}, "audio": {"first_fraction": 1}}, num_layers=2, global_layer=1),
    ],
)
def test_valid_dicts_round_trip(data):
    profile = PruningProfile.from_dict(data)
    assert PruningProfile.from_dict(profile.to_dict()) == profile
    assert profile.to_dict()["keep"] == data["keep"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2, 3], r"profile=\[1, 2, 3\]; accepted: a JSON object with format 'fastav-profile/1' and keep"),
        ("fastav-profile/1", r"profile='fastav-profile/1'; accepted: a JSON object"),
        (None, r"profile=None; accepted: a JSON object"),
        ({"keep": {}}, r"profile format=None; accepted: 'fastav-profile/1'"),
        (_profile(global_layers=3), r"profile has unknown key\(s\) \['global_layers'\]; accepted: \['format', 'keep'"),
        ({"format": "fastav-profile/1"}, rf"profile keep is missing; {KEEP}"),
        (_profile(keep=[{"first_tokens": 1}]), rf"profile keep=\[\{{'first_tokens': 1\}}\]; {KEEP}"),
        (_profile(keep="audio"), rf"profile keep='audio'; {KEEP}"),
        (_profile(keep={"text": {"first_tokens": 1}}), r"profile keep key 'text' is not prunable; accepted: \['video'"),
        (_profile(keep={"video": "half"}), rf"profile keep.video='half'; {RULE}"),
        (_profile(keep={"video": 3}), rf"profile keep.video=3; {RULE}"),
        (
            _profile(keep={"video": {"first_half": 3}}),
            rf"profile keep.video=\{{'first_half': 3\}} has unknown key\(s\) \['first_half'\]; {RULE}",
        ),
        (_profile(keep={"audio": {}}), rf"profile keep.audio=\{{\}} sets 0 keys; {RULE}"),
        (
            _profile(keep={"audio": {"first_tokens": 1, "first_chunks": 1}}),
            rf"profile keep.audio=\{{'first_tokens': 1, 'first_chunks': 1\}} sets 2 keys; {RULE}",
        ),
        (_profile(keep={"audio": {"first_tokens": "10"}}), r"profile keep.audio.first_tokens='10'; accepted: an int"),
        (_profile(keep={"audio": {"first_tokens": 2.0}}), r"profile keep.audio.first_tokens=2.0; accepted: an int"),
        (_profile(keep={"audio": {"first_chunks": -1}}), r"profile keep.audio.first_chunks=-1; accepted: an int >= 0"),
        (_profile(keep={"audio": {"first_chunks": True}}), r"profile keep.audio.first_chunks=True; accepted: an int"),
        (
            _profile(keep={"audio": {"first_fraction": "half"}}),
            r"profile keep.audio.first_fraction='half'; accepted: a number in \[0, 1\]",
        ),
        (
            _profile(keep={"audio": {"first_fraction": 1.5}}),
            r"profile keep.audio.first_fraction=1.5; accepted: a number in \[0, 1\]",
        ),
        (_profile(num_layers="6"), r"profile num_layers='6'; accepted: an int >= 1 or null"),
        (_profile(num_layers=6.0), r"profile num_layers=6.0; accepted: an int >= 1 or null"),
        (_profile(num_layers=0), r"profile num_layers=0; accepted: an int >= 1 or null"),
        (_profile(global_layer=[3]), r"profile global_layer=\[3\]; accepted: an int >= 1 or null"),
        (_profile(global_layer=True), r"profile global_layer=True; accepted: an int >= 1 or null"),
        (
            _profile(num_layers=6, global_layer=6),
            r"profile global_layer=6; accepted: an int in \[1, num_layers - 1\] = \[1, 5\] \(num_layers=6\) or null",
        ),
        (_profile(source=None), r"profile source=None; accepted: a string \('manual' or 'rollout'\)"),
        (_profile(rollout=[0.5]), r"profile rollout=\[0.5\]; accepted: an object or null"),
    ],
)
def test_bad_shapes_name_the_field(data, message):
    with pytest.raises(ValueError, match=message):
        PruningProfile.from_dict(data)


def test_long_values_are_cut_in_messages():
    with pytest.raises(ValueError, match=r"profile=\[0, 1, 2, .*\.\.\.; accepted") as raised:
        PruningProfile.from_dict(list(range(1000)))
    assert len(str(raised.value)) < 300


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2, 3]", r"profile=\[1, 2, 3\]; accepted: a JSON object"),
        ('{"format": "fastav-profile/1", "keep": {"video": "half"}}', rf"profile keep.video='half'; {RULE}"),
        ('{"format": "fastav-profile/1", "keep": {"video": {"first_half": 3}}}', r"unknown key\(s\) \['first_half'\]"),
        ('{"format": "fastav-profile/1", "keep": 7}', rf"profile keep=7; {KEEP}"),
        ('{"format": "fastav-profile/1", "keep": {}, "num_layers": "6"}', r"profile num_layers='6'; accepted: an int"),
        (
            '{"format": "fastav-profile/1", "keep": {}',
            r"is not valid JSON \(Expecting ',' delimiter at line 1 column 42\); accepted: a fastav-profile/1 JSON",
        ),
        ("", r"is not valid JSON \(Expecting value at line 1 column 1\)"),
    ],
)
def test_load_names_the_file(tmp_path, text, message):
    path = tmp_path / "bad profile.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"^profile={re.escape(repr(str(path)))}(: | ).*{message}"):
        PruningProfile.load(path)
    with pytest.raises(ValueError, match=message):
        PruningConfig(profile=path).resolve(6)


def test_load_refuses_binary_files(tmp_path):
    path = tmp_path / "profile.json"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match=r"profile='.*profile.json' is not UTF-8 text \(invalid start byte at byte 0"):
        PruningProfile.load(path)


def test_prefix_keep_refuses_non_numbers():
    with pytest.raises(ValueError, match=r"first_fraction='half' must be a number in \[0, 1\]"):
        PrefixKeep(first_fraction="half")
    with pytest.raises(ValueError, match=r"first_tokens=True must be an int >= 0"):
        PrefixKeep(first_tokens=True)
    with pytest.raises(ValueError, match=r"profile keep.audio=10; accepted: a PrefixKeep"):
        PruningProfile(keep={"audio": 10})
