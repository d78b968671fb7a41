"""Read lmms-eval output folders: the results JSON, the per-sample logs and the judge files beside them.

The layout, in one place (the demo table, ``medbench judge`` and the leaderboard all read it from here):

* ``<output>/<model>/<stamp>_results.json``: lmms-eval's results;
* ``<stamp>_samples_<task>.jsonl`` beside it: the ``--log_samples`` per-sample records;
* ``<stamp>_judge_results_<task>.json`` and ``<stamp>_judge_samples_<task>.jsonl`` beside those:
  a ``medbench judge`` re-score of that log;
* ``<output>/medbench_judge/<time>_<task>.json``: the judge sidecar a run judged inside lmms-eval writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbench.errors import MedbenchError
from medbench.metrics.registry import COUNTERS, DETAIL_KEY

# Counters (question counts, unscored and failed samples) and the per-sample detail record are written by
# the medbench tasks but are not scores (declared in medbench.metrics.registry).
NON_SCORE_METRICS = COUNTERS | {DETAIL_KEY}

# What lmms-eval writes as the answer when a model call failed after its retries (api models).
FAILED_GENERATION_MARK = "[LMMS_EVAL_REQUEST_FAILED"
SIDECAR_FOLDER = "medbench_judge"


class RecordError(ValueError):
    """A per-sample record that does not have the medbench shape; the message names the field."""


@dataclass(frozen=True)
class SampleRecord:
    """One line of a medbench task's ``--log_samples`` file: the per-sample record medbench produces.

    lmms-eval writes ``doc_id``, ``target`` (the reference as text), ``filtered_resps`` (the answer after
    filters: a string, or a list whose first string is the answer), ``input`` (the prompt) and every
    metric's per-sample value; the medbench tasks add ``medbench_detail`` (``id``, ``source``; VQA:
    ``answer_type``; reports: ``facts``), because lmms-eval drops the document itself.

    Attributes:
        doc_id: lmms-eval's document index (``None`` only in lenient reading).
        item_id: The dataset id (``medbench_detail.id``; lenient reading falls back to ``doc_id``).
        prediction: The model's answer (``None`` only in lenient reading).
        target: The reference text (``None`` only in lenient reading).
        answer_type: ``CLOSED`` / ``OPEN`` for VQA, else ``None``.
        facts: Reference facts of a long-form item, when logged.
        raw: The whole record (metric values live here).
    """

    doc_id: int | None
    item_id: str
    prediction: str | None
    target: str | None
    answer_type: str | None
    facts: tuple[str, ...] | None
    raw: dict[str, Any]

    @property
    def detail(self) -> dict[str, Any]:
        detail = self.raw.get(DETAIL_KEY)
        return detail if isinstance(detail, dict) else {}


def first_text(value: Any) -> str | None:
    """The answer text of ``filtered_resps``/``resps``: the string, or the first string of nested lists."""
    while isinstance(value, list) and value:
        value = value[0]
    return value if isinstance(value, str) else None


def parse_sample_record(record: Any, strict: bool = True) -> SampleRecord:
    """Validate one per-sample record and read it into a :class:`SampleRecord`.

    Args:
        record: A parsed JSON line.
        strict: Every field required (the leaderboard); otherwise missing fields are ``None`` and the reader
            supplies them (``medbench judge`` with ``--data``). Present fields are checked either way.

    Raises:
        RecordError: The first problem, as ``field: problem``.
    """
    if not isinstance(record, dict):
        raise RecordError("(record): not a JSON object")
    doc_id = record.get("doc_id")
    if strict and doc_id is not None and (isinstance(doc_id, bool) or not isinstance(doc_id, int) or doc_id < 0):
        raise RecordError("doc_id: not a non-negative integer")
    detail = record.get(DETAIL_KEY)
    if detail is not None and not isinstance(detail, dict):
        raise RecordError(f"{DETAIL_KEY}: not an object")
    detail = detail or {}
    item_id = detail.get("id")
    if item_id is not None and (isinstance(item_id, bool) or not isinstance(item_id, (str, int))):
        raise RecordError(f"{DETAIL_KEY}/id: not a string or integer")
    answers = record.get("filtered_resps", record.get("resps"))
    prediction = first_text(answers)
    if answers is not None and prediction is None:
        raise RecordError("filtered_resps: holds no answer text")
    target = record.get("target")
    if target is not None and not isinstance(target, str):
        raise RecordError("target: not a string")
    answer_type = detail.get("answer_type")
    if answer_type is not None and answer_type not in ("CLOSED", "OPEN"):
        raise RecordError(f"{DETAIL_KEY}/answer_type: not CLOSED or OPEN")
    facts = detail.get("facts")
    if facts is not None and not (isinstance(facts, list) and all(isinstance(f, str) for f in facts)):
        raise RecordError(f"{DETAIL_KEY}/facts: not a list of strings")
    source = detail.get("source")
    if source is not None and not isinstance(source, str):
        raise RecordError(f"{DETAIL_KEY}/source: not a string")
    if strict:
        for name, value in (("doc_id", doc_id), ("target", target), ("filtered_resps", answers), (f"{DETAIL_KEY}/id", item_id)):
            if value is None:
                raise RecordError(f"{name}: missing")
    if item_id is None and doc_id is not None:
        item_id = doc_id
    return SampleRecord(
        doc_id=doc_id,
        item_id=str(item_id) if item_id is not None else "",
        prediction=prediction,
        target=target,
        answer_type=answer_type,
        facts=tuple(facts) if facts is not None else None,
        raw=record,
    )


def pair_samples(results_path: Path) -> dict[str, Path]:
    """Task -> the ``--log_samples`` file written with ``results_path`` (same stamp, same folder)."""
    stamp = results_path.name[: -len("_results.json")]
    return {
        sample.name[len(f"{stamp}_samples_") : -len(".jsonl")]: sample
        for sample in results_path.parent.glob(f"{stamp}_samples_*.jsonl")
        if "_judge_samples_" not in sample.name
    }


def judge_paths(samples_path: Path, task: str) -> tuple[Path, Path]:
    """The ``medbench judge`` results and verdicts files of a samples file (whether or not they exist)."""
    stem = samples_path.name[: -len(f"_samples_{task}.jsonl")]
    return (
        samples_path.with_name(f"{stem}_judge_results_{task}.json"),
        samples_path.with_name(f"{stem}_judge_samples_{task}.jsonl"),
    )


@dataclass
class RunResults:
    """One lmms-eval run (one results JSON) and where its files are.

    Attributes:
        path: The results JSON.
        raw: Its parsed content.
        samples: Per task, the ``--log_samples`` JSONL file of this run (when written).
    """

    path: Path
    raw: dict[str, Any]
    samples: dict[str, Path] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return str(self.raw.get("model_name") or self.raw.get("config", {}).get("model", "?"))

    @property
    def tasks(self) -> list[str]:
        return sorted(task for task in self.raw.get("results", {}) if task in self.raw.get("configs", {}))

    def metrics(self, task: str, include_counters: bool = False) -> dict[str, tuple[float, float | None]]:
        """``{metric: (value, stderr or None)}`` for a task, filter suffixes (",none") removed.

        Args:
            task: Task name.
            include_counters: Also the counters (question counts, unscored and failed samples).
        """
        values: dict[str, tuple[float, float | None]] = {}
        entry = self.raw["results"][task]
        skipped = {DETAIL_KEY} if include_counters else NON_SCORE_METRICS
        for key, value in entry.items():
            if "," not in key or "_stderr" in key:
                continue
            metric, filter_name = key.split(",", 1)
            if metric in skipped or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            stderr = entry.get(f"{metric}_stderr,{filter_name}")
            valid = isinstance(stderr, (int, float)) and not isinstance(stderr, bool)
            values[metric] = (float(value), float(stderr) if valid else None)
        return values

    def count(self, task: str, metric: str) -> float | None:
        """A counter's value for a task (``n_closed``, ``judge_unscored``, ``failed_generations``), or ``None``."""
        value = self.metrics(task, include_counters=True).get(metric)
        return None if value is None else value[0]


def find_runs(folder: Path) -> list[RunResults]:
    """All lmms-eval runs under ``folder`` (results JSONs found recursively), oldest first.

    Raises:
        MedbenchError: When the folder holds no results JSON.
    """
    paths = sorted(folder.rglob("*_results.json")) if folder.is_dir() else [folder]
    runs = []
    for path in paths:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise MedbenchError(f"{path}: not a readable lmms-eval results file ({error})") from None
        runs.append(RunResults(path=path, raw=raw, samples=pair_samples(path)))
    if not runs:
        raise MedbenchError(f"{folder}: no lmms-eval results (*_results.json) found; was --output_path set?")
    return runs
