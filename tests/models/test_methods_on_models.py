"""Every pruning method of fastav_eval.pruning.methods through three real architectures' adapters (tiny weights),
batch 2 with left padding: VideoLLaMA2 (Qwen2 on merged embeddings), Qwen2.5-Omni's thinker (TMRoPE) and
Qwen3-Omni's (mixture of experts, DeepStack). Each batch answers as each sample alone, the cuts keep the
method's budget, and a cut before the decoder is counted against the whole prompt."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastav_eval.models.base import Request
from fastav_eval.pruning import install
from fastav_eval.pruning.methods import METHODS
from tests.lmms.av_task_fixtures import write_clip


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> (adapter, two requests)"""
    from fastav_eval.models.qwen2_5_omni import Qwen25OmniAdapter
    from fastav_eval.models.qwen3_omni import Qwen3OmniAdapter
    from tests.models import omni_fixtures, qwen3_omni_fixtures
    from tests.models.videollama2_fixtures import FIXTURE, tiny_adapter

    root = tmp_path_factory.mktemp("methods")
    clips = [str(write_clip(root / "a.mp4", 2)), str(write_clip(root / "b.mp4", 4, seed=1, frequency=660.0))]
    built = {"videollama2": (tiny_adapter(), [str(FIXTURE / "clip.mp4"), str(FIXTURE / "clip_long.mp4")])}
    for name, adapter_class, fixtures in (
        ("qwen2_5_omni", Qwen25OmniAdapter, omni_fixtures),
        ("qwen3_omni", Qwen3OmniAdapter, qwen3_omni_fixtures),
    ):
        adapter_class.load_processor = staticmethod(lambda pretrained, make=fixtures.tiny_processor: make())
        checkpoint = fixtures.save_checkpoint(root / name)
        built[name] = (adapter_class(str(checkpoint), "cpu", torch.float32, "sdpa"), clips)
    return built


def answers(adapter, loaded, method):
    engine = install(adapter.decoder, method.config())
    try:
        inputs = adapter.prepare(loaded)
        with engine.layout(inputs.layout):
            result = adapter.generate(inputs, 4, [])
        return result, engine.last_stats, inputs.layout
    finally:
        engine.uninstall()


@pytest.mark.parametrize("method_name", sorted(METHODS))
@pytest.mark.parametrize("model_name", ["videollama2", "qwen2_5_omni", "qwen3_omni"])
def test_a_method_runs_in_a_batch_as_each_sample_alone(models, model_name, method_name):
    adapter, clips = models[model_name]
    loaded = [adapter.load_request(Request([clip], "what is in the video ?"), i) for i, clip in enumerate(clips)]
    method = METHODS[method_name](retain=0.5)
    together, stats, layout = answers(adapter, loaded, method)
    alone = [answers(adapter, [sample], method)[0][0] for sample in loaded]
    assert together == alone
    av = stats.modality_per_layer["video"] + stats.modality_per_layer["audio"]  # [B, layers]
    prompt_av = stats.prompt_per_modality["video"] + stats.prompt_per_modality["audio"]
    for b in range(2):
        assert int(av[b, -1]) < int(prompt_av[b])  # the method dropped audio-visual tokens
        if method.cuts_input:
            assert int(stats.tokens_per_layer[b, 0]) < int(stats.prompt_tokens[b])
        if method_name in ("random", "divprune"):  # a pooled share of the audio-visual tokens
            assert int(av[b, 0]) <= int(np.floor(int(prompt_av[b]) * 0.5 + 0.5)) + 4  # the budget (+ the sink)
        if method_name == "vidcom2":  # video only, about half of each frame
            audio = stats.modality_per_layer["audio"][b]
            assert bool((audio == stats.prompt_per_modality["audio"][b]).all())
            assert 0 < int(stats.modality_per_layer["video"][b, 0]) < int(stats.prompt_per_modality["video"][b])
        if method_name == "seats":  # no audio-visual token from its late layer on
            assert int(av[b, -1]) == 0
    assert torch.equal(stats.prompt_tokens, layout.valid.sum(1))
