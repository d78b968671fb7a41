"""Tiny fake original-format LLaVA checkpoints (exact original key layout and config fields) and an independent
reference forward composed from their weights, for the conversion tests.

The reference does what the original LLaVA code does, written out here: pad to a square with the image-mean
colour (centred), CLIP preprocessing with PIL bicubic resizing, the CLIP hidden state at the selected layer
(patch tokens), the projector, the image features spliced in at the ``<image>`` position of ids tokenized chunk
by chunk (``tokenizer_image_token``), then the language model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CORPUS = [
    "Is there a fracture in the left femur? yes",
    "What organ is shown in this image? the liver",
    "Is the heart enlarged? no, the cardiac silhouette is normal",
    "Which side is the pneumothorax on? right",
    "Describe the findings. There is a small nodule in the right upper lobe.",
    "What modality was used? CT scan of the abdomen",
    "[INST] [/INST] <|user|> <|assistant|> question answer image",
] * 20
MEAN, STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
IMAGE_SIZE, PATCH = 32, 8


def sentencepiece_model(folder: Path) -> None:
    """A Llama-style sentencepiece BPE ``tokenizer.model`` (byte fallback, dummy prefix) + tokenizer_config."""
    from spm_tokenizer import write_sentencepiece_model

    write_sentencepiece_model(folder, CORPUS)
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "add_bos_token": True, "model_max_length": 2048, "legacy": True}
    ))


def qwen_tokenizer(folder: Path):
    """A byte-level BPE tokenizer (Qwen2 style: no BOS, ``<|endoftext|>``) saved as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tokenizer.save_pretrained(folder)
    return tokenizer


def clip_folder(folder: Path, seed: int, full_clip: bool = False) -> None:
    """A tiny CLIP (vision model, or a whole CLIPModel with its text half) with CLIP preprocessing settings."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                  image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=16)
    if full_clip:
        text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                    vocab_size=64, max_position_embeddings=16, projection_dim=16)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    else:
        model = CLIPVisionModel(CLIPVisionConfig(**vision))
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": IMAGE_SIZE},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": MEAN, "image_std": STD,
        "do_convert_rgb": True,
    }))


def build_original(root: Path, family: str, projector: str = "mlp2x_gelu", select_feature: str = "patch") -> dict:
    """Write a fake original checkpoint of ``family`` under ``root``; returns paths and the original parts."""
    from safetensors.torch import save_file
    from transformers import (
        CLIPVisionModel,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    ckpt = root / f"{family}-orig"
    ckpt.mkdir(parents=True)
    tower = root / f"{family}-clip"
    if family == "llava_qwen2":
        qwen_tokenizer(ckpt)
        vocab = 500
        tower = ckpt / "vit" / "clip_tiny"  # HuatuoGPT: a folder relative to the checkpoint
        tower.mkdir(parents=True)
    else:
        sentencepiece_model(ckpt)
        vocab = 400
        tower.mkdir()
    clip_folder(tower, seed=1, full_clip=family == "llava_llama")
    text = dict(vocab_size=vocab, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
    config_cls, lm_cls, text_type = {
        "llava_llama": (LlamaConfig, LlamaForCausalLM, "llama"),
        "llava_mistral": (MistralConfig, MistralForCausalLM, "mistral"),
        "llava_qwen2": (Qwen2Config, Qwen2ForCausalLM, "qwen2"),
    }[family]
    torch.manual_seed(2)
    lm = lm_cls(config_cls(**text, bos_token_id=1, eos_token_id=2)).eval()
    state = {key: value.contiguous() for key, value in lm.state_dict().items()}
    torch.manual_seed(3)
    if projector == "mlp2x_gelu":
        state["model.mm_projector.0.weight"] = torch.randn(48, 32) * 0.2
        state["model.mm_projector.0.bias"] = torch.randn(48) * 0.2
        state["model.mm_projector.2.weight"] = torch.randn(48, 48) * 0.2
        state["model.mm_projector.2.bias"] = torch.randn(48) * 0.2
    else:
        state["model.mm_projector.weight"] = torch.randn(48, 32) * 0.2
        state["model.mm_projector.bias"] = torch.randn(48) * 0.2
    # The stored CLIP copy: different weights from the folder's, so a test sees which one was converted.
    torch.manual_seed(4)
    stored = CLIPVisionModel(CLIPVisionModel.config_class.from_pretrained(tower)).eval()
    for key, value in stored.state_dict().items():
        state[f"model.vision_tower.vision_tower.vision_model.{key}"] = value.contiguous()
    keys = sorted(state)
    half = len(keys) // 2  # two shards, like the published checkpoints
    save_file({k: state[k] for k in keys[:half]}, str(ckpt / "model-00001-of-00002.safetensors"))
    save_file({k: state[k] for k in keys[half:]}, str(ckpt / "model-00002-of-00002.safetensors"))
    config = lm.config.to_dict()
    config.update({
        "model_type": family, "architectures": [f"Llava{text_type.capitalize()}ForCausalLM"],
        "mm_vision_tower": "./vit/clip_tiny" if family == "llava_qwen2" else str(tower),
        "mm_projector_type": projector, "mm_hidden_size": 32, "mm_vision_select_layer": -2,
        "mm_vision_select_feature": select_feature, "image_aspect_ratio": "pad", "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False, "tune_mm_mlp_adapter": False, "use_mm_proj": True, "torch_dtype": "float32",
    })
    (ckpt / "config.json").write_text(json.dumps(config))
    folder_tower = CLIPVisionModel.from_pretrained(tower).eval()
    return {"ckpt": ckpt, "tower": tower, "lm": lm, "state": state, "stored_tower": stored,
            "folder_tower": folder_tower, "family": family, "projector": projector, "select_feature": select_feature}


def original_pixels(image: Image.Image) -> torch.Tensor:
    """LLaVA's process_images with image_aspect_ratio=pad and CLIP preprocessing, written out with PIL."""
    width, height = image.size
    side = max(width, height)
    square = Image.new(image.mode, (side, side), tuple(int(x * 255) for x in MEAN))
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    resized = square.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)  # square: shortest edge -> both sides
    array = np.asarray(resized, dtype=np.float32) * np.float32(1 / 255)
    array = (array - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
    return torch.from_numpy(array.transpose(2, 0, 1).copy()).unsqueeze(0)


def original_ids(original: dict, prompt: str) -> list[int | None]:
    """``tokenizer_image_token``: each chunk around ``<image>`` tokenized on its own; None marks the image."""
    chunks = prompt.split("<image>")
    if original["family"] == "llava_qwen2":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(original["ckpt"])
        encoded = [tokenizer(chunk, add_special_tokens=False).input_ids for chunk in chunks]
        offset_ids: list[int | None] = []
    else:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(original["ckpt"] / "tokenizer.model"))
        encoded = [[sp.bos_id()] + sp.encode(chunk) for chunk in chunks]
        offset_ids = [encoded[0][0]]
        encoded = [ids[1:] for ids in encoded]
    ids = offset_ids + encoded[0]
    for chunk in encoded[1:]:
        ids += [None] + chunk
    return ids


def reference_logits(original: dict, pixels: torch.Tensor, ids: list[int | None], use_stored: bool) -> torch.Tensor:
    """The original forward from the original weights: CLIP layer -> projector -> splice -> language model."""
    tower = original["stored_tower"] if use_stored else original["folder_tower"]
    state, lm = original["state"], original["lm"]
    with torch.no_grad():
        hidden = tower(pixels, output_hidden_states=True).hidden_states[-2]
        features = hidden[:, 1:] if original["select_feature"] == "patch" else hidden
        if original["projector"] == "mlp2x_gelu":
            features = torch.nn.functional.linear(features, state["model.mm_projector.0.weight"], state["model.mm_projector.0.bias"])
            features = torch.nn.functional.gelu(features)
            features = torch.nn.functional.linear(features, state["model.mm_projector.2.weight"], state["model.mm_projector.2.bias"])
        else:
            features = torch.nn.functional.linear(features, state["model.mm_projector.weight"], state["model.mm_projector.bias"])
        embed = lm.get_input_embeddings()
        pieces = []
        for token in ids:
            pieces.append(features[0] if token is None else embed(torch.tensor([token])))
        return lm(inputs_embeds=torch.cat(pieces).unsqueeze(0)).logits[0]
