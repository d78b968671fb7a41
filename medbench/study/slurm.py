"""``medbench study run --executor slurm``: one SLURM job per cell, through submitit.

Each incomplete cell becomes one job that runs :func:`medbench.study.runner.run_cell` (the same code the local
executor runs), depending (``afterok``) on exactly the jobs of the cells it reads; a failed dependency cancels
its dependents (``--kill-on-invalid-dep=yes``) instead of leaving them waiting forever. A cell's job asks for
the cell kind's ``resources`` (GPUs, CPUs, memory, time) and the study's ``cluster`` options (partition,
account, qos, further sbatch lines). Jobs are requeueable: on a preemption or time-out signal submitit
requeues the job, and an ``scontrol requeue`` from outside re-runs it; either way the cell's next attempt keeps
its checkpoints (same hash), so a training cell resumes where it stopped.

What was submitted is kept per cell in ``ROOT/.slurm/CELL/job.json`` (job id, the cell's hash, the scheduler
log), beside submitit's own files, so a second submission skips the cells whose job is still queued or
running, and ``medbench study status`` shows job ids and logs. SLURM's accounting database is not needed:
queued and running jobs are read from ``squeue``; done and failed from the cells' own markers.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

from medbench.errors import MedbenchError
from medbench.study.jobs import JOB_RECORD, job_folder, queue_states, scheduled_state
from medbench.study.runner import ATTEMPT, cell_state, run_cell
from medbench.study.spec import Cell, Cluster, Study

DEFAULT_TIME = "24:00:00"


def minutes(limit: str) -> int:
    """SLURM's time notation (``MM``, ``HH:MM:SS``, ``D-HH:MM:SS``) in whole minutes."""
    days, _, clock = limit.rpartition("-")
    parts = [int(part) for part in clock.split(":")]
    if len(parts) == 1:
        hours, mins, secs = 0, parts[0], 0
    else:
        hours, mins, secs = ([0] * (3 - len(parts)) + parts)[-3:]
    return (int(days or 0) * 24 + hours) * 60 + mins + (1 if secs else 0)


def _sbatch_options(lines: tuple[str, ...]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for line in lines:
        key, equals, value = line[2:].partition("=")
        options[key] = value if equals else True
    return options


def _parameters(study: Study, cell: Cell, cluster: Cluster, after: list[str]) -> dict[str, Any]:
    """submitit's SLURM parameters for one cell."""
    resources = cell.resources
    extra: dict[str, Any] = {"requeue": True, **_sbatch_options(cluster.sbatch)}
    if cluster.account:
        extra["account"] = cluster.account
    if cluster.qos:
        extra["qos"] = cluster.qos
    if resources.mem:
        extra["mem"] = resources.mem
    if after:
        extra["dependency"] = "afterok:" + ":".join(after)
        extra["kill-on-invalid-dep"] = "yes"
    parameters: dict[str, Any] = {
        "job_name": f"{study.name}:{cell.id}",
        "time": minutes(resources.time or DEFAULT_TIME),
        "nodes": resources.nodes,
        "cpus_per_task": resources.cpus,
        "additional_parameters": extra,
    }
    if resources.gpus:
        parameters["gpus_per_node"] = resources.gpus
    if cluster.partition:
        parameters["partition"] = cluster.partition
    return parameters


def _submitit():
    try:
        import submitit
    except ImportError:
        raise MedbenchError("--executor slurm needs submitit: pip install 'medbench[cluster]'") from None
    return submitit


def submit_study(study: Study, only: list[str] | None = None, *, cluster: Cluster | None = None,
                 force: list[str] | None = None, retries: int = 0, log=print) -> dict[str, str]:
    """Submit one job per incomplete cell (or per cell of ``only``); returns cell id -> job id.

    A cell that is complete, or whose job for the same hash is still queued or running, is not submitted
    again. Every dependency of a submitted cell must be complete, queued, or submitted in this call.

    Args:
        study: The study.
        only: Cell ids to submit.
        cluster: Partition, account, qos and sbatch lines (default: the study file's ``cluster:``).
        force: Cell ids re-run from an empty folder even when complete.
        retries: Further attempts at a failed cell inside its job.
        log: Where progress lines go.

    Raises:
        MedbenchError: SLURM or submitit is missing, or a dependency is neither complete nor submitted.
    """
    if shutil.which("sbatch") is None:
        raise MedbenchError("--executor slurm: no sbatch on this machine; run on a SLURM login node, or use "
                            "--executor local")
    submitit = _submitit()
    cluster = cluster or study.cluster
    forced = set(force or [])
    for cell_id in forced:
        study.cell(cell_id)
    selected = [study.cell(cell_id) for cell_id in only] if only else study.cells
    queued = queue_states()
    jobs: dict[str, str] = {}
    for cell in selected:
        scheduled, record = scheduled_state(study, cell, queued)
        if scheduled:
            jobs[cell.id] = record["job_id"]
            log(f"{cell.id}: {scheduled} as job {record['job_id']}, not submitted again")
            continue
        # The board too: its hash covers every cell it reads, and under SLURM it runs after all of them.
        if cell_state(study, cell) == "done" and cell.id not in forced:
            log(f"{cell.id}: complete, skipped")
            continue
        after = []
        for dep in cell.deps:
            if dep in jobs:
                after.append(jobs[dep])
            elif cell_state(study, study.cell(dep)) != "done":
                raise MedbenchError(f"cell {cell.id} needs {dep}, which is neither complete nor submitted; "
                                    "submit it too (leave out --cell)")
        folder = job_folder(study, cell)
        folder.mkdir(parents=True, exist_ok=True)
        executor = submitit.SlurmExecutor(folder=folder)
        executor.update_parameters(**_parameters(study, cell, cluster, after))
        job = executor.submit(CellJob(), study, cell.id, cell.id in forced, retries)
        jobs[cell.id] = str(job.job_id)
        record = {"job_id": str(job.job_id), "hash": cell.hash, "cell": cell.id, "after": after,
                  "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "scheduler_log": job.paths.stdout.name}
        (folder / JOB_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        log(f"{cell.id}: submitted as job {job.job_id}" + (f" (after {', '.join(after)})" if after else ""))
    return jobs


def wait_for(jobs: list[str], poll: float = 10.0) -> None:
    """Return once none of ``jobs`` is queued or running any more."""
    pending = set(jobs)
    while pending:
        pending &= set(queue_states())
        if pending:
            time.sleep(poll)


class CellJob:
    """The function a cell's SLURM job runs: :func:`run_cell`, requeued by submitit on preemption/time-out.

    ``checkpoint`` is what makes submitit requeue the job on SLURM's warning signal instead of letting it die;
    the cell's own checkpoints are what the requeued attempt resumes from, so nothing else needs saving.
    """

    def __call__(self, study: Study, cell_id: str, force: bool, retries: int) -> str:
        cell = study.cell(cell_id)
        # A forced cell is forced once: the requeued run of the same job resumes instead of starting over.
        attempt = study.folder(cell) / ATTEMPT
        if force and attempt.is_file():
            recorded = json.loads(attempt.read_text(encoding="utf-8")).get("job")
            force = recorded != os.environ.get("SLURM_JOB_ID")
        seconds = run_cell(study, cell, force=force, retries=retries)
        return f"{cell_id}: done in {seconds:.0f} s"

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Requeue with the same arguments (submitit calls this on the preemption/time-out signal)."""
        return _submitit().helpers.DelayedSubmission(self, *args, **kwargs)

