"""Checkpoints from medbench-train evaluate: a merged mDPO LoRA through lmms-eval on a demo task, a full SFT run loaded
as lmms-eval's ``medbench_hf`` loads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _prefdata import FAST
from lmms_here import lmms_eval_here

from medbench.commands.demo import demo_environment
from medbench.train.config import load_recipe
from medbench.train.run import train

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("recipe_name, lora", [("mdpo", True), ("sft", False)])
def test_trained_checkpoint_evaluates_on_a_demo_task(tmp_path, tiny_model_dirs, pref_file, recipe_name, lora):
    result = train(
        load_recipe(recipe_name, {**FAST, "use_lora": lora}), tiny_model_dirs["llava"], pref_file, tmp_path / "run"
    )
    metadata = json.loads(result.metadata_path.read_text())
    model_dir = Path(metadata["outputs"]["evaluate"])  # what the metadata tells users to evaluate
    assert model_dir == ((tmp_path / "run" / "merged") if lora else (tmp_path / "run")).resolve()
    if not lora:
        # The full checkpoint has the layout of the tiny models the shared demo run evaluates through lmms-eval
        # (tests/conftest.py): one lmms-eval process, for the merged LoRA, is enough here. Load it as medbench_hf
        # does, in this process.
        from medbench.hfload import load_vision_language_model

        model, processor = load_vision_language_model(model_dir, dtype="float32", device="cpu")
        assert model.config.model_type == "llava" and processor.chat_template
        return

    out = tmp_path / "eval"
    # lmms-eval's own entry point, in this process (lmms_here): the bare CLI in a child process is
    # tests/medbench/test_tasklink.py's, this test is about the checkpoint.
    args = ["--include_path", str(REPO / "tasks"), "--model", "medbench_hf", "--model_args", f"pretrained={model_dir}",
            "--tasks", "medbench_vqa_rad", "--limit", "4", "--output_path", str(out)]
    assert lmms_eval_here(args, demo_environment()) == 0
    # lmms-eval can exit 0 after a failed run, so check that results were written.
    result_files = list(out.rglob("*_results.json"))
    assert len(result_files) == 1, "lmms-eval wrote no results (its log is above)"
    results = json.loads(result_files[0].read_text())["results"]["medbench_vqa_rad"]
    assert 0.0 <= results["overall,none"] <= 1.0
    assert results["n_closed,none"] + results["n_open,none"] == 4
