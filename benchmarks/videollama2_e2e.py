"""VideoLLaMA2.1-7B-AV end to end, unpruned vs FastAV's paper setting: latency, time to first token, peak memory.

    python benchmarks/videollama2_e2e.py --device cuda --dtype bfloat16          # the real shapes (GPU, ~17 GB)
    python benchmarks/videollama2_e2e.py --shape tiny --repeats 1 --new-tokens 4  # smoke test (CPU)

The model is :class:`fastav_eval.models.videollama2_model.VideoLLaMA2AV` at VideoLLaMA2.1-7B-AV's shapes (Qwen2-7B,
SigLIP-so400m at 384 px, the STC v35 connector, BEATs_iter3+, mlp2x_gelu) with random weights (no checkpoint is
read), on one 16-frame, 30-s clip: random pixels ``[16, 3, 384, 384]`` and the fbank of 30 s of noise. One answer
is: both encoders and the connectors, the splice into the prompt, then ``generate`` of exactly ``--new-tokens``
greedy tokens. Settings: ``unpruned`` (the engine installed with ``PruningConfig.off()``) and ``fastav`` (global
stage at layer 14 of 28 keeping every video token and the first 10 audio tokens, fine stage P = 0.2), alternated
in each repetition; medians are reported. Time to first token = start of the encoders to the first logits
(synchronised); peak memory = ``torch.cuda.max_memory_allocated`` during the answer, weights included.
The paper (FastAV, Table 1): latency 0.43 -> 0.32 s, memory 22 -> 19 GB (its GPU and answer length are not given).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime

import torch
import transformers
from latency import StepClock  # benchmarks/ is on sys.path when this file runs as a script
from prefill import machine, synchronize
from transformers import (
    LogitsProcessorList,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from fastav_eval.models.beats import BEATsConfig
from fastav_eval.models.fbank import beats_fbank
from fastav_eval.models.model_args import pruning_config
from fastav_eval.models.videollama2 import PLACEHOLDER, VideoLLaMA2Adapter, prompt_segments
from fastav_eval.models.videollama2_model import VideoLLaMA2AV, VideoLLaMA2Spec
from fastav_eval.pruning import ModalityLayout, PruningConfig, install, uninstall

SHAPES = {
    "real": {
        "llm": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                    num_key_value_heads=4, vocab_size=152064, rope_theta=1e6, max_position_embeddings=32768),
        "vision": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                       image_size=384, patch_size=14),
        "beats": {},
        "frames": 16,
    },
    "tiny": {
        "llm": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=1024, max_position_embeddings=4096),
        "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                       image_size=98, patch_size=14),
        "beats": dict(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
                      embed_dim=48),
        "frames": 4,
    },
}  # fmt: skip
PREFIX, SUFFIX = 14, 30  # Qwen2's chat prefix up to <video>, and a question with the assistant prompt


def build(shape: str, device: str, dtype: torch.dtype, attn: str) -> VideoLLaMA2AV:
    sizes = SHAPES[shape]
    llm_config = Qwen2Config(**sizes["llm"], attn_implementation=attn, tie_word_embeddings=False)
    vision_config = SiglipVisionConfig(**sizes["vision"], attn_implementation=attn)
    beats = BEATsConfig(**sizes["beats"])
    spec = VideoLLaMA2Spec(
        num_frames=sizes["frames"],
        vision_tower="random",
        vision_select_layer=-2,
        vision_width=vision_config.hidden_size,
        audio_width=beats.encoder_embed_dim,
        audio_projector_depth=2,
        llm_width=llm_config.hidden_size,
    )
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # initialised in place: no fp32 copy of 8 B parameters on the host
            model = VideoLLaMA2AV(spec, Qwen2ForCausalLM(llm_config), SiglipVisionModel(vision_config), beats)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


@torch.no_grad()
def answer(model: VideoLLaMA2AV, pixels: torch.Tensor, fbank: torch.Tensor, ids: torch.Tensor, engine,
           new_tokens: int, device: str) -> dict:  # fmt: skip
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    clock = StepClock(device)
    synchronize(device)
    start = time.perf_counter()
    media = torch.cat([model.encode_video(pixels)[0], model.encode_audio(fbank)[0]])
    embeds = model.embed(ids, PLACEHOLDER, media)[None]
    video = model.video_tokens_per_clip()
    layout = ModalityLayout.from_segments([prompt_segments(ids, video, media.shape[0] - video)], device=device)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=device)
    with engine.layout(layout):
        output = model.llm.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            logits_processor=LogitsProcessorList([clock]),
            pad_token_id=0,
        )
    synchronize(device)
    end = time.perf_counter()
    stats = engine.last_stats.sample(0, engine.shape)
    return {
        "end_to_end_s": end - start,
        "ttft_s": clock.stamps[0] - start,  # the first logits end the prefill
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None,
        "new_tokens": output.shape[1],
        "prompt_tokens": embeds.shape[1],
        "relative_flops": stats.relative_flops,
        "kept_last_layer": {name: counts[-1] for name, counts in stats.kept_per_layer.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="real")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    parser.add_argument("--attn", choices=("sdpa", "eager", "flash_attention_2"), default="sdpa")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model = build(args.shape, args.device, dtype, args.attn)
    side = model.vision_tower.config.image_size
    pixels = torch.randn(1, model.spec.num_frames, 3, side, side, device=args.device, dtype=dtype)
    fbank = beats_fbank(torch.randn(30 * 16000) * 0.1)[0:1].to(args.device, dtype)
    vocab = model.llm.config.vocab_size
    ids = torch.randint(0, vocab, (PREFIX + 1 + SUFFIX,), device=args.device)
    ids[PREFIX] = PLACEHOLDER
    configs = {
        "unpruned": PruningConfig.off(),
        "fastav": pruning_config("fastav", {}, VideoLLaMA2Adapter.default_profile(None)),  # the adapter's default
    }
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    for repeat in range(args.warmup + args.repeats):
        for name in configs if repeat % 2 == 0 else reversed(configs):
            engine = install(model.llm, configs[name])
            try:
                result = answer(model, pixels, fbank, ids, engine, args.new_tokens, args.device)
            finally:
                uninstall(model.llm)
            if repeat >= args.warmup:
                runs[name].append(result)
    summary = {}
    for name, results in runs.items():
        summary[name] = {key: statistics.median(r[key] for r in results) if results[0][key] is not None else None
                         for key in ("end_to_end_s", "ttft_s", "peak_memory_gb")}  # fmt: skip
        summary[name].update({k: results[0][k] for k in ("prompt_tokens", "new_tokens", "relative_flops",
                                                          "kept_last_layer")})  # fmt: skip
    report = {
        "benchmark": "videollama2_e2e",
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": machine(args.device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "args": vars(args),
        "settings": summary,
        "ratios": {
            key: summary["fastav"][key] / summary["unpruned"][key]
            for key in ("end_to_end_s", "ttft_s", "peak_memory_gb")
            if summary["unpruned"][key]
        },
        "paper": {"latency_s": [0.43, 0.32], "memory_gb": [22, 19], "relative_flops": [100, 56]},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
