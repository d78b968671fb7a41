"""The one home of the judge's facts: its parts, the metrics each part produces, their directions.

Everything else derives from here: the runner (which metrics a part fills), ``medbench judge`` (``--parts``),
the judge results files (``judge_<metric>`` names and ``higher_is_better``), and - for whoever declares the
long-form tasks' metrics or recomputes them - :data:`COLUMNS` and :data:`UNSCORED`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from medbench.errors import MedbenchError

PREFIX = "judge_"
UNSCORED = "judge_unscored"
# Which parts the lmms-eval tasks run (comma-separated; default: every part).
ENV_PARTS = "MEDBENCH_JUDGE_PARTS"


@dataclass(frozen=True)
class JudgeMetric:
    """One judge metric.

    Attributes:
        name: Metric name inside the judge (``completeness``).
        part: The judge part that computes it (``nli``, ``fabrication``, ``severity``).
        higher_is_better: Direction.
        description: One line for tables and docs.
        details: The verdict details logged with each sample's score (lmms-eval's per-sample log).
    """

    name: str
    part: str
    higher_is_better: bool
    description: str
    details: tuple[str, ...] = ()

    @property
    def column(self) -> str:
        """The name in results files and tables (``judge_completeness``)."""
        return PREFIX + self.name


METRIC_LIST: tuple[JudgeMetric, ...] = (
    JudgeMetric(
        "completeness", "nli", True, "share of reference facts the output states: (E + 0.5 PE) / n",
        ("facts_source", "facts", "labels"),
    ),
    JudgeMetric("hallucination", "nli", False, "share of reference facts the output contradicts: C / n"),
    JudgeMetric(
        "fabrication", "fabrication", False, "share of output claims the reference does not support: (N + C) / m",
        ("claims", "claim_labels"),
    ),
    JudgeMetric("severe", "severity", False, "share of outputs whose worst error is severe", ("severity", "severity_reason")),
)
PARTS: tuple[str, ...] = tuple(dict.fromkeys(metric.part for metric in METRIC_LIST))
PART_METRICS: dict[str, tuple[str, ...]] = {part: tuple(m.name for m in METRIC_LIST if m.part == part) for part in PARTS}
METRICS: tuple[str, ...] = tuple(metric.name for metric in METRIC_LIST)
HIGHER_IS_BETTER: dict[str, bool] = {metric.name: metric.higher_is_better for metric in METRIC_LIST}
COLUMNS: dict[str, JudgeMetric] = {metric.column: metric for metric in METRIC_LIST}
# Prompt roles each part asks.
PART_ROLES: dict[str, tuple[str, ...]] = {"nli": ("facts", "nli"), "fabrication": ("claims", "nli"), "severity": ("severity",)}


def parse_parts(raw: str, where: str = "--parts") -> tuple[str, ...]:
    """``"nli,severity"`` -> ``("nli", "severity")``.

    Raises:
        MedbenchError: Empty or unknown part names.
    """
    parts = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise MedbenchError(f"{where} {raw!r}: unknown part(s) {unknown}; use a subset of {','.join(PARTS)}")
    return parts


def enabled_parts(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The parts the lmms-eval tasks run: ``MEDBENCH_JUDGE_PARTS`` (default: all of :data:`PARTS`).

    Raises:
        MedbenchError: Unknown part names.
    """
    raw = (os.environ if env is None else env).get(ENV_PARTS, "").strip()
    return parse_parts(raw, ENV_PARTS) if raw else PARTS
