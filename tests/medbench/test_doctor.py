"""`medbench doctor` on this (healthy) environment and on one broken the way filelock 4 broke lmms-eval 0.7.3."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from medbench import doctor
from medbench.cli import main


def _statuses(capsys) -> dict[str, str]:
    lines = capsys.readouterr().out.splitlines()
    return {line.split()[1]: line.split()[0] for line in lines if line[:5].strip() in ("ok", "info", "warn", "fail")}


def test_healthy_environment_passes_without_the_smoke_run(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("MEDBENCH_JUDGE_MODEL", raising=False)
    assert main(["doctor", "--no-smoke"]) == 0
    statuses = _statuses(capsys)
    assert statuses["core"] == "ok" and statuses["lmms-eval"] == "ok"
    assert statuses["hub"] == "ok" and statuses["judge"] == "info"  # "hub cache", "judge cache" start with these
    assert "fail" not in statuses.values()


def test_lock_drift_is_named_package_by_package():
    pins = doctor.read_lock()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1" and pins["filelock"].startswith("3.")
    installed = {**pins, "filelock": "4.3.1", "some-other-package": "1.0"}
    assert doctor.lock_drift(installed) == [("filelock", "4.3.1", pins["filelock"])]


def test_the_lock_satisfies_every_range_medbench_declares():
    # A range bumped in pyproject.toml without regenerating the lock (bash .ci/lock) fails here.
    from packaging.requirements import Requirement

    pins = doctor.read_lock()
    for text in metadata.requires("medbench") or []:
        requirement = Requirement(text.split(";", 1)[0])
        name = doctor._normalise(requirement.name)
        if name == "medbench":
            continue
        assert name in pins, f"{requirement.name} is not in medbench/lock.txt: run bash .ci/lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"lock {name}=={pins[name]} vs {text}"


def test_required_checks_turn_warnings_into_failures(capsys, monkeypatch):
    monkeypatch.setenv("PATH", "")  # no java, no chromium
    monkeypatch.delenv("MEDBENCH_METEOR", raising=False)
    assert main(["doctor", "--no-smoke", "--require", "java,chromium"]) == 1
    statuses = _statuses(capsys)
    assert statuses["java"] == "fail" and statuses["chromium"] == "fail"
    assert main(["doctor", "--require", "javaa"]) == 2
    assert "choose from java, chromium, cuda, judge, tasks" in capsys.readouterr().err


def test_a_judge_model_without_key_or_url_fails(capsys, monkeypatch):
    monkeypatch.setenv("MEDBENCH_JUDGE_MODEL", "gpt-4o-mini")
    for name in ("MEDBENCH_JUDGE_API_KEY", "OPENAI_API_KEY", "MEDBENCH_JUDGE_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    assert main(["doctor", "--no-smoke"]) == 1
    assert _statuses(capsys)["judge"] == "fail"


@pytest.fixture
def filelock4_site(tmp_path) -> Path:
    """A folder that shadows filelock with a "4.3.1" lacking ``filelock._api``, as filelock 4 does."""
    import filelock

    site = tmp_path / "site"
    package = Path(filelock.__file__).parent
    shutil.copytree(package, site / "filelock", ignore=shutil.ignore_patterns("__pycache__"))
    # filelock 4 moved the contents of `_api` elsewhere: keep the public API importable from a renamed copy.
    (site / "filelock" / "_api.py").rename(site / "filelock" / "_moved_api.py")
    for module in (site / "filelock").rglob("*.py"):
        text = module.read_text()
        module.write_text(text.replace("._api import", "._moved_api import").replace("filelock._api", "filelock._moved_api"))
    info = site / "filelock-4.3.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: filelock\nVersion: 4.3.1\n")
    return site


def test_doctor_names_filelock4_as_the_cause_of_a_broken_environment(filelock4_site):
    import filelock

    if "._api import" not in (Path(filelock.__file__).parent / "__init__.py").read_text():
        pytest.skip("this filelock's layout differs from the one the shadow copy imitates")
    env = {**os.environ, "PYTHONPATH": str(filelock4_site)}
    process = subprocess.run([sys.executable, "-m", "medbench", "doctor"], env=env, capture_output=True, text=True,
                             timeout=900, check=False)
    assert process.returncode == 1, process.stdout + process.stderr
    lines = {line.split()[1]: line for line in process.stdout.splitlines() if line[:5].strip() in ("ok", "warn", "fail", "info")}
    assert lines["[eval]"].startswith("fail") and "filelock 4.3.1" in lines["[eval]"]
    assert lines["lock"].startswith("warn") and "filelock 4.3.1 (lock 3." in lines["lock"]
    assert lines["evaluation"].startswith("fail") and "No module named 'filelock._api'" in lines["evaluation"]
