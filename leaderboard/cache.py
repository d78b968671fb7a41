"""Verified task scores kept between builds, keyed by the hash of the files they were computed from."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

from medbench.leaderboard.runs import TaskScores


class VerificationCache:
    """Verified task scores kept between builds.

    Recomputing long-form metrics for hundreds of runs takes minutes; a board rebuilt after one new
    submission should not redo the others. An entry is used only when every results, samples and judge
    file hashes the same as when it was verified (and the verifier, the task versions and the reference
    data are unchanged), so an edited file is always re-verified.
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> dict[str, TaskScores] | None:
        if self.folder is None:
            return None
        path = self.folder / f"{key}.json"
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            names = {f.name for f in fields(TaskScores)}
            tasks = {task: TaskScores(**{k: v for k, v in scores.items() if k in names}) for task, scores in document.items()}
        except (OSError, ValueError, TypeError, AttributeError):
            self.misses += 1  # absent, or written by another version: verify again
            return None
        self.hits += 1
        return tasks

    def put(self, key: str, tasks: dict[str, TaskScores]) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{key}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({task: asdict(scores) for task, scores in tasks.items()}), encoding="utf-8")
        temporary.replace(path)
