"""Truncation keeps the rows an objective compares on the same answer tokens (Qwen-VL: image size sets prompt size)."""

from __future__ import annotations

import pytest
from PIL import Image
from transformers import AutoProcessor

from medbench.errors import DataError
from medbench.train.collator import PreferenceCollator
from medbench.train.objectives import OBJECTIVES


@pytest.fixture
def copo_records(tmp_path):
    small = Image.new("RGB", (56, 56), (120, 60, 30))
    large = Image.new("RGB", (112, 112), (10, 200, 30))
    small.save(tmp_path / "m.png")
    large.save(tmp_path / "m_prime.png")  # 4x the pixels: more image tokens in the prompt
    answer = "The optic disc is visible on the left side of the fundus with a small haemorrhage nearby."
    return [{"id": "r", "image": str(tmp_path / "m.png"), "rejected_image": str(tmp_path / "m_prime.png"),
             "question": "Where is the optic disc?", "chosen": answer, "rejected": answer.replace("left", "right"),
             "weight": 1.0, "error_type": "laterality_position"}]


def test_copo_rows_score_the_same_answer_tokens_when_truncated(tiny_model_dirs, copo_records):
    processor = AutoProcessor.from_pretrained(tiny_model_dirs["qwen2_5_vl"])
    # Let image size decide the image-token count, as with the real Qwen-VL processors.
    processor.image_processor.size = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
    processor.image_processor.max_pixels = 112 * 112
    full = PreferenceCollator(processor, OBJECTIVES["copo"], max_length=None)(copo_records)
    prompt_real, prompt_corrupted = (full["attention_mask"] - full["completion_mask"]).sum(dim=1).tolist()
    answer_tokens = int(full["completion_mask"][0].sum())
    assert prompt_corrupted > prompt_real  # the larger image takes more prompt tokens
    max_length = prompt_corrupted + answer_tokens // 2  # the corrupted row can keep only half of its answer
    batch = PreferenceCollator(processor, OBJECTIVES["copo"], max_length=max_length)(copo_records)
    kept = batch["completion_mask"].sum(dim=1).tolist()
    assert kept[0] == kept[1] == answer_tokens // 2
    assert batch["input_ids"].shape[1] <= max_length
    # The kept answer tokens are the same tokens in both rows.
    real = batch["input_ids"][0][batch["completion_mask"][0].bool()]
    corrupted = batch["input_ids"][1][batch["completion_mask"][1].bool()]
    assert real.tolist() == corrupted.tolist()


def test_a_prompt_that_leaves_no_room_is_refused_in_one_line(tiny_model_dirs, copo_records):
    processor = AutoProcessor.from_pretrained(tiny_model_dirs["qwen2_5_vl"])
    with pytest.raises(DataError, match=r"record 'r': its prompt .* raise max_length"):
        PreferenceCollator(processor, OBJECTIVES["copo"], max_length=10)(copo_records)
