"""Run, plan, inspect and report a study (see :mod:`medbench.study.spec` for the file format).

A cell is complete when its folder holds ``.medbench-cell.json`` with the cell's current hash; that file is
written only after the cell's command succeeded (and, for an evaluation, wrote its results). So a killed
study resumes where it stopped, and a changed setting re-runs only the cells whose hash it changes.

Each attempt at a cell holds the cell's lock (``.medbench-cell.lock``, an OS file lock released when the
process dies, even by SIGKILL or a scheduler's preemption), so a second runner of the same cell refuses with
one line. An attempt at a cell whose last attempt had another hash (or one forced with ``--force``) starts
from an empty folder; a re-run of the same hash keeps the earlier attempts' logs (``logs/attempt-N.log``),
and a training cell also keeps its checkpoints, which ``medbench train`` resumes from. This module runs cells
on this machine; :mod:`medbench.study.slurm` hands the same :func:`run_cell` to SLURM.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from medbench import __version__
from medbench.errors import MedbenchError
from medbench.study.jobs import queue_states, scheduled_state
from medbench.study.spec import BASE, REFERENCE, Cell, Study

MARKER = ".medbench-cell.json"
FAILED = ".medbench-cell-failed.json"
LOCK = ".medbench-cell.lock"
ATTEMPT = ".medbench-cell-attempt.json"
LOGS = "logs"
SUBMISSION = "medbench-submission.json"
TRAINING_METADATA = "medbench_train.json"


# The extra each cell kind needs beyond the core (a study that trains needs more than the demo's `eval`): one line
# before the first cell beats a traceback in the fifth cell's log.
_EXTRA_OF_KIND = {"train": "train", "probe": "train", "eval": "eval", "board": "leaderboard"}


def require_extras(study: Study, cells: list[Cell]) -> None:
    """Raise one line naming the ``medbench[...]`` extras that ``cells`` need and this environment lacks."""
    from medbench.doctor import missing_from_extras

    missing = missing_from_extras(sorted({_EXTRA_OF_KIND[cell.kind] for cell in cells if cell.kind in _EXTRA_OF_KIND}))
    if missing:
        extras = ",".join(missing)
        absent = ", ".join(name for names in missing.values() for name in names)
        raise MedbenchError(f"study {study.name} needs medbench[{extras}] ({absent} not installed): "
                            f"pip install -c medbench/lock.txt -e \".[{extras}]\" in a checkout, or "
                            f"pip install \"medbench[{extras}]\"")


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


@contextmanager
def cell_lock(study: Study, cell: Cell) -> Iterator[None]:
    """Hold the cell's lock for the duration, or refuse with one line naming the runner that holds it."""
    folder = study.folder(cell)
    folder.mkdir(parents=True, exist_ok=True)
    handle = (folder / LOCK).open("a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise MedbenchError(f"cell {cell.id} is being run by {holder}; wait for it to finish (or stop it) "
                                "and run again") from None
        handle.seek(0)
        handle.truncate()
        job = f", SLURM job {os.environ['SLURM_JOB_ID']}" if os.environ.get("SLURM_JOB_ID") else ""
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}{job} since {time.strftime('%H:%M:%S')}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def attempt_logs(study: Study, cell: Cell) -> list[Path]:
    """The log of every attempt at the cell under its current settings, oldest first."""
    folder = study.folder(cell) / LOGS
    logs = folder.glob("attempt-*.log") if folder.is_dir() else []
    return sorted(logs, key=lambda path: int(path.stem.split("-")[1]))


def _clear_for_attempt(study: Study, cell: Cell, force: bool) -> None:
    """Empty the cell's folder as far as this attempt needs (see the module docstring); keeps the lock."""
    folder = study.folder(cell)
    same_settings = _read_json(folder / ATTEMPT).get("hash") == cell.hash
    keep = {LOCK}
    if same_settings:
        keep.add(LOGS)
        if cell.kind == "train" and not force:
            keep |= {item.name for item in folder.iterdir()} - {MARKER, FAILED}
    for item in folder.iterdir():
        if item.name not in keep:
            shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
    _write_json(folder / ATTEMPT, {"hash": cell.hash, "cell": cell.id, "job": os.environ.get("SLURM_JOB_ID")})


def run_cell(study: Study, cell: Cell, log=print, *, force: bool = False, retries: int = 0) -> float:
    """Run one cell under its lock and write its completion marker. Returns the seconds it took.

    Args:
        study: The study.
        cell: The cell to run.
        log: Where progress lines go.
        force: Start from an empty folder even when the cell is complete or has checkpoints.
        retries: Further attempts after a failed one.

    Raises:
        MedbenchError: A dependency is not complete, another runner holds the cell, or the command failed
            (its log file is named).
    """
    for dep in cell.deps:
        if cell_state(study, study.cell(dep)) != "done":
            raise MedbenchError(f"cell {cell.id} needs {dep}, which is not complete: run it first")
    with cell_lock(study, cell):
        if not force and cell.kind != "board" and cell_state(study, cell) == "done":
            return 0.0  # another runner completed it while this one waited to start
        _clear_for_attempt(study, cell, force)
        for attempt in range(retries + 1):
            try:
                return _attempt(study, cell)
            except MedbenchError as error:
                if attempt == retries:
                    raise
                log(f"{cell.id}: {error}; retrying ({attempt + 1} of {retries})")
    raise AssertionError("unreachable")


def _attempt(study: Study, cell: Cell) -> float:
    folder = study.folder(cell)
    (folder / LOGS).mkdir(exist_ok=True)
    log_path = folder / LOGS / f"attempt-{len(attempt_logs(study, cell)) + 1}.log"
    (folder / FAILED).unlink(missing_ok=True)
    command = command_of(cell)
    environment = {**os.environ, **cell.env}
    started = time.monotonic()
    with log_path.open("w", encoding="utf-8") as handle:
        where = f" (SLURM job {os.environ['SLURM_JOB_ID']})" if os.environ.get("SLURM_JOB_ID") else ""
        handle.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S%z')} on {socket.gethostname()}{where}\n")
        handle.write(f"$ {shlex.join(command)}\n")
        handle.flush()
        completed = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=environment, check=False)
    seconds = time.monotonic() - started
    if completed.returncode != 0:
        _write_json(folder / FAILED, {"hash": cell.hash, "returncode": completed.returncode, "log": str(log_path)})
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


def visible_gpus() -> list[str]:
    """This machine's GPUs as ``CUDA_VISIBLE_DEVICES`` entries (that variable when set, else ``nvidia-smi``)."""
    stated = os.environ.get("CUDA_VISIBLE_DEVICES")
    if stated is not None:
        return [gpu for gpu in stated.split(",") if gpu.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    listed = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                            text=True, check=False)
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()] if listed.returncode == 0 else []


def run_study(study: Study, only: list[str] | None = None, log=print, jobs: int = 1, *, force: list[str] | None = None,
              retries: int = 0, gpus: list[str] | None = None) -> dict[str, str]:
    """Run every incomplete cell (or only ``only``), skipping complete ones; returns cell id -> outcome.

    With ``jobs`` > 1, up to that many cells whose dependencies are complete run at once (each is its own
    process); the order of starting is the file's order. On a machine with GPUs each running cell gets its
    ``resources.KIND.gpus`` of them through ``CUDA_VISIBLE_DEVICES``, and a cell waits until that many are
    free. After a failure no new cell starts; the running ones finish, then the first failure is raised.

    Args:
        study: The study.
        only: Cell ids to run (their dependencies must be complete or among them).
        log: Where progress lines go.
        jobs: Cells run at once.
        force: Cell ids re-run from an empty folder even when complete.
        retries: Further attempts at a failed cell.
        gpus: The GPUs to share out (default: :func:`visible_gpus`).
    """
    forced = set(force or [])
    for cell_id in forced:
        study.cell(cell_id)  # an unknown id is one line naming the study file
    selected = [study.cell(cell_id) for cell_id in only] if only else study.cells
    total = len(selected)
    outcomes: dict[str, str] = {}
    queue: list[tuple[int, Cell]] = []
    for index, cell in enumerate(selected, 1):
        state = cell_state(study, cell)
        if state == "done" and cell.kind != "board" and cell.id not in forced:
            outcomes[cell.id] = "skipped (complete)"
            log(f"[{index}/{total}] {cell.id}: complete, skipped")
        else:
            queue.append((index, cell))
    free = list(visible_gpus() if gpus is None else gpus)
    needs = {cell.id: min(cell.resources.gpus, len(free)) if free and jobs > 1 else 0 for _, cell in queue}

    def start(cell: Cell, index: int, taken: list[str]) -> None:
        try:
            _run_logged(study, cell, index, total, log, outcomes, cell.id in forced, retries, taken)
        finally:
            free.extend(taken)

    if jobs <= 1:
        for index, cell in queue:
            _run_logged(study, cell, index, total, log, outcomes, cell.id in forced, retries, None)
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
                    ready = all(dep in finished or dep not in queued_ids for dep in cell.deps)
                    if ready and needs[cell.id] <= len(free):
                        queue.remove(item)
                        # Taken here, returned by the worker: the next pass sees only what is really free.
                        taken = [free.pop(0) for _ in range(needs[cell.id])]
                        running[pool.submit(start, cell, index, taken)] = cell
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


def _run_logged(study: Study, cell: Cell, index: int, total: int, log, outcomes: dict[str, str], force: bool,
                retries: int, gpus: list[str] | None) -> None:
    state = cell_state(study, cell)
    log(f"[{index}/{total}] {cell.id}: running{' (settings changed)' if state == 'stale' else ''}"
        + (f" on GPU {','.join(gpus)}" if gpus else ""))
    if gpus:
        cell = replace(cell, env={**cell.env, "CUDA_VISIBLE_DEVICES": ",".join(gpus)})
    seconds = run_cell(study, cell, log, force=force, retries=retries)
    outcomes[cell.id] = f"ran in {seconds:.0f} s"
    log(f"[{index}/{total}] {cell.id}: done in {seconds:.0f} s")


def status_lines(study: Study) -> list[str]:
    """Per cell: done / stale / failed / pending, or queued / running with its SLURM job id; then each
    attempt's log (and the scheduler's log of its job); last, the count of cells per state."""
    queued = queue_states()
    lines = []
    counts: dict[str, int] = {}
    for cell in study.cells:
        state = cell_state(study, cell) if cell.kind != "board" else (
            "done" if (study.root / "board" / "index.html").is_file() else "pending")
        scheduled, record = scheduled_state(study, cell, queued)
        state = scheduled or state
        counts[state] = counts.get(state, 0) + 1
        job = f"  job {record['job_id']}" if record.get("hash") == cell.hash else ""
        lines.append(f"{state:<8} {cell.id:<40} {cell.hash}{job}")
        logs = [str(path) for path in attempt_logs(study, cell)]
        if job:
            logs.append(f"(scheduler) {record['scheduler_log']}")
        if logs:
            lines.append(f"         logs: {'; '.join(logs)}")
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
