"""`medbench tasks link|unlink` and the bare `lmms-eval --tasks medbench_*` they make possible."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medbench.cli import main
from medbench.lmms import tasklink
from medbench.taskfiles import tasks_dir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_lmms_tasks(tmp_path, monkeypatch):
    """An lmms-eval task folder in tmp_path, so linking never touches the real installation."""
    root = tmp_path / "lmms_eval" / "tasks"
    (root / "medqa").mkdir(parents=True)
    (root / "medqa" / "medqa.yaml").write_text("task: medqa\n")
    monkeypatch.setattr(tasklink, "lmms_eval_tasks_folder", lambda: root)
    return root


def test_link_copies_every_task_file_and_is_idempotent(fake_lmms_tasks, capsys):
    assert tasklink.link_status().state == "absent"
    assert main(["tasks", "link"]) == 0
    folder = fake_lmms_tasks / "medbench"
    for yaml in tasks_dir().glob("medbench_*/*.yaml"):
        copy = folder / yaml.relative_to(tasks_dir())
        assert copy.read_bytes() == yaml.read_bytes() and not copy.is_symlink()
    assert (folder / "_templates" / "vqa_yaml").is_file() and not (folder / "__init__.py").exists()
    assert tasklink.link_status().state == "current"
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    assert main(["tasks", "link"]) == 0
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    assert "linked in" in capsys.readouterr().out


def test_a_changed_task_file_makes_the_link_stale_and_link_refreshes_it(fake_lmms_tasks):
    tasklink.link_tasks()
    folder = fake_lmms_tasks / "medbench"
    marker = json.loads((folder / tasklink.MARKER).read_text())
    marker["files"]["medbench_vqa_rad/medbench_vqa_rad.yaml"] = "0" * 64  # as if copied from an older version
    marker["files"]["medbench_old/medbench_old.yaml"] = "1" * 64
    (folder / "medbench_old").mkdir()
    (folder / "medbench_old" / "medbench_old.yaml").write_text("task: medbench_old\n")
    (folder / tasklink.MARKER).write_text(json.dumps(marker))
    status = tasklink.link_status()
    assert status.state == "stale" and "medbench tasks link" in status.detail
    assert tasklink.link_tasks().state == "current"
    assert not (folder / "medbench_old").exists()  # a task removed upstream does not linger


def test_unlink_removes_only_what_link_created(fake_lmms_tasks, capsys):
    tasklink.link_tasks()
    folder = fake_lmms_tasks / "medbench"
    (folder / "my_notes.txt").write_text("mine")
    assert main(["tasks", "unlink"]) == 0
    assert "kept files it did not create: my_notes.txt" in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == ["my_notes.txt"]
    assert (fake_lmms_tasks / "medqa" / "medqa.yaml").is_file()
    (folder / "my_notes.txt").unlink()
    folder.rmdir()
    assert main(["tasks", "unlink"]) == 0  # nothing linked: nothing to do, no error
    assert "nothing to unlink" in capsys.readouterr().out


def test_a_folder_medbench_did_not_create_is_never_touched(fake_lmms_tasks, capsys):
    foreign = fake_lmms_tasks / "medbench"
    foreign.mkdir()
    (foreign / "someone_elses.yaml").write_text("task: someone_elses\n")
    assert tasklink.link_status().state == "foreign"
    assert main(["tasks", "link"]) == 2
    assert main(["tasks", "unlink"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("medbench: error:") and "refusing" in line for line in err)
    assert [p.name for p in foreign.iterdir()] == ["someone_elses.yaml"]


def test_an_unwritable_lmms_eval_gives_one_line_naming_the_alternative(fake_lmms_tasks, capsys):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    fake_lmms_tasks.chmod(0o555)
    try:
        assert main(["tasks", "link"]) == 2
    finally:
        fake_lmms_tasks.chmod(0o755)
    assert "--include_path" in capsys.readouterr().err


def _lmms_eval(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "MEDBENCH_DATA": "demo", "MEDBENCH_METEOR": "off", **env}
    lmms_eval = Path(sys.executable).parent / "lmms-eval"
    return subprocess.run([str(lmms_eval), *args], cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.fixture(scope="module")
def linked_lmms_eval():
    """The real lmms-eval installation with the medbench tasks linked (undone afterwards if this linked them)."""
    before = tasklink.link_status().state
    if before == "foreign":
        pytest.skip("lmms-eval holds a medbench task folder medbench did not create")
    tasklink.link_tasks()
    yield
    if before == "absent":
        tasklink.unlink_tasks()


def test_bare_lmms_eval_runs_from_any_folder_globs_lists_and_tolerates_the_legacy_plugin_variable(linked_lmms_eval,
                                                                                                   tmp_path):
    # One run covers the bare CLI path (each lmms-eval process costs ~20 s of imports): a temporary folder as the
    # working directory, a glob, --limit, and the deprecated plugin variable.
    listing = _lmms_eval(["--tasks", "list"], cwd=tmp_path)
    names = {line.strip(" -") for line in (listing.stdout + listing.stderr).splitlines()}
    assert {"medbench", "medbench_vqa", "medbench_vqa_rad", "medbench_slake", "medbench_pathvqa",
            "medbench_mimic_cxr", "medbench_amboss"} <= names
    # The glob, with the deprecated LMMS_EVAL_PLUGINS=medbench set (it used to crash every run).
    result = _lmms_eval(["--tasks", "medbench_vqa_*", "--model", "medbench_baseline", "--limit", "1",
                         "--output_path", "out"], cwd=tmp_path, LMMS_EVAL_PLUGINS="medbench")
    written = list((tmp_path / "out").rglob("*_results.json"))
    assert written, result.stdout[-2000:] + result.stderr[-2000:]
    results = json.loads(written[0].read_text())["results"]
    assert set(results) == {"medbench_vqa_rad", "medbench_vqa_rad_blind"}  # the glob takes the image-blind twin too
    assert results["medbench_vqa_rad"]["n_closed,none"] + results["medbench_vqa_rad"].get("n_open,none", 0) == 1


def test_the_package_folder_holds_no_yaml_but_the_group_pointer():
    # lmms-eval loads every medbench/*.yaml as a task for `--tasks medbench` run from the repository root.
    assert sorted(p.name for p in (REPO / "medbench").glob("*.yaml")) == ["medbench.yaml"]


def test_the_medbench_group_runs_from_the_repository_root(linked_lmms_eval, tmp_path):
    # lmms-eval reads `--tasks medbench` as the folder medbench/ here; medbench/medbench.yaml names the group.
    result = _lmms_eval(["--tasks", "medbench", "--model", "medbench_baseline", "--limit", "1",
                         "--output_path", str(tmp_path / "out")], cwd=REPO)
    written = list((tmp_path / "out").rglob("*_results.json"))
    assert written, result.stdout[-2000:] + result.stderr[-2000:]
    assert {"medbench_vqa_rad", "medbench_slake", "medbench_pathvqa", "medbench_mimic_cxr",
            "medbench_amboss"} <= set(json.loads(written[0].read_text())["results"])
