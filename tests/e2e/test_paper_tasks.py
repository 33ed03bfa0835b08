"""The paper benchmarks' tasks (AVHBench, MUSIC-AVQA, AVQA) end to end: official-format releases in a temp dir,
``fastav-eval prepare-data`` on each, then lmms-eval's own CLI on every task in one run per model.

``MODELS`` lists ``(model name, runner)``: a runner takes the test's root folder and returns the command line up to
and including ``--model_args`` (the test adds the tasks, outputs and a 4-token generation budget). Each model's run
is shared by the tests below; every metric in the results file is recomputed from the samples file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fastav_eval.captions import corpus_bleu4, corpus_cider, corpus_rouge_l
from fastav_eval.cli import main
from fastav_eval.data import DATA_ENV, avqa, music_avqa
from fastav_eval.data.common import read_prepared
from fastav_eval.data.music_avqa import vocabulary
from fastav_eval.data.scoring import (
    exact_match,
    judgment_metrics,
    match_answer,
    parse_choice,
    parse_yes_no,
)
from tests.data.releases import write_avhbench, write_avqa, write_music_avqa

pytest.importorskip("lmms_eval")
pytestmark = pytest.mark.e2e  # lmms-eval CLI runs: with the end-to-end tests, out of the README test command

REPO = Path(__file__).resolve().parents[2]


def omni_runner(root: Path) -> list[str]:
    """``fastav_qwen2_5_omni`` on the tiny random thinker (tests/lmms/av_cli.py), soundtrack required."""
    checkpoint = root / "omni" / "checkpoint"  # av_cli writes it under its ROOT
    model_args = f"pretrained={checkpoint},dtype=float32,device=cpu,global_layer=2,audio_keep_chunks=1,batch_size=2"
    return [sys.executable, "-m", "tests.lmms.av_cli", str(root / "omni"), "--model", "fastav_qwen2_5_omni",
            "--model_args", model_args]  # fmt: skip


def videollama2_runner(root: Path) -> list[str]:
    """``fastav_videollama2`` on the tiny checkpoint the official code saved (tests/fixtures/videollama2_tiny)."""
    fixture = REPO / "tests" / "fixtures" / "videollama2_tiny"
    model_args = f"pretrained={fixture},vision_tower={fixture / 'siglip'},dtype=float32,device=cpu,batch_size=2"
    return [sys.executable, "-m", "lmms_eval", "--model", "fastav_videollama2", "--model_args", model_args]


MODELS: list[tuple[str, Callable[[Path], list[str]]]] = [
    ("fastav_qwen2_5_omni", omni_runner),
    ("fastav_videollama2", videollama2_runner),
]

JUDGMENT_TASKS = ("avhbench_a2v", "avhbench_v2a", "avhbench_match")
TASKS = (*JUDGMENT_TASKS, "avhbench_caption", "music_avqa", "avqa")
DOCUMENTS = {"avhbench_a2v": 3, "avhbench_v2a": 2, "avhbench_match": 2, "avhbench_caption": 2, "music_avqa": 9,
             "avqa": 4}  # fmt: skip


@pytest.fixture(scope="module", params=MODELS, ids=[name for name, _ in MODELS])
def run(request, tmp_path_factory) -> dict:
    """The releases prepared through the CLI, then one lmms-eval run of ``avhbench,music_avqa,avqa``."""
    name, runner = request.param
    root = tmp_path_factory.mktemp(name)
    releases = {"avhbench": write_avhbench(root), "music_avqa": write_music_avqa(root), "avqa": write_avqa(root)}
    with pytest.MonkeyPatch.context() as patch:  # `fastav-eval prepare-data NAME SOURCE`, in this process
        patch.setenv(DATA_ENV, str(root / "prepared"))
        for dataset, source in releases.items():
            assert main(["prepare-data", dataset, str(source)]) == 0, dataset
        documents = {dataset: read_prepared(dataset) for dataset in releases}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), DATA_ENV: str(root / "prepared")}
    output = root / "out"
    command = [*runner(root), "--tasks", "avhbench,music_avqa,avqa", "--include_path", str(REPO / "tasks"),
               "--gen_kwargs", "max_new_tokens=4", "--output_path", str(output), "--log_samples"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    log = result.stdout + result.stderr
    files = list(output.rglob("*_results.json"))
    assert files, log[-4000:]  # lmms-eval exits 0 even when the evaluation failed
    samples = {
        task: sorted(
            (json.loads(line) for path in output.rglob(f"*_samples_{task}.jsonl") for line in path.open()),
            key=lambda sample: sample["doc_id"],
        )
        for task in TASKS
    }
    return {"results": json.loads(files[0].read_text()), "samples": samples, "documents": documents,
            "output": output, "data": root / "prepared"}  # fmt: skip


def metric(run: dict, task: str, name: str) -> float:
    value = run["results"]["results"][task].get(f"{name},none")
    assert value is not None, f"{task} has no {name} in {sorted(run['results']['results'][task])}"
    return value


def test_every_task_ran_every_document_with_its_soundtrack(run):
    for task, count in DOCUMENTS.items():
        assert run["results"]["n-samples"][task]["effective"] == count, task
        assert len(run["samples"][task]) == count, task
        for sample in run["samples"][task]:
            counts = sample["token_counts"][0]
            assert counts.get("audio_tokens", 0) > 0 and counts.get("video_tokens", 0) > 0, (task, counts)
            assert "error" not in counts, (task, counts)


def test_judgment_metrics_match_the_samples(run):
    pooled = []
    for task in JUDGMENT_TASKS:
        pairs = [(parse_yes_no(s["filtered_resps"]), s["target"]) for s in run["samples"][task]]
        assert {label for _, label in pairs} == {"yes", "no"}, task
        expected = judgment_metrics(pairs)
        for name, value in expected.items():
            assert metric(run, task, name) == pytest.approx(value), (task, name)
        if task != "avhbench_match":
            pooled += pairs
    hallucination = judgment_metrics(pooled)  # the paper's "AV hallucination": both tasks' questions together
    assert "avhbench_hallucination" in run["results"]["groups"]
    for name in ("accuracy", "yes_rate", "invalid_rate"):
        assert metric(run, "avhbench_hallucination", name) == pytest.approx(hallucination[name]), name


def test_judgment_prompts_are_the_official_text(run):
    texts = {task: [d["text"] for d in run["documents"]["avhbench"] if d["subset"] == task.split("_")[1]]
             for task in (*JUDGMENT_TASKS, "avhbench_caption")}  # fmt: skip
    for task, expected in texts.items():
        assert [s["input"] for s in run["samples"][task]] == expected, task


def test_caption_metrics_match_the_samples(run):
    pairs = [(s["target"], s["filtered_resps"]) for s in run["samples"]["avhbench_caption"]]
    assert pairs[0][0].startswith("A young man with no shirt on")
    assert metric(run, "avhbench_caption", "cider") == pytest.approx(corpus_cider(pairs))
    assert metric(run, "avhbench_caption", "bleu4") == pytest.approx(corpus_bleu4(pairs))
    assert metric(run, "avhbench_caption", "rouge_l") == pytest.approx(corpus_rouge_l(pairs))


def test_music_avqa_metrics_and_prompts(run):
    samples, documents = run["samples"]["music_avqa"], run["documents"]["music_avqa"]
    for sample, document in zip(samples, documents, strict=True):
        assert sample["input"] == f"{document['question']}\nAnswer the question using a single word or phrase."
        assert "<" not in sample["input"] and sample["target"] == document["anser"]
    pairs = zip(samples, documents, strict=True)
    said = [match_answer(s["filtered_resps"], vocabulary(d["question_type"])) for s, d in pairs]
    correct = [answer == s["target"] for answer, s in zip(said, samples, strict=True)]
    assert metric(run, "music_avqa", "accuracy") == pytest.approx(sum(correct) / len(correct))
    exact = [exact_match(s["filtered_resps"], s["target"]) for s in samples]
    assert metric(run, "music_avqa", "exact_match") == pytest.approx(sum(exact) / len(exact))
    invalid = [answer is None for answer in said]
    assert metric(run, "music_avqa", "invalid_rate") == pytest.approx(sum(invalid) / len(invalid))
    keys = {"Audio": "audio", "Visual": "visual", "Audio-Visual": "av"}
    for modality in keys:
        rows = [c for c, d in zip(correct, documents, strict=True) if d["modality"] == modality]
        assert metric(run, "music_avqa", f"accuracy_{keys[modality]}") == pytest.approx(sum(rows) / len(rows))
    for c, d in zip(correct, documents, strict=True):  # one question per type in the fixture
        assert metric(run, "music_avqa", f"accuracy_{keys[d['modality']]}_{d['question_type'].lower()}") == c


def test_avqa_metrics_and_prompts(run):
    samples, documents = run["samples"]["avqa"], run["documents"]["avqa"]
    for sample, document in zip(samples, documents, strict=True):
        options = "\n".join(f"{letter}. {option}" for letter, option in zip("ABCD", document["options"], strict=True))
        assert sample["input"] == (
            f"{document['question_text']}\n{options}\nAnswer with the option's letter from the given choices directly."
        )
        assert sample["target"] == document["answer_letter"]
    picked = [parse_choice(s["filtered_resps"], d["options"]) for s, d in zip(samples, documents, strict=True)]
    correct = [p == d["answer"] for p, d in zip(picked, documents, strict=True)]
    assert metric(run, "avqa", "accuracy") == pytest.approx(sum(correct) / len(correct))
    assert metric(run, "avqa", "invalid_rate") == pytest.approx(sum(p is None for p in picked) / len(picked))
    for c, d in zip(correct, documents, strict=True):  # one question per type in the fixture
        assert metric(run, "avqa", f"accuracy_{d['question_type'].lower().replace(' ', '_')}") == c


# --------------------------------------------------------------------------------------------------------------------
# Each YAML's metric_list wired to the right scoring: lmms-eval's per-document results, aggregated as the YAML says,
# against hand-computed values (the tiny random model's replies above are all unreadable, so they cannot show this)


def aggregate(task_yaml: Path, docs_and_replies: list[tuple[dict, str]]) -> dict[str, float]:
    from lmms_eval.utils import load_yaml_config

    config = load_yaml_config(str(task_yaml), mode="full")
    per_document = [config["process_results"](doc, [reply]) for doc, reply in docs_and_replies]
    aggregated = {}
    for entry in config["metric_list"]:
        items = [scores[entry["metric"]] for scores in per_document if entry["metric"] in scores]
        how = entry["aggregation"]
        if items:  # as lmms-eval: a metric no document reported is left out
            aggregated[entry["metric"]] = sum(items) / len(items) if how == "mean" else how(items)
    return aggregated


def test_judgment_yaml_aggregates_to_the_hand_computed_metrics():
    # labels yes yes yes no no no; replies read as yes, no, unreadable, yes, no, no (tests/data/test_scoring.py)
    replies = [("yes", "Yes."), ("yes", "No, it is not."), ("yes", "Hard to say."), ("no", "yes"), ("no", "No."),
               ("no", "no")]  # fmt: skip
    metrics = aggregate(REPO / "tasks" / "avhbench" / "avhbench_a2v.yaml", [({"answer": y}, r) for y, r in replies])
    assert metrics == pytest.approx({"accuracy": 3 / 6, "precision": 1 / 2, "recall": 1 / 3, "f1": 0.4,
                                     "yes_rate": 2 / 6, "invalid_rate": 1 / 6})  # fmt: skip


def test_music_avqa_yaml_aggregates_per_question_type():
    docs = [
        ({"answer": "two", "modality": "Audio", "question_type": "Counting"}, "2"),  # right (numeral)
        ({"answer": "yes", "modality": "Audio", "question_type": "Comparative"}, "No."),  # wrong
        ({"answer": "acoustic_guitar", "modality": "Audio-Visual", "question_type": "Location"}, "acoustic_guitar"),
        ({"answer": "left", "modality": "Audio-Visual", "question_type": "Temporal"}, "I cannot tell"),  # invalid
    ]
    metrics = aggregate(REPO / "tasks" / "music_avqa" / "music_avqa.yaml", docs)
    assert metrics == pytest.approx({"accuracy": 2 / 4, "exact_match": 1 / 4, "invalid_rate": 1 / 4,
                                     "accuracy_audio": 1 / 2, "accuracy_audio_counting": 1.0,
                                     "accuracy_audio_comparative": 0.0, "accuracy_av": 1 / 2,
                                     "accuracy_av_location": 1.0, "accuracy_av_temporal": 0.0})  # fmt: skip


def test_avqa_yaml_aggregates_per_question_type():
    options = ["dog", "cat", "cow", "horse"]
    docs = [
        ({"answer": 2, "options": options, "question_type": "Which"}, "C"),
        ({"answer": 0, "options": options, "question_type": "Which"}, "The answer is (B)."),
        ({"answer": 3, "options": options, "question_type": "Come From"}, "horse"),
        ({"answer": 1, "options": options, "question_type": "Used For"}, "no idea"),
    ]
    metrics = aggregate(REPO / "tasks" / "avqa" / "avqa.yaml", docs)
    assert metrics == pytest.approx({"accuracy": 2 / 4, "invalid_rate": 1 / 4, "accuracy_which": 1 / 2,
                                     "accuracy_come_from": 1.0, "accuracy_used_for": 0.0})  # fmt: skip


def test_caption_yaml_aggregates_to_the_scorers():
    pairs = [("the cat sat on the mat", "the cat sat on a mat"), ("a dog barks loudly outside", "a dog barks")]
    metrics = aggregate(REPO / "tasks" / "avhbench" / "avhbench_caption.yaml", [({"answer": r}, p) for r, p in pairs])
    assert metrics == pytest.approx({"cider": corpus_cider(pairs), "bleu4": corpus_bleu4(pairs),
                                     "rouge_l": corpus_rouge_l(pairs)})  # fmt: skip
    assert 0 < metrics["bleu4"] < 1 and metrics["cider"] > 0


def test_hallucination_group_pools_the_questions_not_the_task_means():
    from lmms_eval.api.metrics import aggregate_subtask_metrics
    from lmms_eval.utils import load_yaml_config

    tasks = REPO / "tasks" / "avhbench"
    # a2v: labels yes no no, replies read as yes (right), yes (wrong), unreadable; v2a: label no, reply no (right)
    a2v = aggregate(tasks / "avhbench_a2v.yaml", [({"answer": "yes"}, "Yes."), ({"answer": "no"}, "Yes"),
                                                  ({"answer": "no"}, "I don't know")])  # fmt: skip
    v2a = aggregate(tasks / "avhbench_v2a.yaml", [({"answer": "no"}, "No.")])
    assert (a2v["accuracy"], v2a["accuracy"]) == pytest.approx((1 / 3, 1.0))
    group = load_yaml_config(str(tasks / "avhbench_hallucination.yaml"), mode="full")
    pooled = {"accuracy": 2 / 4, "yes_rate": 2 / 4, "invalid_rate": 1 / 4}  # over the 4 questions
    means = {"accuracy": 2 / 3, "yes_rate": 1 / 3, "invalid_rate": 1 / 6}  # of the two tasks' values
    assert {entry["metric"] for entry in group["aggregate_metric_list"]} == set(pooled)
    for entry in group["aggregate_metric_list"]:  # as lmms-eval's consolidate_group_results combines them
        name = entry["metric"]
        value = aggregate_subtask_metrics([a2v[name], v2a[name]], [3, 1], entry["weight_by_size"])
        assert value == pytest.approx(pooled[name]) and value != pytest.approx(means[name]), name


def test_every_question_type_has_its_metric_in_the_yaml():
    # lmms-eval drops, without a word, a metric process_results reports but metric_list does not name
    from lmms_eval.utils import load_yaml_config

    def listed(task: str) -> set[str]:
        config = load_yaml_config(str(REPO / "tasks" / task / f"{task}.yaml"), mode="full")
        return {entry["metric"] for entry in config["metric_list"]}

    music = {name for modality, kinds in music_avqa.QUESTION_TYPES.items() for kind in kinds
             for name in music_avqa.type_metrics(modality, kind)}  # fmt: skip
    assert len(music) == 3 + 9
    assert listed("music_avqa") == {"accuracy", "exact_match", "invalid_rate"} | music
    by_type = {avqa.type_metric(kind) for kind in avqa.QUESTION_TYPES}
    assert len(by_type) == 8 and "accuracy_come_from" in by_type
    assert listed("avqa") == {"accuracy", "invalid_rate"} | by_type


def test_unprepared_data_fails_through_lmms_eval_with_the_command_in_the_traceback(tmp_path, monkeypatch):
    # lmms-eval builds the task (and calls process_docs) inside a tenacity retry: what reaches the caller is a
    # RetryError, with our FileNotFoundError as its cause (the log's last line is "Error during evaluation: RetryError")
    from lmms_eval.tasks import TaskManager, get_task_dict

    monkeypatch.setenv(DATA_ENV, str(tmp_path / "empty"))
    manager = TaskManager(include_path=str(REPO / "tasks"), include_defaults=False)
    with pytest.raises(BaseException) as raised:
        get_task_dict(["avqa"], manager)
    assert type(raised.value).__name__ == "RetryError"
    chain, error = [], raised.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    messages = [str(error) for error in chain if isinstance(error, FileNotFoundError)]
    assert messages and messages[0].startswith(f"avqa is not prepared: no {tmp_path / 'empty' / 'avqa'}")
    assert "Run `fastav-eval prepare-data avqa <the official avqa download folder>`" in messages[0]


def test_a_submitted_run_of_the_paper_tasks_verifies(run, tmp_path, monkeypatch):
    """verify recomputes every task metric, the pooled hallucination group (weighted by size, as its YAML says)
    and each answer's scores, with the prepared data in place."""
    from fastav_eval.analysis.bundle import submit, verify

    monkeypatch.setenv(DATA_ENV, str(run["data"]))
    result = verify(submit(run["output"], tmp_path / "bundle"))
    assert result.ok, result.problems
    assert result.checked["answers re-scored"] == sum(DOCUMENTS.values())
    group = [p for p in verify_group_problems(run, tmp_path) if "group avhbench_hallucination accuracy" in p]
    assert group, "an edited group value must be caught"


def verify_group_problems(run: dict, tmp_path: Path) -> list[str]:
    """The problems verify finds once the group's pooled accuracy in the results JSON is edited."""
    from fastav_eval.analysis.bundle import verify, write_manifest

    bundle = tmp_path / "bundle"
    (results_path,) = (bundle / "results").glob("*_results.json")
    results = json.loads(results_path.read_text())
    for table in ("results", "groups"):
        if "avhbench_hallucination" in results.get(table, {}):
            results[table]["avhbench_hallucination"]["accuracy,none"] += 0.125
    results_path.write_text(json.dumps(results))
    write_manifest(bundle)
    return verify(bundle).problems
