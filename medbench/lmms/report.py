"""Scoring of the long-form tasks (MIMIC-CXR findings, AMBOSS descriptions) inside lmms-eval.

Two kinds of metric, because lmms-eval gives ``process_results`` one document at a time:

* **Per-sample metrics** (``rouge_l``, ``bleu4_sentence``) are computed in :func:`process_results` and
  mean-aggregated, so lmms-eval reports a standard error for each.
* **Deferred metrics** need the whole test set or a batch: corpus BLEU-1..4, CIDEr (document frequencies
  over the references), METEOR (one Java process), BERTScore (batched forward passes) and the LLM judge
  (hundreds of API calls that must run concurrently, not one blocking call per document).
  :func:`process_results` returns a :class:`Deferred` item for each; the metric's aggregation function
  receives all items of the task and computes the score over them at once. The judge's aggregation runs
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
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from medbench.errors import MedbenchError
from medbench.metrics import clinical, text
from medbench.metrics.registry import METRICS, REPORT_METRICS, Metric
from medbench.metrics.text import MetricUnavailable, rouge_l, sentence_bleu4

logger = logging.getLogger("medbench.report")

ENV_JUDGE_PARTS = "MEDBENCH_JUDGE_PARTS"
# METEOR's Java start-up costs seconds once per process: worth it on a real run, not on a quick check.
ENV_METEOR = "MEDBENCH_METEOR"
JUDGE_PARTS_DEFAULT = ("nli", "fabrication", "severity")
# From the declarations: a judge metric's family is "judge:<part>"; the always-on corpus metrics have none.
JUDGE_METRIC_PART = {
    m.name: m.family.split(":", 1)[1] for m in REPORT_METRICS if m.family and m.family.startswith("judge:")
}
JUDGE_UNSCORED = "judge_unscored"
CORPUS_METRICS = tuple(m.name for m in REPORT_METRICS if m.aggregation == "function" and m.family is None)


class Deferred(dict):
    """A per-sample placeholder for a metric computed over the whole task in its aggregation.

    The dict content is what lmms-eval logs per sample (``id``, later ``score``/``status``/details); the
    texts ride along as attributes so they are not duplicated into the sample logs once per metric.
    """

    def __init__(self, sample_id: str, prediction: str, reference: str, facts: Sequence[str] | None = None, task: str | None = None) -> None:
        super().__init__(id=sample_id)
        self.prediction = prediction
        self.reference = reference
        self.facts = tuple(facts) if facts is not None else None
        self.task = task


_warned: set[str] = set()
_warn_lock = threading.Lock()


def _warn_once(key: str, message: str) -> None:
    with _warn_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning("medbench: %s", message)


def _current_task() -> str | None:
    # lmms-eval sets the task name before its process_results phase (for judge usage attribution).
    try:
        from lmms_eval.models.model_utils import usage_metrics
    except ImportError:
        return None
    return getattr(usage_metrics, "_CURRENT_TASK_CONTEXT", None)


def judge_parts(env: dict[str, str] | None = None) -> tuple[str, ...]:
    """Judge parts enabled for the long-form tasks (``MEDBENCH_JUDGE_PARTS``, default all three).

    Raises:
        MedbenchError: An unknown part name.
    """
    raw = (os.environ if env is None else env).get(ENV_JUDGE_PARTS, "").strip()
    if not raw:
        return JUDGE_PARTS_DEFAULT
    parts = tuple(part.strip() for part in raw.split(",") if part.strip())
    unknown = sorted(set(parts) - set(JUDGE_PARTS_DEFAULT))
    if unknown:
        raise MedbenchError(f"{ENV_JUDGE_PARTS}={raw!r}: unknown part(s) {unknown}; use a subset of {','.join(JUDGE_PARTS_DEFAULT)}")
    return parts


def _judge_enabled() -> bool:
    from medbench.judge.config import JudgeConfig

    try:
        configured = JudgeConfig.from_env() is not None
    except MedbenchError as error:
        _warn_once("judge-config", f"judge metrics skipped: {error}")
        return False
    if not configured:
        _warn_once(
            "judge-off",
            "judge metrics skipped (judge_completeness, judge_hallucination, judge_fabrication, judge_severe): "
            "set MEDBENCH_JUDGE_MODEL and MEDBENCH_JUDGE_API_KEY or MEDBENCH_JUDGE_BASE_URL to enable them",
        )
    return configured


def process_results(doc: dict, results: list[str]) -> dict:
    """Score one generated text against the document's reference (deferred metrics are placeholders)."""
    prediction = results[0] if results else ""
    reference = doc["reference"]
    facts = doc.get("facts")
    task = _current_task()
    sample_id = str(doc["id"])

    def deferred() -> Deferred:
        return Deferred(sample_id, prediction, reference, facts, task)

    scores: dict[str, Any] = {
        "rouge_l": rouge_l(prediction, reference),
        "bleu4_sentence": sentence_bleu4(prediction, reference),
    }
    for metric in CORPUS_METRICS:
        scores[metric] = deferred()
    if os.environ.get(ENV_METEOR, "").strip().lower() == "off":
        _warn_once("meteor", f"METEOR skipped: {ENV_METEOR}=off")
    elif text.java_available():
        scores["meteor"] = deferred()
    else:
        _warn_once("meteor", "METEOR skipped: no 'java' on PATH; install a Java runtime (e.g. apt-get install default-jre-headless)")
    try:
        text.BertScoreSettings.from_env()
    except MetricUnavailable as error:
        _warn_once("bertscore", str(error))
    else:
        scores["bertscore_f1"] = deferred()
    if _judge_enabled():
        parts = judge_parts()
        for metric, part in JUDGE_METRIC_PART.items():
            if part in parts:
                scores[metric] = deferred()
        scores[JUDGE_UNSCORED] = deferred()
    detail: dict[str, Any] = {
        "id": doc["id"],
        "source": doc.get("source"),
        "prediction_words": len(prediction.split()),
        "reference_words": len(reference.split()),
    }
    if facts is not None:
        detail["facts"] = list(facts)  # so `medbench judge` can re-score from the sample logs alone
    scores["medbench_detail"] = detail
    return scores


def process_results_chest_xray(doc: dict, results: list[str]) -> dict:
    """:func:`process_results` plus CheXbert-F1 and RadGraph-F1 (chest X-ray reports only).

    Each family is added when its weights are configured and present; otherwise it is left out with one
    log line saying what to download and which variable to set, and the other metrics run as usual.
    """
    scores = process_results(doc, results)
    prediction = results[0] if results else ""
    task = _current_task()
    families = (("chexbert", clinical.CheXbertSettings, clinical.CHEXBERT_METRICS),
                ("radgraph", clinical.RadGraphSettings, clinical.RADGRAPH_METRICS))
    for family, settings, metrics in families:
        try:
            settings.from_env()  # file checks only; the model loads in the aggregation
        except MetricUnavailable as error:
            _warn_once(family, str(error))
            continue
        for metric in metrics:
            scores[metric] = Deferred(str(doc["id"]), prediction, doc["reference"], doc.get("facts"), task)
    return scores


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


def _corpus_bleu(items: Sequence[Deferred]) -> dict[str, float]:
    return _memoised("bleu", items, lambda: text.corpus_bleu(*_texts(items)))


def _fill_scores(items: Sequence[Deferred], values: Sequence[float]) -> None:
    for item, value in zip(items, values):
        item["score"] = value


def _cider(items: list[Deferred]) -> float:
    """CIDEr (coco-caption, IDF from this test set's references; 0-10 scale), higher is better."""
    score, per_sample = _memoised("cider", items, lambda: text.cider(*_texts(items)))
    _fill_scores(items, per_sample)
    return score


def _meteor(items: list[Deferred]) -> float | None:
    """METEOR 1.5 corpus score (coco-caption, Java), higher is better; ``None`` if Java vanished."""
    try:
        score, per_sample = _memoised("meteor", items, lambda: text.meteor(*_texts(items)))
    except MetricUnavailable as error:
        _warn_once("meteor", str(error))
        return None
    _fill_scores(items, per_sample)
    return score


def _bertscore_f1(items: list[Deferred]) -> float | None:
    """Mean BERTScore F1 with the local model of ``MEDBENCH_BERTSCORE_MODEL``, higher is better."""
    try:
        settings = text.BertScoreSettings.from_env()
        values = _memoised(f"bertscore:{settings}", items, lambda: text.bertscore_f1(*_texts(items), settings))
    except MetricUnavailable as error:
        _warn_once("bertscore", str(error))
        return None
    _fill_scores(items, values)
    return sum(values) / len(values) if values else None


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
    try:
        from lmms_eval.models.model_utils.usage_metrics import log_usage
    except ImportError:
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
            report = runner.judge(judge_items, judge_parts(), on_usage=_lmms_usage_hook(runner.config.model, task))
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


def _judge_metric(items: list[Deferred], metric: str, args: Any, details: Iterable[str]) -> float | None:
    report = _judge_report(items, args)
    if report is None or isinstance(report, MedbenchError):
        reason = "judge not configured" if report is None else f"judge error: {report}"
        for item in items:
            item["status"] = reason
        return None
    ident = f"{report.judge['model']} " + " ".join(f"{p['id']}:{p['sha256'][:8]}" for p in report.judge["prompts"].values())
    values = []
    for item, verdict in zip(items, report.samples):
        item["judge"] = ident
        for key in details:
            if key in verdict.details:
                item[key] = verdict.details[key]
        if metric in verdict.scores:
            item["score"] = verdict.scores[metric]
            item["status"] = "scored"
            values.append(verdict.scores[metric])
        else:
            item["status"] = "unscored: " + verdict.failures.get(metric, "not requested")
    return sum(values) / len(values) if values else None


def _judge_unscored(items: list[Deferred], args: Any = None) -> float:
    """Number of samples missing at least one enabled judge score (failures after retries), lower is better."""
    report = _judge_report(items, args)
    if report is None or isinstance(report, MedbenchError):
        return float(len(items))
    count = 0
    for item, verdict in zip(items, report.samples):
        item["failures"] = verdict.failures
        item["score"] = float(bool(verdict.failures))
        count += bool(verdict.failures)
    return float(count)


# ------------------------------------------------------------------------------- clinical (chest X-ray)


def _chexbert_metric(items: list[Deferred], metric: str) -> float | None:
    try:
        settings = clinical.CheXbertSettings.from_env()
        result = _memoised(f"chexbert:{settings}", items, lambda: clinical.chexbert_f1(*_texts(items), settings))
    except MetricUnavailable as error:
        _warn_once("chexbert", str(error))
        return None
    # Corpus-level F1: no per-sample score (a CLT standard error of it would be meaningless); the labels
    # behind it go into the sample logs instead.
    for item, reference, prediction in zip(items, result.reference_labels, result.prediction_labels):
        item["reference_positive"] = clinical.positive_observations(reference)
        item["prediction_positive"] = clinical.positive_observations(prediction)
    return result.scores[metric]


def _radgraph_metric(items: list[Deferred], level: str) -> float | None:
    try:
        settings = clinical.RadGraphSettings.from_env()
        result = _memoised(f"radgraph:{settings}", items, lambda: clinical.radgraph_f1(*_texts(items), settings))
    except MetricUnavailable as error:
        _warn_once("radgraph", str(error))
        return None
    for item, per_sample, (predicted, reference) in zip(items, result.per_sample, result.entities):
        item["score"] = per_sample[level]  # the metric is the mean of these: lmms-eval's CLT stderr applies
        item["entities"] = {"prediction": predicted, "reference": reference}
    return result.scores[f"radgraph_f1_{level}"]


# ------------------------------------------------------------------ aggregation functions, one per metric
# The task YAMLs name ``medbench.lmms.report.<metric>`` for every metric declared with ``aggregation:
# function`` in medbench.metrics.registry; they are made here from the declarations, so a declared metric
# always has its function and no hand-kept wrapper can drift from it.

_JUDGE_DETAILS = {
    "completeness": ("facts_source", "facts", "labels"),
    "hallucination": (),
    "fabrication": ("claims", "claim_labels"),
    "severe": ("severity", "severity_reason"),
}


def _aggregation_function(metric: Metric) -> Callable[..., float | None]:
    name = metric.name
    if name.startswith("bleu"):

        def aggregate(items: list[Deferred]) -> float | None:
            return _corpus_bleu(items)[name]

    elif name in ("cider", "meteor", "bertscore_f1"):
        aggregate = {"cider": _cider, "meteor": _meteor, "bertscore_f1": _bertscore_f1}[name]
    elif name == JUDGE_UNSCORED:
        aggregate = _judge_unscored
    elif name.startswith("judge_"):
        part = name.removeprefix("judge_")

        def aggregate(items: list[Deferred], args: Any = None) -> float | None:
            return _judge_metric(items, part, args, _JUDGE_DETAILS[part])

    elif name.startswith("chexbert_f1_"):

        def aggregate(items: list[Deferred]) -> float | None:
            return _chexbert_metric(items, name)

    elif name.startswith("radgraph_f1_"):
        level = name.removeprefix("radgraph_f1_")

        def aggregate(items: list[Deferred]) -> float | None:
            return _radgraph_metric(items, level)

    else:
        raise ValueError(f"no aggregation for the declared metric {name!r}; add it to medbench.lmms.report")

    # lmms-eval passes ``args=`` only to aggregations that declare it (the judge writes its sidecar there).
    if "args" in inspect.signature(aggregate).parameters:

        def declared(items: list[Deferred], args: Any = None) -> float | None:
            return aggregate(items, args)

    else:

        def declared(items: list[Deferred]) -> float | None:
            return aggregate(items)

    declared.__name__ = declared.__qualname__ = name
    declared.__doc__ = f"{metric.description[:1].upper()}{metric.description[1:]}, {'higher' if metric.higher_is_better else 'lower'} is better."
    return declared


for _metric in METRICS.values():
    if _metric.aggregation == "function" and _metric.module == __name__:
        globals()[_metric.name] = _aggregation_function(_metric)
