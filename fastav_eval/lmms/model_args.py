"""``--model_args`` for every FastAV wrapper: one set of names, validated in one place.

The engine's knobs keep the names of :class:`~fastav_eval.pruning.PruningConfig`; ``prune`` switches the engine
between FastAV and the unpruned baseline, and ``video_keep`` / ``audio_keep`` override one modality of the profile
(an int keeps the first N tokens, a float in [0, 1] the first fraction); ``video_keep_chunks`` /
``audio_keep_chunks`` keep the first N chunks instead (Qwen2.5-Omni's 2-s time chunks, a model's frames).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from fastav_eval.pruning import GLOBAL_RULES, PrefixKeep, PruningConfig, PruningProfile

PRUNE_MODES = ("fastav", "none", "rule:<name>")
RULES: dict[str, str] = {"avsynth_senses": "fastav_eval.avsynth.rule:AVSynthSenseRule"}
"""``prune=rule:<name>``: hand-written per-sample choosers (``module:class``, built with no arguments)."""
ENGINE_ARGS = ("global_layer", "global_rule", "profile", "video_keep", "audio_keep", "video_keep_chunks",
               "audio_keep_chunks", "fine_ratio", "fine_rule", "sink_tokens", "seed", "policy")  # fmt: skip
POLICY_LOADER = "fastav_eval.policies.chooser:policy_config"
"""``policy=<path or shipped name>``: a saved learned policy decides each sample (``fastav-eval train-policy``)."""
WRAPPER_ARGS = ("pretrained", "prune", "attn_implementation", "dtype", "device", "batch_size", "max_batch_size",
                "on_error")  # fmt: skip
ON_ERROR = ("raise", "record")
"""``on_error``: a request the model cannot answer (missing or malformed media) stops the run, or is recorded
as that sample's error (empty answer, ``error`` in the samples file, counted in ``avg_failed``)."""


def _keep(name: str, value: Any) -> PrefixKeep:
    accepted = f"{name}={value!r}; accepted: an int N >= 0 (first N tokens) or a float in [0, 1] (first fraction)"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(accepted)
    if (isinstance(value, int) and value < 0) or (isinstance(value, float) and not 0.0 <= value <= 1.0):
        raise ValueError(accepted)
    return PrefixKeep(first_tokens=value) if isinstance(value, int) else PrefixKeep(first_fraction=value)


def check_known(args: dict[str, Any], accepted: tuple[str, ...]) -> None:
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise ValueError(f"unknown --model_args key(s) {unknown}; accepted: {sorted(accepted)}")


def profile_file(prune: str, engine_args: dict[str, Any], default_profile: Path | None) -> Path | None:
    """The profile JSON a run reads: ``profile=`` if given, else the model's shipped one (none for ``prune=none``)."""
    if prune != "fastav":
        return None
    return Path(engine_args["profile"]) if engine_args.get("profile") is not None else default_profile


RULE_ARGS = ("sink_tokens",)


def rule_config(name: str, engine_args: dict[str, Any]) -> PruningConfig:
    """``prune=rule:<name>``: the named chooser decides every sample's cut (layer, keep set, fine ratio); no global
    rule and no profile. The latest cut it may schedule is the decoder's last layer (``global_layer`` resolves to it).
    """
    if name not in RULES:
        raise ValueError(f"prune=rule:{name}; accepted rules: {sorted(RULES)}")
    extra = sorted(set(engine_args) - set(RULE_ARGS))
    if extra:
        raise ValueError(f"prune=rule:{name} takes only {list(RULE_ARGS)} of the engine args; got {extra}")
    module_name, class_name = RULES[name].split(":")
    chooser = getattr(importlib.import_module(module_name), class_name)()
    return PruningConfig.chosen_by(chooser, **engine_args)


def learned_config(prune: str, engine_args: dict[str, Any]) -> PruningConfig:
    """``policy=<path>``: the saved policy's own config (it was trained under it), so no other engine arg."""
    if prune not in ("fastav", "policy"):
        raise ValueError(f"policy= is given with prune={prune!r}; a policy decides the pruning: leave prune out")
    extra = sorted(set(engine_args) - {"policy"})
    if extra:
        raise ValueError(
            f"policy= takes no other pruning arguments (the policy was trained under its own); got {extra}"
        )
    module_name, function = POLICY_LOADER.split(":")
    return getattr(importlib.import_module(module_name), function)(engine_args["policy"])


def pruning_config(prune: str, engine_args: dict[str, Any], default_profile: Path | None) -> PruningConfig:
    """The engine config that ``prune`` and the engine ``--model_args`` describe.

    ``prune=none`` takes no engine args (they would be silently ignored otherwise). With ``prune=fastav`` the
    profile defaults to the one shipped with the model's weights.
    """
    check_known(engine_args, ENGINE_ARGS)
    if "policy" in engine_args:
        return learned_config(prune, engine_args)
    if prune.startswith("rule:"):
        return rule_config(prune.removeprefix("rule:"), engine_args)
    if prune not in PRUNE_MODES:
        raise ValueError(
            f"prune={prune!r}; accepted: fastav, none, rule:<name> with <name> in {sorted(RULES)}; "
            "for a learned policy give policy=<path>"
        )
    if prune == "none":
        if engine_args:
            raise ValueError(f"prune=none takes no pruning arguments; got {sorted(engine_args)} (use prune=fastav)")
        return PruningConfig.off()
    args = dict(engine_args)
    global_rule = args.pop("global_rule", "positional")
    if isinstance(global_rule, str) and global_rule.lower() == "none":
        global_rule = None
    if global_rule is not None and global_rule not in GLOBAL_RULES:
        raise ValueError(f"global_rule={global_rule!r}; accepted: {[*GLOBAL_RULES, 'none']}")
    args.pop("profile", None)
    profile_path = profile_file(prune, engine_args, default_profile)
    profile = PruningProfile.load(profile_path) if profile_path is not None else None
    overrides = {
        name: _keep(f"{name}_keep", args.pop(f"{name}_keep")) for name in ("video", "audio") if f"{name}_keep" in args
    }
    for name in ("video", "audio"):
        if f"{name}_keep_chunks" in args:
            if name in overrides:
                raise ValueError(f"{name}_keep and {name}_keep_chunks both given; give one of them")
            chunks = args.pop(f"{name}_keep_chunks")
            if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 0:
                raise ValueError(f"{name}_keep_chunks={chunks!r}; accepted: an int N >= 0 (first N chunks)")
            overrides[name] = PrefixKeep(first_chunks=chunks)
    if overrides:
        base = profile or PruningProfile(keep={})
        keep = {**base.keep, **overrides}
        inherited = set(keep) - set(overrides)  # what still comes from a calibrated profile binds it to its model
        profile = PruningProfile(
            keep=keep,
            num_layers=base.num_layers if inherited else None,
            global_layer=base.global_layer if inherited else None,
            source="manual",
        )
    for name in ("global_layer", "sink_tokens", "seed"):
        if name in args and (isinstance(args[name], bool) or not isinstance(args[name], int)):
            raise ValueError(f"{name}={args[name]!r}; accepted: an int")
    if "fine_ratio" in args and (
        isinstance(args["fine_ratio"], bool) or not isinstance(args["fine_ratio"], int | float)
    ):
        raise ValueError(f"fine_ratio={args['fine_ratio']!r}; accepted: a number in [0, 1)")
    return PruningConfig(global_rule=global_rule, profile=profile, **args)
