"""The F1 arithmetic of the clinical metrics: pure Python, no model, no torch.

Kept apart from the models so the definitions can be read, tested against hand-computed values and reused
on labels or graphs produced elsewhere (e.g. CheXbert labels shipped with a data set).

* :func:`multilabel_f1` — CheXbert-F1: micro- and macro-averaged F1 over binary observation labels, with
  scikit-learn's ``classification_report`` conventions (what ``f1chexbert`` and RadEval report).
* :func:`radgraph_rewards` — RadGraph-F1 of Delbrouck et al. (2022): per report pair, F1 between the
  entity (and relation) sets of two RadGraph annotations at three levels (simple / partial / complete).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# The 14 CheXpert observations in the order of the checkpoint's heads.
CONDITIONS = (
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
    "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices", "No Finding",
)
# The five observations of the CheXpert competition, reported separately in the report-generation papers.
TOP5 = ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion")
TOP5_INDEX = tuple(CONDITIONS.index(name) for name in TOP5)


@dataclass(frozen=True)
class LabelF1:
    """Multi-label F1 of predicted against reference label vectors.

    Attributes:
        micro: F1 of the pooled counts, 2·TP / (2·TP + FP + FN) over all labels and reports.
        macro: Unweighted mean of the per-label F1 values.
        per_label: F1 of each label, in label order.
        support: Number of reference positives per label.
    """

    micro: float
    macro: float
    per_label: tuple[float, ...]
    support: tuple[int, ...]


def _f1(tp: int, fp: int, fn: int) -> float:
    # 2TP / (2TP + FP + FN) equals the harmonic mean of precision and recall whenever both are defined.
    # With no positive at all on either side the F1 is undefined; scikit-learn's default
    # (zero_division="warn") scores it 0, and so do the published CheXbert-F1 numbers computed with it.
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


def multilabel_f1(references: Sequence[Sequence[int]], predictions: Sequence[Sequence[int]], labels: Sequence[int] | None = None) -> LabelF1:
    """Micro- and macro-averaged F1 over binary label vectors (1 = positive, anything else = not).

    Args:
        references: One label vector per report, from the reference texts.
        predictions: One label vector per report, from the generated texts (same length and width).
        labels: Indices of the labels to score (e.g. the 5 competition observations); default: all.

    Returns:
        The micro, macro and per-label F1. An empty corpus scores 0.

    Raises:
        ValueError: Different numbers of reports or of labels.
    """
    if len(references) != len(predictions):
        raise ValueError(f"{len(predictions)} predicted label vectors but {len(references)} reference ones")
    width = len(references[0]) if references else (len(labels) if labels is not None else 0)
    if any(len(row) != width for row in (*references, *predictions)):
        raise ValueError("label vectors of different lengths")
    columns = list(range(width)) if labels is None else list(labels)
    counts = []
    for column in columns:
        tp = fp = fn = 0
        for reference, prediction in zip(references, predictions, strict=True):
            truth, guess = reference[column] == 1, prediction[column] == 1
            tp += truth and guess
            fp += guess and not truth
            fn += truth and not guess
        counts.append((tp, fp, fn))
    per_label = tuple(_f1(*count) for count in counts)
    micro = _f1(sum(c[0] for c in counts), sum(c[1] for c in counts), sum(c[2] for c in counts))
    macro = sum(per_label) / len(per_label) if per_label else 0.0
    support = tuple(tp + fn for tp, _, fn in counts)
    return LabelF1(micro=micro, macro=macro, per_label=per_label, support=support)


# --------------------------------------------------------------------------------------------- RadGraph

# A RadGraph annotation as the RadGraph tools write it: {"entities": {"1": {"tokens": "pleural effusion",
# "label": "OBS-DP", "relations": [["located_at", "2"], ...]}, ...}} — relation targets are entity ids.
Annotation = Mapping[str, Mapping[str, Mapping]]

RADGRAPH_LEVELS = ("simple", "partial", "complete")


def _set_f1(hypothesis: set, reference: set) -> float:
    # Precision and recall of set membership; F1 = 0 when either is 0 (as in the reference tooling).
    precision = len(hypothesis & reference) / len(hypothesis) if hypothesis else 0.0
    recall = len(reference & hypothesis) / len(reference) if reference else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _candidates(annotation: Annotation, level: str) -> set[tuple]:
    entities = annotation["entities"]
    items: set[tuple] = set()
    for entity in entities.values():
        tokens, label, relations = entity["tokens"], entity["label"], entity["relations"]
        if level == "simple":
            # RG_E: entities (text span + type) only.
            items.add((tokens, label))
        elif level == "partial":
            # RG_ER: entities, plus whether the entity takes part in a relation as its source.
            items.add((tokens, label, True) if relations else (tokens, label))
        elif not relations:
            items.add((tokens, label))
        else:
            # RG_ER-bar: one item per relation (source span, source type, relation type, target span).
            # The reference implementation lower-cases the spans of these items and of no others; kept so
            # that published values are reproduced.
            for relation_type, target in relations:
                items.add((tokens.lower(), label, relation_type, entities[target]["tokens"].lower()))
    return items


def radgraph_rewards(hypothesis: Annotation | None, reference: Annotation | None) -> dict[str, float]:
    """RadGraph-F1 of one generated report against its reference, at the three levels.

    The levels of Delbrouck et al. (2022), "Improving the Factual Correctness of Radiology Report
    Generation with Semantic Rewards" (Findings of EMNLP 2022), as computed by the ``radgraph`` package's
    ``F1RadGraph``:

    * ``simple`` (RG_E): F1 between the sets of (span, entity type).
    * ``partial`` (RG_ER, the paper's reward and the usual "RadGraph F1"): as ``simple``, but an entity
      that is the source of a relation is matched as (span, type, has-relation).
    * ``complete`` (RG_ER-bar): related entities are matched through each of their relations as
      (span, type, relation type, target span).

    Args:
        hypothesis: Annotation of the generated report; ``None`` for an empty report.
        reference: Annotation of the reference report; ``None`` for an empty report.

    Returns:
        ``{"simple": f1, "partial": f1, "complete": f1}``; all 0 when either report is empty or has no
        entity.
    """
    if not hypothesis or not reference or not hypothesis["entities"] or not reference["entities"]:
        return {level: 0.0 for level in RADGRAPH_LEVELS}
    return {level: _set_f1(_candidates(hypothesis, level), _candidates(reference, level)) for level in RADGRAPH_LEVELS}


def mean(values: Iterable[float]) -> float:
    """Arithmetic mean; 0 for no values."""
    values = list(values)
    return sum(values) / len(values) if values else 0.0
