"""Answer normalisation and scores for medical visual question answering.

Normalisation (applied identically to predictions and gold answers, see :func:`normalize_answer`):

1. Unicode NFKC, lower-case.
2. Hyphens and apostrophes *inside* a word are removed, so "X-ray" == "xray" and "isn't" == "isnt".
3. Every other punctuation character becomes a space.
4. Number words zero..twenty become digits ("two" == "2").
5. The articles "a", "an", "the" are dropped; whitespace is collapsed.

Closed questions. A question is *closed* when its ``answer_type`` says CLOSED (case- and
whitespace-insensitive); when the dataset gives no answer type, when the gold answer is exactly "yes" or
"no" after normalisation. For a yes/no gold answer the prediction is reduced to "yes", "no" or *unparsed*
by :func:`parse_yes_no`; an unparsed prediction scores 0 and is counted separately. For other closed gold
answers ("CT", "left lung") the prediction is correct when the normalised gold appears in it as a whole-word
phrase and is not a hedge (:func:`is_closed_hedge`: "left or right", "CT/MRI", "both left and right" name both
options, as "yes or no" does); a hedge scores 0 and is counted as unparsed, like an unparsed yes/no answer.

Open questions are scored by :func:`open_recall`: the share of distinct gold tokens that occur in the
prediction (the "recall" of the LLaVA-Med evaluation), plus exact match and token F1.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Literal

YesNo = Literal["yes", "no"]

_INNER_JOINERS = re.compile(r"(?<=\w)[-\u2010\u2011\u2012\u2013'\u2019](?=\w)")
_NON_WORD = re.compile(r"[^\w\s]|_")
_CLAUSE_BREAK = re.compile(r"[.,;!?\n]")
_ARTICLES = frozenset({"a", "an", "the"})
_NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate(
        [
            "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
            "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
        ]
    )
}
_YES, _NO = "yes", "no"
# Words that may precede the answer word without making the opening clause a sentence of its own.
_ANSWER_LEAD_IN = frozenset({"answer", "is", "final", "my", "short"})
# Words that join the gold phrase to an alternative in a hedge ("CT or MRI", "left vs right"); a slash between
# words is read as "or" before tokenising ("CT/MRI").
_ALTERNATIVE_JOINERS = frozenset({"or", "nor", "vs", "versus"})
_SLASH_BETWEEN_WORDS = re.compile(r"(?<=\w)\s*/\s*(?=\w)")
_BOTH = frozenset({"both", "either", "neither"})


def _tokens(text: str, *, drop_articles: bool = True) -> list[str]:
    text = unicodedata.normalize("NFKC", text).lower()
    text = _INNER_JOINERS.sub("", text)
    text = _NON_WORD.sub(" ", text)
    words = (_NUMBER_WORDS.get(word, word) for word in text.split())
    return [word for word in words if not (drop_articles and word in _ARTICLES)]


def normalize_answer(text: str) -> str:
    """Normalise an answer for comparison (see the module docstring for the exact rules).

    Args:
        text: A prediction or gold answer.

    Returns:
        The normalised answer: lower-case words separated by single spaces.
    """
    return " ".join(_tokens(text))


def answer_tokens(text: str) -> list[str]:
    """The normalised tokens of ``text``."""
    return _tokens(text)


def parse_yes_no(text: str | None) -> YesNo | None:
    """Reduce a free-text answer to "yes", "no" or ``None`` (no clear answer).

    Only whole words count: "Yesterday", "Normal", "Noted" or "None" are neither yes nor no.

    * Exactly one of "yes" / "no" occurs in the answer: that is the answer ("There is no mass." is "no").
    * Both occur: the answer is the one that *opens* the first clause (text up to the first
      ``. , ; ! ?`` or newline), optionally after a lead-in such as "The answer is" or "Final answer", as
      long as that clause holds only that word: "Yes, there is no effusion." is "yes". Anything else
      with both words ("yes and no", "It could be yes, could be no") is a hedge and yields ``None``.

    Args:
        text: The model's answer (``None`` is treated as empty).

    Returns:
        "yes", "no" or ``None``.
    """
    if not text:
        return None
    words = set(_tokens(text))
    if (_YES in words) != (_NO in words):
        return _YES if _YES in words else _NO
    if _YES not in words:
        return None
    clause = _tokens(_CLAUSE_BREAK.split(text, maxsplit=1)[0])
    opening = [word for word in clause if word not in _ANSWER_LEAD_IN][:1]
    polarities = {word for word in clause if word in (_YES, _NO)}
    if opening and opening[0] in (_YES, _NO) and polarities == {opening[0]}:
        return opening[0]  # type: ignore[return-value]
    return None


def is_yes_no_answer(answer: str) -> bool:
    """Whether a gold answer is exactly "yes" or "no" after normalisation."""
    return normalize_answer(answer) in (_YES, _NO)


def is_closed_question(answer: str, answer_type: str | None = None) -> bool:
    """Whether a question is closed.

    Args:
        answer: The gold answer.
        answer_type: The dataset's answer type (e.g. "CLOSED" / "OPEN"), if it has one.

    Returns:
        ``answer_type == CLOSED`` (case/whitespace-insensitive) when an answer type is given, else whether
        the gold answer is yes/no.
    """
    if answer_type is not None and str(answer_type).strip():
        return str(answer_type).strip().upper() == "CLOSED"
    return is_yes_no_answer(answer)


def _contains_phrase(haystack: list[str], needle: list[str]) -> bool:
    if not needle:
        return False
    width = len(needle)
    return any(haystack[i : i + width] == needle for i in range(len(haystack) - width + 1))


def is_closed_hedge(prediction: str | None, answer: str) -> bool:
    """Whether a closed prediction names the gold answer only as one of two or more options.

    Within the clause (text up to ``. , ; ! ?`` or a newline) where the gold phrase first occurs, the answer is a
    hedge when the gold phrase is joined to another phrase by "or", "nor", "vs", "versus" or a slash ("left or
    right", "either MRI or CT", "CT/MRI"), or when the whole clause is "[both] gold and X" / "[both] X and gold"
    ("left and right"). "Left, not right" and "It is in the left lung." are answers. Yes/no gold answers have
    their own rule (:func:`parse_yes_no`).

    Args:
        prediction: The model's answer (``None`` is treated as empty).
        answer: The gold answer.

    Returns:
        True for a hedge.
    """
    if not prediction:
        return False
    gold = _tokens(answer)
    if not gold:
        return False
    width = len(gold)
    for clause in _CLAUSE_BREAK.split(_SLASH_BETWEEN_WORDS.sub(" or ", prediction)):
        words = _tokens(clause)
        starts = [i for i in range(len(words) - width + 1) if words[i : i + width] == gold]
        if not starts:
            continue
        before = words[starts[0] - 1] if starts[0] > 0 else None
        after = words[starts[0] + width] if starts[0] + width < len(words) else None
        if (before in _ALTERNATIVE_JOINERS and starts[0] > 1) or (after in _ALTERNATIVE_JOINERS and
                                                                   starts[0] + width + 1 < len(words)):
            return True
        core = [word for word in words if word not in _BOTH]
        if "and" in core and len(core) > width + 1 and (core[:width] == gold and core[width] == "and" or
                                                        core[-width:] == gold and core[-width - 1] == "and"):
            return len(core) - width - 1 <= max(width, 2) + 1  # "X and gold" with X a short phrase, not a sentence
        return False
    return False


def closed_accuracy(prediction: str, answer: str) -> float:
    """Score a closed question: 1.0 if the prediction gives the gold answer, else 0.0.

    Args:
        prediction: The model's answer.
        answer: The gold answer ("yes"/"no", or a closed choice such as "CT").

    Returns:
        1.0 or 0.0. An unparseable answer to a yes/no question and a hedge naming both options score 0.0 (see
        :func:`closed_parsed`).
    """
    if is_yes_no_answer(answer):
        return float(parse_yes_no(prediction) == normalize_answer(answer))
    if is_closed_hedge(prediction, answer):
        return 0.0
    return float(_contains_phrase(_tokens(prediction or ""), _tokens(answer)))


def closed_parsed(prediction: str, answer: str) -> bool:
    """Whether a closed prediction could be read at all (yes/no found; for other closed: non-empty, no hedge)."""
    if is_yes_no_answer(answer):
        return parse_yes_no(prediction) is not None
    return bool(_tokens(prediction or "")) and not is_closed_hedge(prediction, answer)


def open_recall(prediction: str, answer: str) -> float:
    """Share of the distinct normalised gold tokens that occur in the prediction.

    Args:
        prediction: The model's answer.
        answer: The gold answer.

    Returns:
        A value in [0, 1]; 0.0 when the gold answer has no tokens.
    """
    gold = set(_tokens(answer))
    if not gold:
        return 0.0
    return len(gold & set(_tokens(prediction))) / len(gold)


def exact_match(prediction: str, answer: str) -> float:
    """1.0 when prediction and answer are equal after normalisation, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(answer))


def token_f1(prediction: str, answer: str) -> float:
    """Harmonic mean of token precision and recall (multiset overlap) after normalisation."""
    predicted, gold = Counter(_tokens(prediction)), Counter(_tokens(answer))
    overlap = sum((predicted & gold).values())
    if overlap == 0:
        return 0.0
    precision = overlap / sum(predicted.values())
    recall = overlap / sum(gold.values())
    return 2 * precision * recall / (precision + recall)
