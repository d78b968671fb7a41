"""The tiny study's synthetic-lesion VQA set and model: deterministic, answers that match the pixels."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from medbench.cli import main
from medbench.synth import MODALITY, make_lesion_vqa


def _files(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_the_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    make_lesion_vqa(tmp_path / "a", 30, 10, seed=3, progress=False)
    make_lesion_vqa(tmp_path / "b", 30, 10, seed=3, progress=False)
    make_lesion_vqa(tmp_path / "c", 30, 10, seed=4, progress=False)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert (tmp_path / "a" / "train.jsonl").read_bytes() != (tmp_path / "c" / "train.jsonl").read_bytes()


def test_answers_match_the_drawn_lesions_and_test_images_are_new(tmp_path):
    make_lesion_vqa(tmp_path, 120, 40, seed=0, progress=False)
    train = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (tmp_path / "test.jsonl").read_text().splitlines()]
    assert {record["kind"] for record in train} == {"presence", "side", "count", "modality"}
    for record in train + test:
        pixels = np.asarray(Image.open(tmp_path / record["image"]).convert("RGB"))
        assert pixels.shape == (64, 64, 3)
        if record["kind"] == "presence":
            assert record["answer"] == ("yes" if record["lesions"] else "no")
        if record["kind"] == "count":
            assert record["answer"] == ["zero", "one", "two", "three"][record["lesions"]]
        if record["kind"] == "modality":
            assert record["answer"] == MODALITY[record["source_image"]]
        if record["lesions"]:
            x0, y0, x1, y1 = record["box"]
            region = pixels[y0:y1, x0:x1]
            assert (region == 255).all(axis=-1).sum() >= 9  # the white disc is inside its box
            if record["kind"] == "side":
                assert record["answer"] == ("left" if (x0 + x1) / 2 < 32 else "right")
    train_images = {(tmp_path / r["image"]).read_bytes() for r in train}
    assert not any((tmp_path / r["image"]).read_bytes() in train_images for r in test)


def test_synth_commands_build_data_and_a_model_whose_tokenizer_knows_it(tmp_path, capsys):
    assert main(["synth", "vqa", "--out", str(tmp_path / "d"), "--train", "20", "--test", "5", "--no_progress"]) == 0
    assert main(["synth", "model", "--out", str(tmp_path / "m"), "--corpus", str(tmp_path / "d" / "train.jsonl")]) == 0
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tmp_path / "m")
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "m")
    assert model.config.vision_config.image_size == 64 and model.config.text_config.hidden_size == 128
    assert 4e5 < sum(p.numel() for p in model.parameters()) < 2e6
    unk = processor.tokenizer.unk_token_id
    assert unk not in processor.tokenizer("On which side of the image is the lesion? fundus photograph")["input_ids"]
    assert main(["synth", "model", "--out", str(tmp_path / "x"), "--corpus", str(tmp_path / "nope.jsonl")]) == 2
    assert "run `medbench synth vqa` first" in capsys.readouterr().err
