"""A regular (non-editable) install, what ``pip install .`` or a git URL gives: the main job, the environments and the
shipped policy run from outside the source tree, so the task YAMLs, the environments and the policy must come from
the installed package. .ci/run runs this file in a fresh virtualenv set up with ``bash install.sh --no-editable``;
under an editable install it is skipped."""

from __future__ import annotations

import json
import sys

import pytest

from tests.e2e.cli import REPO, run, tail, tasks_path
from tests.e2e.runs import main_job, shipped_policy

pytestmark = pytest.mark.e2e

ENVS = """
import gymnasium
env = gymnasium.make("fastav_eval.envs:fastav/TokenRetention-v0", tasks="avsynth_qa", per_task=2)
observation, info = env.reset(seed=0)
_, reward, terminated, _, _ = env.step(env.action_space.sample())
assert terminated and observation.shape == (38,), observation.shape
import fastav_eval.envs, fastav_eval.policies.chooser as chooser
assert "site-packages" in fastav_eval.envs.__file__, fastav_eval.envs.__file__
directory = chooser.LearnedChooser("fastav_tiny_retention").directory
assert "site-packages" in str(directory), directory
print(directory)
"""

DIRECT_URL = "import importlib.metadata as m; print(m.distribution('fastav-eval').read_text('direct_url.json') or '{}')"


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """A working directory outside the source tree; skips the module under an editable install."""
    folder = tmp_path_factory.mktemp("outside")
    direct_url = json.loads(run(sys.executable, "-c", DIRECT_URL, cwd=folder).stdout)
    if direct_url.get("dir_info", {}).get("editable"):
        pytest.skip("fastav-eval is an editable install: .ci/run runs this in a `bash install.sh --no-editable` one")
    return folder


def test_tasks_come_from_the_installed_package(outside):
    tasks = tasks_path(outside)
    assert not tasks.startswith(str(REPO)), f"tasks-path {tasks} is in the source tree, not the installed package"


def test_main_job(outside):
    main_job(outside / "results-installed", cwd=outside)


def test_environments_and_shipped_policy_from_the_installed_package(outside):
    result = run(sys.executable, "-c", ENVS, cwd=outside)
    assert "site-packages" in result.stdout, tail(result)


def test_shipped_policy(outside):
    shipped_policy(outside / "results-installed-policy", cwd=outside)
