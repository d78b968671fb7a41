"""Read one submission folder into a verified :class:`Run`, or reject it with one reason.

A submission is a folder holding lmms-eval output (``<stamp>_results.json`` with its ``--log_samples``
files ``<stamp>_samples_<task>.jsonl``), optionally ``medbench judge`` re-scores beside the samples files,
and optionally a ``medbench-submission.json`` manifest (schema: ``leaderboard/schema/submission-v1``) that
names the model and points at the ``medbench_train.json`` written by ``medbench-train``.

Everything a submission says is untrusted: every file read must lie inside the submission folder (links
included), every file has a size cap, JSON is checked against the versioned schemas, and every score is
recomputed from the per-sample logs (:mod:`medbench.leaderboard.verify`). The first problem found rejects the run
with a :class:`Rejected` error whose ``rule`` says which trust rule failed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from medbench.leaderboard.verify import REGISTRY, Sample, VerificationError, check_metric, logged_value, rule_for
from medbench.errors import MedbenchError
from medbench.results import NON_SCORE_METRICS, RunResults
from medbench.taskfiles import group_members, task_configs, task_versions

MANIFEST_NAME = "medbench-submission.json"
MANIFEST_SCHEMA = "submission-v1.schema.json"
RESULTS_SCHEMA = "lmms-results-v1.schema.json"
SAMPLE_SCHEMA = "sample-v1.schema.json"
SCHEMA_VERSION = "medbench-submission/1"
TRAINING_METADATA_NAME = "medbench_train.json"  # what medbench-train writes (trainers/outputs.py)

# Why a run was turned away; tests and the board's rejection list use these names.
RULES = (
    "unreadable",  # not JSON, not a folder
    "schema",  # fails the submission / results / sample schema
    "oversized",  # a file, a line or a sample count over the limits
    "path",  # a path (or link) that leaves the submission folder
    "limit",  # evaluated with --limit (or on fewer samples than the task has)
    "unknown_task",  # a task the board does not know
    "version",  # a task version other than the board's
    "missing_samples",  # no --log_samples file, or fewer logged samples than evaluated
    "tampered",  # scores the per-sample logs do not reproduce
    "duplicate",  # the same run (or the same display name) twice
    "data_mismatch",  # evaluated on other items or references than the board's reference run
)


class Rejected(MedbenchError):
    """A submission the board refuses; the message is one line naming the file and what to fix.

    Attributes:
        rule: Which trust rule failed (one of :data:`RULES`).
        where: The file or folder at fault.
    """

    def __init__(self, rule: str, where: Path | str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.rule = rule
        self.where = str(where)
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """Size caps for untrusted input (bytes unless said otherwise).

    The defaults fit the real test sets (PathVQA's 6.7k questions, full MIMIC-CXR report logs) with room.
    """

    manifest_bytes: int = 64 * 1024
    training_metadata_bytes: int = 4 * 1024 * 1024
    results_bytes: int = 32 * 1024 * 1024
    samples_bytes: int = 512 * 1024 * 1024
    sample_line_bytes: int = 4 * 1024 * 1024
    samples_per_task: int = 200_000
    results_files: int = 32


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
        fingerprint: Hash of the items and their references (runs on the board must share it).
        answers: Hash of the model's answers (two runs with the same answers everywhere are duplicates).
        scores: Metric -> task score from the results file (or the ``medbench judge`` results).
        stderr: Metric -> standard error as lmms-eval reported it.
        per_sample: Metric -> per-sample values aligned with ``item_ids`` (``None``: not applicable/unscored).
        checks: Metric -> ``recomputed`` / ``consistent`` / ``unverified``.
        prompt: Prompt pieces (task kwargs, system instruction, chat template hash).
        decoding: Generation settings.
        judge: Judge model, prompts and source file, when judge metrics are present.
    """

    task: str
    version: int
    item_ids: list[str]
    fingerprint: str
    answers: str
    scores: dict[str, float]
    stderr: dict[str, float | None]
    per_sample: dict[str, list[float | None]]
    checks: dict[str, str]
    prompt: dict[str, Any]
    decoding: dict[str, Any]
    judge: dict[str, Any] | None = None


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


# ------------------------------------------------------------------------------------------- schemas


@cache
def load_schema(name: str) -> dict[str, Any]:
    """A JSON Schema shipped in ``leaderboard/schema``."""
    return json.loads(resources.files("medbench.leaderboard").joinpath("schema", name).read_text(encoding="utf-8"))


@cache
def _validator(name: str) -> Any:
    from jsonschema import Draft202012Validator

    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def schema_problem(document: Any, schema: str) -> str | None:
    """The first schema violation of ``document`` as ``field: problem``, or ``None`` when valid."""
    validator = _validator(schema)
    if validator.is_valid(document):
        return None
    error = min(validator.iter_errors(document), key=lambda e: (len(e.absolute_path), str(e.message)))
    location = "/".join(str(part) for part in error.absolute_path) or "(top level)"
    message = error.message if len(error.message) <= 200 else error.message[:200] + "..."
    return f"{location}: {message}"


# --------------------------------------------------------------------------------------------- files


def _inside(root: Path, path: Path, what: str) -> Path:
    """``path`` resolved (links followed), refused when it leaves ``root``."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise Rejected(
            "path",
            path,
            f"{what} resolves to {resolved}, outside the submission folder {root}; keep every file inside it",
        )
    return resolved


def _read_bytes(root: Path, path: Path, cap: int, what: str) -> bytes:
    resolved = _inside(root, path, what)
    if not resolved.is_file():
        raise Rejected("unreadable", path, f"{what} is missing or not a file")
    size = resolved.stat().st_size
    if size > cap:
        raise Rejected("oversized", path, f"{what} is {size} bytes, over the {cap}-byte limit")
    return resolved.read_bytes()


def _read_json(root: Path, path: Path, cap: int, what: str) -> tuple[Any, bytes]:
    data = _read_bytes(root, path, cap, what)
    try:
        return json.loads(data), data
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise Rejected("unreadable", path, f"{what} is not valid JSON ({error})") from None


def _relative(root: Path, path: Path) -> str:
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------------ discovery


def find_submissions(paths: list[Path]) -> list[Path]:
    """Submission folders for the command line's RUN arguments.

    A folder with a manifest is one submission. A folder without one is searched for results files: each
    results file's folder is a submission, unless a manifest in an enclosing folder (up to the argument)
    claims it. A results file given directly stands for its folder.

    Raises:
        MedbenchError: An argument that does not exist or holds no lmms-eval results.
    """
    found: list[Path] = []
    for path in paths:
        if path.is_file():
            candidates = [path.parent]
        elif path.is_dir():
            if (path / MANIFEST_NAME).is_file():
                candidates = [path]
            else:
                candidates = []
                for results in sorted(path.rglob("*_results.json")):
                    owner = next(
                        (
                            parent
                            for parent in [results.parent, *results.parent.parents]
                            if (parent / MANIFEST_NAME).is_file() and parent.is_relative_to(path)
                        ),
                        results.parent,
                    )
                    candidates.append(owner)
                if not candidates:
                    raise MedbenchError(
                        f"{path}: no lmms-eval results (*_results.json) below it; pass the --output_path folder of an lmms-eval run"
                    )
        else:
            raise MedbenchError(f"{path} does not exist: pass lmms-eval output folders or submission folders")
        for candidate in candidates:
            if candidate not in found:
                found.append(candidate)
    return found


# -------------------------------------------------------------------------------------------- loading


def read_manifest(root: Path, limits: Limits) -> dict[str, Any] | None:
    """The folder's manifest, schema-checked, or ``None`` when it has none.

    Raises:
        Rejected: Unreadable, oversized or invalid manifest.
    """
    path = root / MANIFEST_NAME
    if not path.exists() and not path.is_symlink():
        return None
    manifest, _ = _read_json(root, path, limits.manifest_bytes, "the manifest")
    problem = schema_problem(manifest, MANIFEST_SCHEMA)
    if problem:
        raise Rejected("schema", path, f"{problem} (schema {MANIFEST_SCHEMA}; see docs/leaderboard.md)")
    return manifest


def _results_files(root: Path, manifest: dict[str, Any] | None, limits: Limits) -> list[Path]:
    if manifest and "results" in manifest:
        paths = [root / relative for relative in manifest["results"]]
    elif manifest:
        paths = sorted(path for path in root.rglob("*_results.json") if ".leaderboard-cache" not in path.parts)
    else:
        # Without a manifest a folder is one run: the results beside it, else the one folder below holding some
        # (lmms-eval nests them in <output>/<model>/); results spread over several folders are several runs.
        paths = sorted(root.glob("*_results.json"))
        if not paths:
            paths = sorted(path for path in root.rglob("*_results.json") if ".leaderboard-cache" not in path.parts)
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


def load_run(root: Path, limits: Limits | None = None, cache: VerificationCache | None = None) -> Run:
    """Load and verify one submission folder.

    Args:
        root: The submission folder (see :func:`find_submissions`).
        limits: Size caps.
        cache: Verified task scores from earlier builds, keyed by the hash of the files they came from.

    Raises:
        Rejected: The first trust rule the submission breaks.
    """
    limits = limits or Limits()
    root = root.resolve()
    if not root.is_dir():
        raise Rejected("unreadable", root, "not a folder")
    manifest = read_manifest(root, limits)
    sources: dict[str, _TaskSource] = {}
    digest = hashlib.sha256(_verifier_identity().encode())
    results_runs: list[RunResults] = []
    for path in _results_files(root, manifest, limits):
        raw, data = _read_json(root, path, limits.results_bytes, "the results file")
        digest.update(data)
        problem = schema_problem(raw, RESULTS_SCHEMA)
        if problem:
            raise Rejected("schema", path, f"{problem} (not an lmms-eval results file; schema {RESULTS_SCHEMA})")
        run = _as_run_results(path, raw)
        results_runs.append(run)
        _check_limit(path, raw)
        for task in _result_tasks(path, raw):
            if task in sources:
                raise Rejected(
                    "duplicate",
                    path,
                    f"task {task} is also in {_relative(root, sources[task].results.path)}; keep one results file per task",
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
    file_digests = {}
    for task, source in sorted(sources.items()):
        data = _read_bytes(root, source.samples_path, limits.samples_bytes, f"the {task} per-sample log")
        judge_files = _judge_files(root, source, limits)
        file_digests[task] = (data, judge_files)
        digest.update(data)
        for blob in judge_files.values():
            digest.update(blob)
    key = digest.hexdigest()
    tasks = cache.get(key) if cache is not None else None
    if tasks is None:
        tasks = {task: _verify_task(root, sources[task], *file_digests[task], limits) for task in sorted(sources)}
        if cache is not None:
            cache.put(key, tasks)
    first = results_runs[0].raw
    model = {
        "model": str(first["config"].get("model", "")),
        "model_args": first["config"].get("model_args"),
        "model_name": str(first.get("model_name") or ""),
    }
    meta = _meta(root, manifest, model, limits)
    provenance = {
        "results_files": [_relative(root, run.path) for run in results_runs],
        "lmms_eval_version": first.get("lmms_eval_version"),
        "date": first.get("date"),
    }
    return Run(root=root, meta=meta, model=model, tasks=tasks, digest=key, provenance=provenance)


def _as_run_results(path: Path, raw: dict[str, Any]) -> RunResults:
    # medbench.results pairs a results file with its samples files; reuse it, having read and checked the JSON here.
    stamp = path.name[: -len("_results.json")]
    samples = {
        sample.name[len(f"{stamp}_samples_") : -len(".jsonl")]: sample
        for sample in path.parent.glob(f"{stamp}_samples_*.jsonl")
    }
    return RunResults(path=path, raw=raw, samples=samples)


def _check_limit(path: Path, raw: dict[str, Any]) -> None:
    limit = raw["config"].get("limit")
    if limit is not None:
        raise Rejected(
            "limit",
            path,
            f"evaluated with --limit {limit:g}; the board takes full test sets only, rerun without --limit",
        )
    for task, counts in raw["n-samples"].items():
        if counts["effective"] != counts["original"]:
            raise Rejected(
                "limit",
                path,
                f"{task} evaluated on {counts['effective']} of {counts['original']} samples; rerun on the full test set",
            )


def _result_tasks(path: Path, raw: dict[str, Any]) -> list[str]:
    known, versions = task_configs(), task_versions()
    groups = set(_group_names()) | {name for name, members in raw.get("group_subtasks", {}).items() if members}
    tasks = []
    for task in raw["results"]:
        if task in groups:
            continue  # a group row aggregates its tasks; the board reads the tasks themselves
        if task not in known:
            raise Rejected(
                "unknown_task",
                path,
                f"task {task!r} is not a medbench task (known: {', '.join(sorted(known))}); remove it from the submission",
            )
        version = raw["versions"].get(task)
        if not isinstance(version, (int, float)) or int(version) != versions[task]:
            raise Rejected(
                "version",
                path,
                f"{task} was evaluated at task version {version}, the board is at version {versions[task]}; rerun with the current medbench tasks",
            )
        if task not in raw["n-samples"]:
            raise Rejected("schema", path, f"n-samples has no entry for {task}")
        tasks.append(task)
    return tasks


@cache
def _group_names() -> tuple[str, ...]:
    # taskfiles reads the group YAMLs on every call; a board reads them once.
    return tuple(group_members())


def _judge_files(root: Path, source: _TaskSource, limits: Limits) -> dict[str, bytes]:
    # `medbench judge` writes <stem>_judge_results_<task>.json and <stem>_judge_samples_<task>.jsonl beside the log.
    stem = source.samples_path.name[: -len(f"_samples_{source.task}.jsonl")]
    results = source.samples_path.with_name(f"{stem}_judge_results_{source.task}.json")
    samples = source.samples_path.with_name(f"{stem}_judge_samples_{source.task}.jsonl")
    if not results.exists() and not results.is_symlink():
        return {}
    return {
        "results": _read_bytes(root, results, limits.results_bytes, f"the {source.task} judge results"),
        "samples": _read_bytes(root, samples, limits.samples_bytes, f"the {source.task} judge verdicts"),
        "results_name": results.name.encode(),
    }


def _parse_lines(path: Path, data: bytes, limits: Limits, what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        if len(line) > limits.sample_line_bytes:
            raise Rejected(
                "oversized",
                path,
                f"line {number} of {what} is {len(line)} bytes, over the {limits.sample_line_bytes}-byte limit",
            )
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise Rejected(
                "unreadable", path, f"line {number} of {what} is not JSON ({error.__class__.__name__})"
            ) from None
        yield number, record


def _first_text(value: Any) -> str | None:
    while isinstance(value, list) and value:
        value = value[0]
    return value if isinstance(value, str) else None


def read_samples(path: Path, data: bytes, task: str, limits: Limits) -> list[Sample]:
    """Parse and schema-check a ``--log_samples`` file.

    Raises:
        Rejected: Bad lines, missing fields, repeated ids, too many samples.
    """
    samples: list[Sample] = []
    seen: set[str] = set()
    for number, record in _parse_lines(path, data, limits, f"the {task} per-sample log"):
        problem = schema_problem(record, SAMPLE_SCHEMA)
        if problem:
            raise Rejected(
                "schema",
                path,
                f"line {number}: {problem} (schema {SAMPLE_SCHEMA}; the log must come from lmms-eval --log_samples)",
            )
        prediction = _first_text(record["filtered_resps"])
        if prediction is None:
            raise Rejected("schema", path, f"line {number}: filtered_resps holds no answer text")
        detail = record["medbench_detail"]
        item_id = str(detail["id"])
        if item_id in seen:
            raise Rejected("duplicate", path, f"line {number}: sample {item_id!r} is logged twice")
        seen.add(item_id)
        samples.append(
            Sample(int(record["doc_id"]), item_id, prediction, record["target"], detail.get("answer_type"), record)
        )
        if len(samples) > limits.samples_per_task:
            raise Rejected("oversized", path, f"more than {limits.samples_per_task} samples for {task}")
    return samples


def _verify_task(
    root: Path, source: _TaskSource, data: bytes, judge_files: dict[str, bytes], limits: Limits
) -> TaskScores:
    task, raw = source.task, source.results.raw
    path = source.samples_path
    samples = read_samples(path, data, task, limits)
    expected = raw["n-samples"][task]["effective"]
    if len(samples) != expected:
        raise Rejected(
            "missing_samples",
            path,
            f"{len(samples)} samples logged for {task}, the results file evaluated {expected}; submit the complete --log_samples file",
        )
    config = task_configs()[task]
    aggregations = {entry["metric"]: str(entry.get("aggregation", "")) for entry in config.get("metric_list", [])}
    reported = source.results.metrics(task)
    counts = {
        metric: value for metric in NON_SCORE_METRICS if (value := source.results.count(task, metric)) is not None
    }
    judge = _read_judge(path, task, samples, judge_files, limits) if judge_files else None
    scores: dict[str, float] = {}
    stderr: dict[str, float | None] = {}
    per_sample: dict[str, list[float | None]] = {}
    checks: dict[str, str] = {}
    for metric, aggregation in aggregations.items():
        external = None
        if judge is not None and metric in judge["scores"]:
            value, error = judge["scores"][metric]
            external = judge["per_sample"][metric]
        elif metric in reported:
            value, error = reported[metric]
        elif metric in counts:
            value, error = counts[metric], None
        else:
            continue  # not computed in this run (e.g. METEOR without Java); the cell stays empty
        try:
            check = check_metric(task, metric, rule_for(metric, aggregation), samples, value, external)
        except VerificationError as error_message:
            raise Rejected("tampered", path, f"{error_message}; scores must be what the logged answers give") from None
        scores[metric], stderr[metric] = value, error
        per_sample[metric], checks[metric] = check.per_sample, check.verdict
    unexpected = sorted(set(reported) - set(aggregations))
    if unexpected:
        raise Rejected(
            "schema",
            source.results.path,
            f"{task} reports metrics its task YAML does not define: {', '.join(unexpected)}",
        )
    return TaskScores(
        task=task,
        version=int(raw["versions"][task]),
        item_ids=[s.item_id for s in samples],
        fingerprint=_hash(json.dumps([[s.item_id, s.target, s.answer_type] for s in samples], ensure_ascii=False)),
        answers=_hash(json.dumps([[s.item_id, s.prediction] for s in samples], ensure_ascii=False)),
        scores=scores,
        stderr=stderr,
        per_sample=per_sample,
        checks=checks,
        prompt=_prompt(raw, task),
        decoding=_decoding(raw, task),
        judge=(judge["info"] if judge else _inline_judge(samples)),
    )


def _read_judge(
    path: Path, task: str, samples: list[Sample], files: dict[str, bytes], limits: Limits
) -> dict[str, Any]:
    """Scores and per-sample values from a ``medbench judge`` re-score of this log."""
    results_path = path.with_name(files["results_name"].decode())
    try:
        document = json.loads(files["results"])
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise Rejected("unreadable", results_path, f"not valid JSON ({error})") from None
    entry = document.get("results", {}).get(task) if isinstance(document, dict) else None
    if not isinstance(entry, dict) or not isinstance(document.get("medbench_judge"), dict):
        raise Rejected(
            "schema", results_path, f"not a medbench judge results file for {task} (no results.{task} / medbench_judge)"
        )
    verdicts_path = results_path.with_name(
        results_path.name.replace("_judge_results_", "_judge_samples_").replace(".json", ".jsonl")
    )
    verdicts = [
        record for _, record in _parse_lines(verdicts_path, files["samples"], limits, f"the {task} judge verdicts")
    ]
    if [str(v.get("id")) for v in verdicts] != [s.item_id for s in samples]:
        raise Rejected(
            "tampered",
            verdicts_path,
            f"the judge verdicts do not cover the logged {task} samples one to one, in order; rerun medbench judge on this log",
        )
    scores: dict[str, tuple[float, float | None]] = {}
    per_sample: dict[str, list[float | None]] = {}
    for key, value in entry.items():
        if not key.endswith(",none") or "_stderr" in key or not isinstance(value, (int, float)):
            continue
        metric = key[: -len(",none")]
        error = entry.get(f"{metric}_stderr,none")
        scores[metric] = (float(value), float(error) if isinstance(error, (int, float)) else None)
        if metric == "judge_unscored":
            per_sample[metric] = [float(bool(v.get("failures"))) for v in verdicts]
        else:
            name = metric.removeprefix("judge_")
            per_sample[metric] = [logged_value(v.get("scores") or {}, name) for v in verdicts]
    info = document["medbench_judge"]
    judge = info.get("judge") if isinstance(info.get("judge"), dict) else {}
    return {
        "scores": scores,
        "per_sample": per_sample,
        "info": {
            "source": results_path.name,
            "model": judge.get("model"),
            "scoring": judge.get("scoring"),
            "prompts": {
                role: spec.get("id") for role, spec in (judge.get("prompts") or {}).items() if isinstance(spec, dict)
            },
            "date": info.get("date"),
        },
    }


def _inline_judge(samples: list[Sample]) -> dict[str, Any] | None:
    # Judged inside lmms-eval: every judged sample carries "judge": "<model> <prompt-id>:<hash> ...".
    idents = {
        str(value["judge"])
        for sample in samples
        for metric in REGISTRY
        if metric.startswith("judge_") and isinstance(value := sample.record.get(metric), dict) and "judge" in value
    }
    if not idents:
        return None
    model, *prompts = min(idents).split(" ")
    prompt_ids = [prompt.split(":", 1)[0] for prompt in prompts]
    return {
        "source": "lmms-eval run",
        "model": model,
        "prompts": {pid.rsplit("-v", 1)[0]: full for pid, full in zip(prompt_ids, prompts)},
        "scoring": None,
    }


def _prompt(raw: dict[str, Any], task: str) -> dict[str, Any]:
    kwargs = dict(raw["configs"].get(task, {}).get("lmms_eval_specific_kwargs") or {})
    kwargs.pop("default", None)  # lmms-eval copies the chosen profile to the top level
    return {
        "task_kwargs": kwargs,
        "system_instruction": raw.get("system_instruction"),
        "chat_template_sha": raw.get("chat_template_sha"),
    }


def _decoding(raw: dict[str, Any], task: str) -> dict[str, Any]:
    decoding = dict(raw["configs"].get(task, {}).get("generation_kwargs") or {})
    override = raw["config"].get("gen_kwargs")
    if override:
        decoding["override"] = override  # lmms-eval's --gen_kwargs replaces the YAML's settings
    text = json.dumps(decoding).lower()
    decoding["sampled"] = (
        bool(decoding.get("do_sample")) or (decoding.get("temperature") or 0) > 0 or "do_sample=true" in text
    )
    return decoding


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


_MODEL_ARG = re.compile(r"(?:^|,)\s*(?P<key>pretrained|revision|model_version)\s*=\s*(?P<value>[^,]+)")


def _model_args(model_args: Any) -> dict[str, str]:
    if isinstance(model_args, dict):
        return {str(k): str(v) for k, v in model_args.items()}
    return {m["key"]: m["value"].strip() for m in _MODEL_ARG.finditer(str(model_args or ""))}


def _meta(root: Path, manifest: dict[str, Any] | None, model: dict[str, Any], limits: Limits) -> RunMeta:
    manifest = manifest or {}
    training = None
    if "training_metadata" in manifest:
        path = root / manifest["training_metadata"]
        document, _ = _read_json(root, path, limits.training_metadata_bytes, "the training metadata")
        if not isinstance(document, dict):
            raise Rejected(
                "schema",
                path,
                f"the training metadata must be the JSON object {TRAINING_METADATA_NAME} written by medbench-train",
            )
        training = _training_summary(document)
    args = _model_args(model["model_args"])
    fallback_name = args.get("pretrained") or model["model_name"] or model["model"] or root.name
    return RunMeta(
        display_name=manifest.get("display_name") or Path(fallback_name).name or fallback_name,
        backbone=manifest.get("backbone") or (training or {}).get("backbone"),
        variant=manifest.get("variant") or (training or {}).get("recipe") or "base",
        base_model=manifest.get("base_model"),
        model_revision=manifest.get("model_revision") or args.get("revision") or args.get("model_version"),
        homepage=manifest.get("homepage"),
        contact=manifest.get("contact"),
        notes=manifest.get("notes"),
        training=training,
    )


def _training_summary(document: dict[str, Any]) -> dict[str, Any]:
    """The parts of ``medbench_train.json`` a reader of the board needs (recipe, settings, data, versions)."""
    config = document.get("config") if isinstance(document.get("config"), dict) else {}
    model = document.get("model") if isinstance(document.get("model"), dict) else {}
    data = document.get("data") if isinstance(document.get("data"), dict) else {}
    return {
        "recipe": document.get("recipe"),
        "objective": document.get("objective"),
        "paper": document.get("paper"),
        "backbone": config.get("backbone"),
        "base_checkpoint": model.get("source"),
        "hyperparameters": document.get("hyperparameters"),
        "data_sha256": data.get("sha256"),
        "data_records": data.get("records"),
        "versions": document.get("versions"),
        "created_utc": document.get("created_utc"),
    }


def _verifier_identity() -> str:
    # A cached verdict is only reused by the same verifier and the same task versions.
    from medbench.leaderboard import __version__
    from medbench import __version__ as medbench_version

    return json.dumps(
        {"leaderboard": __version__, "medbench": medbench_version, "tasks": task_versions()}, sort_keys=True
    )


# ---------------------------------------------------------------------------------------------- cache


class VerificationCache:
    """Verified task scores kept between builds, keyed by the hash of the files they were computed from.

    Recomputing long-form metrics for hundreds of runs takes minutes; a board rebuilt after one new
    submission should not redo the others. An entry is used only when every results, samples and judge
    file hashes the same as when it was verified (and the verifier and task versions are unchanged), so an
    edited file is always re-verified.
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
        except (OSError, json.JSONDecodeError):
            self.misses += 1
            return None
        self.hits += 1
        return {task: TaskScores(**scores) for task, scores in document.items()}

    def put(self, key: str, tasks: dict[str, TaskScores]) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{key}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({task: asdict(scores) for task, scores in tasks.items()}), encoding="utf-8")
        temporary.replace(path)
