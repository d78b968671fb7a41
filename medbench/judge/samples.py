"""Read lmms-eval ``--log_samples`` files and write judge results next to them.

lmms-eval 0.7.x writes ``<output>/<model>/<date>_samples_<task>.jsonl``, one JSON object per document
with ``doc_id``, ``target`` (the reference, as text), ``filtered_resps`` (the prediction after filters; a
string, or a list for several requests), ``input`` and the per-sample metric values. It drops ``doc``
before writing, so the sample id and precomputed reference facts travel in the ``medbench_detail`` record
that the long-form tasks add to every sample (``id``, ``facts``), or come from ``--data`` (matched by id).

The judge writes, beside each samples file:

* ``<date>_judge_samples_<task>.jsonl`` - one verdict per document (scores, failures, facts, labels, ...);
* ``<date>_judge_results_<task>.json`` - lmms-eval-shaped aggregate results (``results[task]`` with
  ``"<metric>,none"`` / ``"<metric>_stderr,none"`` keys, ``higher_is_better``, ``n-samples``) plus a
  ``medbench_judge`` block: judge model, endpoint (no secrets), prompt ids and hashes, usage and cost.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medbench.data.loading import iter_json_records
from medbench.errors import DataError
from medbench.judge.parts import HIGHER_IS_BETTER
from medbench.judge.parts import PREFIX as METRIC_PREFIX
from medbench.judge.parts import UNSCORED as UNSCORED_METRIC
from medbench.judge.runner import JudgeItem, JudgeReport
from medbench.results import RecordError, judge_paths, parse_sample_record

SAMPLES_FILE = re.compile(r"^(?P<stem>.+)_samples_(?P<task>.+)\.jsonl$")


@dataclass
class SamplesFile:
    """One lmms-eval samples file and the items read from it."""

    path: Path
    task: str
    stem: str
    items: list[JudgeItem]
    doc_ids: list[Any]

    @property
    def verdicts_path(self) -> Path:
        return judge_paths(self.path, self.task)[1]

    @property
    def results_path(self) -> Path:
        return judge_paths(self.path, self.task)[0]


def task_of(path: Path) -> str | None:
    """The task name in an lmms-eval samples file name (``<date>_samples_<task>.jsonl``)."""
    match = SAMPLES_FILE.match(path.name)
    return match["task"] if match else None


def is_long_form(task: str | None) -> bool | None:
    """``True`` for medbench's long-form (report) tasks, ``False`` for its VQA tasks, ``None`` if unknown."""
    from medbench.data.sources import SOURCES

    source = SOURCES.get(task or "")
    return None if source is None else source.kind == "report"


def find_samples_files(paths: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """Expand folders into the long-form samples files they contain (recursively).

    Files of medbench's VQA tasks are skipped (short answers have no facts to judge). In a folder, files of
    tasks medbench does not know are skipped too; named one by one, they are judged.

    Returns:
        ``(to_judge, skipped)``.

    Raises:
        DataError: A path does not exist, or no long-form samples file is found.
    """
    found: list[Path] = []
    skipped: list[Path] = []
    for path in paths:
        if path.is_dir():
            for candidate in sorted(p for p in path.rglob("*_samples_*.jsonl") if "_judge_samples_" not in p.name):
                (found if is_long_form(task_of(candidate)) else skipped).append(candidate)
        elif path.is_file():
            (skipped if is_long_form(task_of(path)) is False else found).append(path)
        else:
            raise DataError(f"{path} does not exist: pass lmms-eval --log_samples files or the folder holding them")
    if not found:
        what = f" (skipped {len(skipped)} VQA/unknown-task file(s))" if skipped else ""
        raise DataError(
            f"no long-form '*_samples_<task>.jsonl' files under {', '.join(map(str, paths))}{what}: "
            "run lmms-eval with --log_samples on medbench_mimic_cxr / medbench_amboss first"
        )
    return found, skipped


def load_reference_data(path: Path) -> dict[str, dict[str, Any]]:
    """``id -> record`` from a task data file (a ``.json`` list or JSONL, as the task loader reads it) with ``id``,
    ``reference`` and optional ``facts``.

    Raises:
        DataError: Unreadable file or records without ``id``.
    """
    try:
        records = list(iter_json_records(path, fix="fix the file passed to --data"))
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror}): pass an existing data file to --data") from None
    table: dict[str, dict[str, Any]] = {}
    for number, record in records:
        if not isinstance(record, dict) or "id" not in record:
            raise DataError(f"{path}: record {number} has no 'id' field: every record needs an id")
        table[str(record["id"])] = record
    return table


def read_samples_file(path: Path, data: Mapping[str, Mapping[str, Any]] | None = None) -> SamplesFile:
    """Read judge items from one lmms-eval samples file.

    Args:
        path: The ``*_samples_<task>.jsonl`` file.
        data: Optional ``id -> record`` table supplying ``reference`` / ``facts`` by sample id.

    Raises:
        DataError: Bad JSON, or a record without a prediction or reference.
    """
    match = SAMPLES_FILE.match(path.name)
    stem, task = (match["stem"], match["task"]) if match else (path.stem, path.stem)
    items: list[JudgeItem] = []
    doc_ids: list[Any] = []
    for line_number, record in iter_json_records(path, fix="pass an lmms-eval --log_samples file"):
        if _failed_generation(record):
            continue  # the model never answered: nothing to judge (medbench eval and the board report it)
        items.append(_item(record, data or {}, f"{path}:{line_number}"))
        doc_ids.append(record.get("doc_id"))
    return SamplesFile(path=path, task=task, stem=stem, items=items, doc_ids=doc_ids)


def _failed_generation(record: dict[str, Any]) -> bool:
    try:
        return parse_sample_record(record, strict=False).failed
    except RecordError:
        return False  # not failed; _item reports what is wrong with the record


def _item(record: dict[str, Any], data: Mapping[str, Mapping[str, Any]], where: str) -> JudgeItem:
    # medbench's per-sample record (medbench.results), read leniently: --data may supply what is missing.
    try:
        sample = parse_sample_record(record, strict=False)
    except RecordError as error:
        raise DataError(f"{where}: {error}: pass an lmms-eval --log_samples file of a medbench task") from None
    doc = record.get("doc") if isinstance(record.get("doc"), dict) else {}
    detail = sample.detail
    sample_id = detail.id if detail.id is not None else doc.get("id", record.get("doc_id"))
    extra = data.get(str(sample_id), {})
    prediction = sample.prediction
    if prediction is None:
        raise DataError(f"{where}: no 'filtered_resps' text: pass an lmms-eval --log_samples file of a generation task")
    reference = extra.get("reference", doc.get("reference", record.get("target")))
    if not isinstance(reference, str):
        raise DataError(f"{where}: no reference text ('target'): pass --data with 'id' and 'reference' fields")
    facts = extra.get("facts", doc.get("facts", list(detail.facts) if detail.facts is not None else None))
    if facts is not None and not (isinstance(facts, list) and all(isinstance(f, str) for f in facts)):
        raise DataError(f"{where}: 'facts' must be a list of strings")
    return JudgeItem(id=str(sample_id), prediction=prediction, reference=reference, facts=tuple(facts) if facts is not None else None)


def write_outputs(samples: SamplesFile, report: JudgeReport, parts: Iterable[str]) -> None:
    """Write per-sample verdicts and lmms-eval-shaped aggregate results beside the samples file."""
    with samples.verdicts_path.open("w", encoding="utf-8") as handle:
        for doc_id, verdict in zip(samples.doc_ids, report.samples, strict=True):
            handle.write(json.dumps({"doc_id": doc_id, **verdict.as_dict()}, ensure_ascii=False) + "\n")
    task_results: dict[str, Any] = {"alias": samples.task}
    higher: dict[str, bool] = {}
    for metric, stats in report.summary.items():
        name = METRIC_PREFIX + metric
        if stats["mean"] is not None:
            task_results[f"{name},none"] = stats["mean"]
            task_results[f"{name}_stderr,none"] = stats["stderr"] if stats["stderr"] is not None else "N/A"
        higher[name] = HIGHER_IS_BETTER[metric]
    task_results[f"{UNSCORED_METRIC},none"] = sum(bool(v.failures) for v in report.samples)
    higher[UNSCORED_METRIC] = False
    document = {
        "results": {samples.task: task_results},
        "higher_is_better": {samples.task: higher},
        "n-samples": {samples.task: {"original": len(report.samples), "effective": len(report.samples)}},
        "medbench_judge": {
            "source": samples.path.name,
            "parts": list(parts),
            "judge": report.judge,
            "summary": report.summary,
            "usage": report.usage,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    }
    samples.results_path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
