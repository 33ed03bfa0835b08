"""The table of rules (``pruning.rules.RULES``) is the single source: config validation, the planner and the
dispatch all read it, and no other list of rule names is written in the package."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

import fastav_eval
from fastav_eval.pruning import FINE_RULES, GLOBAL_RULES, RULES, ModalityLayout, PruningConfig, PruningProfile
from fastav_eval.pruning.plan import PrefillPlan
from fastav_eval.pruning.rules import PruneContext, Stage, rule_names, rule_priority

NUM_LAYERS, GLOBAL_LAYER = 6, 3
LAYOUT = ModalityLayout.from_segments([[("text", 3), ("video", 8), ("audio", 12), ("text", 3)]])
PROFILE = PruningProfile.prefix(video=4, audio=6)
STAGES: tuple[Stage, ...] = ("global", "fine")
UNKNOWN = "rollout"


def plan_for(**fields: object) -> PrefillPlan:
    fields = {"global_layer": GLOBAL_LAYER, "profile": PROFILE, "sink_tokens": 0, **fields}
    return PrefillPlan(LAYOUT, PruningConfig(**fields).resolve(NUM_LAYERS), NUM_LAYERS)  # type: ignore[arg-type]


def context(scores: bool) -> PruneContext:
    """A global-stage context over ``LAYOUT`` (``[1, 26]``), with seeded scores or none; a fresh RNG each call."""
    values = torch.rand(LAYOUT.valid.shape, generator=torch.Generator().manual_seed(1)) if scores else None
    return plan_for().context("global", GLOBAL_LAYER, values)


@pytest.mark.parametrize("name", list(RULES))
def test_each_rule_dispatches_to_its_table_entry(name):
    rule = RULES[name]
    assert rule.name == name and rule.description and "\n" not in rule.description
    assert torch.equal(rule_priority(name, context(scores=True)), rule.priority(context(scores=True)))
    if rule.needs_scores:
        with pytest.raises(RuntimeError, match=rf"rule '{name}' needs last-query scores"):
            rule_priority(name, context(scores=False))
    else:
        assert rule_priority(name, context(scores=False)).shape == LAYOUT.valid.shape


def test_dispatch_refuses_a_name_outside_the_table_and_lists_the_table():
    with pytest.raises(ValueError, match=rf"rule='{UNKNOWN}'; accepted: \[{', '.join(map(repr, RULES))}\]"):
        rule_priority(UNKNOWN, context(scores=True))


@pytest.mark.parametrize("stage", STAGES)
def test_config_accepts_exactly_the_table_names_of_each_stage(stage):
    served = {name for name, rule in RULES.items() if stage in rule.stages}
    assert set(rule_names(stage)) == served
    assert {"global": GLOBAL_RULES, "fine": FINE_RULES}[stage] == rule_names(stage)
    for name in [*RULES, UNKNOWN]:
        field = f"{stage}_rule"
        if name in served:
            assert getattr(PruningConfig(**{field: name}), field) == name  # type: ignore[arg-type]
        else:
            accepted = [*rule_names(stage), *([None] if stage == "global" else [])]
            with pytest.raises(ValueError, match=re.escape(f"{field}={name!r}; accepted: {accepted}")):
                PruningConfig(**{field: name})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", GLOBAL_RULES)
def test_the_planner_records_scores_before_the_global_cut_exactly_for_rules_that_need_them(name):
    plan = plan_for(global_rule=name, fine_ratio=0.0)
    assert plan.needs_scores(GLOBAL_LAYER - 1) == RULES[name].needs_scores


@pytest.mark.parametrize("name", FINE_RULES)
def test_the_planner_records_scores_before_fine_steps_exactly_for_rules_that_need_them(name):
    plan = plan_for(global_rule="positional", fine_rule=name, fine_ratio=0.2)
    assert not plan.needs_scores(GLOBAL_LAYER - 1)  # the positional cut reads none
    assert plan.needs_scores(GLOBAL_LAYER) == RULES[name].needs_scores


def rule_literals(node: ast.AST) -> list[str]:
    """The rule names written as string constants directly inside ``node``."""
    children = [node.left, *node.comparators] if isinstance(node, ast.Compare) else getattr(node, "elts", [])
    return [child.value for child in children if isinstance(child, ast.Constant) and child.value in RULES]


def test_no_other_list_or_comparison_of_rule_names_is_written_in_the_package():
    """Rule names may appear as values (a default, an argument); a list of them or a comparison against one would
    be a second definition of what the rules are."""
    found = []
    for path in sorted(Path(fastav_eval.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Tuple | ast.List | ast.Set | ast.Compare) and rule_literals(node):
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert not found, found
