"""Recipes list loss terms and weights; the trainer sums the tested pure functions (no per-objective branches)."""

from __future__ import annotations

import pytest
import torch

from medbench.train import losses as L
from medbench.train.config import RecipeError, load_recipe
from medbench.train.objectives import OBJECTIVES, TERMS
from medbench.train.run import build_training_args
from medbench.train.trainer import TERM_FUNCTIONS, objective_terms


def _logps(objective, batch=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    n = objective.n_rows * batch
    policy = -torch.rand(n, generator=generator) * 10
    ref = -torch.rand(n, generator=generator) * 10
    lengths = torch.randint(1, 9, (n,), generator=generator)
    return policy, ref, lengths


def test_every_term_has_exactly_one_training_function_in_losses():
    assert set(TERM_FUNCTIONS) == set(TERMS)
    assert all(hasattr(L, term.function) for term in TERMS.values())


def test_mdpo_trains_as_the_sum_of_its_listed_terms_which_is_mdpo_loss(tmp_path):
    objective = OBJECTIVES["mdpo"]
    recipe = load_recipe("mdpo", {"anchor_delta": "0.2"})
    args = build_training_args(recipe, tmp_path)
    policy, ref, lengths = _logps(objective)
    losses, metrics = objective_terms(objective, recipe, args, policy, ref, lengths, {})
    p, r = policy.chunk(3), ref.chunk(3)
    torch.testing.assert_close(losses, L.mdpo_loss(*p, *r, beta=0.1, delta=0.2))
    assert {"loss/dpo", "loss/copo", "loss/anchor", "rewards/corrupted"} <= set(metrics)


def test_a_recipe_reweights_terms_over_the_objectives_rows(tmp_path):
    recipe_file = tmp_path / "dpo_plus_half_copo.yaml"
    recipe_file.write_text("objective: mdpo\nterms: [dpo, copo]\nterm_weights: [1.0, 0.5]\n")
    recipe = load_recipe(str(recipe_file))
    objective = OBJECTIVES["mdpo"]
    policy, ref, lengths = _logps(objective, seed=1)
    losses, _ = objective_terms(objective, recipe, build_training_args(recipe, tmp_path), policy, ref, lengths, {})
    p, r = policy.chunk(3), ref.chunk(3)
    expected = L.dpo_loss(p[0], p[1], r[0], r[1], 0.1) + 0.5 * L.copo_loss(p[0], p[2], r[0], r[2], 0.1)
    torch.testing.assert_close(losses, expected)


@pytest.mark.parametrize("name", [n for n, o in OBJECTIVES.items() if n != "trl"])
def test_default_terms_equal_the_objectives_own_pure_function(tmp_path, name):
    objective = OBJECTIVES[name]
    recipe = load_recipe(name)
    args = build_training_args(recipe, tmp_path)
    policy, ref, lengths = _logps(objective, seed=2)
    batch = {"weight": torch.tensor([0.5, 1.0, 2.0]), "is_visual": torch.tensor([True, False, True])}
    ref = None if objective.reference_free else ref
    losses, _ = objective_terms(objective, recipe, args, policy, ref, lengths, batch)
    assert losses.shape == (3,) and torch.isfinite(losses).all()
    assert objective.default_terms() == (("dpo", "copo", "anchor") if name == "mdpo" else (name,))


@pytest.mark.parametrize(
    "objective, terms, message",
    [
        ("dpo", "[copo]", r"term copo reads rows .*rejected_image"),
        ("simpo", "[dpo]", r"term dpo needs a reference model"),
        ("dpo", "[nonsense]", r"unknown terms \['nonsense'\]"),
        ("error_targeted", "[dpo]", r"per-record rows"),
    ],
)
def test_terms_an_objective_cannot_train_are_refused_in_one_line(tmp_path, objective, terms, message):
    recipe_file = tmp_path / "bad.yaml"
    recipe_file.write_text(f"objective: {objective}\nterms: {terms}\n")
    with pytest.raises(RecipeError, match=message):
        load_recipe(str(recipe_file))


def test_term_weights_must_match_terms(tmp_path):
    recipe_file = tmp_path / "bad.yaml"
    recipe_file.write_text("objective: mdpo\nterms: [dpo, copo]\nterm_weights: [1.0]\n")
    with pytest.raises(RecipeError, match=r"`term_weights` lists 2 terms but 1 term_weights"):
        load_recipe(str(recipe_file))
