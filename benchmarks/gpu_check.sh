#!/usr/bin/env bash
# The prepared GPU check (docs/benchmarks.md, "The prepared GPU check"): latency, time to first token, decode per
# token and peak memory at the real shapes, unpruned vs FastAV, and the engine's oracle checks on CUDA in bf16.
#
#   bash benchmarks/gpu_check.sh [--smoke] <out_dir>
#
# Writes <out_dir>/gpu_check.json and <out_dir>/gpu_check.md; exits non-zero if any check fails.
# Wheels in <repo>/.whl (e.g. transformers 5.25 for a GPU image that ships an older one) are installed into a
# private folder first and put ahead of the image's packages (not with --smoke, which runs on the installed
# versions, as CI does); nothing is installed into the system.
set -euo pipefail

usage() {
    echo "usage: bash benchmarks/gpu_check.sh [--smoke] <out_dir>" >&2
    echo "  --smoke    CPU, tiny shapes: the same code paths in 1-2 minutes (CI); without it: CUDA, real shapes" >&2
    echo "  <out_dir>  folder for gpu_check.json and gpu_check.md (created if missing)" >&2
    exit 2
}

smoke=()
out_dir=""
for arg in "$@"; do
    case "$arg" in
        --smoke) smoke=(--smoke) ;;
        -h | --help) usage ;;
        -*) echo "gpu_check.sh: unknown flag '$arg'" >&2; usage ;;
        *)
            [[ -z "$out_dir" ]] || { echo "gpu_check.sh: more than one out_dir ('$out_dir', '$arg')" >&2; usage; }
            out_dir="$arg"
            ;;
    esac
done
[[ -n "$out_dir" ]] || { echo "gpu_check.sh: missing out_dir" >&2; usage; }

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
if [[ ${#smoke[@]} -eq 0 ]] && compgen -G "$repo/.whl/*.whl" >/dev/null; then  # --smoke runs what is installed
    site="${TMPDIR:-/tmp}/fastav-gpu-check-site"
    echo "[gpu_check] installing $repo/.whl/*.whl into $site" >&2
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        "$repo"/.whl/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "$python" "$repo/benchmarks/gpu_check.py" "${smoke[@]}" "$out_dir"
