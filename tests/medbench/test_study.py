"""`medbench study`: the grid, config hashes, plan, and a real resumable run (train, evaluate, board) on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from medbench.cli import main
from medbench.study.runner import MARKER, cell_state, plan_lines
from medbench.study.spec import load_study

DEMO_IMAGES = Path(__file__).resolve().parents[2] / "medbench" / "data" / "demo" / "images"
FAST_TRAIN = {"max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-4, "warmup_steps": 0.0,
              "save_strategy": "no", "max_length": 128, "precision": "fp32"}


def _prefs(folder: Path) -> Path:
    records = [
        {"id": "ct-1", "image": str(DEMO_IMAGES / "ct_small.png"), "question": "Which modality is this image?",
         "chosen": "This is a CT image.", "rejected": "This is an MRI image."},
        {"id": "fundus-1", "image": str(DEMO_IMAGES / "fundus_retina.png"),
         "question": "Is the optic disc on the left?", "chosen": "Yes, on the left.", "rejected": "No, on the right."},
    ]
    path = folder / "prefs.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def _study(folder: Path, model: str, **changes) -> Path:
    spec = {
        "study": "t",
        "backbones": {"tiny": {"model": model}},
        "recipes": ["dpo", "dpo_nll"],
        "seeds": [1],
        "sft": False,
        "base": True,
        "data": {"preferences": str(_prefs(folder))},
        "train": FAST_TRAIN,
        "eval": {"model": "medbench_hf", "tasks": ["medbench_vqa_rad"], "args": ["--batch_size", "8"],
                 "env": {"MEDBENCH_DATA": "demo", "MEDBENCH_METEOR": "off"}},
        "board": {"baseline": "base"},
    }
    spec.update(changes)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def test_grid_order_and_hashes_that_change_only_where_a_setting_reaches(tmp_path):
    path = _study(tmp_path, "some/model", recipes=["dpo", "copo"], seeds=[1, 2], sft=True, variants_from="sft")
    study = load_study(path, tmp_path / "out")
    ids = [cell.id for cell in study.cells]
    assert ids[0] == "tiny/base/model/eval" and ids[-1] == "board"
    assert ids.index("tiny/sft/s1/train") < ids.index("tiny/dpo/s1/train") < ids.index("tiny/dpo/s1/eval")
    assert len([i for i in ids if i.endswith("/train")]) == 6  # (sft + 2 recipes) x 2 seeds
    dpo = study.cell("tiny/dpo/s1/train")
    assert dpo.deps == ["tiny/sft/s1/train"] and str(study.folder(study.cell("tiny/sft/s1/train"))) in dpo.argv
    before = {cell.id: cell.hash for cell in study.cells}
    changed = load_study(_study(tmp_path, "some/model", recipes=["dpo", "copo"], seeds=[1, 2], sft=True,
                                variants_from="sft", recipe_train={"copo": {"beta": 0.2}}), tmp_path / "out")
    moved = {cell.id for cell in changed.cells if cell.hash != before[cell.id]}
    assert moved == {"tiny/copo/s1/train", "tiny/copo/s1/eval", "tiny/copo/s2/train", "tiny/copo/s2/eval", "board"}
    # The preference data's content is part of the hash of every cell that reads it.
    (tmp_path / "prefs.jsonl").write_text('{"id": "x"}\n')
    rehashed = load_study(path, tmp_path / "out")
    assert rehashed.cell("tiny/dpo/s1/train").hash != study.cell("tiny/dpo/s1/train").hash
    assert rehashed.cell("tiny/base/model/eval").hash == study.cell("tiny/base/model/eval").hash


def test_plan_prints_one_command_per_cell_with_accelerate_for_training(tmp_path, capsys):
    path = _study(tmp_path, "some/model", launcher=["accelerate", "launch", "--config_file", "multi.yaml"])
    assert main(["study", "plan", str(path), "--out", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    train = [line for line in lines if " train --config dpo " in line]
    assert len(train) == 1 and train[0].startswith("accelerate launch --config_file multi.yaml -m medbench train")
    assert any(line.startswith("MEDBENCH_DATA=demo MEDBENCH_METEOR=off medbench eval --model medbench_hf") for line in lines)
    assert main(["study", "plan", str(path), "--out", str(tmp_path / "out"), "--json"]) == 0
    cells = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [cell["index"] for cell in cells] == list(range(len(cells))) and cells[-1]["id"] == "board"


def test_the_paper_study_plans_here():
    study = load_study(Path(__file__).resolve().parents[2] / "medbench" / "studies" / "paper.yaml")
    trains = [cell for cell in study.cells if cell.kind == "train"]
    assert len(trains) == 2 * (9 + 1)  # two backbones x (nine variants + SFT), one seed
    assert all("--learning_rate" in cell.argv and cell.argv[cell.argv.index("--learning_rate") + 1] == "1e-07"
               for cell in trains)
    assert len(plan_lines(study)) == 1 + 2 * len(study.cells)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"recipes": ["sft"]}, "leave out sft"),
        ({"bogus": 1}, "unknown key(s) bogus"),
        ({"backbones": {}}, "backbones: name at least one"),
        ({"board": {"baseline": "nope"}}, "board.baseline: 'nope'"),
        ({"data": {}}, "give exactly one of preferences"),
    ],
)
def test_a_bad_study_file_is_one_line(tmp_path, capsys, change, message):
    path = _study(tmp_path, "m", **change)
    assert main(["study", "plan", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_a_study_runs_resumes_after_sigkill_and_builds_its_board(tmp_path, tiny_llava_dir):
    # SFT once, DPO trained from it: the variant is listed under the base model and tested against SFT.
    path = _study(tmp_path, str(tiny_llava_dir), recipes=["dpo"], sft=True, variants_from="sft",
                  board={"baseline": "sft"})
    out = tmp_path / "out"
    study = load_study(path, out)
    first = study.cell("tiny/sft/s1/train")
    command = [sys.executable, "-m", "medbench", "study", "run", str(path), "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + 600
    while cell_state(study, first) != "done":
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "the first training cell did not finish in 10 minutes"
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = json.loads((study.folder(first) / MARKER).read_text())["finished"]

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "tiny/sft/s1/train: complete, skipped" in resumed.stdout
    assert json.loads((study.folder(first) / MARKER).read_text())["finished"] == finished
    assert all(cell_state(study, cell) == "done" for cell in study.cells if cell.kind != "board")

    board = (out / "t" / "board" / "leaderboard.csv").read_text()
    assert "tiny dpo (seed 1)" in board and "tiny sft (seed 1)" in board and "tiny base" in board
    manifest = json.loads((study.folder(study.cell("tiny/dpo/s1/eval")) / "medbench-submission.json").read_text())
    assert manifest["base_model"] == "tiny base" and manifest["training_metadata"] == "medbench_train.json"
    status = subprocess.run([*command[:4], "status", str(path), "--out", str(out)], capture_output=True, text=True,
                            check=True)
    assert status.stdout.strip().splitlines()[-1] == f"{len(study.cells)} done"
    report = subprocess.run([*command[:4], "report", str(path), "--out", str(out)], capture_output=True, text=True,
                            check=True)
    assert "tiny/dpo/s1/eval: medbench_vqa_rad overall" in report.stdout and "board:" in report.stdout
