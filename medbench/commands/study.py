"""``medbench study run|plan|status|report STUDY.yaml``."""

from __future__ import annotations

import argparse
import json
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
                     help="run up to N independent cells at once (default 1; each cell is its own process)")
    plan = action("plan", "print each cell's command, in dependency order, for a scheduler", _plan)
    plan.add_argument("--json", action="store_true", help="one JSON object per cell instead of shell lines")
    action("status", "show which cells are complete, stale (settings changed), failed or pending", _status)
    action("report", "summarise the scores of the completed cells", _report)
    # Internal: the board cell's command (also usable by hand to rebuild the board).
    action("board", "build the study's leaderboard from its completed evaluation cells", _board)


def _load(args: argparse.Namespace):
    from medbench.study.spec import load_study

    return load_study(args.study, args.out)


def _run(args: argparse.Namespace) -> int:
    from medbench.study.runner import run_study

    study = _load(args)
    cells = []
    for item in args.cell:
        cells.append(study.cells[int(item)].id if item.isdigit() and int(item) < len(study.cells) else item)
    if args.jobs < 1:
        raise MedbenchError(f"--jobs {args.jobs}: give 1 or more")
    run_study(study, cells or None, log=lambda line: print(line, flush=True), jobs=args.jobs)
    print(f"medbench study: {study.name} done; board in {study.root / 'board'}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from medbench.study.runner import command_of, plan_lines

    study = _load(args)
    if args.json:
        for index, cell in enumerate(study.cells):
            print(json.dumps({"index": index, "id": cell.id, "kind": cell.kind, "hash": cell.hash, "deps": cell.deps,
                              "env": cell.env, "command": command_of(cell, ["medbench"])}))
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
