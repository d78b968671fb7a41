"""Expert-assessment columns for the board, read from ``medbench experts import``'s ``experts_summary.json``.

A reviewed model is matched to a board row by the lmms-eval results files it was exported from (their file
names, which carry the run's time stamp), else by its label equal to the row's display name. The section
shows, per matched row, the expert scores with n and 95% CI, and below the table how far the experts agree
with each other and with the LLM judge.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medbench.experts.annotations import read_tagged_json
from medbench.experts.summary import SUMMARY_SCHEMA

from .board import Board, Row
from .render import e, md

COLUMNS = (
    ("correctness", "expert correctness ↑", "mean grade scaled to 0-1"),
    ("severe_rate", "expert severe ↓", "share of outputs with a severe hallucination"),
    ("hallucination_rate", "expert any hallucination ↓", "share graded minor or severe"),
)


@dataclass
class ExpertPanel:
    """The summary, per board row the reviewed model it shows, and the reviewed models not on the board."""

    summary: dict[str, Any]
    rows: list[tuple[Row, str, dict[str, Any]]]
    unmatched: list[str]


def load_summary(path: Path) -> dict[str, Any]:
    """Read an experts summary file.

    Raises:
        MedbenchError: Unreadable, or not written by ``medbench experts import``.
    """
    return read_tagged_json(path, "--experts", SUMMARY_SCHEMA, "models", "an experts summary",
                            "pass the experts_summary.json that `medbench experts import` wrote")


def match(board: Board, summary: dict[str, Any]) -> ExpertPanel:
    """Pair the summary's models with board rows (board order)."""
    by_row: list[tuple[Row, str, dict[str, Any]]] = []
    taken: set[str] = set()
    for row in board.rows:
        files = {Path(name).name for name in row.run.provenance.get("results_files", [])}
        for label, entry in summary["models"].items():
            if label in taken:
                continue
            exported = {Path(name).name for name in entry.get("results_files", [])}
            if (files and files & exported) or label == row.run.name:
                by_row.append((row, label, entry))
                taken.add(label)
                break
    return ExpertPanel(summary, by_row, [label for label in summary["models"] if label not in taken])


def _cell(estimate: dict[str, Any] | None) -> tuple[str, str]:
    """``(value, "n=.. [low, high]")`` as text."""
    if not estimate or estimate.get("value") is None:
        return "-", ""
    interval = estimate.get("ci")
    detail = f"n={estimate['n']}" + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")
    return f"{estimate['value']:.3f}", detail


def _agreement_lines(summary: dict[str, Any]) -> list[str]:
    lines = []
    for field_name in ("correctness", "severity"):
        result = summary.get("agreement", {}).get(field_name) or {}
        stats = []
        for name, label in (
            ("cohen_kappa", "Cohen's κ"),
            ("cohen_kappa_quadratic", "quadratic κ"),
            ("fleiss_kappa", "Fleiss' κ"),
            ("krippendorff_alpha_ordinal", "Krippendorff's α (ordinal)"),
        ):
            value, detail = _cell(result.get(name))
            if value != "-":
                stats.append(f"{label} {value} ({detail})")
        if stats:
            lines.append(f"Inter-rater agreement on {field_name}: " + ", ".join(stats))
    judge = summary.get("judge_agreement") or {}
    if judge.get("n_outputs"):
        value, detail = _cell(judge.get("cohen_kappa_quadratic"))
        severe, severe_detail = _cell(judge.get("severe_vs_not_kappa"))
        lines.append(
            f"LLM judge vs experts (severity, {judge['n_outputs']} outputs): exact agreement {judge['exact_agreement']:.2f}, "
            f"quadratic κ {value} ({detail}), severe-vs-not κ {severe} ({severe_detail})"
        )
    else:
        lines.append("LLM judge vs experts: no judged output was reviewed")
    return lines


def render_html(panel: ExpertPanel) -> str:
    """The board page's expert section (every value escaped)."""
    summary = panel.summary
    head = "".join(f'<th title="{e(help_text)}">{e(title)}</th>' for _, title, help_text in COLUMNS)
    body = []
    for row, label, entry in panel.rows:
        cells = []
        for key, _, _ in COLUMNS:
            value, detail = _cell(entry.get(key))
            cells.append(f'<td data-value="{e(value)}">{e(value)}<br><span class="ci">{e(detail)}</span></td>')
        judge = entry.get("judge_severe_rate_same_outputs")
        judged = "-" if judge is None else f"{judge:.3f}"
        body.append(
            f'<tr data-name="{e(row.run.name)}"><td>{e(row.run.name)}<br><span class="ci">reviewed as {e(label)}</span></td>'
            + "".join(cells)
            + f'<td>{e(judged)}<br><span class="ci">n={e(entry.get("n_judged_outputs", 0))}</span></td></tr>'
        )
    rubric = summary.get("rubric", {})
    parts = [
        '<h2 id="experts">Expert assessment</h2>',
        (f'<p class="legend">Blinded clinician review {e(summary.get("export_id"))} (rubric {e(rubric.get("name"))} '
        f'v{e(rubric.get("version"))}): {e(summary.get("n_ratings"))} ratings of {e(summary.get("n_outputs"))} outputs by '
        f'{e(len(summary.get("annotators", [])))} annotators; n = outputs reviewed, 95% bootstrap CI over items.</p>'),
        (f'<table id="experts-table"><thead><tr><th>model</th>{head}<th title="the LLM judge on the same outputs">judge severe ↓</th></tr></thead>'
        f'<tbody>{"".join(body)}</tbody></table>'),
        "<ul>" + "".join(f"<li>{e(line)}</li>" for line in _agreement_lines(summary)) + "</ul>",
    ]
    return "\n".join(parts)


def render_markdown(panel: ExpertPanel) -> str:
    """The Markdown version of the expert section."""
    header = ["model", *[title for _, title, _ in COLUMNS], "judge severe ↓"]
    lines = ["## Expert assessment", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, _, entry in panel.rows:
        cells = [" ".join(part for part in _cell(entry.get(key)) if part) for key, _, _ in COLUMNS]
        judge = entry.get("judge_severe_rate_same_outputs")
        cells.append("-" if judge is None else f"{judge:.3f} n={entry.get('n_judged_outputs', 0)}")
        lines.append("| " + " | ".join([md(row.run.name), *cells]) + " |")
    lines += ["", *[f"- {line}" for line in _agreement_lines(panel.summary)], ""]
    return "\n".join(lines)
