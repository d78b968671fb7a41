"""The trainer computes each image-side objective from the right sequences, checked independently.

Expected values come from separately collated DPO / CoPO batches scored with a plain (unfused) forward pass and
the pure loss functions, so a wrong row layout, image, weight or term in the trainer shows up as a mismatch.
"""

from __future__ import annotations

import pytest
import torch
from _prefdata import FAST

from medbench.train import losses as L
from medbench.train.collator import PreferenceCollator
from medbench.train.config import load_recipe
from medbench.train.data import load_image, load_preference_file
from medbench.train.objectives import OBJECTIVES
from medbench.train.run import build_trainer, precision_flags
from medbench.train.trainer import NON_MODEL_KEYS

ARCHES = ["llava", "qwen2_5_vl"]


def plain_logps(model, batch) -> torch.Tensor:
    """Summed answer log-probs per row from ordinary logits (independent of TRL's fused head)."""
    kwargs = {key: value for key, value in batch.items() if key not in NON_MODEL_KEYS}
    with torch.no_grad():
        logits = model(**kwargs, use_cache=False).logits.float()
    token_logps = logits[:, :-1].log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (token_logps * batch["completion_mask"][:, 1:]).sum(dim=1)


def perturb(model) -> None:
    """Move the policy away from the reference so every log-ratio is non-zero."""
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        head.add_(torch.randn(head.shape, generator=torch.Generator().manual_seed(0)) * 0.05)


def side_losses(trainer, records, objective_name):
    """Per-sample DPO or CoPO loss from a separately collated batch."""
    collator = PreferenceCollator(trainer.processing_class, OBJECTIVES[objective_name], max_length=128)
    batch = collator(records)
    policy = plain_logps(trainer.model, batch).chunk(2)
    ref = plain_logps(trainer.ref_model, batch).chunk(2)
    fn = L.dpo_loss if objective_name == "dpo" else L.copo_loss
    return fn(policy[0], policy[1], ref[0], ref[1], beta=trainer.args.beta), policy, ref


def trainer_batch(trainer):
    """One batch of the trainer's whole training set, through its own data path (preprocessed once, then padded)."""
    return trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])


@pytest.fixture(scope="module")
def records(pref_file):
    return load_preference_file(pref_file)


def make(tmp_path, model_dir, pref_file, recipe_name, **overrides):
    recipe = load_recipe(recipe_name, {**FAST, **overrides})
    return build_trainer(recipe, model_dir, pref_file, tmp_path / recipe_name).trainer


@pytest.mark.parametrize("arch", ARCHES)
def test_mdpo_is_dpo_plus_copo_plus_anchor_in_the_trainer(tmp_path, tiny_model_dirs, pref_file, records, arch):
    trainer = make(tmp_path, tiny_model_dirs[arch], pref_file, "mdpo")
    perturb(trainer.model)
    loss = trainer.compute_loss(trainer.model, trainer_batch(trainer))
    dpo, policy, ref = side_losses(trainer, records, "dpo")
    copo, _, _ = side_losses(trainer, records, "copo")
    anchor = L.anchor_loss(policy[0], ref[0], beta=0.1)
    torch.testing.assert_close(loss, (dpo + copo + anchor).mean(), rtol=1e-4, atol=1e-6)
    # The authors' trainer computed 2·DPO + anchor; the corrupted image must make a difference here.
    assert abs(loss.item() - (2 * dpo + anchor).mean().item()) > 1e-4


@pytest.mark.parametrize("arch", ARCHES)
def test_copo_compares_real_and_corrupted_image(tmp_path, tiny_model_dirs, pref_file, records, arch):
    trainer = make(tmp_path, tiny_model_dirs[arch], pref_file, "copo")
    perturb(trainer.model)
    loss = trainer.compute_loss(trainer.model, trainer_batch(trainer))
    copo, _, _ = side_losses(trainer, records, "copo")
    torch.testing.assert_close(loss, copo.mean(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHES)
def test_mmedpo_applies_the_per_record_weight(tmp_path, tiny_model_dirs, pref_file, records, arch):
    trainer = make(tmp_path, tiny_model_dirs[arch], pref_file, "mmedpo")
    perturb(trainer.model)
    batch = trainer_batch(trainer)
    torch.testing.assert_close(batch["weight"], torch.tensor([0.9, 0.4, 1.0, 0.2]))
    policy = plain_logps(trainer.model, batch).chunk(2)
    ref = plain_logps(trainer.ref_model, batch).chunk(2)
    expected = (batch["weight"] * L.dpo_loss(policy[0], policy[1], ref[0], ref[1], beta=0.1)).mean()
    torch.testing.assert_close(trainer.compute_loss(trainer.model, batch), expected, rtol=1e-4, atol=1e-6)
    # The authors' trainer never read the weights; here zero weights give zero loss and doubling doubles it.
    assert trainer.compute_loss(trainer.model, {**batch, "weight": torch.zeros(4)}).item() == 0.0
    doubled = trainer.compute_loss(trainer.model, {**batch, "weight": 2 * batch["weight"]})
    torch.testing.assert_close(doubled, 2 * expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHES)
def test_error_targeted_uses_copo_for_visual_and_dpo_for_other_records(
    tmp_path, tiny_model_dirs, pref_file, records, arch
):
    trainer = make(tmp_path, tiny_model_dirs[arch], pref_file, "error_targeted")
    perturb(trainer.model)
    batch = trainer_batch(trainer)
    # Records 0 and 2 are visual misinterpretations (the latter spelled in another case).
    assert batch["is_visual"].tolist() == [True, False, True, False]
    loss = trainer.compute_loss(trainer.model, batch)
    dpo, _, _ = side_losses(trainer, records, "dpo")
    copo, _, _ = side_losses(trainer, records, "copo")
    expected = torch.where(batch["is_visual"], copo, dpo).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)


def test_image_side_rows_carry_the_corrupted_image(tiny_model_dirs, records):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dirs["llava"])

    def pixels(paths):
        return processor.image_processor([load_image(p) for p in paths], return_tensors="pt")["pixel_values"]

    original = pixels([r["image"] for r in records])
    corrupted = pixels([r["rejected_image"] for r in records])
    assert not torch.equal(original, corrupted)

    mdpo = PreferenceCollator(processor, OBJECTIVES["mdpo"], max_length=128)(records)
    assert mdpo["input_ids"].shape[0] == 12  # three rows per record
    torch.testing.assert_close(mdpo["pixel_values"][:4], original)
    torch.testing.assert_close(mdpo["pixel_values"][4:8], original)
    torch.testing.assert_close(mdpo["pixel_values"][8:], corrupted)
    # Block 2 scores the chosen answer again: same tokens as block 0.
    assert torch.equal(mdpo["input_ids"][8:], mdpo["input_ids"][:4])

    mmedpo = PreferenceCollator(processor, OBJECTIVES["mmedpo"], max_length=128)(records)
    torch.testing.assert_close(mmedpo["pixel_values"][4:], corrupted)  # rejected answer on the noised image

    targeted = PreferenceCollator(processor, OBJECTIVES["error_targeted"], max_length=128)(records)
    for i, visual in enumerate([True, False, True, False]):
        second = targeted["pixel_values"][4 + i]
        torch.testing.assert_close(second, (corrupted if visual else original)[i])
        same_answer = torch.equal(targeted["input_ids"][4 + i], targeted["input_ids"][i])
        assert same_answer == visual  # visual rows repeat the chosen answer, text rows hold the rejected one


def test_prompt_longer_than_max_length_is_a_data_error(tiny_model_dirs, records):
    from transformers import AutoProcessor

    from medbench.errors import DataError

    processor = AutoProcessor.from_pretrained(tiny_model_dirs["llava"])
    with pytest.raises(DataError, match=r"record 'fundus-disc': its prompt \(with image tokens\) is \d+ tokens"):
        PreferenceCollator(processor, OBJECTIVES["dpo"], max_length=20)(records)


def test_reference_free_objectives_drop_the_reference_model(tmp_path, tiny_model_dirs, pref_file):
    for name in ("simpo", "orpo"):
        assert make(tmp_path, tiny_model_dirs["llava"], pref_file, name).ref_model is None
    assert make(tmp_path, tiny_model_dirs["llava"], pref_file, "dpo").ref_model is not None


def _snapshot(model, prefix):
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(prefix)}


@pytest.mark.parametrize(
    ("arch", "tower", "projector"),
    [
        ("llava", "model.vision_tower", "model.multi_modal_projector"),
        ("qwen2_5_vl", "model.visual.blocks", "model.visual.merger"),
    ],
)
@pytest.mark.parametrize("freeze_projector", [True, False])
def test_vision_tower_and_projector_freezing(
    tmp_path, tiny_model_dirs, pref_file, arch, tower, projector, freeze_projector
):
    trainer = make(
        tmp_path, tiny_model_dirs[arch], pref_file, "dpo", learning_rate="1e-2", freeze_projector=freeze_projector
    )
    model = trainer.model
    before = {**_snapshot(model, tower), **_snapshot(model, projector), **_snapshot(model, "model.language_model")}
    trainer.train()
    changed = {n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])}
    assert not any(n.startswith(tower) for n in changed)
    assert any(n.startswith("model.language_model") for n in changed)
    assert any(n.startswith(projector) for n in changed) is (not freeze_projector)
    assert model.is_gradient_checkpointing


def test_lora_trains_an_unfrozen_projector_in_full(tmp_path, tiny_model_dirs, pref_file):
    trainer = make(tmp_path, tiny_model_dirs["qwen2_5_vl"], pref_file, "dpo", use_lora=True, freeze_projector=False)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert any("lora_" in n and "language_model" in n for n in trainable)
    assert any("visual.merger" in n and "modules_to_save" in n for n in trainable)
    assert not any("visual.blocks" in n for n in trainable)  # the vision tower stays frozen, without adapters


def test_precision_is_bf16_on_gpu_and_fp32_on_cpu():
    from medbench.train.config import RecipeError

    auto = load_recipe("dpo")
    assert precision_flags(auto, cuda_available=True, bf16_supported=True) == (False, True)
    assert precision_flags(auto, cuda_available=True, bf16_supported=False) == (False, False)
    assert precision_flags(auto, cuda_available=False, bf16_supported=False) == (True, False)
    fp32 = load_recipe("dpo", {"precision": "fp32"})
    assert precision_flags(fp32, cuda_available=True, bf16_supported=True) == (False, False)
    with pytest.raises(RecipeError, match="`precision: bf16` needs a CUDA GPU"):
        precision_flags(load_recipe("dpo", {"precision": "bf16"}), cuda_available=False, bf16_supported=False)
