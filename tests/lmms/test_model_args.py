"""One ``--model_args`` parser for every wrapper and command: declared types, duplicates, conflicts, lmms-eval's
own options, and what the wrapper says about a keep larger than the tokens there (lmms-eval's CLI end to end)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from fastav_eval.lmms.models import FastAVTiny
from fastav_eval.models.model_args import (
    CONFLICTS,
    ENGINE_KINDS,
    KINDS,
    arg_kinds,
    join_model_args,
    parse_model_args,
    pruning_config,
    split_items,
    wrapper_settings,
)
from fastav_eval.models.testbed import TestbedAdapter
from fastav_eval.pruning.config import LAST_LAYER
from fastav_eval.resources import tasks_path

pytest.importorskip("lmms_eval")
TINY = arg_kinds(TestbedAdapter)
VALID = {"prune": "fastav", "policy": "x", "global_rule": "random", "fine_rule": "random", "fine_ratio": "0.1",
         "profile": "p.json"}  # fmt: skip
"""A valid value of each key whose value "1" would not be."""
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def test_values_are_read_by_their_declared_kind_so_negative_numbers_are_ints():
    parsed = parse_model_args(
        "global_layer=-1,seed=-3,video_keep=1,audio_keep=1.0,fine_ratio=0,senses=audio,use_kernels=false", TINY
    )
    assert parsed == {"global_layer": -1, "seed": -3, "video_keep": 1, "audio_keep": 1.0, "fine_ratio": 0.0,
                      "senses": "audio", "use_kernels": False}  # fmt: skip
    assert type(parsed["global_layer"]) is int and type(parsed["video_keep"]) is int  # 1 token, not 100%
    assert wrapper_settings(TestbedAdapter, parsed).config.global_layer == LAST_LAYER


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sink_tokens=-1", "sink_tokens=-1; accepted: an int >= 0"),
        ("global_layer=-1.0", "global_layer=-1.0; accepted: an int >= 1 (a decoder layer, below the depth) or -1"),
        ("global_layer=0", "global_layer=0; accepted: an int >= 1"),
        ("batch_size=0", "batch_size=0; accepted: an int >= 1"),
        ("video_keep_chunks=1.5", "video_keep_chunks=1.5; accepted: an int >= 0"),
        ("audio_keep=-2", "audio_keep=-2; accepted: an int N >= 0 (first N tokens) or a float in [0, 1]"),
        ("fine_ratio=1", "fine_ratio=1; accepted: a number in [0, 1)"),
        ("use_kernels=yes", "use_kernels='yes'; accepted: true or false"),
        ("pretrained=", "pretrained=''; accepted: a non-empty string"),
        ("prune=fastav,prune=none", "prune is given twice in --model_args (prune=fastav and prune=none); give it once"),
        ("fine_ratio=0.1,fine_ratio=0.1", "fine_ratio is given twice"),
        ("prune", "--model_args item 'prune'; accepted: key=value items"),
        ("senses=audio,prune='none", "a ' quote is not closed"),
        ("max_batch_size=4", "unknown --model_args key(s) ['max_batch_size']"),
        ("system_prompt=x", "unknown --model_args key(s) ['system_prompt']"),  # another adapter's key
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_accepted(text, message):
    with pytest.raises(ValueError) as error:
        parse_model_args(text, TINY)
    assert message in str(error.value)


def test_every_kind_refuses_an_empty_value():
    for name, kind in KINDS.items():
        with pytest.raises((ValueError, KeyError, TypeError)):
            kind.convert("")
        assert kind.accepted, name


@pytest.mark.parametrize("rule", CONFLICTS, ids=lambda rule: f"{rule.key}={rule.values}")
def test_each_conflict_of_the_table_is_refused_naming_both_keys(rule):
    trigger = {"*": "fastav_tiny_retention" if rule.key == "policy" else "0.5", "rule:*": "rule:avsynth_senses"}
    value = trigger.get(rule.values, rule.values)
    for other in rule.refuses:
        if other == rule.key:
            continue
        given = {rule.key: value, other: VALID.get(other, "1")}
        text = join_model_args(given)
        with pytest.raises(ValueError) as error:
            parse_model_args(text, TINY)
        message = str(error.value)  # this rule's reason, or an earlier rule's that covers the same pair
        assert any(message.startswith(r.reason) for r in CONFLICTS) and f"{other}=" in message, text
        assert f"{rule.key}=" in message, text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("policy=fastav_tiny_retention,prune=fastav", "a policy decides the pruning"),
        ("global_rule=none,video_keep=10", "global_rule=none turns the global stage off"),
        ("global_rule=None,audio_keep=0.5", "global_rule=none turns the global stage off"),
        ("global_rule=none,profile=p.json", "global_rule=none turns the global stage off"),
        ("global_rule=none,audio_keep_chunks=1", "global_rule=none turns the global stage off"),
        ("prune=none,global_layer=2", "prune=none takes no pruning arguments"),
        ("video_keep=10,video_keep_chunks=1", "video_keep and video_keep_chunks both given"),
    ],
)
def test_the_issues_conflicts_are_refused(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_model_args(text, TINY)


def test_what_goes_together_is_accepted():
    together = (
        "global_rule=none,global_layer=2,fine_ratio=0.3",
        "video_keep=10,audio_keep_chunks=1",
        "prune=rule:avsynth_senses,sink_tokens=2",
        "policy=fastav_tiny_retention",
        "prune=none,senses=audio",
    )
    for text in together:
        parse_model_args(text, TINY)
    assert pruning_config(None, {"global_rule": "none"}, TestbedAdapter.default_profile(None)).profile is None


def test_a_profile_every_modality_of_which_a_keep_replaces_is_refused():
    shipped = str(TestbedAdapter.default_profile(None))
    with pytest.raises(ValueError, match=r"replace all of them, so the profile would not be read"):
        pruning_config(None, {"profile": shipped, "video_keep": 10, "audio_keep_chunks": 1}, None)
    partly = pruning_config(None, {"profile": shipped, "video_keep": 10}, None).profile
    assert partly is not None and partly.keep["video"].first_tokens == 10 and "audio" in partly.keep


def test_quoted_values_keep_their_commas_and_join_reads_back():
    assert split_items('a=1, b="x,y" ,c={"k": [1, 2]}') == [("a", "1"), ("b", "x,y"), ("c", '{"k": [1, 2]}')]
    given = {"senses": "audio", "global_layer": -1, "use_kernels": True, "audio_keep": 0.25}
    assert parse_model_args(join_model_args(given), TINY) == given


def test_the_engine_keys_are_the_readmes_and_each_has_a_kind():
    assert set(ENGINE_KINDS) == {"global_layer", "global_rule", "profile", "video_keep", "audio_keep",
                                 "video_keep_chunks", "audio_keep_chunks", "fine_ratio", "fine_rule", "sink_tokens",
                                 "seed", "policy", "retain", "audio_retain"}  # fmt: skip
    assert all(kind in KINDS for kind in TINY.values())


def test_lmms_evals_own_options_merge_as_documented():
    """--batch_size's default (int 1) yields, a given one must agree, --max_batch_size (for 'auto') is refused."""
    create = FastAVTiny.create_from_arg_string
    assert create("batch_size=4", {"batch_size": 1, "max_batch_size": None, "device": None}).batch_size_per_gpu == 4
    assert create("", {"batch_size": "3", "device": "cpu"}).batch_size_per_gpu == 3
    assert create("batch_size=2", {"batch_size": "2"}).batch_size_per_gpu == 2
    with pytest.raises(ValueError, match=r"--max_batch_size 8: not supported by the FastAV wrappers"):
        create("", {"batch_size": 1, "max_batch_size": 8, "device": None})
    with pytest.raises(ValueError, match=r"batch_size='auto'; accepted: an int >= 1"):
        create("", {"batch_size": "auto"})
    with pytest.raises(ValueError, match=r"device is given twice, --model_args device=cpu and --device meta"):
        create("device=cpu", {"device": "meta"})


def test_the_gymnasium_environments_read_model_args_with_the_same_parser():
    from envs.samples import parse_model_args as env_parse

    assert env_parse("max_frames=-1,senses=audio") == {"max_frames": -1, "senses": "audio"}  # typed, not -1.0
    with pytest.raises(ValueError, match="senses is given twice"):
        env_parse("senses=audio,senses=both")


def lmms_eval_cli(tmp_path, model_args: str, task: str = "avsynth_match") -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lmms_eval", "--model", "fastav_tiny", "--model_args", model_args,
               "--tasks", task, "--include_path", str(tasks_path()), "--limit", "2",
               "--output_path", str(tmp_path), "--log_samples"]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)


def test_last_layer_and_a_keep_larger_than_the_tokens_there_through_the_lmms_eval_cli(tmp_path):
    """global_layer=-1 (the README's LAST_LAYER) arrives as -1 and resolves to the testbed's last layer (5);
    video_keep=100000 on the testbed's 128 video tokens gives one warning naming the value, the sample and its
    count (one lmms-eval run for both: each costs a process start)."""
    run = lmms_eval_cli(tmp_path, "global_layer=-1,video_keep=100000,audio_keep_chunks=1000")
    log = run.stdout + run.stderr
    records = list(tmp_path.rglob("*_fastav.json"))
    assert records and list(tmp_path.rglob("*_results.json")), log[-3000:]
    assert json.loads(records[0].read_text())["pruning"]["global_layer"] == 5
    assert log.count("video_keep=100000 keeps every video token of avsynth_match doc") == 1
    assert "(it has 128 video tokens, not more than 100000)" in log
    assert log.count("audio_keep_chunks=1000 keeps every audio token") == 1


def test_the_lmms_eval_cli_refuses_a_key_given_twice_before_writing_results(tmp_path):
    run = lmms_eval_cli(tmp_path, "prune=fastav,prune=none")
    assert "prune is given twice in --model_args (prune=fastav and prune=none)" in run.stdout + run.stderr
    assert not list(tmp_path.rglob("*_results.json"))


@pytest.mark.parametrize(
    ("model_args", "message"),
    [
        ("policy=fastav_tiny_retention,prune=fastav", "a policy decides the pruning, leave prune out"),
        ("sink_tokens=-1", "sink_tokens=-1; accepted: an int >= 0"),
        ("global_rule=none,video_keep=10", "global_rule=none turns the global stage off"),
    ],
)
def test_lmms_evals_constructor_path_refuses_before_loading(model_args, message):
    """What lmms-eval calls with --model_args (one CLI run above shows the same path end to end)."""
    with pytest.raises(ValueError, match=re.escape(message)):
        FastAVTiny.create_from_arg_string(model_args, {"batch_size": 1, "device": None})


def test_every_key_a_wrapper_accepts_is_in_the_readme():
    """A key the README does not list is either documented there or refused (README: the --model_args table)."""
    from pathlib import Path

    from fastav_eval.models.registry import MODELS, adapter_class

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    undocumented = []
    for model in MODELS:
        keys = arg_kinds(adapter_class(model))
        undocumented += [f"{model}: {key}" for key in keys if f"`{key}`" not in readme and f"`{key}=" not in readme]
    assert not undocumented
