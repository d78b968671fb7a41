"""Scoring of the long-form tasks (MIMIC-CXR findings, AMBOSS descriptions) inside lmms-eval.

Each sample returns one record of sentence-level scores (mean-aggregated, so lmms-eval reports a standard
error for each); the generation itself is kept in the per-sample logs (``--log_samples``), from which
``medbench judge`` can score it later.
"""

from __future__ import annotations

from medbench.metrics.text import rouge_l, sentence_bleu4


def process_results(doc: dict, results: list[str]) -> dict:
    """Score one generated report against the document's reference text."""
    prediction = results[0] if results else ""
    reference = doc["reference"]
    return {
        "bleu4": sentence_bleu4(prediction, reference),
        "rouge_l": rouge_l(prediction, reference),
        "medbench_detail": {
            "id": doc["id"],
            "source": doc["source"],
            "prediction_words": len(prediction.split()),
            "reference_words": len(reference.split()),
        },
    }
