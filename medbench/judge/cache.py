"""Persistent judge-answer cache.

Answers are stored in SQLite, one row per (model, prompt id, prompt hash, rendered input), committed as
soon as each answer arrives: a run that is killed loses at most the requests in flight, and the next run
asks only for what is missing. Only answers that parsed are stored as answers, so a garbage answer is never
replayed as a score. Answers that could not be parsed are counted in a separate table (with the last raw
answer, for the reader), so a re-run does not ask the same hopeless request again and again; a later
answer that parses clears the record. No API key or endpoint is part of a key or a row.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medbench.errors import MedbenchError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    prompt TEXT NOT NULL,
    answer TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created REAL NOT NULL
)
"""
_FAILURES_SCHEMA = """
CREATE TABLE IF NOT EXISTS unparseable (
    key TEXT NOT NULL,
    scope TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    reason TEXT NOT NULL,
    raw TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (key, scope)
)
"""


@dataclass(frozen=True)
class RecordedFailure:
    """Answers to one request that the parser rejected, over all runs so far."""

    attempts: int
    reason: str
    raw: str


@dataclass(frozen=True)
class CachedAnswer:
    """One stored judge answer with the token counts it cost when it was fetched."""

    text: str
    prompt_tokens: int
    completion_tokens: int


def cache_key(model: str, prompt_id: str, prompt_sha256: str, messages: Sequence[dict[str, str]]) -> str:
    """Stable key for one judge request (the rendered messages carry the input)."""
    payload = json.dumps([model, prompt_id, prompt_sha256, list(messages)], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class JudgeCache:
    """Thread-safe answer store; on disk when given a path, in memory otherwise.

    Args:
        path: SQLite file (parent folders are created). ``None`` keeps answers for this process only.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._memory: dict[str, CachedAnswer] = {}
        self._failures: dict[tuple[str, str], RecordedFailure] = {}
        self._db: sqlite3.Connection | None = None
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute(_SCHEMA)
                self._db.execute(_FAILURES_SCHEMA)
                self._db.commit()
            except (OSError, sqlite3.Error) as error:
                raise MedbenchError(f"judge cache {self.path} cannot be opened ({error}): set MEDBENCH_JUDGE_CACHE to a writable file or 'off'") from None

    def get(self, key: str) -> CachedAnswer | None:
        """The stored answer for ``key``, if any."""
        with self._lock:
            hit = self._memory.get(key)
            if hit is not None or self._db is None:
                return hit
            row = self._db.execute(
                "SELECT answer, prompt_tokens, completion_tokens FROM answers WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                return None
            hit = CachedAnswer(text=row[0], prompt_tokens=row[1], completion_tokens=row[2])
            self._memory[key] = hit
            return hit

    def put(self, key: str, *, model: str, prompt: str, answer: CachedAnswer) -> None:
        """Store an answer and commit it immediately (so an interrupted run can resume)."""
        with self._lock:
            self._memory[key] = answer
            if self._db is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (key, model, prompt, answer.text, answer.prompt_tokens, answer.completion_tokens, time.time()),
                )
                self._db.commit()

    def failure(self, key: str, scope: str) -> RecordedFailure | None:
        """Unparseable answers recorded for ``key`` under ``scope`` (the parser's identity), if any."""
        with self._lock:
            hit = self._failures.get((key, scope))
            if hit is not None or self._db is None:
                return hit
            row = self._db.execute(
                "SELECT attempts, reason, raw FROM unparseable WHERE key = ? AND scope = ?", (key, scope)
            ).fetchone()
            return RecordedFailure(attempts=row[0], reason=row[1], raw=row[2]) if row else None

    def record_failure(self, key: str, scope: str, reason: str, raw: str) -> RecordedFailure:
        """Count one more unparseable answer for ``key`` (never stored as an answer)."""
        previous = self.failure(key, scope)
        record = RecordedFailure(attempts=(previous.attempts if previous else 0) + 1, reason=reason, raw=raw[:2000])
        with self._lock:
            self._failures[(key, scope)] = record
            if self._db is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO unparseable VALUES (?, ?, ?, ?, ?, ?)",
                    (key, scope, record.attempts, record.reason, record.raw, time.time()),
                )
                self._db.commit()
        return record

    def clear_failures(self, key: str) -> None:
        """Forget the unparseable answers of ``key`` (a usable answer arrived)."""
        with self._lock:
            for entry in [entry for entry in self._failures if entry[0] == key]:
                del self._failures[entry]
            if self._db is not None:
                self._db.execute("DELETE FROM unparseable WHERE key = ?", (key,))
                self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            if self._db is None:
                return len(self._memory)
            return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def keys(self) -> set[str]:
        """All stored keys (for tests and resume reports)."""
        with self._lock:
            if self._db is None:
                return set(self._memory)
            return {row[0] for row in self._db.execute("SELECT key FROM answers")}

    def close(self) -> None:
        """Close the database connection (answers stay on disk)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
