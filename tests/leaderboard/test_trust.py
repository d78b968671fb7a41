"""Every trust rule, exercised with adversarial edits of real lmms-eval result folders from the demo run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _lbfiles import copy_run, edit_results, edit_samples, forge_vqa, results_file, samples_file

from medbench.leaderboard.board import build_board, load_runs
from medbench.leaderboard.rules import Limits, Rejected
from medbench.leaderboard.verification import load_run
from medbench.metrics.registry import COUNTERS
from medbench.taskfiles import task_versions

VQA = "medbench_vqa_rad"


def rejection(folder: Path, limits: Limits | None = None) -> Rejected:
    with pytest.raises(Rejected) as caught:
        load_run(folder, limits)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 600, "a rejection is one readable line"
    return caught.value


@pytest.fixture
def baseline_copy(demo_results, tmp_path) -> Path:
    return copy_run(demo_results["baseline"], tmp_path / "submission")


def test_the_untouched_demo_runs_are_accepted_with_every_score_recomputed(demo_results):
    for folder in demo_results.values():
        run = load_run(folder)
        assert set(run.tasks) == {
            "medbench_vqa_rad",
            "medbench_slake",
            "medbench_pathvqa",
            "medbench_mimic_cxr",
            "medbench_amboss",
        }
        for scores in run.tasks.values():
            assert scores.checks, scores.task
            # without Java METEOR is absent or unverified; every score is recomputed from the logs, and a
            # counter recorded by the run itself (failed generations) must agree with its per-sample values
            assert {v for m, v in scores.checks.items() if m != "meteor" and m not in COUNTERS} == {"recomputed"}
            assert {v for m, v in scores.checks.items() if m in COUNTERS} <= {"recomputed", "consistent"}


def test_limit_runs_are_rejected(limited_results):
    error = rejection(limited_results)
    assert error.rule == "limit" and "--limit 3" in str(error)


def test_fewer_effective_samples_count_as_a_limited_run(baseline_copy):
    edit_results(baseline_copy, lambda d: d["n-samples"][VQA].update(effective=20))
    assert rejection(baseline_copy).rule == "limit"


def test_task_version_mismatch_is_rejected(baseline_copy):
    edit_results(baseline_copy, lambda d: d["versions"].update({VQA: 0}))
    error = rejection(baseline_copy)
    assert error.rule == "version" and "version 0" in str(error) and f"version {task_versions()[VQA]}" in str(error)


def test_missing_per_sample_log_is_rejected(baseline_copy):
    samples_file(baseline_copy, "medbench_amboss").unlink()
    error = rejection(baseline_copy)
    assert error.rule == "missing_samples" and "--log_samples" in str(error)


def test_a_truncated_per_sample_log_is_rejected(baseline_copy):
    edit_samples(baseline_copy, VQA, lambda records: records.pop())
    error = rejection(baseline_copy)
    assert error.rule == "missing_samples" and "23 samples" in str(error)


def test_an_edited_task_score_is_tampering(baseline_copy):
    edit_results(baseline_copy, lambda d: d["results"][VQA].update({"overall,none": 0.9}))
    error = rejection(baseline_copy)
    assert error.rule == "tampered" and "overall" in str(error) and "0.9" in str(error)


def test_edited_per_sample_values_are_caught_by_recomputation(baseline_copy):
    # Mark every closed question correct and make the task score agree: only recomputation catches it.
    def inflate(records):
        for record in records:
            if "closed_accuracy" in record:
                record["closed_accuracy"] = record["overall"] = 1.0

    edit_samples(baseline_copy, VQA, inflate)
    edit_results(baseline_copy, lambda d: d["results"][VQA].update({"closed_accuracy,none": 1.0}))
    error = rejection(baseline_copy)
    assert error.rule == "tampered" and "its answer scores 0.0" in str(error)


def test_a_swapped_answer_with_old_scores_is_tampering(baseline_copy):
    def swap(records):
        wrong = next(r for r in records if r["overall"] == 0.0)
        wrong["filtered_resps"] = wrong["target"]

    edit_samples(baseline_copy, VQA, swap)
    assert rejection(baseline_copy).rule == "tampered"


def test_corpus_bleu_and_cider_are_recomputed(baseline_copy):
    edit_results(baseline_copy, lambda d: d["results"]["medbench_mimic_cxr"].update({"bleu4,none": 0.5}))
    error = rejection(baseline_copy)
    assert error.rule == "tampered" and "bleu4" in str(error)


def test_cider_per_sample_scores_are_recomputed(baseline_copy):
    def bump(records):
        records[0]["cider"]["score"] += 1.0

    edit_samples(baseline_copy, "medbench_amboss", bump)
    error = rejection(baseline_copy)
    assert error.rule == "tampered" and "cider" in str(error)


def test_judge_scores_must_match_their_verdicts(judged_results, tmp_path):
    copy = copy_run(judged_results["rescored"], tmp_path / "rescored")
    path = next(copy.glob("*_judge_results_medbench_amboss.json"))
    document = json.loads(path.read_text())
    document["results"]["medbench_amboss"]["judge_completeness,none"] = 0.99
    path.write_text(json.dumps(document))
    error = rejection(copy)
    assert error.rule == "tampered" and "judge_completeness" in str(error)


def test_inline_judge_scores_must_match_the_logged_values(judged_results, tmp_path):
    copy = copy_run(judged_results["inline"], tmp_path / "inline")
    edit_results(copy, lambda d: d["results"]["medbench_mimic_cxr"].update({"judge_hallucination,none": 0.42}))
    assert rejection(copy).rule == "tampered"


def test_unknown_tasks_are_rejected(baseline_copy):
    def add(document):
        document["results"]["mmmu_val"] = {"alias": "mmmu_val", "acc,none": 0.9}

    edit_results(baseline_copy, add)
    error = rejection(baseline_copy)
    assert error.rule == "unknown_task" and "mmmu_val" in str(error)


def test_the_same_task_twice_in_one_submission_is_a_duplicate(baseline_copy):
    original = results_file(baseline_copy)
    stamp = original.name[: -len("_results.json")]
    copy_stamp = "20990101_000000"
    (baseline_copy / f"{copy_stamp}_results.json").write_text(original.read_text())
    for sample in baseline_copy.glob(f"{stamp}_samples_*.jsonl"):
        (baseline_copy / sample.name.replace(stamp, copy_stamp)).write_text(sample.read_text())
    assert rejection(baseline_copy).rule == "duplicate"


def test_other_references_than_the_board_are_a_data_mismatch(demo_results, tmp_path):
    # A forger rewrites references so the model looks right and makes every score consistent with that:
    # recomputation passes, the comparison with the board's reference run does not.
    forged = copy_run(demo_results["tiny-llava"], tmp_path / "forged")

    def answers_become_references(records):
        for record in records:
            record["target"] = record["filtered_resps"]

    forge_vqa(forged, VQA, answers_become_references)
    # Internally consistent, but the references are not the task's: caught on its own, before any recompute.
    error = rejection(forged)
    assert error.rule == "data_mismatch" and VQA in str(error) and "other gold answers" in str(error)


def test_schema_violations_name_the_field(baseline_copy):
    (baseline_copy / "medbench-submission.json").write_text(
        json.dumps({"schema": "medbench-submission/1", "display_name": "", "extra": 1})
    )
    error = rejection(baseline_copy)
    assert error.rule == "schema" and "medbench-submission.json" in str(error)
    (baseline_copy / "medbench-submission.json").write_text(
        json.dumps({"schema": "medbench-submission/2", "display_name": "x"})
    )
    assert "medbench-submission/1" in str(rejection(baseline_copy))


def test_a_results_file_that_is_not_lmms_eval_output_is_a_schema_error(baseline_copy):
    results_file(baseline_copy).write_text(json.dumps({"results": {}, "scores": [1, 2]}))
    error = rejection(baseline_copy)
    assert error.rule == "schema" and "lmms-eval" in str(error)


def test_a_broken_sample_line_is_rejected(baseline_copy):
    path = samples_file(baseline_copy, VQA)
    path.write_text(path.read_text() + "{not json\n")
    error = rejection(baseline_copy)
    assert error.rule == "unreadable" and "line 25" in str(error)


@pytest.mark.parametrize("field", ["training_metadata", "results"])
@pytest.mark.parametrize("path", ["../outside.json", "/etc/passwd", "a/../../outside.json", "C:/x.json"])
def test_manifest_paths_cannot_leave_the_folder(baseline_copy, field, path):
    value = [path] if field == "results" else path
    (baseline_copy / "medbench-submission.json").write_text(
        json.dumps({"schema": "medbench-submission/1", "display_name": "x", field: value})
    )
    assert rejection(baseline_copy).rule == "schema"


def test_links_out_of_the_folder_are_refused(baseline_copy, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"recipe": "dpo"}))
    (baseline_copy / "train.json").symlink_to(outside)
    (baseline_copy / "medbench-submission.json").write_text(
        json.dumps({"schema": "medbench-submission/1", "display_name": "x", "training_metadata": "train.json"})
    )
    error = rejection(baseline_copy)
    assert error.rule == "path" and "outside the submission folder" in str(error)


def test_a_samples_file_linked_from_elsewhere_is_refused(demo_results, baseline_copy, tmp_path):
    path = samples_file(baseline_copy, VQA)
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text(path.read_text())
    path.unlink()
    path.symlink_to(elsewhere)
    assert rejection(baseline_copy).rule == "path"


def test_oversized_inputs_are_refused(baseline_copy):
    error = rejection(baseline_copy, Limits(results_bytes=1000))
    assert error.rule == "oversized" and "1000-byte limit" in str(error)
    assert rejection(baseline_copy, Limits(sample_line_bytes=100)).rule == "oversized"
    assert rejection(baseline_copy, Limits(samples_per_task=10)).rule == "oversized"
    (baseline_copy / "medbench-submission.json").write_text(
        json.dumps({"schema": "medbench-submission/1", "display_name": "x", "notes": "n" * 70_000})
    )
    assert rejection(baseline_copy).rule == "oversized"


def test_training_metadata_fills_variant_and_backbone(demo_results, tmp_path):
    folder = copy_run(
        demo_results["tiny-llava"],
        tmp_path / "dpo",
        {
            "schema": "medbench-submission/1",
            "display_name": "tiny DPO",
            "base_model": "medbench_baseline",
            "training_metadata": "train/medbench_train.json",
        },
    )
    (folder / "train").mkdir()
    (folder / "train" / "medbench_train.json").write_text(
        json.dumps(
            {
                "recipe": "dpo_nll",
                "objective": "dpo_nll",
                "config": {"backbone": "llava_med_v1_5"},
                "hyperparameters": {"beta": 0.1},
                "data": {"sha256": "ab" * 32, "records": 12},
                "model": {"source": "/ckpt/sft"},
                "versions": {"trl": "1.16.0"},
            }
        )
    )
    run = load_run(folder)
    assert (run.meta.variant, run.meta.backbone) == ("dpo_nll", "llava_med_v1_5")
    assert run.meta.training["hyperparameters"] == {"beta": 0.1} and run.meta.training["base_checkpoint"] == "/ckpt/sft"
    baseline, _ = load_runs([demo_results["baseline"]])
    board = build_board([*baseline, run], [])
    variant = next(row for row in board.rows if row.run.name == "tiny DPO")
    assert variant.depth == 1 and variant.group == "medbench_baseline"
    assert variant.cells[f"{VQA}/overall"].vs_base is not None


def test_rejected_runs_do_not_stop_the_board(demo_results, baseline_copy, limited_results):
    edit_results(baseline_copy, lambda d: d["versions"].update({VQA: 7}))
    runs, rejected = load_runs([demo_results["tiny-llava"], baseline_copy, limited_results])
    board = build_board(runs, rejected)
    assert [row.run.name for row in board.rows] == ["tiny-llava"]
    assert sorted(error.rule for error in board.rejected) == ["limit", "version"]


def test_a_cached_verification_is_not_reused_after_an_edit(baseline_copy, tmp_path):
    from medbench.leaderboard.cache import VerificationCache

    cache = VerificationCache(tmp_path / "cache")
    load_run(baseline_copy, cache=cache)
    load_run(baseline_copy, cache=cache)
    assert (cache.hits, cache.misses) == (1, 1)
    edit_results(baseline_copy, lambda d: d["results"][VQA].update({"overall,none": 0.9}))
    with pytest.raises(Rejected):
        load_run(baseline_copy, cache=cache)


def test_no_file_outside_the_folder_is_opened(baseline_copy, tmp_path, monkeypatch):
    # Belt and braces for the path rule: every file the loader opens lies inside the submission folder.
    opened: list[Path] = []
    real_open = Path.open

    def spy(self, mode="r", *args, **kwargs):
        if "b" in mode:  # submission files are read as bytes (the board's own data as text)
            opened.append(self.resolve())
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", spy)
    load_run(baseline_copy)
    root = baseline_copy.resolve()
    assert opened and all(path.is_relative_to(root) for path in opened)
    assert os.path.basename(str(opened[0])).endswith("_results.json")
