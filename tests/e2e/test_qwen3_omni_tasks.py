"""``fastav_qwen3_omni`` through lmms-eval's CLI on its own AV tasks, untouched (tiny MoE thinker with DeepStack,
offline fixtures): the soundtrack merged token by token, the first grid kept at the global stage, and a silent
clip's failure."""

from __future__ import annotations

import pytest

from tests.e2e.test_qwen2_5_omni_tasks import METRICS, TASKS, run

pytest.importorskip("lmms_eval")
pytestmark = pytest.mark.e2e

MODEL = "fastav_qwen3_omni"


def test_stock_av_tasks_run_with_the_soundtrack_fed(tmp_path):
    args = "video_audio=if_present,global_layer=2,video_keep_chunks=1,audio_keep_chunks=1,batch_size=2"
    results, samples, _ = run(tmp_path, args, TASKS, MODEL)
    for task in TASKS:
        assert f"{METRICS[task]},none" in results["results"][task], task
        assert len(samples[task]) == 3, task
    for task in ("worldsense", "videomme"):  # an mp4 path: frames and its AAC track, merged by time
        for sample in samples[task]:
            counts = sample["token_counts"][0]
            assert counts["video_tokens"] > 0 and counts["audio_tokens"] > 0, (task, counts)
            kept = counts["kept_per_layer"]
            assert kept["video"][2] < counts["video_tokens"] and kept["audio"][2] < counts["audio_tokens"], counts
    for sample in samples["vggsound"]:  # an audio dict alone
        assert sample["token_counts"][0]["video_tokens"] == 0 and sample["token_counts"][0]["audio_tokens"] > 0
    for task_samples in samples.values():
        for sample in task_samples:
            counts = sample["token_counts"][0]
            assert 1 <= counts["output_tokens"] <= 4 and counts["relative_flops"] < 100, counts
    throughput = results["throughput"]
    assert throughput["avg_failed"] == 0 and throughput["avg_relative_flops"] < 100


def test_a_silent_clip_fails_its_sample_with_the_reason(tmp_path):
    results, samples, _ = run(tmp_path, "prune=none,on_error=record", ("av_odyssey",), MODEL)
    failed = [s for s in samples["av_odyssey"] if "error" in s["token_counts"][0]]
    assert [s["doc_id"] for s in failed] == [1] and "has no audio track" in failed[0]["token_counts"][0]["error"]
    assert results["throughput"]["avg_failed"] == pytest.approx(1 / 3)
