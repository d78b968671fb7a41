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
from medbench.study.spec import BASE, REFERENCE, Cell, Study

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
    if meta["variant"] != BASE and meta["backbone"] != REFERENCE:
        train_cell = next(study.cell(dep) for dep in cell.deps if study.cell(dep).kind == "train")
        # base_model is the model this cell was trained from: its seed's SFT (variants_from: sft) or the base.
        start = next((study.cell(dep) for dep in train_cell.deps if study.cell(dep).kind == "train"), None)
        if start is not None:
            manifest["base_model"] = display_name(start.meta["backbone"], start.meta["variant"], start.meta["seed"])
        elif any(c.meta.get("variant") == BASE and c.meta.get("backbone") == meta["backbone"] for c in study.cells):
            manifest["base_model"] = display_name(meta["backbone"], BASE, None)
        train = study.folder(train_cell)
        if (train / TRAINING_METADATA).is_file():
            shutil.copy(train / TRAINING_METADATA, study.folder(cell) / TRAINING_METADATA)
            manifest["training_metadata"] = TRAINING_METADATA
    manifest["notes"] = f"medbench study {study.name}, cell {cell.id} (hash {cell.hash})"
    return manifest


def display_name(backbone: str, variant: str, seed: int | None) -> str:
    """The board's name of a cell's model: ``tiny dpo (seed 1)``, ``tiny base``; a reference is its own name."""
    if backbone == REFERENCE:
        return variant
    return f"{backbone} {variant}" + (f" (seed {seed})" if seed is not None else "")


def run_cell(study: Study, cell: Cell, log=print) -> float:
    """Run one cell from an empty folder; write its completion marker. Returns the seconds it took.

    Raises:
        MedbenchError: A dependency is not complete, or the command failed (its log file is named).
    """
    for dep in cell.deps:
        if cell_state(study, study.cell(dep)) != "done":
            raise MedbenchError(f"cell {cell.id} needs {dep}, which is not complete: run it first")
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
    if cell.kind == "probe" and not (folder / "summary.json").is_file():
        raise MedbenchError(f"cell {cell.id}: prefs score wrote no summary.json; full log: {log_path}")
    _write_json(folder / MARKER, {
        "hash": cell.hash, "cell": cell.id, "kind": cell.kind, "command": command_of(cell, ["medbench"]),
        "seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "medbench": __version__,
        **cell.meta,
    })
    return seconds


def run_study(study: Study, only: list[str] | None = None, log=print, jobs: int = 1) -> dict[str, str]:
    """Run every incomplete cell (or only ``only``), skipping complete ones; returns cell id -> outcome.

    With ``jobs`` > 1, up to that many cells whose dependencies are complete run at once (each is its own
    process); the order of starting is the file's order. After a failure no new cell starts; the running ones
    finish, then the first failure is raised.
    """
    selected = [study.cell(cell_id) for cell_id in only] if only else study.cells
    total = len(selected)
    outcomes: dict[str, str] = {}
    queue: list[tuple[int, Cell]] = []
    for index, cell in enumerate(selected, 1):
        state = cell_state(study, cell)
        if state == "done" and cell.kind != "board":
            outcomes[cell.id] = "skipped (complete)"
            log(f"[{index}/{total}] {cell.id}: complete, skipped")
        else:
            queue.append((index, cell))
    if jobs <= 1:
        for index, cell in queue:
            _run_logged(study, cell, index, total, log, outcomes)
        return outcomes

    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    queued_ids = {cell.id for _, cell in queue}
    finished: set[str] = set()
    failure: BaseException | None = None
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running: dict = {}
        while queue or running:
            if failure is None:
                for item in list(queue):
                    if len(running) >= jobs:
                        break
                    index, cell = item
                    if all(dep in finished or dep not in queued_ids for dep in cell.deps):
                        queue.remove(item)
                        running[pool.submit(_run_logged, study, cell, index, total, log, outcomes)] = cell
            elif not running:
                break
            if not running:
                blocked = ", ".join(cell.id for _, cell in queue)
                raise MedbenchError(f"study {study.name}: cells {blocked} wait for cells outside --cell; run those first")
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                cell = running.pop(future)
                error = future.exception()
                if error is None:
                    finished.add(cell.id)
                elif failure is None:
                    failure = error
    if failure is not None:
        raise failure
    return outcomes


def _run_logged(study: Study, cell: Cell, index: int, total: int, log, outcomes: dict[str, str]) -> None:
    state = cell_state(study, cell)
    log(f"[{index}/{total}] {cell.id}: running{' (settings changed)' if state == 'stale' else ''}")
    seconds = run_cell(study, cell, log)
    outcomes[cell.id] = f"ran in {seconds:.0f} s"
    log(f"[{index}/{total}] {cell.id}: done in {seconds:.0f} s")


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
    """The leaderboard of every completed evaluation cell, in ``ROOT/board`` (with the study's analysis when it
    has a probe); the baseline is the board's key."""
    runs = [study.folder(cell) for cell in study.cells if cell.kind == "eval" and cell_state(study, cell) == "done"]
    if not runs:
        raise MedbenchError(f"study {study.name}: no evaluation cell is complete yet; run `medbench study run`")
    out = study.root / "board"
    # The board checks each run against the task's test data: read it from where the evaluation cells did.
    board_env = study.cell("board").env
    saved = {key: os.environ.get(key) for key in board_env}
    os.environ.update(board_env)
    try:
        return _build_board(study, runs, out)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _build_board(study: Study, runs: list[Path], out: Path) -> Path:
    from medbench.cli import main as medbench_main

    # Two cells of one study may train identically (error_targeted is CoPO when every error is visual): keep both.
    argv = ["leaderboard", "build", *map(str, runs), "--out", str(out), "--keep-identical"]
    if study.probe:  # the analysis is written beside the board, after it: link it from the page
        argv += ["--link", "The study's claims, per question kind (study.md)=study.md", "--link", "study.png=study.png"]
    if study.baseline:
        first = next((c for c in study.cells if c.kind == "eval" and c.meta["variant"] == study.baseline), None)
        if first is not None and cell_state(study, first) == "done":
            argv += ["--baseline", display_name(first.meta["backbone"], first.meta["variant"], first.meta["seed"])]
    code = medbench_main(argv)
    if code:
        raise MedbenchError(f"study {study.name}: the leaderboard build failed (exit {code})")
    if study.probe:
        from medbench.study.analysis import write_analysis

        write_analysis(study, out, {cell.id for cell in study.cells if cell_state(study, cell) == "done"})
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
    analysis = study.root / "board" / "study.json"
    if analysis.is_file():
        for claim in json.loads(analysis.read_text(encoding="utf-8"))["claims"]:
            verdict = {True: "holds", False: "does not hold", None: "not measured"}[claim["holds"]]
            lines.append(f"claim ({claim['backbone']}): {claim['statement']}: {verdict}")
            for part in claim["evidence"]:
                lines.append(f"  {part['variant']} - {part['against']} {part['quantity']}: {part['difference']:+.3f} "
                             f"[{part['low']:+.3f}, {part['high']:+.3f}]")
        lines.append(f"analysis: {study.root / 'board' / 'study.md'}")
    board = study.root / "board" / "leaderboard.md"
    lines.append(f"board: {board}" if board.is_file() else "board: not built yet (medbench study run builds it last)")
    return lines
