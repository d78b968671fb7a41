"""Recipes list loss terms and weights; the trainer sums the tested pure functions (no per-objective branches)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from medbench.train import losses as L
from medbench.train.config import RecipeError, load_recipe
from medbench.train.objectives import OBJECTIVES, ONLINE_OBJECTIVE, TERMS, Objective
from medbench.train.run import build_training_args
from medbench.train.trainer import ScoredRows, objective_terms


def _logps(objective, batch=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    n = objective.n_rows * batch
    policy = -torch.rand(n, generator=generator) * 10
    ref = -torch.rand(n, generator=generator) * 10
    lengths = torch.randint(1, 9, (n,), generator=generator)
    return policy, ref, lengths


W, LOSE, WC, LC = ("chosen", "image"), ("rejected", "image"), ("chosen", "rejected_image"), ("rejected", "rejected_image")
RECIPE = SimpleNamespace(nll_weight=0.7, simpo_gamma=0.3, anchor_delta=0.2)  # not the defaults: wiring shows
ARGS = SimpleNamespace(beta=0.15, label_smoothing=0.1)
BATCH = {"weight": torch.tensor([0.5, 1.0, 2.0]), "is_visual": torch.tensor([True, False, True])}


def _expected(name, p, r, n):
    """Each term's value, spelled out from its paper's equation as implemented in losses (independent of the table)."""
    beta, eps = ARGS.beta, ARGS.label_smoothing
    return {
        "dpo": lambda: L.dpo_loss(p[W], p[LOSE], r[W], r[LOSE], beta),
        "dpo_nll": lambda: L.dpo_nll_loss(p[W], p[LOSE], r[W], r[LOSE], n[W], beta=beta, alpha=0.7),
        "ipo": lambda: L.ipo_loss(p[W], p[LOSE], r[W], r[LOSE], n[W], n[LOSE], beta=beta),
        "robust_dpo": lambda: L.robust_dpo_loss(p[W], p[LOSE], r[W], r[LOSE], beta=beta, label_smoothing=eps),
        "cdpo": lambda: L.conservative_dpo_loss(p[W], p[LOSE], r[W], r[LOSE], beta=beta, label_smoothing=eps),
        "simpo": lambda: L.simpo_loss(p[W], p[LOSE], n[W], n[LOSE], beta=beta, gamma=0.3),
        "orpo": lambda: L.orpo_loss(p[W], p[LOSE], n[W], n[LOSE], lam=beta),
        "copo": lambda: L.copo_loss(p[W], p[WC], r[W], r[WC], beta),
        "anchor": lambda: L.anchor_loss(p[W], r[W], beta, delta=0.2),
        "mmedpo": lambda: L.mmedpo_loss(p[W], p[LC], r[W], r[LC], BATCH["weight"], beta),
        "error_targeted": lambda: L.error_targeted_loss(
            p[W], p[LOSE], p[LOSE], r[W], r[LOSE], r[LOSE], BATCH["is_visual"], beta
        ),
        "sft": lambda: L.sft_loss(p[W], n[W]),
    }[name]()


@pytest.mark.parametrize("name", sorted(TERMS))
def test_each_terms_adapter_computes_its_pure_function_on_values(name):
    term = TERMS[name]
    assert term.pure_function() is getattr(L, term.function)
    # Only the rows the term declares are scored: an adapter reading another row fails here.
    objective = Objective(name="probe", equation="", requires=(), rows=term.rows)
    policy, ref, lengths = _logps(objective, seed=7)
    p = dict(zip(term.rows, policy.float().chunk(len(term.rows)), strict=True))
    r = dict(zip(term.rows, ref.float().chunk(len(term.rows)), strict=True))
    n = dict(zip(term.rows, lengths.float().chunk(len(term.rows)), strict=True))
    value = term(ScoredRows(objective, policy, None if term.reference_free else ref, lengths), RECIPE, ARGS, BATCH)
    assert value.shape == (3,)
    torch.testing.assert_close(value, _expected(name, p, r, n))


def test_label_smoothing_lives_in_the_robust_terms(tmp_path):
    assert {name for name, term in TERMS.items() if term.label_smoothing} == {"robust_dpo", "cdpo"}
    recipe = load_recipe("robust_dpo")
    args = build_training_args(recipe, tmp_path)
    args.label_smoothing = 0.0
    with pytest.raises(RecipeError, match="must be > 0 for term robust_dpo"):
        recipe.check_training_args(args)


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


# (trl and grpo are computed by TRL's own trainers, not by medbench's terms)
@pytest.mark.parametrize("name", [n for n, o in OBJECTIVES.items() if n not in ("trl", ONLINE_OBJECTIVE)])
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
