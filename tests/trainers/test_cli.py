"""The ``medbench-train`` command line, the generated docs, the backbone profiles and import cost."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _prefdata import FAST, RECORDS, write_jsonl

from medbench.train.cli import main, parse_overrides
from medbench.train.config import list_backbones, list_recipes
from medbench.train.docs import README, generated_block, render_readme

REPO = Path(__file__).resolve().parents[2]


def fast_args() -> list[str]:
    return [token for key, value in FAST.items() for token in (f"--{key}", str(value))]


def test_list_is_generated_from_the_recipe_files(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for recipe in list_recipes():
        assert f"  {recipe.name} " in out and recipe.description in out
    for profile in list_backbones():
        assert profile.name in out


def test_console_script_lists_recipes():
    script = shutil.which("medbench-train") or str(Path(sys.executable).parent / "medbench-train")
    done = subprocess.run([script, "--list"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "error_targeted_copo_only" in done.stdout and "llava_med_v1_5" in done.stdout


def test_readme_recipe_table_is_current():
    text = README.read_text(encoding="utf-8")
    assert render_readme(text) == text, "trainers/README.md is stale: run `python -m medbench.train.docs`"
    for recipe in list_recipes():
        assert f"| `{recipe.name}` |" in generated_block()


def test_override_parsing():
    assert parse_overrides(["--beta", "0.2", "--use_lora", "--max-steps=3", "--save_strategy", "no"]) == {
        "beta": "0.2",
        "use_lora": True,
        "max_steps": "3",
        "save_strategy": "no",
    }


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_recipe_whose_data_lacks_a_field_stops_with_one_line(tmp_path, tiny_model_dirs, pref_dir, capsys):
    data = write_jsonl(
        tmp_path / "no_noise.jsonl", [{k: v for k, v in r.items() if k != "rejected_image"} for r in RECORDS]
    )
    code, _out, err = run_cli(
        [
            "--config",
            "trainers/recipes/copo.yaml",
            "--model",
            tiny_model_dirs["llava"],
            "--data",
            data,
            "--output_dir",
            tmp_path / "out",
            "--image_root",
            pref_dir,
        ],
        capsys,
    )
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("medbench: error: recipe 'copo' needs field 'rejected_image'")
    assert not (tmp_path / "out").exists()  # stopped before loading the model


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config", "dpo"], "missing --model, --data, --output_dir"),
        (["--config", "nope", "--model", "m", "--data", "d", "--output_dir", "o"], "recipe file not found: nope"),
        (
            ["--config", "dpo", "--model", "m", "--data", "d", "--output_dir", "o", "--bogus", "1"],
            "recipe 'dpo': unknown setting `bogus`",
        ),
        (
            ["--config", "dpo", "--model", "m", "--data", "d", "--output_dir", "o", "--beta", "-1"],
            "recipe 'dpo': `beta` must be > 0",
        ),
        (
            ["--config", "dpo", "--model", "m", "--data", "/no/such.jsonl", "--output_dir", "o"],
            "preference data file not found: /no/such.jsonl",
        ),
        (
            ["--config", "grpo", "--model", "m", "--data", "medbench_vqa_rad", "--output_dir", "o"],
            ("--data medbench_vqa_rad is a medbench task, not a file: build the training records from it first "
             "(medbench prefs build medbench_vqa_rad --recipe grpo --output_dir DIR)"),
        ),
        (
            ["--config", "dpo", "--model", "m", "--data", "d", "--output_dir", "o", "stray"],
            "unexpected argument 'stray'",
        ),
    ],
)
def test_user_errors_are_one_line(capsys, argv, message):
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    assert message in err and err.count("\n") == 1


def test_unloadable_model_is_one_line(tmp_path, pref_file, capsys):
    (tmp_path / "empty_model").mkdir()
    code, _, err = run_cli(
        ["--config", "dpo", "--model", tmp_path / "empty_model", "--data", pref_file, "--output_dir", tmp_path / "o"],
        capsys,
    )
    assert code == 2
    # Progress logs may precede it on stderr; the error itself is the one last line, without a traceback.
    last = err.strip().splitlines()[-1]
    assert last.startswith(
        f"medbench: error: cannot load an image-text-to-text model from {tmp_path / 'empty_model'}"
    )
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("backbone", "arch", "marker"),
    [("llava_med_v1_5", "llava", "[INST]"), ("huatuogpt_vision_qwen2_5vl", "qwen2_5_vl", "<|vision_start|>")],
)
def test_backbone_profiles_on_tiny_same_architecture_models(
    tmp_path, tiny_model_dirs, pref_file, capsys, backbone, arch, marker
):
    out_dir = tmp_path / "run"
    code, out, err = run_cli(
        [
            "--config",
            "dpo",
            "--model",
            tiny_model_dirs[arch],
            "--data",
            pref_file,
            "--output_dir",
            out_dir,
            "--backbone",
            backbone,
            "--use_lora",
            *fast_args(),
        ],
        capsys,
    )
    assert code == 0, err
    assert f"model for evaluation: {out_dir / 'merged'}" in out
    metadata = json.loads((out_dir / "medbench_train.json").read_text())
    assert metadata["config"]["backbone"] == backbone
    assert metadata["hyperparameters"]["max_length"] == 128  # the command line wins over the profile's 1024/2048
    assert metadata["training_args"]["max_length"] == 128 and metadata["config"]["dpo_args"]["max_length"] == "128"
    from transformers import AutoProcessor

    from medbench.train.collator import render_prompt_and_answers

    processor = AutoProcessor.from_pretrained(out_dir / "merged")
    prompt, answers = render_prompt_and_answers(processor, "Is the lung normal?", {"chosen": "yes"})
    assert marker in prompt and answers["chosen"].strip().startswith("yes")


def test_backbone_profile_for_another_architecture_is_refused(tmp_path, tiny_model_dirs, pref_file, capsys):
    code, _, err = run_cli(
        [
            "--config",
            "dpo",
            "--model",
            tiny_model_dirs["qwen2_vl"],
            "--data",
            pref_file,
            "--output_dir",
            tmp_path,
            "--backbone",
            "llava_med_v1_5",
        ],
        capsys,
    )
    assert code == 2
    assert "backbone profile 'llava_med_v1_5' is for llava models, but" in err and "is qwen2_vl" in err


def test_tiny_qwen2_vl_trains_too(tmp_path, tiny_model_dirs, pref_file, capsys):
    code, _, err = run_cli(
        [
            "--config",
            "mmedpo",
            "--model",
            tiny_model_dirs["qwen2_vl"],
            "--data",
            pref_file,
            "--output_dir",
            tmp_path / "run",
            *fast_args(),
        ],
        capsys,
    )
    assert code == 0, err


def test_import_trainers_is_light():
    code = (
        "import sys, trainers\n"
        "from medbench.train.cli import main\n"
        "assert main(['--list']) == 0\n"
        "heavy = [m for m in ('torch', 'trl', 'transformers', 'peft', 'lmms_eval') if m in sys.modules]\n"
        "assert not heavy, heavy  # --list reads the recipes' names and descriptions only\n"
        "from medbench.train import load_recipe, list_recipes, OBJECTIVES\n"
        "list_recipes(); load_recipe('mdpo')\n"
        "heavy = [m for m in ('torch', 'trl', 'peft', 'lmms_eval') if m in sys.modules]\n"
        "assert not heavy, heavy  # transformers' HfArgumentParser types the settings, without torch\n"
    )  # that the torch-backed names then resolve is test_lazy_exports_name_every_loss_function's (in this process)
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr


def test_lora_without_merge_saves_only_the_adapter(tmp_path, tiny_model_dirs, pref_file, capsys):
    out_dir = tmp_path / "run"
    code, out, err = run_cli(
        [
            "--config",
            "dpo",
            "--model",
            tiny_model_dirs["llava"],
            "--data",
            pref_file,
            "--output_dir",
            out_dir,
            "--use_lora",
            "--merge_lora",
            "false",
            *fast_args(),
        ],
        capsys,
    )
    assert code == 0, err
    assert f"LoRA adapter (not merged: merge_lora is false) in {out_dir}" in out
    assert (out_dir / "adapter_model.safetensors").is_file() and not (out_dir / "merged").exists()
    assert json.loads((out_dir / "medbench_train.json").read_text())["outputs"]["evaluate"] is None


def test_system_prompt_is_rendered_before_the_question(tiny_model_dirs):
    from transformers import AutoProcessor

    from medbench.train.collator import render_prompt_and_answers

    processor = AutoProcessor.from_pretrained(tiny_model_dirs["qwen2_5_vl"])
    prompt, answers = render_prompt_and_answers(processor, "Is it normal?", {"chosen": "yes"}, "You are a radiologist.")
    assert prompt.index("You are a radiologist.") < prompt.index("<|vision_start|>") < prompt.index("Is it normal?")
    assert answers["chosen"].startswith("yes")


def test_lazy_exports_name_every_loss_function():
    import medbench.train
    from medbench.train import losses

    lazy_losses = {name for name, module in medbench.train._LAZY.items() if module == "medbench.train.losses"}
    assert lazy_losses == set(losses.__all__)
    assert all(getattr(medbench.train, name) is getattr(losses, name) for name in lazy_losses)
