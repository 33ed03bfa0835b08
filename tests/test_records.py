"""The sample and run records: what the wrapper writes is what readers get back, and bad fields are named."""

from __future__ import annotations

import dataclasses

import pytest

from fastav_eval.pruning.plan import SampleStats
from fastav_eval.records import (
    MOE_FIELDS,
    SAMPLE_FORMAT,
    SHAPE_FIELDS,
    RunRecord,
    SampleRecord,
    canonical_hash,
    means,
    run_record_path,
)

SHAPE = dict(num_layers=6, hidden_size=128, intermediate_size=384, num_heads=4, num_kv_heads=2, head_dim=32)

SUMMARY = SampleStats(
    tokens_per_layer=[20, 20, 12, 10],
    kept_per_layer={"text": [4, 4, 4, 4], "video": [8, 8, 4, 3], "audio": [8, 8, 4, 3]},
    relative_flops=77.5,
    relative_flops_exact=78.0,
)


def test_measured_record_round_trips_and_derives_its_figures():
    record = SampleRecord.measured("fastav", SUMMARY, output_tokens=3, prefill_ms=1.5)
    assert record.video_tokens == 8 and record.audio_tokens == 8
    assert record.video_kept_mean == pytest.approx(23 / 4) and record.tokens_per_layer == [20, 20, 12, 10]
    data = record.to_dict()
    assert data["format"] == SAMPLE_FORMAT and "error" not in data and "peak_memory_mb" not in data
    assert SampleRecord.from_dict({**data, "reasoning_tokens": 0}) == record  # lmms-eval's extra keys are ignored


def test_failed_record_keeps_only_the_reason():
    record = SampleRecord.failed("fastav", "doc 3: no audio track")
    assert SampleRecord.from_dict(record.to_dict()) == record and not record.ok and record.figures() == {}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"format": "fastav-sample/0"}, "format"),
        ({"relative_flops": "59"}, "relative_flops"),
        ({"kept_per_layer": {"video": [1, 2], "audio": [1]}}, "kept_per_layer"),
        ({"kept_per_layer": {"video": [1, -2]}}, "kept_per_layer.video"),
        ({"input_tokens": True}, "input_tokens"),
    ],
)
def test_bad_sample_fields_are_named(change, named):
    data = {**SampleRecord.measured("fastav", SUMMARY, 3, 1.5).to_dict(), **change}
    with pytest.raises(ValueError, match=named):
        SampleRecord.from_dict(data)


def test_means_skip_failed_samples_but_count_them():
    answered = SampleRecord.measured("fastav", SUMMARY, 3, 1.0)
    other = SampleRecord.measured("fastav", dataclasses.replace(SUMMARY, relative_flops=57.5), 3, 3.0)
    result = means([answered, other, SampleRecord.failed("fastav", "x")])
    assert result["n"] == 3 and result["failed"] == 1
    assert result["relative_flops"] == pytest.approx(67.5) and result["prefill_ms"] == pytest.approx(2.0)


def test_run_record_checks_its_hash(tmp_path):
    pruning = {"global_rule": "positional", "fine_ratio": 0.2}
    values = dict(model="fastav_tiny", adapter="testbed", model_args="", prune="fastav", pruning=pruning,
                  pruning_hash=canonical_hash(pruning), profile=None, weights={}, versions={}, device={},
                  dtype="float32", attn_implementation="sdpa", language_model="qwen2", decoder_shape=SHAPE, tasks={},
                  overall={}, seed=0, date="20261202_000000")  # fmt: skip
    path = RunRecord(**values).save(tmp_path / "20261202_000000_fastav.json")
    assert RunRecord.load(path) == RunRecord(**values)
    assert run_record_path(tmp_path / "20261202_000000_results.json") == path
    with pytest.raises(ValueError, match="pruning_hash"):
        RunRecord.from_dict({**RunRecord(**values).to_dict(), "pruning": {**pruning, "fine_ratio": 0.3}})
    with pytest.raises(ValueError, match="lacks"):
        RunRecord.from_dict({"format": "fastav-run/1", "model": "fastav_tiny"})
    with pytest.raises(ValueError, match="decoder_shape"):
        RunRecord.from_dict({**RunRecord(**values).to_dict(), "decoder_shape": {"num_layers": 6}})
    moe = {**SHAPE, "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 16, "dense_layers": [0]}
    assert RunRecord.from_dict({**RunRecord(**values).to_dict(), "decoder_shape": moe}).decoder_shape == moe
    with pytest.raises(ValueError, match=r"dense_layers a list of layer indices"):
        RunRecord.from_dict({**RunRecord(**values).to_dict(), "decoder_shape": {**moe, "dense_layers": "0"}})
    with pytest.raises(ValueError, match="seed"):
        RunRecord.from_dict({**RunRecord(**values).to_dict(), "seed": "x"})
    # use_kernels: stored; a record from before the field existed ran without hub kernels; a non-bool is named
    with_kernels = RunRecord(**values, use_kernels=True)
    assert RunRecord.from_dict(with_kernels.to_dict()).use_kernels is True
    older = {key: value for key, value in RunRecord(**values).to_dict().items() if key != "use_kernels"}
    assert RunRecord.from_dict(older).use_kernels is False
    with pytest.raises(ValueError, match="use_kernels"):
        RunRecord.from_dict({**older, "use_kernels": "no"})


def test_decoder_shape_fields_are_the_flops_shape():
    from dataclasses import fields

    from fastav_eval.pruning import DecoderShape

    assert tuple(f.name for f in fields(DecoderShape)) == (*SHAPE_FIELDS, *MOE_FIELDS)


def test_write_json_is_atomic_strict_and_leaves_no_partial_file(tmp_path):
    from fastav_eval.records import read_json, write_json

    path = write_json(tmp_path / "run.json", {"b": 1, "a": [0.5]}, sort_keys=True)
    assert read_json(path, "test") == {"a": [0.5], "b": 1} and path.read_text().startswith('{\n  "a"')
    write_json(path, {"b": 2})  # replaces the whole file
    assert read_json(path, "test") == {"b": 2}
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        write_json(tmp_path / "nan.json", {"x": float("nan")})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_the_engines_sample_stats_become_the_record_with_one_derivation():
    import torch

    from fastav_eval.pruning.flops import DecoderShape
    from fastav_eval.pruning.plan import PrefillStats
    from fastav_eval.records import DERIVED_FIELDS, derived_fields

    kept = {"text": [[4, 4, 4], [2, 2, 2]], "video": [[6, 3, 3], [0, 0, 0]], "audio": [[5, 5, 1], [9, 4, 4]]}
    modality = {name: torch.tensor(rows) for name, rows in kept.items()}
    stats = PrefillStats(sum(modality.values()), modality, slots_per_layer=[15, 15, 8], kv_positions=[])
    shape = DecoderShape(num_layers=3, hidden_size=8, intermediate_size=16, num_heads=2, num_kv_heads=1, head_dim=4)
    sample = stats.sample(1, shape)
    assert sample.tokens_per_layer == [11, 6, 6] and sample.prompt_tokens == 11
    assert sample.relative_flops == float(stats.relative_flops(shape)[1])
    assert stats.sample(1).relative_flops is None
    record = SampleRecord.measured("fastav", sample, 2, 1.0)
    assert derived_fields(record.kept_per_layer) == {name: getattr(record, name) for name in DERIVED_FIELDS}
    assert (record.input_tokens, record.video_tokens, record.audio_tokens) == (11, 0, 9)
    assert record.video_kept_mean == 0.0 and record.audio_kept_mean == pytest.approx(17 / 3)
    assert derived_fields({"text": [3, 3]}) == {"input_tokens": 3, "video_tokens": 0, "audio_tokens": 0,
                                                "video_kept_mean": 0.0, "audio_kept_mean": 0.0}  # fmt: skip
    with pytest.raises(ValueError, match=r"PrefillStats\.sample"):
        SampleRecord.measured("fastav", stats.sample(1), 2, 1.0)


def test_retention_is_the_kept_share_of_audio_visual_tokens_averaged_over_layers():
    """Hand counts: layer 0 sees every token (engine cuts are at layer 1 or later); text never counts."""
    from fastav_eval.records import derived_fields, retention

    single_cut = {"text": [4, 4, 4, 4], "video": [8, 8, 2, 2], "audio": [8, 8, 2, 2]}  # a quarter kept from layer 2
    assert retention(single_cut) == 100.0 * (16 + 16 + 4 + 4) / (4 * 16)  # 62.5: layers 0 and 1 ran on all 16
    fine_decay = {"text": [3] * 6, "video": [10, 10, 5, 4, 3, 2], "audio": [10, 10, 5, 4, 3, 2]}  # cut at 2, then fine
    assert retention(fine_decay) == pytest.approx(100.0 * 2 * (10 + 10 + 5 + 4 + 3 + 2) / (6 * 20))
    assert retention({"text": [2, 2, 2], "audio": [6, 6, 3]}) == pytest.approx(100.0 * 15 / 18)  # no video
    assert retention({"video": [7, 7], "audio": [5, 5]}) == 100.0  # nothing pruned
    assert retention(SUMMARY.kept_per_layer) == 100.0 * 46 / 64
    derived = derived_fields(fine_decay)  # the same figure from the record's derived fields
    share = (derived["video_kept_mean"] + derived["audio_kept_mean"]) / (
        derived["video_tokens"] + derived["audio_tokens"]
    )
    assert retention(fine_decay) == pytest.approx(100.0 * share)
    for without in ({"text": [4, 4]}, {"text": [4, 4], "video": [0, 0], "audio": [0, 0]}):  # no retention: an error
        with pytest.raises(
            ValueError, match=r"accepted: counts with audio-visual \(video or audio\) tokens at layer 0"
        ):
            retention(without)
    for malformed in ({}, {"text": [4, 4, 4], "video": [8, 2]}):
        with pytest.raises(ValueError, match=r"kept_per_layer=.*one count per decoder layer, equal lengths"):
            retention(malformed)


def test_a_runs_means_and_throughput_carry_the_retention_of_each_sample():
    """Each answered sample's retention is a figure (its mean in the run record and lmms-eval's throughput, pooled
    and per task); a text-only or failed sample has none; a run record from before the field still verifies."""
    from fastav_eval.lmms.wrapper import throughput_entry
    from fastav_eval.records import retention

    record = SampleRecord.measured("fastav", SUMMARY, 3, 1.0)
    text_only = SampleRecord.measured("none", SampleStats([4, 4, 4, 4], {"text": [4, 4, 4, 4]}, 100.0, 100.0), 3, 1.0)
    assert record.figures()["retention"] == retention(SUMMARY.kept_per_layer) == 100.0 * 46 / 64
    assert text_only.retention is None and "retention" not in text_only.figures()
    assert SampleRecord.failed("fastav", "x").retention is None
    assert means([record, text_only])["retention"] == pytest.approx(100.0 * 46 / 64)
    extra = throughput_entry(record, "avsynth_qa", 1.0, 1)["additional_metrics"]
    assert extra["retention"] == extra["avsynth_qa/retention"] == pytest.approx(100.0 * 46 / 64)


def test_one_decoder_identity_gives_the_shape_the_label_and_a_policys_binding():
    from types import SimpleNamespace

    from fastav_eval.decoder_shape import DecoderShape
    from fastav_eval.policies.saved import decoder_identity

    config = SimpleNamespace(model_type="qwen2", num_hidden_layers=28, hidden_size=3584, intermediate_size=18944,
                             num_attention_heads=28, num_key_value_heads=4)  # fmt: skip
    shape = DecoderShape.from_config(config)
    assert tuple(shape.to_dict()) == SHAPE_FIELDS and shape.head_dim == 128
    assert shape.label(config.model_type) == "qwen2 (28 layers, d 3584)"
    assert decoder_identity(config) == {"model_type": "qwen2", "num_layers": 28, "hidden_size": 3584}


def test_records_and_a_saved_policy_read_without_torch_or_gymnasium():
    """The run and sample records (report) load without torch; a saved policy's metadata without Gymnasium."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import fastav_eval.records, fastav_eval.analysis.results\n"
        "assert 'torch' not in sys.modules, 'records import torch'\n"
        "import fastav_eval.policies.saved\n"
        "assert 'gymnasium' not in sys.modules, 'policies.saved imports gymnasium'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
