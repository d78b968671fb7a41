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
import unicodedata
from collections.abc import Mapping
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
class JudgeIdentity:
    """Which judge scored a sample: the model and each prompt's id and hash (data, not a string to split).

    Attributes:
        model: The judge model.
        prompts: Per prompt role (``facts``, ``nli``, ...), ``"<prompt id>:<first 8 hex of its sha256>"``.
    """

    model: str
    prompts: dict[str, str]

    @classmethod
    def of_report(cls, judge: Mapping[str, Any]) -> JudgeIdentity:
        """From a judge report's ``judge`` block (``{"model", "prompts": {role: {"id", "sha256"}}}``)."""
        return cls(
            model=str(judge["model"]),
            prompts={str(role): f"{spec['id']}:{spec['sha256'][:8]}" for role, spec in judge["prompts"].items()},
        )

    def to_json(self) -> dict[str, Any]:
        """The logged form."""
        return {"model": self.model, "prompts": dict(self.prompts)}

    @classmethod
    def from_json(cls, value: Any) -> JudgeIdentity | None:
        """Read a logged identity; ``None`` when ``value`` is not one."""
        if not isinstance(value, dict) or not isinstance(value.get("model"), str):
            return None
        prompts = value.get("prompts")
        if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
            return None
        return cls(model=value["model"], prompts=dict(prompts))


@dataclass(frozen=True)
class SampleDetail:
    """``medbench_detail``: what a medbench task adds to lmms-eval's per-sample record (its producer's schema).

    lmms-eval logs the answer, the reference and every metric's value but drops the document; the tasks log this
    beside them (in the spirit of inspect_ai's ``Score(value, answer, explanation, metadata)``: the values are
    lmms-eval's metric fields, the rest is here). Producers build it and write :meth:`to_json`; every reader
    goes through :meth:`from_json`.

    Attributes:
        id: The dataset's own id of the document (the key for pairing runs and items).
        source: The data source the document came from.
        answer_type: ``CLOSED`` / ``OPEN`` for VQA, else ``None``.
        facts: Reference facts of a long-form item (so the judge can re-score from the log alone).
        failure: The backend's failure text when the generation failed (nothing was scored), else ``None``.
        metadata: What the scorer read from the answer (VQA: ``parsed``, ``read_as`` or
            ``normalized_prediction``; reports: word counts), for humans reading the log.
    """

    id: str | int | None
    source: str | None
    answer_type: str | None = None
    facts: tuple[str, ...] | None = None
    failure: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """The model never answered (lmms-eval's failure marker): counted, never scored."""
        return self.failure is not None

    def to_json(self) -> dict[str, Any]:
        """The logged ``medbench_detail`` object."""
        record: dict[str, Any] = {"id": self.id, "source": self.source}
        if self.answer_type is not None:
            record["answer_type"] = self.answer_type
        record.update(self.metadata)
        if self.facts is not None:
            record["facts"] = list(self.facts)
        record[_FAILED_FLAG] = self.failed
        if self.failure is not None:
            record["failure"] = self.failure
        return record

    @classmethod
    def from_json(cls, detail: Any) -> SampleDetail | None:
        """Read a logged ``medbench_detail`` (``None`` when absent).

        Raises:
            RecordError: A field of the wrong type, as ``medbench_detail/<field>: problem``.
        """
        if detail is None:
            return None
        if not isinstance(detail, dict):
            raise RecordError(f"{DETAIL_KEY}: not an object")
        item_id = detail.get("id")
        if item_id is not None and (isinstance(item_id, bool) or not isinstance(item_id, (str, int))):
            raise RecordError(f"{DETAIL_KEY}/id: not a string or integer")
        answer_type = detail.get("answer_type")
        if answer_type is not None and answer_type not in ("CLOSED", "OPEN"):
            raise RecordError(f"{DETAIL_KEY}/answer_type: not CLOSED or OPEN")
        facts = detail.get("facts")
        if facts is not None and not (isinstance(facts, list) and all(isinstance(f, str) for f in facts)):
            raise RecordError(f"{DETAIL_KEY}/facts: not a list of strings")
        source = detail.get("source")
        if source is not None and not isinstance(source, str):
            raise RecordError(f"{DETAIL_KEY}/source: not a string")
        failed = detail.get(_FAILED_FLAG)
        if failed is not None and not isinstance(failed, bool):
            raise RecordError(f"{DETAIL_KEY}/{_FAILED_FLAG}: not true or false")
        failure = detail.get("failure")
        if failed and not isinstance(failure, str):
            failure = ""  # flagged without its text: still failed
        known = {"id", "source", "answer_type", "facts", _FAILED_FLAG, "failure"}
        return cls(
            id=item_id,
            source=source,
            answer_type=answer_type,
            facts=tuple(facts) if facts is not None else None,
            failure=failure if failed else None,
            metadata={key: value for key, value in detail.items() if key not in known},
        )


_FAILED_FLAG = "failed_generation"


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
        detail: The :class:`SampleDetail` the task logged (an empty one when the record has none).
    """

    doc_id: int | None
    item_id: str
    prediction: str | None
    target: str | None
    answer_type: str | None
    facts: tuple[str, ...] | None
    raw: dict[str, Any]
    detail: SampleDetail

    @property
    def failed(self) -> bool:
        """The model never answered: the task marked it, or the answer holds lmms-eval's failure marker.

        The marker is looked for anywhere, in any case and with invisible characters removed: an answer that hides
        it behind a zero-width space or lower case is still a failed call, and no real answer contains it.
        """
        text = unicodedata.normalize("NFKC", self.prediction or "")
        visible = "".join(c for c in text if unicodedata.category(c) != "Cf")
        return self.detail.failed or FAILED_GENERATION_MARK.casefold() in visible.casefold()


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
    detail = SampleDetail.from_json(record.get(DETAIL_KEY)) or SampleDetail(id=None, source=None)
    item_id = detail.id
    answers = record.get("filtered_resps", record.get("resps"))
    prediction = first_text(answers)
    if answers is not None and prediction is None:
        raise RecordError("filtered_resps: holds no answer text")
    target = record.get("target")
    if target is not None and not isinstance(target, str):
        raise RecordError("target: not a string")
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
        answer_type=detail.answer_type,
        facts=detail.facts,
        raw=record,
        detail=detail,
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
