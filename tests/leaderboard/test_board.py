"""The board built from real demo result folders: golden tables, columns from the YAMLs, statistics, output."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest
from _lbfiles import copy_run

from medbench.cli import main as medbench_main
from medbench.leaderboard.board import all_columns, as_records, build_board, load_runs
from medbench.leaderboard.render import csv_cell, md, render_html, render_markdown, write_csv
from medbench.leaderboard.safe_io import load_schema, schema_problem
from medbench.leaderboard.verification import MANIFEST_SCHEMA
from medbench.metrics.registry import COUNTERS
from medbench.results import find_runs
from medbench.taskfiles import task_configs

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("MEDBENCH_UPDATE_GOLDEN") == "1"
INJECTED = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"> =cmd|*bold*'


@pytest.fixture(scope="module")
def demo_board(demo_results):
    runs, rejected = load_runs([demo_results["baseline"], demo_results["tiny-llava"]])
    assert not rejected
    return build_board(runs, rejected, baseline="medbench_baseline")


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{name} changed; rerun with MEDBENCH_UPDATE_GOLDEN=1 if intended"


def test_baseline_rows_match_the_golden_table(demo_board):
    # The non-neural baseline is deterministic, so its rows (scores, CIs, checks) are frozen. METEOR needs
    # Java and is left out so the golden file holds on machines without it.
    # Task versions are checked elsewhere (test_trust) and left out so a version bump alone needs no new golden file.
    records = [
        {k: v for k, v in r.items() if k != "task_version"}
        for r in as_records(demo_board)
        if r["model"] == "medbench_baseline" and r["metric"] != "meteor"
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in record.items()})
    _golden("demo_baseline_rows.csv", buffer.getvalue())


def test_board_scores_are_the_lmms_eval_scores(demo_board, demo_results):
    # Every cell is what lmms-eval wrote into the results file of that run (after verification).
    for row in demo_board.rows:
        folder = demo_results["baseline" if row.run.name == "medbench_baseline" else "tiny-llava"]
        raw = find_runs(folder)[-1]
        for key, cell in row.cells.items():
            task, metric = key.split("/")
            assert cell.value == raw.metrics(task)[metric][0]
            if cell.low is not None:
                assert cell.low <= cell.value + 1e-12 and cell.value <= cell.high + 1e-12


def test_columns_come_from_the_task_yamls():
    columns = all_columns()
    for task, config in task_configs().items():
        expected = [m["metric"] for m in config["metric_list"] if m["metric"] not in COUNTERS]
        assert [c.metric for c in columns if c.task == task] == expected
        directions = {m["metric"]: m["higher_is_better"] for m in config["metric_list"]}
        assert all(c.higher_is_better == directions[c.metric] for c in columns if c.task == task)
    assert next(c for c in columns if c.metric == "closed_unparsed").arrow == "↓"


def test_tiny_model_is_significantly_worse_than_the_baseline_where_the_intervals_say_so(demo_board):
    tiny = next(row for row in demo_board.rows if row.run.name == "tiny-llava")
    baseline = next(row for row in demo_board.rows if row.is_baseline)
    assert baseline.cells and all(cell.vs_baseline is None for cell in baseline.cells.values())
    marked = [cell for cell in tiny.cells.values() if cell.mark]
    assert marked, "the random tiny model should lose clearly somewhere"
    for key, cell in tiny.cells.items():
        if cell.vs_baseline is None:
            continue
        assert (cell.mark is not None) == (
            cell.vs_baseline["p"] < demo_board.alpha and cell.vs_baseline["difference"] != 0
        )
        assert cell.vs_baseline["difference"] == pytest.approx(cell.value - baseline.cells[key].value, abs=1e-9)


def test_judge_metrics_are_read_from_both_judge_paths(judged_results, tmp_path):
    # Both are the baseline model: each needs its own display name, and their identical report answers are kept.
    inline_copy = copy_run(
        judged_results["inline"],
        tmp_path / "inline",
        {"schema": "medbench-submission/1", "display_name": "judged in lmms-eval"},
    )
    rescored_copy = copy_run(
        judged_results["rescored"],
        tmp_path / "rescored",
        {"schema": "medbench-submission/1", "display_name": "re-scored"},
    )
    runs, rejected = load_runs([inline_copy, rescored_copy], keep_identical=True)
    assert not rejected
    board = build_board(runs, rejected)
    inline = next(r for r in board.rows if set(r.run.tasks) == {"medbench_mimic_cxr"})
    rescored = next(r for r in board.rows if r is not inline)
    assert inline.cells["medbench_mimic_cxr/judge_completeness"].verdict == "recomputed"  # from the logged labels
    assert inline.run.tasks["medbench_mimic_cxr"].judge["model"] == "loopback-judge"
    assert inline.run.tasks["medbench_mimic_cxr"].judge["prompts"]["nli"].startswith("nli-v1:")
    amboss = rescored.run.tasks["medbench_amboss"]
    assert amboss.judge["model"] == "loopback-judge" and amboss.judge["prompts"] == {
        "facts": "facts-v1",
        "nli": "nli-v1",
        "severity": "severity-v1",
    }
    assert {"judge_completeness", "judge_hallucination", "judge_severe"} <= set(amboss.scores)
    assert rescored.cells["medbench_amboss/judge_completeness"].low is not None  # per-sample verdicts give a CI
    html = render_html(board)
    assert "loopback-judge" in html and "nli-v1" in html


# -------------------------------------------------------------------------------------- output formats


def test_user_text_is_escaped_in_every_format(demo_results, tmp_path):
    folder = copy_run(
        demo_results["baseline"],
        tmp_path / "evil",
        {
            "schema": "medbench-submission/1",
            "display_name": INJECTED,
            "backbone": "| x |",
            "notes": "</pre><script>bad()</script>",
        },
    )
    runs, rejected = load_runs([folder])
    board = build_board(runs, rejected)
    html = render_html(board)
    assert html.count("<script>") == 1 and "bad()</script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
    markdown = render_markdown(board)
    assert "<script>" not in markdown and "\\| x \\|" in markdown
    write_csv(board, tmp_path / "board.csv")
    rows = list(csv.DictReader((tmp_path / "board.csv").open()))
    assert rows[0]["model"] == INJECTED  # a leading "<" is harmless in CSV and kept verbatim
    assert csv_cell('=HYPERLINK("x")') == '\'=HYPERLINK("x")' and csv_cell("-1") == "'-1" and csv_cell(0.5) == 0.5


def test_markdown_escape_keeps_text_literal():
    assert md("a|b *c* _d_ [e](f) <g>\nh") == "a\\|b \\*c\\* \\_d\\_ \\[e\\]\\(f\\) \\<g\\> h"


def test_the_page_only_runs_its_own_script(demo_board):
    import base64
    import hashlib
    import re
    from html import unescape

    html = render_html(demo_board)
    policy = unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1))
    script = re.search(r"<script>(.*)</script>", html, flags=re.DOTALL).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in policy and "default-src 'none'" in policy
    assert "http://" not in html and "https://" not in html.replace("https://json-schema", "")  # nothing fetched


def test_manifest_schema_is_valid_and_documented_example_passes():
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(load_schema(MANIFEST_SCHEMA))
    example = json.loads((Path(__file__).parents[2] / "docs" / "leaderboard.example.json").read_text())
    assert schema_problem(example, MANIFEST_SCHEMA) is None
    assert "homepage" in schema_problem({**example, "homepage": "javascript:alert(1)"}, MANIFEST_SCHEMA)


# ------------------------------------------------------------------------------------------------ CLI


def test_build_and_validate_from_the_command_line(demo_results, limited_results, tmp_path, capsys):
    out = tmp_path / "board"
    code = medbench_main(
        [
            "leaderboard",
            "build",
            str(demo_results["baseline"]),
            str(demo_results["tiny-llava"]),
            str(limited_results),
            "--baseline",
            "medbench_baseline",
            "--metric",
            "medbench_mimic_cxr=rouge_l",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "2 runs on the board, 1 rejected" in printed and "rejected [limit]" in printed
    for name in ("index.html", "leaderboard.md", "leaderboard.csv", "plots/scores.png", "rejected.json"):
        assert (out / name).is_file(), name
    assert (out / "plots" / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "rejected.json").read_text())[0]["rule"] == "limit"
    assert "medbench_mimic_cxr rouge_l ↑" in (out / "leaderboard.md").read_text()
    assert (
        medbench_main(
            ["leaderboard", "build", str(demo_results["baseline"]), str(limited_results), "--out", str(out), "--strict"]
        )
        == 1
    )
    capsys.readouterr()

    assert medbench_main(["leaderboard", "validate", str(demo_results["tiny-llava"])]) == 0
    assert "ok: tiny-llava" in capsys.readouterr().out
    assert medbench_main(["leaderboard", "validate", str(limited_results)]) == 2
    assert "medbench: error: rejected [limit]" in capsys.readouterr().err
    copy = copy_run(demo_results["tiny-llava"], tmp_path / "again")
    assert medbench_main(["leaderboard", "validate", str(copy), "--board", str(demo_results["tiny-llava"])]) == 2
    assert "rejected [duplicate]" in capsys.readouterr().err


def test_command_line_mistakes_are_one_line_errors(demo_results, tmp_path, capsys):
    from medbench.leaderboard.cli import main

    assert main(["build", str(demo_results["baseline"]), "--out", str(tmp_path), "--baseline", "nobody"]) == 2
    assert capsys.readouterr().err.strip() == (
        "medbench: error: --baseline 'nobody' is not a run on the board (runs: medbench_baseline); pass a display name"
    )
    assert main(["build", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["build", str(demo_results["baseline"]), "--out", str(tmp_path), "--metric", "rouge_l"]) == 2
    assert "TASK=METRIC" in capsys.readouterr().err


def test_a_blind_twin_column_sits_beside_its_task():
    from medbench.leaderboard.board import task_order

    order = task_order()
    for task in ("medbench_vqa_rad", "medbench_slake", "medbench_pathvqa"):
        assert order[order.index(task) + 1] == f"{task}_blind"
