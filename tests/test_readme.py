"""The README's quick-start example runs and prints what its comments say."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_runs_and_prints_its_comments():
    block = re.search(r"## Quick start.*?```python\n(.*?)```", README.read_text(), re.S)
    assert block is not None, "README lost its quick-start python block"
    code = block.group(1)
    expected = [line.split("# ", 1)[1].strip() for line in code.splitlines() if line.startswith("print(")]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(README), "exec"), {})
    assert printed.getvalue().strip().splitlines() == expected
