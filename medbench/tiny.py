"""Tiny, randomly initialised vision-language models built from configs, for offline demos and tests.

Hugging Face hub weights cannot be fetched on air-gapped machines, so the demo and the test suite build
small models of the same architectures as the study's backbones instead:

* ``llava``: a LLaVA model (Llama language model + CLIP vision tower + MLP projector), the family of
  LLaVA-Med v1.5.
* ``qwen2_vl`` / ``qwen2_5_vl``: Qwen2-VL-family models, the family of HuatuoGPT-Vision's current release.

Each is saved with a processor (image processor + a word-level tokenizer trained in-process) and a chat
template, so it loads with ``AutoModelForImageTextToText`` / ``AutoProcessor`` exactly like a real checkpoint.
Their outputs are meaningless; they exist to exercise the real code paths.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

Architecture = Literal["llava", "qwen2_vl", "qwen2_5_vl"]
ARCHITECTURES: tuple[str, ...] = ("llava", "qwen2_vl", "qwen2_5_vl")

# A generic chat template: content may be a string or a list of {"type": "image"|"text"} parts. It renders
# the image placeholder given by the processor, so the same template serves every architecture.
_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ IMAGE_MARKUP }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

_SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
_IMAGE_TOKENS = {
    "llava": ["<image>"],
    "qwen2_vl": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
    "qwen2_5_vl": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
}
_IMAGE_MARKUP = {
    "llava": "<image>\n",
    "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
}

# Words every tiny tokenizer knows, so demo prompts and answers tokenize to real pieces.
_BASE_CORPUS = """
yes no the a an is are there this image of in on with and or what which where how many does do show shows
normal abnormal left right lung lungs heart brain liver kidney chest abdomen head ct mri mr x-ray xray
ultrasound us fundus retina retinal pathology histology tissue cells stain staining mass lesion nodule
effusion pneumothorax consolidation opacity fracture hemorrhage tumor tumour cardiomegaly edema
findings impression report write detailed based analyze given medical provide description including
relevant clinical abnormalities potential diagnoses answer question word phrase short single modality
organ plane axial coronal sagittal vessel vessels optic disc macula microaneurysms immunohistochemistry
brown blue nuclei positive negative seen visible present absent acute chronic no evidence of
"""


def _train_tokenizer(extra_tokens: list[str], corpus: Iterable[str]):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    trainer = trainers.WordLevelTrainer(vocab_size=2000, special_tokens=_SPECIAL_TOKENS + extra_tokens)
    tokenizer.train_from_iterator(list(corpus) + [_BASE_CORPUS], trainer=trainer)
    from tokenizers import decoders

    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins word pieces with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|end|>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>", "</s>"] + extra_tokens,
    )
    fast.padding_side = "left"
    return fast


def build_tiny_model(
    out_dir: str | Path,
    architecture: Architecture = "llava",
    *,
    corpus: Iterable[str] = (),
    seed: int = 0,
    size: str = "demo",
) -> Path:
    """Build, save and return the directory of a tiny randomly initialised vision-language model.

    Args:
        out_dir: Directory to write the model, processor and tokenizer into (created if needed).
        architecture: ``"llava"``, ``"qwen2_vl"`` or ``"qwen2_5_vl"``.
        corpus: Extra text the tokenizer should know as whole words (e.g. the demo questions).
        seed: Seed for the random weights.
        size: ``"demo"`` (the smallest, for tests and the demo) or ``"study"`` (LLaVA only: 64 px images in
            16-px patches, a 64-wide vision tower and a 128-wide language model, 2 layers each; the model the
            tiny study teaches, see :mod:`medbench.synth`).

    Returns:
        The output directory, loadable with ``AutoModelForImageTextToText.from_pretrained`` and
        ``AutoProcessor.from_pretrained``.
    """
    import torch

    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown tiny architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
    if size not in LLAVA_SIZES or (size != "demo" and architecture != "llava"):
        raise ValueError(f"tiny size {size!r}: choose demo, or study with the llava architecture")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(_IMAGE_TOKENS[architecture], corpus)
    chat_template = _CHAT_TEMPLATE.replace("{{ IMAGE_MARKUP }}", _IMAGE_MARKUP[architecture])
    torch.manual_seed(seed)
    if architecture == "llava":
        model, processor = _build_llava(tokenizer, chat_template, **LLAVA_SIZES[size])
    else:
        model, processor = _build_qwen_vl(tokenizer, chat_template, architecture)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


# LLaVA dimensions per size: image side, patch side, vision width, language-model width.
LLAVA_SIZES = {
    "demo": {"image_size": 32, "patch_size": 8, "vision_hidden": 32, "text_hidden": 64},
    "study": {"image_size": 64, "patch_size": 16, "vision_hidden": 64, "text_hidden": 128},
}


def _build_llava(tokenizer, chat_template, image_size: int, patch_size: int, vision_hidden: int, text_hidden: int):
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=text_hidden,
        intermediate_size=2 * text_hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=2 * vision_hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_hidden,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(config)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template,
    )
    return model, processor


def _build_qwen_vl(tokenizer, chat_template, architecture):
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
    )

    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in _IMAGE_TOKENS[architecture]}
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "tie_word_embeddings": False,
    }
    common = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    if architecture == "qwen2_vl":
        vision_config = {
            "depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 4, "mlp_ratio": 2,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3,
        }
        config = Qwen2VLConfig(text_config=text_config, vision_config=vision_config, **common)
        model = Qwen2VLForConditionalGeneration(config)
        processor_cls = Qwen2VLProcessor
    else:
        vision_config = {
            "depth": 2, "hidden_size": 32, "out_hidden_size": 64, "intermediate_size": 64, "num_heads": 4,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3,
            "window_size": 56, "fullatt_block_indexes": [1],
        }
        config = Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config, **common)
        model = Qwen2_5_VLForConditionalGeneration(config)
        processor_cls = Qwen2_5_VLProcessor
    # Few pixels keep the image-token count (and CPU time) small: 56x56 -> 4x4 patches -> 4 merged tokens.
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": 56 * 56, "longest_edge": 56 * 56})
    processor = _qwen_processor(processor_cls, image_processor, tokenizer, chat_template)
    return model, processor


def _qwen_processor(processor_cls, image_processor, tokenizer, chat_template):
    from transformers import Qwen2VLVideoProcessor

    return processor_cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=chat_template,
    )
