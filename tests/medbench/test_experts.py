"""``medbench experts export`` / ``import`` on real lmms-eval runs: blinding, the form in Chromium, validation.

The runs are two configurations of the demo baseline evaluated by lmms-eval on the demo data and graded by
the loopback judge (``_experts_runs``). The browser part needs Debian's ``chromium`` (or ``$CHROMIUM``) and is
skipped without it; it drives the page with the leaderboard tests' DevTools-pipe helper.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import shutil
import time
import zipfile
from collections import defaultdict
from pathlib import Path

import pytest
from _experts_runs import make_runs

from medbench.cli import main as medbench_main
from medbench.experts.stats import cohen_kappa, fleiss_kappa, krippendorff_alpha

_spec = importlib.util.spec_from_file_location("_lbbrowser", Path(__file__).parents[1] / "leaderboard" / "_lbbrowser.py")
_browser = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_browser)
CHROMIUM = _browser.find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium binary: apt-get install -y chromium (Debian), or set CHROMIUM=/path/to/chrome"
)
SEVERE_ERRORS = ["laterality_position", "presence_abnormality"]
COMMENT = 'looks <b>odd</b> & "quoted" \u2014 \u00e9'


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    return make_runs(tmp_path_factory.mktemp("experts_runs"))


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("experts_export") / "review"
    arguments = [f"{label}={folder}" for label, folder in runs.items()]
    assert medbench_main(["experts", "export", *arguments, "--n", "100", "--seed", "5", "--out", str(out)]) == 0
    return out


def _key(exported: Path) -> dict:
    return json.loads((exported / "key.json").read_text(encoding="utf-8"))


def _payload(exported: Path) -> dict:
    page = (exported / "annotators" / "form.html").read_text(encoding="utf-8")
    data = re.search(r'<script type="application/json" id="medbench-export">(.*?)</script>', page, re.DOTALL).group(1)
    return json.loads(data)


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _grade(text: str, reference: str) -> dict:
    """The scripted annotator: correct when the output is the reference; severe when it says 'right'."""
    severe = "right" in text.lower().split()
    return {
        "correctness": 3 if text.strip().lower() == reference.strip().lower() else 0,
        "severity": "severe" if severe else ("none" if text.strip().lower() == reference.strip().lower() else "minor"),
        "error_types": SEVERE_ERRORS if severe else [],
    }


# ------------------------------------------------------------------------------------------------ export


def test_export_samples_every_shared_document_stratified(exported, runs):
    key = _key(exported)
    assert key["sampling"]["strata"] == {"medbench_mimic_cxr": 6, "medbench_vqa_rad": 24}
    assert len(key["items"]) == 30
    assert sorted(key["models"]) == ["model_a", "model_b"]
    assert {(item["task"], item["sample_id"]) for item in key["items"].values()} >= {("medbench_mimic_cxr", "demo-report-04")}
    # both judge sources read: model_a graded inside lmms-eval, model_b re-graded by `medbench judge`
    grades = defaultdict(set)
    for item in key["items"].values():
        for code, label in item["models"].items():
            if item["task"] == "medbench_mimic_cxr":
                grades[label].add(item["judge_severity"][code])
            else:
                assert item["judge_severity"][code] is None
    assert grades["model_a"] == {"none"} and grades["model_b"] == {"minor", "severe"}


def test_fewer_items_keep_the_task_proportions(runs, tmp_path):
    arguments = [f"{label}={folder}" for label, folder in runs.items()]
    assert medbench_main(["experts", "export", *arguments, "--n", "5", "--seed", "1", "--out", str(tmp_path / "a")]) == 0
    assert medbench_main(["experts", "export", *arguments, "--n", "5", "--seed", "1", "--out", str(tmp_path / "b")]) == 0
    first, second = (json.loads((tmp_path / name / "key.json").read_text()) for name in "ab")
    tasks = sorted(item["task"] for item in first["items"].values())
    assert tasks == ["medbench_mimic_cxr"] + ["medbench_vqa_rad"] * 4
    # the seed fixes the sample, not the blinding
    assert [(i["task"], i["sample_id"]) for i in first["items"].values()] == [(i["task"], i["sample_id"]) for i in second["items"].values()]
    assert [i["codes"] for i in first["items"].values()] != [i["codes"] for i in second["items"].values()]
    # stratified by the judge too: the one severely judged MIMIC-CXR report is its own stratum and is drawn
    assert medbench_main(["experts", "export", *arguments, "--n", "4", "--stratify-judge", "--out", str(tmp_path / "c")]) == 0
    third = json.loads((tmp_path / "c" / "key.json").read_text())
    assert third["sampling"]["strata"] == {"medbench_mimic_cxr/minor": 5, "medbench_mimic_cxr/severe": 1, "medbench_vqa_rad/unjudged": 24}
    assert ("medbench_mimic_cxr", "demo-report-04") in [(i["task"], i["sample_id"]) for i in third["items"].values()]


def test_blinding_nothing_for_annotators_names_a_model(exported, runs):
    key = _key(exported)
    annotators = exported / "annotators"
    secrets = {"model_a", "model_b", "medbench_baseline", "closed_answer", "baseline"}
    for entry in key["models"].values():
        secrets.add(entry["folder"])
        secrets |= {Path(name).name.split("_results")[0] for name in entry["results_files"]}  # run time stamps
    for folder in runs.values():
        secrets.add(str(folder))
    texts = {}
    for path in annotators.rglob("*"):
        assert not any(secret in path.name for secret in secrets), path
        if path.suffix == ".xlsx":
            with zipfile.ZipFile(path) as book:
                texts[path.name] = " ".join(book.read(name).decode("utf-8", "replace") for name in book.namelist())
        elif path.suffix in (".html", ".csv", ".txt"):
            texts[path.name] = path.read_text(encoding="utf-8")
    assert set(texts) == {"form.html", "items.csv", "items.xlsx", "README.txt"}
    for name, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"{name} reveals {secret!r}"
    assert sorted(p.name for p in (annotators / "images").iterdir()) == [f"item-{n:03d}.png" for n in range(1, 31)]
    # codes are drawn per item and the order is shuffled per item
    positions = defaultdict(list)
    codes = defaultdict(set)
    for item in key["items"].values():
        for position, code in enumerate(item["codes"]):
            positions[item["models"][code]].append(position)
            codes[item["models"][code]].add(code)
    assert len(codes["model_a"]) == 30 and not codes["model_a"] & codes["model_b"]
    assert set(positions["model_a"]) == {0, 1}  # 30 items: all in one place has probability 2**-29
    # the form and the spreadsheet show each item's outputs in the key's shuffled order
    payload = _payload(exported)
    assert [[o["code"] for o in item["outputs"]] for item in payload["items"]] == [i["codes"] for i in key["items"].values()]
    rows = _csv_rows(annotators / "items.csv")
    assert [(r["item_id"], r["output_code"]) for r in rows] == [(i, c) for i, item in key["items"].items() for c in item["codes"]]
    # the form carries only what an annotator needs
    assert {field for item in payload["items"] for field in item} == {"item_id", "task", "prompt", "reference", "image", "outputs", "pair"}
    assert {field for item in payload["items"] for output in item["outputs"] for field in output} == {"code", "text"}


def test_export_refuses_bad_arguments(runs, tmp_path, capsys):
    folder = str(runs["model_a"])
    assert medbench_main(["experts", "export", folder, folder, "--n", "3", "--out", str(tmp_path / "x")]) == 2
    assert "both called 'model_a'" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    assert medbench_main(["experts", "export", folder, "--n", "3", "--out", str(tmp_path / "full")]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert medbench_main(["experts", "export", folder, "--n", "3", "--tasks", "medbench_amboss", "--out", str(tmp_path / "y")]) == 2
    assert "medbench_amboss not answered by every run" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ form in Chromium

_FILL = """
(() => {
  const data = JSON.parse(document.getElementById('medbench-export').textContent);
  const click = (name, value) => document.querySelector('input[name="' + CSS.escape(name) + '"][value="' + CSS.escape(String(value)) + '"]').click();
  const grades = %s;
  const annotator = document.getElementById('annotator');
  annotator.value = 'Dr A'; annotator.dispatchEvent(new Event('input', {bubbles: true}));
  for (const item of data.items) {
    item.outputs.forEach((output, index) => {
      const base = item.item_id + ':' + output.code;
      const grade = grades[base];
      click('correctness:' + base, grade.correctness);
      click('severity:' + base, grade.severity);
      for (const key of grade.error_types) click('error_types:' + base, key);
      if (index === 0) {
        const box = document.querySelector('textarea[name="' + CSS.escape('comment:' + base) + '"]');
        box.value = %s; box.dispatchEvent(new Event('input', {bubbles: true}));
      }
    });
    if (item.pair) click('preference:' + item.item_id, item.pair[0]);
  }
  // the form writes (and counts) once the annotator pauses
  return new Promise((resolve) => setTimeout(() => resolve(document.getElementById('progress').textContent), 500));
})()
"""


@pytest.fixture(scope="module")
def saved_by_browser(exported, tmp_path_factory) -> tuple[Path, dict]:
    """Fill the form in Chromium, reload it, save it; returns the downloaded file and the grades given."""
    if CHROMIUM is None:
        pytest.skip("no Chromium binary: apt-get install -y chromium (Debian), or set CHROMIUM=/path/to/chrome")
    payload = _payload(exported)
    grades = {
        f"{item['item_id']}:{output['code']}": _grade(output["text"], item["reference"])
        for item in payload["items"]
        for output in item["outputs"]
    }
    downloads = tmp_path_factory.mktemp("downloads")
    url = (exported / "annotators" / "form.html").as_uri()
    with _browser.Chromium(CHROMIUM, timeout=120) as page:
        page.open(url)
        assert page.evaluate("window.medbenchExperts.restored") is False
        assert page.evaluate("document.querySelectorAll('.output').length") == 60
        assert page.evaluate("document.querySelectorAll('img[src^=\"data:image/png;base64,\"]').length") == 30
        assert page.evaluate(_FILL % (json.dumps(grades), json.dumps(COMMENT))) == "60 of 60 outputs graded"
        before = page.evaluate("JSON.stringify(window.medbenchExperts.collect())")
        page.open(url)  # a reload: the work comes back from localStorage
        assert page.evaluate("window.medbenchExperts.restored") is True
        assert page.evaluate("JSON.stringify(window.medbenchExperts.collect())") == before
        assert page.evaluate("document.getElementById('progress').textContent") == "60 of 60 outputs graded"
        # model and dataset text is shown as text, never parsed as HTML
        assert page.evaluate("document.querySelectorAll('.output-text b, .reference b, .prompt b').length") == 0
        page.call("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        name = page.evaluate("window.medbenchExperts.save()")
        deadline = time.monotonic() + 20
        while not (downloads / name).is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert page.console == []
    saved = downloads / name
    assert saved.is_file(), f"the form's download {name} did not arrive"
    return saved, grades


@needs_chromium
def test_a_second_annotator_on_a_shared_browser_starts_from_an_empty_form(exported):
    url = (exported / "annotators" / "form.html").as_uri()
    first = '''(() => {
      const annotator = document.getElementById('annotator');
      annotator.value = 'Dr First'; annotator.dispatchEvent(new Event('input', {bubbles: true}));
      document.querySelector('input[name^="correctness:"][value="3"]').click();
      document.querySelector('input[name^="severity:"][value="none"]').click();
      return new Promise((resolve) => setTimeout(() => resolve(document.getElementById('progress').textContent), 500));
    })()'''
    with _browser.Chromium(CHROMIUM, timeout=120) as page:
        page.open(url)
        assert page.evaluate("document.getElementById('previous').hidden") is True  # nothing to restore
        assert page.evaluate(first) == "1 of 60 outputs graded"
        page.open(url)  # the next person opens the same file in the same browser
        assert page.evaluate("document.getElementById('previous').hidden") is False
        assert page.evaluate("document.getElementById('previous-name').textContent") == "Dr First"
        page.evaluate("document.getElementById('start-new').click()")
        assert page.evaluate("document.getElementById('annotator').value") == ""
        assert page.evaluate("document.getElementById('progress').textContent") == "0 of 60 outputs graded"
        kept = page.evaluate("localStorage.getItem(window.medbenchExperts.storageKey + ':dr-first')")
        assert json.loads(kept)["state"]["annotator"] == "Dr First"  # set aside, not lost
        page.open(url)  # and the form stays empty for them
        assert page.evaluate("document.getElementById('previous').hidden") is True
        assert page.evaluate("document.getElementById('progress').textContent") == "0 of 60 outputs graded"
        assert page.evaluate("document.getElementById('annotator').getAttribute('autocomplete')") == "off"
        # A level whose label is its value reads once ("none", not "none none"), in the choices and the rubric.
        labels = page.evaluate("Array.from(document.querySelectorAll('label')).map((l) => l.textContent).join('|')")
        assert "none none" not in labels and "none (none)" not in page.evaluate("document.body.textContent")
        assert page.console == []


@needs_chromium
def test_form_saves_a_file_that_imports_and_round_trips(saved_by_browser, exported, tmp_path):
    saved, grades = saved_by_browser
    key = _key(exported)
    document = json.loads(saved.read_text(encoding="utf-8"))
    assert document["export_id"] == key["export_id"] and document["annotator"] == "Dr A"
    assert saved.name == f"annotations_{key['export_id']}_dr-a.json"
    out = tmp_path / "results"
    assert medbench_main(["experts", "import", str(saved), "--key", str(exported / "key.json"), "--out", str(out)]) == 0
    rows = _csv_rows(out / "annotations_unblinded.csv")
    assert len(rows) == 60
    back = {}
    for row in rows:
        assert row["model"] == key["items"][row["item_id"]]["models"][row["output_code"]]
        back[f"{row['item_id']}:{row['output_code']}"] = {
            "correctness": int(row["correctness"]),
            "severity": row["severity"],
            "error_types": row["error_types"].split(";") if row["error_types"] else [],
        }
    assert back == grades
    assert sum(row["comment"] == COMMENT for row in rows) == 30
    summary = json.loads((out / "experts_summary.json").read_text(encoding="utf-8"))
    # per-model figures recomputed from the grades and the key
    by_model = defaultdict(list)
    for name, grade in grades.items():
        item_id, code = name.split(":")
        by_model[key["items"][item_id]["models"][code]].append(grade)
    for label, given in by_model.items():
        entry = summary["models"][label]
        assert entry["n_outputs"] == 30
        assert entry["correctness"]["value"] == pytest.approx(sum(g["correctness"] for g in given) / 3 / 30)
        assert entry["severe_rate"]["value"] == pytest.approx(sum(g["severity"] == "severe" for g in given) / 30)
        low, high = entry["correctness"]["ci"]
        assert low <= entry["correctness"]["value"] <= high
        visual = sum(bool(g["error_types"]) for g in given) / 30
        assert entry["error_types"]["visual_misinterpretation"]["value"] == pytest.approx(visual)
    assert summary["models"]["model_b"]["severe_rate"]["value"] > 0 == summary["models"]["model_a"]["severe_rate"]["value"]
    # judge vs expert on the judged (MIMIC-CXR) outputs
    judge, expert = [], []
    for name, grade in grades.items():
        item_id, code = name.split(":")
        if key["items"][item_id]["judge_severity"][code]:
            judge.append(key["items"][item_id]["judge_severity"][code])
            expert.append(grade["severity"])
    agreement = summary["judge_agreement"]
    assert agreement["n_outputs"] == len(judge) == 12
    assert agreement["cohen_kappa"]["value"] == pytest.approx(cohen_kappa(judge, expert, ["none", "minor", "severe"]))
    assert agreement["exact_agreement"] == pytest.approx(sum(a == b for a, b in zip(judge, expert, strict=True)) / 12)
    assert sum(sum(row.values()) for row in agreement["confusion"].values()) == 12
    # pairwise: Dr A always preferred the first output shown
    wins = summary["pairwise"]["model_a vs model_b"]["wins"]
    firsts = [item["models"][item["codes"][0]] for item in key["items"].values()]
    assert wins == {"model_a": firsts.count("model_a"), "model_b": firsts.count("model_b")}


@needs_chromium
def test_form_shows_model_text_as_text(tmp_path):
    from medbench.experts.export import ExportItem, form_payload
    from medbench.experts.form import render_form
    from medbench.experts.rubric import load_rubric

    evil = '</script><script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
    item = ExportItem("item-001", "medbench_vqa_rad", "x", prompt=evil, reference=evil, image=None, codes=["AAAA"], texts={"AAAA": evil})
    page = tmp_path / "form.html"
    page.write_text(render_form(form_payload("exp-test", [item], load_rubric())), encoding="utf-8")
    with _browser.Chromium(CHROMIUM, timeout=120) as browser:
        browser.open(page.as_uri())
        assert browser.evaluate("window.__pwned === undefined") is True
        assert browser.evaluate("document.querySelector('.output-text').textContent") == evil
        assert browser.evaluate("document.querySelectorAll('#items img').length") == 0


def _fill_rows(rows: list[dict[str, str]], annotator: str, flip: int = 0) -> list[dict[str, str]]:
    filled = []
    for number, row in enumerate(rows):
        grade = _grade(row["output"], row["reference"])
        if flip and number % flip == 0:
            grade["severity"] = {"none": "minor", "minor": "none", "severe": "minor"}[grade["severity"]]
            grade["correctness"] = 3 - grade["correctness"]
        filled.append(
            {
                **row,
                "annotator": annotator,
                "correctness": str(grade["correctness"]),
                "severity": grade["severity"].upper() if number % 5 == 0 else grade["severity"],
                "error_types": "; ".join(grade["error_types"]),
                "preference": "tie" if row["pair"] else "",
            }
        )
    return filled


def _write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _write_xlsx(source: Path, target: Path, rows: list[dict[str, str]]) -> Path:
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.load_workbook(source)
    sheet = book["items"]
    header = [cell.value for cell in sheet[1]]
    for index, row in enumerate(rows, start=2):
        for column in ("annotator", "correctness", "severity", "error_types", "preference"):
            value = row[column]
            sheet.cell(row=index, column=header.index(column) + 1, value=int(value) if column == "correctness" else value)
    book.save(target)
    return target


@needs_chromium
def test_three_annotators_form_csv_xlsx_agreement(saved_by_browser, exported, tmp_path):
    saved, _grades = saved_by_browser
    rows = _csv_rows(exported / "annotators" / "items.csv")
    b = _write_csv(tmp_path / "dr_b.csv", _fill_rows(rows, "Dr B", flip=4))
    c = _write_xlsx(exported / "annotators" / "items.xlsx", tmp_path / "dr_c.xlsx", _fill_rows(rows, "Dr C", flip=7))
    out = tmp_path / "results"
    assert medbench_main(["experts", "import", str(saved), str(b), str(c), "--key", str(exported / "key.json"), "--out", str(out)]) == 0
    summary = json.loads((out / "experts_summary.json").read_text(encoding="utf-8"))
    assert summary["annotators"] == ["Dr A", "Dr B", "Dr C"] and summary["n_ratings"] == 180
    table = _csv_rows(out / "annotations_unblinded.csv")
    units = defaultdict(dict)
    for row in table:
        units[(row["item_id"], row["output_code"])][row["annotator"]] = row["severity"]
    severity = [[unit[name] for name in ("Dr A", "Dr B", "Dr C")] for unit in units.values()]
    scale = ["none", "minor", "severe"]
    result = summary["agreement"]["severity"]
    assert result["fleiss_kappa"]["value"] == pytest.approx(fleiss_kappa(severity, scale))
    assert result["krippendorff_alpha_ordinal"]["value"] == pytest.approx(krippendorff_alpha(severity, "ordinal", scale))
    assert result["krippendorff_alpha_nominal"]["value"] == pytest.approx(krippendorff_alpha(severity, "nominal", scale))
    assert 0 < result["fleiss_kappa"]["value"] < 1
    # two annotators: Cohen's kappa
    out2 = tmp_path / "two"
    assert medbench_main(["experts", "import", str(saved), str(b), "--key", str(exported / "key.json"), "--out", str(out2)]) == 0
    two = json.loads((out2 / "experts_summary.json").read_text(encoding="utf-8"))["agreement"]["correctness"]
    first = [[int(unit[0]), int(unit[1])] for unit in _pairs(out2, "correctness")]
    assert two["cohen_kappa"]["value"] == pytest.approx(cohen_kappa([u[0] for u in first], [u[1] for u in first], [0, 1, 2, 3]))
    assert two["cohen_kappa_quadratic"]["value"] == pytest.approx(
        cohen_kappa([u[0] for u in first], [u[1] for u in first], [0, 1, 2, 3], "quadratic")
    )


def _pairs(out: Path, field: str) -> list[list[str]]:
    units = defaultdict(dict)
    for row in _csv_rows(out / "annotations_unblinded.csv"):
        units[(row["item_id"], row["output_code"])][row["annotator"]] = row[field]
    return [[unit["Dr A"], unit["Dr B"]] for unit in units.values()]


# ------------------------------------------------------------------------------------------ validation


def test_import_reports_every_problem_one_line_each(exported, runs, tmp_path, capsys):
    rows = _csv_rows(exported / "annotators" / "items.csv")
    good = _fill_rows(rows, "Dr B")
    unknown = [dict(row) for row in good]
    unknown[0]["item_id"] = "item-999"
    missing = _fill_rows(rows, "Dr C")
    missing[1]["severity"] = ""
    twice = _fill_rows(rows, "Dr B")
    other = [dict(row, export_id="exp-000000000000") for row in _fill_rows(rows, "Dr D")]
    files = [
        _write_csv(tmp_path / "unknown.csv", unknown),
        _write_csv(tmp_path / "missing.csv", missing),
        _write_csv(tmp_path / "twice.csv", twice),
        _write_csv(tmp_path / "other.csv", other),
    ]
    code = medbench_main(["experts", "import", *map(str, files), "--key", str(exported / "key.json"), "--out", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5, err
    assert "unknown.csv: unknown item 'item-999'" in err[0]
    assert "missing.csv: item" in err[1] and "missing field 'severity'" in err[1]
    assert "twice.csv: annotator 'Dr B' already came from" in err[2] and "unknown.csv" in err[2]
    assert "other.csv: belongs to export exp-000000000000" in err[3]
    assert err[4].startswith("medbench: error: 4 problem(s) in the annotation files")
    assert not (tmp_path / "r").exists()


def test_import_rejects_foreign_key_bad_values_and_wrong_files(exported, tmp_path, capsys):
    rows = _csv_rows(exported / "annotators" / "items.csv")
    bad = _fill_rows(rows, "Dr B")
    bad[0]["correctness"] = "7"
    bad[1]["error_types"] = "visual misinterpretation"
    bad[2]["output_code"] = "ZZZZ"
    bad[3]["annotator"] = "Dr Z"
    path = _write_csv(tmp_path / "bad.csv", bad)
    truncated = tmp_path / "truncated.csv"
    truncated.write_text("item_id,output_code\nitem-001,AAAA\n", encoding="utf-8")
    code = medbench_main(["experts", "import", str(path), str(truncated), "--key", str(exported / "key.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert "correctness '7' is not one of [0, 1, 2, 3]" in err
    assert "error type 'visual misinterpretation' is not in the error taxonomy" in err
    assert "unknown output code" in err
    assert "several annotators (Dr B, Dr Z)" in err
    assert "truncated.csv: missing column(s)" in err
    not_a_key = tmp_path / "key.json"
    not_a_key.write_text("{}", encoding="utf-8")
    assert medbench_main(["experts", "import", str(path), "--key", str(not_a_key)]) == 2
    assert "not an export key" in capsys.readouterr().err


def test_blank_rows_are_skipped_not_errors(exported, tmp_path):
    rows = _csv_rows(exported / "annotators" / "items.csv")
    filled = _fill_rows(rows[:10], "Dr E") + rows[10:]
    out = tmp_path / "r"
    path = _write_csv(tmp_path / "partial.csv", filled)
    assert medbench_main(["experts", "import", str(path), "--key", str(exported / "key.json"), "--out", str(out)]) == 0
    summary = json.loads((out / "experts_summary.json").read_text(encoding="utf-8"))
    assert summary["n_ratings"] == 10 and summary["n_blank_outputs"] == 50
    assert summary["agreement"]["severity"]["n_outputs"] == 0  # one annotator: no agreement to report


def test_a_truncated_sheet_is_refused_naming_the_missing_rows_unless_allow_partial(exported, tmp_path, capsys):
    rows = _csv_rows(exported / "annotators" / "items.csv")
    filled = _fill_rows(rows, "Dr T")
    whole = _write_csv(tmp_path / "whole.csv", filled).read_text(encoding="utf-8")
    start = len(_write_csv(tmp_path / "first35.csv", filled[:35]).read_text(encoding="utf-8"))
    cut = start + [i for i, c in enumerate(whole[start:]) if c == ","][4]  # the 36th row cut after its output code
    truncated = tmp_path / "truncated.csv"
    truncated.write_text(whole[:cut], encoding="utf-8")  # a copy cut short: 35 graded rows and a stub
    key = str(exported / "key.json")
    assert medbench_main(["experts", "import", str(truncated), "--key", key, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    first_missing = f"{rows[36]['item_id']} {rows[36]['output_code']}"
    assert f"truncated.csv: 24 of the export's 60 rows are missing ({first_missing}, " in err
    assert "--allow-partial" in err and not (tmp_path / "r").exists()
    out = tmp_path / "partial"
    assert medbench_main(["experts", "import", str(truncated), "--key", key, "--out", str(out), "--allow-partial"]) == 0
    assert "imported without its 24 missing row(s)" in capsys.readouterr().out
    assert json.loads((out / "experts_summary.json").read_text(encoding="utf-8"))["n_ratings"] == 35


def _excel_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    """What Excel's 'CSV UTF-8' writes in a locale whose decimal mark is the comma: BOM, ';', CRLF."""
    with path.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=";", lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_an_excel_semicolon_csv_with_bom_and_crlf_imports(exported, tmp_path):
    rows = _csv_rows(exported / "annotators" / "items.csv")
    path = _excel_csv(tmp_path / "excel.csv", _fill_rows(rows, "Dr X"))
    assert path.read_bytes().startswith(b"\xef\xbb\xbfexport_id;item_id;") and b"\r\n" in path.read_bytes()
    out = tmp_path / "r"
    assert medbench_main(["experts", "import", str(path), "--key", str(exported / "key.json"), "--out", str(out)]) == 0
    assert json.loads((out / "experts_summary.json").read_text(encoding="utf-8"))["n_ratings"] == 60


@pytest.mark.skipif(shutil.which("soffice") is None, reason="no LibreOffice: apt-get install -y libreoffice-calc-nogui")
def test_a_sheet_saved_by_libreoffice_with_semicolons_imports(exported, tmp_path):
    import subprocess

    rows = _csv_rows(exported / "annotators" / "items.csv")
    sheet = _write_xlsx(exported / "annotators" / "items.xlsx", tmp_path / "dr_l.xlsx", _fill_rows(rows, "Dr L"))
    # Field separator 59 (;), text delimiter 34 ("), character set 76 (UTF-8): LibreOffice's CSV filter options.
    subprocess.run(["soffice", "--headless", f"-env:UserInstallation=file://{tmp_path}/lo-profile", "--convert-to",
                    'csv:Text - txt - csv (StarCalc):59,34,76,1', "--outdir", str(tmp_path / "lo"), str(sheet)],
                   check=True, capture_output=True, timeout=120)
    saved = tmp_path / "lo" / "dr_l.csv"
    assert saved.read_text(encoding="utf-8").startswith('"export_id";"item_id";')  # quoted, ';'-separated
    out = tmp_path / "r"
    assert medbench_main(["experts", "import", str(saved), "--key", str(exported / "key.json"), "--out", str(out)]) == 0
    assert json.loads((out / "experts_summary.json").read_text(encoding="utf-8"))["n_ratings"] == 60


def test_unreadable_sheets_are_one_line_each(exported, tmp_path, capsys):
    rows = _csv_rows(exported / "annotators" / "items.csv")
    cp1252 = tmp_path / "cp1252.csv"
    filled = _fill_rows(rows, "Dr Ünal")
    with cp1252.open("w", encoding="cp1252", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(filled[0]))
        writer.writeheader()
        writer.writerows([{k: v.encode("cp1252", "replace").decode("cp1252") for k, v in row.items()} for row in filled])
    colons = tmp_path / "colons.csv"
    colons.write_text(":".join(rows[0]) + "\n", encoding="utf-8")
    truncated_xlsx = tmp_path / "cut.xlsx"
    truncated_xlsx.write_bytes((exported / "annotators" / "items.xlsx").read_bytes()[:2000])
    files = [str(cp1252), str(colons), str(truncated_xlsx)]
    assert medbench_main(["experts", "import", *files, "--key", str(exported / "key.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4, err
    assert "cp1252.csv: not UTF-8 (byte 0xdc" in err[0] and "CSV UTF-8" in err[0]
    assert "colons.csv: missing column(s)" in err[1] and "(read with comma separators)" in err[1]
    assert "cut.xlsx: not a readable .xlsx" in err[2]


def test_the_rubric_speaks_to_clinicians_not_to_trainers():
    from medbench.experts.rubric import load_rubric

    shown = json.dumps(load_rubric().for_form())
    assert not re.search(r"CoPO|DPO|image-side|loss|term targets", shown)


def test_codes_are_not_numbers_and_model_text_is_no_formula(exported):
    key = _key(exported)
    codes = [code for item in key["items"].values() for code in item["codes"]]
    assert all(code[0].isalpha() for code in codes)  # "3E45" would be read as 3×10^45 by a spreadsheet
    openpyxl = pytest.importorskip("openpyxl")
    from medbench.experts.export import write_xlsx
    from medbench.experts.rubric import load_rubric

    rows = _csv_rows(exported / "annotators" / "items.csv")[:2]
    rows[0]["output"] = "=5 cm lesion"
    path = exported.parent / "formula.xlsx"
    assert write_xlsx(path, rows, load_rubric())
    cell = openpyxl.load_workbook(path)["items"].cell(row=2, column=list(rows[0]).index("output") + 1)
    assert cell.data_type == "s" and cell.value == "=5 cm lesion"


def test_annotator_names_missing_names_preferences_and_the_keys_rubric(exported, tmp_path, capsys):
    rows = _csv_rows(exported / "annotators" / "items.csv")
    key = str(exported / "key.json")
    spaced = _fill_rows(rows, "Dr  Smith")
    for row in spaced[1::2]:
        row["annotator"] = " dr smith"  # one person, typed two ways
    out = tmp_path / "one"
    assert medbench_main(["experts", "import", str(_write_csv(tmp_path / "smith.csv", spaced)), "--key", key, "--out", str(out)]) == 0
    assert json.loads((out / "experts_summary.json").read_text(encoding="utf-8"))["annotators"] == ["Dr Smith"]
    again = _write_csv(tmp_path / "smith2.csv", _fill_rows(rows, "DR SMITH"))
    unnamed = _fill_rows(rows, "")
    prefs_only = [dict(row, correctness="", severity="", error_types="", comment="", preference=row["pair"] and "tie")
                  for row in _fill_rows(rows, "Dr P")]
    files = [_write_csv(tmp_path / "smith.csv", spaced), again, _write_csv(tmp_path / "unnamed.csv", unnamed),
             _write_csv(tmp_path / "prefs_only_unnamed.csv", [dict(row, annotator="") for row in prefs_only])]
    assert medbench_main(["experts", "import", *map(str, files), "--key", key, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "smith2.csv: annotator 'DR SMITH' already came from" in err[0] and "(as 'Dr Smith')" in err[0]
    assert "unnamed.csv: 60 graded row(s) have no 'annotator' (first: item" in err[1]
    assert "prefs_only_unnamed.csv: preferences but no annotator name" in err[2] and len(err) == 4
    out = tmp_path / "prefs"
    assert medbench_main(["experts", "import", str(_write_csv(tmp_path / "p.csv", prefs_only)), "--key", key, "--out", str(out)]) == 0
    summary = json.loads((out / "experts_summary.json").read_text(encoding="utf-8"))
    assert summary["annotators"] == ["Dr P"] and summary["n_ratings"] == 0
    old_key = json.loads((exported / "key.json").read_text(encoding="utf-8"))
    old_key["rubric"]["version"] = 0
    stale = tmp_path / "key.json"
    stale.write_text(json.dumps(old_key), encoding="utf-8")
    assert medbench_main(["experts", "import", str(again), "--key", str(stale)]) == 2
    err = capsys.readouterr().err
    assert f"--key: export {old_key['export_id']} was made with rubric " in err and " v0, this medbench uses " in err


# ------------------------------------------------------------------------------------------ leaderboard


def test_leaderboard_shows_expert_columns_and_judge_agreement(exported, runs, tmp_path, capsys):
    rows = _csv_rows(exported / "annotators" / "items.csv")
    files = [_write_csv(tmp_path / "a.csv", _fill_rows(rows, "Dr A")), _write_csv(tmp_path / "b.csv", _fill_rows(rows, "Dr B", flip=4))]
    results = tmp_path / "results"
    assert medbench_main(["experts", "import", *map(str, files), "--key", str(exported / "key.json"), "--out", str(results)]) == 0
    summary = json.loads((results / "experts_summary.json").read_text(encoding="utf-8"))
    submissions = []
    for label, folder in runs.items():
        copy = tmp_path / "submissions" / label
        shutil.copytree(folder, copy)
        manifest = {"schema": "medbench-submission/1", "display_name": f"Baseline {label[-1].upper()}", "backbone": "rule-based", "variant": label}
        (copy / "medbench-submission.json").write_text(json.dumps(manifest), encoding="utf-8")
        submissions.append(str(copy))
    board = tmp_path / "board"
    experts_file = str(results / "experts_summary.json")
    assert medbench_main(["leaderboard", "build", *submissions, "--experts", experts_file, "--no-plots", "--out", str(board)]) == 0
    page = (board / "index.html").read_text(encoding="utf-8")
    table = page[page.index('<table id="experts-table">') : page.index("</table>", page.index('<table id="experts-table">'))]
    for label, name in (("model_a", "Baseline A"), ("model_b", "Baseline B")):
        entry = summary["models"][label]
        row = table[table.index(f'<tr data-name="{name}">') :].split("</tr>")[0]
        low, high = entry["correctness"]["ci"]
        assert f"{entry['correctness']['value']:.3f}" in row and f"n=30 [{low:.2f}, {high:.2f}]" in row
        assert f"{entry['severe_rate']['value']:.3f}" in row and f"reviewed as {label}" in row
    agreement = summary["judge_agreement"]
    assert f"LLM judge vs experts (severity, {agreement['n_outputs']} outputs): exact agreement {agreement['exact_agreement']:.2f}" in page
    assert f"Cohen&#x27;s κ {summary['agreement']['severity']['cohen_kappa']['value']:.3f}" in page
    markdown = (board / "leaderboard.md").read_text(encoding="utf-8")
    assert "## Expert assessment" in markdown and "| Baseline B |" in markdown
    capsys.readouterr()
    # a reviewed model missing from the board is a note; a wrong file is one line
    only_a = tmp_path / "board_a"
    assert medbench_main(["leaderboard", "build", submissions[0], "--experts", experts_file, "--no-plots", "--out", str(only_a)]) == 0
    assert "note: expert-reviewed model 'model_b' is not on the board" in capsys.readouterr().out
    # (the board is still built: a bad --experts file is one rejection line, issue 18)
    assert medbench_main(["leaderboard", "build", submissions[0], "--experts", str(exported / "key.json"), "--no-plots", "--out", str(only_a)]) == 0
    assert "not an experts summary" in capsys.readouterr().out
