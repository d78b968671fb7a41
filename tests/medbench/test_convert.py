"""``medbench convert``: tiny fake originals of each family converted and checked against the original forward."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sentencepiece")

from _llava_originals import build_original, original_ids, original_pixels, reference_logits
from PIL import Image

from medbench.errors import MedbenchError

QUESTION = "Is there a fracture in the left femur?"


def _image() -> Image.Image:
    rng = __import__("numpy").random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, size=(24, 40, 3), dtype="uint8"))  # wide: exercises the padding


def _convert(tmp_path, original, **kwargs):
    from medbench.convert.llava import convert

    out = tmp_path / f"{original['family']}-hf"
    lines: list[str] = []
    record = convert(original["ckpt"], out, max_shard_size="40KB", log=lines.append, **kwargs)
    return out, record, lines


def _load(out):
    from medbench.hfload import load_vision_language_model

    return load_vision_language_model(out, dtype="float32", device="cpu")


@pytest.mark.parametrize(
    "family,projector,select_feature",
    [("llava_mistral", "mlp2x_gelu", "patch"), ("llava_llama", "linear", "cls_patch"), ("llava_qwen2", "mlp2x_gelu", "patch")],
)
def test_converted_model_matches_the_original_forward(tmp_path, family, projector, select_feature):
    from medbench.prompts import needs_special_tokens, render_prompt

    original = build_original(tmp_path, family, projector, select_feature)
    out, record, lines = _convert(tmp_path, original)
    use_stored = family == "llava_qwen2"  # HuatuoGPT runs the stored copy; LLaVA-Med the mm_vision_tower folder
    assert record["vision_tower_weights"] == ("stored" if use_stored else "folder")
    assert json.loads((out / "medbench_conversion.json").read_text())["family"] == family
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlavaForConditionalGeneration"]  # TRL reads it
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1 and (out / "model.safetensors.index.json").is_file()
    assert any(line.startswith("  language_model:") for line in lines)

    model, processor = _load(out)
    image = _image()
    prompt = render_prompt(processor, QUESTION)
    inputs = processor(
        text=[prompt], images=[image], return_tensors="pt",
        add_special_tokens=needs_special_tokens(processor.tokenizer, prompt),
    )
    # Same pixels as the original recipe (pad with the mean colour, PIL bicubic, normalise).
    assert torch.allclose(inputs["pixel_values"], original_pixels(image), atol=1e-6)

    # Same token ids as tokenizer_image_token, the image tokens standing where the original splices features.
    orig_prompt = prompt.removeprefix(processor.tokenizer.bos_token or "\0")
    ids = original_ids(original, orig_prompt)
    converted = inputs["input_ids"][0].tolist()
    image_id = model.config.image_token_id
    collapsed = [t for i, t in enumerate(converted) if t != image_id or (i and converted[i - 1] != image_id)]
    assert collapsed == [image_id if t is None else t for t in ids]

    with torch.no_grad():
        logits = model(**inputs).logits[0]
    reference = reference_logits(original, original_pixels(image), ids, use_stored)
    vocab = reference.shape[-1]
    assert logits.shape[0] == reference.shape[0]
    assert (logits[:, :vocab] - reference).abs().max().item() < 1e-5

    # Greedy generation: identical tokens.
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=None)[0, inputs["input_ids"].shape[1]:]
    expected = []
    for _ in range(6):
        token = int(reference_logits(original, original_pixels(image), ids + expected, use_stored)[-1].argmax())
        expected.append(token)
    assert generated.tolist() == expected


def test_stored_copy_is_ignored_for_llava_med_and_used_when_asked(tmp_path):
    original = build_original(tmp_path, "llava_mistral")
    out, record, _ = _convert(tmp_path, original, vision_weights="stored")
    assert record["vision_tower_weights"] == "stored"
    model, _ = _load(out)
    stored = original["stored_tower"].state_dict()["encoder.layers.0.mlp.fc1.weight"]
    assert torch.equal(model.model.vision_tower.encoder.layers[0].mlp.fc1.weight, stored)


def test_image_token_row_is_added_with_mean_embedding(tmp_path):
    original = build_original(tmp_path, "llava_mistral")
    out, record, _ = _convert(tmp_path, original)
    model, processor = _load(out)
    assert record["embedding_rows"] == {"original": 400, "converted": 401}
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == 400 == model.config.image_token_id
    embed = model.get_input_embeddings().weight
    assert torch.allclose(embed[400], original["state"]["model.embed_tokens.weight"].mean(0), atol=1e-6)
    assert torch.allclose(model.lm_head.weight[400], original["state"]["lm_head.weight"].mean(0), atol=1e-6)


def test_sentencepiece_tokenizer_matches_sentencepiece(tmp_path):
    import sentencepiece as spm
    from _llava_originals import sentencepiece_model

    from medbench.convert.tokenizer import fast_tokenizer_from_sentencepiece

    sentencepiece_model(tmp_path)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    fast = fast_tokenizer_from_sentencepiece(tmp_path / "tokenizer.model", {})
    for text in ["Is the heart enlarged?", "  two  spaces", "\nnew line first", "émoji ✓ 123", "[INST] hi [/INST]"]:
        assert fast(text, add_special_tokens=False).input_ids == sp.encode(text), text
        assert fast.decode(sp.encode(text)) == sp.decode(sp.encode(text))


def test_dry_run_writes_nothing_and_unknown_keys_are_refused(tmp_path):
    from safetensors.torch import save_file

    from medbench.convert.llava import convert

    original = build_original(tmp_path, "llava_qwen2")
    out = tmp_path / "out"
    record = convert(original["ckpt"], out, dry_run=True, log=lambda line: None)
    assert not out.exists() and record["keys"]["language_model"] > 0
    save_file({"model.mystery.weight": torch.zeros(2)}, str(original["ckpt"] / "model-extra.safetensors"))
    with pytest.raises(MedbenchError, match=r"1 weight keys .* model-extra.safetensors:model.mystery.weight"):
        convert(original["ckpt"], out, log=lambda line: None)
    assert not out.exists()


def test_missing_vision_tower_folder_is_one_line(tmp_path):
    import shutil

    from medbench.convert.llava import convert

    original = build_original(tmp_path, "llava_qwen2")
    shutil.rmtree(original["tower"])
    with pytest.raises(MedbenchError, match="silently fall back to openai/clip-vit-large-patch14-336"):
        convert(original["ckpt"], tmp_path / "out", log=lambda line: None)
    original = build_original(tmp_path / "m", "llava_mistral")
    config = json.loads((original["ckpt"] / "config.json").read_text())
    config["mm_vision_tower"] = "openai/clip-vit-large-patch14-336"
    (original["ckpt"] / "config.json").write_text(json.dumps(config))
    with pytest.raises(MedbenchError, match="--vision-tower DIR"):
        convert(original["ckpt"], tmp_path / "out", log=lambda line: None)
    _, record, _ = _convert(tmp_path, original, vision_tower=original["tower"])
    assert record["vision_tower_folder"] == str(original["tower"])
