"""The one evaluation loop: a model adapter with the engine installed answers batches and measures each sample.

The lmms-eval wrappers, the testbed's own harness (modality ablations that lmms-eval requests cannot express) and
the RL environments all answer through :class:`PrunedRunner`, so an answer and its
:class:`~fastav_eval.records.SampleRecord` mean the same wherever they come from.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fastav_eval.models.base import ModelAdapter
from fastav_eval.pruning import FastAVDecoder, PruningConfig, SampleInfo, find_text_model, install
from fastav_eval.records import SampleRecord


def with_token_ids(
    samples: Sequence[SampleInfo] | None, generate_kwargs: dict[str, Any]
) -> tuple[SampleInfo, ...] | None:
    """``samples`` with each row's prompt token ids (padding left out) where ``generate`` is fed ``input_ids``."""
    if samples is None:
        return None
    input_ids, mask = generate_kwargs.get("input_ids"), generate_kwargs.get("attention_mask")
    if input_ids is None:
        return tuple(samples)
    rows = list(input_ids) if mask is None else [ids[m.bool()] for ids, m in zip(input_ids, mask, strict=True)]
    return tuple(
        dataclasses.replace(info, token_ids=tuple(int(t) for t in row)) for info, row in zip(samples, rows, strict=True)
    )


class PrefillTimer:
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

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@dataclass(frozen=True)
class Answered:
    """One answered sample: the text, its record, and the time its whole batch took (load to answers) and size."""

    text: str
    record: SampleRecord
    batch_seconds: float
    batch_size: int


class PrunedRunner:
    """``adapter`` with the engine installed under ``config``; ``prune`` names the setting in the records.

    Attributes:
        engine: the installed :class:`~fastav_eval.pruning.FastAVDecoder` (its ``config`` is the resolved one).
    """

    def __init__(self, adapter: ModelAdapter, config: PruningConfig, prune: str) -> None:
        self.adapter, self.prune = adapter, prune
        self.engine: FastAVDecoder = install(adapter.decoder, config)
        self._timer = PrefillTimer(find_text_model(adapter.decoder), adapter.device)

    def answer(
        self,
        loaded: list[Any],
        max_new_tokens: int,
        until: list[str],
        samples: Sequence[SampleInfo] | None = None,
    ) -> list[Answered]:
        """Prefill and decode one batch of loaded requests (``adapter.load_request`` outputs).

        ``samples`` (one per request: its id and question) reach a chooser's context; the prompt's token ids are
        added where the model is fed ids. A chooser's per-sample decision goes into each record.
        """
        device = self.adapter.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        inputs = self.adapter.prepare(loaded)
        self._timer.durations.clear()
        with self.engine.layout(inputs.layout, with_token_ids(samples, inputs.generate_kwargs)):
            answers = self.adapter.generate(inputs, max_new_tokens, until)
        elapsed = time.perf_counter() - started
        stats = self.engine.last_stats
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        batch = len(loaded)
        prefill_ms = 1000 * self._timer.durations[0] / batch
        chooser = self.engine.config.chooser is not None
        return [
            Answered(
                answer.text,
                SampleRecord.measured(
                    self.prune,
                    stats.sample(i, self.engine.shape),
                    answer.num_tokens,
                    prefill_ms,
                    peak_mb,
                    decision=stats.decisions[i] if chooser else None,
                ),
                elapsed,
                batch,
            )
            for i, answer in enumerate(answers)
        ]

    def score_references(
        self, loaded: list[Any], references: list[str], samples: Sequence[SampleInfo] | None = None
    ) -> list[tuple[float, SampleRecord]]:
        """Per request: the mean log-probability per token of its reference answer over the (pruned) prompt
        (:meth:`~fastav_eval.models.base.ModelAdapter.reference_logprob`) and the prefill's record."""
        inputs = self.adapter.prepare(loaded)
        self._timer.durations.clear()
        with self.engine.layout(inputs.layout, with_token_ids(samples, inputs.generate_kwargs)):
            logprob = self.adapter.reference_logprob(inputs, references)
        stats = self.engine.last_stats
        prefill_ms = 1000 * self._timer.durations[0] / len(loaded)
        chooser = self.engine.config.chooser is not None
        return [
            (
                float(logprob[i]),
                SampleRecord.measured(
                    self.prune, stats.sample(i, self.engine.shape), 0, prefill_ms, None,
                    decision=stats.decisions[i] if chooser else None,
                ),
            )
            for i in range(len(loaded))
        ]  # fmt: skip

    def close(self) -> None:
        """Uninstall the engine and the timer: the adapter's decoder is the stock model again."""
        self._timer.remove()
        self.engine.uninstall()
