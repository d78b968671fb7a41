"""Typed recipe configuration: YAML recipe files, backbone profiles and ``--key value`` overrides.

A recipe is a small YAML file in ``trainers/recipes/`` naming an objective and the hyperparameters that differ
from the defaults below (the study's: β = 0.1, lr 1e-7 cosine, warmup 3 %, 3 epochs, projector frozen). A backbone
profile in ``trainers/backbones/`` adds the settings one model family needs (chat template, max length, which
modules train). Settings resolve as: field defaults < backbone profile < recipe file < command-line overrides (a profile
never overrides what the recipe itself states).

Everything here is import-light: no torch, no TRL (TRL is imported only to validate ``trainer_args`` keys).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medbench.errors import MedbenchError

from .objectives import OBJECTIVES, TRL_LOSS_TYPES

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
BACKBONES_DIR = Path(__file__).resolve().parent / "backbones"
ACCELERATE_DIR = Path(__file__).resolve().parent / "accelerate"

# Language-model projections LoRA adapts by default (Llama/Mistral/Qwen2 naming).
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# DPOConfig arguments medbench-train sets itself; letting a recipe override them would break the pipeline.
_MANAGED_TRAINER_ARGS = {
    "output_dir": "pass --output_dir",
    "use_cpu": "set `precision` (auto picks the device)",
    "bf16": "set `precision: bf16`",
    "fp16": "set `precision` (fp16 is not supported)",
    "remove_unused_columns": "the collator needs every column",
    "loss_type": "set `objective: trl` and `trl_loss_type`",
    "loss_weights": "set `trl_loss_weights`",
    "precompute_ref_log_probs": "TRL cannot precompute reference log-probs for image data",
    "warmup_steps": "set `warmup_ratio`",
}


class RecipeError(MedbenchError):
    """A recipe file, backbone profile or override is unusable; the message names the field and the fix."""


@dataclass
class RecipeConfig:
    """Everything one ``medbench-train`` run needs besides the model, data and output directory.

    Field values come from a recipe YAML file, an optional backbone profile and command-line overrides; the
    instance validates itself on construction and raises :class:`RecipeError` with one line naming the field.
    """

    # Identity
    name: str = field(default="custom", metadata={"help": "Recipe name (the recipe file's stem)."})
    description: str = field(default="", metadata={"help": "One-line description shown by `medbench train --list`."})
    objective: str = field(default="dpo", metadata={"help": f"Loss to optimise, one of: {', '.join(OBJECTIVES)}."})
    paper: str = field(default="", metadata={"help": "Link to the method's paper."})

    # Objective hyperparameters
    beta: float = field(
        default=0.1,
        metadata={"help": "β: KL strength (DPO family), τ for IPO, reward scale for SimPO, λ for ORPO. Study: 0.1."},
    )
    nll_weight: float = field(
        default=1.0, metadata={"help": "α: weight of the length-normalised NLL term of `dpo_nll`. Study: 1.0."}
    )
    label_smoothing: float = field(
        default=0.0,
        metadata={"help": "ε in [0, 0.5): assumed label-flip rate for `robust_dpo` / `cdpo` (and TRL's robust/exo)."},
    )
    simpo_gamma: float = field(default=0.5, metadata={"help": "γ: SimPO's target reward margin."})
    anchor_delta: float = field(default=0.0, metadata={"help": "δ: mDPO's reward anchor (0 in the paper)."})
    visual_error_types: list[str] = field(
        default_factory=lambda: ["visual_misinterpretation"],
        metadata={
            "help": "Error taxonomy keys (categories or subtypes, medbench/data/error_taxonomy.yaml) trained with the image-side "
            "term by `error_targeted`; every other error type gets the text-side (DPO) term."
        },
    )
    terms: list[str] | None = field(
        default=None,
        metadata={
            "help": "Loss terms to sum (e.g. [dpo, copo, anchor]); default: the objective's own. Each term may only "
            "read rows the objective builds (see `medbench train --list`)."
        },
    )
    term_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per entry of `terms` (default: all 1.0)."}
    )
    trl_loss_type: list[str] = field(
        default_factory=lambda: ["sigmoid"],
        metadata={"help": f"For `objective: trl`: TRL loss types to combine, from {', '.join(TRL_LOSS_TYPES)}."},
    )
    trl_loss_weights: list[float] | None = field(
        default=None, metadata={"help": "For `objective: trl`: one weight per entry of `trl_loss_type`."}
    )

    # Model
    backbone: str | None = field(
        default=None,
        metadata={"help": "Backbone profile from trainers/backbones/ (chat template, max length, trained modules)."},
    )
    chat_template: str | None = field(
        default=None, metadata={"help": "Jinja chat template replacing the processor's own (saved with the model)."}
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "System message put before every question (none by default)."}
    )
    freeze_vision_tower: bool = field(
        default=True, metadata={"help": "Keep the vision encoder frozen (the study did)."}
    )
    freeze_projector: bool = field(
        default=True, metadata={"help": "Keep the vision-language projector frozen (the study did: projector lr 0)."}
    )
    vision_tower_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Module names of the vision encoder; detected for LLaVA and Qwen-VL models when unset."},
    )
    projector_modules: list[str] | None = field(
        default=None, metadata={"help": "Module names of the projector; detected for LLaVA and Qwen-VL when unset."}
    )
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling α."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_LORA_TARGETS),
        metadata={"help": "Linear-layer names LoRA adapts, inside the language model only."},
    )
    merge_lora: bool = field(
        default=True, metadata={"help": "After LoRA training, also save a merged full model in <output_dir>/merged."}
    )
    gradient_checkpointing: bool = field(default=True, metadata={"help": "Trade compute for activation memory."})
    precision: str = field(
        default="auto", metadata={"help": "auto (bf16 on a CUDA GPU, fp32 on CPU), bf16 (needs CUDA) or fp32."}
    )
    model_dtype: str = field(
        default="float32",
        metadata={"help": "dtype the weights are loaded in: float32 (mixed precision under bf16) or bfloat16."},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow models that ship their own code."})
    max_length: int | None = field(
        default=1024, metadata={"help": "Maximum tokens per sequence (prompt incl. image tokens + answer)."}
    )

    # Training loop (TrainingArguments); defaults are the study's
    learning_rate: float = field(default=1e-7, metadata={"help": "Peak learning rate. Study: 1e-7."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule. Study: cosine."})
    warmup_ratio: float = field(default=0.03, metadata={"help": "Fraction of steps for linear warm-up. Study: 0.03."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs. Study: 3."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimiser steps (-1: use epochs)."})
    per_device_train_batch_size: int = field(
        default=4, metadata={"help": "Records per device per step. Study: 4 x 4 GPUs = global batch 16."}
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Steps to accumulate; raise it on fewer GPUs to keep the global batch at 16."}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay. Study: 0."})
    seed: int = field(default=42, metadata={"help": "Random seed (data order, LoRA init)."})
    logging_steps: int = field(default=1, metadata={"help": "Log (and plot) every this many steps."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to write checkpoints: no, steps or epoch."})
    save_total_limit: int | None = field(default=3, metadata={"help": "Keep at most this many checkpoints."})
    report_to: list[str] = field(
        default_factory=lambda: ["none"], metadata={"help": "Experiment trackers (tensorboard, wandb, ...)."}
    )
    trainer_args: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Any other trl.DPOConfig / TrainingArguments argument, passed through unchanged."},
    )

    def __post_init__(self) -> None:
        self._coerce_types()
        self._validate()

    # -- validation ---------------------------------------------------------------------------------------------

    def _fail(self, field_name: str, problem: str) -> typing.NoReturn:
        raise RecipeError(f"recipe '{self.name}': `{field_name}` {problem}")

    def _coerce_types(self) -> None:
        hints = _field_types()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            try:
                setattr(self, f.name, _coerce(value, hints[f.name]))
            except (TypeError, ValueError):
                self._fail(f.name, f"must be {_describe_type(hints[f.name])}, got {value!r}")

    def _validate(self) -> None:
        if self.objective not in OBJECTIVES:
            self._fail("objective", f"is {self.objective!r}; choose one of: {', '.join(OBJECTIVES)}")
        if not self.beta > 0:
            self._fail("beta", f"must be > 0, got {self.beta}")
        if self.nll_weight < 0:
            self._fail("nll_weight", f"must be >= 0, got {self.nll_weight}")
        if not 0.0 <= self.label_smoothing < 0.5:
            self._fail("label_smoothing", f"must lie in [0, 0.5), got {self.label_smoothing}")
        if not self.visual_error_types:
            self._fail("visual_error_types", "must name at least one error type")
        from medbench.taxonomy import load_taxonomy

        try:
            self.visual_error_types = [load_taxonomy().check(t, "visual_error_types") for t in self.visual_error_types]
        except MedbenchError as error:
            self._fail("visual_error_types", f"is invalid: {error}")
        if self.terms is not None or self.term_weights is not None:
            from .objectives import check_terms

            objective = OBJECTIVES[self.objective]
            terms = list(self.terms) if self.terms is not None else list(objective.default_terms())
            problem = check_terms(objective, terms, self.term_weights)
            if problem:
                self._fail("terms" if "weights" not in problem else "term_weights", problem)
            if self.term_weights is not None and any(w < 0 for w in self.term_weights):
                self._fail("term_weights", f"must be >= 0, got {self.term_weights}")
        bad = [t for t in self.trl_loss_type if t not in TRL_LOSS_TYPES]
        if not self.trl_loss_type or bad:
            self._fail("trl_loss_type", f"has unknown loss types {bad}; choose from {', '.join(TRL_LOSS_TYPES)}")
        if self.trl_loss_weights is not None and len(self.trl_loss_weights) != len(self.trl_loss_type):
            self._fail("trl_loss_weights", "needs one weight per entry of trl_loss_type")
        if self.precision not in ("auto", "bf16", "fp32"):
            self._fail("precision", f"is {self.precision!r}; choose auto, bf16 or fp32")
        if self.model_dtype not in ("float32", "bfloat16", "auto"):
            self._fail("model_dtype", f"is {self.model_dtype!r}; choose float32, bfloat16 or auto")
        if self.max_length is not None and self.max_length < 8:
            self._fail("max_length", f"must be >= 8 (or null for no truncation), got {self.max_length}")
        for name in (
            "lora_r",
            "lora_alpha",
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "logging_steps",
        ):
            if getattr(self, name) < 1:
                self._fail(name, f"must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.lora_dropout < 1.0:
            self._fail("lora_dropout", f"must lie in [0, 1), got {self.lora_dropout}")
        if not self.lora_target_modules:
            self._fail("lora_target_modules", "must name at least one module")
        if not self.learning_rate > 0:
            self._fail("learning_rate", f"must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            self._fail("warmup_ratio", f"must lie in [0, 1), got {self.warmup_ratio}")
        if self.max_steps == 0 or self.max_steps < -1:
            self._fail("max_steps", f"must be -1 (use epochs) or >= 1, got {self.max_steps}")
        if self.max_steps == -1 and not self.num_train_epochs > 0:
            self._fail("num_train_epochs", f"must be > 0, got {self.num_train_epochs}")
        if self.save_strategy not in ("no", "steps", "epoch", "best"):
            self._fail("save_strategy", f"is {self.save_strategy!r}; choose no, steps or epoch")
        if self.objective == "trl" and "exo_pair" in self.trl_loss_type and self.label_smoothing == 0.0:
            self._fail("label_smoothing", "must be > 0 for TRL's exo_pair loss (the EXO paper suggests 1e-3)")
        if self.objective in ("robust_dpo", "cdpo") and self.label_smoothing == 0.0:
            self._fail("label_smoothing", f"must be > 0 for objective {self.objective} (0 makes it plain DPO)")
        self._validate_trainer_args()

    def _validate_trainer_args(self) -> None:
        if not self.trainer_args:
            return
        own = {f.name for f in dataclasses.fields(self)}
        allowed = dpo_config_fields()
        for key in self.trainer_args:
            if key in _MANAGED_TRAINER_ARGS:
                self._fail(f"trainer_args.{key}", f"is managed by medbench train: {_MANAGED_TRAINER_ARGS[key]}")
            if key in own:
                self._fail(f"trainer_args.{key}", "is a recipe field; set it at the top level instead")
            if key not in allowed:
                self._fail(f"trainer_args.{key}", "is not a trl.DPOConfig / TrainingArguments argument")

    # -- views --------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view (for metadata files)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class BackboneProfile:
    """Settings one model family needs, shipped as ``trainers/backbones/<name>.yaml``.

    Attributes:
        name: Profile name (the file stem), used as ``--backbone NAME``.
        description: One line for ``--list``.
        model_type: The Hugging Face ``config.model_type`` the profile is written for; loading another fails.
        checkpoint: Where the weights come from (a hub id or a note), for documentation.
        settings: Recipe fields the profile sets (over the defaults, under the recipe file and the command line).
    """

    name: str
    description: str
    model_type: str
    checkpoint: str
    settings: dict[str, Any]


# -- loading ----------------------------------------------------------------------------------------------------


def recipe_paths() -> list[Path]:
    """The shipped recipe files, sorted by name."""
    return sorted(RECIPES_DIR.glob("*.yaml"))


def list_recipes() -> list[RecipeConfig]:
    """Every shipped recipe, loaded and validated, sorted by name."""
    return [load_recipe(path) for path in recipe_paths()]


def list_backbones() -> list[BackboneProfile]:
    """Every shipped backbone profile, sorted by name."""
    return [load_backbone_profile(path.stem) for path in sorted(BACKBONES_DIR.glob("*.yaml"))]


def resolve_recipe_path(config: str | Path) -> Path:
    """Find a recipe file from a path or a bare recipe name (``dpo`` means ``trainers/recipes/dpo.yaml``)."""
    path = Path(config)
    if path.is_file():
        return path
    # A bare name, or the documented `trainers/recipes/<name>.yaml` typed outside a source checkout.
    shipped = RECIPES_DIR / f"{path.stem}.yaml"
    if path.suffix in ("", ".yaml") and path.parent.name in ("", "recipes") and shipped.is_file():
        return shipped
    names = ", ".join(p.stem for p in recipe_paths())
    raise RecipeError(f"recipe file not found: {config} (shipped recipes: {names})")


def _read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RecipeError(f"{what} {path} is not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{what} {path} must be a YAML mapping of field: value")
    return data


def load_backbone_profile(name: str) -> BackboneProfile:
    """Load ``trainers/backbones/<name>.yaml``.

    Raises:
        RecipeError: unknown profile or malformed file.
    """
    path = BACKBONES_DIR / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(p.stem for p in sorted(BACKBONES_DIR.glob("*.yaml")))
        raise RecipeError(f"unknown backbone profile {name!r} (shipped: {names})")
    data = _read_yaml_mapping(path, "backbone profile")
    settings = data.get("settings") or {}
    own = {f.name for f in dataclasses.fields(RecipeConfig)}
    for key in settings:
        if key not in own:
            raise RecipeError(f"backbone profile {path}: settings.{key} is not a recipe field")
    for key in ("description", "model_type", "checkpoint"):
        if not data.get(key):
            raise RecipeError(f"backbone profile {path}: `{key}` is missing")
    return BackboneProfile(
        name=path.stem,
        description=str(data["description"]),
        model_type=str(data["model_type"]),
        checkpoint=str(data["checkpoint"]),
        settings=dict(settings),
    )


def load_recipe(
    config: str | Path,
    overrides: Mapping[str, Any] | None = None,
) -> RecipeConfig:
    """Load a recipe file, apply its backbone profile and overrides, and validate the result.

    Args:
        config: Path of a recipe YAML file, or the name of a shipped recipe.
        overrides: ``{key: value}`` from the command line. Keys that are recipe fields replace them (values may be
            strings, converted to the field's type); any other key must be a ``trl.DPOConfig`` argument and goes
            to ``trainer_args``. ``backbone`` selects a profile.

    Returns:
        The validated configuration.

    Raises:
        RecipeError: with one line naming the file/field at fault.
    """
    path = resolve_recipe_path(config)
    raw = _read_yaml_mapping(path, "recipe")
    own = {f.name for f in dataclasses.fields(RecipeConfig)}
    unknown = [key for key in raw if key not in own]
    if unknown:
        raise RecipeError(
            f"recipe {path}: unknown key `{unknown[0]}`; put trl.DPOConfig arguments under `trainer_args:`"
        )
    raw.setdefault("name", path.stem)
    overrides = dict(overrides or {})
    trainer_args = dict(raw.get("trainer_args") or {})
    field_overrides: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in own:
            field_overrides[key] = value
        elif key in _MANAGED_TRAINER_ARGS:
            raise RecipeError(f"--{key} is managed by medbench train: {_MANAGED_TRAINER_ARGS[key]}")
        elif key in dpo_config_fields():
            trainer_args[key] = _parse_trainer_arg(key, value)
        else:
            raise RecipeError(f"unknown option --{key}: not a recipe field nor a trl.DPOConfig argument")
    backbone = field_overrides.get("backbone", raw.get("backbone"))
    # Precedence: field defaults < backbone profile < recipe file < command line. A profile fills in what the
    # model family needs; it never overrides a value the recipe states itself (e.g. the recipe's max_length).
    merged: dict[str, Any] = {}
    if backbone:
        merged.update(load_backbone_profile(str(backbone)).settings)
    merged.update(raw)
    merged.update(field_overrides)
    merged["trainer_args"] = trainer_args
    if backbone:
        merged["backbone"] = str(backbone)
    return RecipeConfig(**merged)


# -- type coercion for YAML and command-line values --------------------------------------------------------------


def parse_cli_value(text: str) -> Any:
    """Best-effort typing of a command-line string whose target type is unknown (YAML rules, ``1e-7`` floats)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "1e-7" as a string
        except ValueError:
            return value
    return value


def _parse_trainer_arg(key: str, value: Any) -> Any:
    """Coerce a pass-through DPOConfig value to that argument's declared type when it is a simple one."""
    hint = dpo_config_fields()[key]
    try:
        return _coerce(value, hint)
    except (TypeError, ValueError):
        # Unusual annotations (unions with dicts, enums): type the string by YAML rules, DPOConfig checks it.
        return parse_cli_value(value) if isinstance(value, str) else value


_FIELD_TYPES: dict[str, Any] = {}


def _field_types() -> dict[str, Any]:
    if not _FIELD_TYPES:
        _FIELD_TYPES.update(typing.get_type_hints(RecipeConfig))
    return _FIELD_TYPES


_DPO_FIELDS: dict[str, Any] = {}


def dpo_config_fields() -> dict[str, Any]:
    """Names and annotated types of ``trl.DPOConfig``'s fields (imports TRL on first use)."""
    if not _DPO_FIELDS:
        from trl import DPOConfig

        _DPO_FIELDS.update({f.name: f.type for f in dataclasses.fields(DPOConfig) if f.init})
    return _DPO_FIELDS


def _describe_type(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(value: Any, hint: Any) -> Any:
    """Convert ``value`` to the type ``hint`` describes (bool/int/float/str, optionals, lists, dicts).

    Raises:
        TypeError / ValueError: when the value cannot represent that type.
    """
    if isinstance(hint, str):  # annotation kept as a string (e.g. from TRL's dataclasses)
        hint = {"int": int, "float": float, "str": str, "bool": bool}.get(hint, Any)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"{value!r} matches none of {args}")
    if origin is list:
        (item,) = args or (Any,)
        if isinstance(value, str):
            text = value.strip()
            # "[a, b]" is YAML; "a,b" a comma-separated list.
            value = yaml.safe_load(text) if text.startswith("[") else [p.strip() for p in text.split(",") if p.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(v, item) for v in value]
    if origin is dict or hint is dict:
        if isinstance(value, str) and value.strip().startswith("{"):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise TypeError("expected a mapping")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError("expected true or false")
    if hint is int:
        if isinstance(value, bool):
            raise TypeError("expected an integer")
        if isinstance(value, float) and not value.is_integer():
            raise ValueError("expected an integer")
        return int(value)
    if hint is float:
        if isinstance(value, bool):
            raise TypeError("expected a number")
        return float(value)
    if hint is str:
        # A bool here is YAML 1.1 reading an unquoted no/yes/on/off; refuse rather than guess "False".
        if isinstance(value, (dict, list, bool)):
            raise TypeError("expected a string (quote YAML words like 'no')")
        return str(value)
    return value
