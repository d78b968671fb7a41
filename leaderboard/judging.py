"""Judge scores recomputed from what the judge said, not taken on trust.

A judge score is a formula over the judge's logged answers: completeness and hallucination over the
per-fact NLI labels (and the raw NLI answer they were parsed from, where it was logged), fabrication over
the labels of the output's own claims, ``severe`` over the graded severity. The judge writes all of them
next to each score (``medbench judge`` verdict files, the sidecar of a run judged inside lmms-eval, the
per-sample items of the log), so the board recomputes every per-sample value with the functions the judge
itself uses (:mod:`medbench.metrics.facts`: :func:`~medbench.metrics.facts.fact_scores`,
:func:`~medbench.metrics.facts.parse_labels`, :func:`~medbench.metrics.facts.scores_from_labels`,
:func:`~medbench.metrics.facts.fabrication_from_labels`, :func:`~medbench.metrics.facts.severe_from_grade`).

* A value that does not follow from its labels, or labels that are not what the logged answer says, is
  tampering.
* A scored sample without the judge's answer (no labels, no grade) cannot be checked: the metric is shown
  *unverified*, never as recomputed, and its judge is shown as claimed, not recorded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medbench.metrics.facts import (
    LABELS,
    fabrication_from_labels,
    fact_scores,
    parse_labels,
    scores_from_labels,
    severe_from_grade,
)

from .recompute import VerificationError, close

SEVERITIES = ("none", "minor", "severe")


def _labels(value: Any) -> list[str] | None:
    if isinstance(value, list) and value and all(isinstance(label, str) and label in LABELS for label in value):
        return value
    return None


def expected_values(metric: str, evidence: Mapping[str, Any], scoring: str | None) -> list[float] | None:
    """The values ``metric`` may take for one sample given the judge's logged answers (``None``: no evidence).

    Args:
        metric: ``completeness``, ``hallucination``, ``fabrication`` or ``severe``.
        evidence: The sample's judge details (``facts``, ``labels``, ``nli_answer``, ``claims``,
            ``claim_labels``, ``severity``).
        scoring: The judge's recorded scoring mode (``tolerant``/``authors``); ``None`` when the judge did not
            record it (runs judged inside lmms-eval): either mode's value is accepted.

    Raises:
        VerificationError: The logged labels are not the labels of the logged answer.
    """
    if metric in ("completeness", "hallucination"):
        facts = evidence.get("facts")
        n_facts = len(facts) if isinstance(facts, list) else None
        labels = evidence.get("labels")
        answer = evidence.get("nli_answer")
        pick = 0 if metric == "completeness" else 1
        if isinstance(answer, str):
            parsed = parse_labels(answer)
            if labels is not None and parsed != labels:
                raise VerificationError("its logged labels are not the labels of its logged judge answer")
            n = n_facts if n_facts is not None else len(parsed or [])
            modes = {"tolerant": (False,), "authors": (True,)}.get(scoring or "", (False, True))
            values = []
            for case_sensitive in modes:
                scores = fact_scores(answer, n, case_sensitive=case_sensitive)
                values.append((scores.completeness, scores.hallucination)[pick])
            return values
        checked = _labels(labels)
        if checked is None:
            return None
        if n_facts is not None and n_facts != len(checked):
            raise VerificationError(f"it logs {len(checked)} labels for {n_facts} facts")
        return [scores_from_labels(checked)[pick]]
    if metric == "fabrication":
        claim_labels = evidence.get("claim_labels")
        if isinstance(claim_labels, list) and all(isinstance(label, str) for label in claim_labels):
            claims = evidence.get("claims")
            if isinstance(claims, list) and len(claims) != len(claim_labels):
                raise VerificationError(f"it logs {len(claim_labels)} labels for {len(claims)} claims")
            return [fabrication_from_labels(claim_labels)]
        if evidence.get("claims") == []:
            return [0.0]  # no claims: nothing fabricated
        return None
    if metric == "severe":
        grade = evidence.get("severity")
        return [severe_from_grade(grade)] if grade in SEVERITIES else None
    return None


def verify_judge_metric(
    task: str,
    metric: str,
    values: Sequence[float | None],
    evidence: Sequence[Mapping[str, Any]],
    item_ids: Sequence[str],
    scoring: str | None,
) -> str:
    """Check every scored value of a judge metric against the judge's logged answers.

    Args:
        task: Task name (messages).
        metric: The board's metric name (``judge_completeness``).
        values: Per-sample values (``None``: unscored).
        evidence: Per-sample judge details, aligned with ``values``.
        item_ids: Item ids, aligned (messages).
        scoring: The judge's recorded scoring mode.

    Returns:
        ``recomputed`` when every scored value follows from its logged answers, ``unverified`` when some
        scored value has no answers to check it against.

    Raises:
        VerificationError: A value that does not follow from its logged answers.
    """
    name = metric.removeprefix("judge_")
    unverifiable = 0
    for value, details, item in zip(values, evidence, item_ids, strict=False):
        if value is None:
            continue
        try:
            expected = expected_values(name, details, scoring)
        except VerificationError as problem:
            raise VerificationError(f"{task} {metric}: sample {item!r}: {problem}") from None
        if expected is None:
            unverifiable += 1
        elif not any(close(value, candidate) for candidate in expected):
            raise VerificationError(
                f"{task} {metric}: sample {item!r} logs {value} but its judge labels give {expected[0]:.6g}"
            )
    return "unverified" if unverifiable else "recomputed"
