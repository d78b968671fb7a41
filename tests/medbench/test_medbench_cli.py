"""The medbench command line: user mistakes end in one line on stderr and exit status 2."""

import json

from medbench.cli import main
from medbench.commands.eval import prepare_lmms_args
from medbench.taskfiles import tasks_dir


def test_tasks_dir_and_listing(capsys):
    assert main(["tasks-dir"]) == 0
    assert capsys.readouterr().out.strip() == str(tasks_dir())
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "medbench_mimic_cxr" in out and "licensed: local only" in out and "group medbench:" in out


def test_data_check_on_demo(capsys, monkeypatch):
    monkeypatch.setenv("MEDBENCH_DATA", "demo")
    assert main(["data", "check", "medbench_vqa", "medbench_amboss"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("medbench_vqa_rad: 24 documents from demo:") and "(15 closed, 9 open)" in out[0]
    assert len(out) == 4


def test_data_check_reports_bad_rows_in_one_line(capsys, monkeypatch, tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"id": 1, "image": "x.png", "question": "q"}) + "\n")
    monkeypatch.setenv("MEDBENCH_VQA_RAD", str(data))
    assert main(["data", "check", "medbench_vqa_rad"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("medbench: error: ") and "row 1: missing field 'answer'" in err


def test_data_check_unknown_task(capsys):
    assert main(["data", "check", "vqa_rad"]) == 2


def test_eval_fills_in_include_path_output_and_samples():
    args = prepare_lmms_args(["--model", "medbench_baseline", "--tasks", "medbench_vqa"])
    assert args[args.index("--include_path") + 1] == str(tasks_dir())
    assert args[args.index("--output_path") + 1] == "medbench-results"
    assert "--log_samples" in args
    kept = prepare_lmms_args(["--tasks", "medbench", "--output_path=out", "--log_samples"])
    assert kept.count("--log_samples") == 1 and "--output_path" not in kept


def test_eval_refuses_a_second_include_path(capsys):
    assert main(["eval", "--model", "x", "--include_path", "elsewhere", "--tasks", "medbench"]) == 2
    assert "sets --include_path" in capsys.readouterr().err


def test_eval_checks_data_before_starting_lmms_eval(capsys, monkeypatch):
    monkeypatch.delenv("MEDBENCH_DATA", raising=False)
    monkeypatch.delenv("MEDBENCH_MIMIC_CXR", raising=False)
    assert main(["eval", "--model", "medbench_baseline", "--tasks", "medbench_mimic_cxr"]) == 2
    assert "medbench_mimic_cxr has no local data" in capsys.readouterr().err


def test_eval_names_group_members_when_the_group_name_is_also_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert prepare_lmms_args(["--tasks", "medbench_vqa"])[1] == "medbench_vqa"
    (tmp_path / "medbench_vqa").mkdir()  # as in a checkout, where medbench/ exists next to the tasks
    args = prepare_lmms_args(["--tasks=medbench_vqa"])
    assert args[0] == "--tasks=medbench_vqa_rad,medbench_slake,medbench_pathvqa"
