"""Recompute every score of a run from its per-sample logs: the leaderboard's tampering check.

A submission's numbers are only as good as the per-sample answers behind them. For each metric the
:data:`REGISTRY` says how the leaderboard re-derives it from the logged answers and references, and the
run is rejected when the results file or the per-sample values disagree with that re-derivation:

* ``sample``: the per-sample value is recomputed with medbench's own scoring (the same function the task
  YAML names) and compared with the logged value; the task score must be their mean.
* ``sum``: recomputed per sample like ``sample``; the task score is their sum (question counts).
* ``corpus``: the task score is recomputed over all samples at once (corpus BLEU, CIDEr); CIDEr's
  per-sample values are compared as well.
* ``java``: a corpus metric that needs a Java runtime (METEOR); recomputed when ``java`` is on PATH,
  otherwise only checked for internal consistency and marked *unverified* on the board.
* ``consistency``: metrics that cannot be recomputed offline (BERTScore needs a model, the LLM judge an
  API); the task score must equal the mean of the logged per-sample values, so editing the aggregate alone
  is caught, and the board shows the metric as *consistent* rather than *recomputed*.
* ``count``: ``judge_unscored``: the task score must equal the number of samples logged as unscored.
* ``none``: corpus-level scores from a model the board cannot run and with no per-sample values to
  check against (CheXbert-F1 is an F1 over all reports' extracted labels); shown as *unverified*.

A metric present in a task YAML but missing here gets the ``consistency`` rule when its aggregation is
``mean`` and is shown as unverified otherwise; ``tests/leaderboard`` fails when a YAML metric has no
entry, so a new metric gets a deliberate rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

CheckKind = Literal["sample", "sum", "corpus", "java", "consistency", "count", "none"]
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
        memo: Per-sample cache of recomputed records (one scorer call serves several metrics).
    """

    doc_id: int
    item_id: str
    prediction: str
    target: str
    answer_type: str | None
    record: dict[str, Any]
    memo: dict[str, Any] = field(default_factory=dict)


class VerificationError(Exception):
    """A score does not match what the per-sample logs recompute; the message names task, metric and sample."""


def _vqa_record(sample: Sample) -> dict[str, Any]:
    # The scorer the VQA task YAMLs name: recomputing through it keeps the leaderboard in step with the tasks.
    if "vqa" not in sample.memo:
        from medbench.lmms.vqa import process_results

        doc = {"answer": sample.target, "answer_type": sample.answer_type, "id": sample.item_id, "source": None}
        sample.memo["vqa"] = process_results(doc, [sample.prediction])
    return sample.memo["vqa"]


def _vqa_metric(name: str) -> Callable[[Sample], float | None]:
    def recompute(sample: Sample) -> float | None:
        value = _vqa_record(sample).get(name)
        return None if value is None else float(value)

    recompute.__name__ = f"vqa_{name}"
    return recompute


def _rouge_l(sample: Sample) -> float:
    from medbench.metrics.text import rouge_l

    return rouge_l(sample.prediction, sample.target)


def _bleu4_sentence(sample: Sample) -> float:
    from medbench.metrics.text import sentence_bleu4

    return sentence_bleu4(sample.prediction, sample.target)


def _corpus_bleu(order: int) -> Callable[[Sequence[Sample]], tuple[float, None]]:
    def recompute(samples: Sequence[Sample]) -> tuple[float, None]:
        from medbench.metrics.text import corpus_bleu

        return corpus_bleu([s.prediction for s in samples], [s.target for s in samples])[f"bleu{order}"], None

    recompute.__name__ = f"corpus_bleu{order}"
    return recompute


def _cider(samples: Sequence[Sample]) -> tuple[float, list[float]]:
    from medbench.metrics.text import cider

    score, per_sample = cider([s.prediction for s in samples], [s.target for s in samples])
    return score, list(per_sample)


def _meteor(samples: Sequence[Sample]) -> tuple[float, list[float]]:
    from medbench.metrics.text import meteor

    score, per_sample = meteor([s.prediction for s in samples], [s.target for s in samples])
    return score, list(per_sample)


@dataclass(frozen=True)
class MetricRule:
    """How one metric is re-derived from the per-sample logs.

    Attributes:
        kind: The check (see the module docstring).
        per_sample: Recomputes one sample's value (``None``: the metric does not apply to that sample).
        corpus: Recomputes the task score (and per-sample values when the metric has them).
        mean_of_samples: The task score is the mean of the per-sample values, so a bootstrap over samples
            gives its confidence interval and samples can be compared pairwise between runs.
    """

    kind: CheckKind
    per_sample: Callable[[Sample], float | None] | None = None
    corpus: Callable[[Sequence[Sample]], tuple[float, list[float] | None]] | None = None
    mean_of_samples: bool = True


_VQA_MEAN = ("overall", "closed_accuracy", "open_recall", "exact_match", "token_f1", "closed_unparsed")
_JUDGE = ("judge_completeness", "judge_hallucination", "judge_fabrication", "judge_severe")

REGISTRY: dict[str, MetricRule] = {
    **{name: MetricRule("sample", per_sample=_vqa_metric(name)) for name in _VQA_MEAN},
    "n_closed": MetricRule("sum", per_sample=_vqa_metric("n_closed"), mean_of_samples=False),
    "n_open": MetricRule("sum", per_sample=_vqa_metric("n_open"), mean_of_samples=False),
    "rouge_l": MetricRule("sample", per_sample=_rouge_l),
    "bleu4_sentence": MetricRule("sample", per_sample=_bleu4_sentence),
    **{f"bleu{n}": MetricRule("corpus", corpus=_corpus_bleu(n), mean_of_samples=False) for n in range(1, 5)},
    "cider": MetricRule("corpus", corpus=_cider),
    "meteor": MetricRule("java", corpus=_meteor, mean_of_samples=False),
    "bertscore_f1": MetricRule("consistency"),
    **{name: MetricRule("consistency") for name in _JUDGE},
    "judge_unscored": MetricRule("count", mean_of_samples=False),
    # Chest X-ray clinical metrics (medbench.metrics.clinical): RadGraph-F1 is a mean of per-report values,
    # CheXbert-F1 a corpus F1 over extracted labels; both need model weights the board does not have.
    **{f"radgraph_f1_{level}": MetricRule("consistency") for level in ("partial", "simple", "complete")},
    **{
        f"chexbert_f1_{avg}_{n}": MetricRule("none", mean_of_samples=False)
        for avg in ("micro", "macro")
        for n in (14, 5)
    },
}


def rule_for(metric: str, aggregation: str | None) -> MetricRule | None:
    """The rule for ``metric``; metrics outside the registry get a consistency check when mean-aggregated.

    Args:
        metric: Metric name from the task YAML.
        aggregation: The YAML's ``aggregation`` (``"mean"`` or a ``!function`` reference).

    Returns:
        The rule, or ``None`` when the metric can be neither recomputed nor checked (shown unverified).
    """
    if metric in REGISTRY:
        return REGISTRY[metric]
    return MetricRule("consistency") if aggregation == "mean" else None


def logged_value(record: dict[str, Any], metric: str) -> float | None:
    """The per-sample value lmms-eval logged for ``metric``: a number, or a deferred item's ``score``."""
    value = record.get(metric)
    if isinstance(value, dict):
        value = value.get("score")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def close(a: float, b: float) -> bool:
    """Equal up to floating-point noise (NaN equals NaN: an empty mean logged as NaN stays NaN)."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=REL_TOLERANCE, abs_tol=ABS_TOLERANCE)


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


@dataclass
class MetricCheck:
    """A verified metric: its per-sample values (aligned with the samples) and how it was checked."""

    per_sample: list[float | None]
    verdict: Verdict


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
) -> MetricCheck:
    """Check one task score against the per-sample logs.

    Args:
        task: Task name (for messages).
        metric: Metric name.
        rule: Its rule (``None``: nothing can be checked).
        samples: The task's logged samples, in log order.
        aggregate: The task score the results file reports.
        external: Per-sample values from another file (``medbench judge`` verdicts) instead of the log.

    Returns:
        The per-sample values and the verdict.

    Raises:
        VerificationError: A per-sample value or the task score does not match.
    """
    logged = list(external) if external is not None else [logged_value(s.record, metric) for s in samples]
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
        for sample, value in zip(samples, logged):
            expected = rule.per_sample(sample)
            if _differs(expected, value):
                raise VerificationError(
                    f"{task} {metric}: sample {sample.item_id!r} (doc_id {sample.doc_id}) logs {value} but its answer scores {expected}"
                )
        present = [v for v in logged if v is not None]
        expected_total = math.fsum(present) if kind == "sum" else _mean(present)
        _compare_aggregate(task, metric, aggregate, expected_total, "the per-sample values")
        return MetricCheck(logged, "recomputed")
    if kind in ("corpus", "java"):
        assert rule.corpus is not None
        expected_score, expected_samples = rule.corpus(samples)
        if expected_samples is not None:
            for sample, value, expected in zip(samples, logged, expected_samples):
                if value is None or not close(expected, value):
                    raise VerificationError(
                        f"{task} {metric}: sample {sample.item_id!r} (doc_id {sample.doc_id}) logs {value} but its answer scores {expected}"
                    )
        _compare_aggregate(task, metric, aggregate, expected_score, "the logged answers")
        return MetricCheck(logged if expected_samples is not None else [None] * len(samples), "recomputed")
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


def _differs(expected: float | None, logged: float | None) -> bool:
    if expected is None or logged is None:
        return expected is not logged
    return not close(expected, logged)


def _compare_aggregate(task: str, metric: str, reported: float, expected: float | None, source: str) -> None:
    if expected is None or not close(reported, expected):
        shown = "nothing" if expected is None else f"{expected:.6g}"
        raise VerificationError(f"{task} {metric}: the results file reports {reported:.6g} but {source} give {shown}")
