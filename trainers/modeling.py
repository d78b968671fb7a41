"""Loading a vision-language model for preference training: processor, chat template, frozen parts, LoRA.

Works with any ``AutoModelForImageTextToText`` checkpoint. The vision encoder and projector are found by the
module names transformers uses for LLaVA (``vision_tower``, ``multi_modal_projector``) and the Qwen-VL family
(``visual``, ``visual.merger``); other architectures name them through ``vision_tower_modules`` /
``projector_modules``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from .config import RecipeConfig, RecipeError, load_backbone_profile

logger = logging.getLogger(__name__)

_VISION_TOWER_NAMES = ("vision_tower", "visual", "vision_model", "vision_encoder", "image_encoder")
_PROJECTOR_NAMES = ("multi_modal_projector", "mm_projector", "merger", "connector", "visual_projection")


def load_model_and_processor(
    model_id: str | Path, recipe: RecipeConfig, *, trust_remote_code: bool = False
) -> tuple[Any, Any]:
    """Load the model and processor, apply the recipe's chat template and check the backbone profile.

    Args:
        model_id: Local checkpoint directory or hub id.
        recipe: The run's configuration (``model_dtype``, ``chat_template``, ``backbone``, ...).
        trust_remote_code: Allow a checkpoint that ships its own code (the run's ``DPOConfig.trust_remote_code``,
            which TRL also reads when it loads the reference model).

    Returns:
        ``(model, processor)``.

    The checkpoint and processor are loaded by :func:`medbench.hfload.load_vision_language_model`, the loader
    ``medbench_hf`` uses, so training and evaluation see the same processor (and image-processing backend).

    Raises:
        MedbenchError: the checkpoint cannot be loaded, has no chat template, or does not match the backbone.
    """
    from medbench.hfload import load_vision_language_model

    # The trainer places the model itself (accelerate/DeepSpeed), so it is loaded on the CPU; recipe dtype
    # "auto" keeps the checkpoint's own dtype.
    model, processor = load_vision_language_model(
        model_id,
        dtype="checkpoint" if recipe.model_dtype == "auto" else recipe.model_dtype,
        device="cpu",
        trust_remote_code=trust_remote_code,
        chat_template=recipe.chat_template,
    )
    model.train()
    if recipe.backbone:
        profile = load_backbone_profile(recipe.backbone)
        if model.config.model_type != profile.model_type:
            raise RecipeError(
                f"backbone profile '{profile.name}' is for {profile.model_type} models, but {model_id} is "
                f"{model.config.model_type}; drop --backbone or pick a matching profile"
            )
    return model, processor


def _find_modules(model: Any, candidates: tuple[str, ...]) -> list[str]:
    """Outermost modules whose last name component is one of ``candidates``."""
    found: list[str] = []
    for name, _ in model.named_modules():
        if name.rsplit(".", 1)[-1] in candidates and not any(name.startswith(f"{prefix}.") for prefix in found):
            found.append(name)
    return found


def vision_modules(model: Any, recipe: RecipeConfig) -> tuple[list[str], list[str]]:
    """Module names of the vision encoder and of the projector.

    Raises:
        RecipeError: configured names that do not exist in the model.
    """
    existing = {name for name, _ in model.named_modules()}
    resolved = []
    for configured, candidates, field_name in (
        (recipe.vision_tower_modules, _VISION_TOWER_NAMES, "vision_tower_modules"),
        (recipe.projector_modules, _PROJECTOR_NAMES, "projector_modules"),
    ):
        if configured is None:
            resolved.append(_find_modules(model, candidates))
            continue
        unknown = [name for name in configured if name not in existing]
        if unknown:
            raise RecipeError(f"recipe '{recipe.name}': `{field_name}` names {unknown[0]!r}, not a module of the model")
        resolved.append(list(configured))
    tower, projector = resolved
    return tower, projector


def _owner(param_name: str, tower: list[str], projector: list[str]) -> str:
    # The projector can sit inside the vision tower (Qwen-VL's visual.merger), so it is matched first.
    if any(param_name.startswith(f"{prefix}.") for prefix in projector):
        return "projector"
    if any(param_name.startswith(f"{prefix}.") for prefix in tower):
        return "vision_tower"
    return "language_model"


def apply_freezing(model: Any, recipe: RecipeConfig) -> dict[str, int]:
    """Freeze the vision tower and/or projector as the recipe says.

    Returns:
        Trainable parameter counts per part (``language_model``, ``vision_tower``, ``projector``).

    Raises:
        RecipeError: freezing was asked for but the part could not be found.
    """
    tower, projector = vision_modules(model, recipe)
    for wanted, found, field_name, hint in (
        (recipe.freeze_vision_tower, tower, "freeze_vision_tower", "vision_tower_modules"),
        (recipe.freeze_projector, projector, "freeze_projector", "projector_modules"),
    ):
        if wanted and not found:
            raise RecipeError(
                f"recipe '{recipe.name}': `{field_name}` is on but no such module was found in "
                f"{type(model).__name__}; name it with `{hint}`"
            )
    counts = {"language_model": 0, "vision_tower": 0, "projector": 0}
    for name, param in model.named_parameters():
        part = _owner(name, tower, projector)
        if (part == "vision_tower" and recipe.freeze_vision_tower) or (part == "projector" and recipe.freeze_projector):
            param.requires_grad_(False)
        if param.requires_grad:
            counts[part] += param.numel()
    logger.info("trainable parameters before adapters: %s", counts)
    return counts


def build_lora_config(model: Any, recipe: RecipeConfig):
    """A ``peft.LoraConfig`` adapting the language model's projections only.

    The vision tower and projector are excluded from LoRA; if the recipe leaves either unfrozen it is trained in
    full through ``modules_to_save``.

    Raises:
        RecipeError: no module matches ``lora_target_modules``.
    """
    from peft import LoraConfig

    tower, projector = vision_modules(model, recipe)
    names = "|".join(re.escape(name) for name in recipe.lora_target_modules)
    excluded = tower + projector
    # peft full-matches a string target against each module name; the lookahead keeps vision modules out.
    guard = f"(?!(?:{'|'.join(re.escape(prefix) for prefix in excluded)})\\.)" if excluded else ""
    pattern = f"{guard}(?:.*\\.)?(?:{names})"
    if not any(re.fullmatch(pattern, name) for name, _ in model.named_modules()):
        raise RecipeError(
            f"recipe '{recipe.name}': `lora_target_modules` {recipe.lora_target_modules} match no language-model "
            f"module of {type(model).__name__}"
        )
    modules_to_save = []
    if not recipe.freeze_vision_tower:
        modules_to_save += [prefix for prefix in tower if not any(prefix.startswith(p + ".") for p in projector)]
    if not recipe.freeze_projector:
        modules_to_save += projector
    return LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=pattern,
        modules_to_save=modules_to_save or None,
        task_type="CAUSAL_LM",
    )


def merge_lora(
    adapter_dir: str | Path,
    base_model: str | Path,
    out_dir: str | Path,
    recipe: RecipeConfig,
    *,
    trust_remote_code: bool = False,
) -> Path:
    """Load the base model, apply the saved adapter, merge it and save a plain checkpoint with the processor.

    Merging from the saved adapter (rather than the in-memory model) works the same after single-process,
    DDP and ZeRO-3 training, and proves the saved adapter is complete.

    Returns:
        ``out_dir``.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "auto": "auto"}[recipe.model_dtype]
    model = AutoModelForImageTextToText.from_pretrained(
        str(base_model), dtype=dtype, trust_remote_code=trust_remote_code
    )
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out = Path(out_dir)
    merged.save_pretrained(out)
    # The processor saved next to the adapter carries the recipe's chat template.
    AutoProcessor.from_pretrained(str(adapter_dir), trust_remote_code=trust_remote_code).save_pretrained(out)
    return out
