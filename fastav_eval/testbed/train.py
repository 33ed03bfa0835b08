"""Train the testbed on an endless AV-Synth stream: a seeded, single-process CPU run with a progress bar.

Curriculum in three phases: for the first ``curriculum_steps`` only single-sense questions (what colour / shape
is seen, what is heard, how many sounds), so both encoders learn to name what they perceive; then every kind, the
cross-modal ones (match, sounding object, captions) weighted up (``ALL_KINDS``); for the last ``late_steps`` the
kinds that learn last (seen-object hallucination, sound order, colour of the ⟨shape⟩) weighted up
(``LATE_KINDS``). The learning rate is flat after a short warm-up. Each sample drops
its video or its audio tokens with probability ``modality_dropout``, so that leaving a modality out at test time is
a fair probe (the model has seen it and learned to fall back to the answer prior).

Real AV-LLMs start from pretrained encoders (CLIP, BEATs). The testbed trains its encoders from scratch, so small
*perception heads* (training only, not saved) ask the mean of each encoder's tokens to name what is in the clip:
the visible colours, shapes and (colour, shape) pairs, the heard colours and the number of sounds. Their loss is
added to the answer loss with weight ``perception_weight``; without them the decoder sat at chance for the first
~600 steps. The pairs ask the video encoder to bind each colour to its shape; the decoder still answers some
binding questions from the colour alone (``benchmarks/avsynth_binding_errors.py`` shows where).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from fastav_eval.avsynth.dataset import DEFAULT_SEED, build_documents, training_stream
from fastav_eval.avsynth.questions import KINDS, TASKS, make_example
from fastav_eval.avsynth.scene import Scene
from fastav_eval.avsynth.world import COLOURS, MAX_EVENTS, NUMBER_WORDS, SHAPES
from fastav_eval.plots import plot_training_log
from fastav_eval.testbed.model import ANSWER_CUE, PREFIX, TestbedConfig, TestbedModel, media_tensors
from fastav_eval.testbed.tokenizer import WordTokenizer

log = logging.getLogger(__name__)

SINGLE_SENSE = {"qa_colour": 1.0, "qa_shape": 1.0, "qa_count": 1.0, "qa_order": 1.0, "sound_colour": 1.0,
                "halluc_sound": 1.0, "halluc_visible": 1.0}  # fmt: skip
ALL_KINDS = {**SINGLE_SENSE, "sound_colour": 0.5, "match": 2.5, "qa_sounding": 1.5, "caption": 1.0}
LATE_KINDS = {**ALL_KINDS, "halluc_visible": 4.0, "qa_order": 3.0, "qa_colour": 3.0, "halluc_sound": 2.0,
              "qa_shape": 2.0}  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 6500
    batch_size: int = 16
    learning_rate: float = 7e-4
    warmup_steps: int = 100
    curriculum_steps: int = 800
    late_steps: int = 2500
    perception_weight: float = 1.0
    modality_dropout: float = 0.1
    seed: int = 0
    eval_every: int = 500
    eval_docs_per_task: int = 96
    threads: int = 2


PAIRS = [(colour, shape) for colour in COLOURS for shape in SHAPES]


class PerceptionHeads(nn.Module):
    """Training-only probes on the mean encoder token: video -> visible colours, shapes and (colour, shape) pairs
    (multi-hot), audio -> heard colours (multi-hot) and the number of sounds (0..3)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.video = nn.Linear(hidden_size, len(COLOURS) + len(SHAPES) + len(PAIRS))
        self.audio = nn.Linear(hidden_size, len(COLOURS) + MAX_EVENTS + 1)

    @staticmethod
    def targets(documents: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``seen [B, 4 + 3 + 12]`` (colours, shapes, pairs) and ``heard [B, 4]`` multi-hot floats, ``count [B]``
        long."""
        seen, heard, count = [], [], []
        for doc in documents:
            scene = Scene.from_json(doc["scene"])
            seen.append(
                [float(scene.visible(c)) for c in COLOURS]
                + [float(any(o.shape == s for o in scene.objects)) for s in SHAPES]
                + [float(scene.visible(c, s)) for c, s in PAIRS]
            )
            heard.append([float(scene.event_count(c) > 0) for c in COLOURS])
            count.append(len(scene.events))
        return torch.tensor(seen), torch.tensor(heard), torch.tensor(count)

    def loss(self, video_tokens: torch.Tensor, audio_tokens: torch.Tensor, documents: list[dict]) -> torch.Tensor:
        seen, heard, count = self.targets(documents)
        video_logits = self.video(video_tokens.mean(1))
        audio_logits = self.audio(audio_tokens.mean(1))
        bce = nn.functional.binary_cross_entropy_with_logits
        return (
            bce(video_logits, seen)
            + bce(audio_logits[:, : len(COLOURS)], heard)
            + nn.functional.cross_entropy(audio_logits[:, len(COLOURS) :], count)
        )


def build_vocabulary() -> WordTokenizer:
    """Every word AV-Synth can produce: colours, shapes, numbers, and all question and caption templates."""
    rng = np.random.default_rng(0)
    texts = [PREFIX, ANSWER_CUE, *COLOURS, *SHAPES, *NUMBER_WORDS]
    for kind in KINDS:
        for _ in range(200):
            example = make_example(kind, rng)
            texts += [example["question"], example["answer"]]
    return WordTokenizer.from_texts(texts)


@torch.no_grad()
def first_word_accuracy(model: TestbedModel, documents: list[dict], batch_size: int = 96) -> dict[str, float]:
    """Teacher-forced accuracy of the first answer word per kind (a cheap training-time monitor, not the benchmark)."""
    model.eval()
    hits: dict[str, list[bool]] = {}
    for start in range(0, len(documents), batch_size):
        batch = documents[start : start + batch_size]
        prepared = model.prepare(*media_tensors(batch), [d["question"] for d in batch], [d["answer"] for d in batch])
        logits = model.decoder(inputs_embeds=prepared.inputs_embeds, attention_mask=prepared.attention_mask).logits
        first = (prepared.labels != -100).int().argmax(dim=1)
        predicted = logits[torch.arange(len(batch)), first].argmax(-1)
        target = prepared.labels[torch.arange(len(batch)), first]
        for doc, ok in zip(batch, (predicted == target).tolist(), strict=True):
            hits.setdefault(doc["kind"], []).append(ok)
    model.train()
    return {kind: float(np.mean(values)) for kind, values in sorted(hits.items())}


@torch.enable_grad()  # whatever the caller's grad mode (pytest runs everything under no_grad)
def train(out_dir: str | Path, config: TrainConfig = TrainConfig()) -> TestbedModel:
    """Train from scratch, deterministically from ``config.seed``, and save to ``out_dir`` (weights, config,
    tokenizer, ``train_log.jsonl``, ``training_curves.png``); the model is saved at every evaluation, so a stopped
    run leaves its last one."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    tokenizer = build_vocabulary()
    model = TestbedModel(TestbedConfig(vocab_size=len(tokenizer)), tokenizer).train()
    heads = PerceptionHeads(model.config.hidden_size)
    parameters_to_train = [*model.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(parameters_to_train, lr=config.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / config.warmup_steps))
    eval_docs = [
        doc
        for task in sorted(TASKS)
        if task != "avsynth_caption"
        for doc in build_documents("val", task, config.eval_docs_per_task, DEFAULT_SEED)
    ]
    dropout_rng = np.random.default_rng([config.seed, 7])
    late_start = config.steps - config.late_steps
    phases = {
        "single": training_stream(SINGLE_SENSE, seed=config.seed),
        "all": training_stream(ALL_KINDS, seed=config.seed + 1),
        "late": training_stream(LATE_KINDS, seed=config.seed + 2),
    }
    parameters = sum(p.numel() for p in model.parameters())
    log.info("training %d parameters for %d steps, %s", parameters, config.steps, asdict(config))
    started = time.time()
    with (out_dir / "train_log.jsonl").open("w") as log_file:
        log_file.write(json.dumps({"event": "config", "parameters": parameters, **asdict(config)}) + "\n")
        progress = tqdm(range(config.steps), desc="train testbed", unit="step")
        for step in progress:
            phase = "single" if step < config.curriculum_steps else "late" if step >= late_start else "all"
            batch = [next(phases[phase]) for _ in range(config.batch_size)]
            use_video = (dropout_rng.random(len(batch)) >= config.modality_dropout).tolist()
            use_audio = (dropout_rng.random(len(batch)) >= config.modality_dropout).tolist()
            prepared = model.prepare(
                *media_tensors(batch),
                [d["question"] for d in batch],
                [d["answer"] for d in batch],
                use_video,
                use_audio,
            )
            answer_loss = model.loss(prepared)
            perception_loss = heads.loss(prepared.video_tokens, prepared.audio_tokens, batch)
            loss = answer_loss + config.perception_weight * perception_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters_to_train, 1.0)
            optimizer.step()
            schedule.step()
            record = {
                "event": "step",
                "step": step,
                "phase": phase,
                "loss": round(answer_loss.item(), 5),
                "perception_loss": round(perception_loss.item(), 5),
                "elapsed_s": round(time.time() - started, 1),
            }
            log_file.write(json.dumps(record) + "\n")
            progress.set_postfix(
                loss=f"{answer_loss.item():.3f}",
                perception=f"{perception_loss.item():.3f}",
                phase=phase,
            )
            if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                accuracy = first_word_accuracy(model, eval_docs)
                log_file.write(
                    json.dumps({"event": "eval", "step": step + 1, "val_first_word_accuracy": accuracy}) + "\n"
                )
                log_file.flush()
                log.info("step %d: %s", step + 1, " ".join(f"{k}={v:.2f}" for k, v in accuracy.items()))
                model.save(out_dir)
    plot_training_log(out_dir / "train_log.jsonl", out_dir / "training_curves.png")
    return model.eval()
