"""``fastav-eval compare``'s budget solver on simulated layouts (no model), its checks, and its runs."""

from __future__ import annotations

import pytest

from fastav_eval.analysis.compare import (
    check_base,
    check_methods,
    check_targets,
    compare_runs,
    mean_flops,
    solve,
)
from fastav_eval.pruning import DecoderShape, ModalityLayout

SHAPE = DecoderShape(num_layers=8, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2, head_dim=16)
LAYOUTS = [
    ModalityLayout.from_segments([[("text", 10), ("video", 64), ("audio", 48), ("text", 8)]]),
    ModalityLayout.from_segments([[("text", 6), ("video", 32), ("audio", 80), ("text", 12)]]),
]


@pytest.mark.parametrize("method", ["random", "divprune", "pdrop", "fastav", "vidcom2", "vidcom2_av", "seats"])
@pytest.mark.parametrize("target", [70.0, 60.0])
def test_the_solved_budget_is_the_largest_at_or_under_the_target(method, target):
    budget = solve(method, target, {}, LAYOUTS, SHAPE)
    assert budget.value is not None and budget.achieved <= target
    assert budget.achieved == pytest.approx(mean_flops(method, budget.value, budget_base(budget), LAYOUTS, SHAPE))
    if budget.value < 1.0:  # a little more budget would pass the target
        assert mean_flops(method, min(budget.value + 0.02, 1.0), budget_base(budget), LAYOUTS, SHAPE) > target
    assert budget.model_args["prune"] == method


def budget_base(budget) -> dict[str, str]:
    return {key: value for key, value in budget.model_args.items() if key == "global_layer"}


def test_an_out_of_reach_target_is_reported_not_run_and_fastav_moves_its_global_stage_earlier():
    low = solve("pdrop", 20.0, {}, LAYOUTS, SHAPE)  # its first quarter of layers sees every token
    assert low.value is None and low.achieved > 20.0 and low.model_args == {}
    fastav = solve("fastav", 30.0, {}, LAYOUTS, SHAPE)  # its keep solved at layers 1..4, the most retentive kept
    assert fastav.value is not None and 1 <= int(fastav.model_args["global_layer"]) <= SHAPE.num_layers // 2
    from fastav_eval.analysis.compare import simulate

    chosen = simulate("fastav", fastav.value, budget_base(fastav), LAYOUTS, SHAPE)[1]
    for layer in range(1, SHAPE.num_layers // 2 + 1):
        other = solve("fastav", 30.0, {"global_layer": str(layer)}, LAYOUTS, SHAPE)
        if other.value is not None:
            assert simulate("fastav", other.value, {"global_layer": str(layer)}, LAYOUTS, SHAPE)[1] <= chosen + 1e-9
    fixed = solve("fastav", 30.0, {"global_layer": "4"}, LAYOUTS, SHAPE)  # the base fixes the layer: no move
    assert fixed.value is None
    runs = compare_runs("fastav_tiny", {}, [low, fastav], "avsynth", 4, "")
    assert [run.name for run in runs] == ["fastav@30%", "unpruned"]
    assert "prune=none" in runs[-1].model_args and "global_layer" in runs[0].model_args


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: check_methods("fastav,magic"), r"--methods 'fastav,magic'; accepted: a comma-separated subset"),
        (lambda: check_targets("60,0"), r"--target-flops '60,0'; accepted"),
        (lambda: check_base("fastav_tiny", "prune=random"), r"compare sets each method and its budget"),
        (lambda: check_base("fastav_tiny", "video_keep=0.5"), r"\['video_keep'\]: compare sets"),
    ],
)
def test_bad_options_name_the_field(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_report_labels_a_method_by_its_budget_and_changed_knobs_and_a_policy_by_its_name():
    from pathlib import Path
    from types import SimpleNamespace

    from fastav_eval.analysis.results import RunResults
    from fastav_eval.pruning.methods import SEATS, PyramidDrop

    def label(chooser: dict) -> str:
        record = SimpleNamespace(prune="x", pruning={"chooser": chooser})
        return RunResults(Path("x_results.json"), {}, record=record).label()  # type: ignore[arg-type]

    assert label(SEATS(retain=0.3).describe()) == "seats retain=0.3"
    assert label(SEATS(retain=0.3, temperature=0.2).describe()) == "seats retain=0.3, temperature=0.2"
    assert label({**PyramidDrop().describe(), "layers": []}) == "pdrop retain=0.5"
    assert label({"name": "policy:shipped", "path": "/p", "sha256": "ab"}) == "policy:shipped"


@pytest.mark.parametrize("method", ["random", "pdrop", "fastav", "vidcom2_av", "seats"])
def test_a_retention_target_solves_the_largest_budget_keeping_at_most_that_share(method):
    budget = solve(method, 50.0, {}, LAYOUTS, SHAPE, measure="retention")
    assert budget.value is not None and budget.achieved <= 50.0 and budget.measure == "retention"
    assert budget.name == f"{method}@50% retention"
    base = budget_base(budget)
    assert budget.achieved == pytest.approx(mean_flops(method, budget.value, base, LAYOUTS, SHAPE, "retention"))
    if budget.value < 1.0:
        assert mean_flops(method, min(budget.value + 0.02, 1.0), base, LAYOUTS, SHAPE, "retention") > 50.0
    if method == "fastav":  # of the layers that reach it, the cheapest in FLOPs
        from fastav_eval.analysis.compare import simulate

        chosen = simulate("fastav", budget.value, base, LAYOUTS, SHAPE)[0]
        for layer in range(1, SHAPE.num_layers // 2 + 1):
            other = solve("fastav", 50.0, {"global_layer": str(layer)}, LAYOUTS, SHAPE, measure="retention")
            if other.value is not None:
                assert simulate("fastav", other.value, {"global_layer": str(layer)}, LAYOUTS, SHAPE)[0] >= chosen - 1e-9


def test_compare_takes_one_kind_of_target(capsys):
    from fastav_eval.cli import main

    code = main(["compare", "--model", "fastav_tiny", "--tasks", "avsynth", "--calibrate-on", "avsynth_val",
                 "--target-flops", "60", "--target-retention", "50", "--out", "x"])  # fmt: skip
    assert code != 0 and "--target-flops and --target-retention both given" in capsys.readouterr().err
