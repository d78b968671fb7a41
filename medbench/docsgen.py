"""Generated blocks in docs and task YAMLs. ``python -m medbench.docsgen`` rewrites them; a test fails when stale.

A generated block sits between ``<!-- BEGIN generated:NAME -->`` and ``<!-- END generated:NAME -->`` in
Markdown, and between ``# BEGIN generated:NAME ...`` and ``# END generated:NAME`` lines in YAML.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from medbench.data.sources import SOURCES
from medbench.metrics.registry import METRICS, TaskKind, metric_list
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


def yaml_metric_list(kind: TaskKind) -> Callable[[], str]:
    """The ``metric_list`` block of the task YAMLs of one kind, from :mod:`medbench.metrics.registry`."""

    def generate() -> str:
        lines = ["metric_list:"]
        for entry in metric_list(kind):
            lines += [
                f"  - metric: {entry['metric']}",
                f"    aggregation: {entry['aggregation']}",
                f"    higher_is_better: {str(entry['higher_is_better']).lower()}",
            ]
        return "\n".join(lines)

    return generate


def aggregation_functions() -> str:
    """The aggregation functions the task YAMLs name, one per whole-task metric (in :mod:`medbench.lmms.report`)."""
    import inspect

    blocks = []
    for metric in METRICS.values():
        if metric.corpus_function is None:
            continue
        takes_args = "args" in inspect.signature(metric.corpus_function).parameters
        signature = "items: list[Deferred], args: Any = None" if takes_args else "items: list[Deferred]"
        call = f'aggregate("{metric.name}", items, args)' if takes_args else f'aggregate("{metric.name}", items)'
        direction = "higher" if metric.higher_is_better else "lower"
        blocks.append(
            f"def {metric.name}({signature}) -> float | None:\n"
            f'    """{metric.description[:1].upper()}{metric.description[1:]}, {direction} is better."""\n'
            f"    return {call}\n"
        )
    return "\n\n".join(blocks).rstrip("\n")


# YAML blocks first: the task index reads the metric lists they hold.
GENERATORS: dict[str, tuple[Callable[[], Path], Callable[[], str]]] = {
    "metric_list:vqa": (lambda: tasks_dir() / "_templates" / "vqa_yaml", yaml_metric_list("vqa")),
    "metric_list:report": (lambda: tasks_dir() / "_templates" / "report_yaml", yaml_metric_list("report")),
    "metric_list:chest_xray": (
        lambda: tasks_dir() / "medbench_mimic_cxr" / "medbench_mimic_cxr.yaml",
        yaml_metric_list("chest_xray"),
    ),
    "task-index": (lambda: tasks_dir() / "README.md", task_index),
    "aggregations": (lambda: Path(__file__).parent / "lmms" / "report.py", aggregation_functions),
}


def _pattern(name: str) -> re.Pattern:
    begin = rf"<!-- BEGIN generated:{re.escape(name)} -->\n|# BEGIN generated:{re.escape(name)}(?: [^\n]*)?\n"
    end = rf"<!-- END generated:{re.escape(name)} -->|# END generated:{re.escape(name)}\n"
    return re.compile(rf"({begin})(.*?)({end})", re.DOTALL)


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
        block = generate()
        path.write_text(_pattern(name).sub(lambda m, block=block: m.group(1) + block + "\n" + m.group(3), text), encoding="utf-8")
        task_configs.cache_clear()  # later blocks read the task YAMLs just written


if __name__ == "__main__":
    write_blocks()
