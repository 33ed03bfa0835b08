"""lmms-eval's own CLI with a tiny AV model and the stock AV tasks' fixtures (CPU, offline).

    python -m tests.lmms.av_cli ROOT --model fastav_qwen2_5_omni --model_args pretrained=ROOT/checkpoint,... \\
        --tasks worldsense,av_odyssey,videomme,vggsound --limit 3 --output_path OUT --log_samples
    python -m tests.lmms.av_cli ROOT --model fastav_videollama2 \\
        --model_args pretrained=tests/fixtures/videollama2_tiny,vision_tower=tests/fixtures/videollama2_tiny/siglip,...

Writes, once, under ROOT the four stock tasks' fixtures (tests/lmms/av_task_fixtures.py), sets the environment they
need and runs from ROOT/tasks (vggsound's YAML resolves its cache against the working directory). For
``fastav_qwen2_5_omni`` and ``fastav_qwen3_omni`` it also writes a checkpoint laid out like
``Qwen/Qwen2.5-Omni-7B`` or ``Qwen/Qwen3-Omni-30B-A3B-Instruct`` (tests/models/omni_fixtures.py,
qwen3_omni_fixtures.py) under ROOT/checkpoint and lets the adapter build the processor locally (the stock
video processor needs torchvision, which these machines lack); ``fastav_videollama2`` loads the committed tiny
checkpoint as it is. Every other argument goes to ``lmms_eval.__main__.cli_evaluate`` unchanged, or, after
``fastav-eval``, to that command (``python -m tests.lmms.av_cli ROOT fastav-eval calibrate --model ...``). On a GPU
machine with the real checkpoints, run ``lmms-eval`` / ``fastav-eval`` themselves (README).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

OMNI_MODELS = {
    "fastav_qwen2_5_omni": ("tests.models.omni_fixtures", "fastav_eval.models.qwen2_5_omni.Qwen25OmniAdapter"),
    "fastav_qwen3_omni": ("tests.models.qwen3_omni_fixtures", "fastav_eval.models.qwen3_omni.Qwen3OmniAdapter"),
}
"""The Omni models whose tiny checkpoint this writes under ROOT/checkpoint, and whose processor it builds locally."""


def main() -> None:
    root = Path(sys.argv[1]).resolve()
    root.mkdir(parents=True, exist_ok=True)
    from tests.lmms.av_task_fixtures import TASK_NAMES, prepare_task_fixtures

    environment = prepare_task_fixtures(root / "tasks", TASK_NAMES)
    os.environ.update(environment)  # before datasets / lmms_eval are imported: they read it at import
    for model, (fixtures, adapter) in OMNI_MODELS.items():
        if model not in sys.argv:
            continue
        fixture = importlib.import_module(fixtures)
        if not (root / "checkpoint" / "config.json").is_file():
            fixture.save_checkpoint(root / "checkpoint")
        module, name = adapter.rsplit(".", 1)
        local = staticmethod(lambda pretrained, make=fixture.tiny_processor: make())
        getattr(importlib.import_module(module), name).load_processor = local
    os.chdir(root / "tasks")
    if sys.argv[2:3] == ["fastav-eval"]:
        from fastav_eval.cli import main as fastav_eval

        sys.exit(fastav_eval(sys.argv[3:]))
    from lmms_eval.__main__ import cli_evaluate

    sys.argv = [sys.argv[0], *sys.argv[2:]]
    cli_evaluate()


if __name__ == "__main__":
    main()
