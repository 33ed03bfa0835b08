"""What the analysis tests share besides the ``tiny_sweep`` fixture of conftest.py (pytest advises against
importing a conftest module: the constants live here and both import them)."""

from __future__ import annotations

TASKS = "avsynth_qa,avsynth_caption"
"""The two tasks of ``tiny_sweep``'s real lmms-eval runs (6 documents each)."""
