"""``medbench eval``: lmms-eval with the medbench task folder filled in and the data checked first.

Every flag is passed to lmms-eval unchanged, with three additions: ``--include_path`` points at the medbench
tasks, ``--output_path`` defaults to ``medbench-results`` and ``--log_samples`` is on (the judge and the
leaderboard need the per-sample logs). Before lmms-eval starts, the data of the requested medbench tasks is
loaded and validated, so a missing image stops the run in seconds with one line instead of a traceback.
Because lmms-eval can exit 0 after a failed evaluation, success means: a new results file was written, and no
generation failed (an API backend that did not answer makes lmms-eval write a failure marker as the answer;
medbench counts those instead of scoring them, and ``medbench eval`` then exits non-zero naming the count).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from medbench.commands.data import check_tasks
from medbench.errors import MedbenchError
from medbench.lmms.failures import failed_generation_summary
from medbench.lmms.tasklink import link_status, link_tasks
from medbench.taskfiles import group_members, tasks_dir

DEFAULT_OUTPUT = "medbench-results"


def _flag_value(argv: list[str], flag: str) -> str | None:
    for index, item in enumerate(argv):
        if item == flag and index + 1 < len(argv):
            return argv[index + 1]
        if item.startswith(flag + "="):
            return item.split("=", 1)[1]
    return None


def _replace_flag_value(argv: list[str], flag: str, value: str) -> None:
    for index, item in enumerate(argv):
        if item == flag:
            argv[index + 1] = value
        elif item.startswith(flag + "="):
            argv[index] = f"{flag}={value}"


def prepare_lmms_args(argv: list[str]) -> list[str]:
    """The lmms-eval argument list ``medbench eval`` runs (see the module docstring)."""
    if _flag_value(argv, "--include_path") is not None:
        raise MedbenchError(
            "medbench eval sets --include_path to the medbench tasks itself; to combine task folders call "
            'lmms-eval directly with --include_path "$(medbench tasks-dir)"'
        )
    args = list(argv)
    tasks = _flag_value(args, "--tasks")
    if tasks in group_members() and Path(tasks).is_dir():
        # lmms-eval reads a --tasks value that names an existing folder as a folder of YAMLs, so
        # `--tasks medbench` run from a checkout (which has a medbench/ folder) finds no task; name the
        # group's members instead (the group itself defines no aggregate score).
        _replace_flag_value(args, "--tasks", ",".join(group_members()[tasks]))
    args += ["--include_path", str(tasks_dir())]
    if _flag_value(argv, "--output_path") is None:
        args += ["--output_path", DEFAULT_OUTPUT]
    if "--log_samples" not in argv:
        args.append("--log_samples")
    return args


def run_lmms_eval(argv: list[str], env: dict[str, str] | None = None, *, check_data: bool = True,
                  processes: int = 1) -> list[Path]:
    """Run lmms-eval in a child process and return the results files it wrote.

    Args:
        argv: lmms-eval arguments (``--model``, ``--tasks``...), before :func:`prepare_lmms_args`.
        env: Environment of the child process (default: this one).
        check_data: Load and validate the requested medbench tasks' data first.
        processes: Data-parallel processes (``accelerate launch --num_processes N -m lmms_eval``; one per GPU,
            or CPU processes without GPUs); the results equal one process's.

    Raises:
        MedbenchError: When the data check fails, lmms-eval fails, no results were written, or generations
            failed (the results stay on disk; the message names the count per task).
    """
    args = prepare_lmms_args(argv)
    # lmms-eval's own task folder wins over --include_path, so a copy left by an older `medbench tasks link`
    # would shadow the current task files: refresh it (it is medbench's own, as its marker file proves).
    if link_status().state == "stale":
        link_tasks()
        print("medbench eval: refreshed the lmms-eval copy of the medbench tasks (see `medbench tasks link`)",
              file=sys.stderr)
    environment = dict(os.environ if env is None else env)
    tasks = (_flag_value(args, "--tasks") or "").split(",")
    if check_data:
        for line in check_tasks([task for task in tasks if task], environment):
            print(f"data ok: {line}", flush=True)
    output = Path(str(_flag_value(args, "--output_path")))
    started = time.time()
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes)]
    if processes > 1 and not _has_cuda():
        launcher.append("--cpu")
    command = [*(launcher if processes > 1 else [sys.executable]), "-m", "lmms_eval", *args]
    completed = subprocess.run(command, env=environment, check=False)
    written = sorted(
        path for path in output.rglob("*_results.json") if path.stat().st_mtime >= started - 1
    ) if output.exists() else []
    if completed.returncode != 0 or not written:
        raise MedbenchError(
            f"lmms-eval {'exited with status ' + str(completed.returncode) if completed.returncode else 'wrote no results'}"
            f" under {output}; its log above says why"
        )
    failures = failed_generation_summary(written)
    if failures:
        raise MedbenchError(f"{failures}; results (not to be submitted): {', '.join(map(str, written))}")
    return written


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="run lmms-eval on medbench tasks (all lmms-eval flags accepted)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        usage="medbench eval [--skip-data-check] [--processes N] LMMS_EVAL_ARGS...",
    )
    parser.add_argument("--skip-data-check", action="store_true", help="do not validate the task data first")
    parser.add_argument("--processes", type=int, default=1, metavar="N",
                        help="evaluate data-parallel in N processes (accelerate launch; one per GPU)")
    parser.set_defaults(func=_eval, passthrough=True)


def _eval(args: argparse.Namespace) -> int:
    if not args.extra:
        raise MedbenchError(
            "give lmms-eval arguments, e.g. medbench eval --model medbench_hf --model_args pretrained=DIR --tasks medbench_vqa"
        )
    if args.processes < 1:
        raise MedbenchError(f"--processes {args.processes}: give 1 or more")
    for path in run_lmms_eval(args.extra, check_data=not args.skip_data_check, processes=args.processes):
        print(f"results: {path}")
    return 0
