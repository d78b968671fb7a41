"""Assemble verified runs into a board: columns from the task YAMLs, rows grouped under base models, statistics.

Who owns a name and which run is a copy is the registry's decision (:mod:`medbench.leaderboard.registry`:
the first accepted run keeps it, the newcomer is rejected); a pile of folders goes through a temporary
registry in argument order (:func:`load_runs`). The board-level data rule lives here and does not depend on
the order the runs come in: a task is shown on one reference data set, the strongest any accepted run matched (the board's own copy over a
declared fingerprint over the demo set), so runs of that task on weaker reference data are data mismatches.
The baseline is only the run the others are compared with; it decides nothing about the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medbench import stats
from medbench.data.fingerprint import DataFingerprint
from medbench.errors import MedbenchError
from medbench.metrics.registry import METRICS
from medbench.taskfiles import group_members, task_configs, task_versions

from .cache import StatsCache, VerificationCache
from .discovery import find_submissions
from .registry import Admission, Registry
from .rules import Limits, Rejected
from .runs import Run
from .verification import board_references, safe_load_run


@dataclass(frozen=True)
class Column:
    """One task metric shown on the board.

    Attributes:
        task: Task name.
        metric: Metric name.
        higher_is_better: Direction, from the task YAML.
        per_sample: Whether the score is a mean of per-sample values (so it has a CI and a paired test).
    """

    task: str
    metric: str
    higher_is_better: bool
    per_sample: bool

    @property
    def key(self) -> str:
        return f"{self.task}/{self.metric}"

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


@dataclass
class Cell:
    """One run's score in one column.

    Attributes:
        value: The task score.
        stderr: lmms-eval's standard error.
        low: Bootstrap CI lower bound (``None`` for corpus-level metrics).
        high: Bootstrap CI upper bound.
        verdict: ``recomputed`` / ``consistent`` / ``unverified``.
        vs_baseline: Paired test against the baseline: ``difference``, ``low``, ``high``, ``p``, ``n``.
        mark: ``better`` / ``worse`` than the baseline at level alpha (in the metric's direction), or ``None``.
        vs_base: Paired difference against the run's base model (same keys as ``vs_baseline``).
    """

    value: float
    stderr: float | None
    low: float | None
    high: float | None
    verdict: str
    vs_baseline: dict[str, float] | None = None
    mark: str | None = None
    vs_base: dict[str, float] | None = None


@dataclass
class Row:
    """A run on the board with its cells (keyed by :attr:`Column.key`) and its place in the grouping."""

    run: Run
    cells: dict[str, Cell]
    depth: int = 0
    group: str = ""
    is_baseline: bool = False


@dataclass
class Board:
    """Everything the renderers need.

    Attributes:
        columns: Task metrics, in task-group order and YAML metric order.
        rows: Runs, grouped: each base model followed by the variants trained from it.
        rejected: Turned-away submissions.
        baseline: Display name of the baseline (``None``: no paired tests).
        primary: Task -> the metric plotted and summarised for it.
        alpha: Significance level of the paired tests.
        iterations: Bootstrap / permutation draws.
        task_versions: The board's task versions.
        notes: Warnings for the page (a base model that is not on the board, sampled decoding ...).
        clustered: Task -> (images, questions) for tasks whose CIs and tests resample images, not questions.
    """

    columns: list[Column]
    rows: list[Row]
    rejected: list[Rejected]
    baseline: str | None
    primary: dict[str, str]
    alpha: float
    iterations: int
    task_versions: dict[str, int]
    notes: list[str] = field(default_factory=list)
    clustered: dict[str, tuple[int, int]] = field(default_factory=dict)

    def column(self, task: str, metric: str) -> Column | None:
        return next((c for c in self.columns if c.task == task and c.metric == metric), None)


def task_order() -> list[str]:
    """Tasks in the ``medbench`` group's order (the order the paper reports them), then any others; an image-blind
    twin (``metadata.blind_of``) right after its task, so a model's blind score sits beside its score."""
    configs = task_configs()
    known = list(configs)
    grouped = [task for members in group_members().values() for task in members if task in known]
    order = list(dict.fromkeys(grouped + sorted(known)))
    twins = {task: (configs[task].get("metadata") or {}).get("blind_of") for task in order}
    placed = [task for task in order if not twins[task]]
    for twin, sighted in twins.items():
        if sighted:
            placed.insert(placed.index(sighted) + 1 if sighted in placed else len(placed), twin)
    return placed


def all_columns() -> list[Column]:
    """Every scored metric of every task: the task YAMLs' ``metric_list``, facts from the metric declarations.

    Counters (question counts, unscored and failed samples) are not scores and get no column.
    """
    columns = []
    configs = task_configs()
    for task in task_order():
        for entry in configs[task].get("metric_list", []):
            metric = METRICS.get(str(entry["metric"]))
            if metric is None or metric.counter:
                continue
            columns.append(
                Column(
                    task=task,
                    metric=metric.name,
                    higher_is_better=metric.higher_is_better,
                    per_sample=metric.mean_of_samples,
                )
            )
    return columns


def source_label(argument: Path, root: Path) -> str:
    """How a submission folder is named on the page and in the registry: the argument's own name and the
    path below it, never the operator's absolute path."""
    label = argument.name or str(argument)
    try:
        below = root.relative_to(argument)
    except ValueError:
        below = Path(root.name)
    return label if str(below) == "." else f"{label}/{below.as_posix()}"


def collect(
    paths: list[Path],
    registry: Registry,
    limits: Limits | None = None,
    cache: VerificationCache | None = None,
    references: dict[str, list[DataFingerprint]] | None = None,
    keep_identical: bool = False,
) -> list[Admission]:
    """Verify every submission under ``paths`` and admit it to ``registry``, in argument order.

    Each submission is verified once, outside any registry transaction; a rejection (or any failure of one
    submission) is recorded in the registry and never stops the others.

    Raises:
        MedbenchError: The board's own reference data (a configured ``MEDBENCH_<TASK>``) cannot be read.
    """
    references = board_references() if references is None else references
    seen: set[Path] = set()
    admissions = []
    for argument in paths:
        try:
            roots, problems = find_submissions([argument])
        except (OSError, RuntimeError, RecursionError, MemoryError) as error:
            roots = []
            problems = [Rejected("unreadable", argument, f"cannot be read ({type(error).__name__}); pass a folder")]
        for problem in problems:
            rejection = problem.relabel(argument, argument.name or str(argument))
            registry.reject(rejection)
            admissions.append(Admission(False, rejection))
        for root in roots:
            if root in seen:
                continue
            seen.add(root)
            label = source_label(argument, root)
            try:
                run = safe_load_run(root, limits or Limits(), cache, references)
            except Rejected as error:
                rejection = _relabelled(error, root, label)
                registry.reject(rejection)
                admissions.append(Admission(False, rejection))
                continue
            run.root = Path(label)
            admissions.append(registry.admit(run, keep_identical))
    return admissions


def _relabelled(error: Rejected, root: Path, label: str) -> Rejected:
    try:
        resolved = root.resolve()
    except (OSError, RuntimeError):
        resolved = root
    return error.relabel(resolved, label).relabel(root, label)


def load_runs(
    paths: list[Path],
    limits: Limits | None = None,
    cache: VerificationCache | None = None,
    references: dict[str, list[DataFingerprint]] | None = None,
    keep_identical: bool = False,
) -> tuple[list[Run], list[Rejected]]:
    """The runs under ``paths`` through a temporary registry: a pile of folders is submitted in argument order.

    Rejected ones (and empty or missing paths) are returned, not raised. The first run that takes a name (or
    gives some answers) owns it; a later collision or copy is rejected, the earlier run kept.

    Raises:
        MedbenchError: The board's own reference data (a configured ``MEDBENCH_<TASK>``) cannot be read.
    """
    with Registry(None) as registry:
        collect(paths, registry, limits, cache, references, keep_identical)
        return registry.accepted(), registry.rejections(limit=10**9)


def screen(runs: list[Run]) -> tuple[list[Run], list[Rejected]]:
    """Apply the board-level data rule (see the module docstring); names and copies are the registry's.

    The result does not depend on the order of ``runs``.
    """
    rejected: list[Rejected] = []
    out: set[int] = set()
    strongest: dict[str, tuple[int, str]] = {}
    for index, run in enumerate(runs):
        if index in out:
            continue
        for task, scores in run.tasks.items():
            current = strongest.get(task)
            if current is None or scores.data_priority > current[0]:
                strongest[task] = (scores.data_priority, scores.data)
    for index, run in enumerate(runs):
        if index in out:
            continue
        weaker = [
            (task, scores.data) for task, scores in sorted(run.tasks.items()) if scores.data != strongest[task][1]
        ]
        if weaker:
            task, data = weaker[0]
            rejected.append(
                Rejected(
                    "data_mismatch",
                    run.root,
                    f"{task} was evaluated on {data}, the board shows it on {strongest[task][1]}; evaluate on the board's test set",
                )
            )
            out.add(index)
    return [run for index, run in enumerate(runs) if index not in out], rejected


def _grouped(runs: list[Run]) -> list[tuple[Run, int, str]]:
    """Runs in display order: each root followed by the runs trained from it (depth-first), input order kept."""
    by_name = {run.name: run for run in runs}
    children: dict[str, list[Run]] = {}
    roots = []
    for run in runs:
        base = run.meta.base_model
        if base and base in by_name and base != run.name:
            children.setdefault(base, []).append(run)
        else:
            roots.append(run)
    ordered: list[tuple[Run, int, str]] = []
    seen: set[str] = set()

    def visit(run: Run, depth: int, group: str) -> None:
        if run.name in seen:
            return
        seen.add(run.name)
        ordered.append((run, depth, group))
        for child in children.get(run.name, []):
            visit(child, depth + 1, group)

    for root in roots:
        visit(root, 0, root.name)
    for run in runs:  # a cycle of base_model references has no root; show its members flat
        visit(run, 0, run.name)
    return ordered


def build_board(
    runs: list[Run],
    rejected: list[Rejected],
    baseline: str | None = None,
    primary: dict[str, str] | None = None,
    alpha: float = stats.DEFAULT_ALPHA,
    iterations: int = stats.DEFAULT_ITERATIONS,
    notes: list[str] | None = None,
    stats_cache: StatsCache | None = None,
) -> Board:
    """Screen the runs, compute cells, CIs and paired tests, and order the rows.

    Args:
        runs: Verified runs (from :func:`load_runs`).
        rejected: Runs already rejected (kept for the page).
        baseline: Display name of the run every other run is tested against.
        primary: Task -> metric to plot and summarise (default: the first per-sample metric in the YAML).
        alpha: Significance level.
        iterations: Bootstrap and permutation draws.
        notes: Notes the registry recorded (runs kept with identical answers).
        stats_cache: Intervals and tests of earlier builds, reused when a task's inputs are unchanged.

    Raises:
        MedbenchError: An unknown baseline, or a ``primary`` entry naming an unknown task or metric.
    """
    if baseline is not None and baseline not in {run.name for run in runs}:
        names = ", ".join(run.name for run in runs) or "none"
        raise MedbenchError(f"--baseline {baseline!r} is not a run on the board (runs: {names}); pass a display name")
    pre_notes: list[str] = list(notes or [])
    accepted, screened_out = screen(runs)
    rejected = [*rejected, *screened_out]
    if baseline is not None and baseline not in {run.name for run in accepted}:
        pre_notes.append(f"the baseline {baseline!r} was rejected (see the rejections), so no run is compared with it")
        baseline = None
    present = {(task, metric) for run in accepted for task, scores in run.tasks.items() for metric in scores.scores}
    columns = [column for column in all_columns() if (column.task, column.metric) in present]
    primary = _primary(columns, primary or {})
    ordered = _grouped(accepted)
    rows = [
        Row(run=run, cells={}, depth=depth, group=group, is_baseline=run.name == baseline)
        for run, depth, group in ordered
    ]
    by_name = {row.run.name: row for row in rows}
    matrices = _matrices(accepted, columns)
    clusters = task_clusters(accepted)
    for row in rows:
        _fill_cells(row, columns)
    pairs: list[tuple[Row, Row, str]] = []
    notes: list[str] = list(pre_notes)
    for row in rows:
        if baseline is not None and not row.is_baseline:
            pairs.append((row, by_name[baseline], "vs_baseline"))
        base = row.run.meta.base_model
        if base:
            if base in by_name and base != row.run.name:
                pairs.append((row, by_name[base], "vs_base"))
            else:
                notes.append(
                    f"{row.run.name}: base model {base!r} is not on the board, so no difference to it is shown"
                )
    for task in dict.fromkeys(column.task for column in columns):
        _intervals(task, rows, matrices, iterations, alpha, clusters.get(task), stats_cache)
        _compare(task, pairs, matrices, iterations, alpha, clusters.get(task), stats_cache)
    order = task_order()  # the group YAMLs are read once per board, not once per row
    shown_tasks = {column.task for column in columns}
    for row in rows:
        sampled = sorted(task for task, scores in row.run.tasks.items() if scores.decoding.get("sampled"))
        if sampled:
            notes.append(
                f"{row.run.name}: sampled decoding (temperature > 0) on {', '.join(sampled)}; its scores vary between runs"
            )
        for task, departures in row.run.nonstandard.items():
            notes.append(f"{row.run.name}: non-standard {task} ({'; '.join(departures)})")
        for task, reasons in row.run.unknown_protocol.items():
            notes.append(f"{row.run.name}: unknown protocol on {task} ({'; '.join(reasons)})")
        # Only tasks the board shows: a run is not "missing" a task no run on the board was evaluated on.
        missing = [task for task in order if task not in row.run.tasks and task in shown_tasks]
        if missing:
            notes.append(f"{row.run.name}: not evaluated on {', '.join(missing)}")
    return Board(
        columns=columns,
        rows=rows,
        rejected=rejected,
        baseline=baseline,
        primary=primary,
        alpha=alpha,
        iterations=iterations,
        task_versions=task_versions(),
        notes=notes,
        clustered={task: (len(set(labels)), len(labels)) for task, labels in clusters.items()},
    )


def _primary(columns: list[Column], requested: dict[str, str]) -> dict[str, str]:
    primary: dict[str, str] = {}
    for task, metric in requested.items():
        if not any(c.task == task and c.metric == metric for c in all_columns()):
            raise MedbenchError(f"--metric {task}={metric}: no such task metric in the task YAMLs")
        primary[task] = metric
    for column in columns:  # the declared headline metric (VQA: overall, reports: ROUGE-L), when reported
        if METRICS[column.metric].primary:
            primary.setdefault(column.task, column.metric)
    for column in columns:
        if column.per_sample:
            primary.setdefault(column.task, column.metric)
    for column in columns:
        primary.setdefault(column.task, column.metric)
    return primary


_Matrices = dict[tuple[str, str], tuple[list[Column], np.ndarray, np.ndarray]]


def _matrices(runs: list[Run], columns: list[Column]) -> _Matrices:
    """Per (run, task): the per-sample columns and their value/mask matrices (built once, used for CI and tests)."""
    by_task: dict[str, list[Column]] = {}
    for column in columns:
        if column.per_sample:
            by_task.setdefault(column.task, []).append(column)
    matrices: _Matrices = {}
    for run in runs:
        for task, scores in run.tasks.items():
            task_columns = [c for c in by_task.get(task, []) if c.metric in scores.per_sample]
            if not task_columns or not scores.item_ids:
                continue
            # Rows in item-id order: every run of a task is resampled and paired item by item with the same draws,
            # whatever order its log was written in.
            order = sorted(range(len(scores.item_ids)), key=scores.item_ids.__getitem__)
            values, mask = stats.as_matrix([[scores.per_sample[c.metric][i] for i in order] for c in task_columns])
            matrices[(run.name, task)] = (task_columns, values, mask)
    return matrices


def task_clusters(runs: list[Run]) -> dict[str, tuple[str, ...]]:
    """Task -> the image of each item in item-id order, for tasks whose items share images (see :mod:`.stats`).

    Tasks with one question per image, or whose reference data does not name the images, are left out: their
    items are resampled one by one.
    """
    found: dict[str, tuple[str, ...]] = {}
    for run in runs:
        for task, scores in run.tasks.items():
            if task in found or not scores.clusters or len(scores.clusters) != len(scores.item_ids):
                continue
            by_item = dict(zip(scores.item_ids, scores.clusters, strict=True))
            labels = tuple(by_item[item] for item in sorted(by_item))
            if len(set(labels)) < len(labels):
                found[task] = labels
    return found


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _fill_cells(row: Row, columns: list[Column]) -> None:
    """The row's cells with scores and checks (intervals and comparisons are added per task, batched)."""
    for column in columns:
        scores = row.run.tasks.get(column.task)
        if scores is None or column.metric not in scores.scores:
            continue
        row.cells[column.key] = Cell(
            value=scores.scores[column.metric],
            stderr=scores.stderr.get(column.metric),
            low=None,
            high=None,
            verdict=scores.checks.get(column.metric, "unverified"),
        )


def _draws(task: str, n_items: int, iterations: int, clusters: tuple[str, ...] | None) -> stats.Resampler:
    # Clusters apply when they label exactly these items (runs on the board's reference data).
    return stats.resampler(task, n_items, iterations, clusters if clusters and len(clusters) == n_items else None)


def _intervals(
    task: str,
    rows: list[Row],
    matrices: _Matrices,
    iterations: int,
    alpha: float,
    clusters: tuple[str, ...] | None,
    cache: StatsCache | None = None,
) -> None:
    """Bootstrap CIs of every run's per-sample metrics of ``task`` in one batch (one matrix product)."""
    entries = [(row, matrices[(row.run.name, task)]) for row in rows if (row.run.name, task) in matrices]
    if not entries:
        return
    values = np.hstack([matrix[1] for _, matrix in entries])
    mask = np.hstack([matrix[2] for _, matrix in entries])
    def compute() -> list[np.ndarray]:
        return list(stats.bootstrap_ci(_draws(task, values.shape[0], iterations, clusters), values, mask, alpha))

    inputs = ["ci", task, iterations, alpha, clusters, values, mask]
    low, high = cache.get_or_compute(inputs, compute) if cache else compute()
    offset = 0
    for row, (task_columns, _, _) in entries:
        for index, column in enumerate(task_columns):
            cell = row.cells.get(column.key)
            if cell is not None:
                cell.low, cell.high = _finite(low[offset + index]), _finite(high[offset + index])
        offset += len(task_columns)


def _compare(
    task: str,
    pairs: list[tuple[Row, Row, str]],
    matrices: _Matrices,
    iterations: int,
    alpha: float,
    clusters: tuple[str, ...] | None,
    cache: StatsCache | None = None,
) -> None:
    """Paired tests of every (run, other run) pair on ``task``'s per-sample metrics, batched into one call."""
    picked: list[tuple[Row, str, Column]] = []
    mine_values, mine_mask, theirs_values, theirs_mask = [], [], [], []
    for row, other, slot in pairs:
        mine = matrices.get((row.run.name, task))
        theirs = matrices.get((other.run.name, task))
        if mine is None or theirs is None:
            continue
        shared = [c for c in mine[0] if c in theirs[0]]
        pick_mine = [mine[0].index(c) for c in shared]
        pick_theirs = [theirs[0].index(c) for c in shared]
        mine_values.append(mine[1][:, pick_mine])
        mine_mask.append(mine[2][:, pick_mine])
        theirs_values.append(theirs[1][:, pick_theirs])
        theirs_mask.append(theirs[2][:, pick_theirs])
        picked += [(row, slot, column) for column in shared]
    if not picked:
        return
    run_matrix = (np.hstack(mine_values), np.hstack(mine_mask))
    other_matrix = (np.hstack(theirs_values), np.hstack(theirs_mask))
    def compute() -> list[np.ndarray]:
        draws = _draws(task, run_matrix[0].shape[0], iterations, clusters)
        found = stats.paired_test(draws, run_matrix, other_matrix, alpha, method="sign_flip")
        return [found.difference, found.low, found.high, found.p_value, found.n_pairs]

    inputs = ["paired", task, iterations, alpha, clusters, *run_matrix, *other_matrix]
    difference, low, high, p_value, n_pairs = cache.get_or_compute(inputs, compute) if cache else compute()
    result = stats.PairedResult(difference=difference, low=low, high=high, p_value=p_value, n_pairs=n_pairs)
    for index, (row, slot, column) in enumerate(picked):
        cell = row.cells.get(column.key)
        if cell is None or not result.n_pairs[index]:
            continue
        comparison = {
            "difference": float(result.difference[index]),
            "low": _finite(result.low[index]),
            "high": _finite(result.high[index]),
            "p": float(result.p_value[index]),
            "n": int(result.n_pairs[index]),
        }
        setattr(cell, slot, comparison)
        if slot == "vs_baseline" and cell.verdict == "unverified":
            continue  # an unverified score is shown, never ranked above or below the baseline
        if slot == "vs_baseline" and comparison["p"] < alpha and comparison["difference"] != 0:
            better = (comparison["difference"] > 0) == column.higher_is_better
            cell.mark = "better" if better else "worse"


def as_records(board: Board) -> list[dict[str, Any]]:
    """One flat record per (run, task metric): the CSV's rows."""
    records = []
    for row in board.rows:
        run = row.run
        for column in board.columns:
            cell = row.cells.get(column.key)
            if cell is None:
                continue
            scores = run.tasks[column.task]
            baseline = cell.vs_baseline or {}
            base = cell.vs_base or {}
            records.append(
                {
                    "model": run.name,
                    "backbone": run.meta.backbone or "",
                    "variant": run.meta.variant,
                    "base_model": run.meta.base_model or "",
                    "task": column.task,
                    "task_version": scores.version,
                    "metric": column.metric,
                    "higher_is_better": column.higher_is_better,
                    "value": cell.value,
                    "stderr": cell.stderr,
                    "ci_low": cell.low,
                    "ci_high": cell.high,
                    "n_samples": len(scores.item_ids),
                    "check": cell.verdict,
                    "diff_vs_baseline": baseline.get("difference"),
                    "p_vs_baseline": baseline.get("p"),
                    "mark_vs_baseline": cell.mark or "",
                    "delta_vs_base": base.get("difference"),
                    "delta_vs_base_low": base.get("low"),
                    "delta_vs_base_high": base.get("high"),
                    "p_vs_base": base.get("p"),
                }
            )
    return records
