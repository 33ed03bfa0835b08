"""``--model_args`` for every FastAV wrapper and every ``fastav-eval`` command that takes them: one parser, one
set of names, each key with one declared type, conflicts refused by one table.

The engine's knobs keep the names of :class:`~fastav_eval.pruning.PruningConfig`; ``prune`` switches the engine
between FastAV, the unpruned baseline and a hand-written rule; ``policy`` hands every decision to a saved policy;
``video_keep`` / ``audio_keep`` override one modality of the profile (an int keeps the first N tokens, a float in
[0, 1] the first fraction); ``video_keep_chunks`` / ``audio_keep_chunks`` keep the first N chunks instead
(Qwen2.5-Omni's 2-s time chunks, a model's frames). An adapter's own keys (``senses``, ``fps``, ...) are typed by
its :class:`~fastav_eval.models.base.AdapterArg` declarations.

Unlike lmms-eval's ``simple_parse_args_string`` (which guesses each value's type, reads ``-1`` as ``-1.0`` and keeps
the last of two equal keys), :func:`parse_model_args` converts each value by its key's declared kind, refuses a key
given twice, an unknown key, an empty value and the combinations of :data:`CONFLICTS`. A task's generation
settings (``--gen_kwargs``) are read here too (:func:`greedy_settings`: the wrappers decode greedily).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fastav_eval.pruning import PrefixKeep, PruningConfig, PruningProfile
from fastav_eval.pruning.methods import METHODS
from fastav_eval.pruning.rules import check_rule
from fastav_eval.pruning.scoring import check_attention_kernel

if TYPE_CHECKING:
    from fastav_eval.models.base import ModelAdapter

PRUNE_MODES = ("fastav", "none", "rule:<name>")  # and the methods of fastav_eval.pruning.methods.METHODS
NAMED_CHOOSERS: dict[str, str] = {"avsynth_senses": "fastav_eval.avsynth.rule:AVSynthSenseRule"}
"""``prune=rule:<name>``: hand-written per-sample choosers (``module:class``, built with no arguments)."""
POLICY_LOADER = "fastav_eval.policies.chooser:policy_config"
"""``policy=<path or shipped name>``: a saved learned policy decides each sample (``fastav-eval train-policy``)."""
ON_ERROR = ("raise", "record")
"""``on_error``: a request the model cannot answer (missing or malformed media) stops the run, or is recorded
as that sample's error (empty answer, ``error`` in the samples file, counted in ``avg_failed``)."""
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RULE_ARGS = ("sink_tokens",)
"""The engine args ``prune=rule:<name>`` takes (the rule decides everything else)."""
METHOD_ARGS = ("retain", "audio_retain", "sink_tokens", "seed")
"""The engine args ``prune=<method>`` (:data:`fastav_eval.pruning.methods.METHODS`) takes: its budget (``audio_retain``:
SEATS's audio target), the sink and the seed; the method decides every cut."""
METHOD_KNOBS = ("retain", "audio_retain")
"""The :data:`METHOD_ARGS` that are the method's own knobs (fields of its class)."""


# ---------------------------------------------------------------------------------------------------- value kinds
def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError
    return value.strip()


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        return value
    return int(_text(value))  # "-1" -> -1; "1.0", "1e3" are refused


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int | float):
        return float(value)
    return float(_text(value))


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return {"true": True, "false": False}[_text(value).lower()]


def _at_least(minimum: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        number = _int(value)
        if number < minimum:
            raise ValueError
        return number

    return convert


def _layer(value: Any) -> int:
    number = _int(value)
    if number < 1 and number != -1:
        raise ValueError
    return number


def _ratio(value: Any) -> float:
    number = _float(value)
    if not 0.0 <= number < 1.0:
        raise ValueError
    return number


def _share(value: Any) -> float:
    number = _float(value)
    if not 0.0 < number <= 1.0:
        raise ValueError
    return number


def _keep(value: Any) -> int | float:
    """An int (first N tokens, N >= 0) or a float in [0, 1] (first fraction); ``"1"`` is one token, ``"1.0"`` all."""
    if isinstance(value, str):
        text = _text(value)
        try:
            value = int(text)
        except ValueError:
            value = float(text)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError
    if (isinstance(value, int) and value < 0) or (isinstance(value, float) and not 0.0 <= value <= 1.0):
        raise ValueError
    return value


@dataclass(frozen=True)
class ArgKind:
    """How one key's value is read: ``convert`` takes the ``--model_args`` text (or a Python value) and raises a
    ValueError (or KeyError, TypeError) on anything else; ``accepted`` says what is accepted."""

    accepted: str
    convert: Callable[[Any], Any]


KINDS: dict[str, ArgKind] = {
    "str": ArgKind("a non-empty string", _text),
    "int": ArgKind("an int", _int),
    "int>=0": ArgKind("an int >= 0", _at_least(0)),
    "int>=1": ArgKind("an int >= 1", _at_least(1)),
    "float": ArgKind("a number", _float),
    "ratio": ArgKind("a number in [0, 1)", _ratio),
    "bool": ArgKind("true or false", _bool),
    "layer": ArgKind("an int >= 1 (a decoder layer, below the depth) or -1 (the last layer)", _layer),
    "keep": ArgKind("an int N >= 0 (first N tokens) or a float in [0, 1] (first fraction)", _keep),
    "share": ArgKind("a number in (0, 1]", _share),
}
"""Every kind of value a ``--model_args`` key can declare."""

WRAPPER_KINDS: dict[str, str] = {
    "pretrained": "str",
    "prune": "str",
    "attn_implementation": "str",
    "dtype": "str",
    "device": "str",
    "batch_size": "int>=1",
    "on_error": "str",
}
"""The wrapper's own keys (every FastAV wrapper takes them), by kind."""
ENGINE_KINDS: dict[str, str] = {
    "global_layer": "layer",
    "global_rule": "str",
    "profile": "str",
    "video_keep": "keep",
    "audio_keep": "keep",
    "video_keep_chunks": "int>=0",
    "audio_keep_chunks": "int>=0",
    "fine_ratio": "ratio",
    "fine_rule": "str",
    "sink_tokens": "int>=0",
    "seed": "int",
    "policy": "str",
    "retain": "share",
    "audio_retain": "share",
}
"""The engine's keys, by kind (their vocabularies and ranges: :class:`PruningConfig`)."""
WRAPPER_ARGS = tuple(WRAPPER_KINDS)
ENGINE_ARGS = tuple(ENGINE_KINDS)
KEEP_ARGS = ("video_keep", "audio_keep", "video_keep_chunks", "audio_keep_chunks")
PRUNING_ARGS = tuple(key for key in ENGINE_ARGS if key != "policy")
ADAPTER_KINDS: dict[type, str] = {str: "str", int: "int", float: "float", bool: "bool"}
"""An :class:`AdapterArg`'s ``kind`` -> the kind its ``--model_args`` text is read as."""


def arg_kinds(adapter_class: type[ModelAdapter] | None) -> dict[str, str]:
    """Every key a wrapper around ``adapter_class`` accepts -> its kind (None: the wrapper's and engine's only)."""
    adapter = {} if adapter_class is None else adapter_class.model_args
    return {**WRAPPER_KINDS, **ENGINE_KINDS, **{name: ADAPTER_KINDS[arg.kind] for name, arg in adapter.items()}}


# ------------------------------------------------------------------------------------------------------ conflicts
@dataclass(frozen=True)
class Conflict:
    """``key`` given with a value matching ``values`` (an fnmatch pattern, case-insensitive; ``*``: any value)
    refuses every key of ``refuses`` given with it, because of ``reason``."""

    key: str
    values: str
    refuses: tuple[str, ...]
    reason: str


CONFLICTS: tuple[Conflict, ...] = (
    Conflict("policy", "*", PRUNING_ARGS,
             "policy= takes no other pruning arguments (the policy was trained under its own)"),
    Conflict("policy", "*", ("prune",), "policy= is given with prune: a policy decides the pruning, leave prune out"),
    Conflict("prune", "none", ENGINE_ARGS,
             "prune=none takes no pruning arguments (the unpruned model reads none; use prune=fastav)"),
    Conflict("prune", "rule:*", tuple(key for key in ENGINE_ARGS if key not in RULE_ARGS),
             f"prune=rule:<name> takes only {list(RULE_ARGS)} of the engine args (the rule decides every cut)"),
    Conflict("global_rule", "none", ("profile", *KEEP_ARGS),
             "global_rule=none turns the global stage off, so no profile or keep would be read"),
    Conflict("video_keep", "*", ("video_keep_chunks",), "video_keep and video_keep_chunks both given; give one"),
    Conflict("audio_keep", "*", ("audio_keep_chunks",), "audio_keep and audio_keep_chunks both given; give one"),
)  # fmt: skip
"""Keys that cannot be given together: each would silently drop the other, so both are refused."""


def check_conflicts(given: Mapping[str, Any]) -> None:
    """Raise a ValueError for the first rule of :data:`CONFLICTS` that ``given`` (the keys a user gave) breaks."""
    for rule in CONFLICTS:
        if rule.key not in given or not fnmatch.fnmatchcase(str(given[rule.key]).lower(), rule.values):
            continue
        clash = sorted(key for key in rule.refuses if key in given and key != rule.key)
        if clash:
            shown = ", ".join(f"{key}={given[key]!r}" for key in [rule.key, *clash])
            raise ValueError(f"{rule.reason}; got {clash} ({shown})")


# -------------------------------------------------------------------------------------------------------- parsing
def split_items(text: str) -> list[tuple[str, str]]:
    """``a=1,b="x,y"`` -> ``[("a", "1"), ("b", "x,y")]``: commas inside quotes or braces do not split (as in
    lmms-eval), a value's matching outer quotes are removed; an item without ``=`` or with no key is refused."""
    items, current, depth, quote = [], [], 0, ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
        elif char == "," and depth == 0:
            items.append("".join(current))
            current = []
            continue
        current.append(char)
    if quote:
        raise ValueError(
            f"--model_args {text!r}: a {quote} quote is not closed; accepted: key=value items separated by commas, "
            'a value holding a comma or an apostrophe in double quotes (key="...")'
        )
    items.append("".join(current))
    pairs = []
    for item in (part.strip() for part in items):
        if not item:
            continue
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"--model_args item {item!r}; accepted: key=value items separated by commas")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        pairs.append((key.strip(), value))
    return pairs


def convert(key: str, value: Any, kind: str) -> Any:
    """``value`` (text or a Python value) read as ``kind``; a ValueError naming the key, value and what is accepted."""
    arg_kind = KINDS[kind]
    try:
        return arg_kind.convert(value)
    except (ValueError, KeyError, TypeError):
        pass
    shown = value
    if isinstance(value, str):  # show a number as a number: sink_tokens=-1, not sink_tokens='-1'
        try:
            shown = int(value)
        except ValueError:
            try:
                shown = float(value)
            except ValueError:
                shown = value
    raise ValueError(f"{key}={shown!r}; accepted: {arg_kind.accepted}") from None


def check_model_args(given: Mapping[str, Any], kinds: Mapping[str, str]) -> dict[str, Any]:
    """``given`` (key -> text or Python value) with each value read as its key's kind; unknown keys and
    :data:`CONFLICTS` refused. ``None`` values count as not given."""
    given = {key: value for key, value in given.items() if value is not None}
    check_known(given, tuple(kinds))
    typed = {key: convert(key, value, kinds[key]) for key, value in given.items()}
    check_conflicts(typed)
    return typed


def parse_model_args(text: str, kinds: Mapping[str, str]) -> dict[str, Any]:
    """A ``--model_args`` string -> key -> typed value (:func:`check_model_args`); a key given twice is refused."""
    seen: dict[str, str] = {}
    for key, value in split_items(text or ""):
        if key in seen:
            raise ValueError(
                f"{key} is given twice in --model_args ({key}={seen[key]} and {key}={value}); give it once"
            )
        seen[key] = value
    return check_model_args(seen, kinds)


def join_model_args(args: Mapping[str, Any]) -> str:
    """The ``--model_args`` string of ``args`` (what :func:`parse_model_args` reads back: a value holding a comma or
    a brace is quoted, booleans are ``true`` / ``false``)."""

    def text(value: Any) -> str:
        value = {True: "true", False: "false"}.get(value, value) if isinstance(value, bool) else str(value)
        if any(char in value for char in ",{}[]\"'") and '"' not in value:
            return f'"{value}"'
        return value

    return ",".join(f"{key}={text(value)}" for key, value in args.items())


# ------------------------------------------------------------------------------------------------- engine configs
def check_known(args: Mapping[str, Any], accepted: tuple[str, ...], what: str = "--model_args") -> None:
    """Refuse the keys of ``args`` that ``accepted`` does not hold, naming ``what`` they are."""
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise ValueError(f"unknown {what} key(s) {unknown}; accepted: {sorted(accepted)}")


def profile_file(prune: str | None, engine_args: Mapping[str, Any], default_profile: Path | None) -> Path | None:
    """The profile JSON a run reads: ``profile=`` if given, else the model's shipped one (none unless FastAV)."""
    if (prune or "fastav") != "fastav" or "policy" in engine_args:
        return None
    if str(engine_args.get("global_rule", "")).lower() == "none":  # no global stage reads it
        return None
    return Path(engine_args["profile"]) if engine_args.get("profile") is not None else default_profile


def rule_config(name: str, engine_args: Mapping[str, Any]) -> PruningConfig:
    """``prune=rule:<name>``: the named chooser decides every sample's cut (layer, keep set, fine ratio); no global
    rule and no profile. The latest cut it may schedule is the decoder's last layer (``global_layer`` resolves to it).
    """
    if name not in NAMED_CHOOSERS:
        raise ValueError(f"prune=rule:{name}; accepted rules: {sorted(NAMED_CHOOSERS)}")
    module_name, class_name = NAMED_CHOOSERS[name].split(":")
    chooser = getattr(importlib.import_module(module_name), class_name)()
    return PruningConfig.chosen_by(chooser, **engine_args)


def methods_taking(knob: str) -> list[str]:
    """The methods of :data:`METHODS` that have the knob ``knob`` (a field of their class)."""
    return [name for name, method in METHODS.items() if knob in {field.name for field in dataclasses.fields(method)}]


def method_config(name: str, engine_args: Mapping[str, Any]) -> PruningConfig:
    """``prune=<method>``: the method (with ``retain`` if given, else its published default) decides every cut."""
    extra = sorted(set(engine_args) - set(METHOD_ARGS))
    if extra:
        raise ValueError(f"prune={name} takes only {list(METHOD_ARGS)} of the engine args; got {extra}")
    args = dict(engine_args)
    knobs = {key: args.pop(key) for key in METHOD_KNOBS if key in args}
    for key in knobs:
        takes = methods_taking(key)
        if name not in takes:
            raise ValueError(f"{key}= is a knob of prune={'|'.join(takes)}; prune={name} has none")
    return METHODS[name](**knobs).config(**args)


def learned_config(engine_args: Mapping[str, Any]) -> PruningConfig:
    """``policy=<path>``: the saved policy's own config (it was trained under it)."""
    module_name, function = POLICY_LOADER.split(":")
    return getattr(importlib.import_module(module_name), function)(engine_args["policy"])


def _keep_overrides(args: dict[str, Any]) -> dict[str, PrefixKeep]:
    """Pop ``*_keep`` / ``*_keep_chunks`` from ``args``: modality -> the prefix it keeps."""
    overrides = {}
    for name in ("video", "audio"):
        if f"{name}_keep" in args:
            value = args.pop(f"{name}_keep")
            overrides[name] = PrefixKeep(first_tokens=value) if isinstance(value, int) else PrefixKeep(
                first_fraction=value)  # fmt: skip
        if f"{name}_keep_chunks" in args:
            overrides[name] = PrefixKeep(first_chunks=args.pop(f"{name}_keep_chunks"))
    return overrides


def pruning_config(prune: str | None, engine_args: Mapping[str, Any], default_profile: Path | None) -> PruningConfig:
    """The engine config that ``prune`` (None: not given, i.e. ``fastav``) and the engine ``--model_args`` describe.

    Values are read by their declared kinds and :data:`CONFLICTS` refused (e.g. ``prune=none`` takes no engine
    args, which it would otherwise silently ignore). With ``prune=fastav`` the profile defaults to the one shipped
    with the model's weights.
    """
    check_known(engine_args, ENGINE_ARGS)
    args = check_model_args({"prune": prune, **engine_args}, {"prune": "str", **ENGINE_KINDS})
    mode = args.pop("prune", "fastav")
    if "policy" in args:
        return learned_config(args)
    if mode.startswith("rule:"):
        return rule_config(mode.removeprefix("rule:"), args)
    if mode in METHODS:
        return method_config(mode, args)
    for key in METHOD_KNOBS:
        if key in args:
            raise ValueError(
                f"{key}= is the budget of a method (prune={'|'.join(methods_taking(key))}); prune={mode!r} reads none"
            )
    if mode not in PRUNE_MODES:
        raise ValueError(
            f"prune={mode!r}; accepted: fastav, none, {', '.join(METHODS)}, rule:<name> with <name> in "
            f"{sorted(NAMED_CHOOSERS)}; for a learned policy give policy=<path>"
        )
    if mode == "none":
        return PruningConfig.off()
    profile_path = profile_file(mode, args, default_profile)
    global_rule = args.pop("global_rule", "positional")
    if global_rule.lower() == "none":
        global_rule = None
    else:
        check_rule("global_rule", global_rule, "global", off=("none",))
    args.pop("profile", None)
    profile = PruningProfile.load(profile_path) if profile_path is not None else None
    overrides = _keep_overrides(args)
    if "profile" in engine_args and profile is not None and overrides and set(profile.keep) <= set(overrides):
        raise ValueError(
            f"profile={engine_args['profile']!r} keeps {sorted(profile.keep)}, and the keeps given "
            f"({sorted(f'{name}_keep' for name in overrides)}) replace all of them, so the profile would not be read; "
            "accepted: profile= or a keep for every modality, not both"
        )
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
    return PruningConfig(global_rule=global_rule, profile=profile, **args)


# --------------------------------------------------------------------------------------------- a wrapper's settings
@dataclass(frozen=True)
class WrapperSettings:
    """What a wrapper's ``--model_args`` resolve to, checked before any weight is loaded.

    Attributes:
        given: every key the user gave, typed (what the run record's ``model_args`` lists).
        pretrained, dtype, device, attn_implementation, batch_size, on_error: the wrapper's settings, defaults
            filled (``device`` None: cuda if present).
        prune: ``fastav``, ``none``, ``rule:<name>`` or ``policy``.
        config: the engine config (not yet resolved against the decoder's depth).
        profile_file: the profile JSON the run reads, if any.
        adapter_args: the adapter's own keys, as given.
    """

    given: dict[str, Any]
    pretrained: str | None
    dtype: str
    device: str | None
    attn_implementation: str
    batch_size: int
    on_error: str
    prune: str
    config: PruningConfig
    profile_file: Path | None
    adapter_args: dict[str, Any]


def wrapper_settings(adapter_class: type[ModelAdapter], model_args: Mapping[str, Any]) -> WrapperSettings:
    """Every check a FastAV wrapper makes before loading: types, unknown keys, conflicts, vocabularies, the adapter's
    own keys, the attention kernel, the engine config and its profile (``fastav-eval sweep`` runs it per grid point).
    """
    given = check_model_args(model_args, arg_kinds(adapter_class))
    dtype = given.get("dtype", adapter_class.default_dtype)
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; accepted: {list(DTYPES)}")
    on_error = given.get("on_error", "raise")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r}; accepted: {list(ON_ERROR)}")
    attn_implementation = given.get("attn_implementation", "sdpa")
    check_attention_kernel(attn_implementation, adapter_class.attn_implementations)
    adapter_args = {key: value for key, value in given.items() if key in adapter_class.model_args}
    adapter_class.check_model_args(adapter_args)
    pretrained = given.get("pretrained") or adapter_class.default_pretrained
    default_profile = adapter_class.default_profile(pretrained)
    engine_args = {key: value for key, value in given.items() if key in ENGINE_ARGS}
    config = pruning_config(given.get("prune"), engine_args, default_profile)
    prune = "policy" if "policy" in given else given.get("prune", "fastav")
    return WrapperSettings(
        given=given,
        pretrained=pretrained,
        dtype=dtype,
        device=given.get("device"),
        attn_implementation=attn_implementation,
        batch_size=given.get("batch_size", 1),
        on_error=on_error,
        prune=prune,
        config=config,
        profile_file=profile_file(prune, engine_args, default_profile),
        adapter_args=adapter_args,
    )


# ------------------------------------------------------------------------------------------- generation settings
GREEDY_KWARGS = ("max_new_tokens", "temperature", "do_sample", "until", "top_p", "num_beams")
"""The generation settings a task (or ``--gen_kwargs``) may give a FastAV wrapper."""


def greedy_settings(gen_kwargs: dict[str, Any]) -> tuple[int, list[str]]:
    """A task's (or ``--gen_kwargs``') generation settings -> ``(max_new_tokens, stop strings)``; sampling, beams
    and unknown keys are refused: the wrappers decode greedily."""
    check_known(gen_kwargs, GREEDY_KWARGS, "generation_kwargs")
    try:
        sampling = bool(gen_kwargs.get("do_sample")) or float(gen_kwargs.get("temperature") or 0) > 0
        beams, max_new_tokens = int(gen_kwargs.get("num_beams", 1)), int(gen_kwargs.get("max_new_tokens", 32))
    except (TypeError, ValueError):
        raise ValueError(
            f"generation_kwargs {gen_kwargs}; accepted: temperature a number, num_beams and max_new_tokens ints"
        ) from None
    if sampling:
        raise ValueError(
            f"generation_kwargs {gen_kwargs}: FastAV wrappers decode greedily (do_sample=false, temperature=0)"
        )
    if beams != 1:
        raise ValueError(f"generation_kwargs num_beams={gen_kwargs['num_beams']!r}; accepted: 1")
    if max_new_tokens < 1:
        raise ValueError(f"generation_kwargs max_new_tokens={max_new_tokens!r}; accepted: an int >= 1")
    until = gen_kwargs.get("until") or []
    return max_new_tokens, [until] if isinstance(until, str) else list(until)
