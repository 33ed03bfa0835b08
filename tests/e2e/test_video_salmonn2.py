"""fastav_video_salmonn2 (the paper's setting by default: the first 4 frames at half depth, then P = 0.2) on the tiny
checkpoint the official video-SALMONN 2 code saved (tests/fixtures/video_salmonn2_tiny): lmms-eval's stock
``videomme`` and ``worldsense``, the paper's benchmarks from tiny releases in the official schemas (``fastav-eval
prepare-data``), and a learned policy trained with ``fastav-eval train-policy`` and deployed with ``policy=``."""

from __future__ import annotations

import pytest

from tests.e2e.av_models import paper_benchmarks, stock_tasks, train_and_deploy_policy
from tests.e2e.cli import REPO

pytestmark = pytest.mark.e2e

VS2 = REPO / "tests" / "fixtures" / "video_salmonn2_tiny"
MODEL_ARGS = (
    f"pretrained={VS2},whisper={VS2}/whisper,qformer_config={VS2}/bert-base-uncased,dtype=float32,device=cpu,"
    "on_error=record"
)
VISUAL_PER_FRAME = 182
GLOBAL_LAYER = 2  # half of the tiny LLM's 4 layers


def check_frames_kept(sample: dict) -> None:
    """Every answered sample heard its clip, and the global stage kept exactly the first 4 frames' tokens."""
    counts = sample["token_counts"][0]
    assert "error" not in counts, counts
    video, audio = counts["video_tokens"], counts["audio_tokens"]
    assert video > 0 and video % VISUAL_PER_FRAME == 0 and audio > 0, counts
    frames = video // VISUAL_PER_FRAME
    kept = counts["kept_per_layer"]
    assert kept["video"][:GLOBAL_LAYER] == [video] * GLOBAL_LAYER, kept
    assert kept["video"][GLOBAL_LAYER] == min(frames, 4) * VISUAL_PER_FRAME, (frames, kept)
    assert 0 < counts["relative_flops"] < 100, counts


def test_stock_tasks(tmp_path):
    stock_tasks(tmp_path, "fastav_video_salmonn2", MODEL_ARGS, check_frames_kept)


def test_paper_benchmarks_from_prepared_releases(tmp_path):
    paper_benchmarks(tmp_path, "fastav_video_salmonn2", MODEL_ARGS, check_frames_kept)


def test_train_a_policy_and_deploy_it(tmp_path):
    decoder = {"model_type": "qwen2", "num_layers": 4, "hidden_size": 64}
    train_and_deploy_policy(tmp_path, "fastav_video_salmonn2", MODEL_ARGS.replace(",on_error=record", ""), decoder)
