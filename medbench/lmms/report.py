"""Scoring of the long-form tasks (MIMIC-CXR findings, AMBOSS descriptions) inside lmms-eval.

The record of each document is a loop over the kind's metrics in the catalogue
(:func:`medbench.lmms.records.score`). Two kinds of metric, because lmms-eval gives ``process_results`` one
document at a time:

* **Per-sample metrics** (``rouge_l``, ``bleu4_sentence``) are computed in :func:`process_results` and
  mean-aggregated, so lmms-eval reports a standard error for each.
* **Deferred metrics** need the whole test set or a batch: corpus BLEU-1..4, CIDEr (document frequencies
  over the references), METEOR (one Java process), BERTScore (batched forward passes) and the LLM judge
  (hundreds of API calls that must run concurrently, not one blocking call per document).
  :func:`process_results` returns a :class:`Deferred` item for each; the metric's aggregation function
  (generated below from the catalogue, one ``def`` per metric) receives all items of the task and runs the
  metric's declared corpus function over them (:func:`aggregate`). The judge's aggregation runs
  *every* enabled judge part for all samples in one concurrent batch (bounded by
  ``MEDBENCH_JUDGE_CONCURRENCY``) and memoises the report, so the sibling judge metrics cost nothing; the
  on-disk cache makes a re-run free as well.

A :class:`Deferred` item is a small ``dict`` (``{"id": ...}``) carrying the texts as attributes. The
aggregation writes each sample's outcome into it (``score`` when scored, ``status``, judge labels...). In
a single-process run lmms-eval writes these same objects to the ``--log_samples`` file afterwards, so the
per-sample judge verdicts land there, and ``score`` feeds lmms-eval's CLT standard error
(``<metric>_stderr_clt``). Samples the judge could not score carry no ``score`` and are left out of the
mean; ``judge_unscored`` counts them.

Metrics whose requirements are missing are *omitted*, with one log line saying what to set: METEOR without
Java (or with ``MEDBENCH_METEOR=off``), BERTScore without ``MEDBENCH_BERTSCORE_MODEL``, judge metrics without ``MEDBENCH_JUDGE_MODEL``.

Chest X-ray reports (``medbench_mimic_cxr``, through :func:`process_results_chest_xray`) add the clinical
metrics of :mod:`medbench.metrics.clinical` — CheXbert-F1 and RadGraph-F1, deferred as well (one batched
pass of the extractor over all reports) — when their local weights are configured
(``MEDBENCH_CHEXBERT_WEIGHTS``, ``MEDBENCH_RADGRAPH_WEIGHTS``); otherwise they are omitted the same way.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medbench.errors import MedbenchError
from medbench.judge import parts as judge_parts
from medbench.lmms.records import Deferred, score, warn_once
from medbench.metrics import clinical, text
from medbench.metrics.registry import DETAIL_KEY, METRICS, Answer, CorpusResult
from medbench.metrics.text import MetricUnavailable
from medbench.results import JudgeIdentity, SampleDetail

logger = logging.getLogger("medbench.report")


# lmms-eval's usage tracker. Its evaluator imports it, so inside an evaluation it is loaded; elsewhere (unit tests,
# `medbench judge`) there is no evaluation to report to, and importing lmms-eval would cost ~20 s for nothing.
_USAGE_MODULE = "lmms_eval.models.model_utils.usage_metrics"


def _current_task() -> str | None:
    # lmms-eval sets the task name before its process_results phase (for judge usage attribution).
    return getattr(sys.modules.get(_USAGE_MODULE), "_CURRENT_TASK_CONTEXT", None)


def judge_unavailable(family: str) -> str | None:
    """Why the judge family ``judge`` or ``judge:<part>`` cannot run here (``None``: it can).

    The judge runs when it is configured (``MEDBENCH_JUDGE_MODEL`` ...); a part runs when it is also among
    ``MEDBENCH_JUDGE_PARTS`` (default: every part).
    """
    from medbench.judge.config import JudgeConfig

    try:
        configured = JudgeConfig.from_env() is not None
    except MedbenchError as error:
        return f"judge metrics skipped: {error}"
    if not configured:
        names = ", ".join(m.column for m in judge_parts.METRIC_LIST)
        return (
            f"judge metrics skipped ({names}): "
            "set MEDBENCH_JUDGE_MODEL and MEDBENCH_JUDGE_API_KEY or MEDBENCH_JUDGE_BASE_URL to enable them"
        )
    part = family.partition(":")[2]
    if part and part not in judge_parts.enabled_parts():
        return f"judge part {part} skipped: not in {judge_parts.ENV_PARTS}"
    return None


def _record(kind: str, doc: dict, results: list[str]) -> dict:
    prediction = results[0] if results else ""
    reference = doc["reference"]
    facts = doc.get("facts")
    task = _current_task()
    sample_id = str(doc["id"])
    record = score(kind, Answer(prediction, reference), lambda: Deferred(sample_id, prediction, reference, facts, task))  # type: ignore[arg-type]
    words = {"prediction_words": len(prediction.split()), "reference_words": len(reference.split())}
    # facts are logged so `medbench judge` can re-score from the sample logs alone.
    detail = SampleDetail(id=doc["id"], source=doc.get("source"), facts=tuple(facts) if facts is not None else None, metadata=words)
    record[DETAIL_KEY] = detail.to_json()
    return record


def process_results(doc: dict, results: list[str]) -> dict:
    """Score one generated text against the document's reference (deferred metrics are placeholders)."""
    return _record("report", doc, results)


def process_results_chest_xray(doc: dict, results: list[str]) -> dict:
    """:func:`process_results` plus CheXbert-F1 and RadGraph-F1 (chest X-ray reports only).

    Each family is added when its weights are configured and present; otherwise it is left out with one
    log line saying what to download and which variable to set, and the other metrics run as usual.
    """
    return _record("chest_xray", doc, results)


# --------------------------------------------------------------------------------------- aggregation

_memo: dict[tuple[str, str], Any] = {}
_memo_lock = threading.Lock()


def _content_key(items: Sequence[Deferred]) -> str:
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps([item.get("id"), item.prediction, item.reference, item.facts], ensure_ascii=False).encode())
    return digest.hexdigest()


def _memoised(kind: str, items: Sequence[Deferred], compute: Callable[[], Any]) -> Any:
    key = (kind, _content_key(items))
    with _memo_lock:
        if key in _memo:
            return _memo[key]
    value = compute()
    with _memo_lock:
        _memo[key] = value
    return value


def _texts(items: Sequence[Deferred]) -> tuple[list[str], list[str]]:
    return [item.prediction for item in items], [item.reference for item in items]


def bertscore_scores(items: Sequence[Deferred], name: str = "bertscore_f1") -> CorpusResult:
    """Mean BERTScore F1 with the local model of ``MEDBENCH_BERTSCORE_MODEL``, and each report's F1.

    Raises:
        MetricUnavailable: The model is not configured or not found.
    """
    settings = text.BertScoreSettings.from_env()
    values = _memoised(f"bertscore:{settings}", items, lambda: text.bertscore_f1(*_texts(items), settings))
    return (sum(values) / len(values) if values else None), values


# --------------------------------------------------------------------------------------------- judge

_runner: Any = None
_runner_lock = threading.Lock()


def _judge_runner() -> Any:
    global _runner
    from medbench.judge.config import JudgeConfig
    from medbench.judge.runner import JudgeRunner

    with _runner_lock:
        config = JudgeConfig.from_env()
        if config is None:
            return None
        if _runner is None or _runner.config != config:
            _runner = JudgeRunner(config)
        return _runner


def _lmms_usage_hook(model: str, task: str | None) -> Callable[[int, int], None] | None:
    """Report each live judge call to lmms-eval's usage tracker (its results gain a ``usage`` block)."""
    log_usage = getattr(sys.modules.get(_USAGE_MODULE), "log_usage", None)
    if log_usage is None:
        return None

    def hook(prompt_tokens: int, completion_tokens: int) -> None:
        log_usage(model, task_name=task, input_tokens=prompt_tokens, output_tokens=completion_tokens, source="judge")

    return hook


def _judge_report(items: Sequence[Deferred], args: Any = None) -> Any:
    """The judge's verdicts on every sample of the task, all enabled parts at once (memoised)."""
    from medbench.judge.runner import JudgeItem

    def compute() -> Any:
        runner = _judge_runner()
        if runner is None:
            return None
        judge_items = [JudgeItem(id=str(i["id"]), prediction=i.prediction, reference=i.reference, facts=i.facts) for i in items]
        task = next((i.task for i in items if i.task), None)
        try:
            report = runner.judge(judge_items, judge_parts.enabled_parts(), on_usage=_lmms_usage_hook(runner.config.model, task))
        except MedbenchError as error:
            # A bad key or unknown model must not throw away the rest of the evaluation.
            logger.error("medbench: judge metrics failed for every sample: %s", error)
            return error
        _write_sidecar(report, items, args)
        return report

    return _memoised("judge", items, compute)


def _write_sidecar(report: Any, items: Sequence[Deferred], args: Any) -> None:
    """Judge identity, usage and per-sample verdicts next to lmms-eval's output (it has no slot for them)."""
    task = next((i.task for i in items if i.task), None) or "task"
    summary = ", ".join(
        f"{name}={stats['mean']:.4f} ({stats['failed']} unscored)" for name, stats in report.summary.items() if stats["mean"] is not None
    )
    logger.warning(
        "medbench judge on %s: %s; model %s, prompts %s; %d requests, %d cache hits",
        task, summary, report.judge["model"], ",".join(p["id"] for p in report.judge["prompts"].values()),
        report.usage["requests"], report.usage["cache_hits"],
    )
    output = getattr(args, "output_path", None)
    if not output:
        return
    folder = Path(output) / "medbench_judge"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H-%M-%S")
    document = {
        "task": task,
        "judge": report.judge,
        "summary": report.summary,
        "usage": report.usage,
        "samples": [verdict.as_dict() for verdict in report.samples],
    }
    path = folder / f"{stamp}_{task}.json"
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def judge_scores(items: Sequence[Deferred], name: str, args: Any = None) -> CorpusResult:
    """Mean judge score ``name`` (``judge_completeness`` ...) over the samples it scored.

    Writes each sample's outcome into its logged item: ``score`` when scored, ``status``, the judge's identity
    and the verdict details of this metric (:attr:`medbench.judge.parts.JudgeMetric.details`). Samples the
    judge could not score carry no ``score`` and are left out of the mean.
    """
    judged = judge_parts.COLUMNS[name]
    report = _judge_report(items, args)
    if report is None or isinstance(report, MedbenchError):
        reason = "judge not configured" if report is None else f"judge error: {report}"
        for item in items:
            item["status"] = reason
        return None, None
    identity = JudgeIdentity.of_report(report.judge).to_json()
    values = []
    for item, verdict in zip(items, report.samples, strict=True):
        item["judge"] = identity
        for key in judged.details:
            if key in verdict.details:
                item[key] = verdict.details[key]
        if judged.name in verdict.scores:
            item["score"] = verdict.scores[judged.name]
            item["status"] = "scored"
            values.append(verdict.scores[judged.name])
        else:
            item["status"] = "unscored: " + verdict.failures.get(judged.name, "not requested")
    return (sum(values) / len(values) if values else None), None


def judge_unscored_count(items: Sequence[Deferred], name: str = judge_parts.UNSCORED, args: Any = None) -> CorpusResult:
    """Number of samples missing at least one enabled judge score (failures after retries)."""
    report = _judge_report(items, args)
    if report is None or isinstance(report, MedbenchError):
        return float(len(items)), None
    count = 0
    for item, verdict in zip(items, report.samples, strict=True):
        item["failures"] = verdict.failures
        item["score"] = float(bool(verdict.failures))
        count += bool(verdict.failures)
    return float(count), None


# ------------------------------------------------------------------------------- clinical (chest X-ray)


def chexbert_scores(items: Sequence[Deferred], name: str) -> CorpusResult:
    """CheXbert-F1 ``name`` over all reports; the labels behind it go into the sample logs.

    Raises:
        MetricUnavailable: Weights not configured or not found.
    """
    settings = clinical.CheXbertSettings.from_env()
    result = _memoised(f"chexbert:{settings}", items, lambda: clinical.chexbert_f1(*_texts(items), settings))
    # Corpus-level F1: no per-sample score (a CLT standard error of it would be meaningless).
    for item, reference, prediction in zip(items, result.reference_labels, result.prediction_labels, strict=True):
        item["reference_positive"] = clinical.positive_observations(reference)
        item["prediction_positive"] = clinical.positive_observations(prediction)
    return result.scores[name], None


def radgraph_scores(items: Sequence[Deferred], name: str) -> CorpusResult:
    """RadGraph-F1 ``name`` (mean over reports) and each report's value; entities go into the sample logs.

    Raises:
        MetricUnavailable: Weights not configured or not found.
    """
    settings = clinical.RadGraphSettings.from_env()
    result = _memoised(f"radgraph:{settings}", items, lambda: clinical.radgraph_f1(*_texts(items), settings))
    level = name.removeprefix("radgraph_f1_")
    for item, (predicted, reference) in zip(items, result.entities, strict=True):
        item["entities"] = {"prediction": predicted, "reference": reference}
    # The metric is the mean of the per-sample values: lmms-eval's CLT stderr applies.
    return result.scores[name], [per_sample[level] for per_sample in result.per_sample]


# ------------------------------------------------------------------------------ aggregation, one per metric


def aggregate(name: str, items: list[Deferred], args: Any = None) -> float | None:
    """Run metric ``name``'s corpus function over the task's items; its per-sample values become ``score``.

    Args:
        name: A metric declared with ``aggregation="function"``.
        items: lmms-eval's per-sample values of the metric (the :class:`Deferred` placeholders).
        args: lmms-eval's run arguments (the judge writes its sidecar next to the output).

    Returns:
        The task score; ``None`` when the metric cannot run after all (logged once).
    """
    metric = METRICS[name]
    function = metric.corpus_function
    assert function is not None, f"{name} has no corpus function"
    try:
        if "args" in inspect.signature(function).parameters:
            value, per_sample = function(items, name, args=args)
        else:
            value, per_sample = function(items, name)
    except MetricUnavailable as error:
        warn_once(str(error), str(error))
        return None
    if per_sample is not None:
        for item, sample_value in zip(items, per_sample, strict=True):
            item["score"] = sample_value
    return value


# The task YAMLs name these (``aggregation: !function medbench.lmms.report.<metric>``); lmms-eval passes
# ``args=`` only to aggregations that declare it.
# BEGIN generated:aggregations (python -m medbench.docsgen writes this block from medbench.metrics.registry)
def bleu1(items: list[Deferred]) -> float | None:
    """Corpus BLEU-1 (coco-caption), higher is better."""
    return aggregate("bleu1", items)


def bleu2(items: list[Deferred]) -> float | None:
    """Corpus BLEU-2 (coco-caption), higher is better."""
    return aggregate("bleu2", items)


def bleu3(items: list[Deferred]) -> float | None:
    """Corpus BLEU-3 (coco-caption), higher is better."""
    return aggregate("bleu3", items)


def bleu4(items: list[Deferred]) -> float | None:
    """Corpus BLEU-4 (coco-caption), higher is better."""
    return aggregate("bleu4", items)


def meteor(items: list[Deferred]) -> float | None:
    """METEOR 1.5 corpus score (needs Java), higher is better."""
    return aggregate("meteor", items)


def cider(items: list[Deferred]) -> float | None:
    """CIDEr, mean over reports of scores with IDF from all test references (0-10), higher is better."""
    return aggregate("cider", items)


def bertscore_f1(items: list[Deferred]) -> float | None:
    """BERTScore F1 with a local model, higher is better."""
    return aggregate("bertscore_f1", items)


def judge_completeness(items: list[Deferred], args: Any = None) -> float | None:
    """Share of reference facts the output states: (E + 0.5 PE) / n (LLM judge (docs/judge.md)), higher is better."""
    return aggregate("judge_completeness", items, args)


def judge_hallucination(items: list[Deferred], args: Any = None) -> float | None:
    """Share of reference facts the output contradicts: C / n (LLM judge (docs/judge.md)), lower is better."""
    return aggregate("judge_hallucination", items, args)


def judge_fabrication(items: list[Deferred], args: Any = None) -> float | None:
    """Share of output claims the reference does not support: (N + C) / m (LLM judge (docs/judge.md)), lower is better."""
    return aggregate("judge_fabrication", items, args)


def judge_severe(items: list[Deferred], args: Any = None) -> float | None:
    """Share of outputs whose worst error is severe (LLM judge (docs/judge.md)), lower is better."""
    return aggregate("judge_severe", items, args)


def judge_unscored(items: list[Deferred], args: Any = None) -> float | None:
    """Samples missing a judge score after retries, lower is better."""
    return aggregate("judge_unscored", items, args)


def chexbert_f1_micro_14(items: list[Deferred]) -> float | None:
    """CheXbert-F1, micro-averaged over 14 observations, higher is better."""
    return aggregate("chexbert_f1_micro_14", items)


def chexbert_f1_macro_14(items: list[Deferred]) -> float | None:
    """CheXbert-F1, macro-averaged over 14 observations, higher is better."""
    return aggregate("chexbert_f1_macro_14", items)


def chexbert_f1_micro_5(items: list[Deferred]) -> float | None:
    """CheXbert-F1, micro-averaged over 5 observations, higher is better."""
    return aggregate("chexbert_f1_micro_5", items)


def chexbert_f1_macro_5(items: list[Deferred]) -> float | None:
    """CheXbert-F1, macro-averaged over 5 observations, higher is better."""
    return aggregate("chexbert_f1_macro_5", items)


def radgraph_f1_partial(items: list[Deferred]) -> float | None:
    """RadGraph-F1 (partial), mean over reports, higher is better."""
    return aggregate("radgraph_f1_partial", items)


def radgraph_f1_simple(items: list[Deferred]) -> float | None:
    """RadGraph-F1 (simple), mean over reports, higher is better."""
    return aggregate("radgraph_f1_simple", items)


def radgraph_f1_complete(items: list[Deferred]) -> float | None:
    """RadGraph-F1 (complete), mean over reports, higher is better."""
    return aggregate("radgraph_f1_complete", items)
# END generated:aggregations
