"""Gather each model's outputs per document from lmms-eval run folders, with the judge's severity grade.

Runs are read through :func:`medbench.results.find_runs`; a document is identified by ``(task, sample id)``
where the sample id is the dataset's own id, carried in the per-sample ``medbench_detail`` record (lmms-eval's
``doc_id`` is only a position). The judge's severity grade for an output comes from ``medbench judge``'s
``<stem>_judge_samples_<task>.jsonl`` beside the samples log when there is one, else from the ``judge_severe``
record the in-run judge leaves in the samples log.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medbench.data.loading import iter_json_records
from medbench.errors import MedbenchError
from medbench.judge.runner import SEVERITIES
from medbench.results import RecordError, find_runs, parse_sample_record


@dataclass(frozen=True)
class Output:
    """One model's answer to one document.

    Attributes:
        text: The prediction (lmms-eval's ``filtered_resps``).
        prompt: The text the model was given (``input``).
        reference: The reference answer (``target``).
        source: The data source the document came from (``medbench_detail.source``).
        judge_severity: ``none`` / ``minor`` / ``severe`` from the LLM judge, or ``None`` when not judged.
        samples_file: The samples log it was read from.
        doc_id: lmms-eval's ``doc_id``.
    """

    text: str
    prompt: str
    reference: str
    source: str | None
    judge_severity: str | None
    samples_file: Path
    doc_id: Any


@dataclass
class ModelOutputs:
    """Everything one model (one ``RUNS`` argument) produced: ``outputs[(task, sample id)]``."""

    label: str
    folder: Path
    model_name: str
    results_files: list[Path]
    outputs: dict[tuple[str, str], Output]


def parse_run_argument(argument: str) -> tuple[str, Path]:
    """``LABEL=PATH`` or ``PATH`` (label: the folder's name) -> ``(label, path)``."""
    label, separator, path = argument.partition("=")
    if separator and label and not Path(argument).exists():
        return label.strip(), Path(path)
    folder = Path(argument)
    return folder.resolve().name, folder


def _sidecar_grades(samples_file: Path, task: str) -> dict[Any, str | None]:
    stem = samples_file.name[: samples_file.name.index("_samples_")]
    sidecar = samples_file.with_name(f"{stem}_judge_samples_{task}.jsonl")
    grades: dict[Any, str | None] = {}
    if not sidecar.is_file():
        return grades
    for _number, verdict in iter_json_records(sidecar, fix=f"re-run `medbench judge` on {samples_file.name}"):
        grade = verdict.get("severity")
        # A failed grading has no `severe` score: unscored, not "none".
        scored = "severe" in (verdict.get("scores") or {})
        grades[str(verdict.get("id", verdict.get("doc_id")))] = grade if scored and grade in SEVERITIES else None
    return grades


def _inline_grade(record: dict[str, Any]) -> str | None:
    entry = record.get("judge_severe")
    if isinstance(entry, dict) and str(entry.get("status", "")).startswith("scored"):
        grade = entry.get("severity")
        return grade if grade in SEVERITIES else None
    return None


def read_model_outputs(label: str, folder: Path) -> ModelOutputs:
    """Read every task's samples log under ``folder``; for a task run twice, the newest run wins.

    Raises:
        MedbenchError: No results, no samples logs (``--log_samples`` missing), or a malformed line.
    """
    runs = find_runs(folder)  # oldest first: later runs overwrite earlier ones per task
    outputs: dict[tuple[str, str], Output] = {}
    latest: dict[str, Path] = {}
    for run in runs:
        latest.update(run.samples)
    if not latest:
        raise MedbenchError(f"{folder}: the runs have no samples logs; evaluate with --log_samples so outputs are kept")
    for task, samples_file in sorted(latest.items()):
        sidecar = _sidecar_grades(samples_file, task)
        for number, record in iter_json_records(samples_file, fix="pass lmms-eval --log_samples output"):
            try:
                sample = parse_sample_record(record, strict=False)
            except RecordError as error:
                raise MedbenchError(f"{samples_file}:{number}: {error}; pass lmms-eval --log_samples output") from None
            sample_id, text = sample.item_id, sample.prediction
            if text is None:
                raise MedbenchError(f"{samples_file}:{number}: no 'filtered_resps' text; pass the log of a generation task")
            grade = sidecar[sample_id] if sample_id in sidecar else _inline_grade(record)
            outputs[(task, sample_id)] = Output(
                text=text,
                prompt=str(record.get("input", "")),
                reference=str(record.get("target", "")),
                source=sample.detail.source,
                judge_severity=grade,
                samples_file=samples_file,
                doc_id=record.get("doc_id"),
            )
    newest = runs[-1]
    return ModelOutputs(
        label=label,
        folder=folder,
        model_name=newest.model,
        results_files=[run.path for run in runs],
        outputs=outputs,
    )
