"""The functions the metric catalogue names (:mod:`medbench.metrics.registry`), for the offline metrics.

Each is the one implementation of its metric: lmms-eval's ``process_results`` and aggregations call it while
the task runs, and the leaderboard calls the same function to recompute a submission. Conventions:

* per-sample: ``f(answer) -> float | None`` (``None``: the metric does not apply to this sample);
* corpus: ``f(answers, name) -> (score, per_sample | None)`` over all samples of a task;
* family availability: ``f(family) -> str | None`` (``None``: it can run here; else what to install or set).

The metric arithmetic itself lives in :mod:`medbench.metrics.vqa` and :mod:`medbench.metrics.text`; these
functions bind it to the catalogue's calling conventions. Metrics that need a model or a judge (BERTScore,
the LLM judge, CheXbert, RadGraph) write more than a score into lmms-eval's per-sample log, so their corpus
functions live with the lmms-eval glue (:mod:`medbench.lmms.report`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache

from medbench.metrics import text, vqa
from medbench.metrics.registry import Answer, Answered, CorpusResult
from medbench.metrics.text import MetricUnavailable

# METEOR's Java start-up costs seconds once per process: worth it on a real run, not on a quick check.
ENV_METEOR = "MEDBENCH_METEOR"


def _closed(answer: Answer) -> bool:
    return answer.answer_type == "CLOSED"


# ------------------------------------------------------------------------------ VQA, per question


def overall(answer: Answer) -> float:
    """Closed accuracy for a closed question, open recall for an open one."""
    if _closed(answer):
        return vqa.closed_accuracy(answer.prediction, answer.reference)
    return vqa.open_recall(answer.prediction, answer.reference)


def closed_accuracy(answer: Answer) -> float | None:
    """1 when a closed question's answer reads as the reference yes/no (closed questions only)."""
    return vqa.closed_accuracy(answer.prediction, answer.reference) if _closed(answer) else None


def closed_unparsed(answer: Answer) -> float | None:
    """1 when a closed question's answer reads as neither yes nor no (closed questions only)."""
    return float(not vqa.closed_parsed(answer.prediction, answer.reference)) if _closed(answer) else None


def open_recall(answer: Answer) -> float | None:
    """Share of the reference's tokens the answer recalls (open questions only)."""
    return None if _closed(answer) else vqa.open_recall(answer.prediction, answer.reference)


def exact_match(answer: Answer) -> float:
    """1 when the normalised answer equals the normalised reference."""
    return vqa.exact_match(answer.prediction, answer.reference)


def token_f1(answer: Answer) -> float:
    """Token-level F1 of answer and reference."""
    return vqa.token_f1(answer.prediction, answer.reference)


def n_closed(answer: Answer) -> float | None:
    """1 per closed question (summed: the number of closed questions)."""
    return 1.0 if _closed(answer) else None


def n_open(answer: Answer) -> float | None:
    """1 per open question (summed: the number of open questions)."""
    return None if _closed(answer) else 1.0


# ------------------------------------------------------------------------------ long-form text


def rouge_l(answer: Answer) -> float:
    """ROUGE-L F-measure of the report against its reference."""
    return text.rouge_l(answer.prediction, answer.reference)


def bleu4_sentence(answer: Answer) -> float:
    """Smoothed sentence BLEU-4 of the report against its reference."""
    return text.sentence_bleu4(answer.prediction, answer.reference)


def _texts(answers: Sequence[Answered]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(a.prediction for a in answers), tuple(a.reference for a in answers)


@lru_cache(maxsize=4)
def _corpus_bleu(predictions: tuple[str, ...], references: tuple[str, ...]) -> dict[str, float]:
    # BLEU-1..4 come from one pass over the corpus: the four metrics share it.
    return text.corpus_bleu(predictions, references)


def corpus_bleu(answers: Sequence[Answered], name: str) -> CorpusResult:
    """Corpus BLEU-``n`` (``name`` is ``bleu1`` ... ``bleu4``); no per-sample values."""
    return _corpus_bleu(*_texts(answers))[name], None


def cider(answers: Sequence[Answered], name: str = "cider") -> CorpusResult:
    """CIDEr with IDF from these references; per-sample values are each report's CIDEr."""
    return text.cider(*_texts(answers))


def meteor(answers: Sequence[Answered], name: str = "meteor") -> CorpusResult:
    """METEOR 1.5 (Java): the corpus score and each report's score.

    Raises:
        MetricUnavailable: No Java runtime.
    """
    return text.meteor(*_texts(answers))


# ------------------------------------------------------------------------------ availability of families


def always_available(family: str) -> str | None:
    """Families every run reports."""
    return None


def meteor_unavailable(family: str = "meteor") -> str | None:
    """METEOR runs when ``java`` is on PATH and ``MEDBENCH_METEOR`` is not ``off``."""
    if os.environ.get(ENV_METEOR, "").strip().lower() == "off":
        return f"METEOR skipped: {ENV_METEOR}=off"
    if not text.java_available():
        return "METEOR skipped: no 'java' on PATH; install a Java runtime (e.g. apt-get install default-jre-headless)"
    return None


def bertscore_unavailable(family: str = "bertscore") -> str | None:
    """BERTScore runs when its local model is configured (``MEDBENCH_BERTSCORE_MODEL``)."""
    try:
        text.BertScoreSettings.from_env()
    except MetricUnavailable as error:
        return str(error)
    return None


def chexbert_unavailable(family: str = "chexbert") -> str | None:
    """CheXbert-F1 runs when its weights are configured and present (file checks only)."""
    from medbench.metrics import clinical

    try:
        clinical.CheXbertSettings.from_env()
    except MetricUnavailable as error:
        return str(error)
    return None


def radgraph_unavailable(family: str = "radgraph") -> str | None:
    """RadGraph-F1 runs when its weights are configured and present (file checks only)."""
    from medbench.metrics import clinical

    try:
        clinical.RadGraphSettings.from_env()
    except MetricUnavailable as error:
        return str(error)
    return None
