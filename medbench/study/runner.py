"""Run, plan, inspect and report a study (see :mod:`medbench.study.spec` for the file format).

A cell is complete when its folder holds ``.medbench-cell.json`` with the cell's current hash; that file is
written only after the cell's command succeeded (and, for an evaluation, wrote its results). So a killed
study resumes where it stopped, and a changed setting re-runs only the cells whose hash it changes. A cell
that is re-run starts from an empty folder, so no partial output of an earlier attempt survives.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from medbench import __version__
from medbench.errors import MedbenchError
from medbench.study.spec import BASE, Cell, Study

MARKER = ".medbench-cell.json"
FAILED = ".medbench-cell-failed.json"
SUBMISSION = "medbench-submission.json"
TRAINING_METADATA = "medbench_train.json"


def cell_state(study: Study, cell: Cell) -> str:
    """``done`` (outputs complete, same hash), ``stale`` (done with other settings), ``failed`` or ``pending``."""
    folder = study.folder(cell)
    marker = folder / MARKER
    if marker.is_file():
        try:
            recorded = json.loads(marker.read_text(encoding="utf-8")).get("hash")
        except (OSError, ValueError):
            recorded = None
        return "done" if recorded == cell.hash else "stale"
    return "failed" if (folder / FAILED).is_file() else "pending"


def command_of(cell: Cell, program: list[str] | None = None) -> list[str]:
    """The full command line of a cell; ``program`` defaults to this interpreter's ``-m medbench``."""
    if cell.kind == "train" and cell.launcher:
        return [*cell.launcher, "-m", "medbench", *cell.argv]
    return [*(program or [sys.executable, "-m", "medbench"]), *cell.argv]


def plan_lines(study: Study) -> list[str]:
    """One shell block per cell (``# cell ID hash H (after DEPS)`` then its command), in dependency order."""
    lines = [f"# study {study.name}: {len(study.cells)} cells under {study.root}"]
    for index, cell in enumerate(study.cells):
        after = f" after {', '.join(cell.deps)}" if cell.deps else ""
        lines.append(f"# [{index}] cell {cell.id} ({cell.kind}) hash {cell.hash}{after}")
        env = " ".join(f"{key}={shlex.quote(value)}" for key, value in sorted(cell.env.items()))
        command = shlex.join(command_of(cell, ["medbench"]))
        lines.append(f"{env} {command}" if env else command)
    return lines


def _write_json(path: Path, payload: dict) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _submission(study: Study, cell: Cell) -> dict:
    """The leaderboard manifest of an evaluation cell: name, backbone, variant, base model, training metadata."""
    meta = cell.meta
    manifest: dict = {
        "schema": "medbench-submission/1",
        "display_name": display_name(meta["backbone"], meta["variant"], meta["seed"]),
        "backbone": meta["backbone"],
        "variant": meta["variant"],
    }
    if meta["variant"] != BASE:
        if any(c.meta.get("variant") == BASE and c.meta.get("backbone") == meta["backbone"] for c in study.cells):
            manifest["base_model"] = display_name(meta["backbone"], BASE, None)
        train = study.folder(study.cell(cell.deps[0]))
        if (train / TRAINING_METADATA).is_file():
            shutil.copy(train / TRAINING_METADATA, study.folder(cell) / TRAINING_METADATA)
            manifest["training_metadata"] = TRAINING_METADATA
    manifest["notes"] = f"medbench study {study.name}, cell {cell.id} (hash {cell.hash})"
    return manifest


def display_name(backbone: str, variant: str, seed: int | None) -> str:
    return f"{backbone} {variant}" + (f" (seed {seed})" if seed is not None else "")


def run_cell(study: Study, cell: Cell, log=print) -> float:
    """Run one cell from an empty folder; write its completion marker. Returns the seconds it took.

    Raises:
        MedbenchError: A dependency is not complete, or the command failed (its log file is named).
    """
    for dep in cell.deps:
        if cell_state(study, study.cell(dep)) != "done":
            raise MedbenchError(f"cell {cell.id} needs {dep}, which is not complete: run it first")
    if cell.kind == "board":
        started = time.monotonic()
        build_board(study)
        return time.monotonic() - started
    folder = study.folder(cell)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    log_path = folder / "cell.log"
    command = command_of(cell)
    environment = {**os.environ, **cell.env}
    started = time.monotonic()
    with log_path.open("w", encoding="utf-8") as handle:
        handle.write(f"$ {shlex.join(command)}\n")
        handle.flush()
        completed = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=environment, check=False)
    seconds = time.monotonic() - started
    if completed.returncode != 0:
        _write_json(folder / FAILED, {"hash": cell.hash, "returncode": completed.returncode})
        tail = [line for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        reason = tail[-1] if tail else f"exit status {completed.returncode}"
        raise MedbenchError(f"cell {cell.id} failed ({reason}); full log: {log_path}")
    if cell.kind == "eval":
        if not list(folder.rglob("*_results.json")):
            raise MedbenchError(f"cell {cell.id}: lmms-eval wrote no results; full log: {log_path}")
        _write_json(folder / SUBMISSION, _submission(study, cell))
    _write_json(folder / MARKER, {
        "hash": cell.hash, "cell": cell.id, "kind": cell.kind, "command": command_of(cell, ["medbench"]),
        "seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "medbench": __version__,
        **cell.meta,
    })
    return seconds


def run_study(study: Study, only: list[str] | None = None, log=print) -> dict[str, str]:
    """Run every incomplete cell (or only ``only``) in order; skip complete ones. Returns cell id -> outcome."""
    selected = [study.cell(cell_id) for cell_id in only] if only else study.cells
    outcomes = {}
    for index, cell in enumerate(selected, 1):
        state = cell_state(study, cell)
        if state == "done" and cell.kind != "board":
            outcomes[cell.id] = "skipped (complete)"
            log(f"[{index}/{len(selected)}] {cell.id}: complete, skipped")
            continue
        log(f"[{index}/{len(selected)}] {cell.id}: running{' (settings changed)' if state == 'stale' else ''}")
        seconds = run_cell(study, cell, log)
        outcomes[cell.id] = f"ran in {seconds:.0f} s"
        log(f"[{index}/{len(selected)}] {cell.id}: done in {seconds:.0f} s")
    return outcomes


def status_lines(study: Study) -> list[str]:
    lines = []
    counts: dict[str, int] = {}
    for cell in study.cells:
        state = cell_state(study, cell) if cell.kind != "board" else (
            "done" if (study.root / "board" / "index.html").is_file() else "pending")
        counts[state] = counts.get(state, 0) + 1
        lines.append(f"{state:<8} {cell.id:<40} {cell.hash}")
    lines.append(", ".join(f"{count} {state}" for state, count in sorted(counts.items())))
    return lines


def build_board(study: Study) -> Path:
    """The leaderboard of every completed evaluation cell, in ``ROOT/board``; the baseline is the board's key."""
    from medbench.cli import main as medbench_main

    runs = [study.folder(cell) for cell in study.cells if cell.kind == "eval" and cell_state(study, cell) == "done"]
    if not runs:
        raise MedbenchError(f"study {study.name}: no evaluation cell is complete yet; run `medbench study run`")
    out = study.root / "board"
    argv = ["leaderboard", "build", *map(str, runs), "--out", str(out)]
    if study.baseline:
        first = next((c for c in study.cells if c.kind == "eval" and c.meta["variant"] == study.baseline), None)
        if first is not None and cell_state(study, first) == "done":
            argv += ["--baseline", display_name(first.meta["backbone"], first.meta["variant"], first.meta["seed"])]
    code = medbench_main(argv)
    if code:
        raise MedbenchError(f"study {study.name}: the leaderboard build failed (exit {code})")
    return out


def report_lines(study: Study) -> list[str]:
    """Per evaluation cell, each task's first metric; then where the board is."""
    from medbench.results import find_runs

    lines = []
    for cell in study.cells:
        if cell.kind != "eval":
            continue
        if cell_state(study, cell) != "done":
            lines.append(f"{cell.id}: {cell_state(study, cell)}")
            continue
        runs = find_runs(study.folder(cell))
        scores = []
        for run in runs:
            for task in run.tasks:
                metrics = run.metrics(task)
                for metric in ("overall", "rouge_l"):
                    if metric in metrics:
                        value, stderr = metrics[metric]
                        scores.append(f"{task} {metric} {value:.3f}" + (f" ± {stderr:.3f}" if stderr else ""))
        lines.append(f"{cell.id}: {'; '.join(scores) or 'no scores'}")
    board = study.root / "board" / "leaderboard.md"
    lines.append(f"board: {board}" if board.is_file() else "board: not built yet (medbench study run builds it last)")
    return lines
