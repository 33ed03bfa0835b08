"""fastav_video_salmonn2_plus (FastAV's positional rule by default: the first 4 frames, 2 temporal grids, at half
depth, then P = 0.2) on the tiny ``_full``-style checkpoint the official video-SALMONN 2+ code saved
(tests/fixtures/video_salmonn2_plus_tiny): lmms-eval's stock ``videomme`` and ``worldsense``, the paper's benchmarks
from tiny releases in the official schemas (``fastav-eval prepare-data``), and a learned policy trained with
``fastav-eval train-policy`` and deployed with ``policy=``."""

from __future__ import annotations

import pytest

from tests.e2e.av_models import paper_benchmarks, stock_tasks, train_and_deploy_policy
from tests.e2e.cli import REPO

pytestmark = pytest.mark.e2e

PLUS = REPO / "tests" / "fixtures" / "video_salmonn2_plus_tiny"
MODEL_ARGS = f"pretrained={PLUS},dtype=float32,device=cpu,on_error=record"
GLOBAL_LAYER = 2  # half of the tiny LLM's 4 layers


def check_first_grids_kept(sample: dict) -> None:
    """Every answered sample heard its clip, and the global stage kept part of the video (its first 2 grids)."""
    counts = sample["token_counts"][0]
    assert "error" not in counts, counts
    video, audio = counts["video_tokens"], counts["audio_tokens"]
    assert video > 0 and audio > 0 and audio % 60 == 0, counts  # 60 audio tokens per started 30 s
    kept = counts["kept_per_layer"]
    assert kept["video"][:GLOBAL_LAYER] == [video] * GLOBAL_LAYER, kept
    assert 0 < kept["video"][GLOBAL_LAYER] < video, kept
    assert 0 < counts["relative_flops"] < 100, counts


@pytest.mark.parametrize("positions", ["official_inference", "trained"])
def test_stock_tasks(tmp_path, positions):
    stock_tasks(tmp_path, "fastav_video_salmonn2_plus", f"{MODEL_ARGS},positions={positions}", check_first_grids_kept)


def test_paper_benchmarks_from_prepared_releases(tmp_path):
    paper_benchmarks(tmp_path, "fastav_video_salmonn2_plus", MODEL_ARGS, check_first_grids_kept)


def test_train_a_policy_and_deploy_it(tmp_path):
    decoder = {"model_type": "qwen2_5_vl_text", "num_layers": 4, "hidden_size": 64}
    train_and_deploy_policy(tmp_path, "fastav_video_salmonn2_plus", MODEL_ARGS.replace(",on_error=record", ""), decoder)
