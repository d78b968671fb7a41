"""Real lmms-eval result folders for the leaderboard tests, made once per session.

* ``demo_results``: ``medbench demo`` (tiny LLaVA + the non-neural baseline on all five tasks).
* ``limited_results``: the baseline on VQA-RAD with ``--limit 3``.
* ``judged_results``: the baseline on MIMIC-CXR judged inside lmms-eval by the loopback judge, and the demo
  baseline's AMBOSS log re-scored by ``medbench judge`` (both judge paths the board ingests).

Tests never modify these folders: adversarial submissions are edited copies (``_lbfiles.copy_run``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medbench.commands.demo import demo_environment, run_demo
from medbench.commands.eval import run_lmms_eval


@pytest.fixture(scope="session")
def demo_results(tmp_path_factory) -> dict[str, Path]:
    """``{"tiny-llava": folder, "baseline": folder}`` from one real demo run."""
    out = tmp_path_factory.mktemp("leaderboard_demo")
    run_demo(out)
    return {"tiny-llava": out / "results" / "tiny-llava", "baseline": out / "results" / "baseline"}


@pytest.fixture(scope="session")
def limited_results(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("leaderboard_limit")
    run_lmms_eval(
        [
            "--model",
            "medbench_baseline",
            "--tasks",
            "medbench_vqa_rad",
            "--limit",
            "3",
            "--output_path",
            str(out),
            "--verbosity",
            "WARNING",
        ],
        demo_environment(),
    )
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
        run_lmms_eval(
            [
                "--model",
                "medbench_baseline",
                "--tasks",
                "medbench_mimic_cxr",
                "--output_path",
                str(inline),
                "--verbosity",
                "WARNING",
            ],
            env,
        )
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
