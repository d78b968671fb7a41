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
        assert config["process_docs"].endswith(task.removeprefix("medbench_") + "_docs")


def test_groups():
    groups = group_members()
    assert groups["medbench"] == list(SOURCES)
    assert groups["medbench_vqa"] == [task for task, source in SOURCES.items() if source.kind == "vqa"]


def test_generated_task_index_is_fresh():
    assert stale_blocks() == [], "run `python -m medbench.docsgen` and commit the result"


def test_lmms_eval_indexes_the_tasks_and_the_models():
    from lmms_eval.models import get_model
    from lmms_eval.tasks import TaskManager

    manager = TaskManager("ERROR", include_path=str(tasks_dir()))
    assert set(SOURCES) <= set(manager.all_subtasks)
    assert {"medbench", "medbench_vqa"} <= set(manager.all_groups)
    assert get_model("medbench_hf").__name__ == "MedbenchHF"
    assert get_model("medbench_baseline").__name__ == "MedbenchBaseline"
