"""One ``process_results`` record per sample, built from the metric catalogue (a loop over a kind's metrics).

lmms-eval gives ``process_results`` one document at a time. For every metric of the task's kind
(:data:`medbench.metrics.registry.TASK_KIND_METRICS`) the record gets:

* the per-sample value (the metric's ``sample`` function; left out where it does not apply, so lmms-eval's
  ``mean`` averages each metric over exactly the samples it applies to);
* a :class:`Deferred` placeholder for metrics computed over the whole task by their aggregation;
* nothing for a family that cannot run here (no Java, no weights, no judge), with one log line saying what
  to set.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from medbench.metrics.registry import FAMILIES, TASK_KIND_METRICS, Answer, TaskKind

logger = logging.getLogger("medbench.report")


class Deferred(dict):
    """A per-sample placeholder for a metric computed over the whole task in its aggregation.

    The dict content is what lmms-eval logs per sample (``id``, later ``score``/``status``/details); the
    texts ride along as attributes so they are not duplicated into the sample logs once per metric.
    """

    def __init__(
        self, sample_id: str, prediction: str, reference: str, facts: Sequence[str] | None = None, task: str | None = None
    ) -> None:
        super().__init__(id=sample_id)
        self.prediction = prediction
        self.reference = reference
        self.facts = tuple(facts) if facts is not None else None
        self.task = task


_warned: set[str] = set()
_warn_lock = threading.Lock()


def warn_once(key: str, message: str) -> None:
    """Log ``message`` once per process (per ``key``)."""
    with _warn_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning("medbench: %s", message)


def family_runs(family: str | None) -> bool:
    """Whether the metrics of ``family`` run here; logs once why not."""
    if family is None:
        return True
    reason = FAMILIES[family].reason_unavailable()
    if reason is not None:
        warn_once(reason, reason)
    return reason is None


def score(kind: TaskKind, answer: Answer, placeholder: Callable[[], Deferred] | None = None) -> dict[str, Any]:
    """The metric values of one sample for a task of ``kind`` (see the module docstring).

    Args:
        kind: The task kind.
        answer: The sample's answer and reference.
        placeholder: Makes the :class:`Deferred` item of a whole-task metric (needed when the kind has one).

    Returns:
        ``{metric name: value or placeholder}`` in catalogue order.
    """
    record: dict[str, Any] = {}
    available: dict[str | None, bool] = {}
    for metric in TASK_KIND_METRICS[kind]:
        if metric.sample is None and metric.corpus is None:
            continue  # counted by medbench.lmms.failures, not scored
        if metric.family not in available:
            available[metric.family] = family_runs(metric.family)
        if not available[metric.family]:
            continue
        if metric.deferred:
            if placeholder is None:
                raise ValueError(f"{kind} metric {metric.name} is computed by its aggregation; pass placeholder=")
            record[metric.name] = placeholder()
        else:
            value = metric.sample_function(answer)  # type: ignore[misc]
            if value is not None:
                record[metric.name] = value
    return record
