"""Board plots: per-task scores with confidence intervals, and each variant's difference to its base model.

matplotlib is imported on first use with the non-interactive Agg backend (no display needed). Labels are
drawn as plain text: mathtext is switched off so a ``$`` in a model name cannot be interpreted.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .board import Board, Row


def _unchanged(path: Path, spec: Any) -> tuple[bool, str]:
    """Whether ``path`` was drawn from exactly ``spec`` (the plotted values, intervals, labels, titles).

    Drawing costs about a second a figure whatever changed; a board rebuilt with the same plotted numbers
    keeps its PNG (the key file beside it holds the SHA-256 of what was drawn).
    """
    key = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
    stamp = path.with_suffix(".sha256")
    try:
        return path.is_file() and stamp.read_text(encoding="ascii") == key, key
    except OSError:
        return False, key


def _stamp(path: Path, key: str) -> None:
    path.with_suffix(".sha256").write_text(key, encoding="ascii")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams["text.usetex"] = False
    plt.rcParams["text.parse_math"] = False
    return plt


def _draw(axis: Any, points: list[tuple[float, float, float | None, float | None, str]]) -> None:
    """Points ``(x, y, low, high, colour)``, one errorbar call per colour (per-point calls are slow)."""
    by_colour: dict[str, list[tuple[float, float, float | None, float | None]]] = {}
    for x, y, low, high, colour in points:
        by_colour.setdefault(colour, []).append((x, y, low, high))
    for colour, group in by_colour.items():
        xs = [x for x, _, _, _ in group]
        ys = [y for _, y, _, _ in group]
        below = [max(x - low, 0.0) if low is not None else 0.0 for x, _, low, _ in group]
        above = [max(high - x, 0.0) if high is not None else 0.0 for x, _, _, high in group]
        axis.errorbar(xs, ys, xerr=[below, above], fmt="o", color=colour, ecolor=colour, capsize=3, markersize=4)


def _layout(figure: Any, axes: Any, positions: list[int], labels: list[str], top_inches: float = 0.9) -> None:
    """Shared rows without ``sharey``/``tight_layout``: both lay out every tick of every panel, which for a
    board of 100 runs costs seconds; fixed margins from the longest label cost nothing."""
    width, height = figure.get_size_inches()
    for index, axis in enumerate(axes):
        axis.set_ylim(-0.7, len(positions) - 0.3)
        axis.set_yticks(positions if index == 0 else [])
        if index == 0:
            axis.set_yticklabels(labels, fontsize=8)
    left = min(0.45, (0.3 + 0.062 * max((len(label) for label in labels), default=1)) / width)
    figure.subplots_adjust(left=left, right=0.99, top=1 - top_inches / height, bottom=0.45 / height, wspace=0.12)


def _legend(figure: Any, entries: list[tuple[str, str]]) -> None:
    """A figure legend of marker colours (drawn once, above the panels)."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="o", linestyle="-", color=colour, markersize=5, label=label) for colour, label in entries
    ]
    figure.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.985), ncol=len(entries), fontsize=8, frameon=False)


SCORE_COLOURS = (("#b45309", "baseline"), ("#2563eb", "base model / other run"), ("#7c3aed", "trained variant"))
DELTA_COLOURS = (("#0a7d32", "significant improvement"), ("#b42318", "significant regression"), ("#6b7280", "not significant"))


# A plot of hundreds of runs is unreadable and costs seconds to draw: plots show the best runs (the tables show
# every run), chosen by their mean rank over the tasks' headline metrics, with the baseline always included.
MAX_PLOTTED = 40


def best_rows(board: Board, rows: list[Row], limit: int = MAX_PLOTTED) -> list[Row]:
    """Up to ``limit`` of ``rows``, in their board order: the baseline and the best by mean headline rank."""
    if len(rows) <= limit:
        return rows
    tasks = list(dict.fromkeys(column.task for column in board.columns))
    ranks: dict[int, list[float]] = {id(row): [] for row in rows}
    for task in tasks:
        metric = board.primary[task]
        column = board.column(task, metric)
        scored = [(row.cells[f"{task}/{metric}"].value, row) for row in rows if f"{task}/{metric}" in row.cells]
        scored.sort(key=lambda pair: pair[0], reverse=column is None or column.higher_is_better)
        for rank, (_, row) in enumerate(scored):
            ranks[id(row)].append(rank / max(len(scored) - 1, 1))
    def mean_rank(row: Row) -> float:
        values = ranks[id(row)]
        return sum(values) / len(values) if values else 1.0

    chosen = {id(row) for row in rows if row.is_baseline}
    for row in sorted(rows, key=mean_rank):
        if len(chosen) >= limit:
            break
        chosen.add(id(row))
    return [row for row in rows if id(row) in chosen]


def _label(row: Row) -> str:
    name = row.run.name
    return name if len(name) <= 40 else name[:37] + "..."


def plot_scores(board: Board, path: Path) -> Path | None:
    """One panel per task: each run's primary metric with its bootstrap 95% CI (horizontal bars)."""
    tasks = list(dict.fromkeys(column.task for column in board.columns))
    if not tasks or not board.rows:
        return None
    rows = best_rows(board, board.rows)
    spec = [
        "scores", len(board.rows), [(task, board.primary[task]) for task in tasks],
        [
            (_label(row), row.is_baseline, row.depth,
             [(c.value, c.low, c.high) if (c := row.cells.get(f"{task}/{board.primary[task]}")) else None for task in tasks])
            for row in rows
        ],
    ]
    unchanged, key = _unchanged(path, spec)
    if unchanged:
        return path
    plt = _pyplot()
    height = max(2.5, 0.28 * len(rows) + 1.2)
    figure, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks) + 1.5, height), squeeze=False)
    labels = [_label(row) for row in rows]
    positions = list(range(len(rows)))[::-1]
    for axis, task in zip(axes[0], tasks, strict=True):
        metric = board.primary[task]
        column = board.column(task, metric)
        points = []
        for position, row in zip(positions, rows, strict=True):
            cell = row.cells.get(f"{task}/{metric}")
            if cell is None:
                continue
            color = SCORE_COLOURS[0][0] if row.is_baseline else (SCORE_COLOURS[1][0] if row.depth == 0 else SCORE_COLOURS[2][0])
            points.append((cell.value, position, cell.low, cell.high, color))
        _draw(axis, points)
        axis.set_title(f"{task.removeprefix('medbench_')}\n{metric} {column.arrow if column else ''}", fontsize=9)
        axis.grid(axis="x", alpha=0.3)
        axis.tick_params(labelsize=8)
    shown = "" if len(rows) == len(board.rows) else f": the {len(rows)} best of {len(board.rows)} runs by mean rank"
    figure.suptitle(f"Scores with bootstrap 95% CIs (bars){shown}", fontsize=10, y=0.998, va="top")
    used = {colour for axis in axes[0] for line in axis.get_lines() for colour in [line.get_color()]}
    _legend(figure, [entry for entry in SCORE_COLOURS if entry[0] in used] or list(SCORE_COLOURS[1:2]))
    _layout(figure, axes[0], positions, labels, top_inches=1.15)
    figure.savefig(path, dpi=100, pil_kwargs={"compress_level": 2})  # fast zlib level: the PNGs are small anyway
    plt.close(figure)
    _stamp(path, key)
    return path


def plot_deltas(board: Board, path: Path) -> Path | None:
    """Each variant's paired difference to its base model on every task's primary metric, with its CI.

    Differences are signed so that right of zero is always an improvement (lower-is-better metrics are
    flipped); ``None`` when no run on the board names a base model that is also on the board.
    """
    tasks = list(dict.fromkeys(column.task for column in board.columns))
    every_variant = [row for row in board.rows if any(cell.vs_base for cell in row.cells.values())]
    if not tasks or not every_variant:
        return None
    variants = best_rows(board, every_variant)
    spec = [
        "deltas", len(every_variant), board.alpha, [(task, board.primary[task]) for task in tasks],
        [
            (_label(row), row.run.meta.base_model,
             [(c.vs_base or None) if (c := row.cells.get(f"{task}/{board.primary[task]}")) else None for task in tasks])
            for row in variants
        ],
    ]
    unchanged, key = _unchanged(path, spec)
    if unchanged:
        return path
    plt = _pyplot()
    height = max(2.5, 0.3 * len(variants) + 1.4)
    figure, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks) + 2.0, height), squeeze=False)
    labels = [f"{_label(row)} − {row.run.meta.base_model}"[:60] for row in variants]
    positions = list(range(len(variants)))[::-1]
    for axis, task in zip(axes[0], tasks, strict=True):
        metric = board.primary[task]
        column = board.column(task, metric)
        sign = 1.0 if column is None or column.higher_is_better else -1.0
        points = []
        for position, row in zip(positions, variants, strict=True):
            cell = row.cells.get(f"{task}/{metric}")
            delta = cell.vs_base if cell else None
            if not delta:
                continue
            value = sign * delta["difference"]
            significant = delta["p"] < board.alpha
            color = (DELTA_COLOURS[0][0] if value > 0 else DELTA_COLOURS[1][0]) if significant else DELTA_COLOURS[2][0]
            low = high = None
            if delta["low"] is not None and delta["high"] is not None:
                low, high = sorted((sign * delta["low"], sign * delta["high"]))
            points.append((value, position, low, high, color))
        _draw(axis, points)
        axis.axvline(0, color="#111827", linewidth=0.8)
        axis.set_title(f"{task.removeprefix('medbench_')}\nΔ {metric} (improvement →)", fontsize=9)
        axis.grid(axis="x", alpha=0.3)
        axis.tick_params(labelsize=8)
    shown = "" if len(variants) == len(every_variant) else f"; the {len(variants)} best of {len(every_variant)} variants"
    figure.suptitle(
        f"Variant minus base model, paired bootstrap 95% CI (significance: p < {board.alpha}){shown}",
        fontsize=10, y=0.998, va="top",
    )
    _legend(figure, list(DELTA_COLOURS))
    _layout(figure, axes[0], positions, labels, top_inches=1.15)
    figure.savefig(path, dpi=100, pil_kwargs={"compress_level": 2})  # fast zlib level: the PNGs are small anyway
    plt.close(figure)
    _stamp(path, key)
    return path
