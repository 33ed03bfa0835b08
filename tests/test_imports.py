"""../shared/design.md's layering, read from the code's own imports (every ``import`` statement, inside functions
too): nothing imports the command line (``fastav_eval.cli``); ``fastav_eval.resources`` (where installed resources
are) imports nothing of the package, so every layer may read it; every module sits in a layer of :data:`LAYERS` and
imports only from its own layer or below; the consumers of the evaluation loop do not import one another; the engine
knows no harness, RL library or model; and no import cycle runs through our modules."""

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


# --------------------------------------------------------------------------------------------------- the layering
LAYERS: dict[str, int] = {
    "fastav_eval": 0,  # the package itself (its version), and only it: see layer_of
    "fastav_eval.resources": 0,
    "fastav_eval.decoder_shape": 0,
    "fastav_eval.env_ids": 0,
    "fastav_eval.pruning": 1,
    "fastav_eval.records": 2,
    "fastav_eval.captions": 2,
    "fastav_eval.provenance": 2,
    "fastav_eval.plots": 2,
    "fastav_eval.avsynth": 2,
    "fastav_eval.testbed": 2,
    "fastav_eval.models": 3,
    "fastav_eval.evaluation": 4,
    "fastav_eval.lmms": 5,
    "fastav_eval.envs": 5,
    "fastav_eval.analysis": 5,
    "fastav_eval.data": 5,
    "fastav_eval.doctor": 5,
    "fastav_eval.policies": 6,
    "fastav_eval.cli": 7,
    "fastav_eval.tasks": 8,
    "benchmarks": 9,
}
"""Module prefix -> its layer in ../shared/design.md (0: leaves every layer may read; 9: scripts nothing imports).
A module imports only from its own layer or below."""
CONSUMERS = ("fastav_eval.lmms", "fastav_eval.envs", "fastav_eval.analysis", "fastav_eval.data", "fastav_eval.doctor")
"""Layer 5: the consumers of the evaluation loop, side by side; none imports another."""
INSTALLED_AS = {"envs": "fastav_eval.envs", "policies": "fastav_eval.policies", "tasks": "fastav_eval.tasks"}
"""Top-level folders and the package each is installed as (pyproject's package-dir)."""
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "fastav_eval.pruning": ("lmms_eval", "gymnasium", "stable_baselines3", "fastav_eval.models"),
    "fastav_eval.envs": ("stable_baselines3",),
}
"""Module prefix -> what it never imports (the engine knows no harness, RL library or model; the environments no
SB3)."""


def module_name(path: Path) -> str:
    """The dotted name ``path`` is imported as once installed (``envs/samples.py`` -> ``fastav_eval.envs.samples``)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    parts[0] = INSTALLED_AS.get(parts[0], parts[0])
    return ".".join(parts)


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(f"{prefix}.")


def layer_of(name: str) -> int | None:
    """The layer of module ``name``: its longest prefix in :data:`LAYERS` (``fastav_eval`` only for itself)."""
    prefixes = [prefix for prefix in LAYERS if within(name, prefix) and (prefix != "fastav_eval" or name == prefix)]
    return LAYERS[max(prefixes, key=len)] if prefixes else None


def consumer_of(name: str) -> str | None:
    return next((prefix for prefix in CONSUMERS if within(name, prefix)), None)


def import_graph() -> dict[str, set[str]]:
    """Each of our modules -> the modules of ours and the outside ones it imports, anywhere in it (inside functions
    and ``if TYPE_CHECKING:`` too); ``from a import b`` counts as ``a.b`` when that is one of our modules, and a
    relative import is resolved against the importing module."""
    paths = {module_name(path): path for path in sources()}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                for alias in node.names:
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base)
        graph[name] = targets
    return graph


def ours(graph: dict[str, set[str]], name: str) -> set[str]:
    """The modules of ours that ``name`` imports."""
    return {target for target in graph[name] if target in graph or within(target, "fastav_eval")} - {name}


def test_every_module_has_a_layer():
    missing = sorted(name for name in import_graph() if layer_of(name) is None)
    assert not missing, (
        f"{missing} belong to no layer: add each (or its package) to LAYERS in tests/test_imports.py, at its layer "
        "of ../shared/design.md"
    )


def test_every_module_imports_only_its_own_layer_or_below():
    graph = import_graph()
    upward = [
        f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
        for name in sorted(graph)
        for target in sorted(ours(graph, name))
        if (layer_of(target) or 0) > (layer_of(name) or 0)
    ]
    assert not upward, "imports reaching up a layer (move what they need down):\n" + "\n".join(upward)


def test_the_consumers_do_not_import_one_another():
    graph = import_graph()
    sideways = [
        f"{name} imports {target}"
        for name in sorted(graph)
        for target in sorted(ours(graph, name))
        if consumer_of(name) and consumer_of(target) and consumer_of(name) != consumer_of(target)
    ]
    assert not sideways, "consumers importing another consumer (move what they share below them):\n" + "\n".join(
        sideways
    )


def test_forbidden_imports():
    graph = import_graph()
    found = [
        f"{name} imports {target}"
        for name in sorted(graph)
        for prefix, banned in FORBIDDEN.items()
        if within(name, prefix)
        for target in sorted(graph[name])
        if any(within(target, item) for item in banned)
    ]
    assert not found, f"{found}: see FORBIDDEN in tests/test_imports.py for why each is kept out"


def test_no_import_cycle():
    graph = import_graph()
    edges = {name: {target for target in ours(graph, name) if target in graph} for name in graph}
    done: set[str] = set()
    cycles: list[list[str]] = []

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycles.append([*path[path.index(name) :], name])
            return
        if name in done:
            return
        for target in sorted(edges[name]):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(edges):
        visit(name, [])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_layer_table_reads_the_code():
    """The checks above see what they check: known modules land in their layers, lazy imports are edges."""
    graph = import_graph()
    assert layer_of("fastav_eval.envs.samples") == 5 and layer_of("fastav_eval.models.registry") == 3
    assert layer_of("fastav_eval.newthing") is None and layer_of("fastav_eval") == 0
    assert "fastav_eval.models.model_args" in graph["fastav_eval.models.registry"]  # imported inside a function
    assert "fastav_eval.models.registry" in graph["fastav_eval.envs.samples"]  # ``from fastav_eval.models import x``
