"""Write a board as a static HTML page, Markdown and CSV.

Every string that comes from a submission (names, paths, prompts, notes, rejection reasons) is escaped
for its format: HTML entities in the page, Markdown-significant characters in the tables, a leading
apostrophe for CSV cells that a spreadsheet would run as a formula. The page needs no network: its CSS
and sorting script are inline, the plots are embedded as data URIs, and a Content-Security-Policy allows
only that inline script (by hash), so even a string that slipped through escaping could not run.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import json
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .board import Board, Cell, Column, Row, as_records

# --------------------------------------------------------------------------------------------- format


def fmt(value: float | None, digits: int = 3) -> str:
    """A score for display (``-`` when missing)."""
    if value is None:
        return "-"
    if value != 0 and abs(value) < 10**-digits:
        return f"{value:.1e}"
    return f"{value:.{digits}f}"


def fmt_p(p: float | None) -> str:
    """A p-value for display."""
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def e(value: Any) -> str:
    """HTML-escape any value (quotes too: it is also used inside attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>&~])")


def md(value: Any) -> str:
    """Escape text for a Markdown table cell: no markup, no HTML, no line breaks, no column breaks."""
    text = " ".join(str("" if value is None else value).split())
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def csv_cell(value: Any) -> Any:
    """A CSV value that a spreadsheet will not execute (formula prefixes get a leading apostrophe)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


MARK_SYMBOL = {"better": "▲", "worse": "▼"}
VERDICT_SYMBOL = {"recomputed": "", "consistent": "‡", "unverified": "†"}


# --------------------------------------------------------------------------------------------- CSV / MD


def write_csv(board: Board, path: Path) -> Path:
    """One row per (model, task metric) with value, CI, check and both paired comparisons."""
    records = as_records(board)
    buffer = io.StringIO()
    fields = list(records[0]) if records else ["model", "task", "metric", "value"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({key: csv_cell("" if value is None else value) for key, value in record.items()})
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


def _md_cell(cell: Cell | None, ci: bool = True) -> str:
    if cell is None:
        return "-"
    text = fmt(cell.value)
    if ci and cell.low is not None and cell.high is not None:
        text += f" [{fmt(cell.low)}, {fmt(cell.high)}]"
    text += MARK_SYMBOL.get(cell.mark or "", "") + VERDICT_SYMBOL.get(cell.verdict, "")
    return text


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def protocol_flags(row: Row, tasks: list[str] | None = None) -> list[str]:
    """``non-standard`` and/or ``unknown protocol`` for the row's ``tasks`` (every task of the run by default)."""
    tasks = list(tasks if tasks is not None else row.run.tasks)
    flags = []
    if any(task in row.run.nonstandard for task in tasks):
        flags.append("non-standard")
    if any(task in row.run.unknown_protocol for task in tasks):
        flags.append("unknown protocol")
    return flags


def _display_name(row: Row, tasks: list[str] | None = None) -> str:
    flags = protocol_flags(row, tasks)
    return ("↳ " * row.depth) + row.run.name + (f" ({', '.join(flags)})" if flags else "")


def resampling_text(board: Board) -> str:
    """What the bootstrap and the paired tests resampled, per task (the page and the Markdown say it)."""
    tasks = list(dict.fromkeys(column.task for column in board.columns))
    clustered = [
        f"{task}: {images} images for {questions} questions" for task, (images, questions) in board.clustered.items()
    ]
    others = [task for task in tasks if task not in board.clustered]
    text = "Intervals and paired tests resample "
    if clustered:
        text += "images, not questions, where a task asks several questions about one image (" + "; ".join(clustered) + ")"
        text += f", and the test items elsewhere ({', '.join(others)})." if others else "."
    else:
        text += "the test items (no task here asks several questions about one image)."
    return text


def render_markdown(board: Board) -> str:
    """A summary table (each task's primary metric) and one table per task with every metric."""
    tasks = list(dict.fromkeys(column.task for column in board.columns))
    parts = ["# medbench leaderboard", ""]
    parts.append(
        f"Scores with bootstrap 95% CIs ({board.iterations} resamples of the test items). "
        + (
            f"▲/▼: better/worse than the baseline **{md(board.baseline)}** (paired sign-flip permutation test, p < {board.alpha}). "
            if board.baseline
            else ""
        )
        + resampling_text(board)
        + " ‡: checked for consistency only (not recomputable offline); †: not verified. "
        + "Task versions: "
        + ", ".join(f"{task} v{board.task_versions[task]}" for task in tasks)
        + "."
    )
    parts.append("")
    header = [
        "model",
        "backbone",
        "variant",
        *[f"{task} {board.primary[task]} {_arrow(board, task)}" for task in tasks],
    ]
    rows = []
    for row in board.rows:
        cells = [_md_cell(row.cells.get(f"{task}/{board.primary[task]}")) for task in tasks]
        rows.append([md(_display_name(row)), md(row.run.meta.backbone or "-"), md(row.run.meta.variant), *cells])
    parts += ["## Summary", "", _md_table(header, rows), ""]
    variants = [row for row in board.rows if any(cell.vs_base for cell in row.cells.values())]
    if variants:
        parts += [
            "## Variants against their base model",
            "",
            "Paired difference on the same items, with its bootstrap 95% CI and permutation p-value.",
            "",
        ]
        header = ["variant", "base model", *[f"{task} Δ{board.primary[task]}" for task in tasks]]
        rows = []
        for row in variants:
            cells = []
            for task in tasks:
                cell = row.cells.get(f"{task}/{board.primary[task]}")
                delta = cell.vs_base if cell else None
                cells.append(
                    "-"
                    if not delta
                    else f"{delta['difference']:+.3f} [{fmt(delta['low'])}, {fmt(delta['high'])}] p={fmt_p(delta['p'])}"
                )
            rows.append([md(row.run.name), md(row.run.meta.base_model), *cells])
        parts += [_md_table(header, rows), ""]
    for task in tasks:
        columns = [column for column in board.columns if column.task == task]
        header = ["model", *[f"{column.metric} {column.arrow}" for column in columns]]
        rows = [
            [md(_display_name(row, [task])), *[_md_cell(row.cells.get(column.key), ci=False) for column in columns]]
            for row in board.rows
        ]
        parts += [f"## {task} (v{board.task_versions[task]})", "", _md_table(header, rows), ""]
    if board.notes:
        parts += ["## Notes", ""]
        parts += [f"- {md(note)}" for note in board.notes]
        parts.append("")
    if board.rejected:
        parts += ["## Rejected submissions", ""]
        parts += [f"- **{md(error.rule)}**: {md(error.where)}: {md(error.reason)}" for error in board.rejected]
        parts.append("")
    return "\n".join(parts)


def _arrow(board: Board, task: str) -> str:
    column = board.column(task, board.primary[task])
    return column.arrow if column else ""


# ---------------------------------------------------------------------------------------------- HTML

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5rem;color:#1d2330;background:#fff}
h1{font-size:1.5rem;margin:0 0 .3rem}h2{font-size:1.15rem;margin:2rem 0 .5rem}
.meta,.legend{color:#4b5563;font-size:.85rem;max-width:75rem}
.wrap{overflow-x:auto;border:1px solid #d7dce3;border-radius:6px;margin-top:.8rem}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:.35rem .55rem;border-bottom:1px solid #e6e9ee;text-align:right;white-space:nowrap;vertical-align:top}
th{background:#f4f6f9;position:sticky;top:0}
th.task{text-align:center;border-left:2px solid #d7dce3}
td.first,th.first{border-left:2px solid #d7dce3}
td.text,th.text{text-align:left}
th button{font:inherit;font-weight:600;background:none;border:0;cursor:pointer;padding:0;color:inherit}
th[aria-sort=ascending] button::after{content:" ▴"}th[aria-sort=descending] button::after{content:" ▾"}
#board td.name,#board thead tr:last-child th:first-child{position:sticky;left:0;z-index:1;background:#fff}
#board thead tr:last-child th:first-child{background:#f4f6f9;z-index:2}
tr.baseline td{background:#fff8e1}#board tr.baseline td.name{background:#fff8e1}
tr.variant td.name{padding-left:1.6rem}
td.name,td.base{max-width:20rem;overflow:hidden;text-overflow:ellipsis}
.ci{display:block;color:#6b7280;font-size:.75rem}
.better{color:#0a7d32;font-weight:600}.worse{color:#b42318;font-weight:600}
.check{color:#8a6d00}.nonstd{color:#b45309;font-weight:600}
.controls{margin:.6rem 0}
details{margin:.4rem 0;border:1px solid #e6e9ee;border-radius:6px;padding:.4rem .7rem}
summary{cursor:pointer;font-weight:600}
dl{display:grid;grid-template-columns:12rem 1fr;gap:.2rem .8rem;margin:.5rem 0}dt{color:#4b5563}dd{margin:0;word-break:break-word}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:.8rem}
table.prov td,table.prov th{text-align:left;white-space:normal}
.rejected li{margin:.25rem 0}.rule{font-family:monospace;background:#fdecea;padding:0 .3rem;border-radius:3px}
img.plot{max-width:100%;border:1px solid #e6e9ee;border-radius:6px;margin:.5rem 0}
"""

# Sorting works on the data-value attributes the page was generated with; it never builds HTML from data.
_JS = """
(function () {
  "use strict";
  var tables = Array.prototype.slice.call(document.querySelectorAll("table.sortable"));
  function wire(table) {
    var body = table.tBodies[0];
    var original = Array.prototype.slice.call(body.rows);
    var headers = table.tHead.rows[table.tHead.rows.length - 1].cells;
    function sortBy(index, header) {
      var current = header.getAttribute("aria-sort");
      var higher = header.getAttribute("data-higher") === "true";
      var numeric = header.getAttribute("data-type") === "number";
      var order;
      if (current === "descending") { order = "ascending"; }
      else if (current === "ascending") { order = "descending"; }
      else { order = numeric && !higher ? "ascending" : "descending"; }
      if (!numeric && current === null) { order = "ascending"; }
      Array.prototype.forEach.call(table.querySelectorAll("th[aria-sort]"), function (th) { th.removeAttribute("aria-sort"); });
      header.setAttribute("aria-sort", order);
      var sign = order === "ascending" ? 1 : -1;
      var rows = original.slice();
      rows.sort(function (a, b) {
        var x = a.cells[index].getAttribute("data-value");
        var y = b.cells[index].getAttribute("data-value");
        if (x === "" && y === "") { return 0; }
        if (x === "") { return 1; }
        if (y === "") { return -1; }
        if (numeric) { return sign * (parseFloat(x) - parseFloat(y)); }
        return sign * x.localeCompare(y);
      });
      rows.forEach(function (row) { body.appendChild(row); });
      table.setAttribute("data-sorted-by", header.getAttribute("data-key"));
    }
    Array.prototype.forEach.call(headers, function (header, index) {
      var button = header.querySelector("button");
      if (button) { button.addEventListener("click", function () { sortBy(index, header); }); }
    });
    return function reset() {
      Array.prototype.forEach.call(table.querySelectorAll("th[aria-sort]"), function (th) { th.removeAttribute("aria-sort"); });
      original.forEach(function (row) { body.appendChild(row); });
      table.setAttribute("data-sorted-by", "");
    };
  }
  var resets = tables.map(wire);
  document.getElementById("grouped").addEventListener("click", function () {
    resets.forEach(function (reset) { reset(); });
  });
  tables.forEach(function (table) { table.setAttribute("data-ready", "true"); });
})();
"""


def _cell_html(column: Column, cell: Cell | None, first: bool, alpha: float) -> str:
    classes = "first" if first else ""
    if cell is None:
        return f'<td class="{classes}" data-value="">-</td>'
    tooltip = [
        f"{column.task} {column.metric} ({'higher' if column.higher_is_better else 'lower'} is better)",
        f"check: {cell.verdict}",
    ]
    if cell.stderr is not None:
        tooltip.append(f"stderr {fmt(cell.stderr, 4)}")
    body = e(fmt(cell.value))
    if cell.mark:
        comparison = cell.vs_baseline or {}
        tooltip.append(
            f"vs baseline: {comparison.get('difference', 0):+.4f}, p={fmt_p(comparison.get('p'))} (< {alpha})"
        )
        body += f' <span class="{cell.mark}">{MARK_SYMBOL[cell.mark]}</span>'
    elif cell.vs_baseline:
        tooltip.append(f"vs baseline: {cell.vs_baseline['difference']:+.4f}, p={fmt_p(cell.vs_baseline['p'])}")
    if cell.vs_base:
        tooltip.append(f"vs base model: {cell.vs_base['difference']:+.4f}, p={fmt_p(cell.vs_base['p'])}")
    symbol = VERDICT_SYMBOL.get(cell.verdict, "")
    if symbol:
        body += f'<span class="check">{symbol}</span>'
    if cell.low is not None and cell.high is not None:
        body += f'<span class="ci">[{e(fmt(cell.low))}, {e(fmt(cell.high))}]</span>'
    return f'<td class="{classes}" data-value="{cell.value!r}" title="{e(" · ".join(tooltip))}">{body}</td>'


def _sortable_table(board: Board, table_id: str, columns: list[Column], tasks: list[str], with_versions: bool) -> str:
    """A sortable table of the runs with ``columns``; the name cell flags runs non-standard on ``tasks``."""
    spans: list[tuple[str, int]] = []
    for column in columns:
        if spans and spans[-1][0] == column.task:
            spans[-1] = (column.task, spans[-1][1] + 1)
        else:
            spans.append((column.task, 1))
    head1 = '<th class="text" colspan="4"></th>' + "".join(
        f'<th class="task" colspan="{span}">{e(task)}'
        + (f" <small>v{board.task_versions[task]}</small>" if with_versions else "")
        + "</th>"
        for task, span in spans
    )
    fixed = [("model", "model"), ("backbone", "backbone"), ("variant", "variant"), ("base", "base model")]
    head2 = "".join(
        f'<th class="text" data-type="text" data-key="{key}"><button type="button">{e(label)}</button></th>'
        for key, label in fixed
    )
    previous = None
    for column in columns:
        first = " first" if column.task != previous else ""
        previous = column.task
        head2 += (
            f'<th class="metric{first}" data-type="number" data-key="{e(column.key)}" data-higher="{str(column.higher_is_better).lower()}"'
            f' title="{e(column.task)}: {"higher" if column.higher_is_better else "lower"} is better">'
            f'<button type="button">{e(column.metric)} {column.arrow}</button></th>'
        )
    body = []
    for index, row in enumerate(board.rows):
        meta = row.run.meta
        classes = " ".join(filter(None, ["baseline" if row.is_baseline else "", "variant" if row.depth else ""]))
        departures = [d for task in tasks for d in row.run.nonstandard.get(task, [])]
        unknown = [d for task in tasks for d in row.run.unknown_protocol.get(task, [])]
        name = e(meta.display_name) + (" <small>(baseline)</small>" if row.is_baseline else "")
        if departures:
            name += f' <small class="nonstd" title="{e("; ".join(dict.fromkeys(departures)))}">non-standard</small>'
        if unknown:
            name += f' <small class="nonstd" title="{e("; ".join(dict.fromkeys(unknown)))}">unknown protocol</small>'
        cells = [
            f'<td class="text name" data-value="{e(meta.display_name)}" title="{e(meta.display_name)}"><a href="#run-{index}">{name}</a></td>',
            f'<td class="text" data-value="{e(meta.backbone or "")}">{e(meta.backbone or "-")}</td>',
            f'<td class="text" data-value="{e(meta.variant)}">{e(meta.variant)}</td>',
            f'<td class="text base" data-value="{e(meta.base_model or "")}" title="{e(meta.base_model or "")}">{e(meta.base_model or "-")}</td>',
        ]
        previous = None
        for column in columns:
            cells.append(_cell_html(column, row.cells.get(column.key), column.task != previous, board.alpha))
            previous = column.task
        body.append(f'<tr class="{classes}" data-name="{e(meta.display_name)}">{"".join(cells)}</tr>')
    return (
        f'<div class="wrap"><table id="{e(table_id)}" class="sortable"><thead><tr>{head1}</tr><tr>{head2}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _board_tables(board: Board) -> str:
    """The summary table (each task's headline metric) and one table per task with all its metrics."""
    tasks = list(dict.fromkeys(column.task for column in board.columns))
    headline = [c for task in tasks if (c := board.column(task, board.primary[task])) is not None]
    parts = ["<h2>Summary</h2>", _sortable_table(board, "board", headline, tasks, with_versions=True)]
    for task in tasks:
        columns = [column for column in board.columns if column.task == task]
        parts.append(f'<h2 id="task-{e(task)}">{e(task)} <small>v{board.task_versions[task]}</small></h2>')
        parts.append(_sortable_table(board, f"table-{task}", columns, [task], with_versions=False))
    return "".join(parts)


def _kv(pairs: list[tuple[str, Any]]) -> str:
    items = []
    for key, value in pairs:
        if value in (None, "", {}, []):
            continue
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=1, default=str)
        text = _capped(text)
        items.append(f"<dt>{e(key)}</dt><dd><pre>{e(text)}</pre></dd>")
    return f"<dl>{''.join(items)}</dl>"


# One run's free text (prompt pieces, model arguments, decoding) is capped on the page: a submission cannot make
# the board heavy for everyone (the full values stay in the registry and the CSV's source files).
FIELD_CHARS = 2000


def _capped(text: str) -> str:
    return text if len(text) <= FIELD_CHARS else text[:FIELD_CHARS] + f" … ({len(text) - FIELD_CHARS} more characters)"


def _provenance(board: Board) -> str:
    parts = []
    for index, row in enumerate(board.rows):
        run, meta = row.run, row.run.meta
        homepage = (
            f'<dt>homepage</dt><dd><a href="{e(meta.homepage)}" rel="noopener noreferrer nofollow">{e(meta.homepage)}</a></dd>'
            if meta.homepage
            else ""
        )
        general = _kv(
            [
                ("model", run.model.get("model")),
                ("model arguments", run.model.get("model_args")),
                ("model name", run.model.get("model_name")),
                ("model revision", meta.model_revision or "not given"),
                ("backbone", meta.backbone),
                ("variant", meta.variant),
                ("base model", meta.base_model),
                ("contact", meta.contact),
                ("notes", meta.notes),
                ("lmms-eval", run.provenance.get("lmms_eval_version")),
                ("evaluated", run.provenance.get("date")),
                ("results files", run.provenance.get("results_files")),
                ("submission folder", str(run.root)),
                ("content hash", run.digest[:16]),
            ]
        )
        training = (
            _kv(sorted((meta.training or {}).items()))
            if meta.training
            else "<p>No training metadata (medbench_train.json) was submitted.</p>"
        )
        task_rows = []
        for task, scores in sorted(run.tasks.items()):
            judge = scores.judge or {}
            judge_text = (
                f"{judge.get('model')} · prompts {', '.join(f'{k}: {v}' for k, v in (judge.get('prompts') or {}).items())}"
                f" · {judge.get('source')}"
                if judge
                else "-"
            )
            unverifiable = [m for m, verdict in scores.checks.items() if m.startswith("judge_") and verdict == "unverified"]
            if judge and unverifiable:
                # The identity a results file claims is only shown as the judge's when its answers were logged.
                judge_text = f"claimed: {judge_text} (no judge answers logged for {', '.join(sorted(unverifiable))})"
            checks: dict[str, list[str]] = {}
            for metric, verdict in scores.checks.items():
                checks.setdefault(verdict, []).append(metric)
            check_text = "; ".join(verdict + ": " + ", ".join(metrics) for verdict, metrics in checks.items())
            task_rows.append(
                "<tr>"
                f"<td>{e(task)}</td><td>{scores.version}</td><td>{len(scores.item_ids)}</td>"
                f"<td><pre>{e(_capped(json.dumps(scores.prompt, ensure_ascii=False, indent=1)))}</pre></td>"
                f"<td><pre>{e(_capped(json.dumps(scores.decoding, ensure_ascii=False, indent=1)))}</pre></td>"
                f"<td>{e(judge_text)}</td>"
                f"<td>{e(check_text)}</td>"
                "</tr>"
            )
        parts.append(
            f'<details id="run-{index}"><summary>{e(meta.display_name)}</summary>'
            f"{general.replace('</dl>', homepage + '</dl>')}"
            f'<h3>Tasks</h3><table class="prov"><thead><tr><th>task</th><th>version</th><th>samples</th><th>prompt</th>'
            f"<th>decoding</th><th>judge</th><th>checks</th></tr></thead><tbody>{''.join(task_rows)}</tbody></table>"
            f"<h3>Training</h3>{training}</details>"
        )
    return "".join(parts)


def render_html(
    board: Board, plots: dict[str, Path] | None = None, title: str = "medbench leaderboard", extra_sections: Sequence[str] = (),
    links: Sequence[tuple[str, str]] = (),
) -> str:
    """The board page (self-contained: inline CSS/JS, plots as data URIs).

    ``extra_sections``: escaped HTML blocks placed after the board (the expert assessment).
    ``links``: ``(label, href)`` pairs shown prominently under the title (a study's claims and plot).
    """
    script_hash = base64.b64encode(hashlib.sha256(_JS.encode()).digest()).decode()
    policy = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'; base-uri 'none'; form-action 'none'"
    tasks = list(dict.fromkeys(column.task for column in board.columns))
    baseline = (
        f"Paired tests against the baseline <strong>{e(board.baseline)}</strong>: "
        f'<span class="better">▲</span>/<span class="worse">▼</span> = significantly better/worse in the metric\'s direction '
        f"(sign-flip permutation test on the same items, p &lt; {board.alpha}, no multiple-comparison correction). "
        if board.baseline
        else "No baseline chosen (pass --baseline NAME for paired tests). "
    )
    legend = (
        f"Scores are task means as lmms-eval reported them, each recomputed from the per-sample logs; below each, the "
        f"bootstrap 95% confidence interval ({board.iterations} resamples of the test items; corpus-level metrics such as "
        f"BLEU-n have none). {e(resampling_text(board))} {baseline}"
        '<span class="check">‡</span> consistent with the per-sample values but not recomputable offline (BERTScore, RadGraph); '
        '<span class="check">†</span> not verified (such as a judge score without the judge\'s answers: never marked ▲/▼). '
        "↑/↓: higher/lower is better (from the task YAMLs). "
        "Click a column header to sort; variants are listed under the model they were trained from. "
        '<span class="nonstd">non-standard</span>: evaluated with another prompt, system instruction or decoding '
        "than the task defines (hover for what changed; see the notes). "
        '<span class="nonstd">unknown protocol</span>: the logged prompts, decoding or system instruction are missing '
        "or contradict each other, so the run cannot be shown as standard."
    )
    sections = [
        f"<h1>{e(title)}</h1>",
        f'<p class="meta">{len(board.rows)} runs · {len(board.rejected)} rejected · task versions '
        + e(", ".join(f"{task} v{board.task_versions[task]}" for task in tasks))
        + f" · built {e(datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))}</p>",
        *(['<p class="links"><strong>' + " · ".join(f'<a href="{e(href)}">{e(label)}</a>' for label, href in links)
           + "</strong></p>"] if links else []),
        f'<p class="legend">{legend}</p>',
        '<div class="controls"><button type="button" id="grouped">Grouped order</button> '
        + " · ".join(f'<a href="#task-{e(task)}">{e(task)}</a>' for task in tasks)
        + "</div>",
        _board_tables(board),
    ]
    sections += extra_sections
    if board.notes:
        sections.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(note)}</li>" for note in board.notes) + "</ul>")
    if plots:
        sections.append("<h2>Plots</h2>")
        for label, path in plots.items():
            data = base64.b64encode(path.read_bytes()).decode()
            sections.append(f'<p>{e(label)}</p><img class="plot" alt="{e(label)}" src="data:image/png;base64,{data}">')
    sections.append("<h2>Provenance</h2>" + _provenance(board))
    if board.rejected:
        sections.append(
            '<h2>Rejected submissions</h2><ul class="rejected">'
            + "".join(
                f'<li><span class="rule">{e(error.rule)}</span> {e(error.where)}: {e(error.reason)}</li>'
                for error in board.rejected
            )
            + "</ul>"
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{e(policy)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(sections)
        + f"<script>{_JS}</script></body></html>\n"
    )
