#!/usr/bin/env bash
# FastAV-Eval set-up: installs the package, its test and RL extras into the active Python environment.
#
#   bash install.sh              the locked set-up: every dependency but torch at the version CI ran (constraints.txt)
#   bash install.sh --no-lock    only pyproject's ranges: newer releases, untested (then run `fastav-eval doctor`)
#   bash install.sh --no-editable  a regular (non-editable) install of this folder
#
# - A torch that is already installed (e.g. a CUDA build on a GPU machine) is kept: it is pinned through a
#   constraints file, so no dependency can replace it.
# - With no torch installed, torch==2.13.0 is installed first (a CPU wheel where one is provided locally,
#   the regular PyPI build elsewhere).
# - lmms-eval requires torchvision. PyPI only has CUDA builds of torchvision; next to a CPU torch its
#   compiled ops fail to load and every transformers model import dies with
#   "operator torchvision::nms does not exist". If torchvision cannot be imported, it is removed: FastAV-Eval
#   and the lmms-eval core do not use it.
# - Last, `fastav-eval doctor` checks the result: versions against the tested ranges, imports, and the engine on a
#   tiny random Qwen2 against the stock model. The script fails if the doctor does.
set -euo pipefail

lock=1
editable=1
for arg in "$@"; do
    case "$arg" in
        --no-lock) lock=0 ;;
        --no-editable) editable=0 ;;
        *) echo "install.sh: unknown option $arg; accepted: --no-lock, --no-editable" >&2; exit 2 ;;
    esac
done

cd "$(dirname "${BASH_SOURCE[0]}")"
PYTHON="${PYTHON:-python}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
pip() { "$PYTHON" -m pip "$@"; }

echo "[install] python: $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"

torch_version="$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)"
kept_torch=0
if [[ -z "$torch_version" ]]; then
    echo "[install] no torch found: installing torch==2.13.0"
    pip install "torch==2.13.0"
    torch_version="$("$PYTHON" -c 'import torch; print(torch.__version__)')"
else
    echo "[install] keeping the installed torch $torch_version"
    kept_torch=1
fi

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "torch==${torch_version}" > "$constraints"
locked=()
if [[ "$lock" == 1 ]]; then
    echo "[install] locked: the versions in constraints.txt (what CI ran)"
    lockfile="$(mktemp)"
    trap 'rm -f "$constraints" "$lockfile"' EXIT
    if [[ "$kept_torch" == 1 ]]; then
        # A torch that was already here (a CUDA build) pins its own requirements (sympy, networkx, ...): the lock
        # leaves those to it rather than ask for versions that build may not accept. filelock stays locked.
        "$PYTHON" - constraints.txt > "$lockfile" <<'PY'
import importlib.metadata, re, sys
def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()
owned = {canonical(re.match(r"[A-Za-z0-9._-]+", r).group()) for r in importlib.metadata.requires("torch") or []}
owned.discard("filelock")
for line in open(sys.argv[1]):
    if canonical(line.split("==")[0].strip()) not in owned:
        print(line, end="")
PY
    else
        cp constraints.txt "$lockfile"
    fi
    locked=(-c "$lockfile")
else
    echo "[install] --no-lock: the newest releases pyproject.toml allows; they may not have been tested"
fi
target=(-e ".[test,rl]")
[[ "$editable" == 1 ]] || target=(".[test,rl]")

pip install -c "$constraints" "${locked[@]}" "${target[@]}"

if "$PYTHON" -c 'import torchvision' >/dev/null 2>&1; then
    echo "[install] torchvision imports cleanly: kept"
elif "$PYTHON" -m pip show torchvision >/dev/null 2>&1; then
    echo "[install] torchvision is installed but cannot load its ops next to torch $torch_version: removing it"
    pip uninstall -y torchvision
fi

cuda="$("$PYTHON" -c 'import torch; print(torch.version.cuda or "none (CPU build)")')"
echo "[install] torch $torch_version (CUDA $cuda); checking the environment with fastav-eval doctor"
"$PYTHON" -m fastav_eval.cli doctor
echo "[install] ok"
