"""Prefill time, FLOPs and KV-cache size, unpruned vs FastAV, measured side by side in one run.

    python benchmarks/prefill.py                              # CPU: 12-layer d-512 Qwen2, VideoLLaMA2 layout
    python benchmarks/prefill.py --shape qwen2-7b --device cuda --dtype bfloat16   # GPU: the real LLM shape

The model has random weights (pruning cost does not depend on them) and VideoLLaMA2-AV's 8-frame layout:
14 prefix + 676 video + 1,496 audio + 30 text tokens. FastAV runs with the global stage at half depth keeping
the first 10 audio tokens, and the fine stage at P = 0.2. Runs alternate unpruned / pruned / pruned-with-random-
fine-drops so that machine noise hits all three alike; the median of each is reported.

Printed figures:
- wall-time ratio (pruned / unpruned) next to the FLOPs ratio of both conventions;
- scoring overhead: the time of the last-query score computations of one prefill (timed on the shapes the
  engine scored) as a share of the pruned prefill; cross-checked against a fine stage with ``random`` drops,
  which keeps exactly the same token counts but needs no scores;
- KV-cache bytes after prefill, and peak accelerator memory on GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from fastav_eval.pruning import (
    DecoderShape,
    ModalityLayout,
    PruningConfig,
    PruningProfile,
    install,
    last_query_scores,
)
from fastav_eval.pruning.compat import output_cache
from fastav_eval.pruning.presets import QWEN2_7B, get_preset

SHAPES = {
    "cpu-small": DecoderShape(
        num_layers=12, hidden_size=512, intermediate_size=2752, num_heads=8, num_kv_heads=2, head_dim=64
    ),
    "qwen2-7b": QWEN2_7B,
}


def build_model(shape: DecoderShape, dtype: torch.dtype, device: str, attn: str) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=1024,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=32768,
        attn_implementation=attn,
    )
    torch.manual_seed(0)
    with torch.device(device):  # built where it runs, in its dtype: a 7B model never exists in fp32
        model = Qwen2ForCausalLM._from_config(config, dtype=dtype)
    return model.eval()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> tuple[float, object]:
    """``(seconds, result)`` of ``fn()``, synchronising the accelerator around it."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def machine(device: str) -> str:
    """The processor (or GPU) the figures came from."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        cpuinfo = Path("/proc/cpuinfo")
        for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}; torch {torch.__version__}, {torch.get_num_threads()} CPU threads"


def kv_bytes(cache) -> int:
    return sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in cache.layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="cpu-small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (this machine has 2 cores)")
    parser.add_argument("--fine-ratio", type=float, default=0.2)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    shape, dtype, device = SHAPES[args.shape], getattr(torch, args.dtype), args.device
    segments = list(get_preset("videollama2").segments)
    layout = ModalityLayout.from_segments([segments])
    model = build_model(shape, dtype, device, args.attn)
    embeds = torch.randn(1, layout.length, shape.hidden_size, generator=torch.Generator().manual_seed(1))
    embeds = (embeds * 0.02).to(device=device, dtype=dtype)
    profile = PruningProfile.prefix(audio=10)
    configs = {
        "unpruned": PruningConfig.off(),
        "fastav": PruningConfig(profile=profile, fine_ratio=args.fine_ratio),
        "fastav_random_fine": PruningConfig(profile=profile, fine_ratio=args.fine_ratio, fine_rule="random"),
    }

    times: dict[str, list[float]] = {name: [] for name in configs}
    stats, caches, peaks = {}, {}, {}
    with torch.no_grad():
        for repeat in range(args.repeats + 2):  # two warm-up rounds
            for name, config in configs.items():
                engine = install(model, config)
                if device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                with engine.layout(layout):
                    elapsed, output = timed(
                        lambda: model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1), device
                    )
                if repeat >= 2:
                    times[name].append(elapsed)
                stats[name] = engine.last_stats
                caches[name] = kv_bytes(output_cache(output))
                if device.startswith("cuda"):
                    peaks[name] = torch.cuda.max_memory_allocated()
                engine.uninstall()
                del output

        # Scoring cost: last_query_scores on the shapes the engine scored (layers global_layer .. L-2).
        fastav = stats["fastav"]
        head_dim = shape.head_dim
        scored_lengths = [int(n) for n in fastav.tokens_per_layer[0, shape.num_layers // 2 : shape.num_layers - 1]]
        score_times = []
        for _ in range(args.repeats):
            total = 0.0
            for n in scored_lengths:
                query = torch.randn(1, shape.num_heads, n, head_dim, device=device, dtype=dtype)
                key = torch.randn(1, shape.num_kv_heads, n, head_dim, device=device, dtype=dtype)
                total += timed(lambda q=query, k=key: last_query_scores(q, k, None, head_dim**-0.5), device)[0]
            score_times.append(total)

    median = {name: statistics.median(values) for name, values in times.items()}
    tokens = {name: stats[name].tokens_per_layer for name in configs}
    flops_ratio = {
        convention: float(fastav.relative_flops(shape, convention)[0]) / 100 for convention in ("fastv", "exact")
    }
    wall_ratio = median["fastav"] / median["unpruned"]
    figures = {
        "date": date.today().isoformat(),
        "machine": machine(device),
        "shape": vars(shape),
        "dtype": args.dtype,
        "attn": args.attn,
        "prompt_tokens": layout.length,
        "tokens_per_layer_fastav": tokens["fastav"][0].tolist(),
        "prefill_s": {name: round(value, 4) for name, value in median.items()},
        "wall_ratio": round(wall_ratio, 3),
        "flops_ratio_fastv": round(flops_ratio["fastv"], 3),
        "flops_ratio_exact": round(flops_ratio["exact"], 3),
        "wall_minus_flops_exact": round(wall_ratio - flops_ratio["exact"], 3),
        "scoring_s": round(statistics.median(score_times), 5),
        "scoring_share_of_pruned_prefill": round(statistics.median(score_times) / median["fastav"], 4),
        "low_attentive_vs_random_fine_s": round(median["fastav"] - median["fastav_random_fine"], 4),
        "kv_cache_bytes": caches,
        "kv_cache_ratio": round(caches["fastav"] / caches["unpruned"], 3),
        "mean_layer_tokens_ratio": round(
            float(tokens["fastav"].double().mean() / tokens["unpruned"].double().mean()), 3
        ),
    }
    if peaks:
        figures["peak_memory_bytes"] = peaks
        figures["peak_memory_ratio"] = round(peaks["fastav"] / peaks["unpruned"], 3)

    print(
        f"prefill of {layout.length} tokens, {shape.num_layers} layers, d {shape.hidden_size}, {args.dtype}, "
        f"{args.attn}, {device}; median of {args.repeats} alternating runs"
    )
    for name in configs:
        print(f"  {name:<20} {median[name] * 1000:9.1f} ms")
    print(f"  wall-time ratio      {wall_ratio:.3f}")
    print(f"  FLOPs ratio          {flops_ratio['fastv']:.3f} (fastv)  {flops_ratio['exact']:.3f} (exact)")
    print(
        f"  scoring overhead     {figures['scoring_s'] * 1000:.2f} ms = "
        f"{100 * figures['scoring_share_of_pruned_prefill']:.2f}% of the pruned prefill "
        f"(low_attentive - random fine: {figures['low_attentive_vs_random_fine_s'] * 1000:+.1f} ms)"
    )
    print(
        f"  KV cache             {caches['unpruned'] / 2**20:.1f} MiB -> {caches['fastav'] / 2**20:.1f} MiB "
        f"(ratio {figures['kv_cache_ratio']:.3f}; mean tokens per layer ratio "
        f"{figures['mean_layer_tokens_ratio']:.3f})"
    )
    if peaks:
        print(f"  peak memory          {peaks['unpruned'] / 2**30:.2f} GiB -> {peaks['fastav'] / 2**30:.2f} GiB")
    print(json.dumps(figures))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
