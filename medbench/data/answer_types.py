"""A dataset's own closed/open labels, for hub copies that dropped them.

The hub copy of VQA-RAD (``flaviagiammarino/vqa-rad``) keeps only image, question and answer. VQA-RAD's own
``answer_type`` labels make choice questions ("Is this an MRI or a CT scan?") closed although their gold
answer is not yes/no, so inferring the type from yes/no gold answers miscounts them (251/200 instead of the
dataset's 272/179 on the test split). A task that ships a label table names it in its YAML
``metadata.answer_types`` (``file`` relative to the task folder, plus the expected ``closed``/``open``
counts); the loader looks every row up by its normalised question and answer.

The table is a TSV with the columns ``image``, ``question``, ``answer``, ``answer_type``, one row per
question of the split, written by :func:`write_table` from a question file that carries the labels (the
study's LLaVA-Med ``VQA_RAD_test_llavamed_format.jsonl``)::

    python -m medbench.data.answer_types STUDY_FILE.jsonl tasks/medbench_vqa_rad/answer_types.tsv
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from medbench.errors import DataError

COLUMNS = ("image", "question", "answer", "answer_type")
LABELS = ("CLOSED", "OPEN")
_NON_WORD = re.compile(r"[\W_]+")


def normalize_key_text(text: str) -> str:
    """Case, punctuation, whitespace and the LLaVA ``<image>`` marker removed.

    The hub copy lower-cases, collapses spaces and rewrites " ?" as "?"; the study's files keep the
    original casing and append "\\n<image>". Both reduce to the same key.
    """
    return _NON_WORD.sub(" ", str(text).replace("<image>", " ").lower()).strip()


@dataclass(frozen=True)
class AnswerTypeTable:
    """Closed/open labels keyed by normalised (question, answer).

    Attributes:
        path: The TSV file the table was read from.
        labels: ``(question key, answer key) -> "CLOSED" | "OPEN"``.
        rows: How many rows the file holds (questions of the split, duplicates included).
    """

    path: Path
    labels: dict[tuple[str, str], str]
    rows: int

    def lookup(self, question: str, answer: str) -> str | None:
        """The label of a question/answer pair, or None when the pair is not in the table."""
        return self.labels.get((normalize_key_text(question), normalize_key_text(answer)))


def read_table(path: Path) -> AnswerTypeTable:
    """Read a label table (see the module docstring).

    Raises:
        DataError: When a row is malformed or one question/answer pair carries two labels.
    """
    labels: dict[tuple[str, str], str] = {}
    rows = 0
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise DataError(f"{path}: header must be {' '.join(COLUMNS)} (tab-separated); regenerate the table")
        for number, row in enumerate(reader, start=2):
            label = row["answer_type"]
            if label not in LABELS:
                raise DataError(f"{path}: line {number}: answer_type {label!r} is not CLOSED or OPEN")
            key = (normalize_key_text(row["question"]), normalize_key_text(row["answer"]))
            if labels.setdefault(key, label) != label:
                raise DataError(f"{path}: line {number}: the same question and answer are labelled both ways")
            rows += 1
    return AnswerTypeTable(path, labels, rows)


def write_table(question_file: Path, out: Path) -> Counter:
    """Write the label table of a LLaVA-Med-format question file (``image``, ``text``, ``gpt4_answer``,
    ``answer_type``) and return the label counts.

    Raises:
        DataError: When a row lacks one of those fields or carries another label.
    """
    counts: Counter = Counter()
    records = []
    # Not iter_json_records: medbench.data.loading imports this module, and importing it back would form a cycle
    # (tests/medbench/test_layering.py counts lazy imports too).
    for number, line in enumerate(question_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        label = str(row.get("answer_type", "")).strip().upper()
        if label not in LABELS or not all(row.get(name) for name in ("image", "text", "gpt4_answer")):
            raise DataError(f"{question_file}: line {number} lacks image, text, gpt4_answer or a CLOSED/OPEN answer_type")
        question = " ".join(str(row["text"]).replace("<image>", " ").split())
        records.append((row["image"], question, " ".join(str(row["gpt4_answer"]).split()), label))
        counts[label] += 1
    with out.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(records)
    read_table(out)  # refuses a table whose keys disagree
    return counts


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    if len(sys.argv) != 3:
        sys.exit("usage: python -m medbench.data.answer_types QUESTION_FILE.jsonl OUT.tsv")
    written = write_table(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"{sys.argv[2]}: {written['CLOSED']} closed, {written['OPEN']} open")
