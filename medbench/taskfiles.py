"""Locate and read the medbench lmms-eval task files (``tasks/``, installed as ``medbench.tasks``).

The YAMLs are read without importing the ``!function`` targets, so listing tasks stays cheap.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from medbench.errors import MedbenchError


def tasks_dir() -> Path:
    """The folder holding the medbench task YAMLs (the package ``medbench.tasks``, the repository's ``tasks/``)."""
    spec = importlib.util.find_spec("medbench.tasks")
    if spec is None or not spec.submodule_search_locations:
        raise MedbenchError("the medbench task folder is not installed; reinstall with `pip install medbench[eval]`")
    return Path(next(iter(spec.submodule_search_locations)))


class _TaskYamlLoader(yaml.SafeLoader):
    """A YAML loader that keeps ``!function a.b.c`` as the string ``"!function a.b.c"``."""


_TaskYamlLoader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def read_task_yaml(path: Path) -> dict[str, Any]:
    """A task YAML with its ``include`` merged in (shallowly, as lmms-eval does)."""
    config = yaml.load(path.read_text(encoding="utf-8"), Loader=_TaskYamlLoader) or {}
    include = config.pop("include", None)
    if include:
        base = read_task_yaml((path.parent / include).resolve())
        config = {**base, **config}
    return config


@lru_cache(maxsize=1)
def task_configs() -> dict[str, dict[str, Any]]:
    """Every medbench task's merged YAML config, keyed by task name (groups excluded)."""
    configs = {}
    for path in sorted(tasks_dir().glob("medbench_*/*.yaml")):
        config = read_task_yaml(path)
        configs[config["task"]] = config
    return configs


def group_members() -> dict[str, list[str]]:
    """The medbench groups and their tasks."""
    groups = {}
    for path in sorted(tasks_dir().glob("*.yaml")):
        config = read_task_yaml(path)
        if "group" in config:
            groups[config["group"]] = list(config["task"])
    return groups


def task_versions() -> dict[str, int]:
    """``metadata.version`` of every medbench task."""
    return {name: int(config["metadata"]["version"]) for name, config in task_configs().items()}


def expand_task_names(names: list[str]) -> list[str]:
    """Expand medbench group names into their tasks; names that are not medbench's are dropped."""
    groups, known = group_members(), task_configs()
    expanded: list[str] = []
    for name in names:
        for task in groups.get(name, [name]):
            if task in known and task not in expanded:
                expanded.append(task)
    return expanded
