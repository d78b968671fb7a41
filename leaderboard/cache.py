"""What a build can reuse from the last one: verified task scores (folder-pile builds, keyed by the hash of the
files they were computed from) and a task's intervals and tests (keyed by the hash of their inputs)."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np

from .runs import TaskScores


def _secret() -> bytes:
    """This user's key for signing cache entries, kept outside every board folder (created on first use)."""
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medbench"
    path = home / "leaderboard-cache.key"
    try:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        home.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(32)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(key.hex())
        return key


class VerificationCache:
    """Verified task scores kept between builds.

    Recomputing long-form metrics for hundreds of runs takes minutes; a board rebuilt after one new
    submission should not redo the others. An entry is used only when every results, samples and judge
    file hashes the same as when it was verified (and the verifier, the task versions and the reference
    data are unchanged), so an edited file is always re-verified. Each entry is signed (HMAC-SHA256 with a
    key kept in the user's cache folder, not in the board's), so an entry planted in the output folder by
    anyone else is ignored and the run verified again.
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.hits = 0
        self.misses = 0
        self._key = _secret() if folder is not None else b""

    def _mac(self, key: str, payload: str) -> str:
        return hmac.new(self._key, f"{key}\n{payload}".encode(), hashlib.sha256).hexdigest()

    def get(self, key: str) -> dict[str, TaskScores] | None:
        if self.folder is None:
            return None
        path = self.folder / f"{key}.json"
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            payload = document["payload"]
            if not hmac.compare_digest(str(document["mac"]), self._mac(key, payload)):
                raise ValueError("not signed by this user")
            names = {f.name for f in fields(TaskScores)}
            tasks = {
                task: TaskScores(**{k: v for k, v in scores.items() if k in names})
                for task, scores in json.loads(payload).items()
            }
        except (OSError, ValueError, TypeError, AttributeError, KeyError):
            self.misses += 1  # absent, planted, or written by another version: verify again
            return None
        self.hits += 1
        return tasks

    def put(self, key: str, tasks: dict[str, TaskScores]) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{key}.json"
        payload = json.dumps({task: asdict(scores) for task, scores in tasks.items()})
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"mac": self._mac(key, payload), "payload": payload}), encoding="utf-8")
        temporary.replace(path)


class StatsCache:
    """A task's bootstrap intervals and paired tests from earlier builds of the same board.

    The resampling is the costly part of rendering a board of hundreds of runs, and it is a pure function of
    its inputs (every run's per-sample values of the task, the draws' settings, the clusters). An entry is
    keyed by the SHA-256 of exactly those inputs, so a board rebuilt with nothing new recomputes nothing and a
    task with one new run is recomputed whole. Entries are signed like :class:`VerificationCache`'s.
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.hits = 0
        self.misses = 0
        self._key = _secret() if folder is not None else b""

    @staticmethod
    def _digest(inputs: Sequence[Any]) -> str:
        digest = hashlib.sha256()
        for part in inputs:
            if isinstance(part, np.ndarray):
                digest.update(f"array{part.shape}{part.dtype}".encode())
                digest.update(np.ascontiguousarray(part).tobytes())
            else:
                digest.update(json.dumps(part, default=str).encode())
            digest.update(b"\0")
        return digest.hexdigest()

    def get_or_compute(self, inputs: Sequence[Any], compute: Callable[[], list[np.ndarray]]) -> list[np.ndarray]:
        """The arrays ``compute`` returns for ``inputs``: from the cache when it holds them, else computed and kept."""
        if self.folder is None:
            return compute()
        key = self._digest(inputs)
        path = self.folder / f"{key}.npz"
        try:
            blob = path.read_bytes()
            mac, data = blob[:64].decode("ascii"), blob[64:]
            if not hmac.compare_digest(mac, hmac.new(self._key, data, hashlib.sha256).hexdigest()):
                raise ValueError("not signed by this user")
            with np.load(io.BytesIO(data), allow_pickle=False) as stored:
                arrays = [stored[f"a{index}"] for index in range(len(stored.files))]
        except (OSError, ValueError, KeyError, UnicodeDecodeError):
            arrays = compute()
            self.misses += 1
            buffer = io.BytesIO()
            np.savez(buffer, **{f"a{index}": np.asarray(array) for index, array in enumerate(arrays)})
            data = buffer.getvalue()
            self.folder.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            temporary.write_bytes(hmac.new(self._key, data, hashlib.sha256).hexdigest().encode("ascii") + data)
            temporary.replace(path)
            return arrays
        self.hits += 1
        return arrays
