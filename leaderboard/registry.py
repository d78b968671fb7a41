"""The submission registry: an append-only SQLite database of what the board accepted and turned away.

A board rebuilt from a pile of folders has no memory: a later copy of a run could evict the original, and
every build re-verifies every run. The registry keeps state instead (as the Open LLM Leaderboard's request
queue or MedHELM's releases do):

* ``runs``: each accepted run once, in the order it was accepted, with its identity (display name and its
  confusables skeleton), the SHA-256 of every file it was verified from, its verified per-sample scores and
  provenance (the :class:`~medbench.leaderboard.runs.Run`, serialised), the folder name it came from (never an
  absolute path) and the time;
* ``answers``: each accepted run's normalised answers per task (copy detection, :mod:`.copies`);
* ``rejections``: every turned-away submission with its rule and its one-line reason;
* ``withdrawals``: a run taken off the board, with the reason (the run itself is never deleted or edited,
  and keeps its name);
* ``notes``: what a study board keeps instead of rejecting (runs with identical answers).

Triggers refuse ``UPDATE`` and ``DELETE`` on every table, so the history can only grow.

**Who owns a name.** The first accepted run. A later run with the same display name, a name that looks the
same (:func:`~medbench.leaderboard.names.skeleton`), the same files, or a copy of an accepted run's answers
on any task is rejected; the accepted run is never touched. ``submit``, ``validate`` and ``build`` all decide
through :meth:`Registry.admit`.

**Concurrency.** The database runs in WAL mode: readers (``build``) never wait for a writer. Verification, the
slow part, happens outside any transaction; the decision and the insert happen in one ``BEGIN IMMEDIATE``
transaction, SQLite's single-writer lock, so two concurrent ``submit`` processes see each other's accepted
runs and ``UNIQUE`` constraints on the name and the skeleton make a duplicate name impossible even so. A
crash (or any exception) before ``COMMIT`` leaves the registry as it was.

**Export.** :meth:`Registry.export` writes every row as JSON lines and :meth:`Registry.load_export` replays them
into an empty registry: a board can live in a git repository as text and be rebuilt anywhere.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Self

from medbench.errors import MedbenchError

from .copies import find_copy
from .names import skeleton
from .rules import Rejected
from .runs import Run, RunMeta, TaskScores

REGISTRY_FILE = "registry.sqlite"
EXPORT_FORMAT = "medbench-registry/1"
_TABLES = ("runs", "answers", "rejections", "withdrawals", "notes")
_APPEND_ONLY_TABLES = ("meta", *_TABLES)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    skeleton TEXT NOT NULL UNIQUE,
    digest TEXT NOT NULL,
    source TEXT NOT NULL,
    submitted_utc TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_digest ON runs (digest);
CREATE TABLE IF NOT EXISTS answers (
    run INTEGER NOT NULL REFERENCES runs (seq),
    task TEXT NOT NULL,
    normalised TEXT NOT NULL,
    PRIMARY KEY (run, task)
);
CREATE INDEX IF NOT EXISTS answers_task ON answers (task);
CREATE TABLE IF NOT EXISTS rejections (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    rule TEXT NOT NULL,
    reason TEXT NOT NULL,
    digest TEXT,
    submitted_utc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS withdrawals (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE REFERENCES runs (name),
    reason TEXT NOT NULL,
    withdrawn_utc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS notes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    note TEXT NOT NULL
);
"""
_APPEND_ONLY = "".join(
    f"CREATE TRIGGER IF NOT EXISTS {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
    f"BEGIN SELECT RAISE(ABORT, 'the registry is append-only'); END;\n"
    for table in _APPEND_ONLY_TABLES
    for verb in ("UPDATE", "DELETE")
)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_record(run: Run) -> dict[str, Any]:
    """The run as stored: everything the board renders, without the normalised answers (stored apart)."""
    tasks = {}
    for task, scores in run.tasks.items():
        entry = asdict(scores)
        entry.pop("normalised", None)
        tasks[task] = entry
    return {
        "source": str(run.root),
        "meta": asdict(run.meta),
        "model": run.model,
        "tasks": tasks,
        "digest": run.digest,
        "provenance": run.provenance,
    }


_SCORE_FIELDS = {f.name for f in fields(TaskScores)}
_META_FIELDS = {f.name for f in fields(RunMeta)}


def run_from_record(record: dict[str, Any]) -> Run:
    """The :class:`Run` a stored record describes."""
    return Run(
        root=Path(record["source"]),
        meta=RunMeta(**{k: v for k, v in record["meta"].items() if k in _META_FIELDS}),
        model=record["model"],
        tasks={
            task: TaskScores(**{k: v for k, v in scores.items() if k in _SCORE_FIELDS})
            for task, scores in record["tasks"].items()
        },
        digest=record["digest"],
        provenance=record.get("provenance") or {},
    )


@dataclass
class Admission:
    """What :meth:`Registry.admit` decided.

    Attributes:
        accepted: The run went on the board.
        rejection: Why not (``None`` when accepted).
        notes: Kept-identical notes (study boards).
    """

    accepted: bool
    rejection: Rejected | None = None
    notes: tuple[str, ...] = ()


class Registry:
    """An append-only registry in ``folder/registry.sqlite`` (``folder=None``: a temporary one in memory).

    Args:
        folder: The registry folder (created when missing).
        timeout: Seconds a writer waits for another writer's transaction to finish.
    """

    def __init__(self, folder: Path | None, timeout: float = 300.0) -> None:
        if folder is None:
            target = ":memory:"
        else:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise MedbenchError(f"--registry {folder}: cannot create it ({error.strerror}); pass a writable folder") from None
            target = str(folder / REGISTRY_FILE)
        self.folder = folder
        try:
            # isolation_level=None: this class issues BEGIN/COMMIT itself, so a transaction is exactly one decision.
            self._db = sqlite3.connect(target, timeout=timeout, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            with self._write():
                for statement in (_SCHEMA + _APPEND_ONLY).split(";\n"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (EXPORT_FORMAT,))
        except sqlite3.DatabaseError as error:
            raise MedbenchError(f"--registry {folder}: not a medbench registry ({error}); pass the registry folder") from None

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------ transactions

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under SQLite's writer lock; any exception rolls it back."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ---------------------------------------------------------------------------------------- deciding

    def _problem(self, run: Run, keep_identical: bool) -> tuple[Rejected | None, list[str]]:
        """Why ``run`` cannot join the accepted runs (``None``: it can), and kept-identical notes."""
        db = self._db
        taken = db.execute("SELECT source, submitted_utc FROM runs WHERE name = ?", (run.name,)).fetchone()
        if taken:
            return Rejected(
                "duplicate", run.root,
                f"the display name {run.name!r} belongs to the run accepted on {taken[1]} ({taken[0]}); "
                "choose another display_name in medbench-submission.json",
            ), []
        alike = db.execute("SELECT name FROM runs WHERE skeleton = ?", (skeleton(run.name),)).fetchone()
        if alike:
            return Rejected(
                "duplicate", run.root,
                f"the display name {run.name!r} looks like the accepted {alike[0]!r} (Unicode confusables); "
                "choose a name that reads differently",
            ), []
        same = db.execute("SELECT name FROM runs WHERE digest = ?", (run.digest,)).fetchone()
        if same and not keep_identical:
            return Rejected("duplicate", run.root, f"the same files as the accepted run {same[0]!r}; submit each run once"), []
        mine = {
            task: dict(zip(scores.item_ids, scores.normalised, strict=True)) for task, scores in run.tasks.items() if scores.normalised
        }
        notes: list[str] = []
        for task in sorted(mine):
            for name, stored in db.execute(
                "SELECT runs.name, answers.normalised FROM answers JOIN runs ON runs.seq = answers.run "
                "WHERE answers.task = ? ORDER BY runs.seq",
                (task,),
            ):
                copy = find_copy({task: mine[task]}, {task: json.loads(stored)})
                if copy is None:
                    continue
                what = f"{copy.share:.1%} of its normalised {task} answers equal those of the accepted run {name!r}"
                if keep_identical:
                    notes.append(f"{run.name}: {what}")
                    continue
                return Rejected("duplicate", run.root, f"a copy: {what}; submit your own model's answers"), []
        return None, notes

    def check(self, run: Run, keep_identical: bool = False) -> Rejected | None:
        """Why ``run`` would be rejected now, without recording anything (``validate``)."""
        self._db.execute("BEGIN")
        try:
            return self._problem(run, keep_identical)[0]
        finally:
            self._db.execute("ROLLBACK")

    def admit(self, run: Run, keep_identical: bool = False) -> Admission:
        """Accept ``run`` unless it collides with an accepted run; record the rejection otherwise.

        Args:
            run: A verified run whose ``root`` is the folder name to show (never an absolute path).
            keep_identical: Note copies instead of rejecting them (the cells of one study).
        """
        with self._write() as db:
            problem, notes = self._problem(run, keep_identical)
            if problem is not None:
                self._insert_rejection(problem, run.digest)
                return Admission(False, problem)
            cursor = db.execute(
                "INSERT INTO runs (name, skeleton, digest, source, submitted_utc, record) VALUES (?, ?, ?, ?, ?, ?)",
                (run.name, skeleton(run.name), run.digest, str(run.root), _now(), json.dumps(run_record(run))),
            )
            self._insert_answers(cursor.lastrowid, run)
            for note in notes:
                db.execute("INSERT INTO notes (note) VALUES (?)", (note,))
        return Admission(True, None, tuple(notes))

    def _insert_answers(self, seq: int | None, run: Run) -> None:
        self._db.executemany(
            "INSERT INTO answers (run, task, normalised) VALUES (?, ?, ?)",
            [
                (seq, task, json.dumps(dict(zip(scores.item_ids, scores.normalised, strict=True)), ensure_ascii=False))
                for task, scores in sorted(run.tasks.items())
            ],
        )

    def _insert_rejection(self, error: Rejected, digest: str | None) -> None:
        self._db.execute(
            "INSERT INTO rejections (source, rule, reason, digest, submitted_utc) VALUES (?, ?, ?, ?, ?)",
            (error.where, error.rule, error.reason, digest, _now()),
        )

    def reject(self, error: Rejected) -> None:
        """Record a submission that failed verification."""
        with self._write():
            self._insert_rejection(error, None)

    def withdraw(self, name: str, reason: str) -> None:
        """Take an accepted run off the board (it stays in the registry and keeps its name).

        Raises:
            MedbenchError: No accepted run has that name, it is already withdrawn, or no reason is given.
        """
        if not reason.strip():
            raise MedbenchError("withdraw: give a --reason; the registry records why a run left the board")
        with self._write() as db:
            if db.execute("SELECT 1 FROM runs WHERE name = ?", (name,)).fetchone() is None:
                names = ", ".join(repr(n) for (n,) in db.execute("SELECT name FROM runs ORDER BY seq LIMIT 20"))
                raise MedbenchError(f"withdraw {name!r}: no accepted run has that display name (accepted: {names or 'none'})")
            if db.execute("SELECT 1 FROM withdrawals WHERE name = ?", (name,)).fetchone():
                raise MedbenchError(f"withdraw {name!r}: already withdrawn")
            db.execute("INSERT INTO withdrawals (name, reason, withdrawn_utc) VALUES (?, ?, ?)", (name, reason.strip(), _now()))

    # ----------------------------------------------------------------------------------------- reading

    def accepted(self) -> list[Run]:
        """The runs on the board (accepted and not withdrawn), in the order they were accepted."""
        rows = self._db.execute(
            "SELECT record FROM runs WHERE name NOT IN (SELECT name FROM withdrawals) ORDER BY seq"
        ).fetchall()
        return [run_from_record(json.loads(record)) for (record,) in rows]

    def names(self) -> list[str]:
        """Every accepted display name, withdrawn ones included."""
        return [name for (name,) in self._db.execute("SELECT name FROM runs ORDER BY seq")]

    def rejections(self, limit: int = 500) -> list[Rejected]:
        """The latest ``limit`` rejections, oldest first."""
        rows = self._db.execute(
            "SELECT source, rule, reason FROM (SELECT * FROM rejections ORDER BY seq DESC LIMIT ?) ORDER BY seq", (limit,)
        ).fetchall()
        return [Rejected(rule, source, reason) for source, rule, reason in rows]

    def withdrawals(self) -> list[tuple[str, str, str]]:
        """``(name, reason, time)`` of every withdrawn run."""
        return list(self._db.execute("SELECT name, reason, withdrawn_utc FROM withdrawals ORDER BY seq"))

    def notes(self) -> list[str]:
        """Notes recorded for kept-identical runs."""
        return [note for (note,) in self._db.execute("SELECT note FROM notes ORDER BY seq")]

    def counts(self) -> dict[str, int]:
        """Rows per table."""
        return {table: self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in _TABLES}

    # ------------------------------------------------------------------------------------ export/import

    def export(self, path: Path) -> int:
        """Write every row as JSON lines (``{"table": ..., "row": {...}}``), table by table in insertion order."""
        lines = [json.dumps({"format": EXPORT_FORMAT})]
        self._db.execute("BEGIN")
        try:
            for table in _TABLES:
                cursor = self._db.execute(f"SELECT * FROM {table} ORDER BY rowid")
                columns = [d[0] for d in cursor.description]
                lines += [
                    json.dumps({"table": table, "row": dict(zip(columns, row, strict=True))}, ensure_ascii=False, sort_keys=True)
                    for row in cursor
                ]
        finally:
            self._db.execute("ROLLBACK")
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")
        temporary.replace(path)
        return len(lines) - 1

    def load_export(self, path: Path) -> int:
        """Replay an export into this registry, which must be empty; all or nothing.

        Raises:
            MedbenchError: The registry is not empty, or the file is not a registry export.
        """
        # Not iter_json_records: the export's name is the user's, so a .json name must not make it a JSON list, and
        # every line is checked inside one transaction with errors naming `import`.
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
            header = json.loads(lines[0]) if lines else {}
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise MedbenchError(f"import {path}: cannot read it ({error}); pass a file written by `leaderboard export`") from None
        if header.get("format") != EXPORT_FORMAT:
            raise MedbenchError(f"import {path}: not a {EXPORT_FORMAT} export (first line {lines[0][:60] if lines else ''!r})")
        with self._write() as db:
            if any(self.counts().values()):
                raise MedbenchError(f"import {path}: the registry already holds runs; import into a new --registry folder")
            for number, line in enumerate(lines[1:], start=2):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    table, row = entry["table"], entry["row"]
                    if table not in _TABLES or not isinstance(row, dict):
                        raise ValueError(f"unknown table {table!r}")
                    unknown = set(row) - {info[1] for info in db.execute(f"PRAGMA table_info({table})")}
                    if unknown:  # column names go into the statement: only the table's own
                        raise ValueError(f"unknown columns {sorted(unknown)[:3]} in {table}")
                    columns = ", ".join(row)
                    placeholders = ", ".join("?" for _ in row)
                    db.execute(f"INSERT INTO {table} ({columns}) VALUES ({placeholders})", tuple(row.values()))
                except (ValueError, KeyError, TypeError, sqlite3.DatabaseError) as error:
                    raise MedbenchError(f"import {path}: line {number}: {error}; the file is not a valid export") from None
        return len(lines) - 1
