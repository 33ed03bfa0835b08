"""``fastav-eval prepare-data``: official releases to prepared documents, and the errors that name what is wrong."""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from fastav_eval.cli import main
from fastav_eval.data import DATA_ENV, load_documents, prepare
from fastav_eval.data.common import MANIFEST_FILE, read_prepared, sha256
from tests.data.releases import (
    AVHBENCH_QA,
    AVQA_VAL,
    MUSIC_AVQA_TEST,
    write_avhbench,
    write_avqa,
    write_music_avqa,
)
from tests.lmms.av_task_fixtures import CLIP_SECONDS, write_clip

TASKS = Path(__file__).resolve().parents[2] / "tasks"


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("releases")
    return {"avhbench": write_avhbench(root), "music_avqa": write_music_avqa(root), "avqa": write_avqa(root)}


def copy_release(releases: dict[str, Path], name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(releases[name], tmp_path / releases[name].name))


def rewrite(path: Path, entries: list[dict]) -> None:
    path.write_text(json.dumps(entries), encoding="utf-8")


# --------------------------------------------------------------------------------------------------------------------
# The three converters on their official layouts


def test_avhbench_documents_keep_the_official_fields(releases, tmp_path):
    folder, conversion = prepare("avhbench", releases["avhbench"], tmp_path)
    documents = read_prepared_at(tmp_path, "avhbench")
    assert folder == tmp_path / "avhbench" and len(documents) == len(AVHBENCH_QA) == 9
    assert conversion.counts == {"a2v": 3, "v2a": 2, "match": 2, "caption": 2}
    for document, entry in zip(documents, AVHBENCH_QA, strict=True):
        assert {key: document[key] for key in entry} == entry  # video_id, task, text, label unchanged
        assert Path(document["video_path"]).is_absolute() and Path(document["video_path"]).is_file()
        assert Path(document["video_path"]).name == f"{entry['video_id']}.mp4"
    assert [d["answer"] for d in documents[:5]] == ["yes", "no", "yes", "no", "yes"]
    assert documents[5]["subset"] == "caption" and documents[5]["answer"] == AVHBENCH_QA[5]["label"]
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["annotations_sha256"] == sha256(releases["avhbench"] / "QA.json") and manifest["documents"] == 9


def test_music_avqa_fills_templates_and_drops_deleted_questions(releases, tmp_path):
    _, conversion = prepare("music_avqa", releases["music_avqa"], tmp_path)
    documents = {d["question_id"]: d for d in read_prepared_at(tmp_path, "music_avqa")}
    assert len(documents) == len(MUSIC_AVQA_TEST) - 1 and 28157 not in documents  # question_deleted: 1
    assert conversion.notes == {"question_deleted": 1}
    assert documents[40]["question"] == "Is the clarinet louder than the acoustic_guitar?"
    assert documents[3534]["question"] == "What is the instrument on the left of saxophone?"
    assert documents[3535]["question"] == "How many sounding violin in the video?"  # full-width "？" -> "?"
    rhythmic = "Is the instrument on the right more rhythmic than the instrument on the left?"  # <LR> twice
    assert documents[28156]["question"] == rhythmic
    assert documents[40]["question_content"] == "Is the <Object> louder than the <Object>?"  # the official field stays
    assert (documents[3533]["modality"], documents[3533]["question_type"]) == ("Audio-Visual", "Temporal")
    assert documents[28155]["answer"] == documents[28155]["anser"] == "acoustic_guitar"
    assert Path(documents[28154]["video_path"]).parent.name == "MUCIS-AVQA-videos-Synthetic"  # any sub-folder
    assert all(count == 1 for count in conversion.counts.values()) and len(conversion.counts) == 9


def test_avqa_documents_letter_the_answer(releases, tmp_path):
    _, conversion = prepare("avqa", releases["avqa"], tmp_path)  # val_qa.json, not train_qa.json
    documents = read_prepared_at(tmp_path, "avqa")
    assert [d["id"] for d in documents] == [e["id"] for e in AVQA_VAL]
    assert [d["answer_letter"] for d in documents] == ["B", "A", "C", "D"]
    assert [d["doc_key"] for d in documents] == ["183", "184", "9001", "9002"]
    assert documents[0]["options"] == AVQA_VAL[0]["multi_choice"] and documents[0]["answer"] == 1
    assert documents[0]["question_relation"] == "View"  # kept when present
    assert Path(documents[0]["video_path"]).name == "-HG3Omg_89c_000030.mp4"
    assert conversion.counts["Happening"] == 1 and conversion.counts["When"] == 0
    assert conversion.notes == {"null_options": 0, "padded_options": 0}


def convert_avqa(releases: dict[str, Path], tmp_path: Path, edit) -> tuple[list[dict], dict]:
    """AVQA_VAL edited by ``edit`` (in place), converted; the documents and the manifest notes."""
    source = copy_release(releases, "avqa", tmp_path)
    entries = copy.deepcopy(AVQA_VAL)
    edit(entries)
    rewrite(source / "val_qa.json", entries)
    _, conversion = prepare("avqa", source, tmp_path / "out")
    return read_prepared_at(tmp_path / "out", "avqa"), conversion.notes


def test_a_null_avqa_option_reads_as_null(releases, tmp_path):
    documents, notes = convert_avqa(releases, tmp_path, lambda e: e[0]["multi_choice"].__setitem__(3, None))
    assert documents[0]["options"][3] == "null"
    assert notes == {"null_options": 1, "padded_options": 0}


def test_a_short_avqa_choice_list_is_padded_with_null(releases, tmp_path):
    def edit(entries):
        entries[0]["multi_choice"] = ["motorboat", "Yacht consignment"]  # answer 1: the second
        entries[2]["multi_choice"] = ["dog", "cat", "cow"]  # answer 2: the third

    documents, notes = convert_avqa(releases, tmp_path, edit)
    assert documents[0]["options"] == ["motorboat", "Yacht consignment", "null", "null"]
    assert documents[2]["options"] == ["dog", "cat", "cow", "null"]
    assert notes == {"null_options": 0, "padded_options": 3}  # 2 + 1
    assert [d["answer_letter"] for d in documents] == ["B", "A", "C", "D"]


def test_avqa_reads_only_the_fields_the_task_uses(releases, tmp_path):
    def edit(entries):
        for entry in entries:
            del entry["id"], entry["question_relation"], entry["video_id"]
        entries[1]["answer"] = "0"  # the preprocessing reads int(answer)
        entries[3]["answer"] = " 3"

    documents, _ = convert_avqa(releases, tmp_path, edit)
    assert [d["doc_key"] for d in documents] == ["#0", "#1", "#2", "#3"]  # the position when there is no id
    assert [d["answer"] for d in documents] == [1, 0, 2, 3] and [d["answer_letter"] for d in documents][1] == "A"
    assert "question_relation" not in documents[0] and "id" not in documents[0]


# --------------------------------------------------------------------------------------------------------------------
# What is wrong, named


def test_a_missing_video_names_the_id_and_the_annotation_file(releases, tmp_path):
    source = copy_release(releases, "avhbench", tmp_path)
    (source / "videos" / "01162.mp4").unlink()
    with pytest.raises(ValueError, match=r"QA\.json: 1 video_id value\(s\) have no video file under .*: 01162"):
        prepare("avhbench", source, tmp_path / "out")


def test_allow_missing_drops_the_documents_of_missing_videos_and_records_them(releases, tmp_path, capsys):
    source = copy_release(releases, "avhbench", tmp_path)
    (source / "videos" / "01162.mp4").unlink()  # entries 6, 7 and 8 name it
    out = tmp_path / "out"
    assert main(["prepare-data", "avhbench", str(source), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "QA.json: 1 video_id value(s) have no video file under" in error and ": 01162 (looked for" in error
    assert "--allow-missing drops their documents" in error and not (out / "avhbench").exists()
    assert main(["prepare-data", "avhbench", str(source), "--out", str(out), "--allow-missing"]) == 0
    assert "6 of 9 documents kept (1 videos missing" in capsys.readouterr().out
    manifest = json.loads((out / "avhbench" / MANIFEST_FILE).read_text())
    assert manifest["notes"] == {
        "missing_videos": {"videos": 1, "documents_dropped": 3, "documents_read": 9, "first_ids": ["01162"]}
    }
    assert manifest["documents"] == 6 and manifest["counts"] == {"a2v": 2, "v2a": 2, "match": 1, "caption": 1}
    assert {d["video_id"] for d in read_prepared_at(out, "avhbench")} == {"00191"}
    (source / "videos" / "00191.mp4").rename(source / "videos" / "other.mp4")  # none named: nothing kept, an error
    with pytest.raises(ValueError, match=r"2 video_id value\(s\) have no video file under .*: 00191, 01162 \("):
        prepare("avhbench", source, out, allow_missing=True)


def test_avhbench_align_ft_task_names_are_the_hallucination_tasks(releases, tmp_path):
    source = copy_release(releases, "avhbench", tmp_path)
    entries = copy.deepcopy(AVHBENCH_QA)
    entries[0]["task"] = "AV Hallucination (Audio)"  # was Video-driven Audio Hallucination
    entries[2]["task"] = "AV Hallucination (Video)"  # was Audio-driven Video Hallucination
    rewrite(source / "QA.json", entries)
    _, conversion = prepare("avhbench", source, tmp_path / "out")
    documents = read_prepared_at(tmp_path / "out", "avhbench")
    assert [d["subset"] for d in documents[:4]] == ["v2a", "v2a", "a2v", "a2v"]
    assert documents[0]["task"] == "AV Hallucination (Audio)"  # the official field unchanged
    assert conversion.counts == {"a2v": 3, "v2a": 2, "match": 2, "caption": 2}


def test_a_silent_video_is_refused_unless_the_check_is_off(releases, tmp_path):
    source = copy_release(releases, "avqa", tmp_path)
    write_clip(source / "video" / "0012y1s1bJI_000350.mp4", CLIP_SECONDS, audio=False)
    with pytest.raises(ValueError, match=r"1 video\(s\) referenced by val_qa\.json have no audio track"):
        prepare("avqa", source, tmp_path / "out")
    prepare("avqa", source, tmp_path / "out", check_audio=False)


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        ("avhbench", lambda e: e[2].update(label="Maybe"),
         r"QA\.json entry 2: field 'label' is 'Maybe'; accepted for 'Audio-driven Video Hallucination': 'Yes', 'No'"),
        ("avhbench", lambda e: e[0].update(task="AV Hallucination (Audio_only)"),
         r"field 'task' has value\(s\) AV Hallucination \(Audio_only\); accepted: 'Audio-driven Video Hallucination', "
         r"'Video-driven Audio Hallucination', 'AV Matching', 'AV Captioning', 'AV Hallucination \(Audio\)', "
         r"'AV Hallucination \(Video\)'$"),
        ("avhbench", lambda e: e[1].pop("text"), r"entry 1: missing field 'text'"),
        ("music_avqa", lambda e: e[1].update(templ_values='["clarinet"]'),
         r"entry 1: fields 'question_content' / 'templ_values': 2 placeholder\(s\)"),
        ("music_avqa", lambda e: e[0].update(anser="guitar"), r"entry 0: field 'anser' is 'guitar'; accepted: the 42"),
        ("music_avqa", lambda e: e[0].update(type='["Visual", "Temporal"]'),
         r"entry 0: field 'type' is '\[\"Visual\", \"Temporal\"\]'; accepted: \['Audio', one of"),
        ("music_avqa", lambda e: e[3].update(question_id=12), r"entry 3: field 'question_id' 12 repeats"),
        ("avqa", lambda e: e[1].update(answer=4), r"entry 1: field 'answer' is 4; accepted: an index 0-3"),
        ("avqa", lambda e: e[1].update(answer="B"), r"entry 1: field 'answer' is 'B'; accepted: an index 0-3 \(int or"),
        ("avqa", lambda e: e[1].update(answer=True), r"entry 1: field 'answer' must be int or str, got True"),
        ("avqa", lambda e: e[0].update(answer=2, multi_choice=["a", "b"]),
         r"entry 0: field 'answer' is 2, but 'multi_choice' lists 2 option\(s\)"),
        ("avqa", lambda e: e[2].update(question_type="How"), r"entry 2: field 'question_type' is 'How'; accepted:"),
        ("avqa", lambda e: e[0].update(multi_choice=list("abcde")), r"entry 0: field 'multi_choice' must list 1-4"),
        ("avqa", lambda e: e[0].update(multi_choice=[]), r"entry 0: field 'multi_choice' must list 1-4"),
        ("avqa", lambda e: e[3].update(id=183), r"entry 3: field 'id' 183 repeats an earlier entry"),
        ("avqa", lambda e: e[0].pop("question_text"), r"entry 0: missing field 'question_text'"),
    ],
)  # fmt: skip
def test_a_bad_annotation_names_the_entry_and_the_field(releases, tmp_path, name, edit, message):
    source = copy_release(releases, name, tmp_path)
    annotation = {"avhbench": "QA.json", "music_avqa": "data/json_update/avqa-test.json", "avqa": "val_qa.json"}[name]
    entries = json.loads((source / annotation).read_text())
    edit(entries)
    rewrite(source / annotation, entries)
    with pytest.raises(ValueError, match=message):
        prepare(name, source, tmp_path / "out")


def test_annotation_discovery(releases, tmp_path):
    source = copy_release(releases, "music_avqa", tmp_path)
    original = source / "data" / "json" / "avqa-test.json"  # the release's other test file, next to json_update/
    original.parent.mkdir(parents=True)
    shutil.copy(source / "data" / "json_update" / "avqa-test.json", original)
    with pytest.raises(ValueError, match=r"several music_avqa annotation files .* pick one with --annotations"):
        prepare("music_avqa", source, tmp_path / "out")
    _, conversion = prepare("music_avqa", source, tmp_path / "out", annotations=original)
    assert conversion.annotations == original
    videos_only = tmp_path / "videos"
    shutil.copytree(source / "MUSIC-AVQA-videos-Real", videos_only / "MUSIC-AVQA-videos-Real")
    with pytest.raises(ValueError, match=r"no music_avqa annotation file \(avqa-test\.json\) under .*--annotations"):
        prepare("music_avqa", videos_only, tmp_path / "out")
    with pytest.raises(ValueError, match="unknown dataset 'avsd'; accepted:"):
        prepare("avsd", source, tmp_path / "out")


# --------------------------------------------------------------------------------------------------------------------
# The command and what the tasks read


def test_prepare_data_command(releases, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "elsewhere"))
    assert main(["prepare-data", "avqa", str(releases["avqa"]), "--out", str(tmp_path / "data")]) == 0
    printed = capsys.readouterr().out
    assert f"{tmp_path / 'data' / 'avqa'}: 4 documents from" in printed
    assert f"run it with {DATA_ENV}={tmp_path / 'data'}" in printed
    source = copy_release(releases, "avqa", tmp_path)
    (source / "video" / "0012y1s1bJI_000350.mp4").unlink()
    assert main(["prepare-data", "avqa", str(source), "--out", str(tmp_path / "data")]) == 2
    assert "fastav-eval prepare-data: error: val_qa.json: 1 video_name value(s)" in capsys.readouterr().err


def test_missing_or_stale_prepared_data_names_the_command(releases, tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"avhbench is not prepared: .*Run `fastav-eval prepare-data avhbench"):
        load_documents("avhbench", "a2v")
    prepare("avhbench", releases["avhbench"], tmp_path)
    assert len(load_documents("avhbench", "a2v")) == 3
    manifest = tmp_path / "avhbench" / MANIFEST_FILE
    manifest.write_text(manifest.read_text().replace('"format_version": 1', '"format_version": 0'))
    with pytest.raises(ValueError, match=r"written by format version 0.*run `fastav-eval prepare-data avhbench"):
        load_documents("avhbench")


def load_utils(task: str):
    spec = importlib.util.spec_from_file_location(f"{task}_utils_under_test", TASKS / task / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def placeholder(task: str):
    import datasets

    return datasets.Dataset.from_json(str(TASKS / task / "prepared.jsonl"))


def test_task_hooks_read_the_prepared_documents(releases, tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    for name in releases:
        prepare(name, copy_release(releases, name, tmp_path / "sources"), tmp_path)
    avhbench = load_utils("avhbench")
    a2v = avhbench.a2v_docs(placeholder("avhbench"))
    assert [d["text"] for d in a2v] == [AVHBENCH_QA[2]["text"], AVHBENCH_QA[3]["text"], AVHBENCH_QA[8]["text"]]
    assert avhbench.doc_to_text(a2v[0], {"pre_prompt": "", "post_prompt": ""}) == AVHBENCH_QA[2]["text"]
    assert avhbench.doc_to_visual(a2v[0]) == [a2v[0]["video_path"]]
    assert avhbench.process_judgment(a2v[0], ["Yes, he is."])["accuracy"] == 1.0
    assert avhbench.process_judgment(a2v[1], ["Maybe."])["invalid_rate"] == 1.0

    music = load_utils("music_avqa").docs(placeholder("music_avqa"))
    scored = load_utils("music_avqa").process_results(music[1], ["Yes."])
    assert scored == {"accuracy": 1.0, "exact_match": 1.0, "invalid_rate": 0.0,
                      "accuracy_audio": 1.0, "accuracy_audio_comparative": 1.0}  # fmt: skip

    avqa = load_utils("avqa")
    documents = avqa.docs(placeholder("avqa"))
    text = avqa.doc_to_text(documents[0], {"pre_prompt": "", "post_prompt": "\nAnswer with the letter."})
    assert text == (
        "What happened in the video?\nA. motorboat\nB. Yacht consignment\nC. Sailing\nD. Water skiing"
        "\nAnswer with the letter."
    )
    assert avqa.process_results(documents[0], ["B."]) == {"accuracy": 1.0, "invalid_rate": 0.0,
                                                         "accuracy_happening": 1.0}  # fmt: skip

    with pytest.raises(ValueError, match=r"must load its folder's prepared\.jsonl"):
        avhbench.a2v_docs(placeholder("avqa"))
    Path(a2v[0]["video_path"]).rename(tmp_path / "moved.mp4")
    with pytest.raises(FileNotFoundError, match=r"avhbench document 00191#2: video .* does not exist"):
        avhbench.doc_to_visual(a2v[0])


def read_prepared_at(root: Path, name: str) -> list[dict]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DATA_ENV, str(root))
        return read_prepared(name)
