"""Test-suite wide setup: fully offline, tiny models built once per session."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_name] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("WANDB_MODE", "disabled")

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_loopback(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self, address):
    if not _is_loopback(address):
        raise OSError(f"network access blocked in tests: {address!r}")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if not _is_loopback(address):
        raise OSError(f"network access blocked in tests: {address!r}")
    return _real_connect_ex(self, address)


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex


@pytest.fixture(scope="session", autouse=True)
def _own_medbench_cache(tmp_path_factory):
    """The suite's caches (preprocessed training sets, judge answers, board builds) go to a session folder, never
    into the user's ~/.cache/medbench: a test run must not grow or read a real cache. Subprocesses inherit it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDBENCH_CACHE", str(tmp_path_factory.mktemp("medbench-cache")))
        yield


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    """Tiny LLaVA / Qwen2-VL / Qwen2.5-VL checkpoints saved to disk, keyed by architecture."""
    from medbench.tiny import ARCHITECTURES, build_tiny_model

    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: build_tiny_model(root / arch, arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def tiny_llava_dir(tiny_model_dirs):
    return tiny_model_dirs["llava"]


@pytest.fixture(scope="session")
def demo_results(tmp_path_factory) -> dict[str, Path]:
    """``{"tiny-llava": folder, "baseline": folder}`` from one real demo run.

    Shared by every test that reads a real lmms-eval run of the tiny model or the baseline on the five demo tasks;
    tests never modify it. The baseline's run is a child process, as ``medbench demo`` starts it (the default
    suite's one successful run through that path); the tiny model's runs in this process (``lmms_here``).
    """
    from lmms_here import lmms_eval_in_process

    from medbench.commands.demo import run_demo

    out = tmp_path_factory.mktemp("leaderboard_demo")
    with lmms_eval_in_process(model="medbench_hf"):
        run_demo(out)
    return {"tiny-llava": out / "results" / "tiny-llava", "baseline": out / "results" / "baseline"}
