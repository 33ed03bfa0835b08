"""What a run record says about where its numbers came from: versions, device, weights and profile hashes."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "config.json", "*.index.json")
"""The files of a checkpoint folder whose sha256 identifies its weights."""


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file (cached per path, size and modification time within a process)."""
    stat = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit(folder: Path) -> dict[str, Any] | None:
    """The commit (and whether the tree has changes) of the checkout holding ``folder``; None outside one."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def versions() -> dict[str, Any]:
    """Versions of what shapes the numbers; ``fastav_eval_git`` is set when fastav-eval runs from a checkout."""
    package = Path(__file__).resolve().parent
    return {
        "fastav_eval": _distribution_version("fastav-eval"),
        "fastav_eval_git": _git_commit(package) if (package.parent / ".git").exists() else None,
        "torch": torch.__version__,
        "transformers": _distribution_version("transformers"),
        "lmms_eval": _distribution_version("lmms-eval"),
        "python": platform.python_version(),
    }


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict[str, Any]:
    """The device a run used: its type and name (the GPU model, or the CPU) and the processes' world size."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {"type": device.type, "name": name, "torch_threads": torch.get_num_threads()}


def _hub_snapshot(repo_id: str) -> Path | None:
    """The local snapshot folder of a hub id, if the hub cache holds one (never downloads)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, not a repo id, or no huggingface_hub: the name alone is recorded
        return None


def weights_identity(sources: list[str]) -> dict[str, Any]:
    """Name, hub revision and per-file sha256 of the weights a model loaded from ``sources`` (folders or hub ids).

    A hub id resolves to its cached snapshot (the revision is the snapshot's commit); a source that is neither a
    folder nor cached is recorded by name with no hashes (``files`` then says nothing about its content).
    """
    identity: dict[str, Any] = {"name": sources[0] if sources else None, "sources": []}
    for source in sources:
        folder = Path(source)
        revision = None
        if not folder.is_dir():
            snapshot = _hub_snapshot(source)
            folder, revision = (snapshot, snapshot.name) if snapshot is not None else (None, None)
        files = {}
        if folder is not None:
            for pattern in WEIGHT_PATTERNS:
                for path in sorted(folder.rglob(pattern)):
                    if path.is_file():
                        files[str(path.relative_to(folder))] = file_sha256(path)
        identity["sources"].append({"source": source, "revision": revision, "files": dict(sorted(files.items()))})
    return identity


def profile_identity(path: Path | None, description: str | None) -> dict[str, Any] | None:
    """Path and sha256 of the profile file a config read (None when the config has no profile file)."""
    if path is None:
        return None
    return {"path": str(path), "sha256": file_sha256(path), "describe": description}
