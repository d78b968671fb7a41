"""A converted tiny LLaVA-Med-format model through lmms-eval's ``llava_hf``, ``medbench_hf`` and ``medbench train``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lmms_here import lmms_eval_in_process

pytest.importorskip("sentencepiece")
pytest.importorskip("decord")  # lmms-eval's llava_hf imports it
pytestmark = pytest.mark.slow

DEMO_IMAGES = Path(__file__).resolve().parents[2] / "medbench" / "data" / "demo" / "images"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from _llava_originals import build_original

    from medbench.cli import main

    root = tmp_path_factory.mktemp("llava_med_e2e")
    original = build_original(root, "llava_mistral")
    assert main(["convert", str(original["ckpt"]), str(root / "hf")]) == 0
    return root / "hf"


@pytest.mark.parametrize(
    ("model", "model_args"), [("llava_hf", "device=cpu,device_map=cpu"), ("medbench_hf", "device=cpu")]
)
def test_lmms_eval_runs_the_converted_model(converted, tmp_path, model, model_args):
    from medbench.commands.demo import demo_environment
    from medbench.commands.eval import run_lmms_eval
    from medbench.results import find_runs

    args = ["--model", model, "--model_args", f"pretrained={converted},{model_args}", "--tasks", "medbench_vqa_rad",
            "--limit", "2", "--output_path", str(tmp_path), "--verbosity", "WARNING"]
    with lmms_eval_in_process():
        run_lmms_eval(args, demo_environment())
    run = find_runs(tmp_path)[-1]
    assert run.raw["n-samples"]["medbench_vqa_rad"]["effective"] == 2
    rows = [json.loads(line) for line in run.samples["medbench_vqa_rad"].read_text().splitlines()]
    assert len(rows) == 2 and all(isinstance(row["filtered_resps"], str) for row in rows)


def test_medbench_train_two_steps_with_the_llava_med_profile(converted, tmp_path):
    from medbench.cli import main

    records = [
        {"id": f"r{i}", "image": str(DEMO_IMAGES / image), "question": question, "chosen": chosen, "rejected": rejected}
        for i, (image, question, chosen, rejected) in enumerate([
            ("ct_small.png", "Is this a CT scan?", "Yes, a CT scan.", "No, an MRI scan."),
            ("brain_mri.png", "Which organ is shown?", "The brain.", "The liver."),
            ("ct_small.png", "What modality is this?", "Computed tomography.", "Ultrasound."),
            ("brain_mri.png", "Is this an MRI?", "Yes, of the head.", "No, a chest radiograph."),
        ])
    ]
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    out = tmp_path / "run"
    code = main([
        "train", "--config", "dpo", "--model", str(converted), "--data", str(data), "--output_dir", str(out),
        "--backbone", "llava_med_v1_5", "--use_lora", "--max_steps", "2", "--per_device_train_batch_size", "2",
        "--learning_rate", "1e-4", "--warmup_steps", "0.0", "--save_strategy", "no", "--max_length", "128",
        "--lora_r", "4", "--lora_alpha", "8", "--dataloader_num_workers", "0",
    ])
    assert code == 0
    metadata = json.loads((out / "medbench_train.json").read_text())
    assert metadata["config"]["backbone"] == "llava_med_v1_5"
    assert (out / "merged" / "config.json").is_file()
