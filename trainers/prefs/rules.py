"""Offline rejected answers: minimal rule-based edits of the chosen answer, and rule-based error-type tagging.

Every edit changes one fact and names the rule that made it: ``yes_no`` (yes <-> no), ``presence_flip``
(negation-aware: "no evidence of X" <-> "X is present"), ``swap:<group>`` (laterality, modality, plane, organ,
size, colour, diagnosis, stain; from ``lexicon.yaml``) and ``number`` (counts and measurements). Which applicable
edit a record gets is drawn from the record's own seeded generator, so a build is reproducible and independent of
record order. Import-light (no torch).
"""

from __future__ import annotations

import difflib
import hashlib
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from medbench.taxonomy import load_taxonomy

_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
_UNITS = ("mm", "cm", "m", "ml", "cc", "%", "percent", "millimetres", "centimetres", "millimeters", "centimeters")
_NEGATIONS = {"no", "not", "without", "absent", "present", "none", "negative", "positive", "normal", "abnormal"}


@dataclass(frozen=True)
class Edit:
    """One candidate rejected answer.

    Attributes:
        rule: The rule's name (``yes_no``, ``presence_flip``, ``swap:organ``, ``number``, ``llm``).
        rejected: The edited answer.
        error_type: Taxonomy key the edit is tagged with.
        detail: What changed, e.g. ``"left -> right"``.
    """

    rule: str
    rejected: str
    error_type: str
    detail: str


@dataclass(frozen=True)
class Lexicon:
    """The parsed ``lexicon.yaml``: swap groups, presence patterns, question topics, and the file's identity."""

    version: int
    sha256: str
    groups: dict[str, dict[str, Any]]
    presence: list[tuple[re.Pattern, str]]
    topics: dict[str, list[str]]


@lru_cache(maxsize=1)
def load_lexicon() -> Lexicon:
    """Read the shipped lexicon (cached) and check its error types against the taxonomy."""
    import yaml

    text = resources.files("medbench.train.prefs").joinpath("lexicon.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    taxonomy = load_taxonomy()
    groups: dict[str, dict[str, Any]] = {}
    for name, body in data["swap_groups"].items():
        taxonomy.check(body["error_type"], f"lexicon.yaml: swap_groups.{name}")
        partners: dict[str, list[str]] = {}
        for pair in body.get("pairs") or []:
            a, b = (str(t) for t in pair)
            partners.setdefault(a.lower(), []).append(b)
            partners.setdefault(b.lower(), []).append(a)
        terms = [str(t) for t in body.get("terms") or []]
        for term in terms:
            partners[term.lower()] = [t for t in terms if t.lower() != term.lower()]
        forms = {t.lower(): t for t in terms} | {str(t).lower(): str(t) for p in body.get("pairs") or [] for t in p}
        alternation = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
        groups[name] = {
            "error_type": body["error_type"],
            "partners": partners,
            "pattern": re.compile(rf"(?<![\w-])({alternation})(?![\w-])", re.IGNORECASE),
        }
    presence = [(re.compile(pattern, re.IGNORECASE), template) for pattern, template in data["presence_flips"]]
    topics = {key: [str(w) for w in words] for key, words in data["question_topics"].items()}
    for key in topics:
        taxonomy.check(key, f"lexicon.yaml: question_topics.{key}")
    return Lexicon(int(data["version"]), hashlib.sha256(text.encode()).hexdigest(), groups, presence, topics)


def record_rng(seed: int, record_id: str, purpose: str) -> random.Random:
    """A generator that depends only on (seed, record id, purpose): builds do not depend on record order."""
    return random.Random(f"{seed}:{purpose}:{record_id}")


def _match_case(template: str, replacement: str) -> str:
    if template[:1].isupper() and replacement[:1].islower():
        return replacement[:1].upper() + replacement[1:]
    return replacement


def question_topic(question: str, lexicon: Lexicon | None = None) -> str:
    """The visual subtype a yes/no question asks about (e.g. "Is this a CT scan?" -> ``modality``)."""
    lexicon = lexicon or load_lexicon()
    words = " " + " ".join(re.sub(r"[^\w\s-]", " ", question.lower()).split()) + " "
    # The cue that ends last wins: a yes/no question names its subject first and asks about the predicate
    # ("Is the left kidney enlarged?" asks about size, not side); a fixed group order got that wrong.
    found = [(words.rfind(f" {cue} ") + len(cue), len(cue), key) for key, cues in lexicon.topics.items() for cue in cues
             if f" {cue} " in words]
    return max(found)[2] if found else "presence_abnormality"


def _yes_no(question: str, answer: str, lexicon: Lexicon) -> list[Edit]:
    # Only a bare yes/no: "Yes, the disc is on the left" flipped to "No, ..." would contradict itself, and
    # "No evidence of X" is a finding, not a yes/no answer (the presence rule handles it).
    match = re.fullmatch(r"\s*(yes|no)\s*[.!]?\s*", answer, re.IGNORECASE)
    if not match:
        return []
    word = match.group(1)
    flipped = _match_case(word, "no" if word.lower() == "yes" else "yes")
    rejected = answer[: match.start(1)] + flipped + answer[match.end(1) :]
    return [Edit("yes_no", rejected, question_topic(question, lexicon), f"{word} -> {flipped}")]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _presence(answer: str, lexicon: Lexicon) -> list[Edit]:
    # One sentence at a time, with every kind of space made a plain one: a pattern must not run from one
    # sentence into the next, nor read "No\u00a0effusion" as a finding called "No effusion".
    sentences = _SENTENCE_END.split(" ".join(answer.split()))
    for index, sentence in enumerate(sentences):
        flipped = _presence_sentence(sentence, lexicon)
        if flipped is not None:
            rejected, detail = flipped
            return [Edit("presence_flip", " ".join([*sentences[:index], rejected, *sentences[index + 1 :]]),
                         "presence_abnormality", detail)]
    return []


def _presence_sentence(text: str, lexicon: Lexicon) -> tuple[str, str] | None:
    numeric = re.compile(rf"^(\d|({'|'.join(_NUMBER_WORDS)}|several|multiple|many|few)\b)", re.IGNORECASE)
    for pattern, template in lexicon.presence:
        match = pattern.match(text)
        if not match:
            continue
        values = {k: v for k, v in match.groupdict().items() if v is not None}
        finding = values.get("x", "")
        if numeric.match(finding):
            return None  # "Three nodules are seen": negating a count is not minimal; the number rule edits it
        if "no {x}" in template.lower():
            if re.match(r"^no\b", finding, re.IGNORECASE):
                return None  # "No nodule is seen" read as "(No nodule) is seen": the negated pattern handles it
            finding = re.sub(r"^(a|an|one)\s+", "", finding, flags=re.IGNORECASE)  # "a nodule" -> "no nodule"
        values["x"] = finding
        values["X"] = finding[:1].upper() + finding[1:]
        rejected = template.format(**values)
        if rejected.strip().lower() != text.lower():
            return rejected, f"{pattern.pattern} -> {template}"
    return None


# Negation scope, NegEx-style: a cue before a term ("no", "without", "negative for", ...) or after it ("is
# absent", "is not seen", "ruled out") negates it up to the end of its clause. Sentence punctuation and
# contrastive words close the clause; commas do not ("No pneumothorax, effusion or consolidation").
_NEGATION_BEFORE = re.compile(
    r"(?<![\w-])(?:no|not|without|absence\s+of|absent|negative\s+for|free\s+of|denies|denied|neither|nor|never|"
    r"rules?\s+out|ruled\s+out|exclude[sd]?|cannot\s+be\s+seen)(?![\w-])",
    re.IGNORECASE,
)
_NEGATION_AFTER = re.compile(
    r"(?<![\w-])(?:(?:is|are|was|were)\s+(?:not\s+(?:seen|visible|present|identified|detected|demonstrated)|absent|"
    r"excluded|ruled\s+out)|not\s+(?:seen|visible|identified|detected)|ruled\s+out|absent)(?![\w-])",
    re.IGNORECASE,
)
_CLAUSE_BREAK = re.compile(
    r"[.!?;:\n]|(?<![\w-])(?:but|however|although|though|except|yet|whereas|while|apart\s+from|aside\s+from)(?![\w-])",
    re.IGNORECASE,
)


def negated_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of ``text`` that lie under a negation (terms there are asserted absent)."""
    spans: list[tuple[int, int]] = []
    start = 0
    for end in [m.start() for m in _CLAUSE_BREAK.finditer(text)] + [len(text)]:
        clause = text[start:end]
        after = [(m.start(), m.end()) for m in _NEGATION_AFTER.finditer(clause)]
        if after:  # "X is not seen on this CT": X is negated, the CT is not
            spans.append((start, start + after[-1][1]))
        # "not" inside "is not seen" closes a negation; only a cue outside those opens one.
        before = next((m for m in _NEGATION_BEFORE.finditer(clause) if not any(a <= m.start() < b for a, b in after)), None)
        if before:
            spans.append((start + before.start(), end))
        start = end
    return spans


def _swaps(answer: str, rng: random.Random, lexicon: Lexicon) -> list[Edit]:
    # A term under negation is asserted absent: "No pleural effusion" -> "No metastasis" is another true
    # statement, not an error. Such a finding is changed only by flipping the negation (the presence rule).
    negated = negated_spans(answer)
    edits = []
    for name, group in lexicon.groups.items():
        for match in group["pattern"].finditer(answer):
            found = match.group(1)
            options = group["partners"].get(found.lower(), [])
            if not options or any(low <= match.start() < high for low, high in negated):
                continue
            replacement = _match_case(found, rng.choice(sorted(options)))
            rejected = answer[: match.start()] + replacement + answer[match.end() :]
            edits.append(Edit(f"swap:{name}", rejected, group["error_type"], f"{found} -> {replacement}"))
            break  # one edit per group: the first occurrence
    return edits


# A number after these words names a category ("Stage 2", "grade 3"), not a count: changing it is not a
# count error, and which error type it is depends on the scale, so no rule edits it.
_CATEGORY_WORDS = re.compile(r"(?:stage|grade|type|class|level|phase|category|score|tier|zone|segment)\s*$", re.IGNORECASE)


def _numbers(answer: str, rng: random.Random) -> list[Edit]:
    words = "|".join(_NUMBER_WORDS)
    units = "|".join(re.escape(u) for u in _UNITS)
    # The unit may follow with or without a space ("3 cm", "3cm", "40%"); "%" ends without a word boundary.
    pattern = re.compile(rf"(?<![\w.])(\d+(?:\.\d+)?|{words})(?:(\s*(?:{units}))(?!\w)|(?![\w.]))", re.IGNORECASE)
    match = next((m for m in pattern.finditer(answer) if not _CATEGORY_WORDS.search(answer[: m.start()])), None)
    if not match:
        return []
    token, unit = match.group(1), match.group(2)
    if token.lower() in _NUMBER_WORDS:
        value = _NUMBER_WORDS.index(token.lower())
        choices = [v for v in (value - 1, value + 1, value + 2) if 0 <= v < len(_NUMBER_WORDS) and v != value]
        replacement = _match_case(token, _NUMBER_WORDS[rng.choice(choices)])
    elif "." in token:
        value = float(token)
        replacement = f"{value * rng.choice([0.5, 2.0]):.{len(token.split('.')[1])}f}"
    else:
        value = int(token)
        choices = [v for v in (value - 1, value + 1, value * 2) if v >= 0 and v != value]
        replacement = str(rng.choice(choices))
    if replacement == token:
        return []
    rejected = answer[: match.start(1)] + replacement + answer[match.end(1) :]
    return [Edit("number", rejected, "size" if unit else "count", f"{token} -> {replacement}")]


def candidate_edits(question: str, answer: str, rng: random.Random, lexicon: Lexicon | None = None) -> list[Edit]:
    """Every minimal edit the rules can make of ``answer`` (at most one per rule), in a fixed rule order."""
    lexicon = lexicon or load_lexicon()
    edits = _yes_no(question, answer, lexicon)
    if edits:
        return edits  # a yes/no answer has exactly one minimal wrong version
    edits += _presence(answer, lexicon)
    edits += _swaps(answer, rng, lexicon)
    edits += _numbers(answer, rng)
    return edits


def rule_edit(question: str, answer: str, rng: random.Random, rules: frozenset[str] | None = None) -> Edit | None:
    """One rule-based rejected answer, drawn with ``rng`` among the applicable rules (None when none applies).

    Args:
        question: The question (decides the error type of yes/no flips).
        answer: The chosen answer.
        rng: The record's generator (:func:`record_rng`).
        rules: Restrict to these rule names (``yes_no``, ``presence_flip``, ``number``, ``swap:<group>`` or
            ``swap``); None allows all.
    """
    edits = candidate_edits(question, answer, rng)
    if rules is not None:
        edits = [e for e in edits if e.rule in rules or e.rule.split(":")[0] in rules]
    return rng.choice(edits) if edits else None


def _tokens(text: str) -> list[str]:
    # Numbers apart from attached units ("3cm" -> "3", "cm"), "%" a token of its own.
    return re.findall(r"\d+(?:\.\d+)?|%|[^\W\d_]+(?:-[^\W_]+)*|[\w-]+", text.lower())


def tag_error_type(question: str, chosen: str, rejected: str, lexicon: Lexicon | None = None) -> str:
    """Rule-based error type of an edit, from the words it changed and the question.

    Changed lexicon terms give their group's type; changed numbers give ``count`` (``size`` with a unit); changed
    negation words give ``presence_abnormality``; a flipped yes/no gives the question's topic; an answer that
    only lost words gives ``omission``; anything else ``other``.
    """
    lexicon = lexicon or load_lexicon()
    old, new = _tokens(chosen), _tokens(rejected)
    removed: list[str] = []
    added: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if op != "equal":
            removed += old[i1:i2]
            added += new[j1:j2]
    changed = removed + added
    if not changed:
        return "other"
    if old[:1] in (["yes"], ["no"]) and new[:1] in (["yes"], ["no"]) and old[0] != new[0]:
        return question_topic(question, lexicon)
    joined_removed, joined_added = " ".join(removed), " ".join(added)
    for group in lexicon.groups.values():
        if group["pattern"].search(joined_removed) and group["pattern"].search(joined_added):
            return group["error_type"]
    if any(re.fullmatch(r"\d+(?:\.\d+)?", t) or t in _NUMBER_WORDS for t in changed):
        units = set(_UNITS)
        return "size" if any(t in units for t in old + new) else "count"
    if any(t in _NEGATIONS for t in changed):
        return "presence_abnormality"
    for group in lexicon.groups.values():
        if group["pattern"].search(joined_added):
            return group["error_type"]
    if removed and not added:
        return "omission"
    return "other"
