"""medbench-train: the study's preference-optimisation variants on any Hugging Face vision-language model.

``import medbench.train`` is cheap: the names below load their modules (and torch / TRL) on first access.

* Pure objectives: ``dpo_loss``, ``dpo_nll_loss``, ``ipo_loss``, ``robust_dpo_loss``, ``conservative_dpo_loss``,
  ``simpo_loss``, ``orpo_loss``, ``copo_loss``, ``anchor_loss``, ``mdpo_loss``, ``mmedpo_loss``,
  ``error_targeted_loss``, ``sft_loss`` (:mod:`medbench.train.losses`).
* Configuration: ``RecipeConfig``, ``load_recipe``, ``list_recipes``, ``list_backbones`` (:mod:`medbench.train.config`).
* Data: ``load_preference_file``, ``validate_records`` (:mod:`medbench.train.data`).
* Training: ``PreferenceCollator``, ``MedPreferenceTrainer``, ``train`` (:mod:`medbench.train.collator`,
  :mod:`medbench.train.trainer`, :mod:`medbench.train.run`).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    **{
        name: "medbench.train.losses"
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
            "sft_loss",
            "simpo_loss",
        )
    },
    "RecipeConfig": "medbench.train.config",
    "RecipeError": "medbench.train.config",
    "load_recipe": "medbench.train.config",
    "list_recipes": "medbench.train.config",
    "list_backbones": "medbench.train.config",
    "OBJECTIVES": "medbench.train.objectives",
    "load_preference_file": "medbench.train.data",
    "validate_records": "medbench.train.data",
    "PreferenceCollator": "medbench.train.collator",
    "MedPreferenceTrainer": "medbench.train.trainer",
    "TrainResult": "medbench.train.run",
    "train": "medbench.train.run",
}

__all__ = sorted(_LAZY)  # noqa: PLE0605 - the lazy table above is the one list of public names


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'medbench.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
