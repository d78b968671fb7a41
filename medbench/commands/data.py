"""``medbench data check``: load and validate task data the way the tasks will, before a long run."""

from __future__ import annotations

import argparse
from collections import Counter

from medbench.data.loading import first_table_image_problem, load_task_docs, resolve_source
from medbench.data.sources import SOURCES
from medbench.errors import DataError, MedbenchError
from medbench.taskfiles import expand_task_names, task_configs


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="inspect and validate task data")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="load every document and image of the given tasks and report problems",
        description="Validate task data. Sources are chosen by MEDBENCH_<TASK>, MEDBENCH_DATA=demo or the hub.",
    )
    check.add_argument("tasks", nargs="*", default=["medbench"], help="tasks or groups (default: medbench)")
    check.set_defaults(func=_check)
    data.set_defaults(func=lambda args: data.print_help() or 2)


def check_tasks(names: list[str], environ: dict[str, str] | None = None) -> list[str]:
    """Load each task's documents and decode every image (raising DataError on the first problem); return one
    summary line each.

    Args:
        names: Task or group names; names that are not medbench's are skipped.
        environ: The environment that selects the data sources (default: this process's).
    """
    lines = []
    for task in expand_task_names(names):
        documents = load_task_docs(task, environ)
        resolved = resolve_source(task, environ)
        # local files were decoded while loading; hub, saved and snapshot tables are checked here
        if resolved.origin in ("hub", "saved", "snapshot") and (
            problem := first_table_image_problem(documents, resolved.describe())
        ):
            raise DataError(problem)
        line = f"{task}: {len(documents)} documents from {resolved.describe()}"
        expected = SOURCES[task].expected_rows
        full_split = resolved.origin == "hub" and (not expected or len(documents) == expected)
        if SOURCES[task].kind == "vqa":
            kinds = Counter(documents["answer_type"])
            line += f" ({kinds['CLOSED']} closed, {kinds['OPEN']} open)"
            declared = (task_configs()[task].get("metadata") or {}).get("answer_types")
            if declared and full_split and (kinds["CLOSED"], kinds["OPEN"]) != (declared["closed"], declared["open"]):
                line += f" [warning: the dataset's labels give {declared['closed']} closed, {declared['open']} open]"
        if expected and resolved.origin == "hub" and len(documents) != expected:
            line += f" [warning: the published split has {expected}]"
        lines.append(line)
    return lines


def _check(args: argparse.Namespace) -> int:
    unknown = [name for name in args.tasks if not expand_task_names([name])]
    if unknown:
        raise MedbenchError(f"not medbench tasks: {', '.join(unknown)} (see `medbench tasks`)")
    for line in check_tasks(args.tasks):
        print(line)
    return 0
