"""The board page in a real headless Chromium: it renders, sorts, and shows an injected model name as text.

Needs Debian's ``chromium`` (``apt-get install -y chromium``) or ``$CHROMIUM``; skipped without it. Set
``MEDBENCH_LEADERBOARD_SCREENSHOT=docs/leaderboard.png`` to refresh the screenshot in the docs (taken of a
realistic board of the demo runs, not of the injected-name board).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _lbbrowser import Chromium, find_chromium
from _lbfiles import copy_run

from medbench.cli import main as medbench_main

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium binary: apt-get install -y chromium (Debian), or set CHROMIUM=/path/to/chrome"
)
INJECTED = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'

ROW_NAMES = "Array.from(document.querySelectorAll('#board tbody tr')).map(r => r.getAttribute('data-name'))"


def _table(key: str) -> str:
    """The summary table for a task's headline metric, else the task's own table."""
    task, metric = key.split("/") if "/" in key else ("", key)
    return "#board" if metric in ("overall", "rouge_l", "model") else f"#table-{task}"


def _column_values(key: str) -> str:
    table = _table(key)
    return (
        f"(() => {{ const heads = Array.from(document.querySelectorAll('{table} thead tr:last-child th'));"
        f" const i = heads.findIndex(h => h.getAttribute('data-key') === {key!r});"
        f" return Array.from(document.querySelectorAll('{table} tbody tr')).map(r => r.cells[i].getAttribute('data-value')); }})()"
    )


def _click(key: str) -> str:
    return f"document.querySelector('{_table(key)} th[data-key=\"{key}\"] button').click()"


def _headers(table: str) -> str:
    return f"Array.from(document.querySelectorAll('{table} thead tr:last-child th')).map(h => h.textContent)"


@pytest.fixture(scope="module")
def board_page(demo_results, judged_results, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser_board")
    evil = copy_run(
        demo_results["baseline"],
        root / "evil",
        {
            "schema": "medbench-submission/1",
            "display_name": INJECTED,
            "backbone": "rule-based",
            "variant": "baseline",
            "notes": "</pre><script>window.__pwned=3</script>",
        },
    )
    judged = copy_run(
        judged_results["inline"],
        root / "judged",
        {
            "schema": "medbench-submission/1",
            "display_name": "baseline, judged",
            "backbone": "rule-based",
            "variant": "judged",
            "base_model": INJECTED,
        },
    )
    out = root / "board"
    code = medbench_main(
        [
            "leaderboard",
            "build",
            str(evil),
            str(demo_results["tiny-llava"]),
            str(judged),
            "--baseline",
            INJECTED,
            "--metric",
            "medbench_mimic_cxr=rouge_l",
            "--keep-identical",  # the judged run is the baseline model's: its report answers equal the evil copy's
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return out / "index.html"


def test_the_table_renders_sorts_and_keeps_injected_names_as_text(board_page, tmp_path):
    with Chromium(CHROMIUM) as browser:
        browser.open(board_page.as_uri())
        assert browser.evaluate("document.getElementById('board').getAttribute('data-ready')") == "true"

        # rendered: three runs, grouped (the judged run under its base model); the summary holds each task's
        # headline metric, each task's table every metric of the task
        assert browser.evaluate(ROW_NAMES) == [INJECTED, "baseline, judged", "tiny-llava"]
        headers = browser.evaluate(_headers("#board"))
        assert headers[:4] == ["model", "backbone", "variant", "base model"]
        assert headers.count("overall ↑") == 3 and headers.count("rouge_l ↑") == 2 and len(headers) == 9
        assert "closed_unparsed ↓" in browser.evaluate(_headers("#table-medbench_vqa_rad"))
        assert "judge_hallucination ↓" in browser.evaluate(_headers("#table-medbench_mimic_cxr"))
        assert browser.evaluate("document.querySelectorAll('table.sortable[data-ready=true]').length") == 6

        # sorting: first click puts the best first (descending for ↑, ascending for ↓), second click reverses
        rouge = "medbench_mimic_cxr/rouge_l"
        browser.evaluate(_click(rouge))
        values = [float(v) for v in browser.evaluate(_column_values(rouge))]
        assert values == sorted(values, reverse=True) and len(set(values)) > 1
        assert (
            browser.evaluate(f"document.querySelector('#board th[data-key=\"{rouge}\"]').getAttribute('aria-sort')")
            == "descending"
        )
        browser.evaluate(_click(rouge))
        assert [float(v) for v in browser.evaluate(_column_values(rouge))] == sorted(values)
        unparsed = "medbench_vqa_rad/closed_unparsed"
        browser.evaluate(_click(unparsed))
        present = [v for v in browser.evaluate(_column_values(unparsed)) if v != ""]
        assert [float(v) for v in present] == sorted(float(v) for v in present)
        assert browser.evaluate(_column_values(unparsed))[-1] == "", "runs without the task sort last"
        browser.evaluate(_click("model"))
        assert browser.evaluate(ROW_NAMES) == sorted([INJECTED, "baseline, judged", "tiny-llava"])
        browser.evaluate("document.getElementById('grouped').click()")
        assert browser.evaluate(ROW_NAMES)[0] == INJECTED

        # the injected name is text: nothing ran, no element was created from it
        assert browser.evaluate("typeof window.__pwned") == "undefined"
        assert browser.evaluate("document.querySelector('#board tbody tr td.name a').textContent").startswith(
            "<script>window.__pwned=1"
        )
        assert browser.evaluate("document.querySelectorAll('script').length") == 1
        assert browser.evaluate("document.querySelectorAll('#board img, details img').length") == 0
        assert not [line for line in browser.console if "exception" in line]

        shot = browser.screenshot(tmp_path / "board.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not os.environ.get("MEDBENCH_LEADERBOARD_SCREENSHOT"), reason="set MEDBENCH_LEADERBOARD_SCREENSHOT=PATH")
def test_docs_screenshot_of_a_realistic_board(demo_results, judged_results, tmp_path):
    manifests = {
        "baseline": {"display_name": "rule-based baseline", "backbone": "none", "variant": "baseline"},
        "tiny-llava": {"display_name": "tiny LLaVA (random weights)", "backbone": "llava", "variant": "base"},
        "judged": {"display_name": "baseline, judged", "backbone": "none", "variant": "judged",
                   "base_model": "rule-based baseline"},
    }
    sources = {"baseline": demo_results["baseline"], "tiny-llava": demo_results["tiny-llava"], "judged": judged_results["inline"]}
    folders = [
        copy_run(source, tmp_path / key, {"schema": "medbench-submission/1", **manifests[key]})
        for key, source in sources.items()
    ]
    # As a public board is built: each run submitted to a registry once, the page rendered from the registry.
    # The judged run is the baseline model judged: its report answers are the baseline's (kept, noted).
    registry, out = tmp_path / "registry", tmp_path / "board"
    assert medbench_main(["leaderboard", "submit", *map(str, folders), "--registry", str(registry), "--keep-identical"]) == 0
    code = medbench_main(
        ["leaderboard", "build", "--registry", str(registry), "--baseline", "rule-based baseline", "--out", str(out)]
    )
    assert code == 0
    with Chromium(CHROMIUM) as browser:
        browser.open((out / "index.html").as_uri())
        assert browser.evaluate("document.getElementById('board').getAttribute('data-ready')") == "true"
        target = browser.screenshot(Path(os.environ["MEDBENCH_LEADERBOARD_SCREENSHOT"]))
        assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
