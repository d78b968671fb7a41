"""Verified task scores kept between folder-pile builds, keyed by the hash of the files they were computed from."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import asdict, fields
from pathlib import Path

from medbench.leaderboard.runs import TaskScores


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
