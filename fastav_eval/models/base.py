"""The interface every model adapter implements, and the batch type the wrapper hands between its methods.

An adapter only *describes* a model family: its own ``--model_args``, how it loads, how a batch of requests
becomes the model's ``generate`` inputs plus a :class:`~fastav_eval.pruning.ModalityLayout`, which module the
engine installs on, and how answers are decoded. It knows nothing of lmms-eval (a request is a list of visuals
and a prompt) and nothing of pruning (the wrapper installs the engine on :attr:`ModelAdapter.decoder` and enters
:meth:`~fastav_eval.pruning.FastAVEngine.layout` around :meth:`ModelAdapter.generate`).

A new model family is one file: subclass :class:`ModelAdapter`, declare ``model_args``, implement
``__init__``, ``decoder``, ``load_request``, ``prepare``, ``generate`` and ``reference_logprob`` (usually one call
of :func:`teacher_forced_logprob`).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.cache_utils import DynamicCache

from fastav_eval.pruning.compat import CACHE_NAMES
from fastav_eval.pruning.layout import ModalityLayout, Segment


class SampleError(ValueError):
    """One request the adapter cannot answer faithfully (missing or malformed media); ``reason`` says why."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"request {index}: {reason}")
        self.index, self.reason = index, reason


@dataclass(frozen=True)
class AdapterArg:
    """One ``--model_args`` key an adapter declares: its default, the accepted values and what it does.

    ``choices`` (when given) lists the accepted values; otherwise the value must be an instance of ``kind``
    (an int is accepted where a float is declared).
    """

    default: Any
    kind: type
    help: str
    choices: tuple[Any, ...] | None = None

    def check(self, name: str, value: Any) -> Any:
        if self.choices is not None:
            if value not in self.choices:
                raise ValueError(f"{name}={value!r}; accepted: {list(self.choices)}")
            return value
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, self.kind) or (self.kind is not bool and isinstance(value, bool)):
            raise ValueError(f"{name}={value!r}; accepted: a {self.kind.__name__} ({self.help})")
        return value


@dataclass(frozen=True)
class Request:
    """What one evaluated sample gives a model: ``doc_to_visual``'s list (in the task's order) and the prompt."""

    visuals: list[Any]
    prompt: str


@dataclass
class ModelInputs:
    """One left-padded batch, ready for the model's ``generate``.

    Attributes:
        generate_kwargs: what the model's ``generate`` takes, e.g. ``input_ids [B, L]``, ``attention_mask
            [B, L]`` and the media tensors of a model that merges its own encoders' outputs, or
            ``inputs_embeds [B, L, D]`` and ``attention_mask [B, L]`` for one whose adapter merges them.
        layout: where each modality sits, ``[B, L]`` like ``attention_mask``.
    """

    generate_kwargs: dict[str, Any]
    layout: ModalityLayout


@dataclass(frozen=True)
class Answer:
    """One decoded answer: its text (cut at the first stop string) and ``num_tokens``, the tokens the model
    generated for it (decode steps up to and including its end-of-sequence token; padding excluded)."""

    text: str
    num_tokens: int


def cut_at_stop(text: str, until: list[str]) -> str:
    """``text`` up to the first occurrence of any stop string."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


@dataclass(frozen=True)
class ChatEnds:
    """The ids that end an answer of a Qwen-style chat model (``<|im_end|>``, ``<|endoftext|>``, the tokenizer's
    eos; those it has), the id ``generate`` pads finished rows with, and ``end_id``, the one a reference answer is
    scored with: ``<|im_end|>`` where the tokenizer has it (the chat template closes every assistant turn with it,
    so it is the end the model was tuned to emit, and one of ``stop_ids``), else the tokenizer's eos."""

    stop_ids: list[int]
    pad_id: int
    end_id: int

    @classmethod
    def of(cls, tokenizer: Any) -> ChatEnds:
        ends = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")] + [tokenizer.eos_token_id]
        known = [i for i in ends if i is not None and i != tokenizer.unk_token_id]
        stop_ids = sorted(set(known))
        im_end, _, eos = ends
        end_id = next(i for i in (im_end, eos, *stop_ids) if i in known)
        return cls(stop_ids, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0], end_id)

    def answers(self, tokenizer: Any, rows: list[list[int]], until: list[str]) -> list[Answer]:
        """Generated ids ``[B][new tokens]`` -> each row's answer up to and including its end token."""
        answers = []
        for row in rows:
            ends = [k for k, token in enumerate(row) if token in self.stop_ids or token == self.pad_id]
            count = ends[0] + (row[ends[0]] in self.stop_ids) if ends else len(row)  # its end token included
            text = tokenizer.decode(row[:count], skip_special_tokens=True)
            answers.append(Answer(cut_at_stop(text, until).strip(), count))
        return answers

    def reference_ids(self, tokenizer: Any, reference: str) -> list[int]:
        """A reference answer as the model would generate it: its text's tokens (no special tokens added), then
        :attr:`end_id`. ``[tokens + 1]``"""
        return [*tokenizer(reference, add_special_tokens=False).input_ids, self.end_id]


class StopOnStrings(StoppingCriteria):
    """Stops each row of a ``generate`` call once its decoded answer holds one of ``stops``.

    transformers' own ``stop_strings`` needs a tokenizer whose vocabulary it can take apart (it fails on word-level
    ones); decoding the answer so far works for any tokenizer, at one decode per row and step.
    """

    def __init__(self, tokenizer: Any, stops: list[str], prompt_length: int) -> None:
        self.tokenizer, self.stops, self.prompt_length = tokenizer, [s for s in stops if s], prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        done = [any(stop in text for stop in self.stops) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


USE_KERNELS = AdapterArg(
    False,
    bool,
    "transformers' hub kernels (RMSNorm, rotary, ...) swapped in by from_pretrained; transformers 5.25 turns them on "
    "by default, so every loader passes this value itself: off (the default) keeps a run offline and the pruned and "
    "unpruned runs on the same kernels",
)
"""``use_kernels``: every adapter declares it (``{**ModelAdapter.model_args, ...}``) and passes it to each
``from_pretrained`` of a model; the run record stores it."""

CHECKPOINT_REPETITION_PENALTY = AdapterArg(
    0.0, float, "greedy decoding's repetition penalty; 0: the checkpoint's generation_config.json (1.0 if none)"
)
"""``repetition_penalty``, for an adapter whose official ``generate`` applies the checkpoint's penalty."""


class ModelAdapter(ABC):
    """Base class of the model adapters (one per model family).

    Class attributes:
        name: the family's short name (used in logs and errors).
        default_pretrained: ``pretrained`` when the user gives none (a hub id or a local folder).
        default_dtype: ``dtype`` when the user gives none (``float32``, ``bfloat16`` or ``float16``).
        attn_implementations: the ``attn_implementation`` values the family supports.
        model_args: the adapter's own ``--model_args`` keys (beyond the wrapper's and the engine's).
    """

    name: ClassVar[str]
    default_pretrained: ClassVar[str | None] = None
    default_dtype: ClassVar[str] = "float32"
    attn_implementations: ClassVar[tuple[str, ...]] = ("sdpa", "eager", "flash_attention_2")
    model_args: ClassVar[dict[str, AdapterArg]] = {"use_kernels": USE_KERNELS}

    def __init__(
        self, pretrained: str | None, device: str, dtype: torch.dtype, attn_implementation: str, **model_args: Any
    ) -> None:
        """Load the model from ``pretrained`` (None: :attr:`default_pretrained`) onto ``device``."""
        self.pretrained = pretrained or self.default_pretrained
        self.device = torch.device(device)
        self.options = self.check_model_args(model_args)

    @classmethod
    def check_model_args(cls, model_args: dict[str, Any]) -> dict[str, Any]:
        """Every declared key with its value (given or default); an undeclared key is a ValueError."""
        unknown = sorted(set(model_args) - set(cls.model_args))
        if unknown:
            raise ValueError(f"{cls.name}: unknown model arg(s) {unknown}; accepted: {sorted(cls.model_args)}")
        return {
            name: arg.check(name, model_args[name]) if name in model_args else arg.default
            for name, arg in cls.model_args.items()
        }

    @classmethod
    def default_profile(cls, pretrained: str | None) -> Path | None:
        """The global-stage profile calibrated for these weights, if the adapter ships or finds one."""
        return None

    @property
    def use_kernels(self) -> bool:
        """What every ``from_pretrained`` of this adapter's models is given as ``use_kernels``."""
        return bool(self.options["use_kernels"])

    def weight_sources(self) -> list[str]:
        """The folders or hub ids the weights came from (the run record hashes their files)."""
        return [str(self.pretrained)] if self.pretrained else []

    @property
    @abstractmethod
    def decoder(self) -> nn.Module:
        """The module the engine installs on: a causal LM (or multimodal LM) holding one text decoder."""

    @abstractmethod
    def load_request(self, request: Request, index: int) -> Any:
        """Decode and check one request's media; raise :class:`SampleError` when it cannot be answered."""

    def batch_key(self, loaded: Any) -> Hashable:
        """Loaded requests with different keys never share a batch (e.g. a flag ``generate`` takes per batch)."""
        return None

    @abstractmethod
    def prepare(self, loaded: list[Any]) -> ModelInputs:
        """A batch of loaded requests -> left-padded ``generate`` inputs and their layout."""

    @abstractmethod
    def generate(self, inputs: ModelInputs, max_new_tokens: int, until: list[str]) -> list[Answer]:
        """Greedy answers for the batch, each cut at the first of the ``until`` stop strings."""

    @abstractmethod
    def reference_logprob(self, inputs: ModelInputs, references: list[str]) -> torch.Tensor:
        """``[B]`` mean log-probability per token of each reference answer (its end token included), teacher-forced
        over the cache of the prompt's prefill as :meth:`generate` runs it, so an installed engine scores the
        pruned prompt (the RL environments' ``reward="loglik"``). Most adapters call :func:`teacher_forced_logprob`.

        Args:
            inputs: a :meth:`prepare` batch (the engine's layout, when one is entered, is ``inputs.layout``).
            references: one answer text per row, without its end token (the adapter appends the one its model's
                answers end with).
        """


def splice_media(llm: nn.Module, input_ids: torch.Tensor, placeholder: int, media: torch.Tensor) -> torch.Tensor:
    """One prompt's ids ``[L]`` holding ``placeholder`` once -> ``[L - 1 + N, D]``: the ``llm``'s token embeddings
    with the placeholder's row replaced by ``media [N, D]`` (an :class:`EmbedsAdapter`'s merged audio-visual block)."""
    where = (input_ids == placeholder).nonzero().flatten()
    if where.numel() != 1:
        raise ValueError(f"the prompt holds the media placeholder {where.numel()} times; accepted: once")
    at = int(where[0])
    table = llm.get_input_embeddings()
    return torch.cat([table(input_ids[:at]), media.to(table.weight.dtype), table(input_ids[at + 1 :])])


class EmbedsAdapter(ModelAdapter):
    """An adapter whose model merges its encoders' outputs into its LLM's ``inputs_embeds`` itself (VideoLLaMA2,
    video-SALMONN 2 and 2+): :meth:`batch` left-pads the merged rows, and :meth:`generate` / :meth:`reference_logprob`
    run :attr:`decoder` (a causal LM) on them with 1-D positions counted from each row's first real token, or with
    the multi-axis positions the adapter computed (2+'s M-RoPE).

    Subclasses set ``tokenizer`` and ``ends`` (:class:`ChatEnds`) when they load, and may add ``generate`` options
    (:meth:`generation_options`).
    """

    tokenizer: Any
    ends: ChatEnds

    def generation_options(self) -> dict[str, Any]:
        """Extra keyword arguments of every greedy ``generate`` call (e.g. a checkpoint's repetition penalty)."""
        return {}

    def batch(
        self, rows: list[torch.Tensor], segments: list[list[Segment]], positions: list[torch.Tensor] | None = None
    ) -> ModelInputs:
        """Each sample's merged embeddings ``[L_b, D]`` and its segments -> one left-padded batch; with
        ``positions`` (each sample's ``[K, L_b]`` multi-axis rotary positions) the batch carries them as
        ``position_ids [K, B, L]`` (padding at 0), which ``generate`` then extends by one per step on every axis."""
        length = max(row.shape[0] for row in rows)
        embeds = rows[0].new_zeros(len(rows), length, rows[0].shape[1])
        attention_mask = torch.zeros(len(rows), length, dtype=torch.long, device=self.device)
        for b, row in enumerate(rows):
            embeds[b, length - row.shape[0] :] = row
            attention_mask[b, length - row.shape[0] :] = 1
        layout = ModalityLayout.from_segments(segments, device=self.device)
        if layout.length != length or not torch.equal(layout.valid.long(), attention_mask):
            raise ValueError("the layout's segments do not cover the merged rows exactly (an adapter bug)")
        kwargs = {"inputs_embeds": embeds, "attention_mask": attention_mask}
        if positions is not None:
            position_ids = torch.zeros(positions[0].shape[0], len(rows), length, dtype=torch.long, device=self.device)
            for b, row in enumerate(positions):
                position_ids[:, b, length - row.shape[1] :] = row
            kwargs["position_ids"] = position_ids
        return ModelInputs(generate_kwargs=kwargs, layout=layout)

    @torch.no_grad()
    def generate(self, inputs: ModelInputs, max_new_tokens: int, until: list[str]) -> list[Answer]:
        """Greedy answers. A batch that also carries the prompt's ``input_ids`` (as 2+'s official ``generate`` gets
        them, so that a repetition penalty covers the prompt) gets them back ahead of the answer, cut off here."""
        prompt_length = inputs.generate_kwargs["input_ids"].shape[1] if "input_ids" in inputs.generate_kwargs else 0
        output = self.decoder.generate(
            **inputs.generate_kwargs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=self.ends.stop_ids,
            pad_token_id=self.ends.pad_id,
            stopping_criteria=StoppingCriteriaList([StopOnStrings(self.tokenizer, until, prompt_length)]),
            **self.generation_options(),
        )  # [B, prompt + new tokens]; inputs_embeds alone returns only the generated ids
        return self.ends.answers(self.tokenizer, output[:, prompt_length:].tolist(), until)

    def reference_logprob(self, inputs: ModelInputs, references: list[str]) -> torch.Tensor:
        """``[B]``, teacher-forced over the prompt's cache as :meth:`generate` runs the LLM (``inputs_embeds``, the
        left-padded mask, the batch's ``position_ids`` or else positions counted from each row's first real token).
        Each reference ends with :attr:`ChatEnds.end_id` (``<|im_end|>``: the chat template closes every assistant
        turn with it, so it is the end the model's answers carry, and the first that stops ``generate``)."""
        prompt = {k: v for k, v in inputs.generate_kwargs.items() if k != "position_ids"}
        positions = inputs.generate_kwargs.get("position_ids")
        if positions is None:
            positions = generate_positions(prompt["attention_mask"])
        answers = [self.ends.reference_ids(self.tokenizer, reference) for reference in references]
        return teacher_forced_logprob(self.decoder, prompt, positions, answers, self.ends.pad_id)


def generate_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` position ids ``generate`` gives a left-padded prompt ``attention_mask [B, L]``: counted from each
    row's first real token, padding at 0."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


def cache_keyword(model: nn.Module) -> str:
    """The keyword ``model.forward`` takes its KV cache by (``past_key_values`` up to transformers 5.23, ``cache``
    from 5.24)."""
    parameters = inspect.signature(type(model).forward).parameters
    names = [name for name in CACHE_NAMES if name in parameters]
    if not names:
        raise ValueError(f"{type(model).__name__}.forward takes no KV cache; expected one of {list(CACHE_NAMES)}")
    return names[-1]


@torch.no_grad()
def teacher_forced_logprob(
    model: nn.Module, prompt: dict[str, Any], positions: torch.Tensor, answers: list[list[int]], pad_id: int
) -> torch.Tensor:
    """``[B]`` mean log-probability per token of each row's answer after its prompt, over the prompt's KV cache.

    Two forwards of ``model``, as ``generate`` runs it: the prompt's prefill into a fresh :class:`DynamicCache`
    (so an installed engine prunes it exactly as in ``generate``), then every answer token but the last over that
    cache at once, at the positions ``generate`` would give them (one past the prompt's last position per step,
    on every rotary axis). Answers are right-padded with ``pad_id`` and the padding masked out.

    Args:
        model: what ``generate`` is called on (a causal LM or a multimodal LM holding one).
        prompt: the prefill's keyword arguments as ``generate`` gets them (an adapter's ``generate_kwargs``, with
            ``attention_mask [B, L]``, left padding).
        positions: the prompt's position ids as ``generate`` derives them: ``[B, L]``, or ``[K, B, L]`` for
            multi-axis rotary positions (the Qwen2.5-Omni thinker's ``[4, B, L]``: text, then TMRoPE's three).
        answers: per row the answer's token ids, its end token included (at least one id each).
        pad_id: the id padding the shorter answers (never scored).
    """
    if not answers or min(len(row) for row in answers) == 0:
        raise ValueError("every answer needs at least one token (its end token); got an empty one")
    mask = prompt["attention_mask"]
    device, width = mask.device, max(len(row) for row in answers)
    targets = torch.full((len(answers), width), pad_id, dtype=torch.long, device=device)  # [B, W]
    counted = torch.zeros(len(answers), width, dtype=torch.bool, device=device)  # [B, W]
    for i, row in enumerate(answers):
        targets[i, : len(row)] = torch.tensor(row, device=device)
        counted[i, : len(row)] = True
    cache, cache_name = DynamicCache(), cache_keyword(model)
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(type(model).forward).parameters else {}
    prefill = model(**prompt, position_ids=positions, use_cache=True, **keep, **{cache_name: cache})
    logits = [prefill.logits[:, -1:]]  # [B, 1, V]: the last prompt token predicts the first answer token
    if width > 1:
        follow = positions[..., -1:] + torch.arange(1, width, device=device)  # [..., B, W - 1]
        continued = model(
            input_ids=targets[:, :-1], attention_mask=torch.cat([mask, counted[:, :-1].to(mask.dtype)], dim=1),
            position_ids=follow, use_cache=True, **{cache_name: cache},
        )  # fmt: skip
        logits.append(continued.logits)  # [B, W - 1, V]
    logprob = torch.log_softmax(torch.cat(logits, dim=1).float(), dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    return (logprob * counted).sum(1) / counted.sum(1)  # [B]
