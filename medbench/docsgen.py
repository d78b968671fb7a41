"""Generated documentation blocks. ``python -m medbench.docsgen`` rewrites them; a test fails when stale.

A generated block sits between ``<!-- BEGIN generated:NAME -->`` and ``<!-- END generated:NAME -->``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from medbench.data.sources import SOURCES
from medbench.taskfiles import group_members, task_configs, tasks_dir


def task_index() -> str:
    """The task table of ``tasks/README.md``."""
    lines = [
        "| task | version | kind | public source | local copy variable | metrics |",
        "|---|---|---|---|---|---|",
    ]
    for name, config in task_configs().items():
        source = SOURCES[name]
        revision = f"@`{source.hub_revision[:7]}`" if source.hub_revision else " (unpinned)"
        public = f"`{source.hub_id}`{revision} ({source.hub_split})" if source.hub_id else "licensed, local only"
        metrics = ", ".join(f"`{item['metric']}`" for item in config["metric_list"])
        lines.append(
            f"| [`{name}`]({name}/README.md) | {config['metadata']['version']} | {source.kind} | {public} "
            f"| `{source.env_var}` | {metrics} |"
        )
    lines.append("")
    lines += [f"Group `{group}`: {', '.join(f'`{task}`' for task in tasks)}." for group, tasks in group_members().items()]
    return "\n".join(lines)


GENERATORS: dict[str, tuple[Callable[[], Path], Callable[[], str]]] = {
    "task-index": (lambda: tasks_dir() / "README.md", task_index),
}


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- BEGIN generated:{name} -->\n)(.*?)(<!-- END generated:{name} -->)", re.S)


def stale_blocks() -> list[str]:
    """Names of generated blocks whose file content differs from a fresh generation."""
    stale = []
    for name, (path_of, generate) in GENERATORS.items():
        match = _pattern(name).search(path_of().read_text(encoding="utf-8"))
        if match is None or match.group(2) != generate() + "\n":
            stale.append(name)
    return stale


def write_blocks() -> None:
    """Regenerate every block in place."""
    for name, (path_of, generate) in GENERATORS.items():
        path = path_of()
        text = path.read_text(encoding="utf-8")
        if not _pattern(name).search(text):
            raise ValueError(f"{path} has no generated:{name} block markers")
        path.write_text(_pattern(name).sub(lambda m: m.group(1) + generate() + "\n" + m.group(3), text), encoding="utf-8")


if __name__ == "__main__":
    write_blocks()
