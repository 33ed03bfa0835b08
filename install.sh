#!/usr/bin/env bash
# FastAV-Eval set-up: installs the package, its test and RL extras into the active Python environment.
#
# - A torch that is already installed (e.g. a CUDA build on a GPU machine) is kept: it is pinned through a
#   constraints file, so no dependency can replace it.
# - With no torch installed, torch==2.13.0 is installed first (a CPU wheel where one is provided locally,
#   the regular PyPI build elsewhere).
# - lmms-eval requires torchvision. PyPI only has CUDA builds of torchvision; next to a CPU torch its
#   compiled ops fail to load and every transformers model import dies with
#   "operator torchvision::nms does not exist". If torchvision cannot be imported, it is removed: FastAV-Eval
#   and the lmms-eval core do not use it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
PYTHON="${PYTHON:-python}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
pip() { "$PYTHON" -m pip "$@"; }

echo "[install] python: $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"

torch_version="$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)"
if [[ -z "$torch_version" ]]; then
    echo "[install] no torch found: installing torch==2.13.0"
    pip install "torch==2.13.0"
    torch_version="$("$PYTHON" -c 'import torch; print(torch.__version__)')"
else
    echo "[install] keeping the installed torch $torch_version"
fi

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "torch==${torch_version}" > "$constraints"

pip install -c "$constraints" -e ".[test,rl]"

if "$PYTHON" -c 'import torchvision' >/dev/null 2>&1; then
    echo "[install] torchvision imports cleanly: kept"
elif "$PYTHON" -m pip show torchvision >/dev/null 2>&1; then
    echo "[install] torchvision is installed but cannot load its ops next to torch $torch_version: removing it"
    pip uninstall -y torchvision
fi

"$PYTHON" - <<'PY'
import torch
import transformers
from transformers import Qwen2ForCausalLM  # noqa: F401  (fails if a broken torchvision is still present)

import fastav_eval

cuda = torch.version.cuda or "none (CPU build)"
print(f"[install] ok: fastav-eval {fastav_eval.__version__}, torch {torch.__version__} (CUDA {cuda}), "
      f"transformers {transformers.__version__}")
PY
