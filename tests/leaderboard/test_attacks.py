"""Adversarial submissions built from real demo runs: malformed files, gamed data, selective reporting.

Every malformed submission must become one rejection line (never a traceback) while the rest of the board
builds; every gamed one must be turned away whatever order the runs come in.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _lbfiles import copy_run, edit_results, edit_samples, forge_vqa, results_file, samples_file

from medbench.cli import main as medbench_main
from medbench.leaderboard.board import build_board, load_runs
from medbench.leaderboard.rules import Limits, Rejected, printable
from medbench.leaderboard.safe_io import loads
from medbench.leaderboard.verification import board_references, load_run, safe_load_run

VQA = "medbench_vqa_rad"
MIMIC = "medbench_mimic_cxr"
FAILED = "[LMMS_EVAL_REQUEST_FAILED after 1 retries] Connection error."


def manifest(name: str) -> dict:
    return {"schema": "medbench-submission/1", "display_name": name}


def rejection(folder: Path) -> Rejected:
    """The rejection of ``folder``: one line, and never anything but a Rejected."""
    with pytest.raises(Rejected) as caught:
        safe_load_run(folder, Limits(), None, board_references())
    message = str(caught.value)
    assert "\n" not in message and len(message) < 700, "a rejection is one readable line"
    assert "Traceback" not in message
    return caught.value


@pytest.fixture
def baseline_copy(demo_results, tmp_path) -> Path:
    return copy_run(demo_results["baseline"], tmp_path / "submission")


# ------------------------------------------------------------------------------ malformed submissions


def _replace_in_results(folder: Path, placeholder: str, raw: str) -> None:
    path = results_file(folder)
    path.write_text(path.read_text().replace(json.dumps(placeholder), raw))


def test_json_nested_100k_deep_is_one_rejection(baseline_copy):
    results_file(baseline_copy).write_text("[" * 100_000 + "]" * 100_000)
    error = rejection(baseline_copy)
    assert error.rule == "unreadable" and "nested" in error.reason


def test_a_sample_line_nested_deeply_is_one_rejection(baseline_copy):
    path = samples_file(baseline_copy, VQA)
    lines = path.read_text().splitlines()
    lines[0] = lines[0][:-1] + ', "x": ' + "[" * 50_000 + "]" * 50_000 + "}"
    path.write_text("\n".join(lines) + "\n")
    error = rejection(baseline_copy)
    assert error.rule == "unreadable" and "line 1" in error.reason


def test_an_integer_over_4300_digits_is_one_rejection(baseline_copy):
    edit_results(baseline_copy, lambda d: d["results"][VQA].update({"overall,none": "__BIG__"}))
    _replace_in_results(baseline_copy, "__BIG__", "9" * 5000)
    error = rejection(baseline_copy)
    assert error.rule == "unreadable" and "5000 digits" in error.reason


def test_an_integer_too_big_for_a_float_is_one_rejection(baseline_copy):
    edit_results(baseline_copy, lambda d: d["results"][VQA].update({"overall,none": "__BIG__"}))
    _replace_in_results(baseline_copy, "__BIG__", "1" + "0" * 400)
    assert rejection(baseline_copy).rule == "unreadable"


@pytest.mark.parametrize("version", ["NaN", "Infinity", "-Infinity", '"one"', "1.5", "true"])
def test_a_task_version_that_is_no_integer_is_a_version_rejection(baseline_copy, version):
    edit_results(baseline_copy, lambda d: d["versions"].update({VQA: "__V__"}))
    _replace_in_results(baseline_copy, "__V__", version)
    error = rejection(baseline_copy)
    assert error.rule in ("version", "schema") and VQA in str(error)


def test_a_temperature_that_is_no_number_is_a_schema_rejection(baseline_copy):
    edit_results(baseline_copy, lambda d: d["configs"][VQA]["generation_kwargs"].update(temperature="hot"))
    error = rejection(baseline_copy)
    assert error.rule == "schema" and "temperature" in error.reason and '"hot"' in error.reason


@pytest.mark.parametrize("value", ["1e308", "Infinity", "-Infinity", "1e400"])
def test_out_of_range_values_in_metrics_that_cannot_be_recomputed_are_rejected(judged_results, tmp_path, value):
    # Judge scores cannot be recomputed offline; a value of 1e308 or infinity with a matching mean would
    # pass a consistency check alone, so every value is range-checked.
    copy = copy_run(judged_results["inline"], tmp_path / "inline")

    def poison(records):
        records[0]["judge_completeness"]["score"] = "__X__"

    edit_samples(copy, MIMIC, poison)
    path = samples_file(copy, MIMIC)
    path.write_text(path.read_text().replace('"__X__"', value))
    error = rejection(copy)
    assert error.rule == "tampered" and "judge_completeness" in error.reason
    assert "range" in error.reason or "cannot be added" in error.reason or "reports" in error.reason


def test_an_out_of_range_task_score_is_rejected(judged_results, tmp_path):
    copy = copy_run(judged_results["inline"], tmp_path / "inline")
    edit_results(copy, lambda d: d["results"][MIMIC].update({"judge_hallucination,none": 1e308}))
    error = rejection(copy)
    assert error.rule == "tampered" and "outside the metric's range" in error.reason


def _judge_file(folder: Path, kind: str) -> Path:
    pattern = "*_judge_results_medbench_amboss.json" if kind == "results" else "*_judge_samples_medbench_amboss.jsonl"
    return next(folder.rglob(pattern))


@pytest.mark.parametrize(
    "kind, content",
    [
        ("results", "[]"),
        ("results", '{"results": [], "medbench_judge": {}}'),
        ("results", '{"results": {"medbench_amboss": [1]}, "medbench_judge": {}}'),
        ("results", '{"results": {"medbench_amboss": {}}, "medbench_judge": []}'),
        ("results", '{"results": {"medbench_amboss": {}}, "medbench_judge": {"judge": {"prompts": [1]}}}'),
        ("results", "not json"),
        ("samples", '"just a string"\n'),
        ("samples", "[1, 2]\n"),
        ("samples", '{"id": "x", "scores": [1]}\n'),
        ("samples", '{"id": "x", "failures": "all"}\n'),
        ("samples", "\xff\xfe broken\n"),
    ],
)
def test_malformed_judge_files_are_one_rejection(judged_results, tmp_path, kind, content):
    copy = copy_run(judged_results["rescored"], tmp_path / "rescored")
    _judge_file(copy, kind).write_bytes(content.encode("latin-1"))
    error = rejection(copy)
    assert error.rule in ("schema", "unreadable", "tampered")


def test_a_lone_surrogate_in_the_display_name_is_one_rejection(baseline_copy):
    (baseline_copy / "medbench-submission.json").write_text(
        '{"schema": "medbench-submission/1", "display_name": "bad \\ud800 name"}', encoding="utf-8"
    )
    error = rejection(baseline_copy)
    assert error.rule == "unreadable" and "surrogate" in error.reason


def test_an_empty_folder_among_the_runs_is_one_rejection_and_the_board_builds(demo_results, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = copy_run(demo_results["baseline"], tmp_path / "broken", manifest("broken"))
    results_file(broken).write_text("[" * 100_000)
    out = tmp_path / "board"
    code = medbench_main(
        ["leaderboard", "build", str(empty), str(tmp_path / "missing"), str(broken), str(demo_results["tiny-llava"]),
         "--out", str(out), "--no-plots"]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "1 runs on the board, 3 rejected" in printed
    rejected = json.loads((out / "rejected.json").read_text())
    assert sorted(entry["rule"] for entry in rejected) == ["missing_samples", "unreadable", "unreadable"]
    assert (out / "index.html").is_file()


def test_terminal_escapes_in_names_are_printed_escaped(baseline_copy, capsys):
    (baseline_copy / "medbench-submission.json").write_text(
        json.dumps(manifest("evil\x1b[2J\x1b]0;owned\x07\u202e name")), encoding="utf-8"
    )
    # Control and bidi characters make the name refused (rule "name"); the refusal itself prints them escaped.
    assert medbench_main(["leaderboard", "validate", str(baseline_copy)]) == 2
    printed = capsys.readouterr()
    assert "\x1b" not in printed.out + printed.err and "\u202e" not in printed.out + printed.err
    assert "rejected [name]" in printed.err and "U+001B" in printed.err
    assert printable("a\x1b[31mb\x9bc") == "a\\x1b[31mb\\x9bc"


def test_bounded_json_reader_unit():
    limits = Limits()
    assert loads('{"a": [1, 2.5, "x", NaN]}', limits)["a"][:3] == [1, 2.5, "x"]
    for bad in ("[" * 40 + "]" * 40, "1" * 30, '"\\udc00"', '{"k\\ud83d": 1}'):
        with pytest.raises(ValueError):
            loads(bad, limits)
    assert loads('"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["', limits).startswith("[")
    assert loads('"\\ud83d\\ude00"', limits) == "\U0001f600"  # a surrogate pair is a real character


# ------------------------------------------------------------------------------- failed generations


def test_failed_generations_are_rejected_even_when_scores_agree(demo_results, tmp_path):
    copy = copy_run(demo_results["tiny-llava"], tmp_path / "failed")

    def fail(records):
        for record in records[:3]:
            record["filtered_resps"] = FAILED

    forge_vqa(copy, VQA, fail)
    error = rejection(copy)
    assert error.rule == "failed_generations" and "3 of 24" in error.reason


def test_a_reported_failure_count_is_rejected(baseline_copy):
    edit_results(baseline_copy, lambda d: d["results"][VQA].update({"failed_generations,none": 2.0}))
    assert rejection(baseline_copy).rule == "failed_generations"


# ------------------------------------------------------------------------------------------ reference data


def _cherry_pick(folder: Path) -> None:
    """Keep only the VQA items the run got right, and make every count and score agree."""
    kept: dict[str, int] = {}
    for task in ("medbench_vqa_rad", "medbench_slake", "medbench_pathvqa"):

        def keep_right(records, task=task):
            records[:] = [r for r in records if r.get("overall") == 1.0]
            for index, record in enumerate(records):
                record["doc_id"] = index
            kept[task] = len(records)

        forge_vqa(folder, task, keep_right)

        def counts(document, task=task):
            document["n-samples"][task] = {"original": kept[task], "effective": kept[task]}
            entry = document["results"][task]
            records = [json.loads(x) for x in samples_file(folder, task).read_text().splitlines()]
            entry["n_closed,none"] = float(sum(1 for r in records if "n_closed" in r))
            entry["n_open,none"] = float(sum(1 for r in records if "n_open" in r))
            for key in ("closed_accuracy", "open_recall", "closed_unparsed"):
                values = [r[key] for r in records if key in r]
                entry[f"{key},none"] = sum(values) / len(values) if values else float("nan")

        edit_results(folder, counts)


def test_a_cherry_picked_run_named_like_the_baseline_cannot_become_the_baseline(demo_results, tmp_path):
    cherry = copy_run(demo_results["baseline"], tmp_path / "cherry", manifest("medbench_baseline"))
    _cherry_pick(cherry)
    error = rejection(cherry)
    assert error.rule == "data_mismatch" and "missing" in error.reason
    genuine = [demo_results["baseline"], demo_results["tiny-llava"]]
    for order in ([cherry, *genuine], [*genuine, cherry], [genuine[1], cherry, genuine[0]]):
        runs, rejected = load_runs(order)
        board = build_board(runs, rejected, baseline="medbench_baseline")
        assert sorted(row.run.name for row in board.rows) == ["medbench_baseline", "tiny-llava"]
        assert [e.rule for e in board.rejected] == ["data_mismatch"] and "cherry" in board.rejected[0].where
        baseline = next(row for row in board.rows if row.is_baseline)
        assert str(baseline.run.root) == "baseline"  # the folder's name, never the operator's absolute path


def test_validate_alone_rejects_cherry_picked_and_gold_edited_runs(demo_results, tmp_path, capsys):
    cherry = copy_run(demo_results["baseline"], tmp_path / "cherry")
    _cherry_pick(cherry)
    gold = copy_run(demo_results["tiny-llava"], tmp_path / "gold")

    def gold_is_the_answer(records):
        for record in records:
            record["target"] = record["filtered_resps"]

    forge_vqa(gold, VQA, gold_is_the_answer)
    for folder in (cherry, gold):
        assert medbench_main(["leaderboard", "validate", str(folder)]) == 2
        assert "rejected [data_mismatch]" in capsys.readouterr().err
    assert medbench_main(["leaderboard", "validate", str(demo_results["baseline"])]) == 0
    assert "on demo data" in capsys.readouterr().out


def test_gold_edited_report_references_are_caught_before_any_recomputation(baseline_copy, monkeypatch):
    from medbench.metrics import text

    calls = []
    monkeypatch.setattr(text, "rouge_l", lambda *a: calls.append(a) or 0.0)

    def long_reference(records):
        records[0]["target"] = "word " * 12_000

    edit_samples(baseline_copy, "medbench_amboss", long_reference)
    error = rejection(baseline_copy)
    assert error.rule == "data_mismatch" and "other gold answers or references" in error.reason
    assert calls == []


def test_genuine_runs_are_accepted_in_any_order(demo_results):
    one = build_board(*load_runs([demo_results["baseline"], demo_results["tiny-llava"]]))
    other = build_board(*load_runs([demo_results["tiny-llava"], demo_results["baseline"]]))
    assert not one.rejected and not other.rejected
    assert {r.run.name for r in one.rows} == {r.run.name for r in other.rows} == {"medbench_baseline", "tiny-llava"}
    assert {row.run.tasks[VQA].data for row in one.rows} == {"demo"}


def test_the_board_operators_local_copy_is_the_strongest_reference(tmp_path):
    from medbench.data.fingerprint import reference_data
    from medbench.data.loading import DEMO_DIR
    from medbench.taskfiles import task_configs

    lines = (DEMO_DIR / "vqa.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    record["answer"] = "no" if record["answer"] == "yes" else "yes"
    local = tmp_path / "vqa.jsonl"
    local.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    env = {"MEDBENCH_VQA_RAD": str(local), "MEDBENCH_VQA_RAD_IMAGES": str(DEMO_DIR)}
    references = reference_data(VQA, task_configs()[VQA], env)
    assert [r.priority for r in references] == [2, 0] and references[0].data.startswith("local:")
    assert references[0].sha256 != references[1].sha256 and references[0].size == references[1].size == 24


# ----------------------------------------------------------------------------------- selective reporting


def test_a_left_out_metric_is_rejected(baseline_copy):
    edit_results(baseline_copy, lambda d: d["results"][VQA].pop("closed_accuracy,none"))
    error = rejection(baseline_copy)
    assert error.rule == "missing_metric" and "closed_accuracy" in error.reason


def test_half_a_metric_family_is_rejected(judged_results, tmp_path):
    copy = copy_run(judged_results["inline"], tmp_path / "inline")
    edit_results(copy, lambda d: d["results"][MIMIC].pop("judge_hallucination,none"))
    error = rejection(copy)
    assert error.rule == "missing_metric" and "judge_hallucination" in error.reason


@pytest.mark.parametrize(
    "claim",
    [
        {"medbench_amboss": ["medbench_slake"]},  # a weak task dressed up as a group, to hide it
        {"mmmu_val": ["mmmu_val_art"]},  # an unknown task dressed up as a group, to slip it in
    ],
)
def test_a_task_declared_a_group_is_rejected(baseline_copy, claim):
    def declare(document):
        document["group_subtasks"].update(claim)
        document["results"].setdefault("mmmu_val", {"alias": "mmmu_val", "acc,none": 0.9})

    edit_results(baseline_copy, declare)
    assert rejection(baseline_copy).rule == "unknown_task"


def test_a_group_reported_without_one_of_its_tasks_is_rejected(baseline_copy):
    def drop(document):
        document["results"]["medbench"] = {"alias": "medbench"}
        del document["results"]["medbench_amboss"]

    edit_results(baseline_copy, drop)
    error = rejection(baseline_copy)
    assert error.rule == "missing_metric" and "medbench_amboss" in error.reason


def test_a_dropped_task_is_shown_as_missing(demo_results, baseline_copy):
    edit_results(baseline_copy, lambda d: d["results"].pop("medbench_amboss"))
    (baseline_copy / "medbench-submission.json").write_text(json.dumps(manifest("four tasks")))
    run = load_run(baseline_copy)
    assert "medbench_amboss" not in run.tasks
    # Noted where another run on the board has the task; a task no run on the board has is not "missing".
    board = build_board([run, load_run(demo_results["tiny-llava"])], [])
    assert any("four tasks: not evaluated on medbench_amboss" in note for note in board.notes)
    assert not any("not evaluated on" in note for note in build_board([run], []).notes)


def test_changed_prompts_system_instruction_and_decoding_are_marked_non_standard(demo_results, tmp_path):
    from medbench.leaderboard.render import render_html, render_markdown

    copy = copy_run(demo_results["tiny-llava"], tmp_path / "prompted", manifest("prompted"))

    def change(document):
        kwargs = document["configs"][VQA]["lmms_eval_specific_kwargs"]
        kwargs["post_prompt"] = "\nThink step by step."
        document["system_instruction"] = "You are an expert radiologist."
        document["configs"][VQA]["generation_kwargs"]["max_new_tokens"] = 1024

    edit_results(copy, change)
    run = load_run(copy)
    departures = run.tasks[VQA].nonstandard
    assert "prompt post_prompt changed" in departures and "system instruction set" in departures
    assert any(d.startswith("decoding max_new_tokens=1024") for d in departures)
    assert run.tasks["medbench_amboss"].nonstandard == ["system instruction set"]
    board = build_board([run], [])
    assert any("non-standard medbench_vqa_rad" in note for note in board.notes)
    assert "non-standard" in render_html(board) and "non\\-standard" in render_markdown(board)


def test_logged_prompts_that_differ_from_the_task_are_marked_even_with_a_clean_config(baseline_copy):
    def reprompt(records):
        for record in records:
            record["input"] = record["input"] + " Answer like a senior radiologist."

    edit_samples(baseline_copy, "medbench_amboss", reprompt)
    run = load_run(baseline_copy)
    assert run.tasks["medbench_amboss"].nonstandard == ["6 logged prompts differ from the task's"]


# ---------------------------------------------------------------------------------- multi-process runs


def _as_multi_process(folder: Path, task: str) -> None:
    """The log a 2-process lmms-eval run writes: ranks interleaved, deferred items never filled in.

    With several processes lmms-eval gathers pickled copies of the logged samples before rank 0 runs the
    aggregations, so the values those write into the deferred items (CIDEr, METEOR, judge...) never
    reach the log: each deferred metric is logged as ``{"id": ...}`` only.
    """

    def strip(records):
        for record in records:
            for key, value in list(record.items()):
                if isinstance(value, dict) and "id" in value and key != "medbench_detail":
                    record[key] = {"id": value["id"]}
        records[:] = records[0::2] + records[1::2]

    edit_samples(folder, task, strip)


def test_a_multi_process_run_judged_in_lmms_eval_is_not_called_tampered(judged_results, tmp_path):
    copy = copy_run(judged_results["inline"], tmp_path / "inline")
    assert list(copy.glob("medbench_judge/*_medbench_mimic_cxr.json")), "the run's judge sidecar"
    _as_multi_process(copy, MIMIC)
    run = load_run(copy)
    scores = run.tasks[MIMIC]
    assert scores.checks["judge_completeness"] == "recomputed"  # from the labels in the sidecar
    assert scores.checks["cider"] == "recomputed"  # per-sample values recomputed from the texts
    assert scores.judge["model"] == "loopback-judge"
    assert all(value is not None for value in scores.per_sample["judge_completeness"])

    # Without the sidecar the judge scores cannot be checked: unverified, still not tampered.
    for sidecar in copy.glob("medbench_judge/*.json"):
        sidecar.unlink()
    run = load_run(copy)
    assert run.tasks[MIMIC].checks["judge_completeness"] == "unverified"
    # ... and a doctored aggregate is still caught by the range check.
    edit_results(copy, lambda d: d["results"][MIMIC].update({"judge_completeness,none": 7.0}))
    assert rejection(copy).rule == "tampered"


def test_a_multi_process_run_still_catches_edited_cider(demo_results, tmp_path):
    copy = copy_run(demo_results["baseline"], tmp_path / "mp")
    _as_multi_process(copy, "medbench_amboss")
    load_run(copy)
    edit_results(copy, lambda d: d["results"]["medbench_amboss"].update({"cider,none": 0.5}))
    assert rejection(copy).rule == "tampered"


def test_floating_point_noise_at_a_bound_is_no_range_violation():
    # Sentence BLEU of identical texts can come out a hair above 1; that is a perfect score, not an attack.
    from medbench.leaderboard.recompute import REGISTRY, Sample, VerificationError, check_metric

    noisy = 1.0000000000000002
    samples = [Sample(0, "a", "x", "x", None, {"bertscore_f1": {"id": "a", "score": noisy}})]
    check = check_metric("t", "bertscore_f1", REGISTRY["bertscore_f1"], samples, noisy, bounds=(-1.0, 1.0))
    assert check.verdict == "consistent"
    samples[0].record["bertscore_f1"]["score"] = 1.001
    with pytest.raises(VerificationError, match="outside the metric's range"):
        check_metric("t", "bertscore_f1", REGISTRY["bertscore_f1"], samples, 1.001, bounds=(-1.0, 1.0))


@pytest.mark.parametrize("logged", ["<thinking>no effusion? no, look again</thinking> yes", "<think>not no</think>yes", "yes"])
def test_a_reasoning_answer_is_recomputed_as_the_task_scored_it(logged):
    # lmms-eval's CLI strips only some reasoning tags before the task scores; the task strips all it knows
    # (medbench.reasoning), and the board recomputes the logged text the same way.
    from medbench.leaderboard.recompute import REGISTRY, Sample, check_metric

    samples = [Sample(0, "a", logged, "yes", "CLOSED", {"closed_accuracy": 1.0})]
    check = check_metric("t", "closed_accuracy", REGISTRY["closed_accuracy"], samples, 1.0)
    assert check.verdict == "recomputed"
