"""``fastav-eval doctor``: does FastAV give right answers in this environment?

Dependencies move under a plugin that lives in its users' environments (transformers 5.24 renamed the KV-cache
argument; filelock 4 removed a module lmms-eval imports). The doctor prints the versions that matter against the
ranges FastAV-Eval declares, imports what the evaluation needs, and runs a tiny random Qwen2 through ``generate``:

- the stock model, and the engine with pruning off: tokens equal, logits within ``1e-4``;
- the engine with FastAV on: the prefill is pruned, each layer's cache holds what that layer kept plus the new
  tokens (a decode step that ran as a fresh prefill, or over a cache the engine did not prune, fails here).

It returns 1 if any of that fails (``--strict``: also if a version is outside its tested range).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass

from packaging.requirements import Requirement
from packaging.version import Version

from fastav_eval.pruning.compat import output_cache

DISTRIBUTION = "fastav-eval"
REPORTED = ("torch", "transformers", "lmms-eval", "filelock", "flash-attn")
TOLERANCE = 1e-4


@dataclass(frozen=True)
class VersionCheck:
    package: str
    installed: str | None
    tested: str  # the declared specifier, "" if none
    optional: bool

    @property
    def in_range(self) -> bool | None:
        if self.installed is None:
            return None
        return Version(self.installed) in Requirement(f"{self.package}{self.tested}").specifier


def version_checks() -> list[VersionCheck]:
    """Installed versions of :data:`REPORTED` against the ranges this distribution declares."""
    declared: dict[str, tuple[str, bool]] = {}
    for line in importlib.metadata.requires(DISTRIBUTION) or []:
        requirement = Requirement(line)
        optional = requirement.marker is not None and "extra" in str(requirement.marker)
        if requirement.name in REPORTED and (requirement.name not in declared or not optional):
            declared[requirement.name] = (str(requirement.specifier), optional)
    checks = []
    for package in REPORTED:
        try:
            installed: str | None = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        tested, optional = declared.get(package, ("", True))
        checks.append(VersionCheck(package, installed, tested, optional))
    return checks


def _tiny_qwen2(attn: str):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, attn_implementation=attn,
    )  # fmt: skip
    return Qwen2ForCausalLM(config).eval()


def engine_checks(new_tokens: int = 6) -> list[tuple[str, bool, str]]:
    """``(name, passed, detail)`` for the stock model vs the engine, off and on, with sdpa and eager."""
    import torch

    from fastav_eval.pruning import ModalityLayout, PruningConfig, PruningProfile, install

    layout = ModalityLayout.from_segments([[("text", 3), ("video", 16), ("audio", 24), ("text", 5)]])
    input_ids = torch.randint(1, 97, (1, layout.length), generator=torch.Generator().manual_seed(1))
    fastav = PruningConfig(global_layer=3, profile=PruningProfile.prefix(audio=4), fine_ratio=0.3, sink_tokens=1)
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    checks: list[tuple[str, bool, str]] = []
    for attn in ("sdpa", "eager"):
        model = _tiny_qwen2(attn)
        model.generation_config.eos_token_id = None

        def generate(engine=None, model=model):
            with torch.no_grad():
                if engine is None:
                    return model.generate(input_ids, output_logits=True, return_dict_in_generate=True, **settings)
                with engine.layout(layout):
                    return model.generate(input_ids, output_logits=True, return_dict_in_generate=True, **settings)

        stock = generate()
        engine = install(model, PruningConfig.off())
        try:
            off = generate(engine)
        finally:
            engine.uninstall()
        gap = max(float((a - b).abs().max()) for a, b in zip(off.logits, stock.logits, strict=True))
        same = torch.equal(off.sequences, stock.sequences)
        checks.append(
            (
                f"{attn}: engine off == stock model",
                same and gap <= TOLERANCE,
                f"tokens {'equal' if same else 'DIFFER'}, max |logit gap| {gap:.1e} (tolerance {TOLERANCE:g})",
            )
        )

        engine = install(model, fastav)
        try:
            pruned = generate(engine)
            stats = engine.last_stats
        finally:
            engine.uninstall()
        name = f"{attn}: FastAV prunes the prefill and decodes over its caches"
        checks.append((name, *_pruned_ok(pruned, stats, engine.shape)))
    return checks


def _pruned_ok(output, stats, shape) -> tuple[bool, str]:
    """Each layer's cache must hold what the layer kept at prefill plus every generated token but the last."""
    if stats is None:
        return False, "no prefill statistics after generate: the prefill was not pruned"
    held = [layer.keys.shape[-2] for layer in output_cache(output).layers]
    generated = output.sequences.shape[1] - stats.kv_positions[0].shape[1]
    expected = [int((positions >= 0).sum()) + generated - 1 for positions in stats.kv_positions]
    detail = f"cache lengths per layer {held} (expected {expected}), {float(stats.relative_flops(shape)[0]):.1f}% FLOPs"
    return held == expected and held[-1] < held[0], detail


def _import_check(name: str, load: Callable[[], object]) -> tuple[str, bool, str]:
    try:
        load()
    except Exception as error:  # any import failure is the finding
        return f"import {name}", False, f"{type(error).__name__}: {error}"
    return f"import {name}", True, "ok"


def hub_kernels_note() -> str:
    """Whether transformers could swap hub kernels into a model here, and what FastAV-Eval's loaders do about it."""
    import os

    try:
        kernels = f"kernels {importlib.metadata.version('kernels')} is installed"
    except importlib.metadata.PackageNotFoundError:
        kernels = "kernels is not installed"
    environment = os.environ.get("USE_HUB_KERNELS")
    setting = f"USE_HUB_KERNELS={environment}" if environment is not None else "USE_HUB_KERNELS is unset"
    return (
        f"hub kernels: {kernels}, {setting}; FastAV-Eval's loaders pass use_kernels=false to from_pretrained "
        "unless a run gives use_kernels=true (transformers 5.25 turns them on when it is not given)"
    )


def run(strict: bool = False, out: Callable[[str], None] = print) -> int:
    """Print the report; return the exit status (0: every check passed)."""
    import platform

    failures = 0
    version = importlib.metadata.version(DISTRIBUTION)
    out(f"fastav-eval doctor (fastav-eval {version}, python {platform.python_version()})")
    for check in version_checks():
        tested = check.tested or "any"
        if check.installed is None:
            verdict = "not installed" + (" (optional)" if check.optional else " (REQUIRED)")
            failures += not check.optional
        elif check.in_range:
            verdict = "inside the tested range"
        else:
            verdict = "OUTSIDE the tested range"
            failures += strict
        out(f"  {check.package:<13} {check.installed or '-':<14} tested {tested:<14} {verdict}")

    def _evaluator() -> object:
        import lmms_eval.evaluator

        return lmms_eval.evaluator

    def _model_import() -> object:
        from transformers import Qwen2ForCausalLM  # a broken torchvision fails every model import

        return Qwen2ForCausalLM

    results = [_import_check("transformers models", _model_import), _import_check("lmms_eval.evaluator", _evaluator)]
    try:
        results += engine_checks()
    except Exception as error:  # an incompatible transformers, or an engine error: report it, do not crash
        results.append(("engine on a tiny random Qwen2", False, f"{type(error).__name__}: {error}"))
    for name, passed, detail in results:
        out(f"  [{'ok' if passed else 'FAIL'}] {name}: {detail}")
        failures += not passed
    from transformers.utils import is_torchvision_available

    if not is_torchvision_available():  # a CPU machine's normal state (install.sh removes a CUDA-built one)
        out(
            "  [note] torchvision is not importable: fastav_qwen2_5_omni and fastav_qwen3_omni cannot load their stock "
            "video processors here (install the torchvision that matches your torch where you evaluate real "
            "checkpoints); fastav_tiny, fastav_videollama2, fastav_video_salmonn2 and fastav_video_salmonn2_plus need "
            "none"
        )
    out(f"  [note] {hub_kernels_note()}")
    out("doctor: ok" if failures == 0 else f"doctor: {failures} problem(s); FastAV may give wrong answers here")
    return 0 if failures == 0 else 1
