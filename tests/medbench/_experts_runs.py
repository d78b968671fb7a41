"""Real lmms-eval runs for the expert-review tests: two configurations of the demo baseline, LLM-judged.

``model_a`` answers closed questions "yes" and reports "The image is an"; ``model_b`` answers "no" and reports a
right-sided finding (which the loopback judge grades severe against the demo report that says "left"). Both run on VQA-RAD and MIMIC-CXR demo data through the real lmms-eval with the
loopback judge grading severity inside the run; ``model_b``'s MIMIC-CXR log is then re-graded by
``medbench judge`` (so both places a judge grade can come from are read). lmms-eval runs inside the test process
(``lmms_here``).
"""

from __future__ import annotations

from pathlib import Path

from lmms_here import lmms_eval_in_process

from medbench.commands.demo import demo_environment
from medbench.commands.eval import run_lmms_eval

TASKS = "medbench_vqa_rad,medbench_mimic_cxr"
MODELS = {
    "model_a": "closed_answer=yes,report=The image is an",
    "model_b": "closed_answer=no,report=The image is on the right side.",
}


def make_runs(root: Path) -> dict[str, Path]:
    """``{label: lmms-eval output folder}`` for the two judged baseline runs."""
    from judge_server import LoopbackJudgeServer

    from medbench.cli import main as medbench_main

    folders = {}
    with LoopbackJudgeServer() as server:
        env = demo_environment()
        env.update(server.environment(), MEDBENCH_JUDGE_PARTS="severity", MEDBENCH_METEOR="off")
        for label, model_args in MODELS.items():
            folder = root / label
            with lmms_eval_in_process():
                run_lmms_eval(["--model", "medbench_baseline", "--model_args", model_args, "--tasks", TASKS,
                               "--output_path", str(folder), "--verbosity", "WARNING"], env)
            folders[label] = folder
        samples = next(folders["model_b"].rglob("*_samples_medbench_mimic_cxr.jsonl"))
        code = medbench_main(
            ["judge", str(samples), "--model", "loopback-judge", "--base-url", server.base_url, "--cache", "off", "--parts", "severity", "--no-progress"]
        )
        assert code == 0
    return folders
