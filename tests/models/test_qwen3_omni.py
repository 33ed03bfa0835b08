"""The Qwen3-Omni adapter on a tiny random thinker (mixture of experts, DeepStack): loading, the token-by-token
audio-in-video layout, the processor's timing, answers and reference scores against the stock thinker."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fastav_eval.models.base import Request, SampleError
from fastav_eval.models.qwen2_5_omni import OmniSample
from fastav_eval.models.qwen3_omni import Qwen3OmniAdapter
from fastav_eval.pruning import ModalityLayout, PrefixKeep, PruningConfig, PruningProfile, install
from tests.lmms.av_task_fixtures import write_clip
from tests.models.qwen3_omni_fixtures import save_checkpoint, tiny_processor, tiny_thinker

QUESTION = "what is in the video ?"
REFERENCES = ["a dog", "yes"]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qwen3_omni")
    return {
        "checkpoint": save_checkpoint(root / "checkpoint"),
        "clip4": write_clip(root / "clip4.mp4", 4, seed=1, frequency=660.0),
        "clip5": write_clip(root / "clip5.mp4", 5, seed=2, frequency=880.0),
        "silent": write_clip(root / "silent.mp4", 2, audio=False),
    }


@pytest.fixture(autouse=True)
def _tiny_processor(monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setattr(Qwen3OmniAdapter, "load_processor", staticmethod(lambda pretrained: tiny_processor()))


def adapter(media, attn: str = "sdpa", **options) -> Qwen3OmniAdapter:
    return Qwen3OmniAdapter(str(media["checkpoint"]), "cpu", torch.float32, attn, **options)


def requests(model: Qwen3OmniAdapter, *clips: Path) -> list[OmniSample]:
    return [model.load_request(Request([str(clip)], QUESTION), i) for i, clip in enumerate(clips)]


def rope(model: Qwen3OmniAdapter, kwargs: dict) -> torch.Tensor:
    """``[3, B, L]``: the thinker's own positions for a batch."""
    return model.rope_positions(kwargs, kwargs["use_audio_in_video"])


def test_the_thinker_loads_from_a_full_checkpoint_without_the_talker(media):
    model = adapter(media)
    for (name, loaded), (_, expected) in zip(
        model.model.state_dict().items(), tiny_thinker().state_dict().items(), strict=True
    ):
        assert torch.equal(loaded, expected), name


def test_layout_is_the_processors_tokens_one_chunk_per_grid(media):
    """Modalities exactly the processor's ids; grid t's video tokens and the audio tokens the thinker times before
    grid t + 1 are chunk t (oracle: the thinker's own temporal positions)."""
    model = adapter(media)
    inputs = model.prepare(requests(model, media["clip4"], media["clip5"]))
    kwargs, layout = inputs.generate_kwargs, inputs.layout
    config = model.model.config
    ids = {"video": [config.video_token_id], "audio": [config.audio_token_id]}
    expected = ModalityLayout.from_token_ids(kwargs["input_ids"], ids, kwargs["attention_mask"])
    assert torch.equal(layout.modality, expected.modality)
    positions = rope(model, kwargs)[0]  # [B, L] temporal positions
    for b, grids in ((0, 4), (1, 5)):
        video, audio = layout.modality[b] == 1, layout.modality[b] == 2
        grid_times = positions[b][video].view(grids, -1)[:, 0]  # each grid's tokens share its time
        assert layout.chunk[b][video].tolist() == [t for t in range(grids) for _ in range(9)]
        for t in range(grids):
            times = positions[b][audio & (layout.chunk[b] == t)]
            assert bool((times >= grid_times[t]).all()), (b, t)
            if t + 1 < grids:
                assert bool((times < grid_times[t + 1]).all()), (b, t)
        assert int(audio.sum()) == 13 * (grids + 0)  # 13 audio tokens per second


def test_the_processor_is_given_the_thinkers_timing(media, tmp_path):
    """A thinker timed at 25 positions per second (transformers' config default) against the processor's default
    13: the adapter passes the thinker's, so the processor's order is the thinker's; left at 13 it is not."""
    import json

    folder = save_checkpoint(tmp_path / "checkpoint25")
    config = json.loads((folder / "config.json").read_text())
    config["thinker_config"]["position_id_per_seconds"] = 25
    (folder / "config.json").write_text(json.dumps(config))
    model = Qwen3OmniAdapter(str(folder), "cpu", torch.float32, "sdpa")
    sample = requests(model, media["clip4"])[0]
    ids = sample.processed["input_ids"][0].tolist()
    assert model._segments_match(ids, sample.segments)
    model.processor_options = lambda: {}  # the processor's own default (13)
    with pytest.raises(SampleError, match="the processor and the thinker chunk its frames differently"):
        model.finish(sample, 0)


def test_prune_none_answers_equal_the_stock_thinker(media):
    model = adapter(media)
    install(model.decoder, PruningConfig.off())
    inputs = model.prepare(requests(model, media["clip4"]))
    stock = tiny_thinker()
    kwargs = inputs.generate_kwargs
    output = stock.generate(**kwargs, max_new_tokens=6, do_sample=False)
    new = output[0, kwargs["input_ids"].shape[1] :].tolist()
    answer = model.generate(inputs, 6, [])[0]
    assert answer.text == model.processor.tokenizer.decode(new, skip_special_tokens=True).strip()
    with torch.no_grad():
        ours = model.model(**kwargs).logits[:, -1]
        expected = stock(**kwargs).logits[:, -1]
        without_audio = stock(**{**kwargs, "use_audio_in_video": False}).logits[:, -1]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(without_audio, expected, atol=1e-5)  # the flag matters


def test_a_batch_of_two_equals_each_alone(media):
    model = adapter(media)
    loaded = requests(model, media["clip4"], media["clip5"])
    together = model.generate(model.prepare(loaded), 6, [])
    assert together == [model.generate(model.prepare([sample]), 6, [])[0] for sample in loaded]


def test_the_first_4_frames_rule_keeps_the_first_2_grids(media):
    model = adapter(media)
    keep = PruningProfile(keep={"video": PrefixKeep(first_chunks=2), "audio": PrefixKeep(first_chunks=2)})
    engine = install(model.decoder, PruningConfig(global_layer=2, profile=keep, fine_ratio=0.0))
    inputs = model.prepare(requests(model, media["clip5"]))
    with engine.layout(inputs.layout):
        model.generate(inputs, 2, [])
    kept = set(engine.last_stats.kv_positions[2][0].tolist())
    layout = inputs.layout
    av = (layout.modality[0] > 0).nonzero().flatten().tolist()
    assert {p for p in av if p in kept} == {p for p in av if int(layout.chunk[0][p]) < 2}
    assert all(p in kept for p in (layout.modality[0] == 0).nonzero().flatten().tolist())


@pytest.mark.parametrize("fps", [2.0, 1.5])
def test_reference_logprob_is_minus_the_teacher_forced_loss(media, fps):
    """Oracle: the stock thinker's loss over one forward of [prompt + answer] per sample (its positions computed
    over the whole sequence, no cache, no padding); a batch equals each alone. At 1.5 fps the grids' temporal
    positions are fractional (2/1.5 s · 13 per second), which the scoring must keep as generate does."""
    model = adapter(media, fps=fps)
    loaded = requests(model, media["clip4"], media["clip5"])
    logprob = model.reference_logprob(model.prepare(loaded), REFERENCES)
    tokenizer = model.processor.tokenizer
    for i, (sample, reference) in enumerate(zip(loaded, REFERENCES, strict=True)):
        kwargs = model.prepare([sample]).generate_kwargs
        answer = torch.tensor([model.ends.reference_ids(tokenizer, reference)])
        ids = torch.cat([kwargs["input_ids"], answer], 1)
        labels = torch.cat([torch.full_like(kwargs["input_ids"], -100), answer], 1)
        with torch.no_grad():
            loss = model.model(**{**kwargs, "input_ids": ids, "attention_mask": torch.ones_like(ids)}, labels=labels)
        assert float(logprob[i]) == pytest.approx(-float(loss.loss), abs=1e-4), i
    pairs = zip(loaded, REFERENCES, strict=True)
    alone = torch.cat([model.reference_logprob(model.prepare([s]), [r]) for s, r in pairs])
    torch.testing.assert_close(logprob, alone, atol=1e-5, rtol=0)


def test_a_silent_clip_and_a_wrong_checkpoint_are_refused_naming_why(media, tmp_path):
    model = adapter(media)
    with pytest.raises(SampleError, match=r"has no audio track.*video_audio=if_present"):
        requests(model, media["silent"])
    quiet = adapter(media, video_audio="if_present")
    sample = requests(quiet, media["silent"])[0]
    assert not sample.audio_in_video and quiet.generate(quiet.prepare([sample]), 2, [])[0].num_tokens > 0
    from tests.models.omni_fixtures import save_checkpoint as save_qwen2_5_omni

    other = save_qwen2_5_omni(tmp_path / "qwen2_5_omni")
    with pytest.raises(ValueError, match="'qwen2_5_omni' checkpoint; accepted: qwen3_omni_moe"):
        Qwen3OmniAdapter(str(other), "cpu", torch.float32, "sdpa")


def test_sdpa_and_eager_give_the_same_answers(media):
    """Through the engine with both stages on (the scored attention wraps each kernel)."""
    keep = PruningProfile(keep={"video": PrefixKeep(first_chunks=1), "audio": PrefixKeep(first_chunks=1)})
    answers = []
    for attn in ("sdpa", "eager"):
        model = adapter(media, attn)
        engine = install(model.decoder, PruningConfig(global_layer=1, profile=keep, fine_ratio=0.3))
        inputs = model.prepare(requests(model, media["clip4"], media["clip5"]))
        with engine.layout(inputs.layout):
            answers.append(model.generate(inputs, 6, []))
    assert answers[0] == answers[1]
