"""Pure preference-optimisation objectives over per-sample sequence log-probabilities.

Every function here takes 1-D tensors of shape ``(batch,)`` and returns the per-sample loss, also of shape
``(batch,)``; the trainer averages it. Nothing here touches a model, so each objective can be checked against
numbers worked out by hand (see ``tests/trainers/test_losses.py``).

Notation used in the docstrings:

* ``log π(y|m)``: the policy's log-probability of answer ``y`` given the prompt and image ``m``, summed over the
  answer tokens (the "logps" arguments); ``log π_ref`` the same under the frozen reference model.
* ``r(y|m) = log π(y|m) − log π_ref(y|m)``: the implicit reward (a log-ratio).
* ``y_w`` / ``y_l``: chosen / rejected answer; ``m′``: the corrupted ("rejected") image.
* ``|y|``: number of answer tokens; ``σ``: the logistic function; ``ℓ(z) = −log σ(z)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
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
]


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")


def _log_ratio_margin(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
) -> torch.Tensor:
    """h = r(y_w) − r(y_l), the quantity every DPO-family loss is a function of."""
    return (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """Direct Preference Optimization.

    Rafailov et al., 2023, https://arxiv.org/abs/2305.18290, eq. 7::

        L_DPO = −log σ(β · [r(y_w|m) − r(y_l|m)])

    Args:
        policy_chosen_logps: ``log π(y_w|m)``, shape ``(batch,)``.
        policy_rejected_logps: ``log π(y_l|m)``.
        ref_chosen_logps: ``log π_ref(y_w|m)``.
        ref_rejected_logps: ``log π_ref(y_l|m)``.
        beta: KL-regularisation strength β.

    Returns:
        Per-sample loss, shape ``(batch,)``.
    """
    _check_beta(beta)
    margin = _log_ratio_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return -F.logsigmoid(beta * margin)


def dpo_nll_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    beta: float = 0.1,
    alpha: float = 1.0,
) -> torch.Tensor:
    """DPO plus a length-normalised negative log-likelihood of the chosen answer (RPO).

    Pang et al., 2024, "Iterative Reasoning Preference Optimization", https://arxiv.org/abs/2404.19733, eq. 3::

        L = L_DPO + α · (−log π(y_w|m) / |y_w|)

    Args:
        policy_chosen_logps: ``log π(y_w|m)``.
        policy_rejected_logps: ``log π(y_l|m)``.
        ref_chosen_logps: ``log π_ref(y_w|m)``.
        ref_rejected_logps: ``log π_ref(y_l|m)``.
        chosen_lengths: ``|y_w|``, number of chosen-answer tokens (clamped to ≥ 1).
        beta: β of the DPO term.
        alpha: weight α of the NLL term (the study used 1.0).

    Returns:
        Per-sample loss, shape ``(batch,)``.
    """
    nll = -policy_chosen_logps / chosen_lengths.clamp(min=1)
    return (
        dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta) + alpha * nll
    )


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """Identity Preference Optimisation.

    Azar et al., 2023, https://arxiv.org/abs/2310.12036, eq. 17, with β playing the role of τ::

        L_IPO = (h − 1 / (2τ))²,   h = r(y_w|m)/|y_w| − r(y_l|m)/|y_l|

    The log-ratios are averaged per token, as in TRL (and confirmed with the IPO authors there); summed
    log-ratios would make the squared loss grow with answer length.

    Args:
        policy_chosen_logps: ``log π(y_w|m)``.
        policy_rejected_logps: ``log π(y_l|m)``.
        ref_chosen_logps: ``log π_ref(y_w|m)``.
        ref_rejected_logps: ``log π_ref(y_l|m)``.
        chosen_lengths: ``|y_w|`` (clamped to ≥ 1).
        rejected_lengths: ``|y_l|`` (clamped to ≥ 1).
        beta: τ, the regularisation strength.

    Returns:
        Per-sample loss, shape ``(batch,)``.
    """
    _check_beta(beta)
    chosen = (policy_chosen_logps - ref_chosen_logps) / chosen_lengths.clamp(min=1)
    rejected = (policy_rejected_logps - ref_rejected_logps) / rejected_lengths.clamp(min=1)
    return (chosen - rejected - 1.0 / (2.0 * beta)) ** 2


def robust_dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.1,
) -> torch.Tensor:
    """Robust DPO (rDPO): an unbiased DPO loss under preference labels flipped with probability ε.

    Chowdhury et al., 2024, "Provably Robust DPO", https://arxiv.org/abs/2403.00409::

        L_rDPO = [(1 − ε) · ℓ(β h) − ε · ℓ(−β h)] / (1 − 2ε),   h = r(y_w|m) − r(y_l|m)

    Args:
        policy_chosen_logps: ``log π(y_w|m)``.
        policy_rejected_logps: ``log π(y_l|m)``.
        ref_chosen_logps: ``log π_ref(y_w|m)``.
        ref_rejected_logps: ``log π_ref(y_l|m)``.
        beta: β.
        label_smoothing: ε, the assumed label-flip rate, in ``[0, 0.5)``.

    Returns:
        Per-sample loss, shape ``(batch,)``.
    """
    _check_beta(beta)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5) for robust DPO, got {label_smoothing}")
    h = _log_ratio_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    eps = label_smoothing
    return ((1 - eps) * -F.logsigmoid(beta * h) - eps * -F.logsigmoid(-beta * h)) / (1 - 2 * eps)


def conservative_dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.1,
) -> torch.Tensor:
    """Conservative DPO (cDPO): DPO with label smoothing ε.

    Mitchell, 2023, "A note on DPO with noisy preferences", https://ericmitchell.ai/cdpo.pdf::

        L_cDPO = (1 − ε) · ℓ(β h) + ε · ℓ(−β h),   h = r(y_w|m) − r(y_l|m)

    Args:
        policy_chosen_logps: ``log π(y_w|m)``.
        policy_rejected_logps: ``log π(y_l|m)``.
        ref_chosen_logps: ``log π_ref(y_w|m)``.
        ref_rejected_logps: ``log π_ref(y_l|m)``.
        beta: β.
        label_smoothing: ε in ``[0, 0.5)``.

    Returns:
        Per-sample loss, shape ``(batch,)``.
    """
    _check_beta(beta)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5) for conservative DPO, got {label_smoothing}")
    h = _log_ratio_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return (1 - label_smoothing) * -F.logsigmoid(beta * h) + label_smoothing * -F.logsigmoid(-beta * h)


def simpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float = 0.1,
    gamma: float = 0.5,
) -> torch.Tensor:
    """SimPO: reference-free, length-normalised preference loss with a target margin γ.

    Meng et al., 2024, https://arxiv.org/abs/2405.14734, eq. 6::

        L_SimPO = −log σ(β/|y_w| · log π(y_w|m) − β/|y_l| · log π(y_l|m) − γ)

    Args:
        policy_chosen_logps: ``log π(y_w|m)``.
        policy_rejected_logps: ``log π(y_l|m)``.
        chosen_lengths: ``|y_w|`` (clamped to ≥ 1).
        rejected_lengths: ``|y_l|`` (clamped to ≥ 1).
        beta: β, the reward scale.
        gamma: γ, the target reward margin.

    Returns:
        Per-sample loss, shape ``(batch,)``.
    """
    _check_beta(beta)
    chosen = policy_chosen_logps / chosen_lengths.clamp(min=1)
    rejected = policy_rejected_logps / rejected_lengths.clamp(min=1)
    return -F.logsigmoid(beta * (chosen - rejected) - gamma)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x < 0, switching formulas at −log 2 for precision (Mächler, 2012)."""
    x = x.clamp(max=-1e-7)  # a mean log-prob of exactly 0 would make the odds infinite
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    lam: float = 0.1,
) -> torch.Tensor:
    """ORPO: supervised NLL plus an odds-ratio preference term, without a reference model.

    Hong et al., 2024, https://arxiv.org/abs/2403.07691::

        P̄(y) = exp(log π(y|m) / |y|),   odds(y) = P̄(y) / (1 − P̄(y))
        L_OR   = −log σ(log odds(y_w) − log odds(y_l))
        L_ORPO = −log π(y_w|m) / |y_w| + λ · L_OR

    Args:
        policy_chosen_logps: ``log π(y_w|m)``.
        policy_rejected_logps: ``log π(y_l|m)``.
        chosen_lengths: ``|y_w|`` (clamped to ≥ 1).
        rejected_lengths: ``|y_l|`` (clamped to ≥ 1).
        lam: λ, weight of the odds-ratio term (TRL's ``ORPOConfig.beta``).

    Returns:
        Per-sample loss, shape ``(batch,)``.
    """
    chosen_mean = policy_chosen_logps / chosen_lengths.clamp(min=1)
    rejected_mean = policy_rejected_logps / rejected_lengths.clamp(min=1)
    log_odds = (chosen_mean - _log1mexp(chosen_mean)) - (rejected_mean - _log1mexp(rejected_mean))
    return -chosen_mean + lam * -F.logsigmoid(log_odds)


def copo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_corrupted_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_corrupted_logps: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """Conditional preference optimisation: the same answer with the real vs the corrupted image.

    Wang et al., 2024, "mDPO: Conditional Preference Optimization for Multimodal LLMs",
    https://arxiv.org/abs/2406.11839 (the image-conditional term)::

        L_CoPO = −log σ(β · [r(y_w|m) − r(y_w|m′)])

    Args:
        policy_chosen_logps: ``log π(y_w|m)``.
        policy_corrupted_logps: ``log π(y_w|m′)``, the chosen answer under the corrupted image.
        ref_chosen_logps: ``log π_ref(y_w|m)``.
        ref_corrupted_logps: ``log π_ref(y_w|m′)``.
        beta: β.

    Returns:
        Per-sample loss, shape ``(batch,)``.
    """
    # Algebraically a DPO loss whose "rejected" sequence is (y_w, m′).
    return dpo_loss(policy_chosen_logps, policy_corrupted_logps, ref_chosen_logps, ref_corrupted_logps, beta)


def anchor_loss(
    policy_chosen_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    beta: float = 0.1,
    delta: float = 0.0,
) -> torch.Tensor:
    """mDPO's reward anchor: keeps the chosen answer's implicit reward positive.

    Wang et al., 2024, https://arxiv.org/abs/2406.11839::

        L_AncPO = −log σ(β · r(y_w|m) − δ)

    Args:
        policy_chosen_logps: ``log π(y_w|m)``.
        ref_chosen_logps: ``log π_ref(y_w|m)``.
        beta: β.
        delta: δ, the anchor (0 in the paper and the study).

    Returns:
        Per-sample loss, shape ``(batch,)``.
    """
    _check_beta(beta)
    return -F.logsigmoid(beta * (policy_chosen_logps - ref_chosen_logps) - delta)


def mdpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    policy_corrupted_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    ref_corrupted_logps: torch.Tensor,
    beta: float = 0.1,
    delta: float = 0.0,
) -> torch.Tensor:
    """mDPO: DPO + conditional (image-side) preference + reward anchor.

    Wang et al., 2024, https://arxiv.org/abs/2406.11839::

        L_mDPO = L_DPO(y_w|m ≻ y_l|m) + L_CoPO(y_w|m ≻ y_w|m′) + L_AncPO(y_w|m)

    This is the intended objective. The study's released trainer, through a method-resolution mistake, computed
    the DPO term twice (2·L_DPO + L_AncPO) and never used the corrupted image; ``tests/trainers`` checks the sum.

    Args:
        policy_chosen_logps: ``log π(y_w|m)``.
        policy_rejected_logps: ``log π(y_l|m)``.
        policy_corrupted_logps: ``log π(y_w|m′)``.
        ref_chosen_logps: ``log π_ref(y_w|m)``.
        ref_rejected_logps: ``log π_ref(y_l|m)``.
        ref_corrupted_logps: ``log π_ref(y_w|m′)``.
        beta: β, shared by the three terms.
        delta: δ, the reward anchor of the anchor term (0 in the paper and the study).

    Returns:
        Per-sample loss, shape ``(batch,)``.
    """
    return (
        dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
        + copo_loss(policy_chosen_logps, policy_corrupted_logps, ref_chosen_logps, ref_corrupted_logps, beta)
        + anchor_loss(policy_chosen_logps, ref_chosen_logps, beta, delta=delta)
    )


def sft_loss(policy_chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor) -> torch.Tensor:
    """Supervised fine-tuning on the chosen answer: its length-normalised negative log-likelihood.

    The study's comparator for the preference objectives (Kim et al., 2026, https://arxiv.org/abs/2601.17918)::

        L_SFT = −log π(y_w|m) / |y_w|

    The per-sample token mean, averaged over the batch, weighs every record equally whatever its answer length
    (TRL's SFTTrainer averages over all answer tokens of the batch instead, which weighs long answers more).

    Args:
        policy_chosen_logps: ``log π(y_w|m)`` summed over the answer tokens.
        chosen_lengths: ``|y_w|``, answer tokens per sample (clamped to >= 1).

    Returns:
        Per-sample loss, shape ``(batch,)``.
    """
    return -policy_chosen_logps / chosen_lengths.clamp(min=1).to(policy_chosen_logps.dtype)


def mmedpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    weights: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """MMedPO: clinical-relevance-weighted DPO whose rejected side pairs the rejected answer with the noised image.

    Zhu et al., 2024, "MMedPO: Aligning Medical Vision-Language Models with Clinical-Aware Multimodal
    Preference Optimization", https://arxiv.org/abs/2412.06141::

        L_MMedPO = w · −log σ(β · [r(y_w|m) − r(y_l|m′)])

    The per-sample weight ``w`` is applied; the study's released trainer looked for a ``weight`` key while its
    data carried ``weighted_score``, so its weights were silently ignored.

    Args:
        policy_chosen_logps: ``log π(y_w|m)``.
        policy_rejected_logps: ``log π(y_l|m′)``, the rejected answer under the corrupted image.
        ref_chosen_logps: ``log π_ref(y_w|m)``.
        ref_rejected_logps: ``log π_ref(y_l|m′)``.
        weights: ``w``, the per-sample clinical-relevance weight, shape ``(batch,)``.
        beta: β.

    Returns:
        Per-sample loss, shape ``(batch,)``.
    """
    losses = dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    return weights.to(losses.dtype) * losses


def error_targeted_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    policy_corrupted_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    ref_corrupted_logps: torch.Tensor,
    is_visual: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """The study's error-type-targeted objective: the image-side term for visual errors, the text-side otherwise.

    Kim et al., 2026, "Benchmarking Direct Preference Optimization for Medical Large Vision-Language Models",
    https://arxiv.org/abs/2601.17918::

        L = L_CoPO(y_w|m ≻ y_w|m′)   if the record's error type is a visual misinterpretation
            L_DPO(y_w|m ≻ y_l|m)     otherwise

    Each sample uses one of the two terms, so entries of the rejected tensors for visual samples and of the
    corrupted tensors for the other samples are ignored (the trainer only computes the sequence each sample needs).

    Args:
        policy_chosen_logps: ``log π(y_w|m)``.
        policy_rejected_logps: ``log π(y_l|m)`` (read for non-visual samples).
        policy_corrupted_logps: ``log π(y_w|m′)`` (read for visual samples).
        ref_chosen_logps: ``log π_ref(y_w|m)``.
        ref_rejected_logps: ``log π_ref(y_l|m)``.
        ref_corrupted_logps: ``log π_ref(y_w|m′)``.
        is_visual: boolean mask, True where the record's error type is visual.
        beta: β.

    Returns:
        Per-sample loss, shape ``(batch,)``.
    """
    is_visual = is_visual.to(torch.bool)
    # Select the losing sequence per sample before the loss so ignored entries (possibly inf/nan) never enter it.
    losing_policy = torch.where(is_visual, policy_corrupted_logps, policy_rejected_logps)
    losing_ref = torch.where(is_visual, ref_corrupted_logps, ref_rejected_logps)
    return dpo_loss(policy_chosen_logps, losing_policy, ref_chosen_logps, losing_ref, beta)
