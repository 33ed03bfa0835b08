"""The Qwen2.5-Omni adapter on a tiny random thinker: loading, media, layout, TMRoPE and answers vs the stock model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fastav_eval.models.base import Request, SampleError
from fastav_eval.models.qwen2_5_omni import OmniSample, Qwen25OmniAdapter
from fastav_eval.pruning import ModalityLayout, PrefixKeep, PruningConfig, PruningProfile, install
from tests.lmms.av_task_fixtures import write_clip, write_wav
from tests.models.omni_fixtures import save_checkpoint, tiny_processor, tiny_thinker

QUESTION = "what is in the video ?"


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("omni")
    return {
        "checkpoint": save_checkpoint(root / "checkpoint"),
        "clip2": write_clip(root / "clip2.mp4", 2),
        "clip4": write_clip(root / "clip4.mp4", 4, seed=1, frequency=660.0),
        "clip5": write_clip(root / "clip5.mp4", 5, seed=2, frequency=880.0),
        "silent": write_clip(root / "silent.mp4", 2, audio=False),
        "wav": write_wav(root / "tone.wav", 2.0),
    }


@pytest.fixture(autouse=True)
def _tiny_processor(monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setattr(Qwen25OmniAdapter, "load_processor", staticmethod(lambda pretrained: tiny_processor()))


def adapter(media, attn: str = "sdpa", dtype: torch.dtype = torch.float32, **options) -> Qwen25OmniAdapter:
    return Qwen25OmniAdapter(str(media["checkpoint"]), "cpu", dtype, attn, **options)


def chunks_follow_tmrope(model: Qwen25OmniAdapter, inputs) -> None:
    """The layout's chunks are the model's interleave: along each row, chunk labels never decrease (the thinker
    lays out [V_0][A_0][V_1][A_1]...), and each audio chunk covers at most 2 s of TMRoPE time (50 positions)."""
    kwargs, layout = inputs.generate_kwargs, inputs.layout
    positions, _ = model.model.get_rope_index(
        kwargs["input_ids"],
        video_grid_thw=kwargs.get("video_grid_thw"),
        attention_mask=kwargs["attention_mask"],
        use_audio_in_video=kwargs["use_audio_in_video"],
        audio_seqlens=kwargs["feature_attention_mask"].sum(-1),
        second_per_grids=kwargs.get("video_second_per_grid"),
    )
    for b in range(layout.batch_size):
        av = layout.modality[b] > 0
        labels = layout.chunk[b][av]
        assert bool((labels[1:] >= labels[:-1]).all()), b
        audio = layout.modality[b] == 2
        for chunk in layout.chunk[b][audio].unique().tolist():
            times = positions[0, b][audio & (layout.chunk[b] == chunk)]
            assert len(times) <= 50 and int(times.max() - times.min()) < 50, (b, chunk)
        visual = layout.modality[b] == 1  # each frame is one temporal grid: one TMRoPE time, later than the last's
        starts = [int(positions[0, b][visual & (layout.frame[b] == f)].min()) for f in layout.frame[b][visual].unique()]
        for frame in layout.frame[b][visual].unique().tolist():
            times = positions[0, b][visual & (layout.frame[b] == frame)]
            assert int(times.min()) == int(times.max()), (b, frame)
        assert starts == sorted(starts), b


def requests(model: Qwen25OmniAdapter, *visuals: list) -> list[OmniSample]:
    return [model.load_request(Request([str(v) for v in vs], QUESTION), i) for i, vs in enumerate(visuals)]


def stock_processed(sample: OmniSample, system_prompt: str) -> dict:
    """What the authors' recipe gives: the processor on the same media, audio from the video."""
    processor = tiny_processor()
    messages = [
        {"role": "system", "content": [{"type": "text", "text": system_prompt}]},
        {"role": "user", "content": [*sample.content, {"type": "text", "text": sample.prompt}]},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return dict(
        processor(
            text=[text],
            videos=sample.videos,
            audio=sample.audios,
            audio_from_video_indices=sample.audio_slots,
            load_audio_from_video=True,
            videos_kwargs={"fps": sample.video_rate},
            audio_kwargs={"truncation": False, "max_length": 480000},
            return_tensors="pt",
        )
    )


def test_the_thinker_loads_from_a_full_checkpoint_without_the_talker(media):
    model = adapter(media)
    reference = tiny_thinker()
    assert not any(name.startswith("talker") for name, _ in model.model.named_parameters())
    for (name, loaded), (_, expected) in zip(
        model.model.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        assert torch.equal(loaded, expected), name


def test_layout_marks_the_processors_tokens_in_the_models_time_chunks(media):
    """Each AV token's chunk is the 2-s window TMRoPE puts it in (its temporal position // 50)."""
    model = adapter(media)
    loaded = requests(model, [media["clip2"]], [media["clip4"]], [media["clip5"]])
    # An AAC-like padded soundtrack: 2.048 s of audio under 2 s of video -> 51 audio tokens, the last in chunk 1.
    loaded[0].audios[0] = np.concatenate([loaded[0].audios[0], np.zeros(768, np.float32)])
    model.finish(loaded[0], 0)
    inputs = model.prepare(loaded)
    kwargs, layout = inputs.generate_kwargs, inputs.layout
    config = model.model.config
    ids = {"video": [config.video_token_index], "audio": [config.audio_token_index]}
    expected = ModalityLayout.from_token_ids(kwargs["input_ids"], ids, kwargs["attention_mask"])
    assert torch.equal(layout.modality, expected.modality)
    positions, _ = model.model.get_rope_index(
        kwargs["input_ids"],
        video_grid_thw=kwargs["video_grid_thw"],
        attention_mask=kwargs["attention_mask"],
        use_audio_in_video=True,
        audio_seqlens=kwargs["feature_attention_mask"].sum(-1),
        second_per_grids=kwargs["video_second_per_grid"],
    )
    for b in range(3):
        av = layout.modality[b] > 0
        start = positions[0, b][av].min()
        assert torch.equal(layout.chunk[b][av], (positions[0, b][av] - start) // 50), b
    audio = layout.modality[0] == 2
    assert int(audio.sum()) == 51 and layout.chunk[0][audio].tolist() == [0] * 50 + [1]
    assert expected.chunk[0][audio].tolist() == [0] * 51, "contiguous runs alone would put it in chunk 0"
    assert [int(layout.count(m)[2]) for m in ("video", "audio")] == [80, 125]  # 5 s: 5 grids, 25 tokens/s


def last_logits(thinker, kwargs: dict, **overrides) -> torch.Tensor:
    """``[B, vocab]`` logits of each sample's first answer token (one prefill forward)."""
    return thinker(**{**kwargs, **overrides}).logits[:, -1]


def test_prune_none_answers_equal_the_stock_thinker(media):
    """The engine off, through the adapter: the stock thinker's logits and tokens on the processor's output with
    use_audio_in_video=True (its own recipe); the audio and the flag visibly move those logits."""
    model = adapter(media)
    install(model.decoder, PruningConfig.off())
    loaded = requests(model, [media["clip4"]])
    inputs = model.prepare(loaded)
    answer = model.generate(inputs, 8, [])[0]
    stock = tiny_thinker()
    processed = stock_processed(loaded[0], model.options["system_prompt"])
    expected = last_logits(stock, processed, use_audio_in_video=True)
    ours = last_logits(model.model, inputs.generate_kwargs)
    assert torch.allclose(ours, expected, atol=1e-5, rtol=0)
    silent = {"input_features": torch.zeros_like(processed["input_features"])}
    assert not torch.allclose(last_logits(stock, processed, use_audio_in_video=True, **silent), expected, atol=1e-5)
    assert not torch.allclose(last_logits(stock, processed, use_audio_in_video=False), expected, atol=1e-5)
    output = stock.generate(**processed, use_audio_in_video=True, max_new_tokens=8, do_sample=False)
    new = output[0, processed["input_ids"].shape[1] :].tolist()
    tokenizer = model.processor.tokenizer
    assert answer.num_tokens == len(new)
    assert answer.text == tokenizer.decode(new, skip_special_tokens=True).strip()


def test_text_positions_follow_tmrope_with_the_audio_interleaved(media):
    """Forgetting use_audio_in_video on the way to generate would move every position after the first chunk."""
    model = adapter(media)
    seen = []
    text_model = model.model.model.language_model
    handle = text_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["position_ids"]), with_kwargs=True
    )
    inputs = model.prepare(requests(model, [media["clip4"]]))
    model.generate(inputs, 2, [])
    handle.remove()
    kwargs = inputs.generate_kwargs
    rope = dict(
        video_grid_thw=kwargs["video_grid_thw"],
        attention_mask=kwargs["attention_mask"],
        audio_seqlens=kwargs["feature_attention_mask"].sum(-1),
        second_per_grids=kwargs["video_second_per_grid"],
    )
    with_audio, _ = model.model.get_rope_index(kwargs["input_ids"], use_audio_in_video=True, **rope)
    without, _ = model.model.get_rope_index(kwargs["input_ids"], use_audio_in_video=False, **rope)
    prefill = seen[0]
    assert prefill.shape[0] == 4 and torch.equal(prefill[1:], with_audio)
    assert not torch.equal(with_audio, without), "the control: the flag changes the positions"


def test_a_batch_of_two_equals_each_alone(media):
    """Left padding, collated media: each row's logits and answer as alone (different clips and soundtracks)."""
    model = adapter(media)
    install(model.decoder, PruningConfig.off())
    loaded = requests(model, [media["clip2"]], [media["clip5"]])
    batch = model.prepare(loaded)
    singles = [model.prepare([sample]) for sample in loaded]
    together = last_logits(model.model, batch.generate_kwargs)
    for row, single in enumerate(singles):
        assert torch.allclose(together[row], last_logits(model.model, single.generate_kwargs)[0], atol=1e-5, rtol=0)
    kwargs = batch.generate_kwargs
    silenced = kwargs["input_features"].clone()
    silenced[1] = 0  # the second clip's soundtrack only: its row must move, the first must not
    moved = last_logits(model.model, kwargs, input_features=silenced)
    assert not torch.allclose(moved[1], together[1], atol=1e-5) and torch.allclose(moved[0], together[0], atol=1e-5)
    assert model.generate(batch, 6, []) == [model.generate(single, 6, [])[0] for single in singles]


def test_fastav_never_drops_text_or_the_last_token(media):
    model = adapter(media)
    profile = PruningProfile(keep={"video": PrefixKeep(first_chunks=1), "audio": PrefixKeep(first_chunks=1)})
    engine = install(model.decoder, PruningConfig(global_layer=2, profile=profile, fine_ratio=0.3))
    inputs = model.prepare(requests(model, [media["clip4"]], [media["clip2"]]))
    with engine.layout(inputs.layout):
        answers = model.generate(inputs, 4, [])
    assert all(answer.num_tokens > 0 for answer in answers)
    for b in range(2):
        kept = engine.last_stats.sample(b, engine.shape).kept_per_layer
        assert kept["text"] == [int(inputs.layout.count("text")[b])] * 4
        assert kept["video"][2] == 32 and kept["audio"][2] == 50  # the first 2-s chunk of each modality
        assert kept["audio"][-1] < 50
    assert engine.last_stats.sample(0, engine.shape).relative_flops_exact < 100


def test_a_clip_without_sound_fails_its_sample_unless_asked_otherwise(media):
    with pytest.raises(SampleError, match=r"silent\.mp4 has no audio track.*video_audio=if_present"):
        requests(adapter(media), [media["silent"]])
    relaxed = adapter(media, video_audio="if_present")
    inputs = relaxed.prepare(requests(relaxed, [media["silent"]]))
    assert int(inputs.layout.count("audio")[0]) == 0 and int(inputs.layout.count("video")[0]) == 32
    assert inputs.generate_kwargs["use_audio_in_video"] is False
    deaf = adapter(media, video_audio="off")
    assert int(deaf.prepare(requests(deaf, [media["clip2"]])).layout.count("audio")[0]) == 0


def test_standalone_audio_from_a_file_or_an_array(media):
    model = adapter(media)
    wave = np.sin(np.arange(44100 * 2) / 10).astype(np.float32)
    loaded = [
        model.load_request(Request([str(media["wav"])], "what sound ?"), 0),
        model.load_request(Request([{"array": wave, "sampling_rate": 44100}], "what sound ?"), 1),
    ]
    inputs = model.prepare(loaded)
    assert inputs.layout.count("audio").tolist() == [50, 50] and inputs.layout.count("video").tolist() == [0, 0]
    assert len(model.generate(inputs, 3, [])) == 2


def test_sdpa_and_eager_give_the_same_answers(media):
    answers = []
    for attn in ("sdpa", "eager"):
        model = adapter(media, attn)
        install(model.decoder, PruningConfig.off())
        answers.append(model.generate(model.prepare(requests(model, [media["clip4"]])), 6, []))
    assert answers[0] == answers[1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"video_audio": "maybe"}, r"video_audio='maybe'; accepted: \['required', 'if_present', 'off'\]"),
        ({"max_frames": 7}, r"max_frames=7; accepted: an even int >= 2"),
        ({"fps": "fast"}, r"fps='fast'; accepted: a float"),
        ({"frames": 8}, r"unknown model arg\(s\) \['frames'\]"),
    ],
)
def test_bad_model_args_name_the_field(media, options, message):
    with pytest.raises(ValueError, match=message):
        adapter(media, **options)


def test_unreadable_visuals_name_the_request_and_the_reason(media, tmp_path):
    model = adapter(media)
    with pytest.raises(SampleError, match=r"request 0: visual 0: .*missing\.mp4 does not exist"):
        model.load_request(Request([str(tmp_path / "missing.mp4")], QUESTION), 0)
    with pytest.raises(SampleError, match=r"request 3: visual 0: a int is not a visual"):
        model.load_request(Request([3], QUESTION), 3)


def test_videos_of_one_prompt_share_one_frame_rate(media):
    """4 s and 5 s clips with max_frames=8: both sampled at 1.6 fps, timed at 1.25 s per grid, chunked as the model."""
    model = adapter(media, max_frames=8)
    sample = model.load_request(Request([str(media["clip4"]), str(media["clip5"])], QUESTION), 0)
    assert sample.video_rate == pytest.approx(1.6) and [len(v) for v in sample.videos] == [6, 8]
    inputs = model.prepare([sample])
    assert inputs.generate_kwargs["video_second_per_grid"].tolist() == pytest.approx([1.25, 1.25])
    chunks_follow_tmrope(model, inputs)


def test_bfloat16_keeps_the_grid_timing_exact(media):
    """A 1.6-fps rate (1.25 s per grid) is exact in float32; the pixels go bf16, the timing must not."""
    model = adapter(media, dtype=torch.bfloat16, max_frames=8)
    inputs = model.prepare(requests(model, [media["clip5"]]))
    kwargs = inputs.generate_kwargs
    assert kwargs["pixel_values_videos"].dtype == torch.bfloat16
    assert kwargs["video_second_per_grid"].dtype == torch.float32
    chunks_follow_tmrope(model, inputs)
    assert len(model.generate(inputs, 2, [])) == 1


def test_a_soundtrack_over_30_s_next_to_a_wav(media, tmp_path):
    """Whisper's extractor pads to 30 s; a longer track and a short wav in one prompt are padded to the longest."""
    long_clip = write_clip(tmp_path / "long.mp4", 35, fps=2, size=56)
    model = adapter(media, max_frames=4)
    inputs = model.prepare([model.load_request(Request([str(long_clip), str(media["wav"])], QUESTION), 0)])
    assert int(inputs.layout.count("audio")[0]) == 35 * 25 + 50
    chunks_follow_tmrope(model, inputs)
    assert len(model.generate(inputs, 2, [])) == 1


def test_frames_are_the_ones_on_screen_at_each_sampled_time(tmp_path):
    """1-fps clip sampled at 2 fps: frame k is the one shown at (k + 0.5) / 2 s, i.e. source frame k // 2 (the
    next frame, k // 2 + 1, is not yet on screen)."""
    import av

    from fastav_eval.models.media import sample_frames

    clip = write_clip(tmp_path / "one.mp4", 4, fps=1)
    with av.open(str(clip)) as container:
        every = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    sampled = sample_frames(clip, 2.0, 64)
    assert sampled.fps == 2.0 and len(sampled.frames) == 8
    for k, frame in enumerate(sampled.frames):
        assert np.array_equal(frame, every[k // 2]), k


def test_frame_times_count_from_the_streams_start(tmp_path):
    """A stream whose first frame is at 2 s: sampled time 0.25 s is 0.25 s into it (frame 1 of 4 per second), not
    the first frame for every time before 2 s."""
    from fractions import Fraction

    import av

    from fastav_eval.models.media import sample_frames

    path = tmp_path / "late.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=4)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for index in range(16):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 15 * index, np.uint8), format="rgb24")
            frame.pts, frame.time_base = 8 + index, Fraction(1, 4)  # from 2.0 s to 5.75 s
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    sampled = sample_frames(path, 2.0, 64)
    assert len(sampled.frames) == 8
    brightness = [int(frame.mean()) for frame in sampled.frames]
    assert brightness == pytest.approx([15 * (2 * k + 1) for k in range(8)], abs=4), brightness


def test_a_rate_the_processor_and_the_thinker_chunk_apart_is_nudged(media, tmp_path):
    """48.64 s: at max_frames / duration one grid lands on a 2-s boundary, in float64 for the processor and
    float32 for the thinker; the adapter lowers the rate until both put the tokens in the same chunks."""
    model = adapter(media)
    clip = write_clip(tmp_path / "edge.mp4", 48.64, fps=25, size=56)
    sample = model.load_request(Request([str(clip)], QUESTION), 0)
    assert sample.video_rate < 64 / 48.64
    chunks_follow_tmrope(model, model.prepare([sample]))


def test_unreadable_media_and_prompts_past_the_context_fail_their_sample(media, tmp_path):
    model = adapter(media)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    with pytest.raises(SampleError, match=r"visual 0: .*junk\.png"):
        model.load_request(Request([str(junk)], QUESTION), 0)
    from PIL import Image

    Image.new("RGB", (1, 400)).save(tmp_path / "sliver.png")  # an aspect ratio the image processor refuses
    with pytest.raises(SampleError, match=r"the processor refused it: ValueError"):
        model.load_request(Request([str(tmp_path / "sliver.png")], QUESTION), 0)
    model.model.config.get_text_config().max_position_embeddings = 120
    with pytest.raises(SampleError, match=r"reaches position \d+ .*past the thinker's context of 120"):
        model.load_request(Request([str(media["clip4"])], QUESTION), 0)


# ---------------------------------------------------------------------------------------------- reference_logprob
REFERENCES = ["a dog", "yes the cat and a bird , no car"]  # 2 and 9 words (+ <|im_end|>)


def answer_ids(model: Qwen25OmniAdapter, reference: str) -> list[int]:
    tokenizer = model.processor.tokenizer
    return [*tokenizer(reference, add_special_tokens=False).input_ids, tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_reference_logprob_is_minus_the_teacher_forced_loss(media):
    """Oracle: the stock thinker's own loss over one forward of [prompt + answer] per sample, its TMRoPE positions
    computed by the thinker over the whole sequence (no cache, no padding)."""
    model = adapter(media)
    loaded = requests(model, [media["clip2"]], [media["clip5"]])
    inputs = model.prepare(loaded)
    assert inputs.generate_kwargs["attention_mask"].sum(1).unique().numel() == 2  # left padding in play
    logprob = model.reference_logprob(inputs, REFERENCES)
    assert logprob.shape == (2,)
    for i, (sample, reference) in enumerate(zip(loaded, REFERENCES, strict=True)):
        kwargs = model.prepare([sample]).generate_kwargs
        answer = torch.tensor([answer_ids(model, reference)])
        ids = torch.cat([kwargs["input_ids"], answer], 1)
        labels = torch.cat([torch.full_like(kwargs["input_ids"], -100), answer], 1)
        with torch.no_grad():
            loss = model.model(**{**kwargs, "input_ids": ids, "attention_mask": torch.ones_like(ids)}, labels=labels)
        assert float(logprob[i]) == pytest.approx(-float(loss.loss), abs=1e-4), i


def test_reference_logprob_of_a_batch_of_two_equals_each_alone(media):
    model = adapter(media)
    loaded = requests(model, [media["clip2"]], [media["clip5"]])
    together = model.reference_logprob(model.prepare(loaded), REFERENCES)
    pairs = zip(loaded, REFERENCES, strict=True)
    alone = torch.cat([model.reference_logprob(model.prepare([sample]), [r]) for sample, r in pairs])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_reference_logprob_under_fastav_is_the_masked_recompute_of_the_pruned_prompt(media):
    """Through the runner with both stages on: the value moves, and equals the thinker's stock layers over [prompt
    + answer] (TMRoPE positions from get_rope_index over the whole sequence) with each layer's keys limited to what
    the engine kept (``pruning.oracle``), answer tokens seen."""
    from fastav_eval.evaluation import PrunedRunner
    from fastav_eval.pruning.oracle import kept_masks, masked_decoder

    model = adapter(media)
    loaded = requests(model, [media["clip2"]], [media["clip5"]])
    inputs = model.prepare(loaded)
    unpruned = model.reference_logprob(inputs, REFERENCES)
    profile = PruningProfile(keep={"video": PrefixKeep(first_chunks=1), "audio": PrefixKeep(first_chunks=1)})
    text_model = model.model.model.language_model
    embeds = []  # what the thinker hands its text model: the prefill's merged embeddings, then the answer's
    hook = text_model.register_forward_pre_hook(
        lambda _module, _args, kwargs: embeds.append(kwargs["inputs_embeds"]), with_kwargs=True
    )
    runner = PrunedRunner(model, PruningConfig(global_layer=2, profile=profile, fine_ratio=0.3), "fastav")
    try:
        scored = runner.score_references(loaded, REFERENCES)
        stats = runner.engine.last_stats
    finally:
        runner.close()
        hook.remove()
    pruned = torch.tensor([value for value, _ in scored])
    assert stats.kv_positions[-1].shape[1] < stats.kv_positions[0].shape[1]  # the prefill was pruned
    assert all(record.relative_flops < 100 for _, record in scored)
    assert not torch.allclose(pruned, unpruned, atol=1e-3)

    kwargs, length = inputs.generate_kwargs, inputs.layout.length
    answers = [answer_ids(model, reference) for reference in REFERENCES]
    width = max(len(a) for a in answers)
    ids = torch.tensor([a + [a[-1]] * (width - len(a)) for a in answers])  # [B, W], right-padded
    answer_mask = torch.tensor([[1] * len(a) + [0] * (width - len(a)) for a in answers])
    full_ids = torch.cat([kwargs["input_ids"], ids[:, :-1]], 1)
    full_mask = torch.cat([kwargs["attention_mask"], answer_mask[:, :-1]], 1)
    positions, _ = model.model.get_rope_index(
        full_ids,
        video_grid_thw=kwargs["video_grid_thw"],
        attention_mask=full_mask,
        use_audio_in_video=True,
        audio_seqlens=kwargs["feature_attention_mask"].sum(-1),
        second_per_grids=kwargs["video_second_per_grid"],
    )
    hidden_in = torch.cat(embeds, 1)  # [B, L + W - 1, D]
    assert hidden_in.shape[1] == full_ids.shape[1]
    visible = [
        torch.cat([m, torch.ones(2, width - 1, dtype=torch.bool)], 1) for m in kept_masks(stats.kv_positions, length)
    ]
    with torch.no_grad():
        hidden, _ = masked_decoder(text_model, hidden_in, positions, visible, full_mask)
        logits = model.model.lm_head(hidden[:, length - 1 :]).float()  # [B, W, V]
    logprob = torch.log_softmax(logits, -1).gather(-1, ids[..., None]).squeeze(-1)
    expected = (logprob * answer_mask).sum(1) / answer_mask.sum(1)
    torch.testing.assert_close(pruned, expected, atol=1e-4, rtol=0)


def test_an_in_memory_video_is_sampled_as_its_file_is(media):
    """AV-Synth's in-memory video ({type: video, frames, fps}): the frames on screen at each sampled time, exactly
    those sample_frames takes from the same frames in a file (here: the file's own decoded frames)."""
    import av

    from fastav_eval.models.media import sample_frames, sample_frames_in_memory

    with av.open(str(media["clip5"])) as container:
        every = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    video = {"type": "video", "frames": every, "fps": 8.0}  # write_clip's default rate
    for rate, limit in ((2.0, 64), (3.0, 64), (2.0, 6), (0.1, 64)):
        expected = sample_frames(media["clip5"], rate, limit)
        sampled = sample_frames_in_memory(video, rate, limit)
        assert sampled.fps == expected.fps == rate
        assert np.array_equal(sampled.frames, expected.frames), (rate, limit)


def test_avsynth_media_are_a_video_without_soundtrack_and_a_separate_audio(media):
    """AV-Synth's request ([in-memory video, audio dict]): the processor's ids on the same frames and audio, the
    video block then the audio block (nothing interleaved, use_audio_in_video off), and the stock thinker's logits."""
    from fastav_eval.avsynth import build_documents
    from fastav_eval.avsynth.dataset import request_visuals

    model = adapter(media)
    install(model.decoder, PruningConfig.off())
    document = build_documents("val", "avsynth_qa", 1)[0]
    loaded = model.load_request(Request(request_visuals(document), QUESTION), 0)
    assert [item["type"] for item in loaded.content] == ["video", "audio"] and not loaded.audio_in_video
    assert loaded.video_rate == 2.0 and loaded.videos[0].shape[0] == 4  # a 2-s clip at 2 fps
    inputs = model.prepare([loaded])
    layout = inputs.layout
    assert layout.count("video").item() > 0 and layout.count("audio").item() == 50  # 2 s of audio
    video, audio = (torch.nonzero(layout.modality[0] == code).flatten() for code in (1, 2))
    assert int(video.max()) < int(audio.min())  # not interleaved
    processor = tiny_processor()
    messages = [
        {"role": "system", "content": [{"type": "text", "text": model.options["system_prompt"]}]},
        {"role": "user", "content": [{"type": "video"}, {"type": "audio"}, {"type": "text", "text": QUESTION}]},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    processed = dict(
        processor(
            text=[text], videos=loaded.videos, audio=loaded.audios, videos_kwargs={"fps": 2.0},
            audio_kwargs={"truncation": False, "max_length": 480000}, return_tensors="pt",
        )
    )  # fmt: skip
    assert torch.equal(inputs.generate_kwargs["input_ids"], processed["input_ids"])
    expected = last_logits(tiny_thinker(), processed, use_audio_in_video=False)
    assert torch.allclose(last_logits(model.model, inputs.generate_kwargs), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("video", "message"),
    [
        ({"type": "video", "frames": np.zeros((4, 8, 8, 3), np.float32), "fps": 2}, "uint8"),
        ({"type": "video", "frames": np.zeros((4, 8, 8, 3), np.uint8)}, "lacks \\['fps'\\]"),
        ({"type": "video", "frames": np.zeros((4, 8, 8, 3), np.uint8), "fps": 0}, "'fps'=0"),
    ],
)
def test_a_malformed_in_memory_video_fails_its_sample_naming_the_field(media, video, message):
    with pytest.raises(SampleError, match=message):
        adapter(media).load_request(Request([video], QUESTION), 0)
