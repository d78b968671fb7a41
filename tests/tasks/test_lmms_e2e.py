"""End to end through the real lmms-eval: tiny model and baseline on demo data, VQA and long-form tasks."""

import json

import pytest
from lmms_here import lmms_eval_in_process

from medbench.commands.demo import demo_environment
from medbench.commands.eval import run_lmms_eval
from medbench.results import find_runs
from medbench.taskfiles import task_versions


@pytest.fixture(scope="module")
def tiny_run(demo_results):
    """The tiny LLaVA's run on the five demo tasks, from the session's one demo run (``tests/conftest.py``)."""
    runs = find_runs(demo_results["tiny-llava"])
    assert len(runs) == 1
    return runs[0]


def test_results_carry_versions_prompts_and_decoding(tiny_run):
    run = tiny_run
    raw = run.raw
    versions = task_versions()
    assert {"medbench_vqa_rad", "medbench_slake", "medbench_pathvqa", "medbench_mimic_cxr", "medbench_amboss"} <= set(run.tasks)
    assert {task: raw["versions"][task] for task in run.tasks} == {task: versions[task] for task in run.tasks}
    vqa_config = raw["configs"]["medbench_vqa_rad"]
    assert vqa_config["lmms_eval_specific_kwargs"]["post_prompt"] == "\nAnswer the question using a single word or phrase."
    assert vqa_config["generation_kwargs"]["do_sample"] is False
    assert raw["configs"]["medbench_mimic_cxr"]["lmms_eval_specific_kwargs"]["prompt"] == "Write a detailed report based on the image."
    assert raw["n-samples"]["medbench_vqa_rad"]["effective"] == 24


def test_every_metric_has_a_standard_error(tiny_run):
    run = tiny_run
    vqa = run.metrics("medbench_vqa_rad")
    # failed_generations is a count, not a score; it leaves metrics() once results.NON_SCORE_METRICS lists it
    vqa.pop("failed_generations", None)
    assert set(vqa) == {"overall", "closed_accuracy", "open_recall", "exact_match", "token_f1", "closed_unparsed"}
    assert all(stderr is not None for _, stderr in vqa.values())
    assert run.count("medbench_vqa_rad", "failed_generations") == 0.0
    assert run.count("medbench_mimic_cxr", "failed_generations") == 0.0
    assert run.count("medbench_vqa_rad", "n_closed") == 15
    assert run.count("medbench_vqa_rad", "n_open") == 9
    report = run.metrics("medbench_mimic_cxr")
    assert {"bleu4", "rouge_l"} <= set(report)
    # every long-form score is a fraction except CIDEr, which is on coco-caption's 0-10 scale
    assert all(0.0 <= value <= (10.0 if metric == "cider" else 1.0) for metric, (value, _) in report.items())


def test_per_sample_logs_trace_back_to_documents(tiny_run):
    run = tiny_run
    rows = [json.loads(line) for line in run.samples["medbench_vqa_rad"].read_text().splitlines()]
    assert len(rows) == 24
    first = rows[0]
    assert first["medbench_detail"]["id"] == "demo-vqa-01"
    assert first["medbench_detail"]["source"].startswith("demo:")
    assert isinstance(first["filtered_resps"], str)
    closed = [row for row in rows if row["medbench_detail"]["answer_type"] == "CLOSED"]
    # the record's overall score is closed accuracy for closed questions, recomputed from the logged answer
    from medbench.metrics.vqa import closed_accuracy

    assert all(row["overall"] == closed_accuracy(row["filtered_resps"], row["target"]) for row in closed)
    reports = [json.loads(line) for line in run.samples["medbench_mimic_cxr"].read_text().splitlines()]
    assert len(reports) == 6 and all(row["target"] for row in reports)


def test_baseline_scores_are_exact(demo_results):
    metrics = find_runs(demo_results["baseline"])[-1].metrics("medbench_vqa_rad")
    # 15 closed demo questions: 8 gold "yes"; the only non-yes/no closed one ("Is this a CT or an MRI image?")
    # opens with "Is", gets "yes" and is wrong. Open questions get no answer.
    assert metrics["closed_accuracy"][0] == pytest.approx(8 / 15)
    assert metrics["open_recall"][0] == 0.0
    assert metrics["closed_unparsed"][0] == pytest.approx(0.0)


def test_failed_evaluation_is_an_error_not_a_silent_success(tmp_path):
    from medbench.errors import MedbenchError

    args = ["--model", "medbench_hf", "--model_args", f"pretrained={tmp_path / 'no-such-model'}",
            "--tasks", "medbench_vqa_rad", "--output_path", str(tmp_path), "--verbosity", "WARNING"]
    # lmms-eval logs the failure and exits 0: that it wrote no results is what tells (in a child process as here).
    with lmms_eval_in_process(), pytest.raises(MedbenchError, match="lmms-eval .* under"):
        run_lmms_eval(args, demo_environment())
