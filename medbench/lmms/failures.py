"""Failed model calls are never scored.

When an API backend call fails for good, lmms-eval's ``openai`` (and ``gemini``, ``async_openai``) models write
the text ``[LMMS_EVAL_REQUEST_FAILED after N retries] <error>`` as the model's answer. Scored, that text is a
wrong answer and a broken run ranks as a weak model. :func:`unless_failed` wraps a task's ``process_results``:
a failed generation gets no score metric at all (so it is left out of every score, not counted as 0), only

* ``failed_generations``: 1 (0 for a real answer), summed per task by :func:`medbench.lmms.common.total`;
* ``medbench_detail``: a :class:`medbench.results.SampleDetail` with ``failure`` (its first 200 characters),
  logged as ``{"id", "source", "failed_generation": true, "failure": ...}``.

A real answer in reasoning format (``<think>...</think>`` then the answer) is scored on its answer part, by
:func:`medbench.reasoning.strip_reasoning` - the function the GRPO rewards use - whether or not lmms-eval's own
``--reasoning_tags`` stripping ran first (the rule is the same, and idempotent).

Real answers carry ``medbench_detail.failed_generation == false`` (every producer writes a ``SampleDetail``).
``medbench eval`` reads the per-task total
from the results file and exits non-zero when it is above zero (:func:`failed_generation_summary`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medbench.metrics.registry import DETAIL_KEY
from medbench.reasoning import strip_reasoning
from medbench.results import FAILED_GENERATION_MARK, SampleDetail

FAILED_METRIC = "failed_generations"
_PREVIEW = 200


def failed_generation(results: list[Any]) -> str | None:
    """The failure text when lmms-eval's answer for a sample is a failed-request marker, else None."""
    for answer in results or []:
        text = answer[0] if isinstance(answer, (list, tuple)) and answer else answer
        if isinstance(text, str) and text.lstrip().startswith(FAILED_GENERATION_MARK):
            return text.strip()
    return None


def unless_failed(process_results: Callable[[dict, list], dict]) -> Callable[[dict, list], dict]:
    """Wrap a ``process_results`` so failed generations are counted and marked instead of scored."""

    @functools.wraps(process_results)
    def guarded(doc: dict, results: list) -> dict:
        failure = failed_generation(results)
        if failure is not None:
            detail = SampleDetail(id=doc["id"], source=doc.get("source"), failure=failure[:_PREVIEW])
            return {FAILED_METRIC: 1.0, DETAIL_KEY: detail.to_json()}
        answers = [strip_reasoning(answer) if isinstance(answer, str) else answer for answer in results or []]
        record = process_results(doc, answers)
        record[FAILED_METRIC] = 0.0
        return record

    return guarded


def failed_generation_summary(results_files: list[Path]) -> str | None:
    """One line naming every task with failed generations in lmms-eval results files, or None when there are none.

    Args:
        results_files: ``*_results.json`` files written by lmms-eval.
    """
    parts = []
    for path in results_files:
        raw = json.loads(path.read_text(encoding="utf-8"))
        for task, metrics in sorted((raw.get("results") or {}).items()):
            failed = metrics.get(f"{FAILED_METRIC},none") if isinstance(metrics, dict) else None
            if not isinstance(failed, (int, float)) or failed <= 0:
                continue
            counts = (raw.get("n-samples") or {}).get(task) or {}
            total = counts.get("effective", counts.get("original", "?"))
            parts.append(f"{int(failed)} of {total} generations failed in {task}")
    if not parts:
        return None
    return "; ".join(parts) + " (the model backend did not answer; see the lmms-eval log, fix it and rerun)"


def report_process_results(doc: dict, results: list) -> dict:
    """:func:`medbench.lmms.report.process_results`, with failed generations counted instead of scored."""
    from medbench.lmms import report

    return unless_failed(report.process_results)(doc, results)


def chest_xray_process_results(doc: dict, results: list) -> dict:
    """:func:`medbench.lmms.report.process_results_chest_xray`, with failed generations counted instead of scored."""
    from medbench.lmms import report

    return unless_failed(report.process_results_chest_xray)(doc, results)
