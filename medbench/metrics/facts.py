"""Atomic-fact NLI scores: the study's long-form completeness / hallucination metric.

A judge splits the reference into ``n`` atomic facts and labels each fact against the model output as
Entailment, Partial Entailment, Neutral or Contradiction. Per sample::

    completeness  = (#Entailment + 0.5 * #Partial Entailment) / n
    hallucination = #Contradiction / n

:func:`fact_scores` turns the judge's raw text into those two numbers. It has two modes:

* ``case_sensitive=True`` reproduces the authors' aggregation (dmis-lab/med-vlm-dpo,
  ``evaluation/mmdpo_nli_pipeline/scripts/06_compute_scores.py``) bit for bit, defects included, so their
  published numbers can be recomputed: the output must be JSON; each list item has one leading ``"k."``
  stripped and is compared case-sensitively with the four labels; anything else counts as Neutral (so
  ``"contradiction"`` is silently Neutral); unparseable output and ``n == 0`` give 0/0; extra labels are
  counted (scores can exceed 1); values are rounded to 4 decimals. ``parsed`` tells whether the output was
  a JSON list, but the authors kept every sample in their mean, so a caller reproducing them should too.
* ``case_sensitive=False`` (default) is the corrected metric: labels are matched case-insensitively and
  the usual drift is tolerated (code fences, prose around the list, numbered lines instead of JSON, missing
  commas, ``k)``/``k:`` numbering, markdown emphasis, hyphens or underscores in "Partial Entailment").
  Anything that still cannot be read unambiguously - no list, an unknown label, or a label count different
  from ``n`` - gives ``parsed=False``: the sample is *unscored*, and callers must count it and leave it out
  of the mean rather than average in a zero. Values are not rounded.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

ENTAILMENT = "Entailment"
PARTIAL_ENTAILMENT = "Partial Entailment"
NEUTRAL = "Neutral"
CONTRADICTION = "Contradiction"
LABELS: tuple[str, ...] = (ENTAILMENT, PARTIAL_ENTAILMENT, NEUTRAL, CONTRADICTION)

# The authors' prefix rule, verbatim: digits, a dot, optional whitespace, at the very start of the item.
_AUTHORS_PREFIX = re.compile(r"^\d+\.\s*")

# Tolerant-mode normalisation.
_FENCE = re.compile(r"```[a-zA-Z0-9_-]*")
_ITEM_PREFIX = re.compile(r"^\s*(?:[-*\u2022]\s*)?(?:(?:fact|hypothesis|claim)\s*)?#?\d+\s*[.):\-\]]?\s*", re.IGNORECASE)
_DECORATION = re.compile(r"[*`\"'\u201c\u201d\u2018\u2019]+")
_CANONICAL = {label.lower(): label for label in LABELS}
_CANONICAL.update(
    {
        "partial": PARTIAL_ENTAILMENT,
        "partially entailed": PARTIAL_ENTAILMENT,
        "partial entailed": PARTIAL_ENTAILMENT,
        "entailed": ENTAILMENT,
        "contradicted": CONTRADICTION,
        "contradict": CONTRADICTION,
    }
)
# One label per line, for outputs that are not JSON at all ("1. Entailment\n2. Neutral").
_LABEL_LINE = re.compile(
    r"^\s*(?:[-*\u2022]\s*)?[\"']?\s*(?:\d+\s*[.):\-]\s*)?\**\s*"
    r"(partial[\s_-]+entailment|entailment|neutral|contradiction)\s*\**\s*[.!]?\s*[\"']?\s*,?\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class FactScores:
    """Per-sample atomic-fact scores.

    Attributes:
        completeness: (E + 0.5 * PE) / n, higher is better.
        hallucination: C / n, lower is better.
        parsed: Whether the judge output could be read. In the default mode a sample with
            ``parsed=False`` is unscored (its 0/0 must not be averaged in); in compatibility mode it only
            reports what the authors' code silently turned into 0/0.
    """

    completeness: float
    hallucination: float
    parsed: bool


def fact_scores(judge_output: str | None, n_facts: int, *, case_sensitive: bool = False) -> FactScores:
    """Score one sample from the judge's raw NLI output.

    Args:
        judge_output: The judge's raw text, expected to be a JSON list of strings like
            ``"3. Contradiction"`` (one per reference fact, in order). ``None`` means no answer.
        n_facts: Number of reference atomic facts ``n``.
        case_sensitive: ``True`` reproduces the authors' aggregation exactly (see the module docstring);
            ``False`` (default) is the corrected, tolerant parser.

    Returns:
        The sample's :class:`FactScores`.
    """
    if case_sensitive:
        return _authors_scores(judge_output, n_facts)
    labels = parse_labels(judge_output)
    if labels is None or n_facts <= 0 or len(labels) != n_facts:
        return FactScores(0.0, 0.0, False)
    completeness, hallucination = scores_from_labels(labels)
    return FactScores(completeness, hallucination, True)


def scores_from_labels(labels: Sequence[str]) -> tuple[float, float]:
    """Completeness and hallucination from canonical labels (one per fact; ``n = len(labels) > 0``)."""
    counts = Counter(labels)
    n = len(labels)
    return (counts[ENTAILMENT] + 0.5 * counts[PARTIAL_ENTAILMENT]) / n, counts[CONTRADICTION] / n


def fabrication_from_labels(labels: Sequence[str]) -> float:
    """Fabrication of one output: the share of its own claims labelled Neutral or Contradiction against the
    reference (``(N + C) / m``); an output with no claims fabricates nothing (0)."""
    if not labels:
        return 0.0
    return sum(label in (NEUTRAL, CONTRADICTION) for label in labels) / len(labels)


def severe_from_grade(grade: str) -> float:
    """The ``severe`` score of one output: 1 when the judge graded its worst error ``severe``, else 0."""
    return 1.0 if grade == "severe" else 0.0


def parse_labels(judge_output: str | None) -> list[str] | None:
    """Read canonical NLI labels from a judge answer, tolerating common formatting drift.

    Args:
        judge_output: The judge's raw text.

    Returns:
        The labels in order (each one of :data:`LABELS`), or ``None`` when the text holds no list of
        labels that can be read unambiguously (no list found, or any item is not a known label).
    """
    if judge_output is None:
        return None
    text = _FENCE.sub("", judge_output).strip()
    if not text:
        return None
    items = extract_json_list(text)
    if items is None:
        items = _label_lines(text)
    if items is None:
        return None
    labels = [_canonical_label(item) for item in items]
    if not labels or any(label is None for label in labels):
        return None
    return labels  # type: ignore[return-value]


def macro_average(values: Iterable[float]) -> float:
    """The authors' dataset score: the plain mean of per-sample values, rounded to 4 decimals."""
    values = list(values)
    return round(sum(values) / len(values), 4) if values else 0.0


def _authors_scores(judge_output: str | None, n_facts: int) -> FactScores:
    """Replica of the authors' ``compute_scores`` followed by their per-sample ``round(x, 4)``."""
    parsed = False
    items: Iterable = []
    if isinstance(judge_output, str):
        try:
            decoded = json.loads(judge_output)
        except json.JSONDecodeError:
            decoded = None  # their code falls back to an empty list: 0/0
        if isinstance(decoded, list):
            parsed = True
            items = decoded
        elif isinstance(decoded, (dict, str)):
            # Their loop iterates whatever json.loads returned: a dict's keys, a string's characters.
            items = decoded
        # Numbers, booleans and null make their loop raise TypeError; we report those as unparsed 0/0.
    comp = hall = 0
    for item in items:
        if not isinstance(item, str):
            continue
        label = _AUTHORS_PREFIX.sub("", item).strip()
        if label == ENTAILMENT:
            comp += 1
        elif label == PARTIAL_ENTAILMENT:
            comp += 0.5
        elif label == CONTRADICTION:
            hall += 1
    if n_facts == 0:
        return FactScores(0.0, 0.0, parsed)
    return FactScores(round(comp / n_facts, 4), round(hall / n_facts, 4), parsed)


def extract_json_list(text: str) -> list | None:
    """The first JSON list in ``text`` (code fences and prose around it allowed, missing commas between
    quoted items repaired), or ``None``."""
    text = _FENCE.sub("", text)
    start = text.find("[")
    while start != -1:
        end = _matching_bracket(text, start)
        if end is None:
            return None
        chunk = text[start : end + 1]
        for candidate in (chunk, re.sub(r'"\s*\n\s*"', '",\n"', chunk)):
            try:
                decoded = json.loads(candidate)
            except json.JSONDecodeError:
                continue
            if isinstance(decoded, list):
                return decoded
        start = text.find("[", end + 1)
    return None


def _matching_bracket(text: str, start: int) -> int | None:
    depth = 0
    in_string = False
    escaped = False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth == 0:
                return index
    return None


def _label_lines(text: str) -> list[str] | None:
    """Labels written one per line, without JSON; ``None`` unless at least one line is a label line."""
    lines = [line for line in text.splitlines() if line.strip()]
    matched = [m.group(1) for m in map(_LABEL_LINE.match, lines) if m]
    if not matched:
        return None
    # Prose lines around the labels are fine; a label line we could not match would have been caught as a
    # non-label line, so the only risk is a label hidden in prose, which is what the count check catches.
    return matched


def _canonical_label(item: object) -> str | None:
    if isinstance(item, dict):
        item = item.get("label", item.get("Label"))
    if not isinstance(item, str):
        return None
    text = _ITEM_PREFIX.sub("", item.strip(), count=1)
    text = _DECORATION.sub("", text)
    text = re.sub(r"[\s_-]+", " ", text).strip(" .,;:!").lower()
    return _CANONICAL.get(text)
