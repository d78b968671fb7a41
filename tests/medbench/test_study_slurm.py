"""`medbench study run --executor slurm` on a real single-node SLURM (opt-in: ``pytest -m slurm``, as root).

The fixture brings SLURM up with ``.ci/slurm-up`` (Debian's slurm-wlm + munge, no systemd) and skips, saying
why, where that is impossible. One test runs a tiny.yaml-shaped study of 15 cells both ways: with the local
executor, and through SLURM with one job per cell, an ``scontrol requeue`` of the SFT training job while it
trains, a preemption signal (USR2, as SLURM sends before preempting or timing out) to the DPO training job,
and a second submission while the first is in the queue. The two runs must agree cell by cell (hashes, scores,
the final weights of both interrupted cells), each interrupted cell must have resumed from its checkpoint, and
the finished study, moved, must stay complete.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_study import FAST_TRAIN, _prepared_study

from medbench.study.jobs import job_record, queue_states
from medbench.study.runner import attempt_logs, cell_state, report_lines
from medbench.study.spec import load_study

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(3600)]  # about 7 minutes on 2 busy cores
REPO = Path(__file__).resolve().parents[2]
MEDBENCH = [sys.executable, "-m", "medbench"]


@pytest.fixture(scope="module")
def slurm() -> None:
    if os.geteuid() != 0:
        pytest.skip("bringing up SLURM needs root (.ci/slurm-up installs packages and starts daemons)")
    started = subprocess.run(["bash", str(REPO / ".ci" / "slurm-up")], capture_output=True, text=True, timeout=900,
                             check=False)
    if started.returncode != 0:
        pytest.skip(started.stdout.strip() or started.stderr.strip() or "SLURM did not come up")


def _study(folder: Path) -> Path:
    # SFT and DPO train long enough (20 steps, a checkpoint after each) for a requeue to land mid-training (the
    # test interrupts each after its third checkpoint; the DPO cell starts only once the SFT cell has finished).
    train = {**FAST_TRAIN, "save_strategy": "steps", "save_steps": 1, "max_steps": 20}
    one_core = {"cpus": 1, "mem": "2G", "time": "30:00"}
    # One reference (the prior-only floor) instead of _prepared_study's two: the second is one more lmms-eval
    # process per run and exercises no other path through SLURM.
    path = _prepared_study(folder, train=train,
                           resources={kind: one_core for kind in ("prepare", "prefs", "train", "eval", "probe", "board")})
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    del spec["eval"]["references"]["medbench_baseline"]
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def _wait_for_checkpoint(study, cell, deadline: float) -> None:
    """Return once the training cell has saved its third checkpoint (it is then mid-training)."""
    while not any(int(match.group(1)) >= 3 for item in study.folder(cell).glob("checkpoint-*")
                  if (match := re.fullmatch(r"checkpoint-(\d+)", item.name))):
        assert cell_state(study, cell) != "done", f"{cell.id} finished before it could be interrupted"
        assert time.monotonic() < deadline, f"{cell.id} saved no checkpoint in time"
        time.sleep(0.2)


def _weights(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def test_a_study_runs_through_slurm_survives_a_requeue_and_matches_the_local_run(slurm, tmp_path):
    path = _study(tmp_path)
    local_out, slurm_out = tmp_path / "local", tmp_path / "slurm"
    started = time.monotonic()
    local = subprocess.run([*MEDBENCH, "study", "run", str(path), "--out", str(local_out), "--jobs", "2"],
                           capture_output=True, text=True, timeout=1800, check=False)
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
    local_seconds = time.monotonic() - started

    started = time.monotonic()
    command = [*MEDBENCH, "study", "run", str(path), "--out", str(slurm_out), "--executor", "slurm"]
    submitted = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    study = load_study(path, slurm_out)
    cells = len(study.cells)  # prepare x2, prefs x3, base, SFT and DPO cells, one reference, the board
    assert cells == 15 and submitted.stdout.count("submitted as job") == cells
    dpo = job_record(study, study.cell("tiny/dpo/s1/train"))
    assert dpo["after"] == [job_record(study, study.cell(dep))["job_id"] for dep in study.cell("tiny/dpo/s1/train").deps]

    # Requeue the SFT training job once it has saved a few checkpoints, then submit again while jobs queue.
    sft = study.cell("tiny/sft/s1/train")
    sft_job = job_record(study, sft)["job_id"]
    deadline = time.monotonic() + 1200
    _wait_for_checkpoint(study, sft, deadline)
    subprocess.run(["scontrol", "requeue", sft_job], check=True)
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0 and "submitted as job" not in again.stdout, again.stdout + again.stderr
    assert f"tiny/sft/s1/train: queued as job {sft_job}" in again.stdout or "running as job" in again.stdout
    # Preempt the DPO training job the way SLURM warns before a preemption or time-out (USR2 to its steps):
    # submitit requeues it from inside the job.
    dpo_train = study.cell("tiny/dpo/s1/train")
    _wait_for_checkpoint(study, dpo_train, deadline + 600)
    subprocess.run(["scancel", "--signal=USR2", job_record(study, dpo_train)["job_id"]], check=True)

    while set(queue_states()) & {job_record(study, cell)["job_id"] for cell in study.cells}:
        assert time.monotonic() < deadline + 1200, "the study's jobs did not finish"
        time.sleep(2)
    slurm_seconds = time.monotonic() - started
    status = subprocess.run([*MEDBENCH, "study", "status", str(path), "--out", str(slurm_out)], capture_output=True,
                            text=True, check=True).stdout
    assert status.strip().splitlines()[-1] == f"{cells} done", status
    print(f"\nlocal --jobs 2: {local_seconds:.0f} s; slurm (one requeue, one preemption): {slurm_seconds:.0f} s")

    # Each interrupted attempt resumed from a checkpoint and ended where an uninterrupted run ends.
    reference = load_study(path, local_out)
    for cell in (sft, dpo_train):
        logs = attempt_logs(study, cell)
        assert len(logs) == 2 and "resuming from" in logs[1].read_text(), [log.read_text()[-2000:] for log in logs]
        assert f"logs: {logs[0]}; {logs[1]}" in status
        uninterrupted, resumed = _weights(reference.folder(reference.cell(cell.id))), _weights(study.folder(cell))
        assert uninterrupted.keys() == resumed.keys()
        assert all(np.array_equal(uninterrupted[key], resumed[key]) for key in resumed), cell.id

    # Same hashes, same scores, same board, wherever the cells ran.
    assert [cell.hash for cell in study.cells] == [cell.hash for cell in reference.cells]
    assert all(cell_state(reference, cell) == "done" for cell in reference.cells if cell.kind != "board")

    def scores(lines: list[str]) -> list[str]:
        return [line for line in lines if not line.startswith(("board:", "analysis:"))]

    assert scores(report_lines(study)) == scores(report_lines(reference))
    board = json.loads((slurm_out / "t" / "board" / "study.json").read_text())
    assert board["claims"] == json.loads((local_out / "t" / "board" / "study.json").read_text())["claims"]

    # The finished study, moved elsewhere, is still complete: submitting it again submits nothing.
    moved = tmp_path / "elsewhere"
    slurm_out.rename(moved)
    resubmitted = subprocess.run([*command[:-4], "--out", str(moved), "--executor", "slurm"], capture_output=True,
                                 text=True, timeout=300, check=False)
    assert resubmitted.returncode == 0 and "submitted as job" not in resubmitted.stdout, resubmitted.stdout
    assert resubmitted.stdout.count("complete, skipped") == cells
