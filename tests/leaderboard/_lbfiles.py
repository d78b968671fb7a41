"""Helpers that copy and edit real result folders into adversarial submissions."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def copy_run(source: Path, destination: Path, manifest: dict[str, Any] | None = None) -> Path:
    """A copy of a result folder, optionally with a submission manifest."""
    shutil.copytree(source, destination)
    if manifest is not None:
        (destination / "medbench-submission.json").write_text(json.dumps(manifest), encoding="utf-8")
    return destination


def results_file(folder: Path) -> Path:
    return next(path for path in folder.rglob("*_results.json"))


def samples_file(folder: Path, task: str) -> Path:
    return next(folder.rglob(f"*_samples_{task}.jsonl"))


def edit_results(folder: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = results_file(folder)
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document, indent=2))


def edit_samples(folder: Path, task: str, change: Callable[[list[dict[str, Any]]], None]) -> None:
    path = samples_file(folder, task)
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    change(records)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def forge_vqa(folder: Path, task: str, change: Callable[[list[dict[str, Any]]], None]) -> None:
    """Edit a VQA log and make every logged value and aggregate consistent with the edit.

    This is the strongest tamperer: whatever it changes (answers, references), the per-sample values and
    the task scores agree with medbench's scorer afterwards.
    """
    from medbench.lmms.vqa import process_results

    def rescore(records: list[dict[str, Any]]) -> None:
        change(records)
        for record in records:
            detail = record["medbench_detail"]
            doc = {
                "answer": record["target"],
                "answer_type": detail["answer_type"],
                "id": detail["id"],
                "source": detail["source"],
            }
            for key in (
                "overall",
                "closed_accuracy",
                "open_recall",
                "exact_match",
                "token_f1",
                "closed_unparsed",
                "n_closed",
                "n_open",
            ):
                record.pop(key, None)
            record.update(
                {k: v for k, v in process_results(doc, [record["filtered_resps"]]).items() if k != "medbench_detail"}
            )
        totals: dict[str, list[float]] = {}
        for record in records:
            for key in ("overall", "closed_accuracy", "open_recall", "exact_match", "token_f1", "closed_unparsed"):
                if key in record:
                    totals.setdefault(key, []).append(record[key])

        def fix(document: dict[str, Any]) -> None:
            for key, values in totals.items():
                document["results"][task][f"{key},none"] = sum(values) / len(values)

        edit_results(folder, fix)

    edit_samples(folder, task, rescore)
