"""Every objective against values worked out by hand (and, where TRL has one, against TRL's implementation).

Shared numbers: ``softplus(-z) = -log σ(z) = log(1 + e^-z)``:
  -log σ(1)    = log(1 + e^-1)    = 0.3132616875182228
  -log σ(-1)   = log(1 + e)       = 1.3132616875182228
  -log σ(0.5)  = log(1 + e^-0.5)  = 0.4740769841801067
  -log σ(0.75) = log(1 + e^-0.75) = 0.38687100611489994
  -log σ(0)    = log 2            = 0.6931471805599453
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import medbench.train
from medbench.train import losses as L

LN2 = 0.6931471805599453
SP1 = 0.3132616875182228  # -log σ(1)
SP_NEG1 = 1.3132616875182228  # -log σ(-1)
SP_HALF = 0.4740769841801067  # -log σ(0.5)
SP_075 = 0.38687100611489994  # -log σ(0.75)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# Sample 0: log π(y_w) = -1, log π(y_l) = -3, log π_ref = -2 for both → r_w = 1, r_l = -1, h = 2.
# Sample 1: everything -2 → h = 0.
POLICY_CHOSEN = t(-1.0, -2.0)
POLICY_REJECTED = t(-3.0, -2.0)
REF_CHOSEN = t(-2.0, -2.0)
REF_REJECTED = t(-2.0, -2.0)


def close(actual: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(actual, t(*expected), rtol=0, atol=1e-12)


def test_losses_are_importable_from_the_package():
    assert medbench.train.dpo_loss is L.dpo_loss
    assert medbench.train.mdpo_loss is L.mdpo_loss
    assert medbench.train.error_targeted_loss is L.error_targeted_loss


def test_dpo():
    # β = 0.5: β·h = 1 → -log σ(1); second sample h = 0 → log 2.
    close(L.dpo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, beta=0.5), [SP1, LN2])


def test_dpo_prefers_the_chosen_answer():
    # Raising log π(y_w) lowers the loss; raising log π(y_l) raises it.
    base = L.dpo_loss(t(-2.0), t(-2.0), t(-2.0), t(-2.0))
    assert L.dpo_loss(t(-1.0), t(-2.0), t(-2.0), t(-2.0)) < base < L.dpo_loss(t(-2.0), t(-1.0), t(-2.0), t(-2.0))


def test_dpo_rejects_non_positive_beta():
    with pytest.raises(ValueError, match="beta"):
        L.dpo_loss(t(0.0), t(0.0), t(0.0), t(0.0), beta=0.0)


def test_dpo_nll():
    # DPO as above plus α · (-log π(y_w) / |y_w|): sample 0: 1/4 = 0.25; sample 1: 2/2 = 1.0 (α = 1).
    losses = L.dpo_nll_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, t(4.0, 2.0), beta=0.5, alpha=1.0)
    close(losses, [SP1 + 0.25, LN2 + 1.0])
    # α scales only the NLL term: α = 0 gives plain DPO.
    close(L.dpo_nll_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, t(4.0, 2.0), 0.5, 0.0), [SP1, LN2])


def test_ipo():
    # Sample 0: r_w/|y_w| = 1/2 = 0.5, r_l/|y_l| = -1/4 = -0.25, h = 0.75; τ = 0.5 → 1/(2τ) = 1 → (0.75 - 1)² = 0.0625.
    # Sample 1: h = 0 → (0 - 1)² = 1.
    losses = L.ipo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, t(2.0, 2.0), t(4.0, 4.0), beta=0.5)
    close(losses, [0.0625, 1.0])


def test_robust_dpo():
    # ε = 0.25, β·h = 1: [(0.75)(0.31326...) - (0.25)(1.31326...)] / (1 - 0.5) = -0.18673831248177708.
    # Sample 1 (h = 0): [(0.75 - 0.25) log 2] / 0.5 = log 2.
    losses = L.robust_dpo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, beta=0.5, label_smoothing=0.25)
    close(losses, [-0.18673831248177708, LN2])
    # ε = 0 is plain DPO.
    close(L.robust_dpo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, 0.5, 0.0), [SP1, LN2])
    with pytest.raises(ValueError, match="label_smoothing"):
        L.robust_dpo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, 0.5, 0.5)


def test_conservative_dpo():
    # ε = 0.25, β·h = 1: 0.75 · 0.31326... + 0.25 · 1.31326... = 0.5632616875182228; h = 0 → log 2.
    losses = L.conservative_dpo_loss(
        POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, beta=0.5, label_smoothing=0.25
    )
    close(losses, [0.5632616875182228, LN2])


def test_simpo():
    # log π(y_w) = -2 over 2 tokens → -1; log π(y_l) = -6 over 3 tokens → -2; β = 2, γ = 1:
    # β(-1 - (-2)) - γ = 1 → -log σ(1).
    close(L.simpo_loss(t(-2.0), t(-6.0), t(2.0), t(3.0), beta=2.0, gamma=1.0), [SP1])
    # γ = 2 → argument 0 → log 2.
    close(L.simpo_loss(t(-2.0), t(-6.0), t(2.0), t(3.0), beta=2.0, gamma=2.0), [LN2])


def test_simpo_matches_trl_cpo_simpo():
    from trl.experimental.cpo import CPOTrainer

    chosen_avg, rejected_avg = t(-0.7, -1.3, -0.2), t(-1.1, -0.9, -2.5)
    fake = SimpleNamespace(
        loss_type="simpo",
        beta=2.0,
        simpo_gamma=1.0,
        label_smoothing=0.0,
        alpha=0.0,
        accelerator=SimpleNamespace(device="cpu"),
    )
    expected, _, _ = CPOTrainer.cpo_loss(fake, chosen_avg, rejected_avg)
    ones = t(1.0, 1.0, 1.0)
    torch.testing.assert_close(L.simpo_loss(chosen_avg, rejected_avg, ones, ones, beta=2.0, gamma=1.0), expected)


def test_orpo():
    # Chosen: mean token prob 0.5 over 2 tokens (log π = 2 log 0.5): odds = 1, log odds = 0, NLL = log 2.
    # Rejected: mean token prob 0.2 over 3 tokens: odds = 0.25, log odds = -log 4.
    # L_OR = -log σ(log 4) = -log(4/5) = log 1.25 = 0.22314355131420976.
    # L = log 2 + 0.1 · log 1.25 = 0.7154615356913663.
    losses = L.orpo_loss(t(2 * math.log(0.5)), t(3 * math.log(0.2)), t(2.0), t(3.0), lam=0.1)
    close(losses, [0.7154615356913663])


def test_orpo_matches_trl_odds_ratio_loss():
    from trl.experimental.orpo import ORPOTrainer

    chosen_avg, rejected_avg = t(-0.3, -1.7, -0.05), t(-0.9, -0.4, -3.0)
    fake = SimpleNamespace(beta=0.1, accelerator=SimpleNamespace(device="cpu"))
    trl_or, *_ = ORPOTrainer.odds_ratio_loss(fake, chosen_avg, rejected_avg)
    # TRL returns +β·log σ(·) and subtracts it from the NLL; ours is NLL - that term.
    ones = t(1.0, 1.0, 1.0)
    torch.testing.assert_close(L.orpo_loss(chosen_avg, rejected_avg, ones, ones, lam=0.1), -chosen_avg - trl_or)


def test_copo():
    # Same answer, real vs corrupted image: r(y_w|m) = 1, r(y_w|m') = -3 - (-2) = -1; β = 0.5 → -log σ(1).
    close(L.copo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.5), [SP1])


def test_anchor():
    # β · r(y_w|m) = 0.5 · 1 = 0.5 → -log σ(0.5); δ = 0.5 → -log σ(0) = log 2.
    close(L.anchor_loss(t(-1.0), t(-2.0), beta=0.5), [SP_HALF])
    close(L.anchor_loss(t(-1.0), t(-2.0), beta=0.5, delta=0.5), [LN2])


def test_mdpo_is_dpo_plus_copo_plus_anchor():
    # r(y_w|m) = 1, r(y_l|m) = -1, r(y_w|m') = -2.5 - (-2) = -0.5; β = 0.5.
    # DPO: β(1 - (-1)) = 1 → 0.31326...; CoPO: β(1 - (-0.5)) = 0.75 → 0.38687...; anchor: β·1 = 0.5 → 0.47407...
    losses = L.mdpo_loss(t(-1.0), t(-3.0), t(-2.5), t(-2.0), t(-2.0), t(-2.0), beta=0.5)
    close(losses, [SP1 + SP_075 + SP_HALF])
    assert losses.item() == pytest.approx(1.1742096778132294, abs=1e-12)
    # The authors' trainer computed 2·DPO + anchor = 1.1006003592165525, ignoring the corrupted image.
    assert losses.item() != pytest.approx(2 * SP1 + SP_HALF, abs=1e-6)
    # The corrupted image matters: making it as likely as the real one raises the loss.
    assert L.mdpo_loss(t(-1.0), t(-3.0), t(-1.0), t(-2.0), t(-2.0), t(-2.0), beta=0.5) > losses


def test_mmedpo_applies_the_weight():
    # Per-sample DPO [0.31326..., log 2] times weights [2, 0].
    losses = L.mmedpo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, t(2.0, 0.0), beta=0.5)
    close(losses, [2 * SP1, 0.0])


def test_error_targeted_routes_by_error_type():
    nan = float("nan")
    # Sample 0 is visual: CoPO with r(y_w|m) = 1, r(y_w|m') = -0.5 → β·1.5 = 0.75; its rejected entry is ignored.
    # Sample 1 is text-side: DPO with h = 0 → log 2; its corrupted entry is ignored.
    losses = L.error_targeted_loss(
        policy_chosen_logps=t(-1.0, -2.0),
        policy_rejected_logps=t(nan, -2.0),
        policy_corrupted_logps=t(-2.5, nan),
        ref_chosen_logps=t(-2.0, -2.0),
        ref_rejected_logps=t(nan, -2.0),
        ref_corrupted_logps=t(-2.0, nan),
        is_visual=torch.tensor([True, False]),
        beta=0.5,
    )
    close(losses, [SP_075, LN2])


def test_losses_backpropagate_through_the_policy_only():
    policy_chosen = t(-1.0, -2.0).requires_grad_()
    loss = L.mdpo_loss(policy_chosen, t(-3.0, -2.0), t(-2.5, -2.0), t(-2.0, -2.0), t(-2.0, -2.0), t(-2.0, -2.0)).sum()
    loss.backward()
    # Every term rewards a more likely chosen answer, so the gradient is negative.
    assert (policy_chosen.grad < 0).all()


def test_sft_loss_is_the_token_mean_nll_by_hand():
    from medbench.train.losses import sft_loss

    logps = torch.tensor([-6.0, -3.0, -2.0])
    lengths = torch.tensor([3, 1, 0])
    # -(-6)/3 = 2, -(-3)/1 = 3, an empty answer counts one token: 2.
    torch.testing.assert_close(sft_loss(logps, lengths), torch.tensor([2.0, 3.0, 2.0]))


def test_mdpo_anchor_delta_reaches_the_training_function():
    from medbench.train.losses import anchor_loss, copo_loss, dpo_loss, mdpo_loss

    p = [torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5])]
    r = [torch.tensor([-1.2]), torch.tensor([-1.8]), torch.tensor([-1.1])]
    expected = dpo_loss(p[0], p[1], r[0], r[1], 0.1) + copo_loss(p[0], p[2], r[0], r[2], 0.1) + anchor_loss(
        p[0], r[0], 0.1, delta=0.3
    )
    torch.testing.assert_close(mdpo_loss(*p, *r, 0.1, delta=0.3), expected)
    assert not torch.allclose(mdpo_loss(*p, *r, 0.1, delta=0.3), mdpo_loss(*p, *r, 0.1))
