"""Trust on evidence: judge scores recomputed from the judge's labels, "standard" only when the logs show it,
no input that stops the board, no operator paths on the page, and clustered intervals.

Each attack is an edited copy of a real demo run (the session fixtures of ``conftest.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from _lbfiles import copy_run, edit_results, edit_samples, results_file, samples_file

from medbench import stats
from medbench.cli import main as medbench_main
from medbench.leaderboard.board import build_board, load_runs
from medbench.leaderboard.cache import VerificationCache
from medbench.leaderboard.render import render_html
from medbench.leaderboard.rules import Limits, Rejected
from medbench.leaderboard.verification import board_references, load_run, safe_load_run

VQA = "medbench_vqa_rad"
AMBOSS = "medbench_amboss"
MIMIC = "medbench_mimic_cxr"


def rejection(folder: Path) -> Rejected:
    with pytest.raises(Rejected) as caught:
        safe_load_run(folder, Limits(), None, board_references())
    assert "\n" not in str(caught.value)
    return caught.value


@pytest.fixture
def baseline_copy(demo_results, tmp_path) -> Path:
    return copy_run(demo_results["baseline"], tmp_path / "submission")


def _verdicts(folder: Path) -> Path:
    return next(folder.glob(f"*_judge_samples_{AMBOSS}.jsonl"))


def _edit_verdicts(folder: Path, change) -> None:
    path = _verdicts(folder)
    verdicts = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    change(verdicts)
    path.write_text("".join(json.dumps(v) + "\n" for v in verdicts))
    results = next(folder.glob(f"*_judge_results_{AMBOSS}.json"))
    document = json.loads(results.read_text())
    for metric in ("completeness", "hallucination", "severe"):
        values = [v["scores"][metric] for v in verdicts if metric in v.get("scores", {})]
        document["results"][AMBOSS][f"judge_{metric},none"] = sum(values) / len(values)
    results.write_text(json.dumps(document))


# ------------------------------------------------------------------------------------- judge scores


def test_judged_demo_runs_have_their_judge_scores_recomputed(judged_results):
    rescored = load_run(judged_results["rescored"]).tasks[AMBOSS]
    inline = load_run(judged_results["inline"]).tasks[MIMIC]
    for scores in (rescored, inline):
        judged = {m: v for m, v in scores.checks.items() if m.startswith("judge_") and m != "judge_unscored"}
        assert judged and set(judged.values()) == {"recomputed"}, judged


def test_judge_scores_contradicting_their_labels_are_tampered(judged_results, tmp_path):
    copy = copy_run(judged_results["rescored"], tmp_path / "rescored")

    def perfect(verdicts):  # every score 1.0, every label still Neutral: consistent results, false scores
        for verdict in verdicts:
            verdict["scores"]["completeness"] = 1.0

    _edit_verdicts(copy, perfect)
    error = rejection(copy)
    assert error.rule == "tampered" and "judge_completeness" in error.reason and "judge labels give 0" in error.reason


def test_labels_edited_away_from_the_logged_answer_are_tampered(judged_results, tmp_path):
    copy = copy_run(judged_results["rescored"], tmp_path / "rescored")

    def relabel(verdicts):
        for verdict in verdicts:
            verdict["labels"] = ["Entailment"] * len(verdict["labels"])
            verdict["scores"]["completeness"] = 1.0

    _edit_verdicts(copy, relabel)
    error = rejection(copy)
    assert error.rule == "tampered" and "not the labels of its logged judge answer" in error.reason


def test_inline_judge_scores_are_recomputed_from_the_logged_labels(judged_results, tmp_path):
    copy = copy_run(judged_results["inline"], tmp_path / "inline")

    def fabricate_nothing(records):
        for record in records:
            record["judge_fabrication"]["score"] = 0.0

    edit_samples(copy, MIMIC, fabricate_nothing)
    edit_results(copy, lambda d: d["results"][MIMIC].update({"judge_fabrication,none": 0.0}))
    error = rejection(copy)
    assert error.rule == "tampered" and "judge_fabrication" in error.reason


def test_judge_scores_without_judge_answers_are_unverified_and_never_marked(judged_results, demo_results, tmp_path):
    copy = copy_run(judged_results["rescored"], tmp_path / "claimed", {"schema": "medbench-submission/1", "display_name": "claimed"})

    def strip(verdicts):  # scores only: nothing the judge said
        for verdict in verdicts:
            for key in ("facts", "labels", "nli_answer", "severity", "severity_reason", "facts_source"):
                verdict.pop(key, None)
            verdict["scores"] = {"completeness": 1.0, "hallucination": 0.0, "severe": 0.0}

    _edit_verdicts(copy, strip)
    scores = load_run(copy).tasks[AMBOSS]
    assert {scores.checks[m] for m in ("judge_completeness", "judge_hallucination", "judge_severe")} == {"unverified"}
    # Against the genuine judged run (the same answers: kept as a study board keeps identical cells).
    runs, rejected = load_runs([judged_results["rescored"], copy], keep_identical=True)
    assert not rejected
    board = build_board(runs, rejected, baseline="medbench_baseline")
    genuine = next(row for row in board.rows if row.is_baseline).cells[f"{AMBOSS}/judge_completeness"].value
    assert genuine == 0.0  # the claimed 1.0 would be a significant ▲ if it were believed
    row = next(row for row in board.rows if row.run.name == "claimed")
    assert all(row.cells[f"{AMBOSS}/judge_{m}"].mark is None for m in ("completeness", "hallucination", "severe"))
    assert "claimed: loopback-judge" in render_html(board)


def test_fact_formulas_are_the_judges():
    from medbench.leaderboard.judging import expected_values

    evidence = {"facts": ["a", "b"], "labels": ["Entailment", "Partial Entailment"], "nli_answer": '["1. Entailment", "2. Partial Entailment"]'}
    assert expected_values("completeness", evidence, "tolerant") == [0.75]
    assert expected_values("hallucination", evidence, None) == [0.0, 0.0]
    assert expected_values("fabrication", {"claims": ["x", "y"], "claim_labels": ["Neutral", "Entailment"]}, None) == [0.5]
    assert expected_values("severe", {"severity": "severe"}, None) == [1.0]
    assert expected_values("severe", {}, None) is None


# ----------------------------------------------------------------------------------- standard protocol


def test_genuine_demo_runs_are_standard_on_evidence(demo_results):
    for folder in demo_results.values():
        run = load_run(folder)
        assert run.unknown_protocol == {} and run.nonstandard == {}, (run.unknown_protocol, run.nonstandard)


def test_a_prefix_on_every_vqa_prompt_is_non_standard(baseline_copy):
    def prefix(records):
        for record in records:
            record["input"] = "You are a radiologist. " + record["input"]

    edit_samples(baseline_copy, VQA, prefix)
    assert load_run(baseline_copy).nonstandard[VQA] == ["24 logged prompts differ from the task's"]


def _remove_generation_kwargs(document):
    document["configs"][VQA].pop("generation_kwargs")


def _cli_temperature(document):
    document["config"]["gen_kwargs"] = ""
    document["config"]["resolved_cli_args"]["gen_kwargs"] = "temperature=0.9"


def _null_system_instruction(document):
    document["system_instruction"] = None
    document["config"]["resolved_cli_args"]["system_instruction"] = "You are a helpful radiologist."


def _no_system_instruction_field(document):
    document.pop("system_instruction")


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (_remove_generation_kwargs, "no decoding settings"),
        (_cli_temperature, "temperature=0.9"),
        (_null_system_instruction, "command line names one"),
        (_no_system_instruction_field, "no system instruction recorded"),
    ],
)
def test_missing_or_contradictory_evidence_is_unknown_protocol(baseline_copy, change, says):
    edit_results(baseline_copy, change)
    run = load_run(baseline_copy)
    tasks = [VQA] if change is _remove_generation_kwargs else list(run.tasks)
    for task in tasks:
        assert any(says in reason for reason in run.unknown_protocol[task]), run.unknown_protocol
    board = build_board([run], [])
    assert "unknown protocol" in render_html(board) and any("unknown protocol on" in n for n in board.notes)


def test_removed_logged_prompts_are_unknown_protocol(baseline_copy):
    def drop(records):
        for record in records:
            record.pop("input", None)

    edit_samples(baseline_copy, VQA, drop)
    assert "24 samples log no prompt" in load_run(baseline_copy).unknown_protocol[VQA]


# ------------------------------------------------------------------------- nothing stops the board


def test_a_results_file_linking_to_itself_is_one_rejection_and_the_board_builds(demo_results, baseline_copy, tmp_path, capsys):
    path = results_file(baseline_copy)
    path.unlink()
    path.symlink_to(path.name)  # ELOOP: Path.resolve raises RuntimeError on Python 3.11
    loop = tmp_path / "loop"
    loop.symlink_to(loop)  # a RUN argument that is a link to itself
    out = tmp_path / "board"
    argv = ["leaderboard", "build", str(demo_results["baseline"]), str(baseline_copy), str(loop), "--out", str(out), "--no-plots"]
    assert medbench_main(argv) == 0
    printed = capsys.readouterr().out
    assert "1 runs on the board, 2 rejected" in printed
    page = (out / "index.html").read_text()
    assert str(tmp_path) not in page and str(tmp_path) not in (out / "rejected.json").read_text()


@pytest.mark.parametrize(
    "content",
    [b"not json", b"[]", b'{"schema": "nope"}', b"[" * 100_000, b"\xff\xfe", b'{"schema": "medbench-experts-summary/1", "models": 3}', None],
)
def test_a_malformed_experts_file_is_one_rejection(demo_results, tmp_path, capsys, content):
    experts = tmp_path / "experts.json"
    if content is None:
        experts.symlink_to(experts)
    else:
        experts.write_bytes(content)
    out = tmp_path / "board"
    argv = ["leaderboard", "build", str(demo_results["baseline"]), "--out", str(out), "--no-plots", "--experts", str(experts)]
    assert medbench_main(argv) == 0
    rejected = json.loads((out / "rejected.json").read_text())
    assert [r["where"] for r in rejected] == ["experts.json"] and "--experts file not used" in rejected[0]["reason"]
    assert str(tmp_path) not in (out / "index.html").read_text()


def test_a_huge_log_for_a_small_task_is_refused_before_reading(baseline_copy, monkeypatch):
    path = samples_file(baseline_copy, VQA)
    with path.open("ab") as handle:
        handle.truncate(path.stat().st_size + 8 * 1024 * 1024)  # sparse: 8 MiB of NULs, never written
    from medbench.leaderboard import safe_io

    monkeypatch.setattr(safe_io, "parse_lines", lambda *a, **k: pytest.fail("the log was parsed"))
    error = rejection(baseline_copy)
    assert error.rule == "oversized" and f"the {VQA} per-sample log" in error.reason


def test_a_file_linking_outside_does_not_show_where_it_points(baseline_copy, tmp_path):
    outside = tmp_path / "secret" / "operator.json"
    outside.parent.mkdir()
    outside.write_text("{}")
    path = results_file(baseline_copy)
    path.unlink()
    path.symlink_to(outside)
    error = rejection(baseline_copy)
    assert error.rule == "path" and "secret" not in error.reason


# ------------------------------------------------------------------------------------------ minor list


@pytest.mark.parametrize("answer", ["\u200b[LMMS_EVAL_REQUEST_FAILED after 3 retries] timeout", "[lmms_eval_request_failed after 3 retries]"])
def test_hidden_failure_markers_are_failed_generations(baseline_copy, answer):
    def fail(records):
        records[0]["filtered_resps"] = answer

    edit_samples(baseline_copy, VQA, fail)
    assert rejection(baseline_copy).rule == "failed_generations"


def test_every_doc_id_zero_is_rejected(baseline_copy):
    def zero(records):
        for record in records:
            record["doc_id"] = 0

    edit_samples(baseline_copy, VQA, zero)
    error = rejection(baseline_copy)
    assert error.rule == "schema" and "doc_id 0 is logged twice" in error.reason


def test_a_score_within_the_tolerance_is_shown_as_recomputed_not_as_submitted(baseline_copy, demo_results):
    genuine = load_run(demo_results["baseline"]).tasks[VQA].scores["overall"]
    edit_results(baseline_copy, lambda d: d["results"][VQA].update({"overall,none": genuine + 5e-10}))
    scores = load_run(baseline_copy).tasks[VQA]
    assert scores.checks["overall"] == "recomputed" and scores.scores["overall"] == genuine


def test_a_planted_cache_entry_is_not_trusted(demo_results, tmp_path):
    cache = VerificationCache(tmp_path / "cache")
    run = load_run(demo_results["baseline"], cache=cache)
    (entry,) = (tmp_path / "cache").glob("*.json")
    document = json.loads(entry.read_text())
    payload = json.loads(document["payload"])
    payload[VQA]["scores"]["overall"] = 1.0
    entry.write_text(json.dumps({"mac": document["mac"], "payload": json.dumps(payload)}))
    again = load_run(demo_results["baseline"], cache=VerificationCache(tmp_path / "cache"))
    assert again.tasks[VQA].scores["overall"] == run.tasks[VQA].scores["overall"] != 1.0
    entry.write_text(json.dumps(payload))  # an unsigned entry, as the old cache wrote them
    fresh = VerificationCache(tmp_path / "cache")
    assert load_run(demo_results["baseline"], cache=fresh).tasks[VQA].scores["overall"] != 1.0 and fresh.misses == 1


def test_one_run_cannot_make_the_page_heavy(demo_results, baseline_copy):
    edit_results(baseline_copy, lambda d: d["config"].update({"model_args": "pretrained=x," + "y" * 2_000_000}))
    small = render_html(build_board(*load_runs([demo_results["baseline"]])))
    large = render_html(build_board(*load_runs([baseline_copy])))
    assert len(large) - len(small) < 20_000


# ------------------------------------------------------------------------------------ clustered intervals


def test_clustered_intervals_are_wider_by_the_root_of_questions_per_image():
    images, per_image = 60, 9
    outcome = np.random.default_rng(7).integers(0, 2, images).astype(float)  # every question of an image alike
    values = np.repeat(outcome, per_image)[:, None]
    mask = np.ones_like(values)
    clusters = tuple(str(i) for i in range(images) for _ in range(per_image))
    plain = stats.bootstrap_ci(stats.resampler("t", len(values), 4000), values, mask)
    clustered = stats.bootstrap_ci(stats.resampler("t", len(values), 4000, clusters), values, mask)
    width_plain, width_clustered = plain[1][0] - plain[0][0], clustered[1][0] - clustered[0][0]
    assert width_clustered / width_plain == pytest.approx(per_image**0.5, rel=0.15)
    # An independent computation: a loop that resamples images, and the normal interval over image means.
    rng = np.random.default_rng(11)
    means = [outcome[rng.integers(0, images, images)].mean() for _ in range(4000)]
    loop_width = np.quantile(means, 0.975) - np.quantile(means, 0.025)
    normal_width = 2 * 1.959964 * outcome.std(ddof=0) / images**0.5
    assert width_clustered == pytest.approx(loop_width, rel=0.1) and width_clustered == pytest.approx(normal_width, rel=0.1)


def test_the_board_says_what_it_clustered_on(demo_results):
    board = build_board(*load_runs([demo_results["baseline"], demo_results["tiny-llava"]]))
    assert board.clustered[VQA] == (7, 24)
    assert "images, not questions" in render_html(board) and "medbench_vqa_rad: 7 images for 24 questions" in render_html(board)


def test_runs_logged_in_another_order_are_paired_item_by_item(demo_results, tmp_path):
    shuffled = copy_run(demo_results["baseline"], tmp_path / "shuffled", {"schema": "medbench-submission/1", "display_name": "shuffled"})
    edit_samples(shuffled, VQA, lambda records: records.reverse())
    (one,), _ = load_runs([demo_results["baseline"]])
    runs, _ = load_runs([shuffled])
    board = build_board([one, *runs], [], baseline="medbench_baseline")
    row = next(row for row in board.rows if row.run.name == "shuffled")
    assert row.cells[f"{VQA}/overall"].vs_baseline["difference"] == 0.0


def test_stored_runs_name_their_folder_not_the_operators_path(demo_results):
    (run,), _ = load_runs([demo_results["baseline"]])
    assert str(run.root) == "baseline" and os.sep + "tmp" not in json.dumps(run.provenance)


def test_plots_are_redrawn_only_when_what_they_show_changes(demo_results, tmp_path, monkeypatch):
    from medbench.leaderboard import plots

    board = build_board(*load_runs([demo_results["baseline"], demo_results["tiny-llava"]]), baseline="medbench_baseline")
    path = plots.plot_scores(board, tmp_path / "scores.png")
    drawn = path.read_bytes()
    monkeypatch.setattr(plots, "_pyplot", lambda: pytest.fail("an unchanged plot was drawn again"))
    assert plots.plot_scores(board, tmp_path / "scores.png").read_bytes() == drawn
    board.rows[0].cells[f"{VQA}/overall"].value += 0.1
    with pytest.raises(pytest.fail.Exception, match="drawn again"):
        plots.plot_scores(board, tmp_path / "scores.png")


def test_intervals_are_reused_only_while_their_inputs_are_unchanged(demo_results, tmp_path):
    from medbench.leaderboard.cache import StatsCache

    runs, rejected = load_runs([demo_results["baseline"], demo_results["tiny-llava"]])
    fresh = build_board(runs, rejected, baseline="medbench_baseline")
    cache = StatsCache(tmp_path / "stats")
    first = build_board(runs, rejected, baseline="medbench_baseline", stats_cache=cache)
    assert cache.hits == 0 and cache.misses > 0
    again = build_board(runs, rejected, baseline="medbench_baseline", stats_cache=cache)
    assert cache.hits == cache.misses
    cells = [[(c.low, c.high, c.vs_baseline) for c in row.cells.values()] for board in (fresh, first, again) for row in board.rows]
    assert cells[:2] == cells[2:4] == cells[4:]
    entries, hits = cache.misses, cache.hits
    runs[1].tasks[VQA].per_sample["overall"][0] = 1.0  # another input: that task is recomputed, the others reused
    build_board(runs, rejected, baseline="medbench_baseline", stats_cache=cache)
    assert cache.misses == entries + 2 and cache.hits == hits + entries - 2  # VQA-RAD's intervals and its tests
