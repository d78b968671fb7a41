"""What was submitted for each cell of a study, and what SLURM still holds (read by ``study status`` and
:mod:`medbench.study.slurm`); needs no scheduler library, and answers empty where there is no SLURM."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from medbench.study.spec import Cell, Study

JOBS = ".slurm"
JOB_RECORD = "job.json"
ACTIVE = {"PENDING": "queued", "CONFIGURING": "queued", "REQUEUED": "queued", "REQUEUE_HOLD": "queued",
          "REQUEUE_FED": "queued", "SUSPENDED": "queued", "RUNNING": "running", "COMPLETING": "running",
          "RESIZING": "running", "STAGE_OUT": "running", "SIGNALING": "running"}


def job_folder(study: Study, cell: Cell) -> Path:
    """The cell's folder of submitit files and its ``job.json``."""
    return study.root / JOBS / cell.id


def job_record(study: Study, cell: Cell) -> dict[str, Any]:
    """What was last submitted for the cell (``{}`` when nothing was); ``scheduler_log`` is a full path."""
    folder = job_folder(study, cell)
    try:
        record = json.loads((folder / JOB_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    # Stored as a name in the cell's job folder, so a moved study folder still finds its logs.
    return {**record, "scheduler_log": str(folder / record.get("scheduler_log", ""))}


def queue_states() -> dict[str, str]:
    """Job id -> ``queued`` or ``running`` for this user's jobs SLURM still holds (empty without SLURM)."""
    if shutil.which("squeue") is None:
        return {}
    listed = subprocess.run(["squeue", "--me", "-h", "-o", "%i %T"], capture_output=True, text=True, check=False)
    states = {}
    for line in listed.stdout.splitlines():
        job, _, state = line.strip().partition(" ")
        if state in ACTIVE:
            states[job] = ACTIVE[state]
    return states


def scheduled_state(study: Study, cell: Cell, queued: dict[str, str]) -> tuple[str | None, dict[str, Any]]:
    """``queued`` / ``running`` when the cell's job (for its current hash) is in SLURM's queue, else None."""
    record = job_record(study, cell)
    if record.get("hash") == cell.hash and record.get("job_id") in queued:
        return queued[record["job_id"]], record
    return None, record
