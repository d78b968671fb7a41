"""medbench-train: the study's preference-optimisation variants on any Hugging Face vision-language model.

``import trainers`` is cheap: the names below load their modules (and torch / TRL) on first access.

* Pure objectives: ``dpo_loss``, ``dpo_nll_loss``, ``ipo_loss``, ``robust_dpo_loss``, ``conservative_dpo_loss``,
  ``simpo_loss``, ``orpo_loss``, ``copo_loss``, ``anchor_loss``, ``mdpo_loss``, ``mmedpo_loss``,
  ``error_targeted_loss`` (:mod:`trainers.losses`).
* Configuration: ``RecipeConfig``, ``load_recipe``, ``list_recipes``, ``list_backbones`` (:mod:`trainers.config`).
* Data: ``load_preference_file``, ``validate_records`` (:mod:`trainers.data`).
* Training: ``PreferenceCollator``, ``MedPreferenceTrainer``, ``train`` (:mod:`trainers.collator`,
  :mod:`trainers.trainer`, :mod:`trainers.run`).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    **{
        name: "trainers.losses"
        for name in (
            "anchor_loss",
            "conservative_dpo_loss",
            "copo_loss",
            "dpo_loss",
            "dpo_nll_loss",
            "error_targeted_loss",
            "ipo_loss",
            "mdpo_loss",
            "mmedpo_loss",
            "orpo_loss",
            "robust_dpo_loss",
            "simpo_loss",
        )
    },
    "RecipeConfig": "trainers.config",
    "RecipeError": "trainers.config",
    "load_recipe": "trainers.config",
    "list_recipes": "trainers.config",
    "list_backbones": "trainers.config",
    "OBJECTIVES": "trainers.objectives",
    "load_preference_file": "trainers.data",
    "validate_records": "trainers.data",
    "PreferenceCollator": "trainers.collator",
    "MedPreferenceTrainer": "trainers.trainer",
    "TrainResult": "trainers.run",
    "train": "trainers.run",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trainers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
