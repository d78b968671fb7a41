"""One prompt builder: the study's two conversation formats, and evaluation == training, byte for byte."""

from __future__ import annotations

import pytest

from medbench.prompts import CHAT_STYLES, build_messages, chat_template

QUESTION = "Is there a fracture in the left femur?"
ANSWER = "Yes, in the femoral neck."


def _render(style: str, messages, add_generation_prompt: bool, bos: str = "<s>", eos: str = "</s>") -> str:
    from jinja2 import Environment

    template = Environment().from_string(chat_template(style))
    return template.render(messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos)


def test_llava_med_mistral_instruct_format():
    # conv_mistral_instruct (LLAMA_2 style, empty system, sep2 </s>) as model_vqa.py builds it.
    prompt = _render("llava_med", build_messages(QUESTION), True)
    assert prompt == f"<s>[INST] <image>\n{QUESTION} [/INST]"
    full = _render("llava_med", build_messages(QUESTION, answer=ANSWER), False)
    assert full == f"<s>[INST] <image>\n{QUESTION} [/INST] {ANSWER} </s>"
    with_system = _render("llava_med", build_messages(QUESTION, system_prompt="Be brief."), True)
    assert with_system == f"<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n<image>\n{QUESTION} [/INST]"


def test_huatuogpt_vision_format():
    # preprocess_huatuo: "<|user|>\n{h}\n" + "<|assistant|>\n" for the prompt, "{g} \n" for an answer.
    prompt = _render("huatuogpt_vision", build_messages(QUESTION), True)
    assert prompt == f"<|user|>\n<image>\n{QUESTION}\n<|assistant|>\n"
    full = _render("huatuogpt_vision", build_messages(QUESTION, answer=ANSWER), False)
    assert full == f"<|user|>\n<image>\n{QUESTION}\n<|assistant|>\n{ANSWER} \n"


@pytest.mark.parametrize("style", CHAT_STYLES)
def test_string_content_renders_like_parts(style):
    # lmms-eval's llava_hf sends "<image>\n{question}" as a string; medbench sends parts.
    as_string = [{"role": "user", "content": f"<image>\n{QUESTION}"}]
    assert _render(style, as_string, True) == _render(style, build_messages(QUESTION), True)


@pytest.fixture(scope="module")
def backbones(tmp_path_factory, tiny_model_dirs):
    pytest.importorskip("sentencepiece")
    from _llava_originals import build_original

    from medbench.convert.llava import convert

    root = tmp_path_factory.mktemp("prompt_backbones")
    dirs = {"llava (tiny)": tiny_model_dirs["llava"], "qwen2_5_vl (tiny)": tiny_model_dirs["qwen2_5_vl"]}
    for family in ("llava_mistral", "llava_qwen2"):
        original = build_original(root, family)
        out = root / f"{family}-hf"
        convert(original["ckpt"], out, log=lambda line: None)
        dirs[f"{family} (converted)"] = out
    return dirs


@pytest.mark.parametrize("backbone", ["llava_mistral (converted)", "llava_qwen2 (converted)", "llava (tiny)", "qwen2_5_vl (tiny)"])
def test_evaluation_and_training_prompts_are_identical(backbones, backbone, tmp_path):
    pytest.importorskip("trl")
    from PIL import Image

    from medbench.lmms.models.hf import MedbenchHF
    from medbench.train.collator import PreferenceCollator
    from medbench.train.objectives import OBJECTIVES

    evaluator = MedbenchHF(pretrained=str(backbones[backbone]), device="cpu", system_prompt="Answer briefly.")
    image = Image.new("RGB", (40, 28), (90, 120, 30))
    image.save(tmp_path / "image.png")
    eval_prompt = evaluator.render(QUESTION, 1)
    eval_ids = evaluator.encode([eval_prompt], [image])["input_ids"][0].tolist()

    collator = PreferenceCollator(evaluator.processor, OBJECTIVES["dpo"], system_prompt="Answer briefly.")
    record = {"id": "r1", "question": QUESTION, "chosen": ANSWER, "rejected": "No fracture.", "image": str(tmp_path / "image.png")}
    train_prompt, _ = collator._render(record, OBJECTIVES["dpo"].rows_for(record, collator.visual_error_types))
    assert train_prompt.encode() == eval_prompt.encode()
    batch = collator([record])
    row = batch["input_ids"][0][(batch["attention_mask"][0] == 1) & (batch["completion_mask"][0] == 0)].tolist()
    assert row == eval_ids


@pytest.mark.parametrize(("profile", "style"), [("llava_med_v1_5", "llava_med"), ("huatuogpt_vision_7b", "huatuogpt_vision")])
def test_backbone_profiles_carry_the_converters_template(profile, style):
    from medbench.train.config import load_backbone_profile

    loaded = load_backbone_profile(profile)
    assert loaded.model_type == "llava"
    assert loaded.settings["chat_template"] == chat_template(style)
