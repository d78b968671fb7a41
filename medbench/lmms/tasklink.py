"""Register the medbench tasks inside the lmms-eval installation, so ``lmms-eval --tasks medbench_*`` needs no flag.

lmms-eval 0.7.3 indexes only its own ``lmms_eval/tasks/`` folder plus ``--include_path``; no entry point or
environment variable adds a task folder before the index is built. ``medbench tasks link`` therefore copies
the task files into ``lmms_eval/tasks/medbench/`` and writes a marker file listing what it created;
``medbench tasks unlink`` removes exactly those files again and refuses to touch a folder without the marker.

Copies rather than symlinks: lmms-eval reads every YAML under its task folder at start-up, so a symlink left
dangling (medbench uninstalled, the checkout moved) would break every lmms-eval run, medbench's or not. A stale
copy only affects the medbench tasks, and :func:`link_status` detects it (the marker holds each file's hash).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from medbench import __version__
from medbench.errors import MedbenchError
from medbench.taskfiles import tasks_dir

LINK_NAME = "medbench"
MARKER = ".medbench-link.json"
_SKIPPED_NAMES = {"__init__.py", "__pycache__"}


@dataclass(frozen=True)
class LinkStatus:
    """Where the registration stands.

    Attributes:
        state: ``current`` (linked, same files as the installed tasks), ``stale`` (linked from other or older
            task files), ``absent`` (not linked), ``foreign`` (a ``medbench`` task folder medbench did not
            create) or ``no-lmms-eval`` (lmms-eval is not installed).
        folder: The task folder inside lmms-eval (``None`` without lmms-eval).
        detail: One human-readable line.
    """

    state: str
    folder: Path | None
    detail: str


def lmms_eval_tasks_folder() -> Path | None:
    """lmms-eval's own task folder, found without importing lmms-eval; ``None`` when it is not installed."""
    spec = importlib.util.find_spec("lmms_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


def _source_files(source: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every task file worth copying (YAMLs, templates, data, task-local utils)."""
    files = {}
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_dir() or _SKIPPED_NAMES.intersection(relative.parts) or path.suffix == ".pyc":
            continue
        files[relative.as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def _read_marker(folder: Path) -> dict | None:
    marker = folder / MARKER
    if not marker.is_file():
        return None
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise MedbenchError(f"{marker}: unreadable ({error}); delete {folder} by hand if medbench made it") from error
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        raise MedbenchError(f"{marker}: not a medbench link record; delete {folder} by hand if medbench made it")
    return record


def link_status() -> LinkStatus:
    """Report whether lmms-eval indexes the medbench tasks without ``--include_path``."""
    root = lmms_eval_tasks_folder()
    if root is None:
        return LinkStatus("no-lmms-eval", None, "lmms-eval is not installed (pip install medbench[eval])")
    folder = root / LINK_NAME
    if not folder.exists():
        return LinkStatus("absent", folder, "not linked: run `medbench tasks link` (or pass --include_path)")
    record = _read_marker(folder)
    if record is None:
        return LinkStatus("foreign", folder, f"{folder} exists but was not created by `medbench tasks link`")
    source = tasks_dir()
    current = _source_files(source)
    if record["files"] != current or record.get("source") != str(source):
        changed = sorted(set(current.items()) ^ set(record["files"].items()))
        names = sorted({name for name, _ in changed})
        return LinkStatus(
            "stale",
            folder,
            f"linked from {'older' if record.get('source') == str(source) else 'other'} task files "
            f"({len(names)} differ, e.g. {names[0] if names else record.get('source')}): run `medbench tasks link`",
        )
    return LinkStatus("current", folder, f"linked in {folder} (medbench {record.get('medbench_version')})")


def _remove_recorded(folder: Path, record: dict) -> list[str]:
    """Delete the files a marker lists (and the folders that leaves empty); return what was kept."""
    for name in record["files"]:
        path = folder / name
        if path.is_file() or path.is_symlink():
            path.unlink()
    for directory in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if directory.name == "__pycache__":
            shutil.rmtree(directory)
        elif not any(directory.iterdir()):
            directory.rmdir()
    (folder / MARKER).unlink()
    kept = [str(p.relative_to(folder)) for p in folder.rglob("*")]
    if not kept:
        folder.rmdir()
    return kept


def link_tasks() -> LinkStatus:
    """Copy the medbench task files into lmms-eval's task folder (idempotent; refreshes a stale link).

    Raises:
        MedbenchError: lmms-eval is missing, the folder is not medbench's, or it cannot be written.
    """
    status = link_status()
    if status.state == "no-lmms-eval":
        raise MedbenchError(status.detail)
    if status.state == "foreign":
        raise MedbenchError(f"{status.detail}; refusing to touch it (move it away, then run `medbench tasks link`)")
    if status.state == "current":
        return status
    folder = status.folder
    assert folder is not None
    if status.state == "stale":
        _remove_recorded(folder, _read_marker(folder) or {"files": {}})
    source = tasks_dir()
    files = _source_files(source)
    record = {"created_by": "medbench tasks link", "medbench_version": __version__, "source": str(source), "files": files}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # The marker goes first, so an interrupted link can still be undone by `medbench tasks unlink`.
        (folder / MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        for name in files:
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, target)
    except OSError as error:
        raise MedbenchError(
            f"cannot write {folder} ({error.strerror}); use `lmms-eval --include_path \"$(medbench tasks-dir)\"` "
            "or `medbench eval` instead"
        ) from error
    return link_status()


def unlink_tasks() -> str:
    """Remove what :func:`link_tasks` created; returns one line saying what happened.

    Raises:
        MedbenchError: the folder exists but was not created by ``medbench tasks link``.
    """
    status = link_status()
    if status.state in ("no-lmms-eval", "absent"):
        return "nothing to unlink: " + status.detail
    if status.state == "foreign":
        raise MedbenchError(f"{status.detail}; refusing to delete it")
    assert status.folder is not None
    kept = _remove_recorded(status.folder, _read_marker(status.folder) or {"files": {}})
    if kept:
        return f"removed medbench's task files from {status.folder}; kept files it did not create: {', '.join(kept)}"
    return f"removed {status.folder}"
