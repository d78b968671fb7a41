"""The submission registry: who owns a name, copies, look-alike names, concurrent submitters, crashes, export.

Runs are real demo runs (edited copies for the attacks); the concurrency and crash tests use two real
processes (forked, so no new interpreter imports lmms-eval or torch) writing to one registry file.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import random
from pathlib import Path

import pytest
from _lbfiles import copy_run, forge_vqa, results_file

from medbench.cli import main as medbench_main
from medbench.leaderboard import names
from medbench.leaderboard.board import build_board, load_runs
from medbench.leaderboard.registry import Registry
from medbench.leaderboard.runs import Run

VQA = "medbench_vqa_rad"
VQA_TASKS = ("medbench_vqa_rad", "medbench_slake", "medbench_pathvqa")


def manifest(name: str) -> dict:
    return {"schema": "medbench-submission/1", "display_name": name}


def rules(rejected) -> list[str]:
    return [error.rule for error in rejected]


# ------------------------------------------------------------------------------------ who owns a name


def test_a_copy_submitted_after_the_original_rejects_only_the_copy(demo_results, tmp_path):
    original = copy_run(demo_results["tiny-llava"], tmp_path / "original", manifest("Model A"))
    renamed = copy_run(demo_results["tiny-llava"], tmp_path / "renamed", manifest("Model B"))
    same_name = copy_run(demo_results["baseline"], tmp_path / "same-name", manifest("Model A"))
    runs, rejected = load_runs([demo_results["baseline"], original, renamed, same_name])
    assert [run.name for run in runs] == ["medbench_baseline", "Model A"]
    by_folder = {error.where: error for error in rejected}
    assert set(by_folder) == {"renamed", "same-name"} and set(rules(rejected)) == {"duplicate"}
    assert "'Model A'" in by_folder["renamed"].reason
    assert "belongs to the run accepted" in by_folder["same-name"].reason
    # The baseline is never evicted: its ▲/▼ comparisons stay.
    board = build_board(runs, rejected, baseline="medbench_baseline")
    assert any(cell.vs_baseline for row in board.rows if not row.is_baseline for cell in row.cells.values())


def test_a_copy_submitted_first_owns_the_name_and_the_original_is_the_newcomer(demo_results, tmp_path):
    copy = copy_run(demo_results["tiny-llava"], tmp_path / "copy", manifest("copycat"))
    runs, rejected = load_runs([copy, demo_results["tiny-llava"]])
    assert [run.name for run in runs] == ["copycat"] and rules(rejected) == ["duplicate"]
    assert rejected[0].where == "tiny-llava"


def test_validate_submit_and_build_decide_alike(demo_results, tmp_path, capsys):
    registry = tmp_path / "registry"
    copy = copy_run(demo_results["tiny-llava"], tmp_path / "again", manifest("again"))
    assert medbench_main(["leaderboard", "submit", str(demo_results["tiny-llava"]), "--registry", str(registry)]) == 0
    assert "1 accepted, 0 rejected" in capsys.readouterr().out
    assert medbench_main(["leaderboard", "validate", str(copy), "--registry", str(registry)]) == 2
    validated = capsys.readouterr().err
    assert medbench_main(["leaderboard", "validate", str(copy), "--board", str(demo_results["tiny-llava"])]) == 2
    assert capsys.readouterr().err == validated
    assert medbench_main(["leaderboard", "submit", str(copy), "--registry", str(registry)]) == 0
    submitted = capsys.readouterr().out
    _, rejected = load_runs([demo_results["tiny-llava"], copy])
    reason = rejected[0].reason
    assert "rejected [duplicate]" in validated and reason in validated and reason in submitted
    with Registry(registry) as opened:
        assert opened.names() == ["tiny-llava"] and opened.counts()["rejections"] == 1
    # validate recorded nothing
    assert medbench_main(["leaderboard", "validate", str(demo_results["baseline"]), "--registry", str(registry)]) == 0
    with Registry(registry) as opened:
        assert opened.counts()["runs"] == 1 and opened.counts()["rejections"] == 1


# ------------------------------------------------------------------------------------------- copies


def test_a_copy_with_a_space_appended_to_every_answer_is_a_copy(demo_results, tmp_path):
    padded = copy_run(demo_results["tiny-llava"], tmp_path / "padded", manifest("padded"))

    def pad(records):
        for record in records:
            record["filtered_resps"] = record["filtered_resps"] + " "

    for task in VQA_TASKS:
        forge_vqa(padded, task, pad)  # scores stay consistent with the edited answers
    runs, rejected = load_runs([demo_results["tiny-llava"], padded])
    assert [run.name for run in runs] == ["tiny-llava"] and rules(rejected) == ["duplicate"]
    assert "a copy: 100.0% of its normalised" in rejected[0].reason and "'tiny-llava'" in rejected[0].reason


def test_a_copy_of_only_one_task_is_a_copy(demo_results, tmp_path):
    partial = copy_run(demo_results["tiny-llava"], tmp_path / "partial", manifest("partial"))

    def keep_vqa_rad(document):
        for key in ("results", "configs", "versions", "n-samples", "n-shot", "higher_is_better"):
            for task in list(document.get(key, {})):
                if task != VQA:
                    document[key].pop(task)
        document["group_subtasks"] = {}

    document = json.loads(results_file(partial).read_text())
    keep_vqa_rad(document)
    results_file(partial).write_text(json.dumps(document))
    for path in partial.glob("*_samples_*.jsonl"):
        if not path.name.endswith(f"{VQA}.jsonl"):
            path.unlink()
    _, rejected = load_runs([demo_results["tiny-llava"], partial])
    assert rules(rejected) == ["duplicate"] and f"normalised {VQA} answers" in rejected[0].reason


def test_normalised_answer_share_is_per_task_and_thresholded():
    from medbench.leaderboard.copies import COPY_SHARE, find_copy, normalised_answers

    assert normalised_answers(VQA, [" Yes. ", "The LEFT lung"]) == normalised_answers(VQA, ["yes", "left lung"])
    assert normalised_answers("medbench_mimic_cxr", ["No  effusion."]) == ["no effusion"]
    mine = {"t": {str(i): "a" for i in range(100)}}
    theirs = {"t": {**mine["t"], "0": "b"}}
    assert find_copy(mine, theirs).share == 0.99 >= COPY_SHARE
    theirs = {"t": {**mine["t"], "0": "b", "1": "b", "2": "b"}}
    assert find_copy(mine, theirs) is None


def test_a_study_board_keeps_identical_runs_and_notes_them(demo_results, tmp_path):
    one = copy_run(demo_results["tiny-llava"], tmp_path / "one", manifest("cell one"))
    two = copy_run(demo_results["tiny-llava"], tmp_path / "two", manifest("cell two"))
    with Registry(None) as registry:
        from medbench.leaderboard.board import collect

        admissions = collect([one, two], registry, keep_identical=True)
        assert [a.accepted for a in admissions] == [True, True]
        assert any("cell two" in note and "'cell one'" in note for note in registry.notes())


# ------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("tiny-llava ", "duplicate"),  # trailing space: stripped, then taken
        ("ｔｉｎｙ-llava", "duplicate"),  # full-width: NFKC
        ("tiny-llаva", "duplicate"),  # Cyrillic а: confusables skeleton
        ("tiny-IIava", "duplicate"),  # capital I for l
        ("tiny\u200b-llava", "name"),  # zero-width space
        ("\u202etiny-llava", "name"),  # right-to-left override
        ("tiny\u2066-llava\u2069", "name"),  # isolates
    ],
)
def test_look_alike_and_invisible_names_are_refused(demo_results, tmp_path, name, rule):
    impostor = copy_run(demo_results["baseline"], tmp_path / "impostor", manifest(name))
    runs, rejected = load_runs([demo_results["tiny-llava"], impostor])
    assert [run.name for run in runs] == ["tiny-llava"] and rules(rejected) == [rule]
    if rule == "duplicate":
        assert "tiny-llava" in rejected[0].reason


def test_skeleton_unit():
    assert names.skeleton("medbench_baseline") == names.skeleton("medbench_bаseIine")
    assert names.skeleton("paper") != names.skeleton("paper2")
    assert names.normalise("  Model\u00a0A ") == "Model A"
    for bad in ("a\u200bb", "a\u202eb", "a\u00adb", "a\nb", " "):
        with pytest.raises(names.NameRefused):
            names.normalise(bad)


# --------------------------------------------------------------------------------- the persistent board


def test_submit_build_withdraw_export_import(demo_results, limited_results, tmp_path, capsys):
    registry, site = tmp_path / "registry", tmp_path / "site"
    argv = ["leaderboard", "submit", str(demo_results["baseline"]), str(limited_results), "--registry", str(registry)]
    assert medbench_main(argv) == 0
    assert medbench_main(["leaderboard", "submit", str(demo_results["tiny-llava"]), "--registry", str(registry)]) == 0
    out = capsys.readouterr().out
    assert "the registry holds 2 runs (0 withdrawn) and 1 rejections" in out
    build = ["leaderboard", "build", "--registry", str(registry), "--baseline", "medbench_baseline", "--no-plots"]
    assert medbench_main([*build, "--out", str(site)]) == 0
    assert "2 runs on the board, 1 rejected" in capsys.readouterr().out
    page = (site / "index.html").read_text()
    assert str(tmp_path) not in page and "limit" in page
    assert medbench_main(["leaderboard", "withdraw", "tiny-llava", "--reason", "wrong checkpoint", "--registry", str(registry)]) == 0
    assert medbench_main([*build, "--out", str(site)]) == 0
    assert "1 runs on the board" in capsys.readouterr().out
    assert "withdrawn" in (site / "leaderboard.md").read_text()
    # A withdrawn run keeps its name.
    again = copy_run(demo_results["baseline"], tmp_path / "again", manifest("tiny-llava"))
    assert medbench_main(["leaderboard", "submit", str(again), "--registry", str(registry)]) == 0
    assert "belongs to the run accepted" in capsys.readouterr().out
    # Export, import elsewhere, same board.
    exported = tmp_path / "registry.jsonl"
    assert medbench_main(["leaderboard", "export", "--registry", str(registry), "--out", str(exported)]) == 0
    assert medbench_main(["leaderboard", "import", str(exported), "--registry", str(tmp_path / "elsewhere")]) == 0
    rebuilt = tmp_path / "rebuilt"
    assert medbench_main(["leaderboard", "build", "--registry", str(tmp_path / "elsewhere"), "--no-plots", "--out", str(rebuilt)]) == 0
    assert medbench_main([*build[:-3], "--no-plots", "--out", str(site)]) == 0
    assert (rebuilt / "leaderboard.csv").read_text() == (site / "leaderboard.csv").read_text()
    assert medbench_main(["leaderboard", "import", str(exported), "--registry", str(tmp_path / "elsewhere")]) == 2
    assert "already holds runs" in capsys.readouterr().err


def test_the_registry_is_append_only(demo_results, tmp_path):
    import sqlite3

    with Registry(tmp_path / "r") as registry:
        from medbench.leaderboard.board import collect

        collect([demo_results["baseline"]], registry)
    db = sqlite3.connect(tmp_path / "r" / "registry.sqlite")
    for statement in ("UPDATE runs SET name = 'x'", "DELETE FROM runs", "DELETE FROM answers", "UPDATE meta SET value = 'x'"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute(statement)


def test_an_imported_export_cannot_name_columns_of_its_own(tmp_path):
    from medbench.errors import MedbenchError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "medbench-registry/1"}\n{"table": "notes", "row": {"note) VALUES (1); --": "x"}}\n')
    with Registry(tmp_path / "r") as registry, pytest.raises(MedbenchError, match="line 2"):
        registry.load_export(bad)


# ------------------------------------------------------------------------- concurrency and crashes


def _variant(run: Run, name: str, seed: int) -> Run:
    """``run`` as another model's: its own name, files hash and answers (so it is no copy)."""
    rng = random.Random(seed)
    tasks = {
        task: dataclasses.replace(scores, normalised=[f"{rng.random()}" for _ in scores.item_ids])
        for task, scores in run.tasks.items()
    }
    return dataclasses.replace(run, root=Path(name), meta=dataclasses.replace(run.meta, display_name=name), tasks=tasks, digest=f"{name}-{seed}")


def _submitter(folder: str, runs: list[Run], start, results) -> None:
    start.wait()
    accepted = 0
    with Registry(Path(folder)) as registry:
        for run in runs:
            accepted += registry.admit(run).accepted
    results.put(accepted)


def test_two_processes_submitting_at_once_lose_nothing_and_duplicate_no_name(demo_results, tmp_path):
    (template,), _ = load_runs([demo_results["baseline"]])
    shared = [f"shared-{i}" for i in range(10)]
    first = [_variant(template, f"a-{i}", i) for i in range(15)] + [_variant(template, n, 100 + i) for i, n in enumerate(shared)]
    second = [_variant(template, f"b-{i}", 1000 + i) for i in range(15)] + [_variant(template, n, 200 + i) for i, n in enumerate(shared)]
    Registry(tmp_path / "r").close()
    context = multiprocessing.get_context("fork")
    start, results = context.Event(), context.Queue()
    workers = [context.Process(target=_submitter, args=(str(tmp_path / "r"), runs, start, results)) for runs in (first, second)]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    assert results.get() + results.get() == 40  # what the two submitters were told adds up to what was stored
    with Registry(tmp_path / "r") as registry:
        accepted = registry.names()
        counts = registry.counts()
    assert len(accepted) == len(set(accepted)) == 40  # 15 + 15 own names, each shared name once
    assert set(accepted) >= {f"a-{i}" for i in range(15)} | {f"b-{i}" for i in range(15)} | set(shared)
    assert counts["rejections"] == 10 and counts["answers"] == 40 * len(template.tasks)


def _crash_mid_submit(folder: str, run: Run) -> None:
    # Die (no clean-up, no rollback) after the run's row is written and before its transaction commits.
    Registry._insert_answers = lambda *args: os._exit(3)  # type: ignore[method-assign]
    with Registry(Path(folder)) as registry:
        registry.admit(run)


def test_a_crash_mid_submit_leaves_the_registry_as_it_was(demo_results, tmp_path):
    (template,), _ = load_runs([demo_results["baseline"]])
    folder = tmp_path / "r"
    with Registry(folder) as registry:
        registry.admit(_variant(template, "before", 1))
    before = (folder / "registry.sqlite").stat().st_size
    context = multiprocessing.get_context("fork")
    worker = context.Process(target=_crash_mid_submit, args=(str(folder), _variant(template, "crashing", 2)))
    worker.start()
    worker.join(60)
    assert worker.exitcode == 3
    with Registry(folder) as registry:
        assert registry.names() == ["before"]
        assert registry.counts() == {"runs": 1, "answers": len(template.tasks), "rejections": 0, "withdrawals": 0, "notes": 0}
        registry.admit(_variant(template, "crashing", 2))  # the name was never taken
        assert registry.names() == ["before", "crashing"]
    assert before > 0


def test_an_exception_mid_submit_rolls_back(demo_results, tmp_path, monkeypatch):
    (template,), _ = load_runs([demo_results["baseline"]])
    with Registry(tmp_path / "r") as registry:
        monkeypatch.setattr(Registry, "_insert_answers", lambda *args: (_ for _ in ()).throw(OSError("disk full")))
        with pytest.raises(OSError):
            registry.admit(_variant(template, "x", 1))
        assert registry.counts()["runs"] == 0
