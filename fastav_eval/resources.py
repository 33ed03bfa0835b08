"""Where FastAV-Eval's installed resources are: a leaf module every layer may read (``cli.py`` imports it; it
imports nothing of the package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def tasks_path() -> Path:
    """The folder holding FastAV-Eval's lmms-eval task YAMLs: the repository's ``tasks/``, installed as the
    package ``fastav_eval.tasks`` (the source folder itself in an editable install, or when running from a clone)."""
    spec = importlib.util.find_spec("fastav_eval.tasks")
    candidates = [Path(spec.origin).resolve().parent] if spec is not None and spec.origin else []
    candidates.append(Path(__file__).resolve().parent.parent / "tasks")  # a source tree on sys.path, not installed
    for path in candidates:
        if (path / "avsynth" / "avsynth.yaml").is_file():
            return path
    raise ValueError(f"no AV-Synth task YAMLs in {[str(p) for p in candidates]}: this install is incomplete")
