"""A task's test data, pinned: the hash of its item ids and gold answers, and its size.

Two runs are comparable only when they were scored on the same items against the same references. The
fingerprint hashes, for every item, exactly what scoring reads (VQA: id, gold answer, answer type;
reports: id, reference text, reference facts), sorted by id so the order items were logged in (several
lmms-eval processes interleave them) does not matter. Images are not hashed: scoring never reads them,
and hashing 6.7k pathology slides would make a board slow.

Where a task's reference fingerprint comes from (:func:`reference_data`), strongest first:

1. **The board's own copy**: when ``MEDBENCH_<TASK>`` points at local data (as for ``medbench eval``),
   its fingerprint is computed from it. This is how licensed tasks (MIMIC-CXR, AMBOSS) are pinned.
2. **Declared in the task YAML**: ``metadata.data_fingerprints`` lists fingerprints of published data
   (e.g. a hub revision), each ``{data, sha256, size}``; ``medbench leaderboard fingerprint`` prints one
   for the configured data.
3. **The demo set** shipped inside the package, computed from its files (so it can never go stale).

The log side (:func:`fingerprint_items`) is computed from the same fields of the per-sample records.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbench.data.loading import DEMO_DIR, ResolvedSource, read_local_records, resolve_source
from medbench.data.sources import get_source
from medbench.errors import MedbenchError


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, hex-encoded (read in 1 MiB blocks: checkpoints and image folders are large).

    Args:
        path: The file.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class DataFingerprint:
    """A task's items and references, pinned.

    Attributes:
        data: What the data is, for people (``demo``, ``local:/path``, ``hub:org/name@rev``).
        sha256: Hash of the sorted ``[id, gold...]`` items.
        size: Number of items.
        ids: The item ids, when known (computed fingerprints), to say which items a run lacks.
        priority: Which reference wins when runs on a board match different ones (higher wins).
    """

    data: str
    sha256: str
    size: int
    ids: frozenset[str] | None = field(default=None, compare=False, repr=False)
    priority: int = 0


def item_key(kind: str, item_id: str, gold: str, answer_type: str | None, facts: Iterable[str] | None) -> list[Any]:
    """What a fingerprint hashes of one item (the fields scoring reads)."""
    if kind == "vqa":
        return [str(item_id), str(gold), answer_type]
    return [str(item_id), str(gold), list(facts or [])]


def fingerprint_items(keys: Iterable[list[Any]], data: str = "run", priority: int = 0) -> DataFingerprint:
    """The fingerprint of items given as :func:`item_key` lists (any order)."""
    ordered = sorted(keys, key=lambda key: key[0])
    digest = hashlib.sha256(json.dumps(ordered, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    return DataFingerprint(data, digest.hexdigest(), len(ordered), frozenset(key[0] for key in ordered), priority)


def _documents(task: str, resolved: ResolvedSource, environ: dict[str, str] | None) -> list[dict[str, Any]]:
    if resolved.origin in ("local", "demo"):
        return read_local_records(resolved, check_images=False)
    from medbench.data.loading import load_task_docs

    dataset = load_task_docs(task, environ)
    columns = [c for c in ("id", "answer", "answer_type", "reference", "facts") if c in dataset.column_names]
    return list(dataset.select_columns(columns))


def fingerprint_source(task: str, resolved: ResolvedSource, environ: dict[str, str] | None = None, priority: int = 0) -> DataFingerprint:
    """The fingerprint of the data a resolved source holds.

    Raises:
        DataError: The data cannot be read.
    """
    kind = get_source(task).kind
    keys = [
        item_key(kind, doc["id"], doc["answer"] if kind == "vqa" else doc["reference"], doc.get("answer_type"), doc.get("facts"))
        for doc in _documents(task, resolved, environ)
    ]
    label = "demo" if resolved.origin == "demo" else resolved.describe()
    return fingerprint_items(keys, label, priority)


_demo_cache: dict[str, DataFingerprint] = {}


def demo_fingerprint(task: str) -> DataFingerprint:
    """The fingerprint of the task's demo set (computed once per process from the shipped files)."""
    if task not in _demo_cache:
        source = get_source(task)
        resolved = ResolvedSource(task, "demo", str(DEMO_DIR / source.demo_file), DEMO_DIR)
        _demo_cache[task] = fingerprint_source(task, resolved, priority=0)
    return _demo_cache[task]


def declared_fingerprints(config: dict[str, Any]) -> list[DataFingerprint]:
    """Fingerprints the task YAML declares under ``metadata.data_fingerprints``.

    Raises:
        MedbenchError: A malformed declaration (a mistake in the shipped task, not in a submission).
    """
    declared = (config.get("metadata") or {}).get("data_fingerprints") or []
    result = []
    for entry in declared:
        try:
            result.append(DataFingerprint(str(entry["data"]), str(entry["sha256"]), int(entry["size"]), priority=1))
        except (KeyError, TypeError, ValueError):
            raise MedbenchError(
                f"{config.get('task')}: metadata.data_fingerprints entries need data, sha256 and size "
                "(print one with `medbench leaderboard fingerprint`)"
            ) from None
    return result


def reference_data(task: str, config: dict[str, Any], environ: dict[str, str] | None = None) -> list[DataFingerprint]:
    """Every reference fingerprint of ``task`` on this installation, strongest first (see the module docstring).

    Raises:
        DataError: ``MEDBENCH_<TASK>`` is set but its data cannot be read.
    """
    import os

    env = os.environ if environ is None else environ
    references = [demo_fingerprint(task), *declared_fingerprints(config)]
    if env.get(get_source(task).env_var, "").strip() not in ("", "demo"):
        resolved = resolve_source(task, env)
        references.append(fingerprint_source(task, resolved, env, priority=2))
    return sorted(references, key=lambda reference: -reference.priority)
