"""``medbench tasks-dir``, ``medbench tasks`` and ``medbench tasks link|unlink``.

Where the task YAMLs are, what they contain, and their registration inside lmms-eval (so a bare
``lmms-eval --tasks medbench_*`` finds them; see :mod:`medbench.lmms.tasklink`).
"""

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
    listing = subparsers.add_parser(
        "tasks",
        help="list the medbench tasks; `tasks link` registers them in lmms-eval",
        description="List the medbench tasks, their versions and data sources (no action), or register them "
        "inside the lmms-eval installation so that `lmms-eval --tasks medbench_*` works without --include_path.",
    )
    listing.set_defaults(func=_list_tasks)
    actions = listing.add_subparsers(dest="tasks_command", metavar="{link,unlink}")
    actions.add_parser(
        "link", help="copy the task files into lmms-eval's task folder (idempotent; refreshes a stale copy)"
    ).set_defaults(func=_link)
    actions.add_parser(
        "unlink", help="remove exactly what `medbench tasks link` created (run it before uninstalling medbench)"
    ).set_defaults(func=_unlink)


def _link(args: argparse.Namespace) -> int:
    from medbench.lmms.tasklink import link_tasks

    status = link_tasks()
    print(f"lmms-eval task registration: {status.detail}")
    return 0


def _unlink(args: argparse.Namespace) -> int:
    from medbench.lmms.tasklink import unlink_tasks

    print(unlink_tasks())
    return 0


def _list_tasks(args: argparse.Namespace) -> int:
    rows = [("task", "version", "kind", "public source", "local copy")]
    for name, config in task_configs().items():
        source = SOURCES[name]
        public = f"{source.hub_id} ({source.hub_split})" if source.hub_id else "licensed: local only"
        rows.append((name, str(config["metadata"]["version"]), source.kind, public, source.env_var))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print()
    for group, members in group_members().items():
        print(f"group {group}: {', '.join(members)}")
    return 0
