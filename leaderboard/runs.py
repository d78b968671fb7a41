"""What a verified submission is: a :class:`Run` of :class:`TaskScores`, shown under its :class:`RunMeta`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunMeta:
    """How the run is shown and grouped on the board (manifest, else training metadata, else lmms-eval)."""

    display_name: str
    backbone: str | None = None
    variant: str = "base"
    base_model: str | None = None
    model_revision: str | None = None
    homepage: str | None = None
    contact: str | None = None
    notes: str | None = None
    training: dict[str, Any] | None = None


@dataclass
class TaskScores:
    """One task of a run, verified.

    Attributes:
        task: Task name.
        version: Task version the run used.
        item_ids: Dataset ids of the samples, in log order.
        fingerprint: Hash of the items and their references (:mod:`medbench.data.fingerprint`).
        data: Which reference data the fingerprint matched (``demo``, ``local:...``, ``hub:...``).
        data_priority: That reference's rank (the board keeps the strongest reference a task's runs use).
        answers: Hash of the model's answers (two runs with the same answers everywhere are duplicates).
        scores: Metric -> task score from the results file (or the ``medbench judge`` results).
        stderr: Metric -> standard error as lmms-eval reported it.
        per_sample: Metric -> per-sample values aligned with ``item_ids`` (``None``: not applicable/unscored).
        checks: Metric -> ``recomputed`` / ``consistent`` / ``unverified``.
        prompt: Prompt pieces (task kwargs, system instruction, chat template hash).
        decoding: Generation settings.
        nonstandard: How the run departs from the task's prompt and decoding (empty: standard).
        unknown_protocol: Evidence of the prompt and decoding that is missing or contradictory (empty: the
            protocol is known; otherwise the task is shown as "unknown protocol", never as standard).
        judge: Judge model, prompts and source file, when judge metrics are present.
        normalised: The answers as the task's normaliser sees them, aligned with ``item_ids`` (copy detection).
        clusters: The image each item asks about, aligned with ``item_ids`` (the unit the bootstrap resamples;
            empty when the reference data does not say).
    """

    task: str
    version: int
    item_ids: list[str]
    fingerprint: str
    data: str
    data_priority: int
    answers: str
    scores: dict[str, float]
    stderr: dict[str, float | None]
    per_sample: dict[str, list[float | None]]
    checks: dict[str, str]
    prompt: dict[str, Any]
    decoding: dict[str, Any]
    nonstandard: list[str] = field(default_factory=list)
    unknown_protocol: list[str] = field(default_factory=list)
    judge: dict[str, Any] | None = None
    normalised: list[str] = field(default_factory=list)
    clusters: list[str] = field(default_factory=list)


@dataclass
class Run:
    """A verified submission.

    Attributes:
        root: The submission folder.
        meta: Display and grouping information.
        model: lmms-eval model, model arguments and model name.
        tasks: Task name -> verified scores.
        digest: Hash of every results, samples and judge file read (the verification cache key).
        provenance: lmms-eval version, dates, results files (relative to ``root``).
    """

    root: Path
    meta: RunMeta
    model: dict[str, Any]
    tasks: dict[str, TaskScores]
    digest: str
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.meta.display_name

    @property
    def answers(self) -> str:
        """Hash of the model's answers on every task (duplicate detection)."""
        joined = "|".join(f"{task}:{scores.answers}" for task, scores in sorted(self.tasks.items()))
        return hashlib.sha256(joined.encode()).hexdigest()

    @property
    def nonstandard(self) -> dict[str, list[str]]:
        """Task -> how it departs from the task's standard prompt and decoding (standard tasks left out)."""
        return {task: scores.nonstandard for task, scores in self.tasks.items() if scores.nonstandard}

    @property
    def unknown_protocol(self) -> dict[str, list[str]]:
        """Task -> why its prompt and decoding cannot be told standard (tasks with full evidence left out)."""
        return {task: scores.unknown_protocol for task, scores in self.tasks.items() if scores.unknown_protocol}
