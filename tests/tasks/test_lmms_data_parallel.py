"""Data-parallel evaluation: `accelerate launch --num_processes 2 -m lmms_eval` equals one process."""

import json

import pytest

from medbench.commands.demo import demo_environment
from medbench.commands.eval import run_lmms_eval
from medbench.results import find_runs


def _evaluate(out, processes: int):
    env = {**demo_environment(), "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    run_lmms_eval(["--model", "medbench_baseline", "--tasks", "medbench_vqa_rad", "--output_path", str(out),
                   "--verbosity", "WARNING"], env, processes=processes)
    return find_runs(out)[-1]


@pytest.mark.slow  # three lmms-eval processes start (about a minute alone, minutes on a loaded machine)
def test_two_cpu_processes_score_exactly_what_one_does(tmp_path):
    one, two = _evaluate(tmp_path / "one", 1), _evaluate(tmp_path / "two", 2)
    assert two.metrics("medbench_vqa_rad") == one.metrics("medbench_vqa_rad")
    assert two.raw["n-samples"] == one.raw["n-samples"]

    def answers(run) -> dict:
        rows = [json.loads(line) for line in run.samples["medbench_vqa_rad"].read_text().splitlines()]
        return {row["doc_id"]: row["filtered_resps"] for row in rows}

    assert answers(two) == answers(one) and len(answers(one)) == 24
