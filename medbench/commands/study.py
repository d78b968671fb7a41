"""``medbench study run|plan|status|report STUDY.yaml``."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from medbench.errors import MedbenchError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study",
        help="run a grid of backbones x recipes x seeds end to end: train, evaluate, board (resumable)",
        description="Run, plan, inspect or report a study file (see medbench/studies/ and the README).",
    )
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    actions = parser.add_subparsers(dest="study_command", metavar="{run,plan,status,report}")

    def action(name: str, help_text: str, func) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help_text)
        sub.add_argument("study", type=Path, metavar="STUDY.yaml")
        sub.add_argument("--out", type=Path, default=Path("studies-out"),
                         help="folder of every study's outputs (default: studies-out; the study uses OUT/NAME)")
        sub.set_defaults(func=func)
        return sub

    run = action("run", "run every incomplete cell in order (complete cells are skipped)", _run)
    run.add_argument("--cell", action="append", default=[], metavar="ID_OR_INDEX",
                     help="run only this cell (repeatable); its dependencies must be complete. An index is the "
                     "[N] of `study plan`, so a scheduler array can run `--cell $SLURM_ARRAY_TASK_ID`")
    run.add_argument("--jobs", type=int, default=1, metavar="N",
                     help="local executor: run up to N independent cells at once (default 1; each cell is its own "
                     "process; on a GPU machine each gets its resources' GPUs through CUDA_VISIBLE_DEVICES)")
    run.add_argument("--executor", choices=("local", "slurm"), default="local",
                     help="local: run the cells here (default); slurm: submit one job per cell with afterok "
                     "dependencies (needs medbench[cluster]) and return")
    run.add_argument("--retries", type=int, default=0, metavar="N", help="attempt a failed cell N more times")
    run.add_argument("--force", action="append", default=[], metavar="CELL",
                     help="re-run this cell from an empty folder even when it is complete (repeatable)")
    run.add_argument("--wait", action="store_true",
                     help="slurm: wait until the submitted jobs have left the queue, then report as `study status`")
    run.add_argument("--partition", help="slurm partition (overrides the study file's cluster.partition)")
    run.add_argument("--account", help="slurm account (overrides cluster.account)")
    run.add_argument("--qos", help="slurm quality of service (overrides cluster.qos)")
    run.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                     help="a further sbatch option such as --sbatch=--constraint=a100 (repeatable; added to "
                     "cluster.sbatch)")
    plan = action("plan", "print each cell's command, in dependency order, for a scheduler", _plan)
    plan.add_argument("--json", action="store_true",
                      help="one JSON object per cell (command, hash, dependencies, resources) instead of shell lines")
    action("status", "show which cells are complete, stale (settings changed), failed or pending", _status)
    action("report", "summarise the scores of the completed cells", _report)
    # Internal: the board cell's command (also usable by hand to rebuild the board).
    action("board", "build the study's leaderboard from its completed evaluation cells", _board)


def _load(args: argparse.Namespace):
    from medbench.study.spec import load_study

    return load_study(args.study, args.out)


def _run(args: argparse.Namespace) -> int:
    from medbench.study.runner import require_extras, run_study, status_lines

    study = _load(args)
    cells = []
    for item in args.cell:
        cells.append(study.cells[int(item)].id if item.isdigit() and int(item) < len(study.cells) else item)
    if args.jobs < 1:
        raise MedbenchError(f"--jobs {args.jobs}: give 1 or more")
    if args.retries < 0:
        raise MedbenchError(f"--retries {args.retries}: give 0 or more")

    def log(line: str) -> None:
        print(line, flush=True)

    require_extras(study, [study.cell(cell_id) for cell_id in cells] or study.cells)
    if args.executor == "local":
        run_study(study, cells or None, log=log, jobs=args.jobs, force=args.force, retries=args.retries)
        print(f"medbench study: {study.name} done; board in {study.root / 'board'}")
        return 0
    from dataclasses import replace

    from medbench.study.slurm import submit_study, wait_for
    from medbench.study.spec import Cluster

    given = {"partition": args.partition, "account": args.account, "qos": args.qos}
    cluster = replace(study.cluster, **{key: value for key, value in given.items() if value},
                      sbatch=study.cluster.sbatch + tuple(Cluster.parse({"sbatch": args.sbatch}, "--sbatch").sbatch))
    jobs = submit_study(study, cells or None, cluster=cluster, force=args.force, retries=args.retries, log=log)
    if not args.wait:
        print(f"medbench study: {len(jobs)} job(s) in SLURM for {study.name}; follow with "
              f"`medbench study status {args.study} --out {args.out}`")
        return 0
    wait_for(list(jobs.values()))
    lines = status_lines(study)
    print("\n".join(lines))
    return 0 if all(cell_state == "done" for cell_state in _states(lines)) else 1


def _states(status: list[str]) -> list[str]:
    """The state word of each cell line of ``status_lines`` (its log lines are indented)."""
    return [line.split()[0] for line in status[:-1] if not line.startswith(" ")]


def _plan(args: argparse.Namespace) -> int:
    from medbench.study.runner import command_of, plan_lines

    study = _load(args)
    if args.json:
        for index, cell in enumerate(study.cells):
            print(json.dumps({"index": index, "id": cell.id, "kind": cell.kind, "hash": cell.hash, "deps": cell.deps,
                              "env": cell.env, "command": command_of(cell, ["medbench"]),
                              "resources": asdict(cell.resources)}))
    else:
        print("\n".join(plan_lines(study)))
    return 0


def _status(args: argparse.Namespace) -> int:
    from medbench.study.runner import status_lines

    print("\n".join(status_lines(_load(args))))
    return 0


def _report(args: argparse.Namespace) -> int:
    from medbench.study.runner import report_lines

    print("\n".join(report_lines(_load(args))))
    return 0


def _board(args: argparse.Namespace) -> int:
    from medbench.study.runner import build_board

    print(f"board: {build_board(_load(args))}")
    return 0
