"""Loading a policy runs no code from its folder: a planted pickle payload in an SB3 ``policy.zip`` (the format before
``fastav-policy/2``) never runs through ``policy=`` -- ``LearnedChooser``, ``policy_config``, the lmms-eval wrapper
and the lmms-eval CLI -- and the refusal names the file and the command that converts one's own file; a malformed
``policy.json`` or ``policy.safetensors`` is refused naming the field or tensor. ``convert-policy`` (the one
explicit SB3 ``load``) converts a file its user made and acts exactly as SB3's ``predict``.

The control test shows the payload is live: SB3's own ``load`` of the same zip does create the marker file.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fastav_eval.cli import main
from fastav_eval.envs.coding import RetentionCoding
from fastav_eval.policies.chooser import LearnedChooser, policy_config
from fastav_eval.policies.convert import convert
from fastav_eval.policies.saved import (
    LEGACY_FILE,
    LEGACY_FORMAT,
    META_FILE,
    MODEL_FILE,
    SHIPPED_DIR,
    PickledPolicyError,
)
from fastav_eval.resources import tasks_path

gymnasium = pytest.importorskip("gymnasium")


class Planted:
    """Unpickling this object opens (creates) ``marker`` for writing: a stand-in for any code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.marker, "w"))


class SpacesOnly(gymnasium.Env):
    """An environment with TokenRetention's spaces and nothing else: enough for SB3 to build and save a PPO."""

    def __init__(self) -> None:
        coding = RetentionCoding(3, 128)
        self.observation_space, self.action_space = coding.observation_space(), coding.action_space()

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        return self.observation_space.sample(), 0.0, True, False, {}


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of the earlier format, made here: SB3's PPO zip (as train-policy wrote it) + policy.json (/1)."""
    from stable_baselines3 import PPO

    folder = tmp_path_factory.mktemp("legacy")
    model = PPO("MlpPolicy", SpacesOnly(), n_steps=16, batch_size=8, policy_kwargs={"net_arch": [64, 64]}, seed=3)
    model.save(str(folder / "policy"))
    meta = json.loads((SHIPPED_DIR / "fastav_tiny_retention" / META_FILE).read_text())
    del meta["network"]
    (folder / META_FILE).write_text(json.dumps({**meta, "format": LEGACY_FORMAT}))
    return folder


@pytest.fixture(scope="module")
def converted(legacy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert(legacy, tmp_path_factory.mktemp("converted") / "policy")


def plant(source: Path, folder: Path, marker: Path) -> Path:
    """Copy the policy folder ``source`` to ``folder`` with a payload creating ``marker`` in its zip's ``data``,
    stored the way SB3 stores every object there (base64 of a pickle under ``:serialized:``)."""
    shutil.copytree(source, folder)
    zip_path = folder / LEGACY_FILE
    with zipfile.ZipFile(zip_path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    data = json.loads(entries["data"])
    payload = base64.b64encode(pickle.dumps(Planted(str(marker)))).decode()
    data["planted"] = {":type:": "<class 'builtins.object'>", ":serialized:": payload}
    entries["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(zip_path, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return folder


def test_the_planted_payload_is_live_under_sb3s_own_load(legacy: Path, tmp_path: Path) -> None:
    """The control: what the refusals below protect against does happen when SB3 loads the zip."""
    from stable_baselines3 import PPO

    marker = tmp_path / "ran"
    folder = plant(legacy, tmp_path / "planted", marker)
    with contextlib.suppress(Exception):  # whatever SB3 makes of the payload afterwards, it has run
        PPO.load(str(folder / LEGACY_FILE), device="cpu")
    assert marker.exists()


def _wrapper(where: str) -> Any:
    from fastav_eval.lmms.models import FastAVTiny

    return FastAVTiny.create_from_arg_string(f"policy={where},batch_size=2")


LOADERS: dict[str, Callable[[Path], Any]] = {
    "LearnedChooser(folder)": lambda folder: LearnedChooser(folder),
    "LearnedChooser(folder/policy.zip)": lambda folder: LearnedChooser(folder / LEGACY_FILE),
    "policy_config(folder)": lambda folder: policy_config(str(folder)),
    "lmms-eval wrapper policy=folder": lambda folder: _wrapper(str(folder)),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("with_meta", [True, False], ids=["zip+json", "zip alone"])
def test_a_planted_policy_runs_nothing_and_is_refused_naming_the_file(
    legacy: Path, tmp_path: Path, loader: str, with_meta: bool
) -> None:
    marker = tmp_path / "ran"
    folder = plant(legacy, tmp_path / "planted", marker)
    if not with_meta:
        (folder / META_FILE).unlink()
    with pytest.raises(PickledPolicyError) as refused:
        LOADERS[loader](folder)
    message = str(refused.value)
    assert str(folder / LEGACY_FILE) in message
    assert "loading it would run any code inside it" in message
    assert f"`fastav-eval convert-policy {folder}`" in message
    assert not marker.exists()


def test_a_planted_zip_beside_a_safe_policy_is_never_read(converted: Path, legacy: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    folder = plant(legacy, tmp_path / "planted", marker)
    for name in (MODEL_FILE, META_FILE):
        shutil.copyfile(converted / name, folder / name)
    LearnedChooser(folder).config()
    assert not marker.exists()


def test_the_lmms_eval_cli_refuses_a_planted_policy(legacy: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    folder = plant(legacy, tmp_path / "planted", marker)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "lmms_eval", "--model", "fastav_tiny", "--model_args", f"policy={folder}",
               "--tasks", "avsynth_qa", "--include_path", str(tasks_path()), "--limit", "1", "--output_path",
               str(tmp_path / "out")]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    output = run.stdout + run.stderr
    assert not marker.exists()
    assert not list((tmp_path / "out").rglob("*_results.json")), output[-3000:]
    assert str(folder / LEGACY_FILE) in output and "fastav-eval convert-policy" in output, output[-3000:]


# ---------------------------------------------------------------------------------------------- convert-policy
def test_convert_policy_converts_your_own_file_to_what_sb3_predicts(
    legacy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stable_baselines3 import PPO

    out = tmp_path / "out"
    assert main(["convert-policy", str(legacy), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "executes any code inside it" in captured.err and "only do this with a file you made" in captured.err
    assert sorted(path.name for path in out.iterdir()) == [META_FILE, MODEL_FILE]
    oracle = PPO.load(str(legacy / LEGACY_FILE), device="cpu")
    observations = np.random.default_rng(1).uniform(-10, 10, size=(2048, 38)).astype(np.float32)
    expected, _ = oracle.predict(observations, deterministic=True)
    actual, _ = LearnedChooser(out).model.predict(observations, deterministic=True)
    np.testing.assert_array_equal(actual, expected)
    assert main(["convert-policy", str(legacy), "--out", str(out)]) == 2
    assert f"--out={str(out)!r} already holds a policy" in capsys.readouterr().err
    assert main(["convert-policy", str(out)]) == 2
    assert "no policy.zip there" in capsys.readouterr().err
    in_place = tmp_path / "in_place"
    shutil.copytree(legacy, in_place)
    assert main(["convert-policy", str(in_place)]) == 0
    assert "no longer read and may be deleted" in capsys.readouterr().out
    np.testing.assert_array_equal(LearnedChooser(in_place).model.predict(observations, deterministic=True)[0], expected)


# ---------------------------------------------------------------------------------------------- malformed files
def _edit(meta: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        meta = meta[key]
    if value is _DELETE:
        del meta[last]
    else:
        meta[last] = value


_DELETE = object()
JSON_EDITS = [
    ("network.activation", "Sigmoid", r"network\.activation='Sigmoid'; accepted: one of \['ELU', 'GELU'"),
    ("network.activation", "torch.nn.modules.activation.Tanh", r"network\.activation='torch\.nn\.modules"),
    ("network.policy", "stable_baselines3.common.policies.ActorCriticCnnPolicy",
     r"network\.policy='stable_baselines3\..*; accepted: 'ActorCriticPolicy'"),
    ("network.net_arch", [32, 32], r"tensor mlp_extractor\.policy_net\.0\.weight has shape \[64, 38\] .* accepted: "
     r"\[32, 38\]"),
    ("network.net_arch", [64, 64, 64], r"tensors \[.*'mlp_extractor\.policy_net\.4\.weight'.*\] missing"),
    ("network.net_arch", [64, "64"], r"network\.net_arch=\[64, '64'\]; accepted: a list of ints >= 1"),
    ("network.action_space.nvec", [5, 5, 3, 3, 3, 4], r"network\.action_space=.*accepted: .*the retention coding"),
    ("network.observation_space.shape", [40], r"network\.observation_space\.low=.*accepted: a list of 40 finite"),
    ("network.observation_space.type", "Dict", r"network\.observation_space\.type='Dict'; accepted: \['Box'"),
    ("network.features_extractor_class", "builtins.eval", r"network keys=\[.*'features_extractor_class'.*accepted"),
    ("network", _DELETE, r"fields \[\] unknown and \['network'\] missing"),
    ("policy_class", {":serialized:": "gASV"}, r"fields \['policy_class'\] unknown and \[\] missing"),
    ("format", LEGACY_FORMAT, r"policy\.zip: a pickled Stable-Baselines3 policy"),
    ("coding.command", "rm -rf /", r"coding=\{.*'command': 'rm -rf /'.*accepted: the fields of RetentionCoding"),
    # a JSON list where a name belongs: refused by name, not as Python's "unhashable type: 'list'"
    ("network.activation", ["Tanh"], r"network\.activation=\['Tanh'\]; accepted: one of \['ELU'"),
    ("network.observation_space.type", ["Box"], r"network\.observation_space\.type=\['Box'\]; accepted: \['Box'\]"),
    ("network.action_space.type", ["MultiDiscrete"],
     r"network\.action_space\.type=\['MultiDiscrete'\]; accepted: \['Discrete', 'MultiDiscrete'\]"),
    ("network.observation_space.dtype", ["float32"], r"network\.observation_space\.dtype=\['float32'\]; accepted"),
    ("env_id", ["fastav/TokenRetention-v0"], r"env_id=\['fastav/TokenRetention-v0'\]; accepted: \['fastav/Token"),
    ("algorithm", ["PPO"], r"algorithm=\['PPO'\]; accepted: \['PPO', 'A2C'\]"),
    ("modalities", "video", r"modalities='video'; accepted: a list of modality names"),
    ("model", ["fastav_tiny"], r"model=\['fastav_tiny'\]; accepted: an lmms-eval model name"),
    # each space checked by its role: observations are a flat Box, actions Discrete or MultiDiscrete
    ("network.observation_space", {"type": "Discrete", "n": 38},
     r"network\.observation_space\.type='Discrete'; accepted: \['Box'\] \(a Box of shape \[n\]"),
    ("network.action_space", {"type": "Box", "shape": [6], "dtype": "float32", "low": [0] * 6, "high": [4] * 6},
     r"network\.action_space\.type='Box'; accepted: \['Discrete', 'MultiDiscrete'\]"),
]  # fmt: skip


@pytest.mark.parametrize(("field", "value", "message"), JSON_EDITS, ids=[edit[0] for edit in JSON_EDITS])
def test_a_malformed_policy_json_is_refused_naming_the_field(
    converted: Path, tmp_path: Path, field: str, value: Any, message: str
) -> None:
    folder = tmp_path / "edited"
    shutil.copytree(converted, folder)
    meta = json.loads((folder / META_FILE).read_text())
    _edit(meta, field, value)
    (folder / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=message):
        LearnedChooser(folder)


def test_malformed_weights_are_refused_naming_the_tensor(converted: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "edited"
    shutil.copytree(converted, folder)
    weights = load_file(str(converted / MODEL_FILE))
    save_file({name: tensor for name, tensor in weights.items() if name != "value_net.bias"}, str(folder / MODEL_FILE))
    with pytest.raises(ValueError, match=r"tensors \['value_net\.bias'\] missing and \[\] unexpected"):
        LearnedChooser(folder)
    save_file({**weights, "action_net.bias": weights["action_net.bias"].to(torch.float64)}, str(folder / MODEL_FILE))
    with pytest.raises(ValueError, match=r"tensor action_net\.bias has shape \[22\] \(torch\.float64\); accepted"):
        LearnedChooser(folder)
    (folder / MODEL_FILE).write_bytes(pickle.dumps(Planted(str(tmp_path / "ran"))))
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        LearnedChooser(folder)
    assert not (tmp_path / "ran").exists()


def _role_policies() -> dict[str, Any]:
    from gymnasium import spaces
    from stable_baselines3.common.policies import ActorCriticPolicy

    box = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
    built = {
        "a Box action space": (box, spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)),
        "a Discrete observation space": (spaces.Discrete(5), spaces.Discrete(3)),
        "a 2-d Box observation space": (spaces.Box(-1.0, 1.0, shape=(2, 3), dtype=np.float32), spaces.Discrete(3)),
        "a MultiDiscrete observation space": (spaces.MultiDiscrete([3, 3]), spaces.Discrete(3)),
    }
    return {name: ActorCriticPolicy(obs, act, lambda _: 0.0, net_arch=[8]) for name, (obs, act) in built.items()}


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("a Box action space", r"action space=Box\(.*\); accepted: a Discrete or 1-d MultiDiscrete space"),
        ("a Discrete observation space", r"observation space=Discrete\(5\); accepted: a Box of shape \[n\]"),
        ("a 2-d Box observation space", r"observation space=Box\(.*\(2, 3\).*\); accepted: a Box of shape \[n\]"),
        ("a MultiDiscrete observation space", r"observation space=MultiDiscrete\(.*accepted: a Box of shape \[n\]"),
    ],
)
def test_a_network_a_saved_policy_cannot_rebuild_is_refused_on_export(case: str, message: str) -> None:
    """What loading refuses, exporting refuses too (by the same check): no saved policy is unloadable."""
    from fastav_eval.policies.network import describe_network

    with pytest.raises(ValueError, match=message):
        describe_network(_role_policies()[case])


def test_export_and_load_check_each_space_by_its_role_alike() -> None:
    from gymnasium import spaces

    from fastav_eval.policies.network import check_space, space_from_dict, space_to_dict

    observation = spaces.Box(-2.0, 2.0, shape=(5,), dtype=np.float32)
    action = spaces.MultiDiscrete([5, 3])
    for role, space in (("observation", observation), ("action", action)):
        assert space_from_dict(space_to_dict(space, role), "policy.json", role) == space
        other = "action" if role == "observation" else "observation"
        with pytest.raises(ValueError, match=f"{other} space=.*; accepted"):
            space_to_dict(space, other)
        with pytest.raises(ValueError, match=rf"policy\.json: network\.{other}_space\.type='.*'; accepted"):
            space_from_dict(space_to_dict(space, role), "policy.json", other)
        with pytest.raises(ValueError, match=f"{other} space=.*; accepted"):
            check_space(space, other)


# ---------------------------------------------------------------------------------------------- convert-policy refusals
def test_convert_policy_refuses_a_legacy_policy_json_naming_the_field(
    legacy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for field, value, message in [
        ("decoder", _DELETE, r"fields \[\] unknown and \['decoder'\] missing; accepted: \["),
        ("policy_class", "x", r"fields \['policy_class'\] unknown and \[\] missing"),
        ("env_id", ["fastav/TokenRetention-v0"], r"env_id=\['fastav/TokenRetention-v0'\]; accepted"),
        ("algorithm", "DQN", r"algorithm='DQN'; accepted: \['PPO', 'A2C'\]"),
    ]:
        folder = tmp_path / field
        shutil.copytree(legacy, folder)
        meta = json.loads((folder / META_FILE).read_text())
        _edit(meta, field, value)
        (folder / META_FILE).write_text(json.dumps(meta))
        assert main(["convert-policy", str(folder), "--out", str(tmp_path / "out")]) == 2
        error = capsys.readouterr().err
        assert re.search(message, error), (field, error)
        assert f"{folder / META_FILE}: " in error
        assert not (tmp_path / "out").exists()


def test_convert_policy_refuses_a_network_that_acts_differently(
    legacy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The conversion's own check against SB3's predict: a mismatch is a clear refusal (exit 2), nothing written."""
    import torch

    import fastav_eval.policies.convert as convert_module

    real = convert_module.load_weights

    def tampered(policy: Any, path: Path) -> Any:
        loaded = real(policy, path)
        with torch.no_grad():
            loaded.action_net.weight.zero_()
            loaded.action_net.bias.copy_(torch.arange(loaded.action_net.bias.numel(), dtype=torch.float32))
        return loaded

    monkeypatch.setattr(convert_module, "load_weights", tampered)
    out = tmp_path / "out"
    assert main(["convert-policy", str(legacy), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    expected = (
        r"the rebuilt network acts differently from SB3's model\.predict\(deterministic=True\) on \d+ of 1024 random "
        rf"observations, so nothing was written to {re.escape(str(out))}"
    )
    assert re.search(expected, error), error
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- the static guard
SB3_ALGORITHMS = frozenset({
    "PPO", "A2C", "DQN", "SAC", "TD3", "DDPG", "HER", "TRPO", "ARS", "QRDQN", "TQC", "CrossQ", "RecurrentPPO",
    "MaskablePPO", "BaseAlgorithm", "OnPolicyAlgorithm", "OffPolicyAlgorithm",
})  # fmt: skip
"""Stable-Baselines3's (and sb3-contrib's) algorithm classes: their ``load`` unpickles the zip's ``data``."""
SB3_MODULES = frozenset({"stable_baselines3", "sb3_contrib", "sb3"})
UNPICKLERS = frozenset({"pickle", "cloudpickle", "dill", "joblib", "shelve"})


def unsafe_loads(source: str) -> list[str]:
    """``line: code`` for each place in ``source`` that can unpickle a file: ``<SB3 algorithm>.load(...)`` (by name,
    alias, ``stable_baselines3.PPO``, ``getattr(...)``, a table lookup, or a name bound to any of them),
    ``load_from_zip_file``, ``torch.load``, an unpickling module."""
    tree = ast.parse(source)
    algorithms, modules = set(SB3_ALGORITHMS), set(SB3_MODULES)
    for node in ast.walk(tree):  # aliases: import stable_baselines3 as sb; from stable_baselines3 import PPO as P
        if isinstance(node, ast.Import):
            modules |= {a.asname or a.name for a in node.names if a.name.split(".")[0] in SB3_MODULES}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in SB3_MODULES:
            algorithms |= {a.asname or a.name for a in node.names if a.name in SB3_ALGORITHMS}

    def is_algorithm(node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return node.id in algorithms
        if isinstance(node, ast.Attribute):
            return node.attr in SB3_ALGORITHMS or (isinstance(node.value, ast.Name) and node.value.id in modules)
        if isinstance(node, ast.Call):  # getattr(stable_baselines3, name), type(model), ...
            return isinstance(node.func, ast.Name) and node.func.id in {"getattr", "type"}
        return isinstance(node, ast.Subscript)  # ALGORITHMS[name]

    for _ in range(3):  # names bound to an algorithm class: cls = getattr(stable_baselines3, name); cls.load(...)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and is_algorithm(node.value):
                algorithms |= {target.id for target in node.targets if isinstance(target, ast.Name)}
    found = []
    for node in ast.walk(tree):
        unsafe = False
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner, name = node.func.value, node.func.attr
            unsafe = name == "load" and is_algorithm(owner)
            unsafe |= name in ("load", "loads") and isinstance(owner, ast.Name) and owner.id in {"torch", "th"}
        elif isinstance(node, ast.Name | ast.alias | ast.Attribute):
            named = node.id if isinstance(node, ast.Name) else node.name if isinstance(node, ast.alias) else node.attr
            unsafe = named == "load_from_zip_file" or (
                named.split(".")[0] in UNPICKLERS and isinstance(node, ast.alias)
            )
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNPICKLERS:
            unsafe = True  # from pickle import loads
        if unsafe:
            found.append(f"{node.lineno}: {ast.get_source_segment(source, node)}")
    return sorted(set(found))


ROOT = Path(__file__).resolve().parents[2]
GUARDED = ("policies", "envs", "fastav_eval")


def guarded_files() -> dict[str, Path]:
    """Every Python file of policies/, envs/ and fastav_eval/ (each once: fastav_eval/policies and fastav_eval/envs
    may be links to the top-level folders), by its path from the repository root."""
    files = {}
    for folder in GUARDED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            files.setdefault(path.resolve(), path)
    return {str(path.resolve().relative_to(ROOT)): path for path in files}


def test_only_convert_policy_calls_sb3s_load() -> None:
    """A static guard beside the behavioural tests above: no module of policies/, envs/ or fastav_eval/ but
    policies/convert.py can unpickle a file -- SB3's ``<algorithm>.load`` in any spelling, ``load_from_zip_file``,
    ``torch.load``, pickle and its kin; convert.py does, once (``load_own_zip``, which train-policy --resume uses)."""
    files = guarded_files()
    assert "policies/chooser.py" in files and "envs/retention.py" in files and "fastav_eval/cli.py" in files
    found = {name: unsafe_loads(path.read_text()) for name, path in files.items()}
    (convert_load,) = found.pop("policies/convert.py")  # the one explicit load (load_own_zip)
    assert convert_load.endswith(': getattr(stable_baselines3, algorithm).load(str(path), device="cpu", **kwargs)')
    assert not {name: calls for name, calls in found.items() if calls}


@pytest.mark.parametrize(
    "planted",
    [
        "PPO.load(path)",
        "from stable_baselines3 import PPO as P\nP.load(path)",
        "import stable_baselines3 as sb\nsb.A2C.load(path)",
        "stable_baselines3.PPO.load(str(path), device='cpu')",
        "getattr(stable_baselines3, algorithm).load(path)",
        "cls = getattr(stable_baselines3, name)\nmodel = cls.load(path)",
        "ALGORITHMS[name].load(path)",
        "from stable_baselines3.common.save_util import load_from_zip_file",
        "save_util.load_from_zip_file(path)",
        "torch.load(path)",
        "import pickle",
        "import cloudpickle as cp",
        "from pickle import loads",
    ],
)
def test_the_static_guard_catches_an_added_load(planted: str) -> None:
    source = (ROOT / "policies" / "chooser.py").read_text()
    assert not unsafe_loads(source)
    assert unsafe_loads(source + "\n\n" + planted + "\n"), planted


def test_the_static_guard_leaves_other_loads_alone() -> None:
    safe = "PolicyMeta.load(d)\nnp.load(f)\njson.load(f)\nPruningProfile.load(p)\nself.meta.load()\nload(path)\n"
    assert unsafe_loads(safe) == []


def test_the_environment_ids_are_one_table_that_registration_training_and_policies_read():
    import gymnasium

    from fastav_eval.env_ids import ENVIRONMENTS
    from fastav_eval.envs import ENV_IDS
    from fastav_eval.policies.saved import ENV_KINDS
    from fastav_eval.policies.train import ENVS

    assert {kind: env.env_id for kind, env in ENVIRONMENTS.items()} == ENVS
    assert {ENVS[kind]: kind for kind in ENVS} == ENV_KINDS
    for kind, env_id in ENVS.items():
        assert gymnasium.spec(env_id).entry_point == ENV_IDS[env_id] == ENVIRONMENTS[kind].entry_point
