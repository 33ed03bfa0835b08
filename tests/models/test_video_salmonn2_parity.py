"""``fastav_video_salmonn2`` against what the official video-SALMONN 2 code computed on the same tiny weights
(tests/fixtures/video_salmonn2_tiny: its README says how the official code ran): frames, pixels, log-mels, each
module's output, the prompt ids both ways the official code builds them, the spliced layout, the first answer
token's logits and the greedy answers, from the official inputs (its wav) and from the clip through our media path.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fastav_eval.models.base import Request
from fastav_eval.models.video_salmonn2 import PLACEHOLDER, VideoSALMONN2Sample, video_frames
from fastav_eval.pruning import Modality
from tests.models.video_salmonn2_fixtures import FIXTURE, tiny_adapter

REFERENCE = load_file(FIXTURE / "reference.safetensors")
META = json.loads((FIXTURE / "reference.json").read_text())
CASES = {"short": "clip", "long": "clip_long"}  # case -> media stem (an mp4 and the wav the official code read)
QUESTION = META["question"]
SPAN_CODES = {0: Modality.TEXT, 1: Modality.VIDEO, 2: Modality.VIDEO, 3: Modality.AUDIO}  # patch, newline -> video


@pytest.fixture(scope="module")
def adapters():
    return {"keep": tiny_adapter(), "drop": tiny_adapter(prompt_im_end="drop")}


def ref(case: str, name: str) -> torch.Tensor:
    return REFERENCE[f"{case}.{name}"]


def sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def official_sample(adapter, case: str) -> VideoSALMONN2Sample:
    """The sample as the official data path saw it: our frames of the mp4 and the official wav as the audio."""
    stem = CASES[case]
    return adapter.load_request(Request([str(FIXTURE / f"{stem}.mp4"), str(FIXTURE / f"{stem}.wav")], QUESTION), 0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_frames_are_the_official_ones(case):
    meta = META["cases"][case]
    frames, real_time = video_frames(FIXTURE / f"{CASES[case]}.mp4", 110)
    assert real_time == meta["real_time"] and len(frames) == meta["num_frames"] == len(meta["frame_indices"])
    assert [sha256(frame) for frame in frames] == meta["frames_rgb_sha256"]
    if case == "short":
        assert np.array_equal(np.stack(frames), ref(case, "frames_rgb").numpy())


@pytest.mark.parametrize("case", sorted(CASES))
def test_pixels_and_log_mels_are_the_official_ones(adapters, case):
    meta = META["cases"][case]
    sample = official_sample(adapters["keep"], case)
    u8 = ((sample.pixel_values + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)  # [F, 384, 384, 3]
    assert torch.equal(sample.pixel_values, u8.permute(0, 3, 1, 2).float() / 127.5 - 1)  # u8 / 127.5 - 1, exactly
    assert [sha256(frame.numpy()) for frame in u8] == meta["pixels"]["per_frame_u8_sha256"]
    assert sample.real_time == meta["real_time"]
    torch.testing.assert_close(sample.spectrogram, ref(case, "spectrogram"), atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_our_media_path_hears_the_same_sound(adapters, case):
    """The mp4 alone (its soundtrack through FFmpeg's mono 16-kHz downmix) gives the official wav's log-mel."""
    alone = adapters["keep"].load_request(Request([str(FIXTURE / f"{CASES[case]}.mp4")], QUESTION), 0)
    torch.testing.assert_close(alone.spectrogram, ref(case, "spectrogram"), atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_modules_match_the_official_ones(adapters, case):
    model = adapters["keep"].model
    sample = official_sample(adapters["keep"], case)
    with torch.no_grad():
        tower = model.vision_tower
        pixels = sample.pixel_values if case == "short" else sample.pixel_values[[0, -1]]
        features = tower.encoder(inputs_embeds=tower.embeddings(pixels)).last_hidden_state
        visual = model.encode_frames(pixels)
        hidden = model.speech_encoder(ref(case, "spectrogram")).last_hidden_state
        audio = model.encode_audio(ref(case, "spectrogram"))
    suffix = "" if case == "short" else "_frames_0_46"
    torch.testing.assert_close(features, ref(case, f"siglip_features{suffix}"), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(visual.reshape(-1, visual.shape[-1]), ref(case, f"visual_tokens{suffix}").flatten(0, -2))
    if case == "short":
        torch.testing.assert_close(hidden, ref(case, "whisper_out"), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(audio, ref(case, "speech_post_seg"), atol=1e-5, rtol=1e-5)
    pre = ref(case, "speech_pre_seg")
    assert torch.equal(ref(case, "speech_post_seg")[:60], pre[0].flatten(0, -2))  # chunk 0's segment row is zero


@pytest.mark.parametrize("variant", ["keep", "drop"])
def test_prompt_ids_are_the_official_ones(adapters, variant):
    """keep: the official evaluation (generate without a mask); drop: the demo and forward passes."""
    for case in CASES:
        assert adapters[variant].prompt_ids(QUESTION).tolist() == ref(case, f"spliced_ids_{variant}").tolist()


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("variant", ["keep", "drop"])
def test_layout_is_the_official_span_table(adapters, case, variant):
    adapter = adapters[variant]
    inputs = adapter.prepare([official_sample(adapter, case)])
    codes = [int(SPAN_CODES[int(c)]) for c in ref(case, f"span_modality_{variant}")]
    assert inputs.layout.modality[0].tolist() == codes
    frame = ref(case, f"span_frame_{variant}").long()
    av = inputs.layout.modality[0] != Modality.TEXT
    assert torch.equal(inputs.layout.chunk[0][av], frame[av])


@pytest.mark.parametrize("case", sorted(CASES))
def test_inputs_embeds_logits_and_greedy_answers_are_the_official_ones(adapters, case):
    """drop: the demo's inputs_embeds, logits and greedy ids; keep: the evaluation's logits and greedy ids; both
    also with repetition_penalty=1.05 (which the official generate applies to the generated ids only)."""
    for variant, greedy in (("drop", "greedy_demo"), ("keep", "greedy_eval")):
        adapter = adapters[variant]
        inputs = adapter.prepare([official_sample(adapter, case)])
        embeds = inputs.generate_kwargs["inputs_embeds"]
        if variant == "drop":
            torch.testing.assert_close(embeds, ref(case, "inputs_embeds"), atol=1e-5, rtol=1e-5)
        with torch.no_grad():
            logits = adapter.model.llm(**inputs.generate_kwargs).logits[0, -1]
        torch.testing.assert_close(logits, ref(case, f"logits_last_{variant}"), atol=1e-4, rtol=0)
        ids = adapter.ends.stop_ids
        for suffix, penalty in (("", 1.0), ("_rp105", 1.05)):
            adapter.repetition_penalty = penalty
            expected = ref(case, f"{greedy}{suffix}").tolist()
            answer = adapter.generate(inputs, len(expected), [])[0]
            cut = next((k + 1 for k, token in enumerate(expected) if token in ids), len(expected))
            text = adapter.tokenizer.decode(expected[:cut], skip_special_tokens=True).strip()
            assert (answer.text, answer.num_tokens) == (text, cut), (variant, suffix)
        adapter.repetition_penalty = 1.0


def test_the_checkpoint_has_no_repetition_penalty_and_the_adapter_reads_it(adapters):
    assert adapters["keep"].repetition_penalty == 1.0  # the tiny generation_config.json holds none
    assert tiny_adapter(repetition_penalty=1.05).repetition_penalty == 1.05


def test_the_placeholder_is_where_the_official_block_starts(adapters):
    for variant, adapter in adapters.items():
        table = META["cases"]["short"]["span_tables"][variant]
        assert adapter.prompt_ids(QUESTION).tolist().index(PLACEHOLDER) == table["prefix_len_P"]
