"""Copies are found on what a run said: per task, on the task's normalised answers.

A byte hash of the answers misses a copy with a space appended to every answer, and a hash over every
task misses a copy of only some tasks. So each task's answers are first normalised with the task's own
normaliser from :mod:`medbench.metrics` (the one its metrics compare with: :func:`~medbench.metrics.vqa.
normalize_answer` for VQA, :func:`~medbench.metrics.text.tokenize` for reports), then compared item by item
with every accepted run of that task: :data:`COPY_SHARE` or more identical normalised answers on any one
task make the newcomer a copy of that run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from medbench.data.sources import get_source

COPY_SHARE = 0.98  # two models agreeing on 98% of a task's normalised answers: one run, submitted twice


def normalised_answers(task: str, predictions: Sequence[str]) -> list[str]:
    """``predictions`` as the task's own metrics see them."""
    if get_source(task).kind == "vqa":
        from medbench.metrics.vqa import normalize_answer

        return [normalize_answer(text) for text in predictions]
    from medbench.metrics.text import tokenize

    return [" ".join(tokenize(text)) for text in predictions]


@dataclass(frozen=True)
class Copy:
    """A task on which a run's answers match another run's.

    Attributes:
        task: The task.
        share: Share of the newcomer's items with the same normalised answer.
    """

    task: str
    share: float


def shared_answers(mine: Mapping[str, str], theirs: Mapping[str, str]) -> float:
    """Share of ``mine``'s items (id -> normalised answer) that ``theirs`` answers identically."""
    if not mine:
        return 0.0
    same = sum(1 for item, answer in mine.items() if theirs.get(item) == answer)
    return same / len(mine)


def find_copy(mine: Mapping[str, Mapping[str, str]], theirs: Mapping[str, Mapping[str, str]]) -> Copy | None:
    """The first task (by name) on which ``mine`` copies ``theirs`` (task -> id -> normalised answer), if any."""
    for task in sorted(set(mine) & set(theirs)):
        share = shared_answers(mine[task], theirs[task])
        if share >= COPY_SHARE:
            return Copy(task, share)
    return None
