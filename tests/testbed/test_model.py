"""The testbed model: layout, modality removal, save/load round trip, tokenizer errors, and the shipped weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fastav_eval.avsynth import build_documents
from fastav_eval.avsynth.scene import Scene, SoundEvent, VisibleObject
from fastav_eval.pruning import Modality
from fastav_eval.testbed import WEIGHTS_DIR, TestbedConfig, TestbedModel, WordTokenizer
from fastav_eval.testbed.model import media_tensors
from fastav_eval.testbed.train import PAIRS, PerceptionHeads, TrainConfig, build_vocabulary, train


def tiny_testbed(seed: int = 0) -> TestbedModel:
    torch.manual_seed(seed)
    tokenizer = build_vocabulary()
    config = TestbedConfig(vocab_size=len(tokenizer), hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                           intermediate_size=64, encoder_channels=16)  # fmt: skip
    return TestbedModel(config, tokenizer).eval()


def test_layout_is_prefix_video_audio_question_left_padded():
    model = tiny_testbed()
    docs = build_documents("val", "avsynth_qa", 2)
    prepared = model.prepare(*media_tensors(docs), [d["question"] for d in docs])
    layout, config = prepared.layout, model.config
    for row, doc in enumerate(docs):
        codes = layout.modality[row][layout.valid[row]].tolist()
        question = len(doc["question"].split()) + 2  # + "answer :"
        expected = [Modality.TEXT] * 3 + [Modality.VIDEO] * config.video_tokens + [Modality.AUDIO] * config.audio_tokens
        assert codes == [int(m) for m in expected] + [int(Modality.TEXT)] * question
    assert config.video_tokens == 128 and config.audio_tokens == 144
    assert (prepared.attention_mask.sum(1) == layout.valid.sum(1)).all()


def test_leaving_a_modality_out_removes_its_tokens():
    model = tiny_testbed()
    docs = build_documents("val", "avsynth_match", 3)
    full = model.prepare(*media_tensors(docs), [d["question"] for d in docs])
    no_audio = model.prepare(*media_tensors(docs), [d["question"] for d in docs], use_audio=[False, True, False])
    counts = (no_audio.layout.modality == int(Modality.AUDIO)).sum(1).tolist()
    assert counts == [0, 144, 0]
    assert (no_audio.attention_mask.sum(1) == full.attention_mask.sum(1) - torch.tensor([144, 0, 144])).all()


def test_labels_mark_the_answer_tokens_and_eos():
    model = tiny_testbed()
    docs = build_documents("val", "avsynth_caption", 2)
    prepared = model.prepare(*media_tensors(docs), [d["question"] for d in docs], [d["answer"] for d in docs])
    for row, doc in enumerate(docs):
        labels = prepared.labels[row][prepared.labels[row] != -100].tolist()
        assert labels == [*model.tokenizer.encode(doc["answer"]), model.tokenizer.eos_id]
    assert torch.isfinite(model.loss(prepared))


def test_save_load_round_trip_gives_identical_answers_and_logits(tmp_path):
    model = tiny_testbed(seed=3)
    docs = build_documents("val", "avsynth_qa", 4)
    prepared = model.prepare(*media_tensors(docs), [d["question"] for d in docs])
    loaded = TestbedModel.load(model.save(tmp_path))
    again = loaded.prepare(*media_tensors(docs), [d["question"] for d in docs])
    torch.testing.assert_close(again.inputs_embeds, prepared.inputs_embeds, rtol=0, atol=0)
    logits = model.decoder(inputs_embeds=prepared.inputs_embeds, attention_mask=prepared.attention_mask).logits
    reloaded = loaded.decoder(inputs_embeds=again.inputs_embeds, attention_mask=again.attention_mask).logits
    torch.testing.assert_close(reloaded, logits, rtol=0, atol=0)
    assert loaded.decoder.lm_head.weight.data_ptr() == loaded.decoder.get_input_embeddings().weight.data_ptr()
    assert loaded.generate(again, 5) == model.generate(prepared, 5)


def test_bfloat16_model_runs_with_float32_log_mel():
    model = tiny_testbed().to(torch.bfloat16)
    docs = build_documents("val", "avsynth_match", 2)
    prepared = model.prepare(*media_tensors(docs), [d["question"] for d in docs])
    assert prepared.inputs_embeds.dtype == torch.bfloat16
    assert len(model.generate(prepared, 2)) == 2


def test_load_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        TestbedModel.load(tmp_path)


def test_tokenizer_refuses_words_outside_the_vocabulary(tmp_path):
    tokenizer = build_vocabulary()
    assert (
        tokenizer.decode(tokenizer.encode("is there a red circle in the video ?"))
        == "is there a red circle in the video ?"
    )
    with pytest.raises(ValueError, match="purple"):
        tokenizer.encode("is there a purple circle ?")
    tokenizer.save(tmp_path / "t.json")
    assert WordTokenizer.load(tmp_path / "t.json").words == tokenizer.words


def test_shipped_weights_answer_the_test_split():
    """A regression guard on the committed weights (docs/avsynth.md has the full evaluation)."""
    model = TestbedModel.load(WEIGHTS_DIR)
    docs = build_documents("test", "avsynth_qa", 40)
    answers = model.generate(model.prepare(*media_tensors(docs), [d["question"] for d in docs]), max_new_tokens=4)
    accuracy = np.mean([a == d["answer"] for a, d in zip(answers, docs, strict=True)])
    assert accuracy >= 0.75, accuracy


def test_training_runs_its_three_phases_and_saves_a_loadable_model(tmp_path):
    """A 3-step run: one step per curriculum phase, then the saved model answers like the one in memory."""
    config = TrainConfig(steps=3, batch_size=2, curriculum_steps=1, late_steps=1, eval_every=100, eval_docs_per_task=2)
    model = train(tmp_path, config)
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records if r["event"] == "step"] == ["single", "all", "late"]
    assert [r["step"] for r in records if r["event"] == "eval"] == [3]
    assert (tmp_path / "training_curves.png").stat().st_size > 0
    docs = build_documents("test", "avsynth_match", 2)
    prepared = model.prepare(*media_tensors(docs), [d["question"] for d in docs])
    reloaded = TestbedModel.load(tmp_path)
    assert reloaded.generate(reloaded.prepare(*media_tensors(docs), [d["question"] for d in docs])) == (
        model.generate(prepared)
    )


def test_perception_targets_name_each_visible_colour_shape_pair():
    """A red square and a blue circle: the pair targets must not also claim a red circle or a blue square."""
    objects = (VisibleObject("red", "square", 8, 16, 6, 0, 7), VisibleObject("blue", "circle", 24, 16, 6, 0, 7))
    events = (SoundEvent("green", "circle", 0.2, 0.3), SoundEvent("green", "circle", 1.2, 0.3))
    seen, heard, count = PerceptionHeads.targets([{"scene": Scene(objects, events, noise_seed=0).to_json()}])
    colours, shapes, pairs = seen[0, :4].tolist(), seen[0, 4:7].tolist(), seen[0, 7:].tolist()
    assert colours == [1.0, 0.0, 1.0, 0.0]  # red, green, blue, yellow
    assert shapes == [1.0, 1.0, 0.0]  # circle, square, triangle
    assert {PAIRS[i] for i, on in enumerate(pairs) if on} == {("red", "square"), ("blue", "circle")}
    assert heard[0].tolist() == [0.0, 1.0, 0.0, 0.0] and count.tolist() == [2]


def test_reference_logprob_equals_the_teacher_forced_loss():
    """The adapter's reference log-probability (prefill, then the answer over the cache) is minus the per-sample
    cross-entropy of the model's own training loss (the answer inside one sequence)."""
    import numpy as np
    import torch

    from fastav_eval.avsynth import build_documents
    from fastav_eval.avsynth.dataset import load_media
    from fastav_eval.models.testbed import TestbedAdapter
    from fastav_eval.testbed import WEIGHTS_DIR, TestbedModel

    model = TestbedModel.load(WEIGHTS_DIR)
    adapter = TestbedAdapter(model=model)
    documents = build_documents("val", "avsynth_qa", 2) + build_documents("val", "avsynth_caption", 1)
    loaded = [(*load_media(doc), doc["question"]) for doc in documents]
    logprob = adapter.reference_logprob(adapter.prepare(loaded), [doc["answer"] for doc in documents])
    frames = torch.from_numpy(np.stack([item[0] for item in loaded]))
    waveform = torch.from_numpy(np.stack([item[1] for item in loaded]))
    for i, doc in enumerate(documents):
        with torch.no_grad():
            prepared = model.prepare(frames[i : i + 1], waveform[i : i + 1], [doc["question"]], [doc["answer"]])
            loss = model.loss(prepared)
        assert float(logprob[i]) == pytest.approx(-float(loss), abs=1e-4)
