"""``medbench prefs build`` on the bundled demo images: determinism, offline, bad input, LLM mode, every recipe."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
from _prefdata import FAST
from judge_server import LoopbackJudgeServer

from medbench.data.loading import DEMO_DIR
from medbench.judge.config import JudgeConfig
from medbench.train.config import load_recipe, recipe_paths
from medbench.train.data import load_preference_file, validate_records
from medbench.train.objectives import OBJECTIVES
from medbench.train.prefs.build import BuildOptions, build
from medbench.train.prefs.images import corrupt
from medbench.train.prefs.llm import (
    PrefsLLM,
    parse_error_type,
    parse_rejected,
    parse_relevance,
    sanity_problem,
    taxonomy_key,
)
from medbench.train.prefs.rules import candidate_edits, record_rng, rule_edit, tag_error_type

DEMO_VQA = DEMO_DIR / "vqa.jsonl"
RECIPES = [path.stem for path in recipe_paths()]
PREFERENCE_RECIPES = [name for name in RECIPES if not load_recipe(name).online]  # grpo trains in test_grpo.py


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


def test_unreadable_lines_and_duplicate_ids_are_skipped_and_names_never_collide(tmp_path):
    shutil.copytree(DEMO_DIR / "images", tmp_path / "images")
    rows = [
        json.dumps({"id": "a/b", "image": "images/ct_small.png", "question": "Where?", "answer": "In the left lung."}),
        json.dumps({"id": "a_b", "image": "images/fundus_retina.png", "question": "Where?", "answer": "In the left eye."}),
        '{"id": "cut", "image": "images/ct_small.png", "question": "Where',  # a line cut short
        json.dumps({"id": "twice", "image": "images/ct_small.png", "question": "Where?", "answer": "Left."}),
        json.dumps({"id": "twice", "image": "images/fundus_retina.png", "question": "Where?", "answer": "Right."}),
    ]
    data = tmp_path / "in.jsonl"
    data.write_text("\n".join(rows) + "\n")
    report = build(str(data), tmp_path / "out", BuildOptions(recipe="copo", progress=False))
    skipped = report.manifest["skipped"]
    assert [(e["where"].rsplit(":", 1)[1], e["problem"]) for e in skipped] == [
        ("3", "not valid JSON (Unterminated string starting at)"),
        ("4", "id 'twice' occurs 2 times; ids must be unique"),
        ("5", "id 'twice' occurs 2 times; ids must be unique"),
    ]
    built = {r["id"]: r for r in map(json.loads, report.records_path.read_text().splitlines())}
    assert set(built) == {"a/b", "a_b"}
    assert built["a/b"]["rejected_image"] != built["a_b"]["rejected_image"]  # a CT never gets a noised fundus photo


@pytest.mark.parametrize(
    "answer, rule, rejected, error_type",
    [
        ("No\u00a0pleural effusion is seen.", "presence_flip", "Pleural effusion is seen.", "presence_abnormality"),
        ("Heart is enlarged. No effusion is seen.", "presence_flip", "Heart is enlarged. Effusion is seen.",
         "presence_abnormality"),
        ("A 3cm mass.", "number", None, "size"),
        ("About 40% of the lung.", "number", None, "size"),
        ("Stage 2 disease.", "number", "absent", None),
    ],
)
def test_presence_and_number_rules_stay_inside_one_sentence_and_read_units(answer, rule, rejected, error_type):
    edits = {e.rule: e for e in candidate_edits("What is seen?", answer, record_rng(0, "x", "rejected"))}
    if rejected == "absent":  # "Stage 2" is a category, not a count
        assert rule not in edits
        return
    edit = edits[rule]
    assert edit.error_type == error_type and tag_error_type("What is seen?", answer, edit.rejected) == error_type
    if rejected is not None:
        assert edit.rejected == rejected
    assert "No No" not in edit.rejected


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


@pytest.mark.parametrize(
    "answer, swappable",
    [
        ("No pleural effusion.", []),
        ("Without fracture.", []),
        ("There is no evidence of pneumothorax, cyst or abscess in the left lung.", []),
        ("Negative for metastasis.", []),
        ("Free of haemorrhage; the liver is enlarged.", ["liver", "enlarged"]),
        ("Pneumonia is absent.", []),
        ("Cardiomegaly is not seen on this CT.", ["CT"]),
        ("No fracture of the femur, but a small cyst in the right kidney.", ["small", "cyst", "right", "kidney"]),
        ("The left kidney shows no tumour.", ["left", "kidney"]),
    ],
)
def test_terms_under_a_negation_are_never_swapped(answer, swappable):
    """Under "no"/"without"/"is absent" a finding is asserted absent: swapping it makes another true sentence."""
    swapped = set()
    for seed in range(40):
        for edit in candidate_edits("Findings?", answer, record_rng(seed, "neg", "rejected")):
            if edit.rule.startswith("swap:"):
                swapped.add(edit.detail.split(" -> ")[0].lower())
    assert swapped == {term.lower() for term in swappable}, swapped


@pytest.mark.parametrize(
    "question, topic",
    [("Is the left kidney enlarged?", "size"), ("Is the heart enlarged?", "size"), ("Is this a CT scan?", "modality"),
     ("Is the lesion in the left lobe?", "laterality_position"), ("Is there an effusion?", "presence_abnormality")],
)
def test_a_yes_no_flip_is_about_what_the_question_asks(question, topic):
    edit = candidate_edits(question, "Yes.", record_rng(0, "x", "rejected"))[0]
    assert edit.rule == "yes_no" and edit.error_type == topic


def test_rules_can_be_restricted():
    assert rule_edit("Where?", "In the left lung.", record_rng(0, "x", "r"), frozenset({"number"})) is None
    assert rule_edit("Where?", "In the left lung.", record_rng(0, "x", "r"), frozenset({"swap"})).rule.startswith("swap")


@pytest.mark.parametrize("kind", ["noise", "crop", "blackout", "blur", "fill"])
def test_corruptions_record_parameters_and_respect_the_box(kind):
    from PIL import Image

    image = Image.open(DEMO_DIR / "images" / "fundus_retina.png").convert("RGB")
    out, params = corrupt(image, kind, record_rng(0, "x", "image"), box=[0, 0, 20, 10])
    again, params_again = corrupt(image, kind, record_rng(0, "x", "image"), box=[0, 0, 20, 10])
    assert out.tobytes() == again.tobytes() and params == params_again and params["kind"] == kind
    if kind == "crop":
        assert params["kept_area"] <= 0.2 and out.size[0] * out.size[1] <= 0.2 * image.size[0] * image.size[1]
    elif kind in ("noise", "blackout", "fill"):
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
        report = build(str(DEMO_VQA), tmp_path / "out", BuildOptions(recipe="dpo", mode="llm", progress=False),
                       llm=PrefsLLM(config))
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
    assert list(manifest["llm"]["prompts"]) == ["rejected_answer"]
    prompt = manifest["llm"]["prompts"]["rejected_answer"]
    assert prompt["id"] == "rejected_answer-v1" and len(prompt["sha256"]) == 64
    assert server.count("500") == 1 and server.count("429") == 1 and server.count("garbage") == 1


def _loopback_config(server, **extra) -> JudgeConfig:
    settings = {"model": "loopback", "base_url": server.base_url, "max_retries": 3, "backoff_base": 0.0,
                "backoff_max": 0.0, "concurrency": 4, "timeout": 10.0, "progress": False}
    return JudgeConfig(**{**settings, **extra})


def _sections(messages) -> tuple[str, str, str | None]:
    """(what the prompt asks for, the chosen answer, the rejected answer) of one prefs LLM request."""
    user = messages[-1]["content"]
    asked = next(key for key in ('{"score"', '{"error_type"', '{"rejected"') if key in user)
    chosen = user.split("CORRECT ANSWER:", 1)[1].split("WRONG ANSWER:", 1)[0].strip()
    rejected = user.split("WRONG ANSWER:", 1)[1].strip() if "WRONG ANSWER:" in user else None
    return asked, chosen, rejected


def _relevance_answer(messages):
    asked, chosen, _ = _sections(messages)
    assert asked == '{"score"'
    if chosen == "CT":
        return "relevance", "This difference is very significant."  # never JSON: re-asked, then failed
    if chosen == "MRI":
        return "relevance", json.dumps({"score": "high"})  # not a number: re-asked, then failed
    if chosen == "no":
        return "relevance", json.dumps({"score": 1.7, "reason": "wrong scale"})  # outside [0, 1]: refused
    return "relevance", "```json\n" + json.dumps({"score": 0.25, "reason": "minor"}) + "\n```"


def test_llm_relevance_weights_with_failures_fall_back_to_the_offline_table(tmp_path):
    options = BuildOptions(recipe="mmedpo", seed=3, progress=False, relevance="llm", weight_range=(0.5, 1.5))
    with LoopbackJudgeServer(answer=_relevance_answer, script=["500", "500", "garbage"]) as server:
        report = build(str(DEMO_VQA), tmp_path / "llm", options, llm=PrefsLLM(_loopback_config(server)))
    offline = build(str(DEMO_VQA), tmp_path / "offline", BuildOptions(recipe="mmedpo", seed=3, progress=False))
    rows = {row["id"]: row for row in map(json.loads, report.records_path.read_text().splitlines())}
    offline_rows = {row["id"]: row for row in map(json.loads, offline.records_path.read_text().splitlines())}
    assert set(rows) == set(offline_rows)
    chosen = [row["chosen"] for row in rows.values()]
    for key, row in rows.items():
        relevance = row["meta"]["relevance"]
        # The rejected answers, error types and images are the offline build's: only the weights differ.
        assert row["rejected"] == offline_rows[key]["rejected"]
        assert row["error_type"] == offline_rows[key]["error_type"]
        assert row["rejected_image"] == offline_rows[key]["rejected_image"]
        if row["chosen"] in ("CT", "MRI", "no"):
            # No silent zero: the offline table's score, with the reason it was used.
            assert relevance["source"] == "offline_fallback" and row["weight"] == offline_rows[key]["weight"]
            assert relevance["score"] == offline_rows[key]["meta"]["relevance"]["score"]
            reason = "out_of_range" if row["chosen"] == "no" else "llm_failed"
            assert relevance["problem"].startswith(reason + ":")
        else:
            assert relevance == {"score": 0.25, "source": "llm", "reason": "minor"}
            assert row["weight"] == 0.75
    assert offline_rows[key]["meta"]["relevance"]["source"] == "offline"
    manifest = report.manifest
    assert manifest["counts"]["relevance_source"] == {
        "llm": len(rows) - chosen.count("CT") - chosen.count("MRI") - chosen.count("no"),
        "offline_fallback": chosen.count("CT") + chosen.count("MRI") + chosen.count("no"),
    }
    assert manifest["counts"]["relevance_fallback"] == {"llm_failed": chosen.count("CT") + chosen.count("MRI"),
                                                        "out_of_range": chosen.count("no")}
    weights = manifest["weights"]
    assert weights["scorer"] == "llm" and weights["model"] == "loopback"
    assert weights["prompt"]["id"] == "relevance-v1" and len(weights["prompt"]["sha256"]) == 64
    assert weights["offline"]["table"]["laterality_position"] == 1.0
    assert offline.manifest["weights"]["scorer"] == "offline" and "prompt" not in offline.manifest["weights"]
    assert list(manifest["llm"]["prompts"]) == ["relevance"]
    stats = manifest["llm"]["stats"]
    # 500, 500 and a malformed body were retried; each unparseable answer was asked three times in all.
    assert server.count("500") == 2 and server.count("garbage") == 1
    assert stats["failures"] == chosen.count("CT") + chosen.count("MRI")
    assert stats["unparseable"] == 3 * (chosen.count("CT") + chosen.count("MRI"))
    assert stats["retries"] == 3 + 2 * (chosen.count("CT") + chosen.count("MRI"))


def _error_type_answer(messages):
    asked, chosen, _ = _sections(messages)
    assert asked == '{"error_type"'
    if chosen == "yes":
        return "error_type", json.dumps({"error_type": "visual misinterpretation"})  # a near miss: refused
    if chosen == "CT":
        return "error_type", "It is a modality error."  # never JSON: re-asked, then failed
    if chosen == "no":
        return "error_type", json.dumps({"error_type": "Modality"})  # an exact key, case aside: accepted
    return "error_type", json.dumps({"error_type": "knowledge_deficiency"})


def test_llm_error_type_classifier_validates_keys_and_falls_back_to_the_rules(tmp_path):
    options = BuildOptions(recipe="error_targeted", seed=0, progress=False, error_types="llm")
    with LoopbackJudgeServer(answer=_error_type_answer, script=["500", "429"]) as server:
        report = build(str(DEMO_VQA), tmp_path / "llm", options, llm=PrefsLLM(_loopback_config(server)))
    offline = build(str(DEMO_VQA), tmp_path / "offline", BuildOptions(recipe="error_targeted", seed=0, progress=False))
    rows = [json.loads(line) for line in report.records_path.read_text().splitlines()]
    rule_tags = {row["id"]: row["error_type"] for row in map(json.loads, offline.records_path.read_text().splitlines())}
    chosen = [row["chosen"] for row in rows]
    for row in rows:
        source = row["meta"]["error_type"]
        if row["chosen"] in ("yes", "CT"):
            assert row["error_type"] == rule_tags[row["id"]] and source["source"] == "rules"
            expected = "not_a_taxonomy_key: 'visual misinterpretation'" if row["chosen"] == "yes" else "llm_failed:"
            assert source["problem"].startswith(expected)
        else:
            assert source == {"source": "llm_classifier"}
            assert row["error_type"] == ("modality" if row["chosen"] == "no" else "knowledge_deficiency")
    counts = report.manifest["counts"]
    assert counts["error_type_fallback"] == {"llm_failed": chosen.count("CT"), "not_a_taxonomy_key": chosen.count("yes")}
    assert counts["error_type_source"] == {"llm_classifier": len(rows) - chosen.count("yes") - chosen.count("CT"),
                                           "rules": chosen.count("yes") + chosen.count("CT")}
    assert counts["category"]["knowledge_deficiency"] == len(rows) - sum(map(chosen.count, ("yes", "no", "CT")))
    described = report.manifest["error_types"]
    assert described["tagger"] == "llm" and described["model"] == "loopback"
    assert described["prompt"]["id"] == "error_type-v1" and len(described["prompt"]["sha256"]) == 64
    assert offline.manifest["error_types"] == {"tagger": "rules", "fallback": "rule-based tag"}
    assert report.manifest["llm"]["stats"]["rate_limited"] == 1 and server.count("500") == 1
    # The records still pass the trainer's validation (the error types are taxonomy keys).
    recipe = load_recipe("error_targeted")
    validate_records(load_preference_file(report.records_path), recipe.name, OBJECTIVES[recipe.objective],
                     frozenset(recipe.visual_error_types), report.records_path)


def _all_steps_answer(messages):
    asked, chosen, rejected = _sections(messages)
    if asked == '{"rejected"':
        return "rejected", json.dumps({"rejected": f"not {chosen}", "error_type": "organ"})
    if asked == '{"error_type"':
        assert rejected == f"not {chosen}"  # the classifier sees the LLM's edit
        return "error_type", json.dumps({"error_type": "diagnosis"})
    return "relevance", json.dumps({"score": 0.5})


def test_all_llm_steps_share_one_client_and_one_cost_report(tmp_path):
    options = BuildOptions(recipe="mmedpo", progress=False, mode="llm", error_types="llm", relevance="llm", limit=4)
    with LoopbackJudgeServer(answer=_all_steps_answer) as server:
        report = build(str(DEMO_VQA), tmp_path / "out", options, llm=PrefsLLM(_loopback_config(server)))
    rows = [json.loads(line) for line in report.records_path.read_text().splitlines()]
    assert len(rows) == 4 and server.count() == 12
    assert all(row["error_type"] == "diagnosis" and row["weight"] == 1.0 for row in rows)
    assert all(row["meta"]["relevance"] == {"score": 0.5, "source": "llm"} for row in rows)
    llm = report.manifest["llm"]
    assert list(llm["prompts"]) == ["rejected_answer", "error_type", "relevance"]
    assert llm["stats"]["requests"] == llm["stats"]["answered"] == 12


def test_llm_relevance_and_error_type_answers_are_parsed_strictly():
    assert parse_relevance('{"score": 0.4, "reason": " small "}') == {"score": 0.4, "reason": "small"}
    assert parse_relevance('{"score": 1}') == {"score": 1.0, "reason": None}
    for bad in ('{"score": true}', '{"score": "0.4"}', "0.4", '["score", 0.4]'):
        with pytest.raises(ValueError):
            parse_relevance(bad)
    assert parse_error_type('{"error_type": "Visual misinterpretation"}') == "Visual misinterpretation"
    with pytest.raises(ValueError):
        parse_error_type('{"error_type": ""}')
    assert taxonomy_key("Laterality_Position") == "laterality_position"
    assert taxonomy_key("visual misinterpretation") is None and taxonomy_key("laterality") is None


def test_grpo_build_is_the_supervised_data_with_its_answer_types(tmp_path):
    report = build(str(DEMO_VQA), tmp_path / "out", BuildOptions(recipe="grpo", progress=False))
    records = [json.loads(line) for line in report.records_path.read_text().splitlines()]
    source = [json.loads(line) for line in DEMO_VQA.read_text().splitlines()]
    assert [(r["question"], r["chosen"], r["answer_type"]) for r in records] == [
        (s["question"], s["answer"], s["answer_type"]) for s in source]
    assert not any("rejected" in r or "rejected_image" in r for r in records)


@pytest.mark.parametrize("recipe_name", RECIPES)
def test_built_records_pass_the_trainers_validation(tmp_path, recipe_name):
    report = build(str(DEMO_VQA), tmp_path / "out", BuildOptions(recipe=recipe_name, progress=False))
    recipe = load_recipe(recipe_name)
    records = load_preference_file(report.records_path)
    validate_records(records, recipe.name, OBJECTIVES[recipe.objective], frozenset(recipe.visual_error_types),
                     report.records_path)
    assert len(records) == report.manifest["counts"]["built"] > 0


@pytest.mark.parametrize("recipe_name", PREFERENCE_RECIPES)
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
        ([str(DEMO_VQA), "--recipe", "mmedpo", "--relevance", "llm", "--error_types", "llm"],
         "--error_types llm and --relevance llm needs a model"),
        ([str(DEMO_VQA), "--recipe", "dpo", "--relevance", "llm", "--llm_model", "m", "--llm_base_url",
          "http://127.0.0.1:9/v1"], "recipe dpo has no weight field"),
        ([str(DEMO_VQA), "--recipe", "mdpo", "--max_area", "0.5"], "must lie in (0, 0.2]"),
    ],
)
def test_cli_mistakes_are_one_line(tmp_path, capsys, monkeypatch, argv, message):
    from medbench.cli import main

    monkeypatch.delenv("MEDBENCH_JUDGE_MODEL", raising=False)
    monkeypatch.setenv("MEDBENCH_JUDGE_CACHE", str(tmp_path / "cache.sqlite"))
    assert main(["prefs", "build", *argv, "--output_dir", str(tmp_path / "o"), "--no_progress"]) == 2
    assert not (tmp_path / "cache.sqlite").exists()  # a refused build opens nothing
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_llm_relevance_reports_its_sources(tmp_path, capsys, monkeypatch):
    from medbench.cli import main

    monkeypatch.setenv("MEDBENCH_JUDGE_CACHE", "off")
    with LoopbackJudgeServer(answer=_relevance_answer) as server:
        assert main(["prefs", "build", str(DEMO_VQA), "--recipe", "mmedpo", "--output_dir", str(tmp_path / "o"),
                     "--relevance", "llm", "--llm_model", "loopback", "--llm_base_url", server.base_url,
                     "--limit", "3", "--no_progress"]) == 0
    out = capsys.readouterr().out
    # demo records 1-3 answer yes, no (a score outside [0, 1]) and CT (never JSON)
    assert "relevance sources: llm 1, offline_fallback 2 (fallback reasons: llm_failed 1, out_of_range 1)" in out
    assert "llm: " in out and "requests" in out
