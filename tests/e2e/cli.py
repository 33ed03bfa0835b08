"""Running the real ``lmms-eval`` / ``fastav-eval`` commands for the end-to-end tests (subprocesses, CPU, offline).

lmms-eval exits 0 even when the evaluation fails (it logs the error): :func:`results` asserts that the results JSON
exists, and every failed assertion on a command shows the command's output tails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 1800
TAIL_CHARS = 6000

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def tail(result: subprocess.CompletedProcess) -> str:
    """The command line and the end of what it printed (stdout, then stderr), for an assertion message."""
    command = " ".join(str(arg) for arg in result.args)
    return (
        f"$ {command}\n(exit {result.returncode})\n--- stdout\n{result.stdout[-TAIL_CHARS:]}\n"
        f"--- stderr\n{result.stderr[-TAIL_CHARS:]}"
    )


def printed(result: subprocess.CompletedProcess) -> str:
    """All a command printed, stdout and stderr (for messages that go to a log on either stream)."""
    return result.stdout + result.stderr


def run(*args: Any, cwd: Path = REPO, env: dict[str, str] | None = None, check: bool = True):
    """Run a command (stdout and stderr captured apart: stdout is what callers parse); with ``check``, assert that it
    exited 0. The commands come from the interpreter running the tests (its folder first on PATH, ``PYTHON`` set to
    it), so an unactivated ``.venv/bin/python -m pytest`` still runs this virtualenv's ``lmms-eval``."""
    bin_folder = str(Path(sys.executable).parent)
    environment = {
        **os.environ,
        **OFFLINE,
        "PATH": os.pathsep.join([bin_folder, os.environ.get("PATH", "")]),
        "PYTHON": sys.executable,
        **(env or {}),
    }
    result = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    if check:
        assert result.returncode == 0, tail(result)
    return result


def tasks_path(cwd: Path = REPO) -> str:
    """``fastav-eval tasks-path``: the folder lmms-eval's ``--include_path`` gets."""
    return run("fastav-eval", "tasks-path", cwd=cwd).stdout.strip()


def results(folder: Path, result: subprocess.CompletedProcess) -> tuple[Path, dict[str, Any]]:
    """The newest ``*_results.json`` lmms-eval wrote under ``folder`` and its content."""
    files = sorted(Path(folder).rglob("*_results.json"))
    assert files, f"lmms-eval wrote no results JSON under {folder}: the evaluation failed\n{tail(result)}"
    return files[-1], json.loads(files[-1].read_text())


def run_record(results_file: Path) -> dict[str, Any]:
    """The ``*_fastav.json`` run record written next to a results JSON."""
    return json.loads(results_file.with_name(results_file.name.replace("_results.json", "_fastav.json")).read_text())


def decisions(folder: Path, pattern: str) -> list[dict[str, Any]]:
    """Every sample's pruning decision in the samples files matching ``pattern`` under ``folder``."""
    return [
        json.loads(line)["token_counts"][0]["decision"] for path in Path(folder).rglob(pattern) for line in path.open()
    ]


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def prepared_paper_benchmarks(folder: Path) -> dict[str, str]:
    """Tiny AVHBench, MUSIC-AVQA and AVQA releases in the official schemas under ``folder``, converted with the
    README's ``fastav-eval prepare-data`` commands; returns the environment that points the tasks at them."""
    from tests.data.releases import write_avhbench, write_avqa, write_music_avqa

    releases = folder / "releases"
    for write in (write_avhbench, write_music_avqa, write_avqa):
        write(releases)
    data = {"FASTAV_EVAL_DATA": str(folder / "prepared")}
    for name, release in (("avhbench", "AVHBench"), ("music_avqa", "MUSIC-AVQA"), ("avqa", "AVQA")):
        run("fastav-eval", "prepare-data", name, releases / release, env=data)
    return data
