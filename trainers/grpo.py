"""Online RL with TRL's ``GRPOTrainer``: the ``grpo`` objective, rewarded by medbench's own metrics.

GRPO needs no rejected answers: for each question it samples ``num_generations`` answers from the policy, scores them
with the recipe's ``rewards`` (:mod:`medbench.rewards`, the metrics the board reports) and pushes up the answers that
beat their group. Input is any supervised file ``medbench prefs build`` accepts (image, question, reference answer,
optional ``answer_type``; a preference file's ``chosen`` is its answer).

The question a GRPO model is trained on is the one it is evaluated on, byte for byte: the recipe's ``prompt_of`` task
wraps it exactly as that task's ``doc_to_text`` does (its ``pre_prompt`` and ``post_prompt``), and the chat messages
come from :func:`medbench.prompts.build_messages`, which TRL renders with the processor's chat template as
``medbench_hf`` does (``tests/medbench/test_prompts.py`` checks it).

Everything else (backbone profiles, LoRA or full fine-tuning, frozen modules, resume, metadata, merged model) is
:mod:`medbench.train.run`'s, as for every other recipe.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medbench.errors import DataError, MedbenchError

from .config import RecipeConfig, RecipeError

logger = logging.getLogger(__name__)

OBJECTIVE = "grpo"
# Over the study's settings (TRAINING_DEFAULTS, less DPO's max_length): TRL's GRPO defaults (no KL term, so no
# reference model; lr 1e-6; sampling at temperature 1), except the group size - 4 answers per question, which divides
# the per-device batch of 4 - and the completion length, the VQA tasks' answer length (max_new_tokens 64).
GRPO_DEFAULTS: dict[str, Any] = {
    "beta": 0.0,
    "learning_rate": 1e-6,
    "loss_type": "dapo",
    "num_generations": 4,
    "max_completion_length": 64,
    "temperature": 1.0,
}
LOSS_TYPES = ("dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo")


def task_prompt(task: str) -> dict[str, str]:
    """The ``lmms_eval_specific_kwargs`` (``pre_prompt``, ``post_prompt``) a medbench VQA task wraps questions in.

    Raises:
        RecipeError: not a medbench VQA task.
    """
    from medbench.taskfiles import task_configs

    configs = task_configs()
    config = configs.get(task)
    if config is None or "lmms_eval_specific_kwargs" not in config:
        known = ", ".join(name for name, c in configs.items() if "lmms_eval_specific_kwargs" in c)
        raise RecipeError(f"`prompt_of` {task!r} is not a medbench VQA task; choose one of: {known} (or null)")
    return dict(config["lmms_eval_specific_kwargs"].get("default") or {})


def _wrapped(question: str, wrapping: dict[str, str]) -> bool:
    """Whether a question already carries the task's prompt (a ``prefs build --prompt_of`` file): wrapping it again
    would train on a prompt the task never shows."""
    pre, post = wrapping.get("pre_prompt") or "", wrapping.get("post_prompt") or ""
    return bool(pre or post) and question.startswith(pre) and question.endswith(post)


def load_prompts(data: Path, recipe: RecipeConfig, image_root: str | Path | None = None) -> list[dict[str, Any]]:
    """Read the supervised file and build one row per usable question: ``question`` (as the evaluation words it; a
    question that already carries the ``prompt_of`` task's prompt is kept as it is), ``image`` (path), ``answer``,
    ``answer_type``. Rows without an image, question or answer are skipped and counted.

    Raises:
        DataError: the file is unusable or has no usable row.
    """
    from medbench.lmms.common import doc_to_text

    from .prefs.build import read_supervised

    items, _ = read_supervised(str(data), None if image_root is None else str(image_root))
    wrapping = task_prompt(recipe.prompt_of) if recipe.prompt_of else {}
    rows, skipped = [], []
    for item in items:
        problem = item.get("problem") or next(
            (f"no {key}" for key in ("image", "question", "answer") if not item.get(key)), None
        )
        if problem is None and not Path(str(item["image"])).is_file():
            problem = f"image not found: {item['image']}"
        if problem:
            skipped.append(f"{item.get('where', item.get('id'))}: {problem}")
            continue
        question = item["question"]
        if not _wrapped(question, wrapping):
            question = doc_to_text({"question": question}, wrapping)
        rows.append({
            "id": item["id"],
            "question": question,
            "image": str(item["image"]),
            "answer": item["answer"],
            "answer_type": item.get("answer_type"),
        })
    if skipped:
        logger.warning("%s: %d of %d rows skipped (first: %s)", data, len(skipped), len(items), skipped[0])
    if not rows:
        raise DataError(f"{data}: no usable (image, question, answer) row for GRPO" + (f"; first problem: {skipped[0]}" if skipped else ""))
    return rows


def prompt_dataset(rows: list[dict[str, Any]], system_prompt: str | None):
    """The ``datasets.Dataset`` GRPOTrainer reads: ``prompt`` (chat messages from :func:`medbench.prompts.build_messages`)
    and ``image`` (loaded like the other recipes' images) are made on access; ``answer`` / ``answer_type`` reach the
    rewards as columns."""
    from datasets import Dataset

    from medbench.prompts import build_messages

    from .data import load_image

    def materialise(batch: dict[str, list]) -> dict[str, list]:
        return {
            **batch,
            "prompt": [build_messages(question, 1, system_prompt) for question in batch["question"]],
            "image": [load_image(path) for path in batch["image"]],
        }

    return Dataset.from_list(rows).with_transform(materialise)


def build_rewards(recipe: RecipeConfig) -> list[Any]:
    """The recipe's reward functions (:func:`medbench.rewards.reward_fn`), in ``rewards`` order.

    Raises:
        MedbenchError: a judge reward without a judge configured (one line naming the variable to set).
    """
    from medbench.rewards import reward_fn

    try:
        return [reward_fn(name) for name in recipe.rewards]
    except MedbenchError as error:
        raise RecipeError(f"recipe '{recipe.name}': `rewards`: {error}") from None


def check_grpo_args(recipe: RecipeConfig, args: Any) -> None:
    """Checks of the resolved ``trl.GRPOConfig`` that TRL makes late or not at all.

    Raises:
        RecipeError: naming the argument.
    """
    if args.loss_type not in LOSS_TYPES:
        raise RecipeError(f"recipe '{recipe.name}': `loss_type` is {args.loss_type!r}; choose from {', '.join(LOSS_TYPES)}")
    if args.reward_weights is not None and len(args.reward_weights) != len(recipe.rewards):
        raise RecipeError(
            f"recipe '{recipe.name}': `reward_weights` has {len(args.reward_weights)} values for {len(recipe.rewards)} "
            f"rewards ({', '.join(recipe.rewards)}); give one weight per reward"
        )
    if args.beta < 0:
        raise RecipeError(f"recipe '{recipe.name}': `beta` must be >= 0, got {args.beta}")


def build_grpo_trainer(
    recipe: RecipeConfig,
    model: str | Path,
    data: str | Path,
    args: Any,
    *,
    image_root: str | Path | None = None,
    callbacks: list[Any] | None = None,
    resume_from: Path | None = None,
):
    """Load the prompts, the model and the rewards and build TRL's ``GRPOTrainer`` (see :func:`medbench.train.run.build_trainer`).

    Returns:
        A :class:`medbench.train.run.PreparedRun`.
    """
    from trl import GRPOTrainer

    from .modeling import apply_freezing, build_lora_config, load_model_and_processor
    from .run import PreparedRun, _load_checkpoint_weights

    rewards = build_rewards(recipe)  # a missing judge stops the run before the model loads
    rows = load_prompts(Path(data), recipe, image_root)
    policy, processor = load_model_and_processor(model, recipe, trust_remote_code=args.trust_remote_code)
    if resume_from is not None and not recipe.use_lora:
        _load_checkpoint_weights(policy, resume_from)
    trainable = apply_freezing(policy, recipe)
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=rewards,
        args=args,
        train_dataset=prompt_dataset(rows, recipe.system_prompt),
        processing_class=processor,
        peft_config=build_lora_config(policy, recipe) if recipe.use_lora else None,
        callbacks=callbacks,
    )
    return PreparedRun(trainer, processor, rows, None, trainable)


__all__ = ["GRPO_DEFAULTS", "LOSS_TYPES", "OBJECTIVE", "build_grpo_trainer", "build_rewards", "check_grpo_args",
           "load_prompts", "prompt_dataset", "task_prompt"]
