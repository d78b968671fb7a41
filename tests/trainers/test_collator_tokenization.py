"""Answers are tokenized as the prompt's continuation: with LLaVA-Med's sentencepiece tokenizer (built offline as
``medbench convert`` builds it), every collated row is exactly the tokenization of the whole conversation."""

from __future__ import annotations

import pytest
from PIL import Image

from medbench.prompts import build_messages, chat_template, render_prompt
from medbench.train.collator import PreferenceCollator, continuation_ids
from medbench.train.objectives import OBJECTIVES

pytest.importorskip("sentencepiece")

CORPUS = [
    "Is there a fracture in the left femur? yes",
    "Where is the optic disc? The optic disc is visible on the left side.",
    "Is the heart enlarged? no, the cardiac silhouette is normal",
    "[INST] [/INST] question answer image",
] * 20


@pytest.fixture(scope="module")
def llava_med_processor(tmp_path_factory):
    """A LLaVA processor with a Llama-style sentencepiece BPE tokenizer (dummy prefix, byte fallback) and the
    LLaVA-Med v1.5 chat template, as ``medbench convert`` writes them."""
    from spm_tokenizer import write_sentencepiece_model
    from transformers import CLIPImageProcessor, LlavaProcessor

    from medbench.convert.tokenizer import fast_tokenizer_from_sentencepiece

    folder = tmp_path_factory.mktemp("llava_med_tokenizer")
    write_sentencepiece_model(folder, CORPUS)
    tokenizer = fast_tokenizer_from_sentencepiece(folder / "tokenizer.model", {})
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]}, replace_extra_special_tokens=False)
    tokenizer.pad_token = tokenizer.eos_token  # as medbench.hfload does for a tokenizer without one
    return LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template("llava_med"),
        image_token="<image>",
    )


@pytest.fixture
def records(tmp_path):
    Image.new("RGB", (16, 16), (120, 60, 30)).save(tmp_path / "m.png")
    Image.new("RGB", (16, 16), (10, 200, 30)).save(tmp_path / "m_prime.png")
    return [
        {"id": "short", "image": str(tmp_path / "m.png"), "rejected_image": str(tmp_path / "m_prime.png"),
         "question": "Is there a fracture in the left femur?", "chosen": "yes", "rejected": "no",
         "error_type": "presence_abnormality"},
        {"id": "long", "image": str(tmp_path / "m.png"), "rejected_image": str(tmp_path / "m_prime.png"),
         "question": "Where is the optic disc?", "chosen": "The optic disc is visible on the left side.",
         "rejected": "The optic disc is visible on the right side.", "error_type": "laterality_position"},
    ]


@pytest.mark.parametrize("objective", ["dpo", "mdpo"])
def test_each_row_is_the_tokenization_of_the_whole_conversation(llava_med_processor, records, objective):
    processor, tokenizer = llava_med_processor, llava_med_processor.tokenizer
    batch = PreferenceCollator(processor, OBJECTIVES[objective])(records)
    blocks = OBJECTIVES[objective].rows  # (answer field, image field) of each block of rows
    assert len(batch["input_ids"]) == len(blocks) * len(records) > 2
    for row in range(len(batch["input_ids"])):
        record = records[row % len(records)]
        answer_field, image_field = blocks[row // len(records)]
        image = Image.open(record[image_field]).convert("RGB")
        conversation = processor.apply_chat_template(
            build_messages(record["question"], answer=record[answer_field]), tokenize=False
        )
        prompt = render_prompt(processor, record["question"])
        whole = processor(text=[conversation], images=[[image]], add_special_tokens=False)["input_ids"][0]
        evaluated = processor(text=[prompt], images=[[image]], add_special_tokens=False)["input_ids"][0]
        active = batch["attention_mask"][row].bool()
        ids = batch["input_ids"][row][active].tolist()
        answer = batch["input_ids"][row][batch["completion_mask"][row].bool()].tolist()
        assert ids == whole  # training sees the conversation's own tokens ...
        assert ids[: len(evaluated)] == evaluated  # ... after exactly the prompt evaluation feeds the model
        assert answer == whole[len(evaluated):]
        # Tokenized on its own, the answer would start with a dummy-prefix token the model never sees here.
        alone = tokenizer(conversation[len(prompt):], add_special_tokens=False)["input_ids"]
        assert tokenizer.convert_ids_to_tokens(alone[:2]) == ["▁", tokenizer.convert_ids_to_tokens(answer[0])]
        assert alone[1:] == answer


def test_a_prompt_that_is_no_prefix_falls_back_to_the_answer_alone(llava_med_processor):
    tokenizer = llava_med_processor.tokenizer
    prompts, answers = ["[INST] Is there a fract", "[INST] Is there a fracture? [/INST]"], ["ure? [/INST]", " yes"]
    split = tokenizer(prompts[0], add_special_tokens=False)["input_ids"]
    whole = tokenizer(prompts[0] + answers[0], add_special_tokens=False)["input_ids"]
    assert whole[: len(split)] != split  # "▁fracture" is one token of the conversation, not "▁fr" + "ure"
    ids, fallbacks = continuation_ids(tokenizer, prompts, answers)
    assert fallbacks == [0]
    assert ids[0] == tokenizer(answers[0], add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids[1]) == ["▁yes"]


def test_truncation_still_keeps_the_same_answer_tokens_in_compared_rows(llava_med_processor, records):
    full = PreferenceCollator(llava_med_processor, OBJECTIVES["copo"])(records)
    prompt = int((full["attention_mask"][1] - full["completion_mask"][1]).sum())
    answer = int(full["completion_mask"][1].sum())
    batch = PreferenceCollator(llava_med_processor, OBJECTIVES["copo"], max_length=prompt + answer // 2)(records)
    n = len(records)
    for record in range(n):
        real = batch["input_ids"][record][batch["completion_mask"][record].bool()].tolist()
        corrupted = batch["input_ids"][n + record][batch["completion_mask"][n + record].bool()].tolist()
        assert real == corrupted
        assert real == full["input_ids"][record][full["completion_mask"][record].bool()].tolist()[: len(real)]
    assert int(batch["completion_mask"][1].sum()) == answer // 2
