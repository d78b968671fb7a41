"""What makes a study's cells safe on a cluster, without one: locks, attempts, portable hashes, allocations."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from test_study import _prepared_study, _study

from medbench.cli import main
from medbench.errors import MedbenchError
from medbench.study import runner, spec
from medbench.study.runner import ATTEMPT, FAILED, MARKER, cell_lock, cell_state, run_cell, run_study
from medbench.study.spec import load_study

REPO = Path(__file__).resolve().parents[2]


def _mark_done(study: spec.Study) -> None:
    for cell in study.cells:
        folder = study.folder(cell)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MARKER).write_text(json.dumps({"hash": cell.hash}))


def test_a_second_runner_of_a_cell_refuses_with_one_line(tmp_path, capsys):
    path = _study(tmp_path, "some/model")
    study = load_study(path, tmp_path / "out")
    cell = study.cell("tiny/base/model/eval")
    with cell_lock(study, cell):
        with pytest.raises(MedbenchError, match=r"cell tiny/base/model/eval is being run by pid \d+ on "):
            run_cell(study, cell)
        assert main(["study", "run", str(path), "--out", str(tmp_path / "out"), "--cell", cell.id]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is being run by pid" in err and "wait for it to finish" in err
    assert not (study.folder(cell) / "logs").exists()  # the refused runner started nothing
    with cell_lock(study, cell):  # released by the first holder, so it can be taken again
        pass


def test_a_moved_output_folder_stays_done(tmp_path, monkeypatch):
    path = _prepared_study(tmp_path)
    first = tmp_path / "first"
    study = load_study(path, first.resolve())
    _mark_done(study)
    assert any(str(first) in " ".join(cell.argv) for cell in study.cells)  # commands name the real folder
    shutil.move(first, tmp_path / "elsewhere" / "second")
    monkeypatch.chdir(tmp_path)
    moved = load_study(path, Path("elsewhere/second"))  # relative now, absolute before
    assert [cell.hash for cell in moved.cells] == [cell.hash for cell in study.cells]
    assert all(cell_state(moved, cell) == "done" for cell in moved.cells)


def _changed(before: spec.Study, after: spec.Study) -> set[str]:
    return {cell.id for cell, other in zip(before.cells, after.cells) if cell.hash != other.hash}


def test_a_new_trl_version_rehashes_exactly_the_training_cells_and_what_reads_them(tmp_path, monkeypatch):
    path = _prepared_study(tmp_path)
    before = load_study(path, tmp_path / "out")
    versions = spec.installed_versions()
    monkeypatch.setattr(spec, "installed_versions", lambda: {**versions, "trl": versions["trl"] + ".post1"})
    after = load_study(path, tmp_path / "out")
    assert _changed(before, after) == {"tiny/sft/s1/train", "tiny/sft/s1/eval", "tiny/sft/s1/probe",
                                       "tiny/dpo/s1/train", "tiny/dpo/s1/eval", "tiny/dpo/s1/probe", "board"}
    monkeypatch.setattr(spec, "installed_versions", lambda: {**versions, "lmms-eval": "0.0.1"})
    evaluated = load_study(path, tmp_path / "out")
    assert _changed(before, evaluated) == {cell.id for cell in before.cells if cell.kind == "eval"} | {"board"}


def test_an_edited_recipe_file_rehashes_exactly_its_cells(tmp_path, monkeypatch):
    path = _prepared_study(tmp_path)
    before = load_study(path, tmp_path / "out")
    recipes = tmp_path / "trainers" / "recipes"
    shutil.copytree(spec.recipes_dir(), recipes)
    monkeypatch.setattr(spec, "recipes_dir", lambda: recipes)
    assert [cell.hash for cell in load_study(path, tmp_path / "out").cells] == [cell.hash for cell in before.cells]
    (recipes / "dpo.yaml").write_text((recipes / "dpo.yaml").read_text() + "\nbeta: 0.2\n")
    after = load_study(path, tmp_path / "out")
    assert _changed(before, after) == {"tiny/dpo/s1/train", "tiny/dpo/s1/eval", "tiny/dpo/s1/probe", "board"}


def test_a_local_backbone_is_hashed_by_its_files_and_a_hub_one_by_its_revision(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    path = _study(tmp_path, str(model))
    before = load_study(path, tmp_path / "out")
    (model / "config.json").write_text('{"hidden_size": 8}')
    after = load_study(path, tmp_path / "out")
    assert _changed(before, after) == {cell.id for cell in before.cells}  # base eval and every training cell
    pinned = load_study(_study(tmp_path, "org/model", backbones={"tiny": {"model": "org/model", "revision": "abc"}}),
                        tmp_path / "out")
    assert pinned.cell("tiny/base/model/eval").identity["checkpoint"] == "hub:org/model@abc"


def test_the_global_batch_is_checked_against_the_launcher_and_the_allocation(tmp_path, capsys):
    launcher = ["accelerate", "launch", "--config_file", "trainers/accelerate/multi_gpu.yaml"]
    train = {"per_device_train_batch_size": 2, "max_steps": 1}
    path = _study(tmp_path, "m", launcher=launcher, global_batch=16, train=train, resources={"train": {"gpus": 4}})
    cell = load_study(path, tmp_path / "out").cell("tiny/dpo/s1/train")
    # Four GPUs: four processes, and the accumulation that makes 2 x 4 x 2 = 16.
    assert cell.launcher[:4] == ["accelerate", "launch", "--num_processes", "4"]
    assert cell.argv[cell.argv.index("--gradient_accumulation_steps") + 1] == "2"

    refused = [
        ({"train": {**train, "gradient_accumulation_steps": 1}},
         "per-device batch 2 x 4 process(es) x accumulation 1 = 8, not global_batch 16"),
        ({"launcher": [*launcher, "--num_processes", "8"]},
         "--num_processes 8 but resources.train gives 4 GPU(s)"),
        ({"launcher": []}, "resources.train.gpus is 4 but no launcher is set"),
        ({"global_batch": 12, "resources": {"train": {"gpus": 8}}}, "global_batch 12 is not a multiple"),
    ]
    for change, message in refused:
        spec_ = {"launcher": launcher, "global_batch": 16, "train": train, "resources": {"train": {"gpus": 4}},
                 **change}
        assert main(["study", "plan", str(_study(tmp_path, "m", **spec_))]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


def test_the_paper_study_states_its_global_batch_once_and_fills_eight_gpus():
    study = load_study(REPO / "medbench" / "studies" / "paper.yaml")
    train = study.cell("llava_med_v1_5/dpo/s42/train")
    assert train.resources.gpus == 8 and train.launcher[2:4] == ["--num_processes", "8"]
    per_device = int(train.argv[train.argv.index("--per_device_train_batch_size") + 1])
    accumulation = int(train.argv[train.argv.index("--gradient_accumulation_steps") + 1])
    assert per_device * 8 * accumulation == 16


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"train": {"gpus": -1}}, "resources.train.gpus: -1; give a whole number"),
        ({"eval": {"mem": "lots"}}, "resources.eval.mem: 'lots'"),
        ({"train": {"time": "soon"}}, "resources.train.time: 'soon'"),
        ({"gpu": {"gpus": 1}}, "resources: map cell kinds"),
        ({"train": {"nodes": 2}}, "a cell runs on one node"),
    ],
)
def test_bad_resources_are_one_line(tmp_path, capsys, resources, message):
    assert main(["study", "plan", str(_study(tmp_path, "m", resources=resources))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_a_training_cell_keeps_its_checkpoints_for_the_same_hash_and_only_then(tmp_path):
    study = load_study(_study(tmp_path, "some/model"), tmp_path / "out")
    cell = study.cell("tiny/dpo/s1/train")
    folder = study.folder(cell)

    def previous_attempt(hash_: str) -> None:
        (folder / "checkpoint-2").mkdir(parents=True, exist_ok=True)
        (folder / "logs").mkdir(exist_ok=True)
        (folder / "logs" / "attempt-1.log").write_text("first\n")
        (folder / ATTEMPT).write_text(json.dumps({"hash": hash_}))
        (folder / FAILED).write_text("{}")

    previous_attempt(cell.hash)
    runner._clear_for_attempt(study, cell, force=False)
    assert (folder / "checkpoint-2").is_dir() and (folder / "logs" / "attempt-1.log").is_file()
    assert not (folder / FAILED).exists()
    runner._clear_for_attempt(study, cell, force=True)  # --force: start over, keep the logs of this hash
    assert not (folder / "checkpoint-2").exists() and (folder / "logs" / "attempt-1.log").is_file()
    previous_attempt("another-hash")
    runner._clear_for_attempt(study, cell, force=False)
    assert [item.name for item in folder.iterdir()] == [ATTEMPT]  # another hash: nothing of it survives


def test_retries_force_and_gpu_shares(tmp_path, monkeypatch):
    study = load_study(_study(tmp_path, "some/model", resources={"train": {"gpus": 2}, "eval": {"gpus": 1}},
                              launcher=["accelerate", "launch"]), tmp_path / "out")
    failures = {"tiny/base/model/eval": 1}
    ran: list[str] = []

    def attempt(study_, cell):
        ran.append(cell.id)
        if failures.get(cell.id):
            failures[cell.id] -= 1
            raise MedbenchError(f"cell {cell.id} failed")
        (study_.folder(cell) / MARKER).write_text(json.dumps({"hash": cell.hash}))
        return 0.0

    monkeypatch.setattr(runner, "_attempt", attempt)
    with pytest.raises(MedbenchError, match="failed"):
        run_study(study, ["tiny/base/model/eval"], log=lambda line: None)
    failures["tiny/base/model/eval"] = 1
    run_study(study, ["tiny/base/model/eval"], log=lambda line: None, retries=1)
    assert ran == ["tiny/base/model/eval"] * 3 and cell_state(study, study.cell("tiny/base/model/eval")) == "done"
    run_study(study, ["tiny/base/model/eval"], log=lambda line: None)
    assert len(ran) == 3  # complete: skipped
    run_study(study, ["tiny/base/model/eval"], log=lambda line: None, force=["tiny/base/model/eval"])
    assert len(ran) == 4

    # Three GPUs, two cells at once: each running cell holds its own GPUs, never one another's.
    holding: dict[str, set[str]] = {}
    seen: list[tuple[str, str]] = []
    lock = threading.Lock()

    def run_on_gpus(study_, cell, log, force, retries):
        gpus = set(cell.env["CUDA_VISIBLE_DEVICES"].split(","))
        with lock:
            assert all(not gpus & other for other in holding.values())
            holding[cell.id] = gpus
            seen.append((cell.id, cell.env["CUDA_VISIBLE_DEVICES"]))
        time.sleep(0.05)
        with lock:
            del holding[cell.id]
        return 0.0

    monkeypatch.setattr(runner, "run_cell", run_on_gpus)
    cells = ["tiny/base/model/eval", "tiny/dpo/s1/train", "tiny/dpo_nll/s1/train"]
    run_study(study, cells, log=lambda line: None, jobs=2, gpus=["0", "1", "2"], force=cells)
    assert sorted(len(gpus.split(",")) for _, gpus in seen) == [1, 2, 2]


def test_a_cells_sbatch_parameters_follow_its_resources_and_the_cluster_options():
    from medbench.study.slurm import _parameters, minutes

    study = load_study(REPO / "medbench" / "studies" / "paper.yaml")
    cluster = spec.Cluster.parse({"partition": "gpu", "account": "lab", "qos": "high",
                                  "sbatch": ["--constraint=a100", "--exclusive"]}, "cluster")
    train = study.cell("llava_med_v1_5/dpo/s42/train")
    parameters = _parameters(study, train, cluster, ["101", "102"])
    assert parameters["gpus_per_node"] == 8 and parameters["cpus_per_task"] == 64
    assert parameters["time"] == 2 * 24 * 60 and parameters["partition"] == "gpu"
    assert parameters["additional_parameters"] == {
        "requeue": True, "constraint": "a100", "exclusive": True, "account": "lab", "qos": "high", "mem": "480G",
        "dependency": "afterok:101:102", "kill-on-invalid-dep": "yes"}
    evaluation = _parameters(study, study.cell("llava_med_v1_5/base/model/eval"), spec.Cluster(), [])
    assert evaluation["gpus_per_node"] == 1 and "dependency" not in evaluation["additional_parameters"]
    assert [minutes(limit) for limit in ("90", "1:30:00", "1-00:00:00", "0:00:30")] == [90, 90, 1440, 1]


def test_plan_json_carries_each_cells_resources_for_other_schedulers(capsys):
    assert main(["study", "plan", str(REPO / "medbench" / "studies" / "paper.yaml"), "--json"]) == 0
    cells = {cell["id"]: cell for cell in map(json.loads, capsys.readouterr().out.splitlines())}
    assert cells["llava_med_v1_5/dpo/s42/train"]["resources"] == {"gpus": 8, "cpus": 64, "mem": "480G",
                                                                  "time": "2-00:00:00", "nodes": 1}
    assert cells["llava_med_v1_5/dpo/s42/train"]["command"][:4] == ["accelerate", "launch", "--num_processes", "8"]


def test_study_settings_lists_and_null_become_train_flags():
    from medbench.study.spec import _flags

    argv = _flags({"rewards": ["closed_exact", "judge_nli"], "max_length": None, "use_lora": True}, "s.yaml: train")
    assert argv == ["--rewards", "closed_exact,judge_nli", "--max_length", "null", "--use_lora", "true"]
    with pytest.raises(MedbenchError, match=r"s.yaml: train.x: give a single value or a list of plain values"):
        _flags({"x": [[1]]}, "s.yaml: train")
