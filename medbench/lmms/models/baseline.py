"""A non-neural baseline: fixed answers chosen from the shape of the question, never from the gold answer.

* Questions that open with an auxiliary verb ("Is ...", "Does ...", "Are there ...") are yes/no questions
  and get ``closed_answer`` (default "yes", the classic always-yes baseline).
* Other questions get ``open_answer`` (default empty: an open question is simply not answered).
* Long-form prompts get ``report`` (default: a normal-study template).

Usage: ``--model medbench_baseline --model_args closed_answer=no,report="No acute findings."``
"""

from __future__ import annotations

from tqdm import tqdm

from medbench.lmms.models.base import GenerationOnlyModel, process_device

_AUXILIARY_VERBS = frozenset(
    "is are was were does do did can could has have had will would should shall may might must".split()
)
DEFAULT_REPORT = (
    "The lungs are clear. There is no focal consolidation, pleural effusion or pneumothorax. "
    "The cardiomediastinal silhouette is within normal limits."
)


def is_yes_no_question(question: str) -> bool:
    """Whether a question opens with an auxiliary verb (the usual form of a yes/no question)."""
    words = question.strip().lower().split()
    return bool(words) and words[0] in _AUXILIARY_VERBS


class MedbenchBaseline(GenerationOnlyModel):
    """Fixed-answer baseline; see the module docstring."""

    def __init__(self, closed_answer: str = "yes", open_answer: str = "", report: str = DEFAULT_REPORT, **kwargs) -> None:
        super().__init__()
        self.closed_answer = str(closed_answer)
        self.open_answer = str(open_answer)
        self.report = str(report)
        self.batch_size = 1
        self.device_name = process_device()

    def answer(self, doc: dict) -> str:
        """The baseline's answer to a document."""
        if "question" not in doc:
            return self.report
        return self.closed_answer if is_yes_no_question(doc["question"]) else self.open_answer

    def generate_until(self, requests) -> list[str]:
        return [self.answer(self.doc_of(request)) for request in tqdm(requests, desc="medbench_baseline", disable=self.rank != 0)]
