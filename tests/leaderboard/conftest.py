"""Real lmms-eval result folders for the leaderboard tests, made once per session.

* ``demo_results`` (``tests/conftest.py``, shared with the lmms-eval end-to-end tests): ``medbench demo``.
* ``limited_results``: the baseline on VQA-RAD with ``--limit 3``.
* ``judged_results``: the baseline on MIMIC-CXR judged inside lmms-eval by the loopback judge, and the demo
  baseline's AMBOSS log re-scored by ``medbench judge`` (both judge paths the board ingests).

The two below run lmms-eval inside the test process (``lmms_here``); ``demo_results`` runs it as ``medbench eval``
does, in a child process. Tests never modify these folders: adversarial submissions are edited copies (``_lbfiles.copy_run``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from lmms_here import lmms_eval_in_process

from medbench.commands.demo import demo_environment
from medbench.commands.eval import run_lmms_eval


@pytest.fixture(scope="session")
def limited_results(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("leaderboard_limit")
    with lmms_eval_in_process():
        run_lmms_eval(["--model", "medbench_baseline", "--tasks", "medbench_vqa_rad", "--limit", "3",
                       "--output_path", str(out), "--verbosity", "WARNING"], demo_environment())
    return out


@pytest.fixture(scope="session")
def judged_results(tmp_path_factory, demo_results) -> dict[str, Path]:
    """``{"inline": lmms-eval folder judged during the run, "rescored": demo baseline copy + medbench judge}``."""
    from judge_server import LoopbackJudgeServer

    from medbench.cli import main as medbench_main

    root = tmp_path_factory.mktemp("leaderboard_judge")
    with LoopbackJudgeServer() as server:
        env = demo_environment()
        env.update(server.environment())
        inline = root / "inline"
        with lmms_eval_in_process():
            run_lmms_eval(["--model", "medbench_baseline", "--tasks", "medbench_mimic_cxr", "--output_path", str(inline),
                           "--verbosity", "WARNING"], env)
        rescored = root / "rescored"
        shutil.copytree(demo_results["baseline"], rescored)
        samples = next(rescored.glob("*_samples_medbench_amboss.jsonl"))
        # a cache file of our own: `medbench judge --cache off` currently falls back to the user's cache
        assert (
            medbench_main(
                [
                    "judge",
                    str(samples),
                    "--model",
                    "loopback-judge",
                    "--base-url",
                    server.base_url,
                    "--cache",
                    "off",
                    "--parts",
                    "nli,severity",
                    "--no-progress",
                ]
            )
            == 0
        )
    return {"inline": inline, "rescored": rescored}
