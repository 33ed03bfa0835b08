"""The lmms-eval model class shared by every FastAV wrapper.

Request -> adapter (media -> decoder inputs + layout) -> engine installed on the adapter's decoder -> generate ->
answer + per-sample stats. Per sample, the samples file gets a :class:`~fastav_eval.records.SampleRecord` (relative
FLOPs in both conventions, kept tokens per modality per layer, prefill time, peak memory); lmms-eval's throughput
summary in the results JSON gets their means, pooled (``avg_relative_flops``, ...) and per task
(``avg_<task>/relative_flops``, ...); ``<date>_fastav.json`` beside the results JSON gets the run's
:class:`~fastav_eval.records.RunRecord` (resolved config and its hash, profile and weights with their sha256,
versions, device). The unpruned baseline (``prune=none``) runs through the same engine with pruning off, which
computes what the stock decoder computes and reports 100% FLOPs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import lmms_eval
import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils import gen_metrics
from loguru import logger as log  # lmms-eval's own log, shown at INFO
from tqdm import tqdm

from fastav_eval.evaluation import PrunedRunner
from fastav_eval.lmms.run_record import find_evaluation
from fastav_eval.models.base import ModelAdapter, Request, SampleError
from fastav_eval.models.model_args import (
    KEEP_ARGS,
    arg_kinds,
    convert,
    greedy_settings,
    join_model_args,
    parse_model_args,
    wrapper_settings,
)
from fastav_eval.models.registry import build_adapter
from fastav_eval.provenance import device_info, profile_identity, versions, weights_identity
from fastav_eval.pruning import SampleInfo, find_text_model
from fastav_eval.records import RunRecord, SampleRecord, canonical_hash, means

CLI_DEFAULTS = {"batch_size": 1}
"""Values lmms-eval passes for options the user did not give (``--batch_size`` defaults to 1)."""
CLI_KEYS = ("batch_size", "device")
"""lmms-eval's own options a wrapper takes (``additional_config``); its ``--max_batch_size`` only serves
``--batch_size auto``, which the wrappers do not take."""

# Per-sample figures go to lmms-eval's throughput summary without its one INFO line per sample (``log_metrics``
# logs each call); the wrapper logs one summary per run instead. A private function, so check it is there.
_record_metrics = getattr(gen_metrics, "_record_metrics", None)
if _record_metrics is None or not isinstance(getattr(gen_metrics, "_THROUGHPUT_METRICS_HISTORY", None), list):
    raise ImportError(
        f"lmms-eval {getattr(lmms_eval, '__version__', '?')} has no gen_metrics._record_metrics and "
        "_THROUGHPUT_METRICS_HISTORY list, which the FastAV wrappers use to fill (and merge across ranks) the "
        "results' throughput summary; FastAV-Eval is tested with lmms-eval==0.7.3"
    )


@dataclass
class FastAVTokenCounts(TokenCounts):
    """lmms-eval's token counts, written to the samples file as the sample's :class:`SampleRecord`."""

    record: SampleRecord | None = None
    batch_timing: tuple[float, int] = field(default=(0.0, 1), repr=False)
    """Seconds its batch took (load to answers) and the batch's size; not written per sample."""

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), **(self.record.to_dict() if self.record is not None else {})}


PER_TASK_FIGURES = (
    "relative_flops", "retention", "prefill_ms", "peak_memory_mb", "video_kept_mean", "audio_kept_mean"
)  # fmt: skip
"""The figures the results JSON's ``throughput`` also averages per task (the run record has all of them)."""


def throughput_entry(record: SampleRecord, task: str, elapsed: float, batch: int) -> dict[str, Any]:
    """One sample's ``_record_metrics`` keywords: its figures pooled, and the main ones under ``<task>/``."""
    figures = record.figures()
    extra = {**figures, **{f"{task}/{name}": figures[name] for name in PER_TASK_FIGURES if name in figures}}
    extra.update({"failed": int(not record.ok), "num_requests": 1, f"{task}/failed": int(not record.ok)})
    speed = record.output_tokens * batch / elapsed if elapsed > 0 else 0.0
    return {"total_elapsed_time": elapsed / batch, "total_gen_tokens": record.output_tokens, "avg_speed": speed,
            "additional_metrics": extra}  # fmt: skip


@dataclass
class KeepCheck:
    """The keeps a user gave as a count (``video_keep=N``, ``audio_keep_chunks=N``), checked against each answered
    sample: a keep that covers every token of its modality there cuts nothing, which is said once per key and run.

    Attributes:
        keeps: key -> (modality, value), for the int keeps given.
        global_layer: the resolved global layer (where a keep takes effect).
        warned: the keys already reported.
    """

    keeps: dict[str, tuple[str, int]]
    global_layer: int | None
    warned: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, given: dict[str, Any], global_layer: int | None) -> KeepCheck:
        keeps = {key: (key.split("_")[0], value) for key, value in given.items()
                 if key in KEEP_ARGS and isinstance(value, int)}  # fmt: skip
        return cls(keeps, global_layer)

    def check(self, sample: str, record: SampleRecord) -> list[str]:
        """What to warn about for ``sample`` (its task and document): keeps that keep all of its modality."""
        warnings = []
        for key, (modality, value) in self.keeps.items():
            kept = record.kept_per_layer.get(modality) or []
            if key in self.warned or self.global_layer is None or len(kept) <= self.global_layer or not kept[0]:
                continue
            chunks = key.endswith("_chunks")
            if (kept[self.global_layer] < kept[0]) if chunks else (value < kept[0]):
                continue
            self.warned.add(key)
            has = f"fewer than {value} chunks" if chunks else f"{kept[0]} {modality} tokens, not more than {value}"
            warnings.append(
                f"{key}={value} keeps every {modality} token of {sample} (it has {has}): the global stage cuts no "
                f"{modality} there; a smaller {key} prunes (said once per run; samples with fewer {modality} "
                "tokens than a keep lose none of them)"
            )
        return warnings


def rank_device(device: str | None) -> torch.device:
    """The device of this process: ``cuda`` means ``cuda:<LOCAL_RANK>`` when several processes share a machine."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes > 1 and device == "cuda":
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % max(1, torch.cuda.device_count())}")
    if processes > 1 and device.startswith("cuda:"):
        raise ValueError(
            f"device={device} with {processes} processes would put every rank on that one GPU; give device=cuda "
            "(or no device): each rank then takes cuda:<LOCAL_RANK>"
        )
    return torch.device(device)


class FastAVLMM(lmms):
    """The lmms-eval model of one registered model: :mod:`fastav_eval.lmms.models` makes one subclass per name of
    :data:`fastav_eval.models.registry.MODELS`, setting ``model_name`` (the lmms-eval name) and ``adapter_class``
    (its :class:`~fastav_eval.models.ModelAdapter`)."""

    model_name: ClassVar[str]
    adapter_class: ClassVar[type[ModelAdapter]]

    def __init__(self, **model_args: Any) -> None:
        """``model_args``: the ``--model_args`` keys (text or Python values), read by
        :func:`~fastav_eval.models.model_args.wrapper_settings` (types, conflicts, vocabularies) before loading."""
        super().__init__()
        adapter_class = self.adapter_class
        settings = wrapper_settings(adapter_class, model_args)
        self.batch_size_per_gpu = settings.batch_size
        self._profile_file = settings.profile_file
        self._settings = {"dtype": settings.dtype, "attn_implementation": settings.attn_implementation}
        self.model_args = join_model_args(settings.given)
        self._records: list[tuple[str, SampleRecord]] = []  # (task, record) of every counted request of this rank
        self._device = rank_device(settings.device)
        load = {"pretrained": settings.pretrained, "device": str(self._device), "dtype": settings.dtype,
                "attn_implementation": settings.attn_implementation}  # fmt: skip
        self.adapter = build_adapter(adapter_class, {**load, **settings.adapter_args})
        self.runner = PrunedRunner(self.adapter, settings.config, settings.prune)  # the one evaluation loop
        self.engine = self.runner.engine
        self.prune, self.on_error = settings.prune, settings.on_error
        self._keep_check = KeepCheck.of(settings.given, self.engine.config.global_layer)
        log.info(
            f"{type(self).__name__} ({adapter_class.name}, {settings.pretrained or 'shipped weights'}) on "
            f"{self._device}, {settings.attn_implementation}, {settings.dtype}: {self.engine.config.describe()}"
        )

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> FastAVLMM:
        """lmms-eval's constructor path: ``--model_args`` plus the CLI's own ``--batch_size`` / ``--device``.

        ``--model_args`` is read by :func:`~fastav_eval.models.model_args.parse_model_args` (declared types, a key
        given twice refused). A key given both ways must agree; a CLI value that is only lmms-eval's default
        (``--batch_size`` 1) yields to ``--model_args``. lmms-eval's ``--max_batch_size`` (a cap for
        ``--batch_size auto``) is refused: the wrappers take a fixed batch size.
        """
        kinds = arg_kinds(cls.adapter_class)
        args = parse_model_args(arg_string, kinds)
        for key, value in (additional_config or {}).items():
            if value is None or (key in args and value == CLI_DEFAULTS.get(key)):
                continue
            if key not in CLI_KEYS:
                raise ValueError(
                    f"--{key} {value}: not supported by the FastAV wrappers; accepted: {list(CLI_KEYS)} "
                    "(a fixed batch size: --batch_size N or batch_size=N in --model_args)"
                )
            typed = convert(key, value, kinds[key])
            if key in args and args[key] != typed:
                raise ValueError(
                    f"{key} is given twice, --model_args {key}={args[key]} and --{key} {value}; give one of them"
                )
            args[key] = typed
        model = cls(**args)
        model.model_args = arg_string
        return model

    @property
    def device(self) -> torch.device:
        return self._device

    def _load(self, requests: list[Instance]) -> list[Any]:
        """Each request's media, decoded and checked by the adapter: an object, or the :class:`SampleError`."""
        loaded: list[Any] = []
        for index, request in enumerate(requests):
            context, _gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            try:
                visuals = doc_to_visual(self.task_dict[task][split][doc_id])
                loaded.append(self.adapter.load_request(Request(list(visuals or []), context), index))
            except SampleError as error:
                failure = SampleError(index, f"{task} doc {doc_id}: {error.reason}")
                if self.on_error == "raise":
                    raise ValueError(
                        f"{failure.reason} (on_error=record would record this sample as failed and go on)"
                    ) from None
                loaded.append(failure)
        return loaded

    def _run_batch(self, requests: list[Instance]) -> list[GenerationResult]:
        max_new_tokens, until = greedy_settings(requests[0].args[1])
        loaded = self._load(requests)
        answered: dict[int, GenerationResult] = {}
        groups: dict[Any, list[int]] = {}  # what the adapter can batch together, in request order
        for index, item in enumerate(loaded):
            if not isinstance(item, SampleError):
                groups.setdefault(self.adapter.batch_key(item), []).append(index)
        for indices in groups.values():
            samples = [SampleInfo(f"{requests[i].args[4]}/{requests[i].args[3]}", requests[i].args[0]) for i in indices]
            group = self._answer([loaded[i] for i in indices], max_new_tokens, until, samples)
            answered.update(zip(indices, group, strict=True))
        results = []
        for index, item in enumerate(loaded):
            if isinstance(item, SampleError):
                log.warning(f"{type(self).__name__}: {item.reason}; recorded as failed (on_error=record)")
                record = SampleRecord.failed(self.prune, item.reason)
                counts = FastAVTokenCounts(input_tokens=0, output_tokens=0, record=record)
                results.append(GenerationResult(text="", token_counts=counts))
            else:
                results.append(answered[index])
        return results

    def _answer(
        self, loaded: list[Any], max_new_tokens: int, until: list[str], samples: list[SampleInfo]
    ) -> list[GenerationResult]:
        """Prefill and decode one batch of loaded requests; each answer with its sample record."""
        results = []
        for answered in self.runner.answer(loaded, max_new_tokens, until, samples):
            record = answered.record
            counts = FastAVTokenCounts(record.input_tokens, record.output_tokens, record=record,
                                       batch_timing=(answered.batch_seconds, answered.batch_size))  # fmt: skip
            results.append(GenerationResult(text=answered.text, token_counts=counts))
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
        # lmms-eval pads a rank's share with clones of its last request so that every rank runs as many: their
        # figures stay out of the summary and the run record (the evaluator drops their answers too).
        counted = [(q, r) for q, r in zip(requests, results, strict=True) if not q.metadata.get("__padding_only__")]
        for request, result in counted:
            counts: FastAVTokenCounts = result.token_counts  # type: ignore[assignment]
            task = request.args[4]
            for warning in self._keep_check.check(f"{task} doc {request.args[3]}", counts.record):
                log.warning(f"{type(self).__name__}: {warning}")
            _record_metrics(**throughput_entry(counts.record, task, *counts.batch_timing))
            self._records.append((task, counts.record))
        self._log_summary([r for _, r in counted])
        return results

    def clean(self) -> None:
        """After the last request: rank 0's throughput summary gets every rank's per-sample figures.

        lmms-eval builds the results JSON's ``throughput`` on rank 0 from its own process's records only; this is
        the one call every rank makes after generating, before the evaluator reads them.
        """
        records = self._records
        if self.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            history = gen_metrics._THROUGHPUT_METRICS_HISTORY
            gathered: list[Any] | None = [None] * self.world_size if self.rank == 0 else None
            torch.distributed.gather_object((list(history), records), gathered, dst=0)
            if gathered is not None:
                history[:] = [entry for part, _ in gathered for entry in part]  # the list the summary reads
                records = [record for _, part in gathered for record in part]
        evaluation = find_evaluation()
        if evaluation is not None:
            evaluation.set_model_name(self.adapter.pretrained or f"fastav-eval/{self.adapter.name}")
            if self.rank == 0:
                path = evaluation.write(self.run_record(records, evaluation.datetime_str))
                if path is not None:
                    log.info(f"{type(self).__name__}: run record (config, hashes, versions, per-task means): {path}")
        super().clean()

    def run_record(self, records: list[tuple[str, SampleRecord]], date: str) -> RunRecord:
        """This run's provenance and the per-task means of ``records`` ((task, record) pairs)."""
        config = self.engine.config.to_dict()
        by_task: dict[str, list[SampleRecord]] = {}
        for task, record in records:
            by_task.setdefault(task, []).append(record)
        described = self.engine.config.describe()
        shape, text_config = self.engine.shape, find_text_model(self.adapter.decoder).config
        return RunRecord(
            model=self.model_name,
            adapter=self.adapter.name,
            model_args=self.model_args,
            prune=self.prune,
            pruning=config,
            pruning_hash=canonical_hash(config),
            profile=profile_identity(self._profile_file, described),
            weights=weights_identity(self.adapter.weight_sources()),
            versions=versions(),
            device={**device_info(self._device), "processes": self.world_size},
            dtype=self._settings["dtype"],
            attn_implementation=self._settings["attn_implementation"],
            language_model=shape.label(text_config.model_type),
            decoder_shape=shape.to_dict(),
            tasks={task: means(items) for task, items in sorted(by_task.items())},
            overall=means(record for _, record in records),
            seed=self.engine.config.seed,
            date=date,
            use_kernels=self.adapter.use_kernels,
        )

    def _log_summary(self, results: list[GenerationResult]) -> None:
        """One line per run: the means of the per-sample figures in the samples file."""
        if not results:
            return
        mean = means(r.token_counts.record for r in results)  # type: ignore[union-attr]
        if mean["failed"] == len(results):
            log.warning(f"{type(self).__name__}: all {len(results)} requests failed (see the samples file)")
            return
        log.info(
            f"{type(self).__name__} (prune={self.prune}): {len(results)} requests, batch size "
            f"{self.batch_size_per_gpu}; means per sample: relative FLOPs {mean['relative_flops']:.2f}%, prefill "
            f"{mean['prefill_ms']:.2f} ms, video tokens kept per layer {mean['video_kept_mean']:.1f}, audio "
            f"{mean['audio_kept_mean']:.1f}; {int(mean['failed'])} failed (per-sample figures: the samples file)"
        )

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(f"{type(self).__name__} answers generate_until tasks only (no loglikelihood)")

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} answers single-turn generate_until tasks only")
