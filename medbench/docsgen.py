"""Generated blocks in docs, task YAMLs and code: the project's one doc generator and its one marker syntax.

A generated block sits between ``<!-- BEGIN generated:NAME -->`` and ``<!-- END generated:NAME -->`` in
Markdown, and between ``# BEGIN generated:NAME ...`` and ``# END generated:NAME`` lines in YAML and Python.
``python -m medbench.docsgen`` rewrites the core's blocks (:data:`GENERATORS`); a package built on medbench
passes its own blocks to :func:`write_blocks` / :func:`stale_blocks` (``python -m medbench.train.docs`` does,
for the recipe tables). A test fails when any block is stale.
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


# Block name -> (the file it lives in, the function that generates it).
Generators = dict[str, tuple[Callable[[], Path], Callable[[], str]]]

# YAML blocks first: the task index reads the metric lists they hold.
GENERATORS: Generators = {
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
    begin = rf"<!-- BEGIN generated:{re.escape(name)}(?: [^\n]*?)? -->\n|# BEGIN generated:{re.escape(name)}(?: [^\n]*)?\n"
    end = rf"<!-- END generated:{re.escape(name)} -->|# END generated:{re.escape(name)}\n"
    return re.compile(rf"({begin})(.*?)({end})", re.DOTALL)


def render_block(name: str, text: str, generate: Callable[[], str]) -> str:
    """``text`` with block ``name`` regenerated.

    Raises:
        ValueError: ``text`` has no markers for ``name``.
    """
    if not _pattern(name).search(text):
        raise ValueError(f"no generated:{name} block markers")
    block = generate()
    return _pattern(name).sub(lambda m: m.group(1) + block + "\n" + m.group(3), text)


def stale_blocks(generators: Generators | None = None) -> list[str]:
    """Names of generated blocks whose file content differs from a fresh generation (default: the core's)."""
    stale = []
    for name, (path_of, generate) in (GENERATORS if generators is None else generators).items():
        match = _pattern(name).search(path_of().read_text(encoding="utf-8"))
        if match is None or match.group(2) != generate() + "\n":
            stale.append(name)
    return stale


def write_blocks(generators: Generators | None = None) -> None:
    """Regenerate every block in place (default: the core's)."""
    for name, (path_of, generate) in (GENERATORS if generators is None else generators).items():
        path = path_of()
        try:
            path.write_text(render_block(name, path.read_text(encoding="utf-8"), generate), encoding="utf-8")
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        task_configs.cache_clear()  # later blocks read the task YAMLs just written


if __name__ == "__main__":
    write_blocks()
