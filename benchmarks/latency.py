"""Answer latency: time to first token, decode time per token, end to end, stock vs engine-off vs FastAV.

    python benchmarks/latency.py                                  # CPU: 12-layer d-512 Qwen2, VideoLLaMA2 layout
    python benchmarks/latency.py --layout long8k                  # the same structure, 4x the audio-visual tokens
    python benchmarks/latency.py --shape qwen2-7b --device cuda --dtype bfloat16   # GPU: the real LLM shape
    python benchmarks/latency.py --shape tiny --new-tokens 4 --repeats 1 --warmup 0  # smoke test

One random-weight Qwen2 (the shapes of benchmarks/prefill.py) answers a prompt of random embeddings with a greedy
answer of exactly ``--new-tokens`` tokens (min_new_tokens = max_new_tokens) through ``model.generate``, in three
settings: ``stock`` (no engine installed), ``engine-off`` (the engine installed with ``PruningConfig.off()``) and
``fastav`` (global stage at half depth keeping the first 10 audio tokens, fine stage P = 0.2, as prefill.py runs
it). The engine is installed before and uninstalled after each answer; each repetition runs all three settings
(in rotating order) so that machine noise hits them alike, and medians are reported.

Timing: a LogitsProcessor records ``time.perf_counter()`` (after a CUDA synchronize) each time generate hands it
the logits of a forward. Its first stamp ends the prefill: time to first token = first stamp - start. Each later
stamp ends one decode forward over the cache, so the N - 1 gaps between stamps are the decode steps; decode time
per token is their median (robust to the other tenants of a shared machine; the mean is in the JSON), and the
prefill is not in it. End to end = the whole generate call. Peak memory (CUDA only) is
torch.cuda.max_memory_allocated during the answer, weights included; the KV cache is measured after generation.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime

import torch
import transformers
from prefill import SHAPES as PREFILL_SHAPES  # benchmarks/ is on sys.path when this file runs as a script
from prefill import build_model, kv_bytes, machine, synchronize
from tqdm import tqdm
from transformers import LogitsProcessor, LogitsProcessorList, Qwen2ForCausalLM

from fastav_eval.pruning import DecoderShape, ModalityLayout, PruningConfig, PruningProfile, install
from fastav_eval.pruning.compat import output_cache
from fastav_eval.pruning.layout import Segment
from fastav_eval.pruning.presets import get_preset

SHAPES: dict[str, DecoderShape] = {
    **PREFILL_SHAPES,
    "cpu-12l-512": PREFILL_SHAPES["cpu-small"],
    "tiny": DecoderShape(
        num_layers=4, hidden_size=128, intermediate_size=344, num_heads=4, num_kv_heads=2, head_dim=32
    ),
}
VIDEOLLAMA2: tuple[Segment, ...] = get_preset("videollama2").segments  # 14 + 676 video + 1,496 audio + 30
LAYOUTS: dict[str, tuple[Segment, ...]] = {
    "videollama2": VIDEOLLAMA2,
    # 32 frames (4 x 676 video tokens) and 120 s of audio (4 x 1,496 tokens): 8,732 tokens: attention weighs more.
    "long8k": tuple((mod, count * 4 if mod != "text" else count) for mod, count in VIDEOLLAMA2),
}
SETTINGS: tuple[str, ...] = ("stock", "engine-off", "fastav")


class StepClock(LogitsProcessor):
    """Records a timestamp each time generate scores a forward's logits (one per new token)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        synchronize(self.device)
        self.stamps.append(time.perf_counter())
        return scores


@dataclass
class Answer:
    """The figures of one generated answer."""

    ttft_s: float
    decode_s_per_token: float  # median decode step
    decode_mean_s_per_token: float
    end_to_end_s: float
    kv_cache_bytes: int
    peak_memory_bytes: int | None
    tokens: list[int]


def answer(
    model: Qwen2ForCausalLM,
    embeds: torch.Tensor,
    layout: ModalityLayout,
    config: PruningConfig | None,
    new_tokens: int,
    device: str,
) -> Answer:
    """Generate one greedy answer of exactly ``new_tokens`` tokens; ``config`` None runs the stock model."""
    gc.collect()  # start every answer from the same heap: the previous setting's cache is garbage now
    engine = install(model, config) if config is not None else None
    clock = StepClock(device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        with engine.layout(layout) if engine is not None else nullcontext():
            synchronize(device)
            start = time.perf_counter()
            output = model.generate(
                inputs_embeds=embeds,
                attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                logits_processor=LogitsProcessorList([clock]),
                return_dict_in_generate=True,
            )
            synchronize(device)
            end = time.perf_counter()
    finally:
        if engine is not None:
            engine.uninstall()
    tokens = output.sequences[0].tolist()
    if len(clock.stamps) != new_tokens or len(tokens) != new_tokens:
        raise RuntimeError(f"expected {new_tokens} new tokens, got {len(tokens)} ({len(clock.stamps)} steps timed)")
    first, last = clock.stamps[0], clock.stamps[-1]
    steps = [later - earlier for earlier, later in itertools.pairwise(clock.stamps)]
    return Answer(
        ttft_s=first - start,
        decode_s_per_token=statistics.median(steps),
        decode_mean_s_per_token=(last - first) / (new_tokens - 1),
        end_to_end_s=end - start,
        kv_cache_bytes=kv_bytes(output_cache(output)),
        peak_memory_bytes=torch.cuda.max_memory_allocated() if cuda else None,
        tokens=tokens,
    )


def median_of(values: list[float] | list[int] | list[None]) -> float | None:
    """The median; the lower middle value for byte counts (they stay whole); None for figures not measured."""
    if values[0] is None:
        return None
    return statistics.median_low(values) if isinstance(values[0], int) else statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="cpu-12l-512")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="videollama2")
    parser.add_argument("--new-tokens", type=int, default=32, help="answer length (exactly this many, no eos)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    parser.add_argument("--repeats", type=int, default=7, help="measured repetitions (each runs all three settings)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured repetitions before them")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (this machine has 2 cores)")
    parser.add_argument("--fine-ratio", type=float, default=0.2)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.new_tokens < 2 or args.repeats < 1 or args.warmup < 0:
        parser.error("--new-tokens must be >= 2, --repeats >= 1 and --warmup >= 0")
    torch.set_num_threads(args.threads)

    shape, dtype, device = SHAPES[args.shape], getattr(torch, args.dtype), args.device
    layout = ModalityLayout.from_segments([list(LAYOUTS[args.layout])])
    model = build_model(shape, dtype, device, args.attn)
    model.generation_config.eos_token_id = None  # random weights: never stop early, answer exactly N tokens
    model.generation_config.pad_token_id = 0
    embeds = torch.randn(1, layout.length, shape.hidden_size, generator=torch.Generator().manual_seed(1))
    embeds = (embeds * 0.02).to(device=device, dtype=dtype)
    configs: dict[str, PruningConfig | None] = {
        "stock": None,
        "engine-off": PruningConfig.off(),
        "fastav": PruningConfig(profile=PruningProfile.prefix(audio=10), fine_ratio=args.fine_ratio),
    }

    started = datetime.now().astimezone()
    header = (
        f"{started:%Y-%m-%d %H:%M %Z}; {machine(device)}; transformers {transformers.__version__}\n"
        f"{args.new_tokens}-token greedy answer to a {args.layout} prompt of {layout.length} tokens; "
        f"{args.shape}: {shape.num_layers} layers, d {shape.hidden_size}; {args.dtype}, {args.attn}, {device}; "
        f"median of {args.repeats} interleaved repetitions after {args.warmup} warm-up"
    )
    print(header, flush=True)

    runs: dict[str, list[Answer]] = {name: [] for name in SETTINGS}
    with torch.no_grad():
        for repeat in tqdm(range(args.warmup + args.repeats), desc="repetitions", unit="rep"):
            order = SETTINGS[repeat % 3 :] + SETTINGS[: repeat % 3]  # rotate who goes first
            for name in order:
                result = answer(model, embeds, layout, configs[name], args.new_tokens, device)
                if repeat >= args.warmup:
                    runs[name].append(result)

    metrics = ("ttft_s", "decode_s_per_token", "end_to_end_s", "kv_cache_bytes", "peak_memory_bytes")
    extra_metrics = ("decode_mean_s_per_token",)
    median: dict[str, dict[str, float | None]] = {
        name: {metric: median_of([getattr(a, metric) for a in answers]) for metric in (*metrics, *extra_metrics)}
        for name, answers in runs.items()
    }
    ratios = {
        f"{name}/stock": {
            metric: None if median[name][metric] is None else round(median[name][metric] / median["stock"][metric], 3)
            for metric in (*metrics, *extra_metrics)
        }
        for name in ("engine-off", "fastav")
    }
    same_tokens = {name: runs[name][-1].tokens == runs["stock"][-1].tokens for name in SETTINGS}

    def cell(value: float | None, scale: float, digits: int) -> str:
        return "n/a" if value is None else f"{value * scale:.{digits}f}"

    columns = ("TTFT ms", "decode ms/token", "end-to-end ms", "KV cache MiB", "peak GiB")  # decode: median step
    scales = ((1e3, 1), (1e3, 2), (1e3, 1), (2**-20, 1), (2**-30, 2))
    print(f"\n{'':<18}" + "".join(f"{title:>17}" for title in columns) + f"{'same tokens':>13}")
    for name in SETTINGS:
        row = (cell(median[name][m], s, d) for m, (s, d) in zip(metrics, scales, strict=True))
        print(f"{name:<18}" + "".join(f"{text:>17}" for text in row) + f"{'yes' if same_tokens[name] else 'no':>13}")
    for label, values in ratios.items():
        row = (cell(values[m], 1, 3) for m in metrics)
        print(f"{label:<18}" + "".join(f"{text:>17}" for text in row))

    figures = {
        "date": started.isoformat(timespec="seconds"),
        "machine": machine(device),
        "transformers": transformers.__version__,
        "shape_name": args.shape,
        "shape": vars(shape),
        "layout": args.layout,
        "prompt_tokens": layout.length,
        "new_tokens": args.new_tokens,
        "dtype": args.dtype,
        "attn": args.attn,
        "device": device,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "fastav_config": configs["fastav"].resolve(shape.num_layers).describe(),
        "median": median,
        "ratios_vs_stock": ratios,
        "same_tokens_as_stock": same_tokens,
        "runs": {
            name: [{k: v for k, v in asdict(a).items() if k != "tokens"} for a in answers]
            for name, answers in runs.items()
        },
    }
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)
        print(f"\nfigures written to {args.json}")


if __name__ == "__main__":
    main()
