"""What both environments share: the model (built from an lmms-eval-style model name and model args), the
training documents (never the test split), the cached per-sample work, and how an answer's quality is measured.

Every pruned pass goes through :class:`~fastav_eval.evaluation.PrunedRunner`, the evaluation loop of the lmms-eval
wrappers, one sample at a time, under a chooser whose decision the environment sets before each pass
(:class:`ScriptedChooser`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastav_eval.avsynth import TASKS, build_documents
from fastav_eval.avsynth.dataset import DEFAULT_SEED, request_visuals
from fastav_eval.avsynth.scoring import SampleCider, score_choice
from fastav_eval.envs.cache import FirstPassCache, model_identity
from fastav_eval.evaluation import Answered, PrunedRunner
from fastav_eval.models import registry
from fastav_eval.models.base import ModelAdapter, Request
from fastav_eval.pruning import PruneContext, PruneDecision, PruningConfig, SampleInfo
from fastav_eval.records import SampleRecord
from fastav_eval.records import retention as av_retention

logger = logging.getLogger(__name__)

TRAINING_SPLITS = ("train", "val")
DOCUMENTS_PER_TASK = 100_000
"""How many documents a task's train or val split holds: both are seeded generator streams (the shipped val parquet
is the first 48 of its stream), and a document's id numbers it in five digits (``avsynth_qa-train-00000`` ..
``-99999``). Each document takes about 2.5 ms to build (its media are rendered for their SHA-1), so the largest
``per_task`` costs about 4 minutes per task before the first episode."""
SLOW_BUILD, SECONDS_PER_DOCUMENT = 2_000, 0.0025
"""From this many documents per task on, building them is logged task by task (it takes seconds to minutes)."""
REWARDS = ("score", "loglik", "mixed", "caption")
"""``score``: the task's own score of the generated answer (accuracy for choices, per-sample CIDEr-D / 10, capped at
1, for captions); ``loglik``: the reference answer's per-token probability, ``exp(mean log p)``, over the pruned
prompt; ``mixed``: ``loglik`` for choice answers, ``score`` (CIDEr-D) for captions, whose per-token probability
barely moves with what is kept; ``caption`` (AVEX-Prune's captioning reward, issue 23): ``loglik`` for choice
answers, and for a caption the mean of three terms, each in [0, 1]: the pruned caption's CIDEr-D / 10 (capped at 1)
against the reference, its CIDEr-D / 10 (capped at 1) against the document's full-token caption (the unpruned
model's), and the reference caption's per-token probability over the pruned prompt (:meth:`SampleRunner.quality`;
both CIDEr-D with the environment's caption references as the corpus). Each caption pass then generates and scores
the reference (two passes), and a document's full-token caption is one more, unpruned, pass unless the
environment's first pass is unpruned. Both environments subtract a baseline quality, so the likelihood term enters
the reward as the change in the reference caption's likelihood. All lie in [0, 1]."""
MODEL_KEYS = registry.LOAD_ARGS
CHOICE_TOKENS, CAPTION_TOKENS = 4, 40
"""``max_new_tokens`` of a choice answer and of a caption (what the AV-Synth task YAMLs ask for)."""


def parse_model_args(model_args: str | dict[str, Any] | None) -> dict[str, Any]:
    """``"k=v,k=v"`` (lmms-eval's ``--model_args`` syntax) or a dict -> a dict with typed values, read as every
    FastAV wrapper reads them (:mod:`fastav_eval.models.model_args`: declared types, a key given twice refused)."""
    from fastav_eval.models.model_args import check_model_args
    from fastav_eval.models.model_args import parse_model_args as parse

    if model_args is None or model_args == "":
        return {}
    if isinstance(model_args, dict):
        return check_model_args(model_args, registry.any_model_kinds())
    return parse(model_args, registry.any_model_kinds())


def build_adapter(model: str, model_args: str | dict[str, Any] | None = None) -> ModelAdapter:
    """The adapter behind the lmms-eval model ``model`` (``fastav_tiny``, ...), loaded with ``model_args``: the
    adapter's own keys and ``pretrained``, ``device``, ``dtype``, ``attn_implementation`` (device default: cpu).
    Pruning keys are refused: the environment decides the pruning."""
    adapter_class = registry.adapter_class(model)
    args = parse_model_args(model_args)
    unknown = sorted(set(args) - set(MODEL_KEYS) - set(adapter_class.model_args))
    if unknown:
        raise ValueError(
            f"model_args {unknown} are not accepted here (the environment chooses the pruning); accepted: "
            f"{sorted({*MODEL_KEYS, *adapter_class.model_args})}"
        )
    return registry.build_adapter(model, args)


def training_documents(
    tasks: Sequence[str] | str, split: str, per_task: int, seed: int | Sequence[int] = DEFAULT_SEED
) -> list[dict[str, Any]]:
    """AV-Synth documents of ``tasks`` from ``split`` (``train`` or ``val``: a policy never sees the test split),
    ``per_task`` of each task from the generator stream of each seed in ``seed`` (one int or several: scenes drawn
    from several seeds, so that a policy does not learn one draw). With several seeds a document's id names its
    seed (``avsynth_qa-train-s3-00000``): the streams number their documents alike."""
    if split not in TRAINING_SPLITS:
        raise ValueError(
            f"split={split!r}; accepted: {list(TRAINING_SPLITS)} (the test split is kept for evaluating the policy)"
        )
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    unknown = sorted(set(names) - set(TASKS))
    if unknown or not names:
        raise ValueError(f"tasks={names!r}; accepted: a non-empty list of {sorted(TASKS)}")
    if isinstance(per_task, bool) or not isinstance(per_task, int) or not 1 <= per_task <= DOCUMENTS_PER_TASK:
        raise ValueError(
            f"per_task={per_task!r}; accepted: an int in 1..{DOCUMENTS_PER_TASK} (the documents a task's {split} "
            "split holds)"
        )
    seeds = check_seeds(seed)
    documents: list[dict[str, Any]] = []
    for data_seed in seeds:
        for number, task in enumerate(sorted(set(names)), 1):
            if per_task >= SLOW_BUILD:
                logger.info(
                    "building %d %s documents of %s (seed %d, task %d/%d, about %.0f s)",
                    per_task, split, task, data_seed, number, len(set(names)), per_task * SECONDS_PER_DOCUMENT,
                )  # fmt: skip
            built = build_documents(split, task, per_task, data_seed)
            if len(seeds) > 1:
                prefix = f"{task}-{split}-"
                built = [{**doc, "id": f"{prefix}s{data_seed}-{doc['id'][len(prefix) :]}"} for doc in built]
            documents += built
    return documents


def check_seeds(seed: Any) -> tuple[int, ...]:
    """``seed`` (an int, or a non-empty sequence of distinct ints) as a tuple of AV-Synth generator seeds >= 0, or a
    ValueError naming ``data_seed`` and what it accepts."""
    if isinstance(seed, int) and not isinstance(seed, bool):
        seeds: tuple[Any, ...] = (seed,)
    else:
        seeds = tuple(seed) if isinstance(seed, list | tuple) else ()
    if (
        not seeds
        or any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**63 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ValueError(f"data_seed={seed!r}; accepted: an int >= 0, or a non-empty list of distinct ints >= 0")
    return seeds


class ScriptedChooser:
    """The environments' chooser: ``decide(context)`` set by the environment before each pass (None: wait, and let
    the config's own rule decide); ``watch(context)`` sees every context it is asked with (to observe)."""

    __name__ = "env"

    def __init__(self) -> None:
        self.decide: Callable[[PruneContext], PruneDecision | list[PruneDecision] | None] | None = None
        self.watch: Callable[[PruneContext], None] | None = None

    def __call__(self, context: PruneContext) -> PruneDecision | list[PruneDecision] | None:
        if self.watch is not None:
            self.watch(context)
        return None if self.decide is None else self.decide(context)


BUDGETS = ("flops", "retention")
"""What an environment's cost term charges, λ times it / 100: ``flops``, the pass's relative prefill FLOPs (%);
``retention``, the share (%) of the sample's audio-visual tokens kept, mean over decoder layers
(:func:`fastav_eval.records.retention`, AVEX-Prune's budget)."""


def check_budget(budget: Any) -> str:
    """``budget`` if it is one of :data:`BUDGETS`, else a ValueError naming the field and the accepted values."""
    if budget not in BUDGETS:
        raise ValueError(f"budget={budget!r}; accepted: {list(BUDGETS)}")
    return str(budget)


@dataclass(frozen=True)
class Outcome:
    """One pruned (or unpruned) pass of one sample: its quality in [0, 1], relative FLOPs (%), decision and the
    tokens of each modality each decoder layer processed (the engine's ``kept_per_layer``), from which
    :attr:`kept` and :attr:`retention` follow."""

    quality: float
    relative_flops: float
    answer: str | None
    decision: dict[str, Any] | None
    kept_per_layer: dict[str, list[int]]
    reference_logprob: float | None = None
    """The reference answer's mean log-probability per token over the pruned prompt (None: not computed, as under
    ``reward="score"``); beside :attr:`answer`, what :meth:`SampleRunner.quality` scores again on a cache read."""

    @property
    def kept(self) -> dict[str, int]:
        """Tokens of each modality the last layer processed."""
        return {name: counts[-1] for name, counts in self.kept_per_layer.items()}

    @property
    def retention(self) -> float:
        """The share (%) of the sample's audio-visual tokens kept, mean over layers
        (:func:`fastav_eval.records.retention`)."""
        return av_retention(self.kept_per_layer)

    def cost(self, budget: str) -> float:
        """What ``budget`` (:data:`BUDGETS`) charges for this pass, in %: relative FLOPs or retention."""
        return self.relative_flops if check_budget(budget) == "flops" else self.retention

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Outcome:
        """An outcome :meth:`to_dict` wrote, each field checked (a ValueError names the first one that is not)."""
        names = ("quality", "relative_flops", "answer", "decision", "kept_per_layer", "reference_logprob")
        if not isinstance(data, Mapping) or set(data) != set(names):
            raise ValueError(f"outcome: not an object of {', '.join(names)}")
        for name in ("quality", "relative_flops"):
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"outcome.{name}={value!r}; accepted: a finite number >= 0")
        if data["answer"] is not None and not isinstance(data["answer"], str):
            raise ValueError(f"outcome.answer={data['answer']!r}; accepted: a string or null")
        logprob = data["reference_logprob"]
        number = isinstance(logprob, int | float) and not isinstance(logprob, bool)
        if logprob is not None and not (number and math.isfinite(logprob) and logprob <= 0):
            raise ValueError(
                f"outcome.reference_logprob={logprob!r}; accepted: a finite number <= 0 (a mean log-probability) "
                "or null"
            )
        if data["decision"] is not None and not isinstance(data["decision"], dict):
            raise ValueError("outcome.decision: accepted: an object or null")
        kept = data["kept_per_layer"]
        lengths = {len(v) if isinstance(v, list) else 0 for v in kept.values()} if isinstance(kept, dict) else {0}
        counts_ok = isinstance(kept, dict) and all(
            isinstance(name, str) and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)
            for name, counts in kept.items()
        )
        if len(lengths) != 1 or 0 in lengths or not counts_ok:
            raise ValueError(
                f"outcome.kept_per_layer={kept!r}; accepted: modality -> a non-empty list of ints >= 0, one per layer, "
                "equal lengths"
            )
        return cls(float(data["quality"]), float(data["relative_flops"]), data["answer"], data["decision"],
                   {name: list(counts) for name, counts in kept.items()},
                   None if logprob is None else float(logprob))  # fmt: skip


def keep_everything(context: PruneContext) -> PruneDecision | None:
    """A chooser decision that prunes nothing, under any engine config (FastAV's too): at the first global-stage prune
    point every sample is cut there keeping every token, with no fine stage after (the config's fine ratio overridden
    by 0), so no later rule drops a token; None at every other point (the engine then keeps what it has)."""
    return PruneDecision(keep_fraction={}, fine_ratio=0.0) if context.stage == "global" else None


def check_unpruned(kept_per_layer: Mapping[str, Sequence[int]], what: str) -> None:
    """A ValueError unless every modality's count ``kept_per_layer[name]`` (``[num_layers]``) is the same at every
    layer: the pass ``what`` dropped no token."""
    dropped = {name: list(counts) for name, counts in kept_per_layer.items() if len(set(counts)) > 1}
    if dropped:
        raise ValueError(
            f"{what}: kept_per_layer={dropped} drops tokens; accepted: an unpruned pass, the same count at every layer"
        )


class SampleRunner:
    """Runs single samples through one model under a chooser-driven config, with the media loaded once per sample.

    Under ``reward="caption"`` a caption's quality compares it with the document's full-token caption, which the
    runner keeps per document: from a pass its caller runs as unpruned (``run(..., unpruned=True)``, TokenRetention's
    first pass), from a cache entry (:meth:`cached_outcome`), or else from an unpruned pass of its own
    (:meth:`full_caption`, under :func:`keep_everything`) before the document's first pruned pass.

    Args:
        adapter: the model.
        config: the engine config; its ``chooser`` must be ``chooser``.
        chooser: the :class:`ScriptedChooser` in ``config``.
        documents: the samples (AV-Synth documents).
        reward: one of :data:`REWARDS`.
    """

    def __init__(
        self,
        adapter: ModelAdapter,
        config: PruningConfig,
        chooser: ScriptedChooser,
        documents: list[dict[str, Any]],
        reward: str,
    ) -> None:
        if reward not in REWARDS:
            raise ValueError(f"reward={reward!r}; accepted: {list(REWARDS)}")
        if config.chooser is not chooser:
            raise ValueError("SampleRunner's config must use its own ScriptedChooser")
        self.adapter, self.chooser, self.documents, self.reward = adapter, chooser, documents, reward
        self.runner = PrunedRunner(adapter, config, "env")
        captions = [doc["answer"] for doc in documents if not doc["choices"]]
        self._cider = SampleCider(captions) if captions else None
        self._loaded: dict[int, Any] = {}
        self._full_captions: dict[int, str] = {}

    @property
    def num_layers(self) -> int:
        return self.runner.engine.num_layers

    def _load(self, index: int) -> Any:
        if index not in self._loaded:
            doc = self.documents[index]
            self._loaded[index] = self.adapter.load_request(Request(request_visuals(doc), doc["question"]), 0)
        return self._loaded[index]

    def passes(self, index: int) -> tuple[bool, bool]:
        """What a pass of document ``index`` computes under this runner's reward: (a generated answer, the reference
        answer's log-probability)."""
        choice, reward = bool(self.documents[index]["choices"]), self.reward
        generate = reward == "score" or (reward in ("mixed", "caption") and not choice)
        likelihood = reward in ("loglik", "caption") or (reward == "mixed" and choice)
        return generate, likelihood

    def needs_full_caption(self, index: int) -> bool:
        """Whether document ``index``'s quality compares with its full-token caption: a caption under ``caption``."""
        return self.reward == "caption" and not self.documents[index]["choices"]

    def full_caption(self, index: int) -> str:
        """Document ``index``'s full-token caption, the unpruned model's answer: the one this runner keeps, else
        generated now by an unpruned pass (:func:`keep_everything`, its per-layer counts checked) and kept."""
        if index not in self._full_captions:
            self.chooser.decide, self.chooser.watch = keep_everything, None
            try:
                answered = self._answer(index)
            finally:
                self.chooser.decide = self.chooser.watch = None
            check_unpruned(answered.record.kept_per_layer, f"the full-token caption's pass of document {index}")
            self._full_captions[index] = answered.text
        return self._full_captions[index]

    def run(
        self,
        index: int,
        decide: Callable[[PruneContext], PruneDecision | list[PruneDecision] | None] | None = None,
        watch: Callable[[PruneContext], None] | None = None,
        *,
        unpruned: bool = False,
    ) -> Outcome:
        """One pass of document ``index`` with the chooser deciding by ``decide`` (None: the config's own rules)
        and showing ``watch`` every context. ``unpruned``: the caller runs the document's unpruned pass (checked on
        the engine's per-layer counts, a ValueError otherwise); under ``caption`` its caption becomes the document's
        full-token caption. Otherwise a caption under ``caption`` needs that one first: :meth:`full_caption` runs it
        before this pass, unseen by ``watch``, where the runner does not hold it yet."""
        if self.needs_full_caption(index) and not unpruned:
            self.full_caption(index)
        self.chooser.decide, self.chooser.watch = decide, watch
        try:
            return self._run(index, unpruned)
        finally:
            self.chooser.decide = self.chooser.watch = None

    def _sample(self, index: int) -> list[SampleInfo]:
        doc = self.documents[index]
        return [SampleInfo(f"{doc['task']}/{doc['id']}", doc["question"])]

    def _answer(self, index: int) -> Answered:
        limit = CHOICE_TOKENS if self.documents[index]["choices"] else CAPTION_TOKENS
        return self.runner.answer([self._load(index)], limit, [], self._sample(index))[0]

    def _run(self, index: int, unpruned: bool) -> Outcome:
        generate, likelihood = self.passes(index)
        answer: str | None = None
        logprob: float | None = None
        record: SampleRecord | None = None
        if likelihood:
            reference = self.documents[index]["answer"]
            logprob, record = self.runner.score_references([self._load(index)], [reference], self._sample(index))[0]
        if generate:
            answered = self._answer(index)
            answer, record = answered.text, answered.record
        assert record is not None, "every reward runs at least one pass"
        kept = {name: [int(count) for count in counts] for name, counts in record.kept_per_layer.items()}
        if unpruned:
            check_unpruned(kept, f"document {index}'s pass, run as unpruned")
            if self.needs_full_caption(index):
                assert answer is not None, "a caption under reward 'caption' is generated"
                self._full_captions[index] = answer
        quality = self.quality(index, answer, logprob, self._full_captions.get(index))
        return Outcome(float(quality), float(record.relative_flops), answer, record.decision, kept,
                       None if logprob is None else float(logprob))  # fmt: skip

    def quality(self, index: int, answer: str | None, logprob: float | None, full_caption: str | None = None) -> float:
        """Document ``index``'s quality in [0, 1] under this runner's reward (:data:`REWARDS`), from what its pass
        gave: the generated ``answer`` and the reference answer's mean log-probability per token ``logprob`` (each
        None where the reward does not use it). Under ``caption`` a caption's quality is::

            ( min(CIDEr-D(answer, reference) / 10, 1)
            + min(CIDEr-D(answer, full_caption) / 10, 1)
            + exp(logprob) ) / 3

        with ``full_caption`` the document's full-token caption. A ValueError names what the reward needs and is
        missing (``outcome.answer``, ``outcome.reference_logprob``, ``full_caption``)."""
        doc = self.documents[index]
        generate, likelihood = self.passes(index)
        where = f"reward={self.reward!r} on {doc['task']}/{doc['id']}"
        if generate and not isinstance(answer, str):
            raise ValueError(f"outcome.answer={answer!r}; accepted: a string ({where} scores a generated answer)")
        if likelihood and logprob is None:
            raise ValueError(f"outcome.reference_logprob=None; accepted: a number ({where} scores the reference)")
        if not generate:
            return float(np.exp(logprob))
        assert answer is not None
        score = self.score(index, answer)
        if not self.needs_full_caption(index):
            return score
        if not isinstance(full_caption, str):
            raise ValueError(f"full_caption={full_caption!r}; accepted: a string ({where} compares with it)")
        assert self._cider is not None and logprob is not None
        agreement = min(self._cider(answer, full_caption) / 10.0, 1.0)
        return float((score + agreement + float(np.exp(logprob))) / 3.0)

    def score(self, index: int, answer: str) -> float:
        """The task's score of a generated ``answer`` to document ``index``: accuracy for a choice, per-sample
        CIDEr-D / 10 (capped at 1) for a caption, with this runner's caption references as the corpus."""
        doc = self.documents[index]
        if doc["choices"]:
            return float(score_choice(answer, doc["answer"], doc["choices"])["accuracy"])
        assert self._cider is not None
        return float(min(self._cider(answer, doc["answer"]) / 10.0, 1.0))

    def cached_outcome(
        self, index: int, data: Mapping[str, Any], *, unpruned: bool = False, full_caption: str | None = None
    ) -> Outcome:
        """An outcome read from a first-pass cache entry (:meth:`Outcome.from_dict`), its quality scored again here
        (:meth:`quality`): a caption's CIDEr-D depends on the corpus of the environment's references, which the
        cache key does not hold. Under ``caption`` a caption compares with its full-token caption: the outcome's
        own answer where ``unpruned`` (TokenRetention's first pass, its per-layer counts checked), else
        ``full_caption`` (read from the same entry: TokenExchange's); the runner keeps it once the outcome is read.
        A ValueError names what does not fit (the cache then recomputes the entry)."""
        outcome = Outcome.from_dict(data)
        if unpruned:
            check_unpruned(outcome.kept_per_layer, "outcome, read as unpruned")
        full = (outcome.answer if unpruned else full_caption) if self.needs_full_caption(index) else None
        quality = self.quality(index, outcome.answer, outcome.reference_logprob, full)
        if full is not None:
            self._full_captions[index] = full
        return dataclasses.replace(outcome, quality=quality)

    def first_pass_cache(
        self, folder: str | Path | None, model: str, model_args: str | dict[str, Any] | None, **setting: Any
    ) -> FirstPassCache | None:
        """The on-disk cache of this runner's first passes in ``folder`` (None: none), keyed by the model
        (:func:`~fastav_eval.envs.cache.model_identity`), the resolved engine config, the reward kind, the answer
        lengths and ``setting`` (the environment's own: its kind, its coding)."""
        if folder is None:
            return None
        identity = model_identity(model, parse_model_args(model_args), self.adapter)
        return FirstPassCache(folder, {
            "model": identity, "engine": self.runner.engine.config.to_dict(), "reward": self.reward,
            "max_new_tokens": {"choice": CHOICE_TOKENS, "caption": CAPTION_TOKENS}, **setting,
        })  # fmt: skip

    def close(self) -> None:
        self.runner.close()


ORDERS = ("random", "cycle")
"""Which document each episode is about: drawn with the env's RNG, or each in turn (an evaluation's full pass)."""


class DocumentPicker:
    """Picks each episode's document among ``count``, in ``order`` (:data:`ORDERS`)."""

    def __init__(self, count: int, order: str) -> None:
        if order not in ORDERS:
            raise ValueError(f"order={order!r}; accepted: {list(ORDERS)}")
        self.count, self.order, self._next = count, order, 0

    def pick(self, np_random: np.random.Generator, options: dict[str, Any] | None) -> int:
        """``options["index"]`` if given, else the next in this picker's order."""
        index = (options or {}).get("index")
        if index is None:
            if self.order == "random":
                return int(np_random.integers(self.count))
            index, self._next = self._next, (self._next + 1) % self.count
            return index
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.count:
            raise ValueError(f"options['index']={index!r}; accepted: an int in 0..{self.count - 1}")
        return index


def set_threads(threads: int | None) -> None:
    """Torch intra-op threads of this process (None: leave them); one per worker suits ``SubprocVecEnv``."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads={threads}; accepted: >= 1 or None")
        torch.set_num_threads(threads)
