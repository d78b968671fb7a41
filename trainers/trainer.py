"""``MedPreferenceTrainer``: TRL's ``DPOTrainer`` with the study's objectives.

The subclass overrides two public methods only:

* :meth:`MedPreferenceTrainer.compute_loss` scores every row block the collator built (one policy forward and, for
  reference-based objectives, one reference forward, both through TRL's fused log-prob head), splits the
  per-sequence log-probabilities into blocks and hands them to the objective's pure loss function from
  :mod:`medbench.train.losses`. ``objective: trl`` defers to TRL's own ``compute_loss`` unchanged.
* :meth:`MedPreferenceTrainer.log` adds the objective's metrics (rewards, margins, loss components), averaged
  over the logging window and across processes.

Everything else (model/reference set-up, PEFT wrapping, DeepSpeed/FSDP preparation, the training loop) is TRL's.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Any

import torch
import trl
from accelerate.utils import is_peft_model
from trl import DPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import use_adapter

from .config import RecipeConfig
from .objectives import TERMS, Objective, Row, get_objective

# The trainer relies on TRL 1.16 internals reached through public names (the fused log-prob head TRL patches onto
# the model, `use_adapter`, `disable_gradient_checkpointing`); pyproject pins trl>=1.16,<1.17.
if not trl.__version__.startswith("1.16."):
    warnings.warn(
        f"medbench-train is tested with TRL 1.16.x; found {trl.__version__}. Run tests/trainers/test_parity.py.",
        stacklevel=2,
    )

# Batch entries that describe the rows rather than feed the model.
NON_MODEL_KEYS = frozenset({"completion_mask", "weight", "is_visual", "ref_chosen_logps", "ref_rejected_logps"})


class ScoredRows:
    """Per-row log-probabilities of one batch, addressed by ``(answer field, image field)`` instead of block index."""

    def __init__(
        self,
        objective: Objective,
        policy_logps: torch.Tensor,
        ref_logps: torch.Tensor | None,
        lengths: torch.Tensor,
    ) -> None:
        self._index = {row: block for block, row in enumerate(objective.rows)}
        self._policy = policy_logps.float().chunk(objective.n_rows)
        self._ref = ref_logps.float().chunk(objective.n_rows) if ref_logps is not None else None
        self._lengths = lengths.float().chunk(objective.n_rows)

    def p(self, row: Row) -> torch.Tensor:
        """Policy log-probs of a row."""
        return self._policy[self._index[row]]

    def r(self, row: Row) -> torch.Tensor:
        """Reference log-probs of a row."""
        if self._ref is None:
            raise ValueError("this objective scores no reference log-probs")
        return self._ref[self._index[row]]

    def n(self, row: Row) -> torch.Tensor:
        """Answer-token counts of a row."""
        return self._lengths[self._index[row]]


_W, _WC = ("chosen", "image"), ("chosen", "rejected_image")


def objective_terms(
    objective: Objective,
    recipe: RecipeConfig,
    args: Any,
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    lengths: torch.Tensor,
    batch: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-sample losses (the weighted sum of the recipe's terms) and logging metrics for one batch.

    Args:
        objective: The recipe's objective (which rows were scored, in which block order).
        recipe: Terms, term weights and medbench's hyperparameters (α, γ, δ).
        args: The run's ``trl.DPOConfig`` (β ``beta``, ε ``label_smoothing``).
        policy_logps: Summed answer log-probs under the policy, one per row, block-major ``(n_rows * batch,)``.
        ref_logps: The same under the reference model, or None for reference-free objectives.
        lengths: Answer-token counts per row, same layout.
        batch: The collated batch (for ``weight`` / ``is_visual``).

    Returns:
        ``(per-sample losses of shape (batch,), {metric name: scalar tensor})``.
    """
    if ref_logps is None and not objective.reference_free:
        raise ValueError(f"objective {objective.name} needs reference log-probs")
    rows = ScoredRows(objective, policy_logps, ref_logps, lengths)
    names = list(recipe.terms) if recipe.terms is not None else list(objective.default_terms())
    weights = list(recipe.term_weights) if recipe.term_weights is not None else [1.0] * len(names)
    metrics: dict[str, torch.Tensor] = {}
    losses = None
    # TRL's loss_types/loss_weights loop: each term's declaration feeds its own pure function.
    for name, weight in zip(names, weights, strict=True):
        term = TERMS[name](rows, recipe, args, batch)
        losses = weight * term if losses is None else losses + weight * term
        if len(names) > 1:
            metrics[f"loss/{name}"] = term.detach().mean()
    assert losses is not None  # recipe validation guarantees at least one term

    beta, chosen = args.beta, rows.p(_W)
    if set(names) & {"dpo_nll", "orpo", "sft"}:
        metrics["loss/nll"] = (-chosen / rows.n(_W).clamp(min=1)).detach().mean()
    metrics["logps/chosen"] = chosen.mean()
    if objective.n_rows < 2:
        return losses, metrics
    second = objective.rows[1]
    if objective.reference_free:
        # Reference-free rewards: β times the mean token log-prob (as in TRL's CPO/ORPO trainers).
        chosen_rewards = beta * chosen / rows.n(_W).clamp(min=1)
        rejected_rewards = beta * rows.p(second) / rows.n(second).clamp(min=1)
    else:
        chosen_rewards = beta * (chosen - rows.r(_W))
        rejected_rewards = beta * (rows.p(second) - rows.r(second))
    if _WC in objective.rows and second != _WC:
        metrics["rewards/corrupted"] = (beta * (rows.p(_WC) - rows.r(_WC))).mean()
    if "weight" in batch:
        metrics["weight"] = batch["weight"].float().mean()
    if "is_visual" in batch:
        metrics["visual_fraction"] = batch["is_visual"].float().mean()
    metrics["rewards/chosen"] = chosen_rewards.mean()
    metrics["rewards/rejected"] = rejected_rewards.mean()
    metrics["rewards/margins"] = (chosen_rewards - rejected_rewards).mean()
    metrics["rewards/accuracies"] = (chosen_rewards > rejected_rewards).float().mean()
    metrics["logps/rejected"] = rows.p(second).mean()
    return losses, metrics


class MedPreferenceTrainer(DPOTrainer):
    """``trl.DPOTrainer`` whose loss is one of the study's objectives (see :mod:`medbench.train.objectives`).

    Args:
        *args: Positional arguments of ``trl.DPOTrainer``.
        recipe: The run's :class:`medbench.train.config.RecipeConfig` (objective, terms, α, γ, δ; β and ε are
            ``args.beta`` and ``args.label_smoothing``).
        **kwargs: Keyword arguments of ``trl.DPOTrainer`` (``model``, ``args``, ``train_dataset``,
            ``processing_class``, ``data_collator`` (a :class:`medbench.train.collator.PreferenceCollator`),
            ``peft_config``, ...).
    """

    def __init__(self, *args: Any, recipe: RecipeConfig, **kwargs: Any) -> None:
        self.recipe = recipe
        self.objective = get_objective(recipe.objective)
        self._objective_metrics: dict[str, defaultdict[str, list[torch.Tensor]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        super().__init__(*args, **kwargs)
        if self.objective.reference_free and self.ref_model is not None:
            # TRL 1.16 always builds a reference model for full fine-tuning; SimPO/ORPO never read it, so free it.
            self.ref_model = None

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        """Score the batch's rows and return the objective's mean loss (TRL's own loss for ``objective: trl``)."""
        if self.objective.name == "trl":
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        model_kwargs = {key: value for key, value in inputs.items() if key not in NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        answer_mask = completion_mask[:, 1:]
        seq_len = answer_mask.size(1)
        policy_logps, outputs = self._label_logps(model, model_kwargs, labels, seq_len)
        lengths = answer_mask.sum(dim=1)
        ref_logps = None if self.objective.reference_free else self._reference_logps(model_kwargs, labels, seq_len)
        losses, metrics = objective_terms(
            self.objective, self.recipe, self.args, policy_logps, ref_logps, lengths, inputs
        )
        loss = losses.mean()
        store = self._objective_metrics[mode]
        for key, value in metrics.items():
            store[key].append(value.detach())
        return (loss, outputs) if return_outputs else loss

    def _reference_logps(self, model_kwargs: dict[str, Any], labels: torch.Tensor, seq_len: int) -> torch.Tensor:
        # Same reference as TRL: the separate reference model, or the policy with its LoRA adapter switched off.
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            if self.ref_model is None and is_peft_model(self.model):
                unwrapped = self.accelerator.unwrap_model(self.model)
                adapter = "ref" if "ref" in unwrapped.peft_config else None
                with use_adapter(unwrapped, adapter_name=adapter):
                    return self._label_logps(self.model, model_kwargs, labels, seq_len)[0]
            elif self.ref_model is not None:
                return self._label_logps(self.ref_model, model_kwargs, labels, seq_len)[0]
            raise RuntimeError(f"objective {self.objective.name} needs a reference model and none was built")

    def _label_logps(
        self, network: torch.nn.Module, model_kwargs: dict[str, Any], labels: torch.Tensor, seq_len: int
    ) -> tuple[torch.Tensor, Any]:
        """Summed log-probs of the label tokens (``-100`` left out) per row, and the model's outputs.

        TRL patched the model with a fused LM head: log-probs of the label tokens without full logits. (A plain
        log-softmax is no faster at the tiny study's scale within noise, and rounds differently from stock TRL, whose
        parity test then fails on near-zero gradients that Adam normalises.)
        """
        outputs = network(**model_kwargs, labels=labels, fused_lm_head=True)
        return outputs.log_probs[:, -seq_len:].sum(dim=1), outputs

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        """transformers' estimate (6 × tokens × non-embedding parameters), with the parameter count taken once: the
        model's own method walks every parameter on every step, which is a visible share of a tiny model's step."""
        main_input = getattr(self.model, "main_input_name", "input_ids")
        if main_input not in inputs or not hasattr(self.model, "num_parameters"):
            return 0
        if not hasattr(self, "_flop_parameters"):
            self._flop_parameters = self.model.num_parameters(exclude_embeddings=True)
        return 6 * inputs[main_input].numel() * self._flop_parameters

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the objective's metrics (window average, all processes) to ``logs`` and log them."""
        mode = "train" if self.model.training else "eval"
        store = self._objective_metrics[mode]
        if store:
            keys = sorted(store)
            local = torch.stack([torch.stack(store[key]).float().mean() for key in keys])
            # One collective for all metrics; every process logs at the same steps, so the shapes agree.
            averaged = self.accelerator.gather(local.unsqueeze(0)).mean(dim=0)
            prefix = "eval_" if mode == "eval" else ""
            logs.update({prefix + key: value for key, value in zip(keys, averaged.tolist(), strict=True)})
            store.clear()
        super().log(logs, start_time)
