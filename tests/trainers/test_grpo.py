"""The `grpo` recipe: TRL's GRPOTrainer with medbench rewards, on the tiny LLaVA and the tiny Qwen2.5-VL.

Kept small for a 2-core machine: 3 steps, 2 answers per question, completions of at most 4 tokens.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _prefdata import write_jsonl
from test_resume import KILLED_RUN

from medbench.train.config import RecipeError, load_recipe
from medbench.train.outputs import METADATA_FILE
from medbench.train.run import MERGED_DIR, latest_checkpoint, train

REPO = Path(__file__).resolve().parents[2]
# 4 completions per step = 2 questions x 2 answers; unshuffled, so every step holds one closed and one open question.
SETTINGS = {
    "max_steps": 3,
    "per_device_train_batch_size": 4,
    "num_generations": 2,
    "max_completion_length": 4,
    "learning_rate": 1e-3,
    "warmup_steps": 0.0,
    "save_strategy": "no",
    "shuffle_dataset": False,
    "lora_r": 4,
    "lora_alpha": 8,
    "dataloader_num_workers": 0,
}
ROWS = [
    {"id": "q1", "image": "images/retina.png", "question": "Is the optic disc visible?", "answer": "yes", "answer_type": "CLOSED"},
    {"id": "q2", "image": "images/ihc.png", "question": "What does the brown staining show?", "answer": "positive cells", "answer_type": "OPEN"},
    {"id": "q3", "image": "images/ct_small.dcm", "question": "Is this an MRI?", "answer": "no", "answer_type": "CLOSED"},
    {"id": "q4", "image": "images/retina.png", "question": "Which organ is shown?", "answer": "the eye", "answer_type": "OPEN"},
]


@pytest.fixture(scope="module")
def vqa_file(pref_dir) -> Path:
    """A supervised VQA file (question, image, answer, answer_type) beside the trainer tests' images."""
    return write_jsonl(pref_dir / "grpo_vqa.jsonl", ROWS)


def _steps(history: list[dict]) -> list[dict]:
    return [entry for entry in history if "loss" in entry]


@pytest.fixture(scope="module")
def llava_run(tmp_path_factory, tiny_model_dirs, vqa_file):
    out = tmp_path_factory.mktemp("grpo") / "llava"
    return train(load_recipe("grpo", SETTINGS), tiny_model_dirs["llava"], vqa_file, out)


def _check_trained(result, recipe_name: str = "grpo") -> None:
    steps = _steps(result.log_history)
    assert [entry["step"] for entry in steps] == [1, 2, 3]
    for entry in steps:
        assert math.isfinite(entry["loss"]) and math.isfinite(entry["reward"])
        # one closed and one open question per step: each reward scored some answers
        assert math.isfinite(entry["rewards/closed_exact/mean"]) and math.isfinite(entry["rewards/open_recall/mean"])
        assert 0.0 <= entry["closed_exact/unparsed"] <= 1.0
    metadata = json.loads((result.output_dir / METADATA_FILE).read_text())
    assert metadata["recipe"] == recipe_name and metadata["objective"] == "grpo"
    assert metadata["training_args"]["loss_type"] == "dapo" and metadata["training_args"]["num_generations"] == 2
    assert metadata["config"]["rewards"] == ["closed_exact", "open_recall"]
    assert metadata["training_args"]["reward_weights"] == [1.0, 1.0]
    assert metadata["hyperparameters"]["beta"] == 0.0 and metadata["result"]["global_step"] == 3
    assert metadata["data"]["records"] == len(ROWS)


def test_grpo_trains_three_steps_on_tiny_llava(llava_run):
    _check_trained(llava_run)
    assert llava_run.model_dir == llava_run.output_dir and (llava_run.output_dir / "model.safetensors").is_file()


def test_grpo_trains_three_steps_on_tiny_qwen2_5_vl_with_lora(tmp_path, tiny_model_dirs, vqa_file):
    recipe = load_recipe("grpo", {**SETTINGS, "use_lora": True, "loss_type": "dr_grpo"})
    result = train(recipe, tiny_model_dirs["qwen2_5_vl"], vqa_file, tmp_path / "run")
    steps = _steps(result.log_history)
    assert [entry["step"] for entry in steps] == [1, 2, 3] and all(math.isfinite(e["loss"]) for e in steps)
    assert result.model_dir == tmp_path / "run" / MERGED_DIR and (result.model_dir / "model.safetensors").is_file()
    assert json.loads(result.metadata_path.read_text())["training_args"]["loss_type"] == "dr_grpo"


def test_grpo_recipe_settings_are_checked_before_anything_loads(tmp_path, vqa_file):
    with pytest.raises(RecipeError, match=r"`rewards` has unknown rewards \['exact'\]; choose from closed_exact"):
        load_recipe("grpo", {"rewards": "exact"})
    with pytest.raises(RecipeError, match=r"`reward_weights` has 1 values for 2 rewards"):
        train(load_recipe("grpo", {**SETTINGS, "reward_weights": "1.0"}), "unused", vqa_file, tmp_path / "a")
    with pytest.raises(RecipeError, match=r"unknown setting `max_length` \(not a recipe field nor a trl.GRPOConfig"):
        train(load_recipe("grpo", {"max_length": "64"}), "unused", vqa_file, tmp_path / "b")
    with pytest.raises(RecipeError, match="`loss_type` is 'sigmoid'; choose from dapo, grpo, dr_grpo"):
        train(load_recipe("grpo", {"loss_type": "sigmoid"}), "unused", vqa_file, tmp_path / "c")
    with pytest.raises(RecipeError, match="`loss_type` is managed by medbench train"):
        load_recipe("dpo", {"loss_type": "dapo"})  # DPO recipes keep objective/trl_loss_type
    # A study-wide DPO setting is un-stated for GRPO with null (medbench/studies/*.yaml `recipe_train`).
    from medbench.train.run import build_training_args

    assert not hasattr(build_training_args(load_recipe("grpo", {"max_length": "null"}), tmp_path / "d"), "max_length")


def test_grpo_questions_are_wrapped_once_in_the_evaluation_prompt(tmp_path, pref_dir):
    from medbench.train.grpo import load_prompts

    suffix = "\nAnswer the question using a single word or phrase."
    rows = [{**ROWS[0], "image": str(pref_dir / ROWS[0]["image"])},
            {**ROWS[1], "image": str(pref_dir / ROWS[1]["image"]), "question": ROWS[1]["question"] + suffix}]
    data = write_jsonl(tmp_path / "mixed.jsonl", rows)  # the second as `prefs build --prompt_of` writes it
    loaded = load_prompts(data, load_recipe("grpo"))
    assert [row["question"] for row in loaded] == [ROWS[0]["question"] + suffix, ROWS[1]["question"] + suffix]
    assert [row["answer_type"] for row in loaded] == ["CLOSED", "OPEN"]
    assert load_prompts(data, load_recipe("grpo", {"prompt_of": "null"}))[0]["question"] == ROWS[0]["question"]


def test_grpo_prompt_is_the_evaluation_prompt(tiny_model_dirs, vqa_file, tmp_path):
    """The tokens GRPOTrainer generates from are the tokens medbench_hf evaluates on, for the same question."""
    from trl.data_utils import prepare_multimodal_messages

    from medbench.lmms.common import doc_to_text
    from medbench.lmms.models.hf import MedbenchHF
    from medbench.train.grpo import task_prompt
    from medbench.train.run import build_trainer

    recipe = load_recipe("grpo", {**SETTINGS, "system_prompt": "Answer briefly."})
    for arch in ("llava", "qwen2_5_vl"):
        run = build_trainer(recipe, tiny_model_dirs[arch], vqa_file, tmp_path / arch)
        row = run.trainer.train_dataset[1]
        evaluator = MedbenchHF(pretrained=str(tiny_model_dirs[arch]), device="cpu", system_prompt="Answer briefly.")
        eval_text = evaluator.render(doc_to_text({"question": ROWS[1]["question"]}, task_prompt("medbench_vqa_rad")), 1)
        assert f"{ROWS[1]['question']}\nAnswer the question using a single word or phrase." in eval_text
        messages = prepare_multimodal_messages(row["prompt"], [row["image"]])
        train_text = run.processor.apply_chat_template([messages], add_generation_prompt=True, tokenize=False)[0]
        assert train_text.encode() == eval_text.encode(), arch
        prompt_ids, _, _ = run.trainer._tokenize_prompts([messages])  # the call GRPOTrainer generates from
        assert list(prompt_ids[0]) == evaluator.encode([eval_text], [row["image"]])["input_ids"][0].tolist(), arch


@pytest.mark.slow  # an lmms-eval process (~45 s); test_lmms_eval.py runs the same path for every suite
def test_grpo_checkpoint_evaluates_through_lmms_eval(llava_run, tmp_path):
    from medbench.commands.demo import demo_environment

    model_dir = Path(json.loads(llava_run.metadata_path.read_text())["outputs"]["evaluate"])
    out = tmp_path / "eval"
    command = [
        str(Path(sys.executable).parent / "lmms-eval"), "--include_path", str(REPO / "tasks"), "--model", "medbench_hf",
        "--model_args", f"pretrained={model_dir}", "--tasks", "medbench_vqa_rad", "--limit", "4", "--output_path", str(out),
    ]
    env = {**demo_environment(), "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result_files = list(out.rglob("*_results.json"))  # lmms-eval can exit 0 after a failed run
    assert len(result_files) == 1, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads(result_files[0].read_text())["results"]["medbench_vqa_rad"]
    assert 0.0 <= results["overall,none"] <= 1.0 and results["n_closed,none"] + results["n_open,none"] == 4




@pytest.mark.slow
def test_sigkilled_grpo_run_resumes(tmp_path, tiny_model_dirs, vqa_file):
    settings = {**SETTINGS, "save_strategy": "steps", "save_steps": 1, "save_total_limit": None}
    model = tiny_model_dirs["llava"]
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(model), str(vqa_file), str(tmp_path / "run"), json.dumps(settings), "grpo"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert latest_checkpoint(tmp_path / "run").name == "checkpoint-2"
    assert not (tmp_path / "run" / "model.safetensors").exists()

    resumed = train(load_recipe("grpo", settings), model, vqa_file, tmp_path / "run")
    metadata = json.loads(resumed.metadata_path.read_text())
    assert metadata["resumed_from"] == "checkpoint-2" and metadata["result"]["global_step"] == 3
    assert [entry["step"] for entry in _steps(resumed.log_history)] == [1, 2, 3]
    with pytest.raises(RecipeError, match="its recipe settings differ"):
        train(load_recipe("grpo", {**settings, "rewards": "closed_exact", "reward_weights": "1.0"}), model, vqa_file,
              tmp_path / "run")
