"""``medbench tasks-dir`` and ``medbench tasks``: where the task YAMLs are and what they contain."""

from __future__ import annotations

import argparse

from medbench.data.sources import SOURCES
from medbench.taskfiles import group_members, task_configs, tasks_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    where = subparsers.add_parser(
        "tasks-dir",
        help="print the folder to pass to lmms-eval --include_path",
        description='Print the medbench task folder, e.g. lmms-eval --include_path "$(medbench tasks-dir)" ...',
    )
    where.set_defaults(func=lambda args: print(tasks_dir()))
    listing = subparsers.add_parser("tasks", help="list the medbench tasks, their versions and data sources")
    listing.set_defaults(func=_list_tasks)


def _list_tasks(args: argparse.Namespace) -> int:
    rows = [("task", "version", "kind", "public source", "local copy")]
    for name, config in task_configs().items():
        source = SOURCES[name]
        public = f"{source.hub_id} ({source.hub_split})" if source.hub_id else "licensed: local only"
        rows.append((name, str(config["metadata"]["version"]), source.kind, public, source.env_var))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print()
    for group, members in group_members().items():
        print(f"group {group}: {', '.join(members)}")
    return 0
