"""Read one submission folder into a verified :class:`~medbench.leaderboard.runs.Run`, or reject it with one reason.

A submission is a folder holding lmms-eval output (``<stamp>_results.json`` with its ``--log_samples``
files ``<stamp>_samples_<task>.jsonl``), optionally ``medbench judge`` re-scores beside the samples files
or the judge sidecar lmms-eval runs write into ``medbench_judge/``, and optionally a
``medbench-submission.json`` manifest (schema: ``leaderboard/schema/submission-v1``).

Everything a submission says is untrusted (:mod:`medbench.leaderboard.safe_io` reads it). For every task,
in this order, cheapest first:

1. the results entry: a known task (a name the submission calls a group is no group), the board's task
   version, no ``--limit``, every always-on metric of the task reported, optional metric families whole;
2. the per-sample log: complete, schema-valid, no failed generations;
3. the data: the log's items and references must match the task's reference data
   (:mod:`medbench.data.fingerprint`) before anything is recomputed;
4. every score, recomputed or checked from the log (:mod:`medbench.leaderboard.recompute`);
5. the prompt and decoding, compared with the task YAML: departures mark the run non-standard.

The first problem found rejects the run with a :class:`~medbench.leaderboard.rules.Rejected` whose
``rule`` says which trust rule failed.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from medbench.data.fingerprint import DataFingerprint, fingerprint_items, item_key, reference_data
from medbench.data.sources import get_source
from medbench.errors import MedbenchError
from medbench.metrics.registry import METRICS, Metric
from medbench.results import (
    FAILED_GENERATION_MARK,
    SIDECAR_FOLDER,
    JudgeIdentity,
    RecordError,
    RunResults,
    judge_paths,
    pair_samples,
    parse_sample_record,
)
from medbench.taskfiles import group_members, task_configs, task_versions

from . import provenance
from .cache import VerificationCache
from .copies import normalised_answers
from .discovery import CACHE_DIR, MANIFEST_NAME
from .judging import verify_judge_metric
from .recompute import (
    REGISTRY,
    Sample,
    VerificationError,
    check_metric,
    logged_value,
    unfilled,
)
from .rules import Limits, Rejected
from .runs import Run, TaskScores
from .safe_io import parse, parse_lines, read_bytes, read_json, relative, schema_problem

MANIFEST_SCHEMA = "submission-v1.schema.json"
RESULTS_SCHEMA = "lmms-results-v1.schema.json"
JUDGE_RESULTS_SCHEMA = "judge-results-v1.schema.json"
JUDGE_VERDICT_SCHEMA = "judge-verdict-v1.schema.json"
SIDECAR_SCHEMA = "judge-sidecar-v1.schema.json"


# -------------------------------------------------------------------------------------------- loading


def read_manifest(root: Path, limits: Limits) -> dict[str, Any] | None:
    """The folder's manifest, schema-checked, or ``None`` when it has none.

    Raises:
        Rejected: Unreadable, oversized or invalid manifest.
    """
    path = root / MANIFEST_NAME
    if not path.exists() and not path.is_symlink():
        return None
    manifest, _ = read_json(root, path, limits.manifest_bytes, "the manifest", limits)
    problem = schema_problem(manifest, MANIFEST_SCHEMA)
    if problem:
        raise Rejected("schema", path, f"{problem} (schema {MANIFEST_SCHEMA}; see docs/leaderboard.md)")
    return manifest


def _results_files(root: Path, manifest: dict[str, Any] | None, limits: Limits) -> list[Path]:
    if manifest and "results" in manifest:
        paths = [root / relative_path for relative_path in manifest["results"]]
    elif manifest:
        paths = sorted(path for path in root.rglob("*_results.json") if CACHE_DIR not in path.parts)
    else:
        # Without a manifest a folder is one run: the results beside it, else the one folder below holding some
        # (lmms-eval nests them in <output>/<model>/); results spread over several folders are several runs.
        paths = sorted(root.glob("*_results.json"))
        if not paths:
            paths = sorted(path for path in root.rglob("*_results.json") if CACHE_DIR not in path.parts)
            folders = sorted({str(path.parent.relative_to(root)) for path in paths})
            if len(folders) > 1:
                raise Rejected(
                    "duplicate",
                    root,
                    f"results of several runs below it ({', '.join(folders[:4])}); pass each run's folder, or add a "
                    f"{MANIFEST_NAME} saying they are one submission",
                )
    if not paths:
        raise Rejected("missing_samples", root, "no lmms-eval results file (*_results.json) in the submission folder")
    if len(paths) > limits.results_files:
        raise Rejected(
            "oversized",
            root,
            f"{len(paths)} results files, over the limit of {limits.results_files}; list the ones to use under 'results' in the manifest",
        )
    return paths


@dataclass
class _TaskSource:
    task: str
    results: RunResults
    samples_path: Path


@dataclass
class _TaskFiles:
    samples: bytes
    judge: dict[str, bytes]
    sidecars: list[tuple[Path, bytes]]


def board_references(environ: dict[str, str] | None = None) -> dict[str, list[DataFingerprint]]:
    """Every task's reference data on this installation (see :mod:`medbench.data.fingerprint`).

    Raises:
        MedbenchError: A configured ``MEDBENCH_<TASK>`` that cannot be read (the board's own mistake).
    """
    return {task: reference_data(task, config, environ) for task, config in task_configs().items()}


def load_run(
    root: Path,
    limits: Limits | None = None,
    cache: VerificationCache | None = None,
    references: dict[str, list[DataFingerprint]] | None = None,
) -> Run:
    """Load and verify one submission folder.

    Args:
        root: The submission folder (see :func:`~medbench.leaderboard.discovery.find_submissions`).
        limits: Size caps.
        cache: Verified task scores from earlier builds, keyed by the hash of the files they came from.
        references: Task -> accepted reference data (default: :func:`board_references`).

    Raises:
        Rejected: The first trust rule the submission breaks.
    """
    limits = limits or Limits()
    references = board_references() if references is None else references
    root = root.resolve()
    if not root.is_dir():
        raise Rejected("unreadable", root, "not a folder")
    manifest = read_manifest(root, limits)
    sources: dict[str, _TaskSource] = {}
    digest = hashlib.sha256(_verifier_identity(references).encode())
    results_runs: list[RunResults] = []
    for path in _results_files(root, manifest, limits):
        raw, data = read_json(root, path, limits.results_bytes, "the results file", limits)
        digest.update(data)
        problem = schema_problem(raw, RESULTS_SCHEMA)
        if problem:
            raise Rejected("schema", path, f"{problem} (not an lmms-eval results file; schema {RESULTS_SCHEMA})")
        run = RunResults(path=path, raw=raw, samples=pair_samples(path))
        results_runs.append(run)
        _check_limit(path, raw)
        for task in _result_tasks(path, raw):
            if task in sources:
                raise Rejected(
                    "duplicate",
                    path,
                    f"task {task} is also in {relative(root, sources[task].results.path)}; keep one results file per task",
                )
            samples_path = run.samples.get(task)
            if samples_path is None:
                raise Rejected(
                    "missing_samples",
                    path,
                    f"no per-sample log for {task} (*_samples_{task}.jsonl); rerun lmms-eval with --log_samples",
                )
            sources[task] = _TaskSource(task, run, samples_path)
    if not sources:
        raise Rejected("missing_samples", root, "the results files hold no medbench task")
    files: dict[str, _TaskFiles] = {}
    for task, source in sorted(sources.items()):
        cap = _samples_cap(limits, references.get(task, []))
        data = read_bytes(root, source.samples_path, cap, f"the {task} per-sample log")
        judge = _judge_files(root, source, limits)
        sidecars = _sidecar_files(root, source, limits)
        files[task] = _TaskFiles(data, judge, sidecars)
        digest.update(data)
        for blob in [*judge.values(), *(blob for _, blob in sidecars)]:
            digest.update(blob)
    key = digest.hexdigest()
    tasks = cache.get(key) if cache is not None else None
    if tasks is None:
        tasks = {
            task: _verify_task(root, sources[task], files[task], limits, references.get(task, []))
            for task in sorted(sources)
        }
        if cache is not None:
            cache.put(key, tasks)
    first = results_runs[0].raw
    model = {
        "model": str(first["config"].get("model", "")),
        "model_args": first["config"].get("model_args"),
        "model_name": str(first.get("model_name") or ""),
    }
    meta = provenance.meta(root, manifest, model, limits)
    details = {
        "results_files": [relative(root, run.path) for run in results_runs],
        "lmms_eval_version": first.get("lmms_eval_version"),
        "date": first.get("date"),
    }
    return Run(root=root, meta=meta, model=model, tasks=tasks, digest=key, provenance=details)


def _samples_cap(limits: Limits, references: list[DataFingerprint]) -> int:
    """The byte cap of a task's per-sample log: what its test set's size allows, within the global cap.

    A log holds one line per test item, so a 500 MB log of a 100-item task is refused before it is read.
    """
    if not references:
        return limits.samples_bytes
    items = max(reference.size for reference in references)
    return min(limits.samples_bytes, max(limits.sample_line_bytes, items * limits.bytes_per_sample))


def _check_limit(path: Path, raw: dict[str, Any]) -> None:
    limit = raw["config"].get("limit")
    if limit is not None:
        shown = f"{limit:g}" if isinstance(limit, float) else str(limit)
        raise Rejected(
            "limit",
            path,
            f"evaluated with --limit {shown}; the board takes full test sets only, rerun without --limit",
        )
    for task, counts in raw["n-samples"].items():
        if counts["effective"] != counts["original"]:
            raise Rejected(
                "limit",
                path,
                f"{task} evaluated on {counts['effective']} of {counts['original']} samples; rerun on the full test set",
            )


def _result_tasks(path: Path, raw: dict[str, Any]) -> list[str]:
    """The medbench tasks of a results file; groups are only the board's own groups."""
    known, versions, groups = task_configs(), task_versions(), _groups()
    claimed = raw.get("group_subtasks")
    claimed = claimed if isinstance(claimed, dict) else {}
    for name, members in claimed.items():
        if name in known and members:
            raise Rejected(
                "unknown_task",
                path,
                f"group_subtasks declares the task {name!r} a group; a task is scored as a task, remove the entry",
            )
        if name not in groups and members:
            raise Rejected(
                "unknown_task",
                path,
                f"group_subtasks declares {name!r} a group; it is not a medbench group (known: {', '.join(sorted(groups))})",
            )
    tasks = []
    for task in raw["results"]:
        if task in groups:
            # A group row aggregates its tasks; the board reads the tasks themselves, all of them.
            dropped = [member for member in groups[task] if member not in raw["results"]]
            if dropped:
                raise Rejected(
                    "missing_metric",
                    path,
                    f"group {task} is reported without its task(s) {', '.join(dropped)}; submit every task of the group",
                )
            continue
        if task not in known:
            raise Rejected(
                "unknown_task",
                path,
                f"task {task!r} is not a medbench task (known: {', '.join(sorted(known))}); remove it from the submission",
            )
        version = raw["versions"].get(task)
        if not _is_version(version, versions[task]):
            raise Rejected(
                "version",
                path,
                f"{task} was evaluated at task version {json.dumps(version)[:40]}, the board is at version {versions[task]}; rerun with the current medbench tasks",
            )
        if task not in raw["n-samples"]:
            raise Rejected("schema", path, f"n-samples has no entry for {task}")
        tasks.append(task)
    return tasks


def _is_version(value: Any, expected: int) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value == expected
    if isinstance(value, float):
        return math.isfinite(value) and value == expected
    if isinstance(value, str):
        return value.strip() in (str(expected), f"{expected}.0")
    return False


@cache
def _groups() -> dict[str, tuple[str, ...]]:
    # taskfiles reads the group YAMLs on every call; a board reads them once.
    return {group: tuple(members) for group, members in group_members().items()}


def _judge_files(root: Path, source: _TaskSource, limits: Limits) -> dict[str, bytes]:
    results, samples = judge_paths(source.samples_path, source.task)
    if not results.exists() and not results.is_symlink():
        return {}
    return {
        "results": read_bytes(root, results, limits.results_bytes, f"the {source.task} judge results"),
        "samples": read_bytes(root, samples, limits.samples_bytes, f"the {source.task} judge verdicts"),
    }


def _sidecar_files(root: Path, source: _TaskSource, limits: Limits) -> list[tuple[Path, bytes]]:
    """The judge sidecars an lmms-eval run wrote into ``<output_path>/medbench_judge/`` for this task."""
    found = []
    folder = source.samples_path.parent
    while folder.is_relative_to(root):
        sidecars = folder / SIDECAR_FOLDER
        if sidecars.is_dir():
            for path in sorted(sidecars.glob(f"*_{source.task}.json"))[-8:]:
                found.append((path, read_bytes(root, path, limits.samples_bytes, f"the {source.task} judge sidecar")))
        if folder == root:
            break
        folder = folder.parent
    return found


# -------------------------------------------------------------------------------------------- samples


def read_samples(path: Path, data: bytes, task: str, limits: Limits) -> list[Sample]:
    """Parse a ``--log_samples`` file, each line checked as medbench's per-sample record.

    Raises:
        Rejected: Bad lines, missing fields, repeated ids, too many samples.
    """
    samples: list[Sample] = []
    seen: set[str] = set()
    doc_ids: set[int | None] = set()
    for number, line in parse_lines(path, data, limits, f"the {task} per-sample log"):
        try:
            record = parse_sample_record(line, strict=True)
        except RecordError as problem:
            raise Rejected(
                "schema",
                path,
                f"line {number}: {problem} (medbench.results.SampleRecord; the log must come from lmms-eval --log_samples)",
            ) from None
        if record.item_id in seen:
            raise Rejected("duplicate", path, f"line {number}: sample {record.item_id!r} is logged twice")
        if record.doc_id in doc_ids:
            raise Rejected(
                "schema", path, f"line {number}: doc_id {record.doc_id} is logged twice; each sample has its own doc_id"
            )
        seen.add(record.item_id)
        doc_ids.add(record.doc_id)
        assert record.doc_id is not None and record.prediction is not None and record.target is not None  # strict
        samples.append(
            Sample(record.doc_id, record.item_id, record.prediction, record.target, record.answer_type, record.raw, record.failed)
        )
        if len(samples) > limits.samples_per_task:
            raise Rejected("oversized", path, f"more than {limits.samples_per_task} samples for {task}")
    return samples


def _check_data(path: Path, task: str, samples: list[Sample], references: list[DataFingerprint]) -> DataFingerprint:
    """The reference the log's items and references match; compared before anything is recomputed."""
    kind = get_source(task).kind
    facts = [s.record["medbench_detail"].get("facts") for s in samples]  # checked by parse_sample_record
    mine = fingerprint_items(item_key(kind, s.item_id, s.target, s.answer_type, f) for s, f in zip(samples, facts, strict=True))
    for reference in references:
        if reference.sha256 == mine.sha256 and reference.size == mine.size:
            return reference
    if not references:
        raise Rejected(
            "data_mismatch",
            path,
            f"the board has no reference data for {task}; the board operator sets {get_source(task).env_var} to the test set",
        )
    closest = min(references, key=lambda r: (abs(r.size - mine.size), -r.priority))
    if closest.ids is not None:
        missing, extra = len(closest.ids - mine.ids), len(mine.ids - closest.ids)  # type: ignore[operator]
        if missing or extra:
            why = f"{len(samples)} items logged, {missing} of the {closest.size} test items missing and {extra} unknown"
        else:
            why = "the same items, but other gold answers or references"
    elif closest.size != mine.size:
        why = f"{len(samples)} items logged, the test set has {closest.size}"
    else:
        why = "other items or gold answers"
    raise Rejected(
        "data_mismatch",
        path,
        f"{task} does not match its test data ({closest.data}): {why}; evaluate on the unmodified test set",
    )


# ---------------------------------------------------------------------------------------- verification


def _task_metrics(task: str) -> list[Metric]:
    names = [str(entry["metric"]) for entry in task_configs()[task].get("metric_list", [])]
    return [METRICS[name] for name in names if name in METRICS]


def _check_reported(path: Path, task: str, declared: list[Metric], reported: set[str]) -> None:
    """Selective reporting: every always-on metric, and optional families whole."""
    missing = [m.name for m in declared if m.family is None and m.name not in reported]
    if missing:
        raise Rejected(
            "missing_metric",
            path,
            f"{task} leaves out {', '.join(missing)}; a submission reports every metric of each task it submits",
        )
    families: dict[str, list[Metric]] = {}
    for metric in declared:
        if metric.family:
            families.setdefault(metric.family, []).append(metric)
    for members in families.values():
        present = [m.name for m in members if m.name in reported]
        if present and len(present) != len(members):
            absent = [m.name for m in members if m.name not in reported]
            raise Rejected(
                "missing_metric",
                path,
                f"{task} reports {', '.join(present)} but leaves out {', '.join(absent)} (computed together); report all or none",
            )
    judged = any(m.family and m.family.startswith("judge:") and m.name in reported for m in declared)
    if judged and "judge_unscored" not in reported and any(m.name == "judge_unscored" for m in declared):
        raise Rejected("missing_metric", path, f"{task} reports judge scores without judge_unscored; report it too")


def _verify_task(
    root: Path, source: _TaskSource, files: _TaskFiles, limits: Limits, references: list[DataFingerprint]
) -> TaskScores:
    task, raw = source.task, source.results.raw
    path = source.samples_path
    samples = read_samples(path, files.samples, task, limits)
    expected = raw["n-samples"][task]["effective"]
    if len(samples) != expected:
        raise Rejected(
            "missing_samples",
            path,
            f"{len(samples)} samples logged for {task}, the results file evaluated {expected}; submit the complete --log_samples file",
        )
    failed = sum(sample.failed for sample in samples)
    if failed:
        raise Rejected(
            "failed_generations",
            path,
            f"{failed} of {len(samples)} {task} generations failed ({FAILED_GENERATION_MARK}...); fix the model or endpoint and rerun",
        )
    reference = _check_data(path, task, samples, references)
    decoding = provenance.decoding(source.results.path, raw, task)
    declared = _task_metrics(task)
    try:
        reported = source.results.metrics(task, include_counters=True)
    except (TypeError, ValueError, OverflowError) as error:
        raise Rejected("schema", source.results.path, f"results.{task}: {error}") from None
    judge = _read_judge(path, task, samples, files.judge, limits) if files.judge else None
    judged_names = set(judge["scores"]) if judge else set()
    _check_reported(source.results.path, task, declared, set(reported) | judged_names)
    unexpected = sorted(set(reported) - {m.name for m in declared})
    if unexpected:
        raise Rejected(
            "schema",
            source.results.path,
            f"{task} reports metrics its task YAML does not define: {', '.join(unexpected)}",
        )
    sidecar = None
    scores: dict[str, float] = {}
    stderr: dict[str, float | None] = {}
    per_sample: dict[str, list[float | None]] = {}
    checks: dict[str, str] = {}
    for metric in declared:
        name = metric.name
        external = None
        if judge is not None and name in judge["scores"]:
            value, error = judge["scores"][name]
            external = judge["per_sample"][name]
        elif name in reported:
            value, error = reported[name]
        else:
            continue  # an optional metric not computed in this run (e.g. METEOR without Java); the cell stays empty
        if metric.must_be_zero and value != 0:
            raise Rejected(
                "failed_generations", source.results.path, f"{task} reports {name} = {value:g}; the board takes runs without failures"
            )
        missing_values = (
            external is None and metric.filled_by_aggregation and all(unfilled(s.record, name) for s in samples)
        )
        try:
            if missing_values and name.startswith("judge_"):
                sidecar = sidecar or _read_sidecar(files.sidecars, task, samples, limits)
                if sidecar is not None and name in sidecar["per_sample"]:
                    external = sidecar["per_sample"][name]
                    missing_values = False
            if missing_values and metric.check in ("consistency", "count"):
                # A multi-process run logs the deferred items before they are filled and left no sidecar:
                # the score cannot be checked against anything, so it is shown unverified (never "tampered").
                check_metric(task, name, None, samples, value, [None] * len(samples), metric.bounds)
                scores[name], stderr[name] = value, error
                per_sample[name], checks[name] = [None] * len(samples), "unverified"
                continue
            check = check_metric(
                task, name, REGISTRY[name], samples, value, external, metric.bounds, recompute_missing=missing_values
            )
            if name.startswith("judge_") and name != "judge_unscored":
                source = judge if external is not None and judge is not None and name in judge["scores"] else sidecar
                evidence = source["verdicts"] if external is not None and source else [_inline_evidence(s) for s in samples]
                scoring = (source or {}).get("info", {}).get("scoring") if external is not None else None
                check.verdict = verify_judge_metric(  # type: ignore[assignment]
                    task, name, check.per_sample, evidence, [s.item_id for s in samples], scoring
                )
        except VerificationError as problem:
            raise Rejected("tampered", path, f"{problem}; scores must be what the logged answers give") from None
        except (ValueError, OverflowError) as problem:
            raise Rejected("tampered", path, f"{task} {name}: values cannot be added up ({problem})") from None
        scores[name] = check.value if check.value is not None else value
        stderr[name] = error
        per_sample[name], checks[name] = check.per_sample, check.verdict
    inputs = [sample.record.get("input") for sample in samples]
    departures, unknown = provenance.departures(
        raw, task, task_configs()[task], inputs, _expected_prompts(task, reference, [s.item_id for s in samples])
    )
    return TaskScores(
        task=task,
        version=task_versions()[task],
        item_ids=[s.item_id for s in samples],
        fingerprint=reference.sha256,
        data=_public_label(reference.data),
        data_priority=reference.priority,
        answers=_hash(json.dumps([[s.item_id, s.prediction] for s in samples], ensure_ascii=False)),
        scores=scores,
        stderr=stderr,
        per_sample=per_sample,
        checks=checks,
        prompt=provenance.prompt(raw, task),
        decoding=decoding,
        nonstandard=departures,
        unknown_protocol=unknown,
        judge=(judge["info"] if judge else (sidecar["info"] if sidecar else _inline_judge(samples))),
        normalised=normalised_answers(task, [s.prediction for s in samples]),
        clusters=_clusters(task, reference, [s.item_id for s in samples]),
    )


def _public_label(data: str) -> str:
    """The reference data's label without the board operator's folders (``local:/srv/x/vqa.jsonl`` -> ``local:vqa.jsonl``)."""
    origin, sep, location = data.partition(":")
    if sep and origin in ("local", "saved", "snapshot"):
        return f"{origin}:{Path(location).name}"
    return data


@cache
def _reference_documents(task: str, data: str, priority: int) -> dict[str, dict[str, Any]] | None:
    """The reference data's documents by id (questions included), when the board holds a copy."""
    from medbench.data.loading import DEMO_DIR, ResolvedSource, load_task_docs, read_local_records, resolve_source

    if priority == 0:
        resolved = ResolvedSource(task, "demo", str(DEMO_DIR / get_source(task).demo_file), DEMO_DIR)
        documents = read_local_records(resolved, check_images=False)
    elif priority == 2:
        resolved = resolve_source(task)
        if resolved.origin == "local":
            documents = read_local_records(resolved, check_images=False)
        else:
            import datasets

            dataset = load_task_docs(task)
            columns = [c for c in ("id", "question", "image") if c in dataset.column_names]
            dataset = dataset.select_columns(columns)
            if "image" in columns:  # the file name is the cluster key; the pixels are not needed
                dataset = dataset.cast_column("image", datasets.Image(decode=False))
            documents = list(dataset)
    else:
        return None  # a declared fingerprint: the board has the hash of the data, not the questions
    return {str(document["id"]): document for document in documents}


def _cluster_key(image: Any) -> str | None:
    """The image a document asks about, as a cluster key (its file name, or a hash of its bytes)."""
    if isinstance(image, dict):
        if image.get("path"):
            return Path(str(image["path"])).name
        if isinstance(image.get("bytes"), bytes):
            return hashlib.sha256(image["bytes"]).hexdigest()[:16]
        return None
    return Path(image).name if isinstance(image, str) and image else None


def _clusters(task: str, reference: DataFingerprint, item_ids: list[str]) -> list[str]:
    """Each item's image (the unit the bootstrap resamples), or ``[]`` when the board cannot tell."""
    try:
        documents = _reference_documents(task, reference.data, reference.priority)
    except MedbenchError:
        return []
    if documents is None or any(item not in documents for item in item_ids):
        return []
    keys = [_cluster_key(documents[item].get("image")) for item in item_ids]
    return [] if any(key is None for key in keys) else keys  # type: ignore[return-value]


def _expected_prompts(task: str, reference: DataFingerprint, item_ids: list[str]) -> list[str] | None:
    """Each item's prompt as the task builds it (its YAML's ``doc_to_text`` with the standard prompt pieces)."""
    from medbench.lmms.common import doc_to_text

    try:
        documents = _reference_documents(task, reference.data, reference.priority)
    except MedbenchError:
        return None
    if documents is None or any(item not in documents for item in item_ids):
        return None
    pieces = dict((task_configs()[task].get("lmms_eval_specific_kwargs") or {}).get("default") or {})
    return [doc_to_text(documents[item], pieces) for item in item_ids]


def _number(value: Any, where: Path, what: str) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        raise Rejected("schema", where, f"{what} is {value}, too large") from None


def _read_judge(
    path: Path, task: str, samples: list[Sample], files: dict[str, bytes], limits: Limits
) -> dict[str, Any]:
    """Scores and per-sample values from a ``medbench judge`` re-score of this log."""
    results_path, verdicts_path = judge_paths(path, task)
    document = parse(results_path, files["results"], "the judge results", limits)
    problem = schema_problem(document, JUDGE_RESULTS_SCHEMA)
    entry = document.get("results", {}).get(task) if isinstance(document, dict) and isinstance(document.get("results"), dict) else None
    if problem or not isinstance(entry, dict):
        raise Rejected(
            "schema",
            results_path,
            f"not a medbench judge results file for {task} ({problem or f'no results.{task}'}; schema {JUDGE_RESULTS_SCHEMA})",
        )
    verdicts = []
    for number, record in parse_lines(verdicts_path, files["samples"], limits, f"the {task} judge verdicts"):
        problem = schema_problem(record, JUDGE_VERDICT_SCHEMA)
        if problem:
            raise Rejected("schema", verdicts_path, f"line {number}: {problem} (schema {JUDGE_VERDICT_SCHEMA})")
        verdicts.append(record)
    if [str(v["id"]) for v in verdicts] != [s.item_id for s in samples]:
        raise Rejected(
            "tampered",
            verdicts_path,
            f"the judge verdicts do not cover the logged {task} samples one to one, in order; rerun medbench judge on this log",
        )
    scores: dict[str, tuple[float, float | None]] = {}
    for key, value in entry.items():
        if not key.endswith(",none") or "_stderr" in key:
            continue
        metric = key[: -len(",none")]
        number = _number(value, results_path, key)
        if number is None or metric not in METRICS or not metric.startswith("judge_"):
            continue
        error = _number(entry.get(f"{metric}_stderr,none"), results_path, f"{metric}_stderr")
        scores[metric] = (number, error)
    per_sample = _verdict_values(verdicts, scores)
    info = document["medbench_judge"]
    judge = info.get("judge") if isinstance(info.get("judge"), dict) else {}
    return {
        "scores": scores,
        "per_sample": per_sample,
        "verdicts": verdicts,
        "info": _judge_info(results_path.name, judge, info.get("date")),
    }


def _verdict_values(verdicts: list[dict[str, Any]], metrics: Any) -> dict[str, list[float | None]]:
    per_sample: dict[str, list[float | None]] = {}
    for metric in metrics:
        if metric == "judge_unscored":
            per_sample[metric] = [float(bool(v.get("failures"))) for v in verdicts]
        else:
            name = metric.removeprefix("judge_")
            per_sample[metric] = [logged_value(v.get("scores") or {}, name) for v in verdicts]
    return per_sample


def _judge_info(source: str, judge: dict[str, Any], date: Any) -> dict[str, Any]:
    prompts = judge.get("prompts") if isinstance(judge.get("prompts"), dict) else {}
    return {
        "source": source,
        "model": judge.get("model") if isinstance(judge.get("model"), str) else None,
        "scoring": judge.get("scoring") if isinstance(judge.get("scoring"), str) else None,
        "prompts": {
            str(role): spec.get("id") for role, spec in prompts.items() if isinstance(spec, dict) and isinstance(spec.get("id"), str)
        },
        "date": date if isinstance(date, str) else None,
    }


def _read_sidecar(
    sidecars: list[tuple[Path, bytes]], task: str, samples: list[Sample], limits: Limits
) -> dict[str, Any] | None:
    """Per-sample judge values from the sidecar of a multi-process lmms-eval run (matched by item id)."""
    wanted = {s.item_id for s in samples}
    for path, data in reversed(sidecars):  # newest first
        document = parse(path, data, "the judge sidecar", limits)
        problem = schema_problem(document, SIDECAR_SCHEMA)
        if problem:
            raise Rejected("schema", path, f"{problem} (schema {SIDECAR_SCHEMA})")
        by_id = {str(v["id"]): v for v in document["samples"]}
        if set(by_id) != wanted or len(by_id) != len(document["samples"]):
            continue  # another run's sidecar in the same output folder
        ordered = [by_id[s.item_id] for s in samples]
        metrics = [m for m in METRICS if m.startswith("judge_")]
        return {
            "per_sample": _verdict_values(ordered, metrics),
            "verdicts": ordered,
            "info": _judge_info(path.name, document["judge"], None),
        }
    return None


def _inline_evidence(sample: Sample) -> dict[str, Any]:
    """The judge's logged answers for one sample judged inside lmms-eval (spread over its judge items)."""
    evidence: dict[str, Any] = {}
    for metric in METRICS:
        value = sample.record.get(metric)
        if metric.startswith("judge_") and isinstance(value, dict):
            evidence.update({k: v for k, v in value.items() if k not in ("score", "status", "judge", "id")})
    return evidence


def _inline_judge(samples: list[Sample]) -> dict[str, Any] | None:
    # Judged inside lmms-eval: every judged sample carries its judge's identity (medbench.results.JudgeIdentity).
    identities = [
        identity
        for sample in samples
        for metric in METRICS
        if metric.startswith("judge_")
        and isinstance(value := sample.record.get(metric), dict)
        and (identity := JudgeIdentity.from_json(value.get("judge"))) is not None
    ]
    if not identities:
        return None
    judge = min(identities, key=lambda identity: (identity.model, sorted(identity.prompts.items())))
    return {"source": "lmms-eval run", "model": judge.model, "prompts": dict(judge.prompts), "scoring": None}


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "backslashreplace")).hexdigest()


def _verifier_identity(references: dict[str, list[DataFingerprint]]) -> str:
    # A cached verdict is only reused by the same verifier, task versions and reference data.
    from medbench import __version__ as medbench_version

    from . import __version__

    return json.dumps(
        {
            "leaderboard": __version__,
            "medbench": medbench_version,
            "tasks": task_versions(),
            "references": {task: sorted(r.sha256 for r in refs) for task, refs in sorted(references.items())},
        },
        sort_keys=True,
    )


def safe_load_run(root: Path, limits: Limits, cache: VerificationCache | None, references: dict[str, list[DataFingerprint]]) -> Run:
    """:func:`load_run`, with any failure the checks above did not foresee turned into a rejection.

    The board must build whatever one submission holds; an unforeseen failure names the submission and
    the error, and the rest of the board is built.
    """
    try:
        return load_run(root, limits, cache, references)
    except Rejected:
        raise
    except MedbenchError as error:
        raise Rejected("unreadable", root, str(error)) from None
    except (
        ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError, UnicodeError, OSError,
        RuntimeError, MemoryError,
    ) as error:
        # RuntimeError: Python 3.11's Path.resolve on a link that points to itself (ELOOP); MemoryError: a file
        # that fits the caps but not the machine. Either is this submission's problem, never the board's.
        raise Rejected(
            "unreadable", root, f"could not be verified ({type(error).__name__}: {str(error)[:160]}); check the files against docs/leaderboard.md"
        ) from None
