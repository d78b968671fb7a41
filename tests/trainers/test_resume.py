"""Resume after SIGKILL: the resumed run ends with the same weights and logged losses as an uninterrupted one."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from _prefdata import FAST
from safetensors.torch import load_file

from medbench.train.config import RecipeError, load_recipe
from medbench.train.run import FINGERPRINT_FILE, latest_checkpoint, train

SETTINGS = {**FAST, "max_steps": 4, "save_strategy": "steps", "save_steps": 1, "save_total_limit": None,
            "learning_rate": "1e-3"}

# Trains a recipe in a fresh process and SIGKILLs itself as step 3 begins, i.e. after checkpoint-2 was saved
# (argv: model, data, output folder, settings as JSON, recipe name; test_grpo runs it for the grpo recipe).
KILLED_RUN = textwrap.dedent(
    """
    import json, os, signal, sys
    from transformers import TrainerCallback
    from medbench.train.config import load_recipe
    from medbench.train.run import train

    class KillAfterStep2(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGKILL)

    model, data, out, settings, recipe = sys.argv[1:6]
    train(load_recipe(recipe, json.loads(settings)), model, data, out, callbacks=[KillAfterStep2()])
    """
)


def _losses(history):
    return [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]


def test_sigkilled_run_resumes_to_the_uninterrupted_result(tmp_path, tiny_model_dirs, pref_file, capfd, caplog):
    model = tiny_model_dirs["llava"]
    recipe = load_recipe("dpo", SETTINGS)
    caplog.set_level(logging.INFO, logger="medbench.train")
    straight = train(recipe, model, pref_file, tmp_path / "straight")
    assert "error types: " in caplog.text and "image-side term" not in caplog.text  # plain DPO routes nothing

    killed = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(model), str(pref_file), str(tmp_path / "resumed"), json.dumps(SETTINGS), "dpo"],
        capture_output=True, text=True, timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    checkpoint = latest_checkpoint(tmp_path / "resumed")
    assert checkpoint is not None and checkpoint.name == "checkpoint-2"
    assert not (tmp_path / "resumed" / "model.safetensors").exists()  # the run really did not finish

    caplog.clear()
    resumed = train(load_recipe("dpo", SETTINGS), model, pref_file, tmp_path / "resumed")  # resume="auto"
    printed = capfd.readouterr()
    # The weights did load (checked below): transformers' list of every weight as missing is a false alarm.
    assert "There were missing keys" not in caplog.text + printed.err and "unexpected keys" not in caplog.text + printed.err
    metadata = json.loads(resumed.metadata_path.read_text())
    assert metadata["resumed_from"] == "checkpoint-2" and metadata["result"]["global_step"] == 4

    assert [step for step, _ in _losses(resumed.log_history)] == [1, 2, 3, 4]
    resumed_losses = [loss for _, loss in _losses(resumed.log_history)]
    assert resumed_losses == pytest.approx([loss for _, loss in _losses(straight.log_history)], rel=1e-6, abs=1e-7)
    a = load_file(straight.output_dir / "model.safetensors")
    b = load_file(resumed.output_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-7, msg=name)
    initial = load_file(model / "model.safetensors")
    assert any(not torch.equal(initial[name], a[name]) for name in a if name in initial)  # it did train

    # Another recipe or other data on the same folder is refused in one line, before any model loads.
    with pytest.raises(RecipeError, match=r"cannot resume .*checkpoint-4: its recipe settings differ"):
        train(load_recipe("dpo", {**SETTINGS, "beta": "0.2"}), model, pref_file, tmp_path / "resumed")
    with pytest.raises(RecipeError, match=r"cannot resume .*checkpoint-4: it was trained from --model .*pass the same --model"):
        train(load_recipe("dpo", SETTINGS), tiny_model_dirs["qwen2_vl"], pref_file, tmp_path / "resumed")
    other = tmp_path / "other.jsonl"
    other.write_text(pref_file.read_text().replace("visible on the left", "seen on the left"))
    with pytest.raises(RecipeError, match=r"its data file differ"):
        train(load_recipe("dpo", SETTINGS), model, other, tmp_path / "resumed", image_root=pref_file.parent)


def test_incomplete_checkpoints_are_skipped_and_resume_requires_one(tmp_path, pref_file):
    (tmp_path / "checkpoint-7").mkdir()
    (tmp_path / "checkpoint-7" / "trainer_state.json").write_text("{}")  # killed before the fingerprint
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-3" / FINGERPRINT_FILE).write_text("{}")
    assert latest_checkpoint(tmp_path).name == "checkpoint-3"
    with pytest.raises(RecipeError, match="--resume: no complete checkpoint"):
        train(load_recipe("dpo", SETTINGS), "unused", pref_file, tmp_path / "empty", resume=True)
