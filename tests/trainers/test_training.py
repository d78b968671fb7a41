"""Every recipe trains on the tiny LLaVA and the tiny Qwen2.5-VL, full fine-tuning and LoRA, end to end.

Each run takes two optimiser steps on CPU and writes the real outputs: checkpoint (or adapter + merged model),
metadata, log history and training-curve plot.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from _prefdata import FAST

from medbench.train.config import load_recipe, recipe_paths
from medbench.train.data import file_sha256, load_preference_file
from medbench.train.objectives import OBJECTIVES
from medbench.train.outputs import LOG_FILE, METADATA_FILE, PLOT_FILE
from medbench.train.run import MERGED_DIR, train

# Preference recipes; the online one (grpo) trains on its own data in test_grpo.py.
RECIPES = [path.stem for path in recipe_paths() if not load_recipe(path).online]
ARCHES = ["llava", "qwen2_5_vl"]


@pytest.mark.parametrize("mode", ["full", "lora"])
@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("recipe_name", RECIPES)
def test_recipe_trains_two_steps(tmp_path, tiny_model_dirs, pref_file, recipe_name, arch, mode):
    recipe = load_recipe(recipe_name, {**FAST, "use_lora": mode == "lora"})
    result = train(recipe, tiny_model_dirs[arch], pref_file, tmp_path / "run")

    steps = [entry for entry in result.log_history if "loss" in entry]
    assert [entry["step"] for entry in steps] == [1, 2]
    assert all(math.isfinite(entry["loss"]) for entry in steps)
    # After one update the policy differs from the reference (or, reference-free, the rewards differ).
    if recipe.objective == "sft":
        assert steps[0]["loss/nll"] == pytest.approx(steps[0]["loss"], rel=1e-5)
    else:
        assert steps[1]["rewards/chosen"] != 0.0 or steps[1]["rewards/rejected"] != 0.0
    if recipe.objective == "mdpo":
        assert {"loss/dpo", "loss/copo", "loss/anchor"} <= set(steps[0])

    out = result.output_dir
    assert (out / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / LOG_FILE).read_text().splitlines()) == len(result.log_history)
    metadata = json.loads((out / METADATA_FILE).read_text())
    assert metadata["recipe"] == recipe_name and metadata["objective"] == recipe.objective
    assert metadata["data"]["sha256"] == file_sha256(pref_file) and metadata["data"]["records"] == 4
    assert metadata["hyperparameters"]["beta"] == 0.1 and metadata["hyperparameters"]["precision"] == "fp32"
    assert metadata["versions"]["trl"].startswith("1.16") and metadata["versions"]["torch"]
    assert metadata["result"]["global_step"] == 2
    assert (out / "chat_template.jinja").is_file() or "chat_template" in (out / "processor_config.json").read_text()
    if mode == "lora":
        assert (out / "adapter_model.safetensors").is_file()
        assert result.model_dir == out / MERGED_DIR
        assert (result.model_dir / "model.safetensors").is_file() and (result.model_dir / "config.json").is_file()
        assert metadata["outputs"]["merged"] == MERGED_DIR
    else:
        assert result.model_dir == out and (out / "model.safetensors").is_file()
    assert metadata["outputs"]["evaluate"] == str(result.model_dir.resolve())


def test_merged_lora_model_equals_base_plus_adapter(tmp_path, tiny_model_dirs, pref_file):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from medbench.train.collator import PreferenceCollator

    recipe = load_recipe("dpo", {**FAST, "use_lora": True, "learning_rate": "5e-2"})
    result = train(recipe, tiny_model_dirs["llava"], pref_file, tmp_path / "run")
    processor = AutoProcessor.from_pretrained(result.model_dir)
    batch = PreferenceCollator(processor, OBJECTIVES["dpo"], max_length=128)(load_preference_file(pref_file))
    inputs = {k: v for k, v in batch.items() if k != "completion_mask"}
    merged = AutoModelForImageTextToText.from_pretrained(result.model_dir)
    adapted = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(tiny_model_dirs["llava"]), result.output_dir
    )
    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dirs["llava"])
    with torch.no_grad():
        merged_logits = merged(**inputs).logits
        torch.testing.assert_close(merged_logits, adapted(**inputs).logits, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(merged_logits, base(**inputs).logits, atol=1e-4)  # the adapter did learn


def test_full_checkpoint_reloads_for_generation(tmp_path, tiny_model_dirs, pref_file):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from medbench.train.collator import render_prompt_and_answers
    from medbench.train.data import load_image

    recipe = load_recipe("mdpo", FAST)
    result = train(recipe, tiny_model_dirs["qwen2_5_vl"], pref_file, tmp_path / "run")
    model = AutoModelForImageTextToText.from_pretrained(result.model_dir)
    processor = AutoProcessor.from_pretrained(result.model_dir)
    record = load_preference_file(pref_file)[0]
    prompt, _ = render_prompt_and_answers(processor, record["question"], {})
    inputs = processor(images=[[load_image(record["image"])]], text=[prompt], return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]
