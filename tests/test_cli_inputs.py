"""Bad or conflicting input to ``fastav-eval`` commands is refused with a message naming the option, the value and
what is accepted, before anything runs (through the real CLI, ``fastav_eval.cli.main``)."""

from __future__ import annotations

import argparse
import json
import re

import pytest

from fastav_eval.cli import build_parser, main
from fastav_eval.pruning.presets import PRESETS, format_segments

pytest.importorskip("lmms_eval")

LMMS_EVAL_SPELLINGS = {"--model", "--model_args", "--tasks", "--limit", "--include_path", "--gen_kwargs",
                       "--batch_size", "--device"}  # fmt: skip
"""lmms-eval's own option names (underscores); every other fastav-eval option is spelled with hyphens."""
OWN_COMMANDS = ("flops", "doctor", "tasks-path", "build-avsynth", "train-testbed", "calibrate", "sweep", "prepare-data")


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit:  # argparse's own refusals
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------------------------------------- help
@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_commands_help_shows_the_defaults(command, capsys):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    packed = "".join(out.split())  # argparse may wrap a long default anywhere, even inside a word
    for action in subcommands()[command]._actions:
        if action.help in (None, argparse.SUPPRESS) or action.default in (None, False, "", argparse.SUPPRESS):
            continue
        default = "".join(str(action.default).split())
        assert f"(default:{default})" in packed, (command, action.option_strings)
    if command in OWN_COMMANDS:
        assert not re.search(r"\(default [^:]", " ".join(out.split())), "a help string repeats its default by hand"


def test_one_spelling_per_option_across_commands():
    """lmms-eval's names keep its underscores; every other option is spelled with hyphens; no option is spelled
    two ways (--batch_size / --batch-size) in different commands."""
    spellings: dict[str, set[str]] = {}
    for name, parser in subcommands().items():
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    assert option in LMMS_EVAL_SPELLINGS or "_" not in option, (name, option)
                    spellings.setdefault(option.replace("_", "-"), set()).add(option)
    assert not [forms for forms in spellings.values() if len(forms) > 1]


# ------------------------------------------------------------------------------------------------------------ flops
def test_flops_refuses_an_empty_layout(capsys):
    code, _, err = run(capsys, "flops", "--preset", "videollama2", "--segments", "")
    assert code == 2 and "segments='' is empty; accepted: comma-separated modality:count pairs" in err


def test_flops_refuses_a_layout_without_the_chunks_its_profile_keeps(capsys):
    """qwen2_5_omni_7b keeps the first 2-s audio chunk: one audio run would silently keep all audio (65.5%)."""
    code, _, err = run(
        capsys, "flops", "--preset", "qwen2_5_omni_7b", "--segments", "text:40,video:5760,audio:3525,text:80"
    )
    assert code == 2
    assert "gives audio as one chunk, but the preset's profile keeps the first 1 audio chunk(s) of 71" in err
    code, out, _ = run(capsys, "flops", "--preset", "qwen2_5_omni_7b", "--segments",
                       "text:40,video:5760,audio:50*70,audio:25,text:80", "--compact")  # fmt: skip
    result = json.loads(out)
    assert code == 0 and result["relative_flops"] == 59.3 and result["kept_per_layer"]["audio"][14] == 50


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_presets_own_layout_round_trips_through_the_syntax(preset, capsys):
    own = PRESETS[preset].run(fine_ratio=0.1)
    written = own["segments"]
    assert written == format_segments(PRESETS[preset].segments)
    code, out, _ = run(capsys, "flops", "--preset", preset, "--fine-ratio", "0.1", "--segments", written)
    given = json.loads(out)
    assert code == 0
    for key in ("relative_flops", "tokens_per_layer", "kept_per_layer", "prompt_tokens", "segments"):
        assert given[key] == own[key], key


@pytest.mark.parametrize(
    ("segments", "message"),
    [
        ("text:14,video:0,text:3", "the count is not an int >= 1 at character 14"),
        ("text:1,(video:4,audio:2*2,text:1", "a group is not closed with ')'"),
        ("text:1,video:4*0,text:1", "the repeat after '*' is not an int >= 1"),
        ("text:1,video:9999999,text:1", "holds 10,000,001 tokens; accepted: at most 1,000,000"),
        ("text:1,video:-3,text:1", "the count is not an int >= 1"),
    ],
)
def test_flops_names_whats_wrong_in_a_layout(segments, message, capsys):
    code, _, err = run(capsys, "flops", "--preset", "videollama2", "--segments", segments)
    assert code == 2 and message in err


# -------------------------------------------------------------------------------------------------------- calibrate
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--limit", "0"], "argument --limit: '0'; accepted: an int >= 1"),
        (["--mass", "1.5"], "argument --mass: '1.5'; accepted: a number in (0, 1]"),
        (["--mass", "0"], "argument --mass: '0'; accepted: a number in (0, 1]"),
        (["--target-flops", "0"], "argument --target-flops: '0'; accepted: a number in (0, 100]"),
        (["--alpha", "nan"], "argument --alpha: 'nan'; accepted: a number in (0, 1]"),
        (["--bins", "0"], "argument --bins: '0'; accepted: an int >= 1"),
        (["--global-layer", "0"], "argument --global-layer: '0'; accepted: an int >= 1 or -1"),
        (["--fine-ratio", "1"], "argument --fine-ratio: '1'; accepted: a number in [0, 1)"),
        (["--tasks", ""], "argument --tasks: ''; accepted: lmms-eval tasks or groups"),
        (["--model_args", "prune=none"], "--model_args ['prune']: calibration runs the unpruned model"),
        (["--model_args", "senses=audio,senses=both"], "senses is given twice in --model_args"),
        (["--model_args", "sink_tokens=-1"], "sink_tokens=-1; accepted: an int >= 0"),
        (["--tasks", "avsynth_nosuch"], "tasks ['avsynth_nosuch'] are not lmms-eval tasks"),
        (["--include_path", "/nonexistent/tasks"], "--include_path '/nonexistent/tasks' is not a folder"),
        (["--model", "fastav_huge"], "model='fastav_huge' is not a FastAV wrapper"),
    ],
)
def test_calibrate_refuses_bad_options_before_loading(options, message, capsys, tmp_path):
    argv = {"--model": "fastav_tiny", "--tasks": "avsynth_val", "--out": str(tmp_path / "p.json")}
    extra = dict(zip(options[::2], options[1::2], strict=True))
    code, _, err = run(capsys, "calibrate", *[x for pair in {**argv, **extra}.items() for x in pair])
    assert code == 2 and message in err
    assert not (tmp_path / "p.json").exists()


def test_calibrate_refuses_a_folder_as_out(capsys, tmp_path):
    code, _, err = run(capsys, "calibrate", "--model", "fastav_tiny", "--tasks", "avsynth_val", "--out", str(tmp_path))
    assert code == 2 and "is a folder; accepted: the profile JSON to write" in err


def test_calibrate_on_a_test_split_warns_once(capsys, tmp_path):
    out = tmp_path / "p.json"
    code, _, err = run(capsys, "calibrate", "--model", "fastav_tiny", "--tasks", "avsynth_match,avsynth_qa_val",
                       "--limit", "1", "--out", str(out))  # fmt: skip
    assert code == 0 and out.is_file()
    assert err.count("warning: calibrating on the test split of ['avsynth_match']") == 1
    assert "avsynth_qa_val" not in err.split("warning: calibrating")[1].split("\n")[0]


# ------------------------------------------------------------------------------------------------------------ sweep
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--model_args", "fine_ration=0.1"], "unknown --model_args key(s) ['fine_ration']"),
        (["--model_args", "fine_ratio=0.1,fine_ratio=0.2"], "fine_ratio is given twice in --model_args"),
        (["--model_args", "global_rule=none,video_keep=3"], "global_rule=none turns the global stage off"),
        (["--model_args", "policy=fastav_tiny_retention"], "the sweep's base is a FastAV setting"),
        (["--tasks", "avsynth,avsynth_nosuch"], "--tasks ['avsynth_nosuch'] are not lmms-eval tasks"),
        (["--tasks", ","], "--tasks ','; accepted: lmms-eval tasks or groups"),
        (["--vary", "global_layer=1,2"], "2 of 4 grid points would fail (nothing was run)"),
        (["--vary", "global_layer=1,2"], "global_layer=1: profile.global_layer=3 does not match"),
        (
            ["--vary", "global_layer=9", "--model_args", "video_keep=0.25,audio_keep=0.25"],
            "global_layer=9: global_layer=9; accepted: an int in [1, 5] for a 6-layer decoder",
        ),
        (["--vary", "fine_ratio=0.1,abc"], "fine_ratio=abc: fine_ratio='abc'; accepted: a number in [0, 1)"),
        (["--vary", "sink_tokens=-1"], "sink_tokens=-1: sink_tokens=-1; accepted: an int >= 0"),
        (["--gen_kwargs", "temperature=0.7"], "FastAV wrappers decode greedily"),
        (["--gen_kwargs", "max_new_tokens=many"], "generation_kwargs {'max_new_tokens': 'many'}; accepted"),
        (["--launcher", '"unclosed'], "--launcher '\"unclosed': No closing quotation"),
        (["--launcher", ""], "--launcher ''; accepted: a command line"),
        (["--include_path", "/nonexistent/tasks"], "--include_path '/nonexistent/tasks' is not a folder"),
        (["--limit", "0"], "argument --limit: '0'; accepted: an int >= 1"),
        (["--batch_size", "-2"], "argument --batch_size: '-2'; accepted: an int >= 1"),
        (["--shard", "2/2"], "--shard 2/2; accepted: i/n with 0 <= i < n"),
        (["--batch_size", "4", "--model_args", "batch_size=2"], "batch_size is given twice, --model_args batch_size=2"),
    ],
)
def test_sweep_checks_everything_before_launching_even_in_a_dry_run(options, message, capsys, tmp_path):
    out = tmp_path / "sweep"
    argv = {"--model": "fastav_tiny", "--tasks": "avsynth", "--out": str(out)}
    extra = [x for pair in zip(options[::2], options[1::2], strict=True) for x in pair]
    for dry in (["--dry-run"], []):
        code, _, err = run(capsys, "sweep", *[x for pair in argv.items() for x in pair], *extra, *dry)
        assert code == 2 and message in err, err
        assert not out.exists()  # nothing launched, no index written


def test_sweep_dry_run_of_a_valid_grid_lists_it(capsys, tmp_path):
    grid = ["--vary", "global_layer=1,-1", "--model_args", "video_keep=0.25,audio_keep=0.25", "--dry-run"]
    code, out, _ = run(
        capsys, "sweep", "--model", "fastav_tiny", "--tasks", "avsynth_*", "--out", str(tmp_path / "s"), *grid
    )
    assert code == 0 and "sweep: 4 runs (base, global_layer=1, global_layer=-1, unpruned)" in out
    assert "global_layer=-1 --tasks 'avsynth_*'" in out and not (tmp_path / "s").exists()


def test_sweep_refuses_a_file_as_out(capsys, tmp_path):
    (tmp_path / "f").write_text("")
    code, _, err = run(capsys, "sweep", "--model", "fastav_tiny", "--tasks", "avsynth", "--out", str(tmp_path / "f"))
    assert code == 2 and "is a file; accepted: a folder" in err


# --------------------------------------------------------------------------------------------------- other commands
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["build-avsynth", "--out", "x", "--split", "val", "--per-task", "0"],
            "--per-task: '0'; accepted: an int >= 1",
        ),
        (["train-testbed", "--out", "x", "--steps", "-5"], "--steps: '-5'; accepted: an int >= 1"),
        (["train-testbed", "--out", "x", "--batch_size", "0"], "--batch_size: '0'; accepted: an int >= 1"),
        (["train-testbed", "--out", "x", "--threads", "two"], "--threads: 'two'; accepted: an int >= 1"),
    ],
)
def test_other_commands_refuse_non_positive_counts(argv, message, capsys):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err


def test_a_file_where_a_folder_is_needed_is_named_not_a_traceback(capsys, tmp_path):
    (tmp_path / "f").write_text("")
    code, _, err = run(capsys, "build-avsynth", "--out", str(tmp_path / "f"), "--split", "val", "--per-task", "1")
    assert code == 2 and f"error: {tmp_path / 'f' / 'val'}: Not a directory" in err
    for argv in (["build-avsynth", "--split", "val"], ["train-testbed"], ["calibrate", "--model", "fastav_tiny",
                 "--tasks", "avsynth_val"], ["sweep", "--model", "fastav_tiny", "--tasks", "avsynth"]):  # fmt: skip
        code, _, err = run(capsys, *argv, "--out", "")
        assert code == 2 and "argument --out: ''; accepted:" in err, argv
