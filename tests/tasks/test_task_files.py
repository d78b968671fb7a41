"""The task folder is consistent: every task has its YAML and README, sources agree, generated docs are fresh."""

from medbench.data.sources import SOURCES
from medbench.docsgen import stale_blocks
from medbench.taskfiles import group_members, task_configs, task_versions, tasks_dir


def test_every_source_has_a_task_folder_with_yaml_and_readme():
    assert set(task_configs()) == set(SOURCES)
    for task in SOURCES:
        folder = tasks_dir() / task
        assert (folder / f"{task}.yaml").is_file()
        readme = (folder / "README.md").read_text()
        assert "## Changelog" in readme
        assert f"- v{task_versions()[task]}:" in readme, f"{task}: README changelog lacks the current version"


def test_tasks_are_greedy_and_record_their_prompts():
    for task, config in task_configs().items():
        assert config["generation_kwargs"]["do_sample"] is False
        assert config["generation_kwargs"]["temperature"] == 0
        prompts = config["lmms_eval_specific_kwargs"]["default"]
        assert prompts, task
        # A blind twin reads its task's documents.
        sighted = SOURCES[task].blind_of or task
        assert config["process_docs"].endswith(sighted.removeprefix("medbench_") + "_docs")


def test_groups():
    groups = group_members()
    sighted = {task: source for task, source in SOURCES.items() if not source.blind_of}
    assert groups["medbench"] == list(sighted)
    assert groups["medbench_vqa"] == [task for task, source in sighted.items() if source.kind == "vqa"]
    assert groups["medbench_blind"] == [f"{task}_blind" for task in groups["medbench_vqa"]]


def test_a_blind_twin_is_its_task_with_only_the_image_replaced():
    configs = task_configs()
    twins = {task: source.blind_of for task, source in SOURCES.items() if source.blind_of}
    assert set(twins) == {"medbench_vqa_rad_blind", "medbench_slake_blind", "medbench_pathvqa_blind"}
    for twin, task in twins.items():
        blind, sighted = configs[twin], configs[task]
        assert blind["doc_to_visual"] == "!function medbench.lmms.common.doc_to_blind_visual"
        assert blind["metadata"]["version"] == sighted["metadata"]["version"]
        assert blind["metadata"]["blind_of"] == task
        same = set(sighted) - {"task", "doc_to_visual", "metadata"}
        assert {key: blind[key] for key in same} == {key: sighted[key] for key in same}


def test_generated_task_index_is_fresh():
    assert stale_blocks() == [], "run `python -m medbench.docsgen` and commit the result"


def test_lmms_eval_indexes_the_tasks_and_the_models():
    from lmms_eval.models import get_model
    from lmms_eval.tasks import TaskManager

    manager = TaskManager("ERROR", include_path=str(tasks_dir()))
    assert set(SOURCES) <= set(manager.all_subtasks)
    assert {"medbench", "medbench_vqa", "medbench_blind"} <= set(manager.all_groups)
    assert get_model("medbench_hf").__name__ == "MedbenchHF"
    assert get_model("medbench_baseline").__name__ == "MedbenchBaseline"
