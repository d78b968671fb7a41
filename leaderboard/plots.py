"""Board plots: per-task scores with confidence intervals, and each variant's difference to its base model.

matplotlib is imported on first use with the non-interactive Agg backend (no display needed). Labels are
drawn as plain text: mathtext is switched off so a ``$`` in a model name cannot be interpreted.
"""

from __future__ import annotations

from pathlib import Path

from leaderboard.board import Board, Row


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams["text.usetex"] = False
    plt.rcParams["text.parse_math"] = False
    return plt


def _label(row: Row) -> str:
    name = row.run.name
    return name if len(name) <= 40 else name[:37] + "..."


def plot_scores(board: Board, path: Path) -> Path | None:
    """One panel per task: each run's primary metric with its bootstrap 95% CI (horizontal bars)."""
    tasks = list(dict.fromkeys(column.task for column in board.columns))
    if not tasks or not board.rows:
        return None
    plt = _pyplot()
    height = max(2.5, 0.28 * len(board.rows) + 1.2)
    figure, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks) + 1.5, height), sharey=True, squeeze=False)
    labels = [_label(row) for row in board.rows]
    positions = list(range(len(board.rows)))[::-1]
    for axis, task in zip(axes[0], tasks):
        metric = board.primary[task]
        column = board.column(task, metric)
        for position, row in zip(positions, board.rows):
            cell = row.cells.get(f"{task}/{metric}")
            if cell is None:
                continue
            color = "#b45309" if row.is_baseline else ("#2563eb" if row.depth == 0 else "#7c3aed")
            if cell.low is not None and cell.high is not None:
                axis.errorbar(
                    cell.value,
                    position,
                    xerr=[[max(cell.value - cell.low, 0)], [max(cell.high - cell.value, 0)]],
                    fmt="o",
                    color=color,
                    ecolor=color,
                    capsize=3,
                    markersize=4,
                )
            else:
                axis.plot(cell.value, position, "o", color=color, markersize=4)
        axis.set_title(f"{task.removeprefix('medbench_')}\n{metric} {column.arrow if column else ''}", fontsize=9)
        axis.grid(axis="x", alpha=0.3)
        axis.tick_params(labelsize=8)
    axes[0][0].set_yticks(positions)
    axes[0][0].set_yticklabels(labels, fontsize=8)
    figure.suptitle("Scores with bootstrap 95% CIs (orange: baseline, purple: trained variants)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_deltas(board: Board, path: Path) -> Path | None:
    """Each variant's paired difference to its base model on every task's primary metric, with its CI.

    Differences are signed so that right of zero is always an improvement (lower-is-better metrics are
    flipped); ``None`` when no run on the board names a base model that is also on the board.
    """
    tasks = list(dict.fromkeys(column.task for column in board.columns))
    variants = [row for row in board.rows if any(cell.vs_base for cell in row.cells.values())]
    if not tasks or not variants:
        return None
    plt = _pyplot()
    height = max(2.5, 0.3 * len(variants) + 1.4)
    figure, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks) + 2.0, height), sharey=True, squeeze=False)
    labels = [f"{_label(row)} − {row.run.meta.base_model}"[:60] for row in variants]
    positions = list(range(len(variants)))[::-1]
    for axis, task in zip(axes[0], tasks):
        metric = board.primary[task]
        column = board.column(task, metric)
        sign = 1.0 if column is None or column.higher_is_better else -1.0
        for position, row in zip(positions, variants):
            cell = row.cells.get(f"{task}/{metric}")
            delta = cell.vs_base if cell else None
            if not delta:
                continue
            value = sign * delta["difference"]
            significant = delta["p"] < board.alpha
            color = ("#0a7d32" if value > 0 else "#b42318") if significant else "#6b7280"
            if delta["low"] is not None and delta["high"] is not None:
                low, high = sorted((sign * delta["low"], sign * delta["high"]))
                axis.errorbar(
                    value,
                    position,
                    xerr=[[max(value - low, 0)], [max(high - value, 0)]],
                    fmt="o",
                    color=color,
                    ecolor=color,
                    capsize=3,
                    markersize=4,
                )
            else:
                axis.plot(value, position, "o", color=color, markersize=4)
        axis.axvline(0, color="#111827", linewidth=0.8)
        axis.set_title(f"{task.removeprefix('medbench_')}\nΔ {metric} (improvement →)", fontsize=9)
        axis.grid(axis="x", alpha=0.3)
        axis.tick_params(labelsize=8)
    axes[0][0].set_yticks(positions)
    axes[0][0].set_yticklabels(labels, fontsize=8)
    figure.suptitle(f"Variant minus base model, paired bootstrap 95% CI (coloured: p < {board.alpha})", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
