"""A non-neural baseline: fixed answers chosen from the shape of the question, never from the gold answer.

* Questions that open with an auxiliary verb ("Is ...", "Does ...", "Are there ...") are yes/no questions
  and get ``closed_answer`` (default "yes", the classic always-yes baseline).
* Other questions get ``open_answer`` (default empty: an open question is simply not answered).
* Long-form prompts get ``report`` (default: a normal-study template).
* With ``prior=TRAIN.jsonl`` (the medbench VQA schema) it is the *prior-only* answerer: a question asked in the
  training file gets the answer most often given to it there (ties: the alphabetically first), whatever the
  image; other questions fall back to the rules above. It is the floor a model must beat to show it reads the
  image rather than the answer distribution of each question kind.

Usage: ``--model medbench_baseline --model_args closed_answer=no,report="No acute findings."``,
``--model medbench_baseline --model_args prior=data/train.jsonl``
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tqdm import tqdm

from medbench.lmms.models.base import GenerationOnlyModel, process_device
from medbench.metrics.vqa import normalize_answer

_AUXILIARY_VERBS = frozenset(
    ["is", "are", "was", "were", "does", "do", "did", "can", "could", "has", "have", "had", "will", "would", "should", "shall", "may", "might", "must"]
)
DEFAULT_REPORT = (
    "The lungs are clear. There is no focal consolidation, pleural effusion or pneumothorax. "
    "The cardiomediastinal silhouette is within normal limits."
)


def is_yes_no_question(question: str) -> bool:
    """Whether a question opens with an auxiliary verb (the usual form of a yes/no question)."""
    words = question.strip().lower().split()
    return bool(words) and words[0] in _AUXILIARY_VERBS


def majority_answers(path: str | Path) -> dict[str, str]:
    """Normalised question -> its most frequent answer in a VQA JSONL file (ties: alphabetically first).

    Raises:
        MedbenchError: The file is missing or has no question/answer records.
    """
    from medbench.data.loading import iter_json_records
    from medbench.errors import MedbenchError

    path = Path(path)
    if not path.is_file():
        raise MedbenchError(f"medbench_baseline prior={path}: no such file; give the training JSONL (question, answer)")
    answers: dict[str, Counter] = {}
    for _number, record in iter_json_records(path):
        if isinstance(record, dict) and record.get("question") and record.get("answer") is not None:
            answers.setdefault(normalize_answer(str(record["question"])), Counter())[str(record["answer"])] += 1
    if not answers:
        raise MedbenchError(f"medbench_baseline prior={path}: no record with a question and an answer")
    return {question: min(counts, key=lambda answer: (-counts[answer], answer)) for question, counts in answers.items()}


class MedbenchBaseline(GenerationOnlyModel):
    """Fixed-answer baseline, or the prior-only answerer with ``prior``; see the module docstring."""

    def __init__(self, closed_answer: str = "yes", open_answer: str = "", report: str = DEFAULT_REPORT,
                 prior: str = "", **kwargs) -> None:
        super().__init__()
        self.closed_answer = str(closed_answer)
        self.open_answer = str(open_answer)
        self.report = str(report)
        self.prior = majority_answers(prior) if prior else {}
        self.batch_size = 1
        self.device_name = process_device()

    def answer(self, doc: dict) -> str:
        """The baseline's answer to a document."""
        if "question" not in doc:
            return self.report
        known = self.prior.get(normalize_answer(str(doc["question"])))
        if known is not None:
            return known
        return self.closed_answer if is_yes_no_question(doc["question"]) else self.open_answer

    def generate_until(self, requests) -> list[str]:
        return [self.answer(self.doc_of(request)) for request in tqdm(requests, desc="medbench_baseline", disable=self.rank != 0)]
