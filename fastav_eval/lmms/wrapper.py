"""The lmms-eval model class shared by every FastAV wrapper.

Request -> adapter (media -> decoder inputs + layout) -> engine installed on the adapter's decoder -> generate ->
answer + per-sample stats. Per sample, the samples file gets relative FLOPs (FastV convention and exact), kept
tokens per modality per layer and prefill time; lmms-eval's throughput summary in the results JSON gets their means
(``avg_relative_flops``, ``avg_prefill_ms``, ...). The unpruned baseline (``prune=none``) runs through the same
engine with pruning off, which computes what the stock decoder computes and reports 100% FLOPs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import lmms_eval
import torch
from lmms_eval import utils as lmms_utils
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils import gen_metrics
from loguru import logger as log  # lmms-eval's own log, shown at INFO
from tqdm import tqdm

from fastav_eval.lmms.model_args import ENGINE_ARGS, WRAPPER_ARGS, check_known, pruning_config
from fastav_eval.pruning import find_text_model, install
from fastav_eval.pruning.scoring import check_attention_kernel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GREEDY_KWARGS = ("max_new_tokens", "temperature", "do_sample", "until", "top_p", "num_beams")
CLI_DEFAULTS = {"batch_size": 1}
"""Values lmms-eval passes for options the user did not give (``--batch_size`` defaults to 1)."""

# Per-sample figures go to lmms-eval's throughput summary without its one INFO line per sample (``log_metrics``
# logs each call); the wrapper logs one summary per run instead. A private function, so check it is there.
_record_metrics = getattr(gen_metrics, "_record_metrics", None)
if _record_metrics is None:
    raise ImportError(
        f"lmms-eval {getattr(lmms_eval, '__version__', '?')} has no gen_metrics._record_metrics, which the FastAV "
        "wrappers use to fill the results' throughput summary; FastAV-Eval is tested with lmms-eval==0.7.3"
    )


@dataclass
class FastAVTokenCounts(TokenCounts):
    """lmms-eval's token counts plus FastAV's per-sample figures (written to the samples file)."""

    fastav: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), **self.fastav}


class _PrefillTimer:
    """Times the first decoder forward of each ``generate`` call (the prefill) with forward hooks."""

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.device, self.durations = device, []
        self._started = 0.0
        self._handles = [
            module.register_forward_pre_hook(lambda *_: self._start()),
            module.register_forward_hook(lambda *_: self._stop()),
        ]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _start(self) -> None:
        self._sync()
        self._started = time.perf_counter()

    def _stop(self) -> None:
        self._sync()
        self.durations.append(time.perf_counter() - self._started)


class FastAVLMM(lmms):
    """Subclasses set ``adapter_class`` (a model adapter from :mod:`fastav_eval.models`)."""

    adapter_class: ClassVar[type]

    def __init__(
        self,
        pretrained: str | None = None,
        prune: str = "fastav",
        attn_implementation: str = "sdpa",
        dtype: str = "float32",
        device: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | str | None = None,
        **engine_args: Any,
    ) -> None:
        super().__init__()
        check_known(engine_args, (*ENGINE_ARGS, *WRAPPER_ARGS))
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}; accepted: {list(DTYPES)}")
        check_attention_kernel(attn_implementation, self.adapter_class.attn_implementations)
        try:
            self.batch_size_per_gpu = int(batch_size)
        except ValueError:
            raise ValueError(f"batch_size={batch_size!r}; accepted: an int >= 1") from None
        if self.batch_size_per_gpu < 1:
            raise ValueError(f"batch_size={batch_size!r}; accepted: an int >= 1")
        if max_batch_size is not None:
            raise ValueError(f"max_batch_size={max_batch_size!r} is not supported; set batch_size")
        config = pruning_config(prune, engine_args, self.adapter_class.default_profile(pretrained))  # before loading
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.adapter = self.adapter_class(pretrained, str(self._device), DTYPES[dtype], attn_implementation)
        self.engine = install(self.adapter.decoder, config)
        self.prune = prune
        self._timer = _PrefillTimer(find_text_model(self.adapter.decoder), self._device)
        log.info(f"{type(self).__name__} on {self._device}: {self.engine.config.describe()}")

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> FastAVLMM:
        """lmms-eval's constructor path: ``--model_args`` plus the CLI's own ``--batch_size`` / ``--device``.

        A key given both ways must agree (lmms-eval would pass it twice); a CLI value that is only lmms-eval's
        default (``--batch_size`` 1) yields to ``--model_args``.
        """
        args = lmms_utils.simple_parse_args_string(arg_string)
        for key, value in (additional_config or {}).items():
            if value is None or (key in args and value == CLI_DEFAULTS.get(key)):
                continue
            if key in args and str(args[key]) != str(value):
                raise ValueError(
                    f"{key} is given twice, --model_args {key}={args[key]} and --{key} {value}; give one of them"
                )
            args[key] = value
        return cls(**args)

    @property
    def device(self) -> torch.device:
        return self._device

    def _gen_settings(self, gen_kwargs: dict[str, Any]) -> tuple[int, list[str]]:
        check_known(gen_kwargs, GREEDY_KWARGS)
        if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature") or 0) > 0:
            raise ValueError(
                f"generation_kwargs {gen_kwargs}: FastAV wrappers decode greedily (do_sample=false, temperature=0)"
            )
        if int(gen_kwargs.get("num_beams", 1)) != 1:
            raise ValueError(f"generation_kwargs num_beams={gen_kwargs['num_beams']!r}; accepted: 1")
        until = gen_kwargs.get("until") or []
        return int(gen_kwargs.get("max_new_tokens", 32)), [until] if isinstance(until, str) else list(until)

    def _run_batch(self, requests: list[Instance]) -> list[GenerationResult]:
        contexts, visuals = [], []
        for request in requests:
            context, _gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            contexts.append(context)
            visuals.append(doc_to_visual(self.task_dict[task][split][doc_id]))
        max_new_tokens, until = self._gen_settings(requests[0].args[1])
        if self._device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self._device)
        started = time.perf_counter()
        prepared = self.adapter.prepare(visuals, contexts)
        self._timer.durations.clear()
        with self.engine.layout(prepared.layout):
            answers = self.adapter.generate(prepared, max_new_tokens)
        elapsed = time.perf_counter() - started
        stats = self.engine.last_stats
        peak_mb = torch.cuda.max_memory_allocated(self._device) / 2**20 if self._device.type == "cuda" else None
        results = []
        for index, answer in enumerate(answers):
            for stop in until:
                answer = answer.split(stop)[0]
            summary = stats.sample(index, self.engine.shape)
            kept = summary["kept_per_layer"]
            figures = {
                "relative_flops": summary["relative_flops_fastv"],
                "relative_flops_exact": summary["relative_flops_exact"],
                "prefill_ms": 1000 * self._timer.durations[0] / len(requests),
                "video_tokens": kept.get("video", [0])[0],
                "audio_tokens": kept.get("audio", [0])[0],
                "video_kept_mean": sum(kept.get("video", [0])) / stats.num_layers,
                "audio_kept_mean": sum(kept.get("audio", [0])) / stats.num_layers,
            }
            if peak_mb is not None:
                figures["peak_memory_mb"] = peak_mb
            output_tokens = len(answer.split())
            _record_metrics(
                total_elapsed_time=elapsed / len(requests),
                total_gen_tokens=output_tokens,
                avg_speed=output_tokens * len(requests) / elapsed,
                additional_metrics={**figures, "num_requests": 1},
            )
            counts = FastAVTokenCounts(
                input_tokens=summary["prompt_tokens"],
                output_tokens=output_tokens,
                fastav={**figures, "prune": self.prune, "kept_per_layer": kept},
            )
            results.append(GenerationResult(text=answer.strip(), token_counts=counts))
        return results

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        results: list[GenerationResult] = []
        batch = self.batch_size_per_gpu
        for start in tqdm(range(0, len(requests), batch), desc=f"{type(self).__name__} ({self.prune})", unit="batch"):
            chunk = requests[start : start + batch]
            same_kwargs = [r for r in chunk if r.args[1] == chunk[0].args[1]]
            if len(same_kwargs) != len(chunk):  # generation settings differ within the chunk: run one at a time
                for request in chunk:
                    results += self._run_batch([request])
            else:
                results += self._run_batch(chunk)
        self._log_summary(results)
        return results

    def _log_summary(self, results: list[GenerationResult]) -> None:
        """One line per run: the means of the per-sample figures in the samples file."""
        if not results:
            return
        figures = [result.token_counts.fastav for result in results]  # type: ignore[union-attr]

        def mean(key: str) -> float:
            return sum(float(f[key]) for f in figures) / len(figures)

        log.info(
            f"{type(self).__name__} (prune={self.prune}): {len(results)} requests, batch size "
            f"{self.batch_size_per_gpu}; means per sample: relative FLOPs {mean('relative_flops'):.2f}%, prefill "
            f"{mean('prefill_ms'):.2f} ms, video tokens kept per layer {mean('video_kept_mean'):.1f}, audio "
            f"{mean('audio_kept_mean'):.1f} (per-sample figures: the samples file)"
        )

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(f"{type(self).__name__} answers generate_until tasks only (no loglikelihood)")

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} answers single-turn generate_until tasks only")
