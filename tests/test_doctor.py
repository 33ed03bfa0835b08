"""``fastav-eval doctor``: passes on the installed release, fails with the reason on a simulated drift."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import transformers
from packaging.requirements import Requirement
from transformers.models.qwen2.modeling_qwen2 import Qwen2Model

from fastav_eval.doctor import run, version_checks
from fastav_eval.pruning.compat import TESTED_TRANSFORMERS


def test_doctor_passes_and_reports_versions_against_the_tested_ranges():
    lines: list[str] = []
    assert run(out=lines.append) == 0, "\n".join(lines)
    report = "\n".join(lines)
    assert f"transformers  {transformers.__version__}" in report
    assert "[ok] sdpa: engine off == stock model: tokens equal" in report
    assert "[ok] eager: FastAV prunes the prefill and decodes over its caches" in report
    assert "[note] hub kernels: " in report and "pass use_kernels=false" in report
    assert report.endswith("doctor: ok")
    checks = {check.package: check for check in version_checks()}
    assert checks["transformers"].in_range and checks["lmms-eval"].in_range and checks["filelock"].in_range


def test_doctor_fails_with_the_reason_on_an_incompatible_decoder(monkeypatch):
    stock = Qwen2Model.forward

    def drifted(self, *args, packed_lengths=None, **kwargs):  # a release that added an argument
        return stock(self, *args, **kwargs)

    signature = inspect.signature(stock)
    parameters = list(signature.parameters.values())
    extra = inspect.Parameter("packed_lengths", inspect.Parameter.KEYWORD_ONLY, default=None)
    drifted.__signature__ = signature.replace(parameters=[*parameters[:-1], extra, parameters[-1]])
    monkeypatch.setattr(Qwen2Model, "forward", drifted)
    lines: list[str] = []
    assert run(out=lines.append) == 1
    report = "\n".join(lines)
    assert "[FAIL] engine on a tiny random Qwen2: IncompatibleTransformersError" in report
    assert "packed_lengths" in report and TESTED_TRANSFORMERS in report and transformers.__version__ in report
    assert "doctor: 1 problem(s)" in report


def test_the_engine_states_the_range_the_package_declares():
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    declared = [Requirement(line) for line in pyproject["project"]["dependencies"]]
    (transformers_requirement,) = [r for r in declared if r.name == "transformers"]
    assert transformers_requirement.specifier == Requirement(f"transformers{TESTED_TRANSFORMERS}").specifier
