"""Full fine-tuning (the study's setting) from folders written by ``medbench convert``, with each study profile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("sentencepiece")
pytestmark = pytest.mark.slow

DEMO_IMAGES = Path(__file__).resolve().parents[2] / "medbench" / "data" / "demo" / "images"


@pytest.mark.parametrize(("family", "backbone"), [("llava_mistral", "llava_med_v1_5"), ("llava_qwen2", "huatuogpt_vision_7b")])
def test_full_fine_tuning_from_a_converted_folder(tmp_path, family, backbone):
    from _llava_originals import build_original
    from safetensors.torch import load_file

    from medbench.cli import main

    original = build_original(tmp_path, family)
    converted = tmp_path / "hf"
    assert main(["convert", str(original["ckpt"]), str(converted)]) == 0
    config = json.loads((converted / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"] and config["model_type"] == "llava"

    records = [
        {"id": f"r{i}", "image": str(DEMO_IMAGES / image), "question": question, "chosen": chosen, "rejected": rejected}
        for i, (image, question, chosen, rejected) in enumerate([
            ("ct_small.png", "Is this a CT scan?", "Yes, a CT scan.", "No, an MRI scan."),
            ("brain_mri.png", "Which organ is shown?", "The brain.", "The liver."),
        ])
    ]
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    out = tmp_path / "run"
    code = main([
        "train", "--config", "dpo", "--model", str(converted), "--data", str(data), "--output_dir", str(out),
        "--backbone", backbone, "--max_steps", "1", "--per_device_train_batch_size", "2", "--learning_rate", "1e-3",
        "--warmup_steps", "0.0", "--save_strategy", "no", "--max_length", "128", "--dataloader_num_workers", "0",
    ])
    assert code == 0
    metadata = json.loads((out / "medbench_train.json").read_text())
    assert metadata["config"]["backbone"] == backbone and not metadata["config"]["use_lora"]
    trained, before = {}, {}
    for folder, weights in ((out, trained), (converted, before)):
        for shard in folder.glob("model*.safetensors"):
            weights.update(load_file(shard))
    changed = [name for name in trained if name in before and not (trained[name] == before[name]).all()]
    assert any("language_model.layers" in name for name in changed)  # the full language model trained (no adapter)
    assert not any("vision_tower" in name or "multi_modal_projector" in name for name in changed)  # frozen by the profile
