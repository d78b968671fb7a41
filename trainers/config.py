"""Recipe configuration: YAML recipe files, backbone profiles and ``--key value`` overrides.

A recipe is a small YAML file in ``trainers/recipes/`` naming an objective and the settings that differ from the
study's. Its keys share one flat namespace, as in TRL's own ``TrlParser((ScriptArguments, DPOConfig))`` scripts:

* medbench's own settings, the fields of :class:`RecipeConfig` (objective, loss terms, model loading, LoRA, ...);
* any ``trl.DPOConfig`` / ``TrainingArguments`` argument (``beta``, ``learning_rate``, ``max_length``,
  ``save_steps``, ...). They are kept as stated in :attr:`RecipeConfig.dpo_args` and become a ``DPOConfig`` at
  train time (:func:`resolve_training_args`), over :data:`TRAINING_DEFAULTS` (the study's). A recipe with
  ``objective: grpo`` (online RL, :mod:`medbench.train.grpo`) states ``trl.GRPOConfig`` arguments the same way
  (``loss_type``, ``num_generations``, ``reward_weights``, ``multi_objective_aggregation``, ...).

A backbone profile in ``trainers/backbones/`` adds the settings one model family needs (chat template, max length,
which modules train). Settings resolve as: defaults < backbone profile < recipe file < command-line overrides (a
profile never overrides what the recipe itself states). ``transformers.HfArgumentParser`` types every value from
the dataclass annotations (:func:`parse_dataclass`), so a YAML value and the same text on the command line mean
the same thing.

Loading a recipe imports no torch and no TRL (only transformers' argument parser); ``medbench train --list`` reads
the recipe files' names and descriptions only.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medbench.errors import MedbenchError

from .objectives import OBJECTIVES, ONLINE_OBJECTIVE, TRL_LOSS_TYPES

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
BACKBONES_DIR = Path(__file__).resolve().parent / "backbones"
ACCELERATE_DIR = Path(__file__).resolve().parent / "accelerate"

# Language-model projections LoRA adapts by default (Llama/Mistral/Qwen2 naming).
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# The study's training settings (trl.DPOConfig arguments), under every recipe, backbone profile and override.
TRAINING_DEFAULTS: dict[str, Any] = {
    "beta": 0.1,
    "learning_rate": 1e-7,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.03,  # transformers 5 reads a value below 1 as a fraction of the steps
    "num_train_epochs": 3.0,
    "max_steps": -1,
    "per_device_train_batch_size": 4,  # x 4 GPUs = the study's global batch 16
    "gradient_accumulation_steps": 1,  # raise it on fewer GPUs to keep the global batch at 16
    "weight_decay": 0.0,
    "seed": 42,
    "logging_steps": 1,
    "save_strategy": "epoch",
    "save_total_limit": 3,
    "report_to": "none",
    "max_length": 1024,
    "activation_checkpointing": True,
}

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
}

# For GRPO: loss_type / reward_weights are GRPOConfig's own settings (DPO's loss keys are no GRPOConfig arguments).
_MANAGED_GRPO_ARGS = {key: _MANAGED_TRAINER_ARGS[key] for key in ("output_dir", "use_cpu", "bf16", "fp16")}
_MANAGED_GRPO_ARGS["remove_unused_columns"] = "the rewards read the answer columns"

# Keys that are no settings any more, with the one to use.
_REPLACED_KEYS = {
    "warmup_ratio": "transformers 5 removed it; set `warmup_steps` (a value below 1 is a fraction of the steps)",
    "gradient_checkpointing": "it is transformers 5's deprecated alias; set `activation_checkpointing`",
    "trainer_args": "state trl.DPOConfig arguments at the top level of the recipe",
}


class RecipeError(MedbenchError):
    """A recipe file, backbone profile or override is unusable; the message names the field and the fix."""


def _check_key(where: str, key: str, online: bool = False) -> None:
    """Refuse a key medbench train manages itself or one that was replaced (``where`` names the file or recipe;
    ``online``: the recipe trains with GRPO, whose loss settings are its own)."""
    managed = _MANAGED_GRPO_ARGS if online else _MANAGED_TRAINER_ARGS
    if key in managed:
        raise RecipeError(f"{where}: `{key}` is managed by medbench train: {managed[key]}")
    if key in _REPLACED_KEYS:
        raise RecipeError(f"{where}: `{key}` is not a setting: {_REPLACED_KEYS[key]}")


@dataclass
class RecipeConfig:
    """medbench's own settings for one ``medbench-train`` run, and the ``trl.DPOConfig`` arguments the recipe states.

    Field values come from a recipe YAML file, an optional backbone profile and command-line overrides; the
    instance validates itself on construction and raises :class:`RecipeError` with one line naming the field.
    Settings ``trl.DPOConfig`` has (``beta``, ``label_smoothing``, ``max_length``, ``learning_rate``, ...) are not
    fields here: they are kept in :attr:`dpo_args` and resolved by :func:`resolve_training_args`.
    """

    # Identity
    name: str = field(default="custom", metadata={"help": "Recipe name (the recipe file's stem)."})
    description: str = field(default="", metadata={"help": "One-line description shown by `medbench train --list`."})
    objective: str = field(default="dpo", metadata={"help": f"Loss to optimise, one of: {', '.join(OBJECTIVES)}."})
    paper: str = field(default="", metadata={"help": "Link to the method's paper."})

    # Objective hyperparameters (β and ε are trl.DPOConfig's `beta` and `label_smoothing`)
    nll_weight: float = field(
        default=1.0, metadata={"help": "α: weight of the length-normalised NLL term of `dpo_nll`. Study: 1.0."}
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
    rewards: list[str] = field(
        default_factory=lambda: ["closed_exact"],
        metadata={
            "help": "For `objective: grpo`: medbench rewards (medbench.rewards: closed_exact, open_recall, token_f1, "
            "rouge_l, judge_nli), weighted by trl.GRPOConfig's `reward_weights`."
        },
    )
    prompt_of: str | None = field(
        default=None,
        metadata={
            "help": "For `objective: grpo`: the medbench VQA task whose prompt (pre_prompt + question + post_prompt) "
            "wraps each question, so the model trains on the prompt it is evaluated on; null: the question as written."
        },
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
    preprocess: bool = field(
        default=True,
        metadata={"help": "Tokenize and image-process the training set once into a cached dataset (MEDBENCH_TRAIN_CACHE, "
                  "keyed by data, processor and objective) so each step only pads and stacks; false collates every step."},
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
    precision: str = field(
        default="auto", metadata={"help": "auto (bf16 on a CUDA GPU, fp32 on CPU), bf16 (needs CUDA) or fp32."}
    )
    model_dtype: str = field(
        default="float32",
        metadata={"help": "dtype the weights are loaded in: float32 (mixed precision under bf16) or bfloat16."},
    )

    # Everything else: trl.DPOConfig / TrainingArguments arguments, as stated (not a recipe key itself)
    dpo_args: dict[str, Any] = field(
        default_factory=dict,
        init=False,
        metadata={
            "help": "The trl.DPOConfig / TrainingArguments arguments the profile, recipe and command line state "
            "(beta, label_smoothing, max_length, learning_rate, save_steps, ...), over TRAINING_DEFAULTS."
        },
    )

    def __post_init__(self) -> None:
        self._validate()

    # -- validation ---------------------------------------------------------------------------------------------

    def _fail(self, field_name: str, problem: str) -> typing.NoReturn:
        raise RecipeError(f"recipe '{self.name}': `{field_name}` {problem}")

    @property
    def online(self) -> bool:
        """Whether the recipe trains online (GRPO: sampled answers, rewards) rather than on preference pairs."""
        return self.objective == ONLINE_OBJECTIVE

    def _validate(self) -> None:
        if self.objective not in OBJECTIVES:
            self._fail("objective", f"is {self.objective!r}; choose one of: {', '.join(OBJECTIVES)}")
        if self.online:
            from medbench.rewards import REWARDS

            unknown = [name for name in self.rewards if name not in REWARDS]
            if not self.rewards or unknown:
                self._fail("rewards", f"has unknown rewards {unknown}; choose from {', '.join(REWARDS)}")
        if self.nll_weight < 0:
            self._fail("nll_weight", f"must be >= 0, got {self.nll_weight}")
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
        for name in ("lora_r", "lora_alpha"):
            if getattr(self, name) < 1:
                self._fail(name, f"must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.lora_dropout < 1.0:
            self._fail("lora_dropout", f"must lie in [0, 1), got {self.lora_dropout}")
        if not self.lora_target_modules:
            self._fail("lora_target_modules", "must name at least one module")

    def check_training_args(self, args: Any) -> None:
        """Check the resolved ``trl.DPOConfig`` where the objective needs more than TRL checks itself.

        Raises:
            RecipeError: naming the argument.
        """
        if self.online:
            from .grpo import check_grpo_args

            check_grpo_args(self, args)
            return
        if not args.beta > 0:
            self._fail("beta", f"must be > 0, got {args.beta}")
        if not 0.0 <= args.label_smoothing < 0.5:
            self._fail("label_smoothing", f"must lie in [0, 0.5), got {args.label_smoothing}")
        if self.objective != "trl" and args.label_smoothing == 0.0:
            from .objectives import TERMS

            terms = self.terms if self.terms is not None else OBJECTIVES[self.objective].default_terms()
            smoothed = [name for name in terms if TERMS[name].label_smoothing]
            if smoothed:
                self._fail("label_smoothing", f"must be > 0 for term {', '.join(smoothed)} of objective {self.objective} (0 makes it plain DPO)")
        if self.objective == "trl" and "exo_pair" in self.trl_loss_type and args.label_smoothing == 0.0:
            self._fail("label_smoothing", "must be > 0 for TRL's exo_pair loss (the EXO paper suggests 1e-3)")
        if args.max_length is not None and args.max_length < 8:
            self._fail("max_length", f"must be >= 8 (or null for no truncation), got {args.max_length}")

    # -- views --------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view (for metadata files)."""
        return dataclasses.asdict(self)


def recipe_fields() -> set[str]:
    """The keys a recipe states for :class:`RecipeConfig` itself (every other key is a trl.DPOConfig argument)."""
    return {f.name for f in dataclasses.fields(RecipeConfig) if f.init}


@dataclass(frozen=True)
class BackboneProfile:
    """Settings one model family needs, shipped as ``trainers/backbones/<name>.yaml``.

    Attributes:
        name: Profile name (the file stem), used as ``--backbone NAME``.
        description: One line for ``--list``.
        model_type: The Hugging Face ``config.model_type`` the profile is written for; loading another fails.
        checkpoint: Where the weights come from (a hub id or a note), for documentation.
        settings: Recipe keys the profile sets (over the defaults, under the recipe file and the command line).
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


def recipe_index() -> list[dict[str, str]]:
    """``name``, ``objective`` and ``description`` of every shipped recipe, read as stated (for ``--list``)."""
    index = []
    for path in recipe_paths():
        raw = _read_yaml_mapping(path, "recipe")
        index.append({"name": path.stem, "objective": str(raw.get("objective", RecipeConfig.objective)),
                      "description": str(raw.get("description", ""))})
    return index


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
    for key in settings:
        _check_key(f"backbone profile {path}: settings", key)
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
    """Load a recipe file, apply its backbone profile and overrides, and validate medbench's own settings.

    Args:
        config: Path of a recipe YAML file, or the name of a shipped recipe.
        overrides: ``{key: value}`` from the command line (values may be strings, typed like the recipe file's).
            ``backbone`` selects a profile.

    Returns:
        The validated configuration; keys that are not :class:`RecipeConfig` fields go to ``dpo_args``, checked
        against ``trl.DPOConfig`` by :func:`resolve_training_args` (at train time, before any data or model loads).

    Raises:
        RecipeError: with one line naming the recipe/file and field at fault.
    """
    path = resolve_recipe_path(config)
    stated = _read_yaml_mapping(path, "recipe")
    overrides = dict(overrides or {})
    backbone = overrides.get("backbone", stated.get("backbone"))
    # Precedence: defaults < backbone profile < recipe file < command line. A profile fills in what the model family
    # needs; it never overrides a value the recipe states itself (e.g. the recipe's max_length).
    merged: dict[str, Any] = {"name": path.stem}
    if backbone:
        merged.update(load_backbone_profile(str(backbone)).settings)
    merged.update(stated)
    merged.update(overrides)
    if backbone:
        merged["backbone"] = str(backbone)
    name = str(merged["name"])
    online = merged.get("objective") == ONLINE_OBJECTIVE
    for key in merged:
        _check_key(f"recipe '{name}'", key, online)
    own = recipe_fields()
    recipe = parse_dataclass(RecipeConfig, {key: value for key, value in merged.items() if key in own}, name)
    recipe.dpo_args = {key: value for key, value in merged.items() if key not in own}
    return recipe


def training_defaults(recipe: RecipeConfig) -> dict[str, Any]:
    """The settings under the recipe's own: :data:`TRAINING_DEFAULTS`, or for GRPO those ``trl.GRPOConfig`` has, under
    :data:`medbench.train.grpo.GRPO_DEFAULTS`."""
    if not recipe.online:
        return dict(TRAINING_DEFAULTS)
    from .grpo import GRPO_DEFAULTS

    return {**{key: value for key, value in TRAINING_DEFAULTS.items() if key != "max_length"}, **GRPO_DEFAULTS}


def resolve_training_args(recipe: RecipeConfig, managed: Mapping[str, Any]):
    """The recipe's ``trl.DPOConfig`` (``trl.GRPOConfig`` for GRPO): :func:`training_defaults` < ``recipe.dpo_args`` <
    ``managed`` (imports TRL).

    Args:
        recipe: The loaded recipe.
        managed: The arguments medbench train sets itself (output directory, precision, loss type).

    Raises:
        RecipeError: an unknown setting (with the closest known name), a value of the wrong type, or settings
            ``trl.DPOConfig`` or the objective reject.
    """
    from trl import DPOConfig, GRPOConfig

    config_class = GRPOConfig if recipe.online else DPOConfig
    known = {f.name for f in dataclasses.fields(config_class) if f.init}
    # A null un-states a setting the trainer does not have (a study-wide DPO `max_length` under a GRPO recipe).
    stated = {key: value for key, value in recipe.dpo_args.items() if key in known or value not in (None, "null")}
    for key in stated:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known | recipe_fields()), n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            raise RecipeError(
                f"recipe '{recipe.name}': unknown setting `{key}` (not a recipe field nor a trl.{config_class.__name__} "
                f"argument){hint}"
            )
    try:
        args = parse_dataclass(config_class, {**training_defaults(recipe), **stated, **managed}, recipe.name)
    except (TypeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RecipeError(f"recipe '{recipe.name}': trl.{config_class.__name__} rejected the settings: {first}") from None
    recipe.check_training_args(args)
    return args


# -- typing values with transformers' HfArgumentParser -------------------------------------------------------------


def parse_dataclass(cls: type, values: Mapping[str, Any], recipe: str) -> Any:
    """``cls(**values)``, each value typed by ``transformers.HfArgumentParser`` from ``cls``'s annotations.

    Every value is handed to the parser as command-line text, so YAML values and overrides are typed alike: a
    scalar as ``--key=value``; a list, or a comma-separated string, item by item where the argument takes several
    values. ``None`` (or the text ``null``) is taken as it is, and so are a mapping or a list for an argument
    HfArgumentParser reads as text (``model_init_kwargs``, ``report_to``). Keys that are not fields of ``cls``
    are ignored.

    Raises:
        RecipeError: a value the argument's type rejects, as ``recipe 'NAME': `key` must be a float, got 'abc'``.
    """
    from transformers.hf_argparser import HfArgumentParser

    parser = HfArgumentParser(cls, allow_abbrev=False, add_help=False)
    parser.error = functools.partial(_argument_error, recipe)
    argv: list[str] = []
    for action in parser._actions:
        option = f"--{action.dest}"
        if action.dest not in values or option not in action.option_strings:  # (also skips the --no_X flags)
            continue
        value = values[action.dest]
        if value is None or value == "null":
            action.default = None
        elif action.nargs in ("+", "*"):
            items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value]
            argv += [option, *(text for item in items if (text := str(item).strip()))]
        elif isinstance(value, (list, dict)) and action.type is str:
            action.default = value  # DPOConfig's `dict | str` and `str | list[str]` arguments parse as text
        else:
            argv.append(f"{option}={value}")
    (instance,) = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    return instance


def _argument_error(recipe: str, message: str) -> typing.NoReturn:
    """argparse's complaint about one argument, as one line naming the recipe, the field and the problem."""
    match = re.fullmatch(r"argument --(\w+)\S*: (.*)", message)
    if not match:
        raise RecipeError(f"recipe '{recipe}': {message}")
    key, problem = match.groups()
    if typed := re.fullmatch(r"invalid (\w+) value: (.*)", problem):
        article = "an" if typed[1][0] in "aeiou" else "a"
        problem = f"must be {article} {typed[1]}, got {typed[2]}"
    elif choice := re.fullmatch(r"invalid choice: (.*) \(choose from (.*)\)", problem):
        problem = f"is {choice[1]}; choose from {choice[2]}"
    elif truth := re.fullmatch(r"Truthy value expected: got (.*) but .*", problem):
        problem = f"must be true or false, got {truth[1]!r}"
    raise RecipeError(f"recipe '{recipe}': `{key}` {problem}")
