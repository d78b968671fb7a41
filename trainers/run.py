"""One training run end to end: data → validation → model → TRL trainer → checkpoint, merged model, metadata, plot."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medbench.data.fingerprint import file_sha256

from .config import RecipeConfig, RecipeError, resolve_training_args, training_defaults
from .data import describe_error_types, load_preference_file, records_to_dataset, validate_records
from .objectives import get_objective
from .outputs import LOG_FILE, METADATA_FILE, PLOT_FILE, plot_training_curves, write_log_history, write_metadata

logger = logging.getLogger(__name__)

MERGED_DIR = "merged"
FINGERPRINT_FILE = "medbench_fingerprint.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def run_fingerprint(recipe: RecipeConfig, args: Any, data: Path, model: str | Path) -> dict[str, str]:
    """What must match for a checkpoint to be resumed: the recipe's settings, the data file's bytes, the model.

    The settings are medbench's own and the resolved value of every ``trl.DPOConfig`` argument the study or the
    recipe sets (``args``: the run's ``DPOConfig``), so ``--beta 0.2`` and ``beta: 0.2`` fingerprint alike. The
    model is the starting checkpoint (a folder's absolute path, or a hub id): TRL rebuilds the reference model
    from it, so a resume from another ``--model`` would silently change the reference mid-run.
    """
    resolved = args.to_dict()
    # (a key the trainer lacks was stated as null, i.e. not set: see resolve_training_args)
    training = {key: resolved[key] for key in sorted({*training_defaults(recipe), *recipe.dpo_args}) if key in resolved}
    settings = json.dumps({**recipe.to_dict(), "dpo_args": training}, sort_keys=True, default=str)
    folder = Path(model)
    return {"recipe": recipe.name, "recipe_sha256": hashlib.sha256(settings.encode()).hexdigest(),
            "data_sha256": file_sha256(data), "model": str(folder.resolve()) if folder.exists() else str(model)}


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest *complete* ``checkpoint-N`` in ``output_dir``: one whose trainer state and medbench fingerprint
    were both written (a run killed while saving leaves an incomplete folder, which is skipped)."""
    if not output_dir.is_dir():
        return None
    complete = [
        (int(match.group(1)), path)
        for path in output_dir.iterdir()
        if (match := _CHECKPOINT.match(path.name))
        and (path / "trainer_state.json").is_file()
        and (path / FINGERPRINT_FILE).is_file()
    ]
    return max(complete)[1] if complete else None


def resolve_resume(resume: str | bool | None, output_dir: Path, fingerprint: dict[str, str]) -> Path | None:
    """Which checkpoint to resume from.

    Args:
        resume: ``"auto"`` (default: the latest complete checkpoint when there is one), ``True`` / ``"latest"``
            (there must be one), a checkpoint path, or ``False`` / ``"never"`` (start over).
        output_dir: The run folder.
        fingerprint: :func:`run_fingerprint` of this run.

    Raises:
        RecipeError: no checkpoint where one is required, or the checkpoint was made by another recipe or data.
    """
    if resume in (False, "never", "no", "false"):
        return None
    if resume in (None, "auto", True, "latest", "true", "yes"):
        checkpoint = latest_checkpoint(output_dir)
        if checkpoint is None:
            if resume in (True, "latest", "true", "yes"):
                raise RecipeError(f"--resume: no complete checkpoint in {output_dir}; drop --resume to start afresh")
            return None
    else:
        checkpoint = Path(str(resume))
        if not (checkpoint / "trainer_state.json").is_file() or not (checkpoint / FINGERPRINT_FILE).is_file():
            raise RecipeError(f"--resume {checkpoint}: not a complete medbench checkpoint (no trainer_state.json or "
                              f"{FINGERPRINT_FILE})")
    saved = json.loads((checkpoint / FINGERPRINT_FILE).read_text(encoding="utf-8"))
    if "model" in saved and saved["model"] != fingerprint["model"]:  # checkpoints before the model was recorded lack it
        raise RecipeError(
            f"cannot resume {checkpoint}: it was trained from --model {saved['model']}, this run names "
            f"{fingerprint['model']}; pass the same --model, another --output_dir, or --resume never to start over"
        )
    for key, what in (("recipe_sha256", "recipe settings"), ("data_sha256", "data file")):
        if saved.get(key) != fingerprint[key]:
            raise RecipeError(
                f"cannot resume {checkpoint}: its {what} differ from this run's (checkpoint recipe "
                f"'{saved.get('recipe')}'); use another --output_dir, or --resume never to start over"
            )
    return checkpoint


def _fingerprint_callback(fingerprint: dict[str, str]):
    from transformers import TrainerCallback

    class WriteFingerprint(TrainerCallback):
        """Marks each saved checkpoint complete and records what made it (read back by :func:`resolve_resume`)."""

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if folder.is_dir():
                    (folder / FINGERPRINT_FILE).write_text(json.dumps(fingerprint, indent=2), encoding="utf-8")
            return control

    return WriteFingerprint()


@dataclass
class TrainResult:
    """Where a finished run put things.

    Attributes:
        output_dir: The run folder (checkpoint or LoRA adapter, processor, metadata, logs, plot).
        model_dir: A full model directory ready for evaluation (``output_dir``, or ``output_dir/merged`` for LoRA);
            None for LoRA with ``merge_lora: false`` (only the adapter was saved).
        metadata_path: The metadata JSON.
        plot_path: The training-curve PNG (None if nothing was logged).
        log_history: The trainer's log history.
    """

    output_dir: Path
    model_dir: Path | None
    metadata_path: Path
    plot_path: Path | None
    log_history: list[dict[str, Any]]


def precision_flags(recipe: RecipeConfig, cuda_available: bool, bf16_supported: bool) -> tuple[bool, bool]:
    """``(use_cpu, bf16)`` for a recipe: bf16 autocast on a CUDA GPU that supports it, fp32 on CPU.

    Raises:
        RecipeError: ``precision: bf16`` where no CUDA GPU (with bf16) is available.
    """
    if recipe.precision == "bf16" and not (cuda_available and bf16_supported):
        raise RecipeError(
            f"recipe '{recipe.name}': `precision: bf16` needs a CUDA GPU with bf16 support; use auto or fp32"
        )
    return not cuda_available, cuda_available and bf16_supported and recipe.precision != "fp32"


def build_training_args(recipe: RecipeConfig, output_dir: str | Path):
    """The ``trl.DPOConfig`` for a recipe (see :func:`medbench.train.config.resolve_training_args`), with what
    medbench train sets itself: the output directory, bf16 on a CUDA GPU / fp32 on CPU, TRL's loss type.

    Raises:
        RecipeError: ``precision: bf16`` without CUDA, or settings DPOConfig or the objective reject.
    """
    import torch

    cuda = torch.cuda.is_available()
    use_cpu, bf16 = precision_flags(recipe, cuda, cuda and torch.cuda.is_bf16_supported())
    if recipe.online:  # GRPO (medbench.train.grpo): its loss settings are trl.GRPOConfig's own
        managed = {"output_dir": str(output_dir), "use_cpu": use_cpu, "bf16": bf16, "fp16": False,
                   "remove_unused_columns": False}
        return resolve_training_args(recipe, managed)
    trl_loss = recipe.objective == "trl"
    managed = {
        "output_dir": str(output_dir),
        "use_cpu": use_cpu,
        "bf16": bf16,
        "fp16": False,
        "loss_type": list(recipe.trl_loss_type) if trl_loss else ["sigmoid"],
        "loss_weights": recipe.trl_loss_weights if trl_loss else None,
        # The collator reads rejected_image / weight / error_type, which TRL would otherwise drop.
        "remove_unused_columns": False,
    }
    return resolve_training_args(recipe, managed)


@dataclass
class PreparedRun:
    """A trainer ready to ``train()``, with what was loaded to build it."""

    trainer: Any
    processor: Any
    records: list[dict[str, Any]]
    error_types: dict[str, int] | None
    trainable: dict[str, int]
    resumed_from: str | None = None


def build_trainer(
    recipe: RecipeConfig,
    model: str | Path,
    data: str | Path,
    output_dir: str | Path,
    *,
    image_root: str | Path | None = None,
    rejected_image_root: str | Path | None = None,
    callbacks: list[Any] | None = None,
    resume_from: Path | None = None,
    args: Any = None,
) -> PreparedRun:
    """Load and validate the data, load the model, and build the :class:`MedPreferenceTrainer`.

    Arguments are those of :func:`train`; ``resume_from`` is the checkpoint whose full weights the policy starts
    from; ``args`` the run's ``trl.DPOConfig`` (default: :func:`build_training_args`). Raises
    :class:`medbench.errors.MedbenchError` for user mistakes.
    """
    from .collator import CachedCollator, PreferenceCollator, indexed_dataset
    from .data import load_or_preprocess
    from .modeling import apply_freezing, build_lora_config, load_model_and_processor
    from .trainer import MedPreferenceTrainer

    # Settings first, then data: a typo or a missing field should stop the run before minutes of model loading.
    # (DPOConfig also comes before the model: under DeepSpeed ZeRO-3 it must exist for from_pretrained to shard.)
    args = build_training_args(recipe, output_dir) if args is None else args
    if recipe.online:  # GRPO: prompts and rewards instead of preference records (medbench.train.grpo)
        from .grpo import build_grpo_trainer

        return build_grpo_trainer(recipe, model, data, args, image_root=image_root, callbacks=callbacks,
                                  resume_from=resume_from)
    objective = get_objective(recipe.objective)
    visual_types = frozenset(recipe.visual_error_types)
    data = Path(data)
    records = load_preference_file(data, image_root=image_root, rejected_image_root=rejected_image_root)
    validate_records(records, recipe.name, objective, visual_types, data)
    error_types = None
    if any(r["error_type"] for r in records):
        if objective.per_record_rows:  # only an error-routed objective trains some records with the image-side term
            error_types = describe_error_types(records, visual_types)
        else:
            error_types = dict(Counter(str(r.get("error_type") or "<none>") for r in records))
            logger.info("error types: %s", error_types)
    dataset = records_to_dataset(records)

    policy, processor = load_model_and_processor(model, recipe, trust_remote_code=args.trust_remote_code)
    if resume_from is not None and not recipe.use_lora:
        _load_checkpoint_weights(policy, resume_from)
    trainable = apply_freezing(policy, recipe)
    peft_config = build_lora_config(policy, recipe) if recipe.use_lora else None
    collator = PreferenceCollator(
        processor=processor,
        objective=objective,
        max_length=args.max_length,
        visual_error_types=visual_types,
        system_prompt=recipe.system_prompt,
    )
    if recipe.preprocess:  # tokenized and image-processed once (cached); each step only pads and stacks
        collator, dataset = CachedCollator(load_or_preprocess(records, data, collator)), indexed_dataset(records)
    trainer = MedPreferenceTrainer(
        model=policy,
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        data_collator=collator,
        peft_config=peft_config,
        callbacks=callbacks,
        recipe=recipe,
    )
    return PreparedRun(trainer, processor, records, error_types, trainable)


def _load_checkpoint_weights(policy: Any, checkpoint: Path) -> None:
    """Put a full checkpoint's weights into the policy (strictly: every key must match).

    transformers' own resume loads ``model.safetensors`` with ``load_state_dict(strict=False)`` and without the
    checkpoint-key conversion ``from_pretrained`` applies, so for LLaVA / Qwen-VL in transformers 5 it silently
    loads nothing and training continues from the base weights. ``from_pretrained`` maps the keys; the policy keeps
    its own config, so TRL still builds the reference model from the base checkpoint.
    """
    from transformers import AutoModelForImageTextToText

    saved = AutoModelForImageTextToText.from_pretrained(str(checkpoint), dtype=policy.dtype)
    policy.load_state_dict(saved.state_dict(), strict=True)
    del saved


class _CheckpointKeyWarnings(logging.Filter):
    """Drops the trainer's "missing/unexpected keys in the checkpoint model loaded" warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(("There were missing keys in the checkpoint", "There were unexpected keys in the checkpoint"))


@contextlib.contextmanager
def _checkpoint_key_warnings_silenced(active: bool) -> Iterator[None]:
    """While resuming a full fine-tune: transformers' own (non-strict, unconverted) checkpoint load lists every
    weight as missing, although :func:`_load_checkpoint_weights` already loaded them all strictly."""
    if not active:
        yield
        return
    trainer_logger = logging.getLogger("transformers.trainer")
    quiet = _CheckpointKeyWarnings()
    trainer_logger.addFilter(quiet)
    try:
        yield
    finally:
        trainer_logger.removeFilter(quiet)


def train(
    recipe: RecipeConfig,
    model: str | Path,
    data: str | Path,
    output_dir: str | Path,
    *,
    image_root: str | Path | None = None,
    rejected_image_root: str | Path | None = None,
    callbacks: list[Any] | None = None,
    resume: str | bool | None = "auto",
) -> TrainResult:
    """Train ``model`` on ``data`` with ``recipe`` and write the outputs to ``output_dir``.

    Args:
        recipe: The validated recipe.
        model: Checkpoint directory or hub id of an ``AutoModelForImageTextToText`` model.
        data: Preference file (see :mod:`medbench.train.data`).
        output_dir: Run folder; created if needed.
        image_root: Folder relative image paths resolve against (default: the data file's folder).
        rejected_image_root: Folder relative ``rejected_image`` paths resolve against (default: ``image_root``).
        callbacks: Extra ``transformers.TrainerCallback`` objects.
        resume: ``"auto"`` resumes from the latest complete checkpoint in ``output_dir`` when there is one;
            ``True`` requires one; a path picks one; ``False`` starts over (see :func:`resolve_resume`). A
            checkpoint made by other recipe settings or data is refused.

    Returns:
        A :class:`TrainResult`.

    Raises:
        MedbenchError: bad data, recipe or model (one line for the user).
    """
    from .modeling import merge_lora

    data = Path(data)
    output_dir = Path(output_dir)
    args = build_training_args(recipe, output_dir)  # a bad setting stops the run before anything is read
    if not data.is_file():
        from medbench.data.sources import SOURCES
        from medbench.errors import DataError

        if str(data) in SOURCES:  # a task name: its records are built by `prefs build`, as for every recipe
            raise DataError(f"--data {data} is a medbench task, not a file: build the training records from it first "
                            f"(medbench prefs build {data} --recipe {recipe.name} --output_dir DIR), then pass "
                            "--data DIR/prefs.jsonl")
        raise DataError(f"preference data file not found: {data}")
    fingerprint = run_fingerprint(recipe, args, data, model)
    checkpoint = resolve_resume(resume, output_dir, fingerprint)
    run = build_trainer(
        recipe,
        model,
        data,
        output_dir,
        image_root=image_root,
        rejected_image_root=rejected_image_root,
        callbacks=[*(callbacks or []), _fingerprint_callback(fingerprint)],
        resume_from=checkpoint,
        args=args,
    )
    trainer, processor = run.trainer, run.processor
    run.resumed_from = checkpoint.name if checkpoint is not None else None
    logger.info(
        "recipe %s (objective %s) on %d records, %s, %s",
        recipe.name,
        recipe.objective,
        len(run.records),
        "LoRA" if recipe.use_lora else "full fine-tuning",
        "bf16" if trainer.args.bf16 else "fp32",
    )
    if checkpoint is not None:
        logger.info("resuming from %s", checkpoint)
    with _checkpoint_key_warnings_silenced(checkpoint is not None and not recipe.use_lora):
        train_output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    trainer.save_model(str(output_dir))

    accelerator = trainer.accelerator
    model_dir: Path | None = output_dir
    if recipe.use_lora:
        model_dir = output_dir / MERGED_DIR if recipe.merge_lora else None
    plot_path = None
    if accelerator.is_main_process:
        processor.save_pretrained(output_dir)
        if model_dir is not None and model_dir != output_dir:
            merge_lora(output_dir, model, model_dir, recipe, trust_remote_code=args.trust_remote_code)
        log_history = trainer.state.log_history
        write_log_history(output_dir / LOG_FILE, log_history)
        plot_path = plot_training_curves(log_history, output_dir / PLOT_FILE, title=f"medbench-train: {recipe.name}")
        write_metadata(output_dir / METADATA_FILE, _metadata(recipe, model, data, run, train_output, model_dir))
    accelerator.wait_for_everyone()
    return TrainResult(
        output_dir=output_dir,
        model_dir=model_dir,
        metadata_path=output_dir / METADATA_FILE,
        plot_path=plot_path,
        log_history=list(trainer.state.log_history),
    )


def _metadata(recipe, model, data, run, train_output, model_dir) -> dict[str, Any]:
    trainer, args = run.trainer, run.trainer.args
    world = trainer.accelerator.num_processes
    training_args = args.to_dict()
    return {
        "recipe": recipe.name,
        "objective": recipe.objective,
        "description": recipe.description,
        "paper": recipe.paper,
        "config": recipe.to_dict(),
        "training_args": training_args,
        # The settings the study fixes, resolved, and what they add up to on this run.
        "hyperparameters": {
            **{key: training_args[key] for key in training_defaults(recipe)},
            "num_processes": world,
            "global_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * world,
            "precision": "bf16" if args.bf16 else "fp32",
        },
        "data": {
            "path": str(data.resolve()),
            "sha256": file_sha256(data),
            "records": len(run.records),
            "error_types": run.error_types,
        },
        "model": {
            "source": str(model),
            "model_type": trainer.model.config.model_type,
            "lora": recipe.use_lora,
            "trainable_parameters": run.trainable,
        },
        "outputs": {
            "checkpoint": ".",
            "merged": MERGED_DIR if recipe.use_lora and recipe.merge_lora else None,
            "evaluate": str(model_dir.resolve()) if model_dir is not None else None,
        },
        "resumed_from": run.resumed_from,
        "result": {
            "global_step": train_output.global_step,
            "train_loss": train_output.training_loss,
            "metrics": train_output.metrics,
        },
    }


__all__ = [
    "FINGERPRINT_FILE",
    "MERGED_DIR",
    "PreparedRun",
    "TrainResult",
    "build_trainer",
    "build_training_args",
    "latest_checkpoint",
    "precision_flags",
    "resolve_resume",
    "run_fingerprint",
    "train",
]
