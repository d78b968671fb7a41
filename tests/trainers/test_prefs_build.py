"""``medbench prefs build`` on the bundled demo images: determinism, offline, bad input, LLM mode, every recipe."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
from _prefdata import FAST

from medbench.data.loading import DEMO_DIR
from medbench.judge.config import JudgeConfig
from judge_server import LoopbackJudgeServer
from medbench.train.config import load_recipe, recipe_paths
from medbench.train.data import load_preference_file, validate_records
from medbench.train.objectives import OBJECTIVES
from medbench.train.prefs.build import BuildOptions, build
from medbench.train.prefs.images import corrupt
from medbench.train.prefs.llm import LLMRejectedWriter, parse_rejected, sanity_problem
from medbench.train.prefs.rules import candidate_edits, record_rng, rule_edit, tag_error_type

DEMO_VQA = DEMO_DIR / "vqa.jsonl"
RECIPES = [path.stem for path in recipe_paths()]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("recipe", ["dpo", "copo", "mdpo", "mmedpo", "error_targeted"])
def test_same_seed_same_files_other_seed_other_files(tmp_path, recipe):
    options = BuildOptions(recipe=recipe, seed=7, progress=False)
    first = build(str(DEMO_VQA), tmp_path / "a", options)
    build(str(DEMO_VQA), tmp_path / "b", options)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    build(str(DEMO_VQA), tmp_path / "c", BuildOptions(recipe=recipe, seed=8, progress=False))
    assert _tree(tmp_path / "a") != _tree(tmp_path / "c")
    counts = first.manifest["counts"]
    assert counts["input"] == 24 and counts["built"] + counts["skipped"] == 24
    if "rejected" in first.manifest["recipe"]["fields"]:
        assert sum(counts["rule"].values()) == counts["built"] == sum(counts["error_type"].values())
    if "rejected_image" in first.manifest["recipe"]["fields"]:
        assert counts["corruption"] == {first.manifest["corruption"]["kind"]: counts["built"]}


def test_order_of_records_does_not_change_any_record(tmp_path):
    lines = DEMO_VQA.read_text().splitlines()
    reversed_file = tmp_path / "vqa.jsonl"
    reversed_file.write_text("\n".join(reversed(lines)) + "\n")
    options = BuildOptions(recipe="mdpo", seed=1, progress=False, image_root=str(DEMO_DIR))
    a = build(str(DEMO_VQA), tmp_path / "a", options)
    b = build(str(reversed_file), tmp_path / "b", options)
    rows_a = {r["id"]: r for r in map(json.loads, a.records_path.read_text().splitlines())}
    rows_b = {r["id"]: r for r in map(json.loads, b.records_path.read_text().splitlines())}
    for row in (*rows_a.values(), *rows_b.values()):
        row["meta"].pop("source")
    assert rows_a == rows_b
    assert _tree(tmp_path / "a" / "images") == _tree(tmp_path / "b" / "images")


def test_offline_build_opens_no_socket(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("offline prefs build opened a socket")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    report = build(str(DEMO_VQA), tmp_path / "out", BuildOptions(recipe="mmedpo", progress=False))
    assert report.manifest["counts"]["built"] == 24 and report.manifest["llm"] is None


def test_bad_records_are_reported_and_the_rest_built(tmp_path):
    shutil.copytree(DEMO_DIR / "images", tmp_path / "images")
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    rows = [
        {"id": "ok", "image": "images/ct_small.png", "question": "Is this a CT scan?", "answer": "yes"},
        {"id": "missing", "image": "images/nope.png", "question": "Is this a CT scan?", "answer": "yes"},
        {"id": "broken", "image": "images/broken.png", "question": "Is this a CT scan?", "answer": "yes"},
        {"id": "empty", "image": "images/ct_small.png", "question": "Is this a CT scan?", "answer": "  "},
        {"id": "norule", "image": "images/ct_small.png", "question": "Describe it.", "answer": "a grey picture"},
    ]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = build(str(data), tmp_path / "out", BuildOptions(recipe="dpo", progress=False))
    problems = {entry["id"]: entry["problem"] for entry in report.manifest["skipped"]}
    assert set(problems) == {"missing", "broken", "empty", "norule"}
    assert "not found" in problems["missing"] and "cannot read" in problems["broken"]
    assert problems["empty"] == "empty answer" and problems["norule"] == "no rule applies"
    assert [json.loads(line)["id"] for line in report.records_path.read_text().splitlines()] == ["ok"]


def test_a_task_name_reads_its_configured_source(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDBENCH_DATA", "demo")
    report = build("medbench_vqa_rad", tmp_path / "out", BuildOptions(recipe="dpo", progress=False))
    assert report.manifest["input"]["kind"] == "task" and report.manifest["input"]["source"] == "demo"
    assert report.manifest["counts"]["built"] == 24


@pytest.mark.parametrize(
    "question, answer, rule, rejected, error_type",
    [
        ("Is this a CT scan?", "yes", "yes_no", "no", "modality"),
        ("Is there an effusion?", "No evidence of pleural effusion.", "presence_flip", "Pleural effusion is present.",
         "presence_abnormality"),
        ("Any microaneurysms?", "No microaneurysms are seen.", "presence_flip", "Microaneurysms are seen.",
         "presence_abnormality"),
        ("Where is the nodule?", "In the left lung.", "swap:laterality", "In the right lung.", "laterality_position"),
        ("How many nodules?", "Three nodules are visible.", "number", None, "count"),
        ("How big?", "A 2 cm nodule.", "number", None, "size"),
        ("In which plane?", "axial", "swap:plane", None, "plane"),
    ],
)
def test_each_rule_makes_a_minimal_edit_and_tags_it(question, answer, rule, rejected, error_type):
    edits = {e.rule: e for e in candidate_edits(question, answer, record_rng(0, "x", "rejected"))}
    edit = edits[rule]
    assert edit.rejected != answer and edit.error_type == error_type
    if rejected is not None:
        assert edit.rejected == rejected
    # The rule-based tagger, reading only the question and the edit, agrees with the rule's own tag.
    assert tag_error_type(question, answer, edit.rejected) == error_type


def test_rules_can_be_restricted():
    assert rule_edit("Where?", "In the left lung.", record_rng(0, "x", "r"), frozenset({"number"})) is None
    assert rule_edit("Where?", "In the left lung.", record_rng(0, "x", "r"), frozenset({"swap"})).rule.startswith("swap")


@pytest.mark.parametrize("kind", ["noise", "crop", "blackout", "blur"])
def test_corruptions_record_parameters_and_respect_the_box(kind):
    from PIL import Image

    image = Image.open(DEMO_DIR / "images" / "fundus_retina.png").convert("RGB")
    out, params = corrupt(image, kind, record_rng(0, "x", "image"), box=[0, 0, 20, 10])
    again, params_again = corrupt(image, kind, record_rng(0, "x", "image"), box=[0, 0, 20, 10])
    assert out.tobytes() == again.tobytes() and params == params_again and params["kind"] == kind
    if kind == "crop":
        assert params["kept_area"] <= 0.2 and out.size[0] * out.size[1] <= 0.2 * image.size[0] * image.size[1]
    elif kind in ("noise", "blackout"):
        import numpy as np

        diff = np.asarray(out).astype(int) != np.asarray(image).astype(int)
        assert params["region"] == "box" and params["box"] == [0, 0, 20, 10]
        assert diff[:10, :20].any() and not diff[10:, :].any() and not diff[:, 20:].any()
    _, default = corrupt(image, "noise", record_rng(0, "x", "image"))
    w, h = image.size
    assert default["region"] == "default" and default["box"] == [w // 4, h // 4, 3 * w // 4, 3 * h // 4]


def test_llm_answers_are_parsed_and_checked():
    assert parse_rejected('```json\n{"rejected": "right", "error_type": "laterality_position"}\n```')["rejected"] == "right"
    with pytest.raises(ValueError):
        parse_rejected("I cannot help with that.")
    assert sanity_problem("The lesion is on the left.", "the lesion is on the left") == "identical"
    assert sanity_problem("The lesion is on the left side.", "Completely different text about other things here.") == (
        "not_minimal"
    )
    assert sanity_problem("The lesion is on the left.", "The lesion is on the right.") is None


def _llm_answer(messages):
    user = messages[-1]["content"]
    answer = user.split("CORRECT ANSWER:", 1)[1].strip()
    if answer == "yes":
        return "rejected", json.dumps({"rejected": "no", "error_type": "visual misinterpretation"})
    if answer == "no":
        return "rejected", json.dumps({"rejected": "No.", "error_type": "modality"})  # identical after normalising
    if answer == "CT":
        return "rejected", "Sure! Here is a wrong answer: MRI"  # never JSON: retried, then failed
    return "rejected", json.dumps({"rejected": f"not {answer}", "error_type": "organ"})


def test_llm_mode_through_the_judge_transport_with_failures(tmp_path):
    with LoopbackJudgeServer(answer=_llm_answer, script=["500", "429", "garbage"]) as server:
        config = JudgeConfig(model="loopback", base_url=server.base_url, max_retries=2, backoff_base=0.0,
                             backoff_max=0.0, concurrency=4, timeout=10.0, progress=False)
        writer = LLMRejectedWriter(config)
        report = build(str(DEMO_VQA), tmp_path / "out", BuildOptions(recipe="dpo", mode="llm", progress=False),
                       llm_writer=writer)
    manifest = report.manifest
    rows = [json.loads(line) for line in report.records_path.read_text().splitlines()]
    answers = [json.loads(line)["answer"] for line in DEMO_VQA.read_text().splitlines()]
    assert manifest["counts"]["rejected_by_check"]["identical"] == answers.count("no")
    assert manifest["counts"]["rejected_by_check"]["llm_failed"] == answers.count("CT")
    assert len(rows) == len(answers) - answers.count("no") - answers.count("CT")
    by_answer = {row["chosen"]: row for row in rows}
    # The model's near-miss key is not trusted: the rule-based tagger decides (a flipped yes -> question topic).
    assert by_answer["yes"]["error_type"] in ("modality", "presence_abnormality", "colour", "organ")
    assert manifest["counts"]["error_type_source"]["rules"] == answers.count("yes")
    assert all(row["meta"]["rule"] == "llm" and row["meta"]["edit"] == "rejected_answer-v1" for row in rows)
    stats = manifest["llm"]["stats"]
    assert stats["retries"] >= 3 and stats["failures"] == answers.count("CT")
    assert manifest["llm"]["prompt"]["id"] == "rejected_answer-v1" and len(manifest["llm"]["prompt"]["sha256"]) == 64
    assert server.count("500") == 1 and server.count("429") == 1 and server.count("garbage") == 1


@pytest.mark.parametrize("recipe_name", RECIPES)
def test_built_records_pass_the_trainers_validation(tmp_path, recipe_name):
    report = build(str(DEMO_VQA), tmp_path / "out", BuildOptions(recipe=recipe_name, progress=False))
    recipe = load_recipe(recipe_name)
    records = load_preference_file(report.records_path)
    validate_records(records, recipe.name, OBJECTIVES[recipe.objective], frozenset(recipe.visual_error_types),
                     report.records_path)
    assert len(records) == report.manifest["counts"]["built"] > 0


@pytest.mark.parametrize("recipe_name", RECIPES)
def test_built_records_train_two_steps(tmp_path, tiny_model_dirs, recipe_name):
    import math

    from medbench.train.run import train

    report = build(str(DEMO_VQA), tmp_path / "out", BuildOptions(recipe=recipe_name, progress=False, limit=4))
    recipe = load_recipe(recipe_name, {**FAST, "max_length": 256})
    result = train(recipe, tiny_model_dirs["llava"], report.records_path, tmp_path / "run")
    steps = [entry for entry in result.log_history if "loss" in entry]
    assert [entry["step"] for entry in steps] == [1, 2] and all(math.isfinite(e["loss"]) for e in steps)


def test_cli_builds_and_reports(tmp_path, capsys):
    from medbench.cli import main

    assert main(["prefs", "build", str(DEMO_VQA), "--recipe", "mmedpo", "--output_dir", str(tmp_path / "o"),
                 "--corruption", "blur", "--radius", "3", "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert "24 of 24 records built for recipe mmedpo (0 skipped)" in out
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["corruption"]["kind"] == "blur" and manifest["options"]["corruption_options"] == {"blur": {"radius": 3.0}}
    rows = [json.loads(line) for line in (tmp_path / "o" / "prefs.jsonl").read_text().splitlines()]
    assert all(0.5 <= row["weight"] <= 1.5 and row["meta"]["corruption"]["radius"] == 3.0 for row in rows)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["nope.jsonl", "--recipe", "dpo"], "neither a file nor a medbench task name"),
        ([str(DEMO_VQA), "--recipe", "nosuch"], "recipe file not found: nosuch"),
        ([str(DEMO_VQA), "--recipe", "dpo", "--mode", "llm"], "needs a model"),
        ([str(DEMO_VQA), "--recipe", "mdpo", "--max_area", "0.5"], "must lie in (0, 0.2]"),
    ],
)
def test_cli_mistakes_are_one_line(tmp_path, capsys, monkeypatch, argv, message):
    from medbench.cli import main

    monkeypatch.delenv("MEDBENCH_JUDGE_MODEL", raising=False)
    assert main(["prefs", "build", *argv, "--output_dir", str(tmp_path / "o"), "--no_progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
