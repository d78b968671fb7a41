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
from medbench.study import runner
from medbench.study.runner import MARKER, cell_state, plan_lines, run_study
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
    assert len(trains) == 2 * (9 + 1 + 1)  # two backbones x (nine variants + GRPO + SFT), one seed
    rates = {cell.id: cell.argv[cell.argv.index("--learning_rate") + 1] for cell in trains}
    assert all(rate == ("1e-06" if "/grpo/" in cell else "1e-07") for cell, rate in rates.items())
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


def test_a_study_names_the_extras_it_lacks_before_its_first_cell(tmp_path, capsys, monkeypatch):
    from medbench import doctor
    from medbench.study.runner import require_extras

    present = doctor._installed()
    monkeypatch.setattr(doctor, "_installed",
                        lambda: {name: version for name, version in present.items() if name not in ("trl", "jsonschema")})
    path = _study(tmp_path, "some/model", recipes=["dpo"])
    assert main(["study", "run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs medbench[leaderboard,train] (jsonschema, trl not installed)" in err
    assert '-e ".[leaderboard,train]"' in err and not (tmp_path / "out").exists()
    # Only the cells asked for count: the untrained model's evaluation needs neither.
    study = load_study(path, tmp_path / "out")
    require_extras(study, [study.cell("tiny/base/model/eval")])


def _prepared_study(folder: Path, **changes) -> Path:
    """A tiny.yaml-shaped study at test scale: generated data and model, held-out probe, a reference model."""
    spec = {
        "study": "t",
        "prepare": {
            "data": ["synth", "vqa", "--out", "{prepare:data}", "--train", "24", "--test", "16", "--size", "32",
                     "--no_progress"],
            "model": ["synth", "model", "--out", "{prepare:model}", "--corpus", "{prepare:data}/train.jsonl",
                      "--size", "demo"],
        },
        "env": {"OMP_NUM_THREADS": "1"},
        "backbones": {"tiny": {"model": "{prepare:model}"}},
        "recipes": ["dpo"],
        "seeds": [1],
        "sft": True,
        "base": True,
        "variants_from": "sft",
        "data": {"build": ["{prepare:data}/train.jsonl", "--prompt_of", "medbench_vqa_rad", "--no_progress"]},
        "probe": {"build": ["{prepare:data}/test.jsonl", "--recipe", "mdpo", "--corruption", "fill", "--control",
                            "--no_progress"], "args": ["--batch_size", "8"]},
        "train": FAST_TRAIN,
        "eval": {"model": "medbench_hf", "tasks": ["medbench_vqa_rad", "medbench_vqa_rad_blind"],
                 "args": ["--batch_size", "8"],
                 "env": {"MEDBENCH_VQA_RAD": "{prepare:data}/test.jsonl", "MEDBENCH_METEOR": "off"},
                 "references": {"prior_only": {"model": "medbench_baseline",
                                               "model_args": "prior={prepare:data}/train.jsonl"},
                                "medbench_baseline": {"model": "medbench_baseline"}}},
    }
    spec.update(changes)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def test_prepare_probe_references_and_env_become_cells(tmp_path):
    study = load_study(_prepared_study(tmp_path), tmp_path / "out")
    root = tmp_path / "out" / "t"
    by_id = {cell.id: cell for cell in study.cells}
    assert [cell.id for cell in study.cells[:2]] == ["prepare/data", "prepare/model"]
    assert by_id["prepare/model"].argv[-3:] == [str(root / "prepare/data/train.jsonl"), "--size", "demo"]
    assert by_id["prepare/model"].deps == ["prepare/data"]  # it reads {prepare:data}, so it runs after it
    assert all(cell.deps[:2] == ["prepare/data", "prepare/model"] for cell in study.cells[2:])
    assert all(cell.env["OMP_NUM_THREADS"] == "1" for cell in study.cells)
    assert by_id["tiny/base/model/eval"].env["MEDBENCH_VQA_RAD"] == str(root / "prepare/data/test.jsonl")
    probe = by_id["tiny/dpo/s1/probe"]
    assert probe.argv[:4] == ["prefs", "score", str(root / "tiny/dpo/s1/train"), str(root / "prefs/heldout/prefs.jsonl")]
    assert probe.deps[-2:] == ["tiny/dpo/s1/train", "prefs/heldout"]
    assert by_id["reference/medbench_baseline/eval"].argv[:3] == ["eval", "--model", "medbench_baseline"]
    assert set(by_id["board"].deps) >= {"tiny/base/model/probe", "tiny/sft/s1/probe", "reference/medbench_baseline/eval"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"backbones": {"tiny": {"model": "{prepare:nope}"}}}, "{prepare:nope} names no entry of prepare"),
        ({"probe": {"build": ["x.jsonl"]}}, "probe.build: name the pairs' recipe"),
        ({"probe": {"build": ["x.jsonl", "--recipe", "mdpo"], "preferences": "p.jsonl"}}, "probe: give exactly one"),
        ({"prepare": {"data": "synth"}}, "prepare: map each name to a medbench command"),
    ],
)
def test_a_bad_prepare_or_probe_is_one_line(tmp_path, capsys, change, message):
    assert main(["study", "plan", str(_prepared_study(tmp_path, **change))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_the_tiny_study_plans_here():
    study = load_study(Path(__file__).resolve().parents[2] / "medbench" / "studies" / "tiny.yaml")
    trains = {cell.id: cell for cell in study.cells if cell.kind == "train"}
    assert len(trains) == 2 * (7 + 1)  # two seeds x (six DPO variants + GRPO + SFT)
    for cell in trains.values():
        seed = cell.meta["seed"]
        if cell.meta["variant"] != "sft":
            assert cell.deps[-1] == f"tiny/sft/s{seed}/train"  # every variant starts from its seed's SFT model
    assert len([cell for cell in study.cells if cell.kind == "probe"]) == 1 + 2 * 8
    grpo = trains["tiny/grpo/s1/train"].argv
    # GRPO's own settings reach the train command; the DPO-only max_length is un-set.
    assert grpo[grpo.index("--rewards") + 1] == "closed_exact,open_recall"
    assert grpo[grpo.index("--max_length") + 1] == "null"


def test_base_model_is_the_model_a_cell_was_trained_from(tmp_path):
    from medbench.study.runner import _submission

    def base_models(**changes) -> dict[str, str | None]:
        study = load_study(_study(tmp_path, "some/model", recipes=["dpo"], seeds=[1, 2], sft=True, **changes),
                           tmp_path / "out")
        return {cell.id: _submission(study, cell).get("base_model") for cell in study.cells if cell.kind == "eval"}

    from_sft = base_models(variants_from="sft")
    assert from_sft["tiny/dpo/s1/eval"] == "tiny sft (seed 1)" and from_sft["tiny/dpo/s2/eval"] == "tiny sft (seed 2)"
    assert from_sft["tiny/sft/s2/eval"] == "tiny base" and from_sft["tiny/base/model/eval"] is None
    assert base_models(variants_from="base")["tiny/dpo/s2/eval"] == "tiny base"


def test_resume_skips_complete_cells_and_reruns_a_killed_one_from_an_empty_folder(tmp_path, monkeypatch):
    # The light, default-suite form of the SIGKILL test below: cells are cheap commands instead of training runs.
    study = load_study(_study(tmp_path, "some/model", sft=True, recipes=["dpo"]), tmp_path / "out")
    first, second = study.cell("tiny/sft/s1/train"), study.cell("tiny/dpo/s1/train")
    runs = tmp_path / "runs.txt"
    script = f"import sys; open({str(runs)!r}, 'a').write(sys.argv[1] + '\\n')"
    monkeypatch.setattr(runner, "command_of", lambda cell, program=None: [sys.executable, "-c", script, cell.id])
    run_study(study, only=[first.id], log=lambda line: None)
    finished = json.loads((study.folder(first) / MARKER).read_text())["finished"]
    # What SIGKILL leaves of a cell: a folder with partial output and no completion marker.
    study.folder(second).mkdir(parents=True)
    (study.folder(second) / "partial.bin").write_text("half a checkpoint")
    assert (cell_state(study, first), cell_state(study, second)) == ("done", "pending")

    lines: list[str] = []
    outcomes = run_study(study, only=[first.id, second.id], log=lines.append)
    assert outcomes[first.id] == "skipped (complete)" and f"{first.id}: complete, skipped" in "\n".join(lines)
    assert json.loads((study.folder(first) / MARKER).read_text())["finished"] == finished
    assert cell_state(study, second) == "done" and not (study.folder(second) / "partial.bin").exists()
    assert runs.read_text().split() == [first.id, second.id]  # the complete cell ran once


@pytest.mark.slow  # trains, evaluates and builds a board twice in subprocesses (minutes on 2 cores)
def test_a_study_runs_resumes_after_sigkill_and_builds_its_board(tmp_path):
    # Data and model generated by the study, SFT once, DPO trained from it, the board and the analysis at the end.
    path = _prepared_study(tmp_path)
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

    resumed = subprocess.run([*command, "--jobs", "2"], capture_output=True, text=True, timeout=900, check=False)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "tiny/sft/s1/train: complete, skipped" in resumed.stdout
    assert json.loads((study.folder(first) / MARKER).read_text())["finished"] == finished
    assert all(cell_state(study, cell) == "done" for cell in study.cells if cell.kind != "board")

    board = (out / "t" / "board" / "leaderboard.csv").read_text()
    assert all(name in board for name in ("tiny dpo (seed 1)", "tiny sft (seed 1)", "tiny base", "medbench_baseline",
                                          "prior_only", "medbench_vqa_rad_blind"))
    manifest = json.loads((study.folder(study.cell("tiny/dpo/s1/eval")) / "medbench-submission.json").read_text())
    assert manifest["base_model"] == "tiny sft (seed 1)" and manifest["training_metadata"] == "medbench_train.json"
    analysis = json.loads((out / "t" / "board" / "study.json").read_text())
    assert [claim["claim"] for claim in analysis["claims"]] == [
        "sft_learns_the_task", "preference_training_raises_margin", "copo_family_raises_lesion_evidence"]
    sft_vs = {(c["against"], c["quantity"], c["group"]) for c in analysis["comparisons"] if c["variant"] == "sft"}
    assert {("base", "accuracy", "all"), ("prior_only", "accuracy", "all"), ("medbench_baseline", "accuracy", "side"),
            ("sft (blind_accuracy)", "accuracy", "presence")} <= sft_vs
    # Each lesion kind is one piece of the first claim's evidence per reference, plus the blind comparison.
    kinds = [group for group in analysis["groups"] if group in ("presence", "side", "count")]
    assert len(analysis["claims"][0]["evidence"]) == 3 * len(kinds) and "conditional" in analysis["intervals"]
    dpo = next(row for row in analysis["estimates"] if row["variant"] == "dpo")
    assert dpo["correct"]["all"]["n"] == 16 and dpo["accuracy"]["all"]["n"] == 16
    assert dpo["lesion_evidence"]["all"]["low"] <= dpo["lesion_evidence"]["all"]["high"]
    assert dpo["blind_accuracy"]["all"]["n"] == 16 and "image_reliance" in dpo
    assert (out / "t" / "board" / "study.png").is_file()
    page = (out / "t" / "board" / "index.html").read_text()
    assert 'href="study.md"' in page and 'href="study.png"' in page  # the claims are linked from the board page
    assert "not evaluated on" not in page  # no notes about tasks the study did not ask for
    status = subprocess.run([*command[:4], "status", str(path), "--out", str(out)], capture_output=True, text=True,
                            check=True)
    assert status.stdout.strip().splitlines()[-1] == f"{len(study.cells)} done"
    report = subprocess.run([*command[:4], "report", str(path), "--out", str(out)], capture_output=True, text=True,
                            check=True)
    assert "tiny/dpo/s1/eval: medbench_vqa_rad overall" in report.stdout and "claim (tiny): SFT beats" in report.stdout


def test_differences_are_paired_over_shared_items_and_a_claim_needs_every_interval_above_zero():
    from medbench.study.analysis import ModelValues, _claim, _difference, _estimate

    def model(variant, per_seed):
        values = ModelValues("b", variant, list(per_seed))
        for seed, items in per_seed.items():
            for item, value in items.items():
                values.add("accuracy", seed, item, value)
        return values

    # Item "t:c" is only scored by one model: it is left out; seeds are paired (seed 1 with seed 1).
    mine = model("dpo", {1: {"t:a": 1.0, "t:b": 0.0, "t:c": 5.0}, 2: {"t:a": 1.0, "t:b": 1.0, "t:c": 5.0}})
    theirs = model("sft", {1: {"t:a": 0.0, "t:b": 0.0}, 2: {"t:a": 0.0, "t:b": 0.0}})
    facts = {"a": {"kind": "side", "lesions": 1}, "b": {"kind": "presence", "lesions": 0}}
    result = _difference("t", mine, "accuracy", theirs, "accuracy", "all", facts)
    assert result["n"] == 2 and result["difference"] == pytest.approx(0.75)
    assert result["low"] <= result["difference"] <= result["high"] and result["p"] is not None  # items only: 2 seeds
    side = _difference("t", mine, "accuracy", theirs, "accuracy", "side", facts)
    assert side["n"] == 1 and side["difference"] == pytest.approx(1.0)
    assert _estimate("t", mine, "accuracy", "with a lesion", facts)["n"] == 1
    # With three seeds the interval resamples seeds too: a seed that disagrees widens it.
    three = model("dpo", {s: {f"t:{i}": float(s == 3 or i % 2) for i in range(40)} for s in (1, 2, 3)})
    two = model("dpo", {s: {f"t:{i}": float(s == 3 or i % 2) for i in range(40)} for s in (1, 2)})
    wide, narrow = (_estimate("t", m, "accuracy", "all", {}) for m in (three, two))
    assert wide["high"] - wide["low"] > narrow["high"] - narrow["low"]
    above = {"low": 0.1, "difference": 0.2, "high": 0.3}
    spanning = {"low": -0.1, "difference": 0.2, "high": 0.5}
    assert _claim("b", "k", "s", [above, above])["holds"] is True
    assert _claim("b", "k", "s", [above, spanning])["holds"] is False
    assert _claim("b", "k", "s", [above, None])["holds"] is None  # a comparison could not be made: not measured


@pytest.mark.slow
def test_two_runs_of_a_study_give_identical_models_and_scores(tmp_path):
    # Same machine, same study file, two output folders: every trained model, answer and score is identical.
    path = _prepared_study(tmp_path, recipes=["dpo", "copo"])
    roots = []
    for name in ("first", "second"):
        out = tmp_path / name
        command = [sys.executable, "-m", "medbench", "study", "run", str(path), "--out", str(out), "--jobs", "2"]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
        assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
        roots.append(out / "t")
    first, second = roots
    models = sorted(path.relative_to(first) for path in first.rglob("model.safetensors"))
    assert len(models) == 4  # the generated base model, sft, dpo, copo
    for model in models:
        assert (first / model).read_bytes() == (second / model).read_bytes(), model
    from medbench.results import find_runs

    def lines(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    cells = sorted({path.parent.relative_to(first) for path in first.rglob("medbench-submission.json")})
    assert len(cells) == 6  # base, sft, dpo, copo, two references
    for cell in cells:
        # lmms-eval names its logs by date: match them by task.
        samples = [{task: path for run in find_runs(root / cell) for task, path in run.samples.items()}
                   for root in (first, second)]
        assert set(samples[0]) == set(samples[1]) == {"medbench_vqa_rad", "medbench_vqa_rad_blind"}
        for task, path in samples[0].items():
            answers = [[(row["filtered_resps"], row["overall"]) for row in lines(log)] for log in (path, samples[1][task])]
            assert answers[0] == answers[1], (cell, task)
    probes = sorted(path.relative_to(first) for path in first.rglob("scores.jsonl"))
    assert len(probes) == 4
    for probe in probes:
        assert lines(first / probe) == lines(second / probe), probe
    assert (json.loads((first / "board" / "study.json").read_text())["estimates"]
            == json.loads((second / "board" / "study.json").read_text())["estimates"])
