"""``fastav_videollama2``'s adapter: layout, the paper's pruning on it, prune=none, batches, loading, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from fastav_eval.models.base import Request, SampleError
from fastav_eval.models.checkpoint import mlp_gelu
from fastav_eval.models.model_args import pruning_config
from fastav_eval.models.stc_connector import STCConnectorV35
from fastav_eval.models.videollama2 import PLACEHOLDER, VideoLLaMA2Adapter
from fastav_eval.models.videollama2_model import VideoLLaMA2Spec, load_videollama2
from fastav_eval.pruning import Modality, install, relative_flops, simulate_prefill
from fastav_eval.pruning.presets import get_preset
from tests.models.embeds_adapter_checks import (
    assert_a_batch_of_two_equals_each_alone,
    assert_engine_off_is_the_stock_model,
    assert_sdpa_answers_as_eager,
)
from tests.models.videollama2_fixtures import FIXTURE, VISION_TOWER, tiny_adapter

QUESTION = "What is making the sound in the video?"
VIDEO_TOKENS, AUDIO_TOKENS = 18, 1496  # 4 frames of 7×7 patches -> 2×3×3; 30 s -> 187×8


@pytest.fixture(scope="module")
def adapter():
    return tiny_adapter()


def load(adapter, *visuals, prompt: str = QUESTION):
    return adapter.load_request(Request([str(v) if not isinstance(v, dict) else v for v in visuals], prompt), 0)


def test_layout_marks_the_video_then_the_audio_tokens_at_the_placeholder(adapter):
    sample = load(adapter, FIXTURE / "clip.mp4")
    at = sample.input_ids.tolist().index(PLACEHOLDER)
    inputs = adapter.prepare([sample])
    codes = inputs.layout.modality[0].tolist()
    expected = (
        [Modality.TEXT] * at
        + [Modality.VIDEO] * VIDEO_TOKENS
        + [Modality.AUDIO] * AUDIO_TOKENS
        + [Modality.TEXT] * (len(sample.input_ids) - at - 1)
    )
    assert codes == [int(c) for c in expected]
    embeds = inputs.generate_kwargs["inputs_embeds"][0]
    with torch.no_grad():  # the rows the layout calls video / audio are the encoders' tokens, in their order
        video = adapter.model.encode_video(sample.pixel_values[None])[0]
        audio = adapter.model.encode_audio(sample.fbank[None])[0]
    assert torch.equal(embeds[at : at + VIDEO_TOKENS], video)
    assert torch.equal(embeds[at + VIDEO_TOKENS : at + VIDEO_TOKENS + AUDIO_TOKENS], audio)
    # frames: the STC connector's time steps (each from one pair of input frames): changing input frames 2 and 3
    # changes exactly the tokens the layout calls frame 1
    frame = inputs.layout.frame[0][at : at + VIDEO_TOKENS]
    assert frame.max().item() + 1 == sample.pixel_values.shape[0] // 2
    changed = sample.pixel_values.clone()
    changed[2:4] = changed[2:4].flip(-1)
    with torch.no_grad():
        moved = (adapter.model.encode_video(changed[None])[0] - video).abs().amax(-1) > 0
    assert torch.equal(moved, frame == 1)


def test_the_papers_global_rule_keeps_the_first_10_audio_tokens_and_every_video_token():
    model = tiny_adapter()
    config = pruning_config("fastav", {"fine_ratio": 0.0}, VideoLLaMA2Adapter.default_profile(None))
    engine = install(model.decoder, config)
    assert engine.config.global_layer == 2  # half of the tiny LLM's 4 layers (14 of 28 on the real one)
    sample = load(model, FIXTURE / "clip.mp4")
    at = sample.input_ids.tolist().index(PLACEHOLDER)
    inputs = model.prepare([sample])
    with engine.layout(inputs.layout):
        answer = model.generate(inputs, 4, [])[0]
    assert answer.num_tokens > 0
    kept = engine.last_stats.kv_positions[2][0].tolist()
    audio_start = at + VIDEO_TOKENS
    length = inputs.layout.length
    assert kept == [*range(audio_start + 10), *range(audio_start + AUDIO_TOKENS, length)]


def test_the_fine_stage_never_drops_text_and_flops_match_the_schedule():
    model = tiny_adapter()
    config = pruning_config("fastav", {}, VideoLLaMA2Adapter.default_profile(None))  # the paper's P = 0.2
    engine = install(model.decoder, config)
    inputs = model.prepare([load(model, FIXTURE / "clip.mp4"), load(model, FIXTURE / "clip_long.mp4", prompt="Hi?")])
    with engine.layout(inputs.layout):
        model.generate(inputs, 2, [])
    stats = engine.last_stats
    text = inputs.layout.count("text")
    for b in range(2):
        summary = stats.sample(b, engine.shape)
        assert summary.kept_per_layer["text"] == [int(text[b])] * 4
        assert summary.kept_per_layer["audio"][:3] == [AUDIO_TOKENS, AUDIO_TOKENS, 10]
    simulated = simulate_prefill(inputs.layout, engine.config, 4)  # what `fastav-eval flops` runs
    assert torch.equal(simulated.tokens_per_layer, stats.tokens_per_layer)
    assert torch.equal(relative_flops(simulated.tokens_per_layer, engine.shape), stats.relative_flops(engine.shape))


def test_the_real_layout_is_the_16_frame_preset():
    preset = get_preset("videollama2_16f")
    counts = dict(preset.run()["prompt_tokens"])
    assert counts["video"] == STCConnectorV35.num_tokens(16, 384 // 14) == 1352
    assert counts["audio"] == (2998 // 16) * (128 // 16) == 1496


def test_prune_none_equals_the_model_without_the_engine():
    assert_engine_off_is_the_stock_model(tiny_adapter, FIXTURE / "clip.mp4", QUESTION)


def test_a_batch_of_two_equals_each_alone(adapter):
    assert_a_batch_of_two_equals_each_alone(adapter, (FIXTURE / "clip.mp4", FIXTURE / "clip_long.mp4"), QUESTION)


def test_sdpa_and_eager_give_the_same_answer():
    assert_sdpa_answers_as_eager(tiny_adapter, FIXTURE / "clip.mp4", QUESTION)


def test_media_combinations(adapter, tmp_path):
    from tests.lmms.av_task_fixtures import write_png, write_wav

    wav, png = tmp_path / "a.wav", tmp_path / "a.png"
    write_wav(wav, seconds=1.0)
    write_png(png)
    video_and_audio = load(adapter, FIXTURE / "clip.mp4", wav)  # the task's audio replaces the soundtrack
    own = load(adapter, FIXTURE / "clip.mp4")
    assert video_and_audio.fbank.shape == own.fbank.shape and not torch.equal(video_and_audio.fbank, own.fbank)
    still = load(adapter, png, wav)
    assert still.pixel_values.shape[0] == 4 and torch.equal(still.pixel_values[0], still.pixel_values[3])
    audio_only = load(adapter, wav)
    assert audio_only.pixel_values is None and "<audio>" not in adapter.tokenizer.decode(audio_only.input_ids[:1])
    inputs = adapter.prepare([audio_only])
    assert int(inputs.layout.count("audio")[0]) == AUDIO_TOKENS and int(inputs.layout.count("video")[0]) == 0
    array = load(adapter, FIXTURE / "clip.mp4", {"array": [0.0] * 8000, "sampling_rate": 8000})
    assert array.fbank.shape == (2998, 128)


def test_video_audio_modes():
    with pytest.raises(SampleError, match="has no audio track"):
        load(tiny_adapter(), FIXTURE / "silent.mp4")
    lenient = load(tiny_adapter(video_audio="if_present"), FIXTURE / "silent.mp4")
    assert lenient.fbank is not None and torch.all(lenient.fbank == lenient.fbank[0, 0])  # 30 s of silence
    muted = tiny_adapter(video_audio="off")
    sample = load(muted, FIXTURE / "clip.mp4")
    assert sample.fbank is None and int(muted.prepare([sample]).layout.count("audio")[0]) == 0


@pytest.mark.parametrize(
    ("visuals", "message"),
    [
        (["clip.mp4", "clip_long.mp4"], r"visuals \[0, 1\]: VideoLLaMA2 takes one video or image per prompt"),
        (["missing.mp4"], "does not exist"),
        ([], "no video, image or audio"),
    ],
)
def test_unanswerable_requests_name_the_reason(adapter, visuals, message):
    with pytest.raises(SampleError, match=message):
        load(adapter, *[FIXTURE / v for v in visuals])


def test_a_question_with_its_own_modal_tag_fails_its_sample(adapter):
    with pytest.raises(SampleError, match="modal tag"):  # a SampleError: on_error=record records it and goes on
        load(adapter, FIXTURE / "clip.mp4", prompt="<video>\nWhat is this?")


def test_half_precision_runs_end_to_end():
    model = VideoLLaMA2Adapter(str(FIXTURE), "cpu", torch.bfloat16, "sdpa", vision_tower=str(VISION_TOWER))
    inputs = model.prepare([load(model, FIXTURE / "clip.mp4")])
    assert inputs.generate_kwargs["inputs_embeds"].dtype == torch.bfloat16
    assert model.generate(inputs, 3, [])[0].num_tokens == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [({"video_audio": "always"}, "accepted"), ({"num_frames": 3}, "even int"), ({"fps": 2}, "unknown model arg")],
)
def test_bad_model_args_name_the_field(args, message):
    with pytest.raises(ValueError, match=message):
        tiny_adapter(**args)


def copy_fixture(tmp_path):
    folder = tmp_path / "checkpoint"
    shutil.copytree(FIXTURE, folder, ignore=shutil.ignore_patterns("*.mp4", "reference.*"))
    return folder


def test_a_missing_or_unexpected_tensor_is_an_error_naming_it(tmp_path):
    folder = copy_fixture(tmp_path)
    tensors = load_file(folder / "model.safetensors")
    missing = dict(tensors)
    del missing["model.mm_projector.s1.b1.se.fc1.bias"]
    save_file(missing, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing model\.mm_projector\.s1\.b1\.se\.fc1\.bias"):
        load_videollama2(folder, vision_tower=str(VISION_TOWER), dtype=torch.float32)
    extra = {**tensors, "model.audio_tower.extra.weight": torch.zeros(2)}
    save_file(extra, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"unexpected model\.audio_tower\.extra\.weight"):
        load_videollama2(folder, vision_tower=str(VISION_TOWER), dtype=torch.float32)
    stray = {**tensors, "model.talker.weight": torch.zeros(2)}
    save_file(stray, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"unexpected tensor\(s\) \['model\.talker\.weight'\]"):
        load_videollama2(folder, vision_tower=str(VISION_TOWER), dtype=torch.float32)
    llm_missing = dict(tensors)
    del llm_missing["lm_head.weight"]
    save_file(llm_missing, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lm_head\.weight"):
        load_videollama2(folder, vision_tower=str(VISION_TOWER), dtype=torch.float32)


def test_the_shared_position_table_may_be_stored_once_and_copies_must_agree(tmp_path):
    folder = copy_fixture(tmp_path)
    tensors = load_file(folder / "model.safetensors")
    key = "model.audio_tower.encoder.layers.{}.self_attn.relative_attention_bias.weight"
    once = {k: v for k, v in tensors.items() if k != key.format(1)}
    save_file(once, folder / "model.safetensors", metadata={"format": "pt"})
    model = load_videollama2(folder, vision_tower=str(VISION_TOWER), dtype=torch.float32)
    table = model.audio_tower.encoder.layers[1].self_attn.relative_attention_bias.weight
    assert torch.equal(table, tensors[key.format(0)])
    save_file(
        {**tensors, key.format(1): tensors[key.format(1)] + 1}, folder / "model.safetensors", metadata={"format": "pt"}
    )
    with pytest.raises(ValueError, match=r"layers\.1\.self_attn\.relative_attention_bias\.weight differs"):
        load_videollama2(folder, vision_tower=str(VISION_TOWER), dtype=torch.float32)


def test_official_defaults_for_keys_a_config_may_lack():
    config = json.loads((FIXTURE / "config.json").read_text())
    del config["num_frames"], config["mm_projector_a_type"]
    spec = VideoLLaMA2Spec.from_config(config)
    assert spec.num_frames == 8 and spec.audio_projector_depth == 0  # the official NUM_FRAMES, a linear projector
    assert isinstance(mlp_gelu(spec.audio_projector_depth, 32, 64), torch.nn.Linear)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"mm_projector_type": "stc_connector"},
            "mm_projector_type='stc_connector'; accepted: \\['stc_connector_v35'\\]",
        ),
        ({"model_type": "qwen2"}, "model_type='qwen2'"),
        ({"num_frames": 5}, "num_frames=5"),
    ],
)
def test_a_config_this_model_was_not_written_for_is_refused(tmp_path, change, message):
    folder = copy_fixture(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match=message):
        load_videollama2(folder, vision_tower=str(VISION_TOWER), dtype=torch.float32)


# ---------------------------------------------------------------------------------------------- reference_logprob
REFERENCES = ["A dog barks.", "The red car drives past while its engine roars loudly."]  # 5 and 11 tokens


def reference_batch(adapter):
    """Two samples of different prompt lengths (the batch is left-padded) and their references."""
    return [load(adapter, FIXTURE / "clip.mp4"), load(adapter, FIXTURE / "clip_long.mp4", prompt="Which one?")]


def answer_ids(adapter, reference: str) -> list[int]:
    return [*adapter.tokenizer(reference, add_special_tokens=False).input_ids, adapter.tokenizer.eos_token_id]


def test_reference_logprob_is_minus_the_teacher_forced_loss(adapter):
    """Oracle: the stock LLM's own loss over one forward of [prompt + answer] per sample (no cache, no padding)."""
    samples = reference_batch(adapter)
    inputs = adapter.prepare(samples)
    assert inputs.generate_kwargs["attention_mask"].sum(1).unique().numel() == 2  # left padding in play
    assert adapter.tokenizer.eos_token == "<|im_end|>"
    logprob = adapter.reference_logprob(inputs, REFERENCES)
    assert logprob.shape == (2,)
    llm = adapter.model.llm
    for i, (sample, reference) in enumerate(zip(samples, REFERENCES, strict=True)):
        prompt = adapter.prepare([sample]).generate_kwargs["inputs_embeds"]  # [1, L, D]
        answer = torch.tensor([answer_ids(adapter, reference)])
        with torch.no_grad():
            embeds = torch.cat([prompt, llm.get_input_embeddings()(answer)], 1)
            labels = torch.cat([torch.full((1, prompt.shape[1]), -100), answer], 1)
            loss = llm(inputs_embeds=embeds, labels=labels).loss
        assert float(logprob[i]) == pytest.approx(-float(loss), abs=1e-4), i


def test_reference_logprob_of_a_batch_of_two_equals_each_alone(adapter):
    samples = reference_batch(adapter)
    together = adapter.reference_logprob(adapter.prepare(samples), REFERENCES)
    pairs = zip(samples, REFERENCES, strict=True)
    alone = torch.cat([adapter.reference_logprob(adapter.prepare([s]), [r]) for s, r in pairs])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_reference_logprob_under_fastav_is_the_masked_recompute_of_the_pruned_prompt():
    """Through the runner with the paper's pruning: the value moves, and equals the stock layers over [prompt +
    answer] with each layer's keys limited to what the engine kept (``pruning.oracle``), answer tokens seen."""
    from fastav_eval.evaluation import PrunedRunner
    from fastav_eval.pruning.oracle import kept_masks, masked_decoder

    model = tiny_adapter()
    samples = reference_batch(model)
    inputs = model.prepare(samples)
    unpruned = model.reference_logprob(inputs, REFERENCES)
    runner = PrunedRunner(model, pruning_config("fastav", {}, VideoLLaMA2Adapter.default_profile(None)), "fastav")
    try:
        scored = runner.score_references(samples, REFERENCES)
        stats = runner.engine.last_stats
    finally:
        runner.close()
    pruned = torch.tensor([value for value, _ in scored])
    assert stats.kv_positions[-1].shape[1] < stats.kv_positions[0].shape[1]  # the prefill was pruned
    assert all(record.relative_flops < 100 for _, record in scored)
    assert not torch.allclose(pruned, unpruned, atol=1e-3)

    mask, length = inputs.generate_kwargs["attention_mask"], inputs.layout.length
    answers = [answer_ids(model, reference) for reference in REFERENCES]
    width = max(len(a) for a in answers)
    ids = torch.tensor([a + [a[-1]] * (width - len(a)) for a in answers])  # [B, W], right-padded
    answer_mask = torch.tensor([[1] * len(a) + [0] * (width - len(a)) for a in answers])
    llm = model.model.llm
    with torch.no_grad():
        embeds = torch.cat([inputs.generate_kwargs["inputs_embeds"], llm.get_input_embeddings()(ids)], 1)
        full_mask = torch.cat([mask, answer_mask], 1)
        positions = (full_mask.cumsum(-1) - 1).clamp_min(0)
        visible = [
            torch.cat([m, torch.ones(2, width, dtype=torch.bool)], 1) for m in kept_masks(stats.kv_positions, length)
        ]
        hidden, _ = masked_decoder(llm.model, embeds, positions, visible, full_mask)
        logits = llm.lm_head(hidden[:, length - 1 : length + width - 1]).float()  # [B, W, V]
    logprob = torch.log_softmax(logits, -1).gather(-1, ids[..., None]).squeeze(-1)
    expected = (logprob * answer_mask).sum(1) / answer_mask.sum(1)
    torch.testing.assert_close(pruned, expected, atol=1e-4, rtol=0)
