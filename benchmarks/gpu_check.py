"""The prepared GPU check: latency and memory at the real shapes, and the engine's oracle checks on CUDA in bf16.

    bash benchmarks/gpu_check.sh results/gpu_check            # GPU: the real shapes (about 3-5 min on one H100)
    bash benchmarks/gpu_check.sh --smoke results/gpu_smoke    # CPU: the same code paths at tiny shapes (1-2 min)

Two models with random bf16 weights, built from transformers config classes directly on the device (nothing is
downloaded): Qwen2-7B's text decoder (``Qwen2ForCausalLM``) on VideoLLaMA2-AV's 8-frame layout (the ``videollama2``
FLOPs preset, 2,216 tokens) and on video-SALMONN 2's 10-s clip (the ``video_salmonn2`` preset: 10 frames of 182
visual and 6 audio tokens, 1,924 tokens, the first 4 frames kept), and the Qwen2.5-Omni-7B thinker
(``Qwen2_5OmniThinkerForConditionalGeneration``, real text decoder, one-layer encoders that the check never runs)
on a WorldSense-like 141-s clip (the ``qwen2_5_omni_7b`` preset, 9,405 interleaved tokens). The prompt is random
embeddings fed as ``inputs_embeds``, so the thinker's TMRoPE positions are the sequential ones (the cost does not
depend on position values). FastAV runs
each preset's setting: global stage before layer 14 of 28 with the preset's profile, fine stage P = 0.2.

Timings, per model x attention kernel (sdpa; flash_attention_2 where ``flash_attn`` imports, else the rows say "not
available") x condition (``stock``: no engine; ``engine-off``: ``PruningConfig.off()``; ``fastav``), the conditions
rotated within each repetition, medians after warm-up, CUDA synchronised around every timed region:
prefill (one forward over the prompt, as generate's first step runs it), time to first token, decode time per token
(median gap between the logits of consecutive steps of ``generate``), end to end, and peak memory
(``torch.cuda.max_memory_allocated`` during the answer, weights included).

Checks, per model x available kernel, on smaller real-shape prompts (the full VideoLLaMA2 layout; the first 16
two-second chunks of the Omni clip): engine off == stock (same greedy tokens, logits within tolerance); pruned decode
== a masked recompute (the stock layers over the whole sequence with eager attention and, per layer, a mask hiding
the keys that layer's pruned cache does not hold); the prune schedule == ``simulate_prefill``'s token counts and each
layer's cache length. The bf16 tolerance is measured, not assumed: the same masked recompute with nothing hidden is
compared with the stock model's own logits, which gives the drift between two exact-in-real-arithmetic computations
(fused kernel vs eager, different reduction orders) on this model, prompt and card. See :func:`tolerance`.

Writes ``<out_dir>/gpu_check.json`` (format ``fastav-gpu-check/1``) and ``<out_dir>/gpu_check.md``, rewritten after
every section so that a run stopped by a time limit leaves what it measured; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import inspect
import itertools
import json
import math
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import torch
import transformers
from latency import StepClock  # benchmarks/ is on sys.path when this file runs as a script
from prefill import synchronize
from torch import nn
from transformers import (
    LogitsProcessorList,
    Qwen2_5OmniThinkerConfig,
    Qwen2_5OmniThinkerForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from fastav_eval.pruning import (
    DecoderShape,
    ModalityLayout,
    PruningConfig,
    find_text_model,
    install,
    simulate_prefill,
)
from fastav_eval.pruning.compat import TESTED_TRANSFORMERS, output_cache
from fastav_eval.pruning.layout import Segment
from fastav_eval.pruning.oracle import kept_masks, masked_decoder
from fastav_eval.pruning.presets import get_preset

FORMAT = "fastav-gpu-check/1"
CONDITIONS: tuple[str, ...] = ("stock", "engine-off", "fastav")
KERNELS: tuple[str, ...] = ("sdpa", "flash_attention_2")
METRICS: tuple[str, ...] = ("prefill_s", "ttft_s", "decode_s_per_token", "end_to_end_s", "peak_memory_bytes")
FINE_RATIO = 0.2

# Qwen2-7B and the Qwen2.5-Omni-7B thinker's text decoder: the same shape (their config.json files).
REAL_TEXT = dict(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
)
TINY_TEXT = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
)
OMNI_TOKEN_IDS = dict(  # placeholders the check never feeds (the prompt is embeddings); small, valid in any vocab
    audio_token_index=101,
    image_token_index=102,
    video_token_index=103,
    audio_start_token_id=104,
    audio_end_token_id=105,
    user_token_id=106,
    vision_start_token_id=107,
    vision_end_token_id=108,
)


@dataclass(frozen=True)
class Settings:
    """What one run does: ``--smoke`` (CPU, tiny) or the real thing (CUDA, real shapes)."""

    smoke: bool
    device: str
    dtype: torch.dtype
    repeats: int
    warmup: int
    new_tokens: int
    check_tokens: int
    scale: int  # audio-visual token counts of the layouts divided by this (1: the presets' own)


@dataclass(frozen=True)
class ModelSpec:
    """One benchmarked model: how to build it, its timing and check layouts, and FastAV's setting for it."""

    name: str
    title: str
    build: Callable[[Settings, str], nn.Module]
    timing_segments: tuple[Segment, ...]
    check_segments: tuple[Segment, ...]
    config: PruningConfig


@dataclass
class Report:
    """What the run found so far; written out after every section."""

    out_dir: Path
    smoke: bool
    started: float = field(default_factory=time.perf_counter)
    meta: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)

    def check(self, name: str, passed: bool, detail: str) -> None:
        self.checks.append({"name": name, "passed": bool(passed), "detail": detail})
        log(f"check {'PASS' if passed else 'FAIL'}: {name}: {detail}")

    def write(self) -> None:
        data = {
            "format": FORMAT,
            "smoke": self.smoke,
            **self.meta,
            "wall_s": round(time.perf_counter() - self.started, 1),
            "rows": self.rows,
            "checks": self.checks,
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "gpu_check.json").write_text(json.dumps(data, indent=2) + "\n")
        (self.out_dir / "gpu_check.md").write_text(markdown(data))


def log(message: str) -> None:
    print(f"[gpu_check {datetime.now():%H:%M:%S}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------- models, layouts
def build_qwen2(settings: Settings, attn: str) -> nn.Module:
    sizes = TINY_TEXT if settings.smoke else REAL_TEXT
    config = Qwen2Config(
        **sizes,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        tie_word_embeddings=False,
        attn_implementation=attn,
    )
    return _on_device(Qwen2ForCausalLM, config, settings)


def build_omni_thinker(settings: Settings, attn: str) -> nn.Module:
    """The thinker with the real text decoder; its audio and vision encoders have one small layer each (the check
    feeds embeddings, so they never run: only the text decoder is measured)."""
    text = {**(TINY_TEXT if settings.smoke else REAL_TEXT)}
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    section = [2, 3, 3] if head_dim == 16 else [16, 24, 24]  # TMRoPE's t/h/w split of head_dim / 2
    width = text["hidden_size"]
    config = Qwen2_5OmniThinkerConfig(
        audio_config=dict(
            d_model=32,
            encoder_attention_heads=4,
            encoder_ffn_dim=64,
            encoder_layers=1,
            num_mel_bins=128,
            max_source_positions=1500,
            n_window=100,
            output_dim=width,
        ),
        vision_config=dict(
            depth=1,
            hidden_size=32,
            intermediate_size=64,
            num_heads=4,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            out_hidden_size=width,
            fullatt_block_indexes=[0],
            window_size=112,
        ),
        text_config=dict(
            **text,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": section},
        ),
        **OMNI_TOKEN_IDS,
        attn_implementation=attn,
    )
    return _on_device(Qwen2_5OmniThinkerForConditionalGeneration, config, settings)


def _on_device(model_class: type, config: Any, settings: Settings) -> nn.Module:
    torch.manual_seed(0)
    # Built where it runs, in its dtype: a 7B model never exists in fp32 or on the host. Weights are initialised
    # (on the device, fast): the oracle checks need the init's well-conditioned weights, not uninitialised memory.
    with torch.device(settings.device):
        model = model_class._from_config(config, dtype=settings.dtype)
    model.eval()
    model.generation_config.eos_token_id = None  # random weights: never stop early, answer exactly N tokens
    model.generation_config.pad_token_id = 0
    return model


def scaled(segments: tuple[Segment, ...], scale: int) -> tuple[Segment, ...]:
    """``segments`` with every audio-visual count divided by ``scale`` (rounded up); text and chunk ids stay."""
    if scale == 1:
        return segments
    return tuple(
        segment if segment[0] == "text" else (segment[0], math.ceil(segment[1] / scale), *segment[2:])
        for segment in segments
    )


def first_chunks(segments: tuple[Segment, ...], chunks: int) -> tuple[Segment, ...]:
    """A shorter clip: the audio-visual segments of the first ``chunks`` chunks (2 s each in Qwen2.5-Omni)."""
    return tuple(segment for segment in segments if segment[0] == "text" or segment[2] < chunks)


def model_specs(settings: Settings) -> list[ModelSpec]:
    specs = []
    for preset_name, name, title, build, check_chunks in (
        ("videollama2", "videollama2", "Qwen2-7B (VideoLLaMA2-AV's LLM)", build_qwen2, None),
        ("video_salmonn2", "video_salmonn2", "Qwen2-7B (video-SALMONN 2's LLM)", build_qwen2, None),
        ("qwen2_5_omni_7b", "qwen2_5_omni", "Qwen2.5-Omni-7B thinker", build_omni_thinker, 16),
    ):
        preset = get_preset(preset_name)
        timing = scaled(preset.segments, settings.scale)
        check = timing if check_chunks is None else first_chunks(timing, check_chunks)
        config = PruningConfig(profile=preset.profile, global_layer=preset.global_layer, fine_ratio=FINE_RATIO)
        if settings.smoke:  # the tiny decoders have 4 layers: the global stage at half depth, as the paper
            config = dataclasses.replace(config, global_layer=TINY_TEXT["num_hidden_layers"] // 2)
        specs.append(ModelSpec(name, title, build, timing, check, config))
    return specs


def prompt(segments: tuple[Segment, ...], hidden_size: int, settings: Settings) -> tuple[torch.Tensor, ModalityLayout]:
    """Random embeddings ``[1, L, D]`` at the scale of the embedding table's init (std 0.02) and their layout."""
    layout = ModalityLayout.from_segments([list(segments)])
    generator = torch.Generator().manual_seed(1)
    embeds = torch.randn(1, layout.length, hidden_size, generator=generator) * 0.02
    return embeds.to(settings.device, settings.dtype), layout


# ---------------------------------------------------------------------------------------------- timing
@dataclass
class Answer:
    """One generated answer (and the prefill timed before it)."""

    prefill_s: float
    ttft_s: float
    decode_s_per_token: float
    end_to_end_s: float
    peak_memory_bytes: int | None
    prefill_peak_memory_bytes: int | None
    kv_cache_bytes: int
    tokens: list[int]
    logits: list[torch.Tensor] | None
    stats: Any


@contextmanager
def engine_for(model: nn.Module, config: PruningConfig | None, layout: ModalityLayout) -> Iterator[Any]:
    """The engine installed with ``config`` and ``layout`` set, or nothing for the stock model (None)."""
    if config is None:
        yield None
        return
    engine = install(model, config)
    try:
        with engine.layout(layout):
            yield engine
    finally:
        engine.uninstall()


def takes_logits_to_keep(model: nn.Module) -> bool:
    # The Omni thinker's forward has no logits_to_keep (it would reach the layers as an unknown keyword) and
    # computes logits for every prompt row, as it does under generate: the prefill timing keeps that behaviour.
    return "logits_to_keep" in inspect.signature(type(model).forward).parameters


def run_answer(
    model: nn.Module,
    embeds: torch.Tensor,
    layout: ModalityLayout,
    config: PruningConfig | None,
    new_tokens: int,
    settings: Settings,
    *,
    timed_prefill: bool = True,
    keep_logits: bool = False,
) -> Answer:
    """Time one prefill (a forward over the prompt), then one greedy answer of exactly ``new_tokens`` tokens."""
    device, cuda = settings.device, settings.device.startswith("cuda")
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    gc.collect()
    prefill_s, prefill_peak = math.nan, None
    if timed_prefill:
        extra = {"logits_to_keep": 1} if takes_logits_to_keep(model) else {}
        with engine_for(model, config, layout):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            synchronize(device)
            start = time.perf_counter()
            output = model(inputs_embeds=embeds, attention_mask=mask, use_cache=True, **extra)
            synchronize(device)
            prefill_s = time.perf_counter() - start
            prefill_peak = torch.cuda.max_memory_allocated() if cuda else None
        del output
        gc.collect()
    clock = StepClock(device)
    with engine_for(model, config, layout) as engine:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        synchronize(device)
        start = time.perf_counter()
        output = model.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            logits_processor=LogitsProcessorList([clock]),
            return_dict_in_generate=True,
            output_logits=keep_logits,
        )
        synchronize(device)
        end = time.perf_counter()
        peak = torch.cuda.max_memory_allocated() if cuda else None
        stats = engine.last_stats if engine is not None else None
    tokens = output.sequences[0, -new_tokens:].tolist()
    if len(clock.stamps) != new_tokens or output.sequences.shape[1] != new_tokens:
        raise RuntimeError(f"expected {new_tokens} new tokens, got {output.sequences.shape[1]} ({len(clock.stamps)})")
    steps = [later - earlier for earlier, later in itertools.pairwise(clock.stamps)]
    cache = output_cache(output)
    return Answer(
        prefill_s=prefill_s,
        ttft_s=clock.stamps[0] - start,
        decode_s_per_token=statistics.median(steps),
        end_to_end_s=end - start,
        peak_memory_bytes=peak,
        prefill_peak_memory_bytes=prefill_peak,
        kv_cache_bytes=sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in cache.layers),
        tokens=tokens,
        logits=[step.float() for step in output.logits] if keep_logits else None,
        stats=stats,
    )


def time_model(model: nn.Module, spec: ModelSpec, attn: str, settings: Settings, report: Report) -> None:
    """Rows of one model x kernel: the three conditions, rotated within each repetition; medians."""
    text_model = find_text_model(model)
    embeds, layout = prompt(spec.timing_segments, text_model.config.hidden_size, settings)
    configs: dict[str, PruningConfig | None] = {"stock": None, "engine-off": PruningConfig.off(), "fastav": spec.config}
    runs: dict[str, list[Answer]] = {name: [] for name in CONDITIONS}
    with torch.no_grad():
        for repeat in range(settings.warmup + settings.repeats):
            order = CONDITIONS[repeat % 3 :] + CONDITIONS[: repeat % 3]
            for name in order:
                answer = run_answer(model, embeds, layout, configs[name], settings.new_tokens, settings)
                if repeat >= settings.warmup:
                    runs[name].append(answer)
            log(f"  {spec.name} {attn}: repetition {repeat + 1}/{settings.warmup + settings.repeats} done")
    fastav_stats = runs["fastav"][-1].stats
    medians = {name: {metric: median([getattr(a, metric) for a in runs[name]]) for metric in METRICS} for name in runs}
    for name in CONDITIONS:
        answers = runs[name]
        row: dict[str, Any] = {
            "model": spec.name,
            "attention": attn,
            "condition": name,
            "status": "measured",
            "prompt_tokens": layout.length,
            "new_tokens": settings.new_tokens,
            "repeats": settings.repeats,
            **{metric: medians[name][metric] for metric in METRICS},
            "prefill_peak_memory_bytes": median([a.prefill_peak_memory_bytes for a in answers]),
            "kv_cache_bytes": answers[-1].kv_cache_bytes,
            "same_tokens_as_stock": answers[-1].tokens == runs["stock"][-1].tokens,
            "relative_flops_fastv": 100.0
            if name != "fastav"
            else round(float(fastav_stats.relative_flops(DecoderShape.from_config(text_model.config))[0]), 2),
            "ratio_to_stock": None,
        }
        if name != "stock":
            row["ratio_to_stock"] = {
                metric: ratio(medians[name][metric], medians["stock"][metric]) for metric in METRICS
            }
            row["ratio_to_stock"]["kv_cache_bytes"] = ratio(
                answers[-1].kv_cache_bytes, runs["stock"][-1].kv_cache_bytes
            )
        report.rows.append(row)
        log(
            f"  {spec.name} {attn} {name:<10} prefill {ms(row['prefill_s'])} ms, TTFT {ms(row['ttft_s'])} ms, "
            f"decode {ms(row['decode_s_per_token'], 2)} ms/token, peak {gib(row['peak_memory_bytes'])} GiB"
        )


def median(values: list[float] | list[int | None]) -> float | int | None:
    if any(value is None for value in values):
        return None
    if all(isinstance(value, int) for value in values):
        return statistics.median_low(values)
    return statistics.median(values)


def ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else round(value / base, 3)


def ms(seconds: float | None, digits: int = 1) -> str:
    return "n/a" if seconds is None or math.isnan(seconds) else f"{seconds * 1e3:.{digits}f}"


def gib(size: int | None) -> str:
    return "n/a" if size is None else f"{size / 2**30:.2f}"


def unavailable_rows(spec: ModelSpec, attn: str, why: str, report: Report) -> None:
    for name in CONDITIONS:
        report.rows.append(
            {"model": spec.name, "attention": attn, "condition": name, "status": why, **dict.fromkeys(METRICS)}
        )


# ---------------------------------------------------------------------------------------------- oracle checks
class DecoderInputs:
    """Captures what the text decoder receives in each forward of generate (embeddings and positions), so the
    oracle can run the same sequence in one pass. Positions that the decoder derives itself (None) are the
    sequential ones after what came before."""

    def __init__(self, text_model: nn.Module) -> None:
        self.text_model = text_model
        self.embeds: list[torch.Tensor] = []
        self.positions: list[torch.Tensor] = []
        self.length = 0

    def __enter__(self) -> DecoderInputs:
        self.handle = self.text_model.register_forward_pre_hook(self.capture, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()

    def capture(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            embeds = module.embed_tokens(kwargs["input_ids"] if "input_ids" in kwargs else args[0])
        positions = kwargs.get("position_ids")
        if positions is None:
            positions = torch.arange(self.length, self.length + embeds.shape[1], device=embeds.device)[None]
        elif positions.ndim == 3 and positions.shape[0] == 4:  # [text; t, h, w] as the Omni thinker packs them
            positions = positions[1:]
        self.embeds.append(embeds)
        self.positions.append(positions)
        self.length += embeds.shape[1]

    def sequence(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat(self.embeds, 1), torch.cat(self.positions, -1)


def recompute_logits(
    model: nn.Module, captured: DecoderInputs, visible_prompt: list[torch.Tensor] | None, steps: int
) -> list[torch.Tensor]:
    """The oracle's logits of each generated step: the masked decoder over prompt + answer, read at the rows that
    produced each token. ``visible_prompt`` None: nothing hidden."""
    text_model = find_text_model(model)
    embeds, positions = captured.sequence()
    length = embeds.shape[1]
    prompt_length = length - (steps - 1)
    device = embeds.device
    if visible_prompt is None:
        visible = [torch.ones(1, length, dtype=torch.bool, device=device)] * len(text_model.layers)
    else:  # layers sharing a mask share one tensor, so the oracle builds each additive mask once
        tail = torch.ones(1, steps - 1, dtype=torch.bool, device=device)
        built: dict[int, torch.Tensor] = {}
        for mask in visible_prompt:
            if id(mask) not in built:
                built[id(mask)] = torch.cat([mask.to(device), tail], 1)
        visible = [built[id(mask)] for mask in visible_prompt]
    hidden, _ = masked_decoder(text_model, embeds, positions, visible)
    rows = hidden[:, prompt_length - 1 :]
    logits = model.get_output_embeddings()(rows).float()
    return [logits[:, step] for step in range(steps)]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def bf16_ulp(value: float) -> float:
    """The spacing of bfloat16 numbers at ``value`` (8 significant bits)."""
    return 2.0 ** (math.floor(math.log2(max(abs(value), 1e-30))) - 7)


def tolerance(noise: float, logits: list[torch.Tensor]) -> tuple[float, str]:
    """The tolerance for "same logits" on this model, prompt and card.

    ``noise`` is the measured drift between two computations that are equal in exact arithmetic: the stock model's
    own logits and the masked recompute with nothing hidden (fused kernel vs eager attention, different reduction
    orders, over every layer). A pruned decode compared with the masked recompute is the same kind of comparison
    (fused kernel over gathered tokens vs eager with masks), so its drift is of that order; the factor 4 covers the
    different lengths each layer runs at (other tilings, other reduction orders), and two bf16 spacings at the
    largest logit are the floor (``noise`` can come out 0 on a lucky prompt). The check also requires the mildest
    fault, a decode that pruned nothing (the unmasked recompute of the same sequence), to lie beyond the tolerance:
    otherwise it could not tell pruning happened, and fails.
    """
    largest = max(float(step.abs().max()) for step in logits)
    value = max(4 * noise, 2 * bf16_ulp(largest))
    return value, f"max(4 x noise {noise:.3g}, 2 bf16 ulp at |logit| {largest:.3g})"


def near_tie_flips(tokens: list[int], reference: list[torch.Tensor], tol: float) -> tuple[int, int]:
    """(steps whose greedy token differs from the reference argmax, those among them that are not near-ties)."""
    flips = bad = 0
    for token, logits in zip(tokens, reference, strict=True):
        best = int(logits[0].argmax())
        if token != best:
            flips += 1
            bad += float(logits[0, best] - logits[0, token]) > tol
    return flips, bad


def check_model(model: nn.Module, spec: ModelSpec, attn: str, settings: Settings, report: Report) -> None:
    """The engine's oracle checks on one model x kernel (see the module docstring)."""
    text_model = find_text_model(model)
    embeds, layout = prompt(spec.check_segments, text_model.config.hidden_size, settings)
    steps = settings.check_tokens
    label = f"{spec.name} {attn} ({layout.length} tokens, {steps} new)"

    def answer(config: PruningConfig | None, captured: DecoderInputs | None = None) -> Answer:
        with captured or nullcontext():
            return run_answer(model, embeds, layout, config, steps, settings, timed_prefill=False, keep_logits=True)

    with torch.no_grad():
        stock_inputs = DecoderInputs(text_model)
        stock = answer(None, stock_inputs)
        off = answer(PruningConfig.off())
        fastav_inputs = DecoderInputs(text_model)
        fastav = answer(spec.config, fastav_inputs)
        unmasked = recompute_logits(model, stock_inputs, None, steps)
        stats = fastav.stats
        masked = recompute_logits(model, fastav_inputs, kept_masks(stats.kv_positions, layout.length), steps)
        pruned_nothing = recompute_logits(model, fastav_inputs, None, steps)
    noise = max_diff(stock.logits, unmasked)
    tol, how = tolerance(noise, stock.logits)
    del stock_inputs, fastav_inputs

    # Engine off == stock: the same kernels on the same tensors, so anything above the kernel-swap drift is a fault.
    off_diff = max_diff(off.logits, stock.logits)
    report.check(
        f"{label}: engine off == stock",
        off.tokens == stock.tokens and off_diff <= tol,
        f"tokens {'identical' if off.tokens == stock.tokens else 'DIFFER'}; max |logit diff| {off_diff:.3g} "
        f"(tolerance {tol:.3g} = {how})",
    )

    # Pruned decode == masked recompute, at every step (prefill's first token included).
    pruned_diff = max_diff(fastav.logits, masked)
    flips, bad_flips = near_tie_flips(fastav.tokens, masked, tol)
    effect = max_diff(fastav.logits, pruned_nothing)  # how far the fault "nothing pruned" would land
    report.check(
        f"{label}: pruned decode == masked recompute",
        pruned_diff <= tol and bad_flips == 0 and effect > tol,
        f"max |logit diff| {pruned_diff:.3g} over {steps} steps (tolerance {tol:.3g} = {how}); greedy tokens "
        f"differ from the recompute's argmax at {flips} step(s), {bad_flips} beyond a near-tie; discrimination: the "
        f"unmasked recompute (nothing pruned) lies {effect:.3g} = {effect / tol:.1f} x tolerance away (needs > 1)",
    )

    # The prune schedule: token counts per layer and each layer's cache length.
    simulated = simulate_prefill(layout, spec.config, len(text_model.layers)).tokens_per_layer[0].tolist()
    counts = stats.tokens_per_layer[0].tolist()
    cache = [int((positions[0] >= 0).sum()) for positions in stats.kv_positions]
    report.check(
        f"{label}: prune schedule == simulate_prefill",
        counts == simulated and cache == counts,
        f"tokens per layer {compact(counts)}; simulate_prefill {compact(simulated)}; "
        f"kept in each layer's cache {'equal' if cache == counts else compact(cache)}",
    )


def compact(values: list[int]) -> str:
    """``[2216, 2216, 2216, 730, 593]`` written with runs: ``2216x3, 730, 593``."""
    parts = []
    for value, group in itertools.groupby(values):
        count = len(list(group))
        parts.append(f"{value}x{count}" if count > 1 else str(value))
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------- output
def markdown(data: dict[str, Any]) -> str:
    lines = [
        f"# FastAV GPU check{' (smoke: CPU, tiny shapes; not a measurement)' if data['smoke'] else ''}",
        "",
        f"Device: {data.get('device')}; torch {data.get('torch')}, transformers {data.get('transformers')}, "
        f"flash_attn {data.get('flash_attn') or 'not installed'}; {data.get('dtype')}; "
        f"{data.get('date')}; wall {data['wall_s']} s.",
        "",
        "Medians of the measured repetitions; ratios are to `stock` of the same model and kernel. Peak memory: "
        "`torch.cuda.max_memory_allocated` during the answer, weights included.",
        "",
        "| model | attention | condition | prompt | prefill ms | TTFT ms | decode ms/token | end to end ms | "
        "peak GiB | KV MiB | FLOPs % | prefill / TTFT / decode / peak ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in data["rows"]:
        head = f"| {row['model']} | {row['attention']} | {row['condition']} |"
        if row["status"] != "measured":
            lines.append(f"{head} {row['status']} | | | | | | | | |")
            continue
        ratios = row["ratio_to_stock"] or {}
        ratio_text = " / ".join(
            "n/a" if ratios.get(key) is None else f"{ratios[key]:.3f}"
            for key in ("prefill_s", "ttft_s", "decode_s_per_token", "peak_memory_bytes")
        )
        lines.append(
            f"{head} {row['prompt_tokens']} | {ms(row['prefill_s'])} | {ms(row['ttft_s'])} | "
            f"{ms(row['decode_s_per_token'], 2)} | {ms(row['end_to_end_s'])} | {gib(row['peak_memory_bytes'])} | "
            f"{row['kv_cache_bytes'] / 2**20:.1f} | {row['relative_flops_fastv']} | {ratio_text if ratios else '1'} |"
        )
    passed = sum(check["passed"] for check in data["checks"])
    lines += ["", f"## Checks: {passed} of {len(data['checks'])} passed", "", "| check | result | detail |"]
    lines.append("| --- | --- | --- |")
    for check in data["checks"]:
        detail = check["detail"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {check['name']} | {'pass' if check['passed'] else 'FAIL'} | {detail} |")
    return "\n".join(lines) + "\n"


def flash_attn_version() -> str | None:
    try:
        import flash_attn
    except Exception:  # a broken build is "not available" too
        return None
    return str(getattr(flash_attn, "__version__", "unknown"))


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} (CPU, {torch.get_num_threads()} threads)"
    return name


def section(report: Report, name: str, body: Callable[[], None]) -> None:
    """Run one section; an exception becomes a failed check (the other sections still run) and the files are
    rewritten either way."""
    started = time.perf_counter()
    try:
        body()
    except Exception as error:  # recorded as a failed check, never lost
        report.check(f"{name}: ran", False, f"{type(error).__name__}: {error}"[:600])
        traceback.print_exc()
    finally:
        log(f"{name}: {time.perf_counter() - started:.1f} s (total {time.perf_counter() - report.started:.1f} s)")
        report.write()


def with_kernel(
    model: nn.Module,
    attn: str,
    body: Callable[[nn.Module, ModelSpec, str, Settings, Report], None],
    spec: ModelSpec,
    settings: Settings,
    report: Report,
) -> None:
    """``body`` with the model's attention switched to ``attn`` through transformers (which loads the kernel and
    refuses one that cannot run here), then back to sdpa."""
    model.set_attn_implementation(attn)
    try:
        body(model, spec, attn, settings, report)
    finally:
        model.set_attn_implementation("sdpa")


def run_model(spec: ModelSpec, settings: Settings, report: Report, flash: str | None) -> None:
    """Build one model, then time and check it with each attention kernel; free it."""
    log(f"{spec.title}: building ({settings.dtype}, {settings.device})")
    built: list[nn.Module] = []
    section(report, f"{spec.name} build", lambda: built.append(spec.build(settings, "sdpa")))
    for attn in KERNELS:
        if not built:
            unavailable_rows(spec, attn, "not run (the model did not build)", report)
        elif attn == "flash_attention_2" and (flash is None or not settings.device.startswith("cuda")):
            unavailable_rows(spec, attn, "not available", report)
            report.write()
        else:
            model = built[0]
            section(
                report,
                f"{spec.name} {attn} timing",
                partial(with_kernel, model, attn, time_model, spec, settings, report),
            )
            section(
                report,
                f"{spec.name} {attn} checks",
                partial(with_kernel, model, attn, check_model, spec, settings, report),
            )
    built.clear()
    gc.collect()
    if settings.device.startswith("cuda"):
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="where gpu_check.json and gpu_check.md are written")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes: the same code paths in 1-2 minutes")
    parser.add_argument("--repeats", type=int, help="measured repetitions (default 5; smoke 1)")
    parser.add_argument("--warmup", type=int, help="unmeasured repetitions first (default 1; smoke 0)")
    parser.add_argument("--new-tokens", type=int, help="answer length of the timings (default 16; smoke 4)")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    if not args.smoke and not cuda:
        parser.error("no CUDA device: run it on the GPU machine, or pass --smoke for the CPU code-path check")
    settings = Settings(
        smoke=args.smoke,
        device="cpu" if args.smoke else "cuda",
        dtype=torch.bfloat16,
        repeats=args.repeats or (1 if args.smoke else 5),
        warmup=(0 if args.smoke else 1) if args.warmup is None else args.warmup,
        new_tokens=args.new_tokens or (4 if args.smoke else 16),
        check_tokens=4 if args.smoke else 8,
        scale=8 if args.smoke else 1,
    )
    if settings.smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    report = Report(args.out_dir, args.smoke)
    flash = flash_attn_version()
    report.meta = {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": device_name(settings.device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "flash_attn": flash,
        "python": sys.version.split()[0],
        "dtype": str(settings.dtype).removeprefix("torch."),
        "settings": {k: v for k, v in vars(settings).items() if k != "dtype"},
        "fine_ratio": FINE_RATIO,
        "tested_transformers": TESTED_TRANSFORMERS,
    }
    log(
        f"{'smoke' if args.smoke else 'GPU'} run on {report.meta['device']}; torch {torch.__version__}, "
        f"transformers {transformers.__version__}, flash_attn {flash or 'not installed'} -> {args.out_dir}"
    )
    report.write()

    for spec in model_specs(settings):
        run_model(spec, settings, report, flash)
    report.write()
    failed = [check["name"] for check in report.checks if not check["passed"]]
    if not report.checks:
        report.check("checks ran", False, "no check ran")
        report.write()
        failed = ["checks ran"]
    log(
        f"done in {time.perf_counter() - report.started:.1f} s: {len(report.checks) - len(failed)} of "
        f"{len(report.checks)} checks passed; wrote {args.out_dir / 'gpu_check.json'} and gpu_check.md"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
