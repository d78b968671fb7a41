"""``medbench doctor``: is this environment able to run what medbench promises?

Each check returns one :class:`Check` line. ``fail`` means something the installation (or ``--require``)
asks for cannot work, and makes the command exit non-zero; ``warn`` means an optional piece is missing or the
environment drifted from the tested lock; ``info`` only reports.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

from medbench import __version__

LOCK_FILE = "lock.txt"
# `--require` names: each turns that check's warning into a failure.
REQUIRABLE = ("java", "chromium", "cuda", "judge", "tasks")


@dataclass(frozen=True)
class Check:
    """One line of the report: ``status`` is ``ok``, ``info``, ``warn`` or ``fail``."""

    name: str
    status: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<5} {self.name:<13} {self.detail}"


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock() -> dict[str, str]:
    """``{normalised package name: pinned version}`` from the shipped ``medbench/lock.txt``."""
    pins = {}
    for line in resources.files("medbench").joinpath(LOCK_FILE).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, _, version = line.partition("==")
            pins[_normalise(name.split("[", 1)[0])] = version.split(";", 1)[0].strip()
    return pins


def _installed() -> dict[str, str]:
    versions = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            versions.setdefault(_normalise(name), dist.version)
    return versions


def lock_drift(installed: dict[str, str] | None = None) -> list[tuple[str, str, str]]:
    """``(package, installed version, locked version)`` for every locked package installed at another version."""
    installed = _installed() if installed is None else installed
    return sorted(
        (name, installed[name], pinned)
        for name, pinned in read_lock().items()
        if name in installed and installed[name] != pinned
    )


def _describe_drift(drift: list[tuple[str, str, str]], limit: int = 6) -> str:
    shown = ", ".join(f"{name} {have} (lock {pinned})" for name, have, pinned in drift[:limit])
    return shown + (f" and {len(drift) - limit} more" if len(drift) > limit else "")


def check_lock() -> Check:
    pins = read_lock()
    installed = _installed()
    drift = lock_drift(installed)
    present = sum(1 for name in pins if name in installed)
    if drift:
        return Check(
            "lock",
            "warn",
            f"{len(drift)} of {present} locked packages differ from the tested lock: {_describe_drift(drift)} "
            '(reinstall with: pip install -c medbench/lock.txt -e ".[test]")',
        )
    return Check("lock", "ok", f"{present} installed packages match the tested lock (medbench/lock.txt)")


def _requirements() -> tuple[list[str], dict[str, list[str]]]:
    """medbench's own requirement strings: the core ones and, per extra, that extra's."""
    from packaging.requirements import Requirement

    core: list[str] = []
    extras: dict[str, list[str]] = {name: [] for name in metadata.metadata("medbench").get_all("Provides-Extra") or []}
    for text in metadata.requires("medbench") or []:
        requirement = Requirement(text)
        marker = str(requirement.marker or "")
        match = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        (extras.setdefault(match.group(1), []) if match else core).append(text)
    return core, extras


def _problems(texts: list[str], installed: dict[str, str]) -> tuple[list[str], list[str]]:
    """``(missing, wrong versions)`` among requirement strings (medbench's own extras left out)."""
    from packaging.requirements import Requirement

    missing, wrong = [], []
    for text in texts:
        requirement = Requirement(text.split(";", 1)[0])
        name = _normalise(requirement.name)
        if name == "medbench":
            continue
        if name not in installed:
            missing.append(requirement.name)
        elif requirement.specifier and not requirement.specifier.contains(installed[name], prereleases=True):
            wrong.append(f"{requirement.name} {installed[name]} (needs {requirement.specifier})")
    return missing, wrong


def missing_from_extras(names: list[str]) -> dict[str, list[str]]:
    """``{extra: [requirement not installed, ...]}`` for those of ``names`` that are not fully installed."""
    installed = _installed()
    extras = _requirements()[1]
    return {name: missing for name in names if (missing := _problems(extras.get(name, []), installed)[0])}


def check_requirements() -> list[Check]:
    """Core requirements, and each extra: installed, absent, or installed with a version it excludes."""
    installed = _installed()
    core, extras = _requirements()

    checks = []
    missing, wrong = _problems(core, installed)
    if missing or wrong:
        checks.append(Check("core", "fail", "; ".join(filter(None, [
            f"missing {', '.join(missing)}" if missing else "", f"wrong versions: {', '.join(wrong)}" if wrong else ""
        ])) + ' (pip install -c medbench/lock.txt -e .)'))
    else:
        checks.append(Check("core", "ok", f"medbench {__version__} and its core requirements"))
    present, absent = [], []
    for extra, texts in sorted(extras.items()):
        missing, wrong = _problems(texts, installed)
        if wrong:
            checks.append(Check(
                f"[{extra}]", "fail",
                f"installed with versions medbench excludes: {', '.join(wrong)} "
                f'(pip install -c medbench/lock.txt -e ".[{extra}]")',
            ))
        elif missing:
            absent.append(f"{extra} (needs {', '.join(missing[:3])}{'...' if len(missing) > 3 else ''})")
        else:
            present.append(extra)
    checks.append(Check(
        "extras", "info", f"installed: {', '.join(present) or 'none'}; not installed: {', '.join(absent) or 'none'}"
    ))
    return checks


def check_lmms_eval(smoke: bool) -> list[Check]:
    """lmms-eval imports, sees the medbench tasks, and (``smoke``) evaluates one demo question."""
    from medbench.lmms.tasklink import link_status

    try:
        version = metadata.version("lmms_eval")
    except metadata.PackageNotFoundError:
        return [Check("lmms-eval", "info", 'not installed: evaluation needs pip install -c medbench/lock.txt -e ".[eval]"')]
    checks = []
    try:
        import lmms_eval.evaluator  # noqa: F401  (the module every evaluation imports)
    except Exception as error:  # noqa: BLE001 - any import failure is the finding
        return [Check("lmms-eval", "fail", f"lmms-eval {version} does not import: {type(error).__name__}: {error}")]
    checks.append(Check("lmms-eval", "ok", f"lmms-eval {version} imports"))
    status = link_status()
    if status.state == "current":
        checks.append(Check("tasks", "ok", f"`lmms-eval --tasks medbench_*` works without flags: {status.detail}"))
    else:
        checks.append(Check("tasks", "warn", f"bare `lmms-eval --tasks medbench_*` will not find the tasks: {status.detail}"))
    if os.environ.get("LMMS_EVAL_PLUGINS"):
        checks.append(Check(
            "plugins", "info",
            f"LMMS_EVAL_PLUGINS={os.environ['LMMS_EVAL_PLUGINS']} is deprecated in lmms-eval; medbench does not need it",
        ))
    if smoke:
        checks.append(_smoke_evaluation(use_index=status.state == "current"))
    return checks


def _smoke_evaluation(use_index: bool) -> Check:
    """One demo question through the real lmms-eval command line, in a child process."""
    from medbench.taskfiles import tasks_dir

    with tempfile.TemporaryDirectory(prefix="medbench-doctor-") as scratch:
        command = [sys.executable, "-m", "lmms_eval", "--model", "medbench_baseline", "--tasks", "medbench_vqa_rad",
                   "--limit", "1", "--output_path", scratch]
        if not use_index:
            command += ["--include_path", str(tasks_dir())]
        env = {**os.environ, "MEDBENCH_DATA": "demo", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        try:
            process = subprocess.run(
                command, check=False, capture_output=True, text=True, env=env, timeout=600, cwd=scratch
            )
        except subprocess.TimeoutExpired:
            return Check("evaluation", "fail", "a one-question lmms-eval run did not finish in 10 minutes")
        if list(Path(scratch).rglob("*_results.json")):
            return Check("evaluation", "ok", "one demo question evaluated through lmms-eval (medbench_baseline)")
        output = process.stdout + process.stderr
        reason = _error_line(output) or f"exit status {process.returncode}, no results written"
        drift = lock_drift()
        hint = f"; drift from the tested lock: {_describe_drift(drift)}" if drift else ""
        return Check("evaluation", "fail", f"a one-question lmms-eval run failed: {reason}{hint}")


def _error_line(output: str) -> str:
    """The most telling line of a failed run: the last exception line, else the last error log line."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in output.splitlines()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_.]*(Error|Exception)\b.*:", line):
            return line
    for line in reversed(lines):
        if "ERROR" in line:
            return line.split(" - ", 1)[-1]
    return ""


def _version_line(command: list[str]) -> str:
    try:
        process = subprocess.run(command, check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (process.stdout + process.stderr).strip().splitlines()
    return text[0] if text else ""


def check_java() -> Check:
    if os.environ.get("MEDBENCH_METEOR", "").strip().lower() == "off":
        return Check("java", "info", "METEOR is switched off (MEDBENCH_METEOR=off)")
    java = shutil.which("java")
    version = _version_line([java, "-version"]) if java else ""
    if not version:
        return Check("java", "warn", "no working `java` on PATH: METEOR is left out (apt-get install default-jre-headless)")
    return Check("java", "ok", f"{version} (METEOR)")


def check_chromium() -> Check:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return Check("chromium", "ok", f"{_version_line([path, '--version']) or name} (leaderboard browser test)")
    return Check("chromium", "warn", "no chromium on PATH: the leaderboard browser test is skipped (apt-get install chromium)")


def _writable(folder: Path) -> str:
    """Empty string when files can be created in ``folder`` (made if missing), else the reason."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".medbench-doctor-"):
            pass
    except OSError as error:
        return error.strerror or str(error)
    return ""


def _hf_home() -> Path:
    return Path(os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface")


def check_hub_cache() -> Check:
    folders = {
        "hub": Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or _hf_home() / "hub"),
        "datasets": Path(os.environ.get("HF_DATASETS_CACHE") or _hf_home() / "datasets"),
    }
    problems = [f"{name} cache {path}: {reason}" for name, path in folders.items() if (reason := _writable(path))]
    offline = " (offline mode: HF_HUB_OFFLINE=1)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
    if problems:
        return Check("hub cache", "fail", "not writable: " + "; ".join(problems) + " (set HF_HOME to a writable folder)")
    return Check("hub cache", "ok", f"the Hugging Face hub and datasets caches are writable{offline}")


def check_judge() -> list[Check]:
    from medbench.errors import MedbenchError
    from medbench.judge.config import ENV_CACHE, JudgeConfig, default_cache_path

    checks = []
    cache_setting = os.environ.get(ENV_CACHE, "").strip()
    if cache_setting.lower() in ("off", "none", "memory"):
        checks.append(Check("judge cache", "info", f"off ({ENV_CACHE}={cache_setting}): every judge run calls the API again"))
    else:
        path = Path(cache_setting).expanduser() if cache_setting else default_cache_path()
        reason = _writable(path.parent)
        checks.append(
            Check("judge cache", "fail", f"{path.parent} is not writable ({reason}); set {ENV_CACHE} to a writable file")
            if reason
            else Check("judge cache", "ok", f"writable ({ENV_CACHE} or the default under XDG_CACHE_HOME)")
        )
    try:
        config = JudgeConfig.from_env()
    except MedbenchError as error:
        checks.append(Check("judge", "fail", str(error)))
        return checks
    if config is None:
        checks.append(Check("judge", "info", "no judge configured (MEDBENCH_JUDGE_MODEL unset): judge metrics are skipped"))
    elif not (config.api_key or config.base_url):
        checks.append(Check(
            "judge", "fail",
            f"MEDBENCH_JUDGE_MODEL={config.model} but no MEDBENCH_JUDGE_API_KEY (or OPENAI_API_KEY) and no "
            "MEDBENCH_JUDGE_BASE_URL",
        ))
    else:
        checks.append(Check("judge", "ok", f"judge model {config.model} at {config.public_base_url or 'api.openai.com'}"))
    return checks


def check_cuda() -> Check:
    try:
        import torch
    except ImportError:
        return Check("cuda", "info", "torch is not installed")
    if not torch.cuda.is_available():
        return Check("cuda", "info", f"no CUDA device (torch {torch.__version__}); models run on the CPU")
    names = ", ".join(torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count()))
    return Check("cuda", "ok", f"{torch.cuda.device_count()} device(s): {names} (torch {torch.__version__}, CUDA {torch.version.cuda})")


def run_checks(require: tuple[str, ...] = (), smoke: bool = True) -> list[Check]:
    """Every check, in report order; ``require`` names (see :data:`REQUIRABLE`) turn their warnings into failures."""
    checks: list[Check] = [Check(
        "python", "info", f"Python {platform.python_version()} on {sys.platform} {platform.machine()}"
    )]
    checks += check_requirements()
    checks.append(check_lock())
    checks += check_lmms_eval(smoke)
    steps: list[Callable[[], Check | list[Check]]] = [check_java, check_chromium, check_hub_cache, check_judge, check_cuda]
    for step in steps:
        result = step()
        checks += result if isinstance(result, list) else [result]
    required = set(require)
    return [
        Check(check.name, "fail", check.detail + " [required]")
        if check.name in required and check.status in ("warn", "info") and not _satisfied(check)
        else check
        for check in checks
    ]


def _satisfied(check: Check) -> bool:
    """An ``info`` line that still meets a requirement (METEOR switched off deliberately is not a failure)."""
    return check.name == "java" and "MEDBENCH_METEOR=off" in check.detail
