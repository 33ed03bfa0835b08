"""The first rules of ../shared/design.md's layering, read from the code's own imports: nothing imports the
command line (``fastav_eval.cli``), and ``fastav_eval.resources`` (where installed resources are) imports nothing of
the package, so every layer may read it. The full layer order is a later issue's test."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fastav_eval", "envs", "policies", "tasks", "benchmarks")


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports (``import a.b`` and ``from a.b import c`` give ``a.b``; relative ones ``.x``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def sources() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def test_the_sources_are_found():
    names = {path.relative_to(ROOT).as_posix() for path in sources()}
    assert {"fastav_eval/cli.py", "fastav_eval/resources.py", "envs/samples.py", "policies/chooser.py"} <= names


def test_nothing_imports_the_command_line():
    importers = [
        path.relative_to(ROOT).as_posix()
        for path in sources()
        if path != ROOT / "fastav_eval" / "cli.py" and "fastav_eval.cli" in imported_modules(path)
    ]
    assert importers == [], f"{importers} import fastav_eval.cli; what they need belongs in a lower layer"


def test_resources_import_nothing_of_the_package():
    ours = [
        name
        for name in imported_modules(ROOT / "fastav_eval" / "resources.py")
        if name.startswith(("fastav_eval", "."))
    ]
    assert ours == []
