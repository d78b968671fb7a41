"""Reference-based text metrics for the long-form (report / description) tasks.

All scores are in [0, 1], higher is better. Sentence-level scores are computed per sample and averaged
(so lmms-eval can report a standard error for them).

* ``bleu4``: sentence-level BLEU-4 from sacrebleu (13a tokenisation, lower-cased, "exp" smoothing,
  effective n-gram order for short sentences), divided by 100.
* ``rouge_l``: ROUGE-L F-measure from Google's ``rouge-score`` package (its default tokeniser, Porter
  stemming on), the implementation most radiology-report papers use.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _bleu4():
    from sacrebleu.metrics import BLEU

    return BLEU(max_ngram_order=4, lowercase=True, smooth_method="exp", effective_order=True)


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def sentence_bleu4(prediction: str, reference: str) -> float:
    """Sentence-level BLEU-4 of ``prediction`` against one ``reference``, in [0, 1]."""
    if not prediction.strip() or not reference.strip():
        return 0.0
    return _bleu4().sentence_score(prediction, [reference]).score / 100.0


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure of ``prediction`` against ``reference``, in [0, 1]."""
    if not prediction.strip() or not reference.strip():
        return 0.0
    return _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure
