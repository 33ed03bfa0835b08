"""``fastav_video_salmonn2_plus`` against what the official video-SALMONN 2+ code computed on the same tiny weights
(tests/fixtures/video_salmonn2_plus_tiny: its README says how the official code ran): the prompt ids, both kinds of
M-RoPE positions and their decode deltas, the vision tower, Whisper, the Q-Former, the audio tokens, the merged
``inputs_embeds``, the logits of the text after the block, every decode step's logits and the greedy answers; from
the official inputs (its log-mels) and from each clip through our own media path (a 10-s clip, an odd 1.5-s one and
an 80-s one with 3 audio chunks)."""

from __future__ import annotations

import pytest
import torch

from fastav_eval.models.base import Request
from fastav_eval.models.video_salmonn2_plus_model import official_positions, trained_positions
from fastav_eval.pruning import Modality
from tests.models.video_salmonn2_fixtures import (
    PLUS_FIXTURE,
    PLUS_META,
    has_plus_ref,
    official_audio_feature,
    plus_ref,
    tiny_plus_adapter,
)

CASES = ("clip10s", "odd", "long")
QUESTION = PLUS_META["question"]
MODES = {"b": "official_inference", "a": "trained"}  # the fixture's mode letter -> positions=
POSITION_FUNCTIONS = {"b": official_positions, "a": trained_positions}


@pytest.fixture(scope="module")
def adapters():
    return {mode: tiny_plus_adapter(positions=name) for mode, name in MODES.items()}


def our_sample(adapter, case: str):
    """The clip through our media path (PyAV frames and soundtrack)."""
    clip = PLUS_FIXTURE / PLUS_META["cases"][case]["file"]
    return adapter.load_request(Request([str(clip)], QUESTION), 0)


def official_sample(adapter, case: str):
    """The official inputs: its log-mels in place of ours (its frames are ours to the bit: test_..._plus_media)."""
    sample = our_sample(adapter, case)
    sample.spectrogram = official_audio_feature(case)
    return sample


@pytest.mark.parametrize("case", CASES)
def test_prompt_ids_grid_and_layout_are_the_official_ones(adapters, case):
    meta = PLUS_META["cases"][case]
    sample = our_sample(adapters["b"], case)
    assert torch.equal(sample.input_ids, plus_ref(case, "input_ids")[0])
    assert list(sample.grid) == plus_ref(case, "video_grid_thw")[0].tolist()
    assert list(sample.block.audio_per_grid) == meta["audio_tokens_per_grid_official"]
    assert sample.block.start == meta["first_video_pad_index"]
    layout = adapters["b"].prepare([sample]).layout
    modality, chunk = layout.modality[0], layout.chunk[0]
    av = modality != Modality.TEXT
    starts = [int(((chunk == t) & av).nonzero()[0]) for t in range(len(meta["grid_starts"]))]
    assert starts == meta["grid_starts"]  # each grid's chunk starts at its first video pad, cut by count
    runs = [(kind, start, length) for kind, start, length in meta["runs"]]
    codes = {"text": Modality.TEXT, "video": Modality.VIDEO, "audio": Modality.AUDIO}
    for kind, start, length in runs:
        assert (modality[start : start + length] == codes[kind]).all(), (kind, start)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode", sorted(MODES))
def test_positions_and_decode_deltas_are_the_official_ones(adapters, case, mode):
    sample = our_sample(adapters[mode], case)
    positions = POSITION_FUNCTIONS[mode](len(sample.input_ids), sample.block)
    assert torch.equal(positions, plus_ref(case, f"position_ids_mode_{mode}")[:, 0])
    delta = int(positions.max()) + 1 - len(sample.input_ids)
    assert delta == int(plus_ref(case, f"rope_deltas_mode_{mode}"))
    # generate continues every axis from the prompt's last position: the official cache_position + delta
    assert int(positions[:, -1].min()) + 1 == len(sample.input_ids) + delta
    batch = adapters[mode].prepare([sample]).generate_kwargs["position_ids"]
    assert torch.equal(batch[1:, 0], positions) and torch.equal(batch[0, 0], torch.arange(len(sample.input_ids)))


@pytest.mark.parametrize("case", CASES)
def test_towers_and_audio_branch_are_the_official_ones(adapters, case):
    model = adapters["b"].model
    sample = our_sample(adapters["b"], case)
    feature = official_audio_feature(case)
    with torch.no_grad():
        video = model.encode_video(sample.pixel_values, sample.grid)
        hidden = model.audio.encoder(feature).last_hidden_state
        audio = model.encode_audio(feature)
        ours = model.encode_audio(sample.spectrogram)
    torch.testing.assert_close(video, plus_ref(case, "visual"), atol=1e-5, rtol=1e-5)
    if has_plus_ref(case, "audio_encoder_out"):
        torch.testing.assert_close(hidden, plus_ref(case, "audio_encoder_out"), atol=1e-5, rtol=1e-5)
    expected = plus_ref(case, "audio")
    torch.testing.assert_close(audio, expected.flatten(0, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours, expected.flatten(0, 1), atol=1e-4, rtol=1e-4)  # PyAV's downmix: 9e-8 apart


@pytest.mark.parametrize("case", CASES)
def test_qformer_output_is_the_official_one(adapters, case):
    branch = adapters["b"].model.audio
    with torch.no_grad():
        hidden = branch.encoder(official_audio_feature(case)).last_hidden_state
        windows = hidden.unfold(1, branch.window, branch.stride).permute(0, 1, 3, 2).flatten(0, 1)
        queries = branch.q_tokens.expand(len(windows), -1, -1)
        out = branch.qformer(query_embeds=queries, encoder_hidden_states=windows).last_hidden_state
    torch.testing.assert_close(out, plus_ref(case, "audio_qformer_out"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode", sorted(MODES))
def test_inputs_embeds_and_logits_are_the_official_ones(adapters, case, mode):
    adapter = adapters[mode]
    for sample in (official_sample(adapter, case), our_sample(adapter, case)):
        inputs = adapter.prepare([sample])
        torch.testing.assert_close(
            inputs.generate_kwargs["inputs_embeds"], plus_ref(case, "inputs_embeds"), atol=1e-5, rtol=1e-5
        )
        with torch.no_grad():
            logits = adapter.decoder(**inputs.generate_kwargs).logits[0]
        torch.testing.assert_close(logits[-1], plus_ref(case, f"logits_last_mode_{mode}"), atol=1e-4, rtol=0)
        torch.testing.assert_close(logits[-12:], plus_ref(case, f"logits_tail_mode_{mode}"), atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(("mode", "penalty"), [("b", 1.0), ("b", 1.05), ("a", 1.0)])
def test_every_decode_step_and_the_greedy_answer_are_the_official_ones(adapters, case, mode, penalty):
    """Each step's raw logits (so the decode positions are the official cache_position + delta), then the adapter's
    own generate and answer decoding."""
    adapter = adapters[mode]
    suffix = f"mode_{mode}" + ("_rep105" if penalty != 1.0 else "")
    expected = plus_ref(case, f"greedy_{suffix}").tolist()
    inputs = adapter.prepare([official_sample(adapter, case)])
    with torch.no_grad():
        out = adapter.decoder.generate(
            **inputs.generate_kwargs,
            max_new_tokens=len(expected),
            do_sample=False,
            repetition_penalty=penalty,
            eos_token_id=adapter.ends.stop_ids,
            pad_token_id=adapter.ends.pad_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
    prompt_length = inputs.generate_kwargs["input_ids"].shape[1]  # generate returns the prompt's ids first
    assert out.sequences[0, prompt_length:].tolist() == expected
    steps = torch.cat(out.logits)  # [8, V], before the penalty processor
    torch.testing.assert_close(steps, plus_ref(case, f"step_logits_{suffix}"), atol=1e-4, rtol=0)
    adapter.repetition_penalty = penalty
    try:
        answer = adapter.generate(adapter.prepare([our_sample(adapter, case)]), len(expected), [])[0]
    finally:
        adapter.repetition_penalty = 1.0
    assert (answer.text, answer.num_tokens) == (adapter.tokenizer.decode(expected).strip(), len(expected))


def test_the_checkpoint_has_no_repetition_penalty_and_the_adapter_reads_it(adapters):
    assert adapters["b"].repetition_penalty == 1.0  # the tiny generation_config.json holds none
    assert tiny_plus_adapter(repetition_penalty=1.05).repetition_penalty == 1.05


def test_the_repetition_penalty_covers_the_prompt_as_the_official_generate(adapters):
    """The official generate gets the prompt's input_ids, so transformers' penalty also lowers every prompt token;
    oracle: the first step's processed scores are the penalty applied over the prompt ids to the raw logits."""
    from transformers import RepetitionPenaltyLogitsProcessor

    adapter = adapters["b"]
    inputs = adapter.prepare([our_sample(adapter, "clip10s")])
    with torch.no_grad():
        out = adapter.decoder.generate(
            **inputs.generate_kwargs, max_new_tokens=1, do_sample=False, repetition_penalty=3.0,
            output_logits=True, output_scores=True, return_dict_in_generate=True,
        )  # fmt: skip
    prompt = inputs.generate_kwargs["input_ids"]
    expected = RepetitionPenaltyLogitsProcessor(3.0)(prompt, out.logits[0].clone())
    torch.testing.assert_close(out.scores[0], expected)
    assert not torch.equal(out.scores[0], out.logits[0])
