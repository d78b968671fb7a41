"""Our `dpo` against stock TRL 1.16 `DPOTrainer` (loss_type sigmoid) on the same model and batch.

Three levels: the collated batch is identical to TRL's vision collator's; the loss and every gradient match on
one batch; and two optimiser steps give the same losses and weights.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from medbench.train.collator import PreferenceCollator
from medbench.train.config import load_recipe
from medbench.train.data import load_image, load_preference_file, records_to_dataset
from medbench.train.objectives import OBJECTIVES
from medbench.train.trainer import MedPreferenceTrainer

ARCHES = ["llava", "qwen2_5_vl"]


def trl_examples(records: list[dict]) -> list[dict]:
    """The records in TRL's conversational vision-preference format (fresh dicts: TRL's collator mutates them)."""
    return [
        {
            "images": [load_image(r["image"])],
            "prompt": [{"role": "user", "content": r["question"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in records
    ]


def dpo_args(tmp_path, name: str, **extra):
    from trl import DPOConfig

    settings = dict(
        output_dir=str(tmp_path / name),
        use_cpu=True,
        bf16=False,
        report_to="none",
        max_length=128,
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        save_strategy="no",
        logging_steps=1,
        seed=0,
        beta=0.1,
    )
    settings.update(extra)
    return DPOConfig(**settings)


def build_pair(tmp_path, model_dir, records, **extra):
    """A stock DPOTrainer and our trainer (recipe dpo) on the same checkpoint."""
    from transformers import AutoProcessor
    from trl import DPOTrainer

    processor = AutoProcessor.from_pretrained(model_dir)
    stock = DPOTrainer(
        model=str(model_dir),
        args=dpo_args(tmp_path, "stock", **extra),
        train_dataset=Dataset.from_list(trl_examples(records)),
        processing_class=processor,
    )
    recipe = load_recipe("dpo")  # β, max_length: the DPOConfig both trainers get
    ours = MedPreferenceTrainer(
        model=str(model_dir),
        args=dpo_args(tmp_path, "ours", remove_unused_columns=False, **extra),
        train_dataset=records_to_dataset(records),
        processing_class=processor,
        data_collator=PreferenceCollator(processor, OBJECTIVES["dpo"], max_length=128),
        recipe=recipe,
    )
    return stock, ours


@pytest.fixture(scope="module")
def records(pref_file):
    return load_preference_file(pref_file)


@pytest.mark.parametrize("arch", ARCHES)
def test_collated_batch_equals_trl_vision_collator(tiny_model_dirs, records, arch):
    from transformers import AutoProcessor
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    processor = AutoProcessor.from_pretrained(tiny_model_dirs[arch])
    theirs = DataCollatorForVisionPreference(processor=processor, max_length=128)(trl_examples(records))
    ours = PreferenceCollator(processor, OBJECTIVES["dpo"], max_length=128)(records)
    assert set(ours) == set(theirs)
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0, msg=f"{arch}: {key} differs")


@pytest.mark.parametrize("arch", ARCHES)
def test_dpo_loss_and_gradients_equal_stock_trl_sigmoid(tmp_path, tiny_model_dirs, records, arch):
    stock, ours = build_pair(tmp_path, tiny_model_dirs[arch], records)
    batch = stock.data_collator(trl_examples(records[:2]))
    # Move the policies off the reference so the loss is not the trivial log 2.
    for trainer in (stock, ours):
        with torch.no_grad():
            trainer.model.get_output_embeddings().weight.add_(
                torch.randn(
                    trainer.model.get_output_embeddings().weight.shape, generator=torch.Generator().manual_seed(1)
                )
                * 0.05
            )
    stock_loss = stock.compute_loss(stock.model, batch)
    our_loss = ours.compute_loss(ours.model, batch)
    assert abs(stock_loss.item() - 0.6931471805599453) > 1e-4
    torch.testing.assert_close(our_loss, stock_loss, rtol=1e-6, atol=1e-7)
    stock_loss.backward()
    our_loss.backward()
    stock_grads = dict(stock.model.named_parameters())
    compared = 0
    for name, param in ours.model.named_parameters():
        if param.grad is None:
            assert stock_grads[name].grad is None, name
            continue
        torch.testing.assert_close(param.grad, stock_grads[name].grad, rtol=1e-5, atol=1e-7, msg=name)
        compared += 1
    assert compared > 0


def test_two_training_steps_match_stock_trl(tmp_path, tiny_model_dirs, records):
    stock, ours = build_pair(tmp_path, tiny_model_dirs["llava"], records)
    stock.train()
    ours.train()
    stock_losses = [e["loss"] for e in stock.state.log_history if "loss" in e]
    our_losses = [e["loss"] for e in ours.state.log_history if "loss" in e]
    assert len(our_losses) == 2
    assert our_losses == pytest.approx(stock_losses, rel=1e-5)
    # The second step saw updated weights, so its loss moved away from log 2.
    assert our_losses[1] != pytest.approx(0.6931471805599453, abs=1e-6)
    for (name, mine), (_, theirs) in zip(ours.model.named_parameters(), stock.model.named_parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6, msg=name)
    # Our own metrics are logged next to TRL's step logs.
    assert {"rewards/margins", "rewards/accuracies", "logps/chosen"} <= set(ours.state.log_history[0])


def test_trl_objective_is_stock_trl_with_that_loss(tmp_path, tiny_model_dirs, records):
    """`objective: trl` (here hinge) defers to TRL: same loss as a stock DPOTrainer with loss_type hinge."""
    from transformers import AutoProcessor
    from trl import DPOTrainer

    model_dir = tiny_model_dirs["qwen2_5_vl"]
    processor = AutoProcessor.from_pretrained(model_dir)
    stock = DPOTrainer(
        model=str(model_dir),
        args=dpo_args(tmp_path, "stock", loss_type=["hinge"]),
        train_dataset=Dataset.from_list(trl_examples(records)),
        processing_class=processor,
    )
    recipe = load_recipe("trl_loss")
    assert recipe.trl_loss_type == ["hinge"]
    ours = MedPreferenceTrainer(
        model=str(model_dir),
        args=dpo_args(tmp_path, "ours", loss_type=["hinge"], remove_unused_columns=False),
        train_dataset=records_to_dataset(records),
        processing_class=processor,
        data_collator=PreferenceCollator(processor, OBJECTIVES["trl"], max_length=128),
        recipe=recipe,
    )
    batch = ours.data_collator(records)
    for trainer in (stock, ours):
        with torch.no_grad():
            trainer.model.get_output_embeddings().weight.mul_(1.5)
    torch.testing.assert_close(ours.compute_loss(ours.model, batch), stock.compute_loss(stock.model, batch))
