"""Packaging: every package folder is in the wheel's list, inside the medbench namespace only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_under_its_namespaced_name():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"medbench": "medbench", **{name: folder for name, folder in setuptools["package-dir"].items()}}
    found = set()
    for name, folder in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *relative)))
    # a folder mapped elsewhere (medbench.tasks -> tasks/) is not also a subfolder of medbench/
    assert sorted(setuptools["packages"]) == sorted(found)
    assert all(package == "medbench" or package.startswith("medbench.") for package in setuptools["packages"])


def test_no_generic_top_level_names_are_importable_outside_the_checkout(tmp_path):
    code = (
        "import importlib.util, sys\n"
        "import medbench.tasks, medbench.train, medbench.leaderboard\n"
        "repo = sys.argv[1]\n"
        "for name in ('tasks', 'trainers', 'leaderboard'):\n"
        "    spec = importlib.util.find_spec(name)\n"
        "    assert spec is None or not str(spec.origin or spec.submodule_search_locations).startswith(repo), name\n"
    )
    subprocess.run([sys.executable, "-c", code, str(ROOT)], cwd=tmp_path, check=True)
