"""Recompute every score of a run from its per-sample logs: the leaderboard's tampering check.

A submission's numbers are only as good as the per-sample answers behind them. Each metric's declaration
(:mod:`medbench.metrics.registry`) names its recompute rule (``check``); this module holds the functions
behind those rules and applies them. The run is rejected when the results file or the per-sample values
disagree with the re-derivation, or when any value lies outside the metric's bounds (a value that cannot
be recomputed, such as a judge score, is at least range-checked: 1e308 or infinity is no score).

Deferred metrics (CIDEr, METEOR, BERTScore, the judge, RadGraph) get their per-sample values from the
aggregation, which writes them into the logged records. A multi-process lmms-eval run logs copies made
before the aggregation, so those values are absent (the record is just ``{"id": ...}``). That is not
tampering: CIDEr is then recomputed from the texts, judge scores come from the run's judge sidecar, and
the others are shown *unverified*.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from medbench.metrics.registry import METRICS, Answer, CheckKind, CorpusResult, Metric
from medbench.reasoning import strip_reasoning

Verdict = Literal["recomputed", "consistent", "unverified"]

# Recomputation uses the very functions that produced the logged values, so values agree to rounding noise.
ABS_TOLERANCE = 1e-9
REL_TOLERANCE = 1e-9


@dataclass
class Sample:
    """One logged sample, reduced to what the scorers need.

    Attributes:
        doc_id: lmms-eval's document index.
        item_id: The dataset id (``medbench_detail.id``), the key for pairing runs.
        prediction: The model's answer (first string of ``filtered_resps``).
        target: The reference answer or text.
        answer_type: ``CLOSED``/``OPEN`` for VQA, ``None`` for long-form tasks.
        record: The raw logged record (metric values live here).
        failed: The model never answered (:attr:`medbench.results.SampleRecord.failed`).
    """

    doc_id: int
    item_id: str
    prediction: str
    target: str
    answer_type: str | None
    record: dict[str, Any]
    failed: bool = False

    @property
    def answer(self) -> Answer:
        """What the metric functions read: the answer part of the prediction, as the task scored it.

        lmms-eval logs the model's text as generated (its CLI strips only some reasoning tags, its Python API
        none); the task's ``process_results`` scored it after :func:`medbench.reasoning.strip_reasoning`.
        """
        return Answer(strip_reasoning(self.prediction), self.target, self.answer_type)


class VerificationError(Exception):
    """A score does not match what the per-sample logs recompute; the message names task, metric and sample."""


@dataclass(frozen=True)
class MetricRule:
    """How one metric is re-derived from the per-sample logs.

    Attributes:
        kind: The check (see the module docstring).
        per_sample: The metric's per-sample function (``None`` result: it does not apply to that sample).
        corpus: The metric's whole-task function (score, and per-sample values when the metric has them).
        mean_of_samples: The task score is the mean of the per-sample values, so a bootstrap over samples
            gives its confidence interval and samples can be compared pairwise between runs.
    """

    kind: CheckKind
    per_sample: Callable[[Answer], float | None] | None = None
    corpus: Callable[[Sequence[Answer], str], CorpusResult] | None = None
    mean_of_samples: bool = True


def rule_for(metric: Metric) -> MetricRule:
    """The recompute rule of a declared metric: the very functions the task computed it with."""
    if metric.check in ("sample", "sum"):
        return MetricRule(metric.check, per_sample=metric.sample_function, mean_of_samples=metric.mean_of_samples)
    if metric.check in ("corpus", "java"):
        return MetricRule(metric.check, corpus=metric.corpus_function, mean_of_samples=metric.mean_of_samples)
    return MetricRule(metric.check, mean_of_samples=metric.mean_of_samples)


REGISTRY: dict[str, MetricRule] = {name: rule_for(metric) for name, metric in METRICS.items()}


def unfilled(record: dict[str, Any], metric: str) -> bool:
    """Whether a deferred metric's logged item was never filled in by the aggregation (multi-process logs)."""
    value = record.get(metric)
    return value is None or (isinstance(value, dict) and set(value) <= {"id"})


def logged_value(record: dict[str, Any], metric: str) -> float | None:
    """The per-sample value lmms-eval logged for ``metric``: a number, or a deferred item's ``score``."""
    value = record.get(metric)
    if isinstance(value, dict):
        value = value.get("score")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf


def close(a: float, b: float) -> bool:
    """Equal up to floating-point noise (NaN equals NaN: an empty mean logged as NaN stays NaN)."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=REL_TOLERANCE, abs_tol=ABS_TOLERANCE)


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


@dataclass
class MetricCheck:
    """A verified metric: its per-sample values (aligned with the samples) and how it was checked.

    ``value`` is the recomputed task score when the metric was recomputed: the board shows it rather than the
    submitted number, which may differ from it within the comparison tolerance.
    """

    per_sample: list[float | None]
    verdict: Verdict
    value: float | None = None


def java_available() -> bool:
    """Whether METEOR can be recomputed here."""
    from medbench.metrics.text import java_available as available

    return available()


def check_metric(
    task: str,
    metric: str,
    rule: MetricRule | None,
    samples: Sequence[Sample],
    aggregate: float,
    external: Sequence[float | None] | None = None,
    bounds: tuple[float, float] = (-math.inf, math.inf),
    recompute_missing: bool = False,
) -> MetricCheck:
    """Check one task score against the per-sample logs.

    Args:
        task: Task name (for messages).
        metric: Metric name.
        rule: Its rule (``None``: nothing can be checked).
        samples: The task's logged samples, in log order.
        aggregate: The task score the results file reports.
        external: Per-sample values from another file (``medbench judge`` verdicts) instead of the log.
        bounds: The range every logged value and the task score must lie in.
        recompute_missing: The per-sample values were never logged (a multi-process run): compare the
            recomputed score only.

    Returns:
        The per-sample values and the verdict.

    Raises:
        VerificationError: A per-sample value or the task score does not match.
    """
    logged = list(external) if external is not None else [logged_value(s.record, metric) for s in samples]
    _check_bounds(task, metric, samples, logged, aggregate, bounds)
    if rule is None or rule.kind == "none":
        return MetricCheck(logged, "unverified")
    kind: str = rule.kind
    if kind == "java" and not java_available():
        # Without Java the score cannot be recomputed; a mean-aggregated one can still be checked for consistency.
        if not rule.mean_of_samples:
            return MetricCheck(logged, "unverified")
        kind = "consistency"
    if kind in ("sample", "sum"):
        assert rule.per_sample is not None
        recomputed: list[float | None] = []
        for sample, value in zip(samples, logged):
            expected = rule.per_sample(sample.answer)
            if _differs(expected, value):
                raise VerificationError(
                    f"{task} {metric}: sample {sample.item_id!r} (doc_id {sample.doc_id}) logs {value} but its answer scores {expected}"
                )
            recomputed.append(expected)
        present = [v for v in recomputed if v is not None]
        expected_total = math.fsum(present) if kind == "sum" else _mean(present)
        _compare_aggregate(task, metric, aggregate, expected_total, "the per-sample values")
        return MetricCheck(recomputed, "recomputed", expected_total)
    if kind in ("corpus", "java"):
        assert rule.corpus is not None
        expected_score, expected_samples = rule.corpus([sample.answer for sample in samples], metric)
        if expected_samples is not None and recompute_missing:
            logged = list(expected_samples)
        elif expected_samples is not None:
            for sample, value, expected in zip(samples, logged, expected_samples):
                if value is None or not close(expected, value):
                    raise VerificationError(
                        f"{task} {metric}: sample {sample.item_id!r} (doc_id {sample.doc_id}) logs {value} but its answer scores {expected}"
                    )
        _compare_aggregate(task, metric, aggregate, expected_score, "the logged answers")
        return MetricCheck(
            list(expected_samples) if expected_samples is not None else [None] * len(samples), "recomputed", expected_score
        )
    if kind == "consistency":
        _compare_aggregate(
            task, metric, aggregate, _mean([v for v in logged if v is not None]), "the logged per-sample values"
        )
        return MetricCheck(logged, "consistent")
    if kind == "count":
        _compare_aggregate(
            task, metric, aggregate, math.fsum(v for v in logged if v is not None), "the logged per-sample values"
        )
        return MetricCheck(logged, "consistent")
    raise ValueError(f"unknown check kind {kind!r} for {metric}")


def _check_bounds(
    task: str,
    metric: str,
    samples: Sequence[Sample],
    logged: Sequence[float | None],
    aggregate: float,
    bounds: tuple[float, float],
) -> None:
    # Floating-point noise may put a perfect score a hair above 1 (sentence BLEU of identical texts).
    low, high = bounds
    slack = 1e-9 * max(1.0, abs(low), abs(high)) if math.isfinite(high) and math.isfinite(low) else 0.0
    low, high = low - slack, high + slack
    for sample, value in zip(samples, logged):
        if value is not None and not (low <= value <= high):
            raise VerificationError(
                f"{task} {metric}: sample {sample.item_id!r} (doc_id {sample.doc_id}) logs {value!r}, outside the metric's range [{bounds[0]:g}, {bounds[1]:g}]"
            )
    if not math.isnan(aggregate) and not (low <= aggregate <= high):
        raise VerificationError(
            f"{task} {metric}: the results file reports {aggregate!r}, outside the metric's range [{bounds[0]:g}, {bounds[1]:g}]"
        )


def _differs(expected: float | None, logged: float | None) -> bool:
    if expected is None or logged is None:
        return expected is not logged
    return not close(expected, logged)


def _compare_aggregate(task: str, metric: str, reported: float, expected: float | None, source: str) -> None:
    if expected is None or not close(reported, expected):
        shown = "nothing" if expected is None else f"{expected:.6g}"
        raise VerificationError(f"{task} {metric}: the results file reports {reported:.6g} but {source} give {shown}")
