"""The objectives a recipe can name, with what each needs from the data and which sequences it scores.

This module is import-light (no torch): the CLI lists recipes and validates data with it before any model is
loaded. The arithmetic lives in :mod:`medbench.train.losses`; each loss term's declaration (:data:`TERMS`) names
its pure function and holds the adapter that feeds it the scored sequences ("rows") and hyperparameters, and the
trainer sums the recipe's terms with their weights (TRL's ``zip(loss_types, loss_weights, strict=True)`` loop).
Adding a term: one :class:`Term` entry, one pure function in ``losses.py`` and its hand-computed-value test.

A *row* is one sequence the model scores per record: an answer field paired with an image field, e.g.
``("chosen", "rejected_image")`` is the chosen answer under the corrupted image. The collator lays rows out
block by block (all records' first row, then all records' second row, ...), so one forward pass scores them all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# Record fields, as produced by ``medbench.train.data`` from either accepted file schema.
RECORD_FIELDS: dict[str, str] = {
    "id": "record identifier (string); defaults to the line number",
    "image": "path of the image the question is about",
    "question": "the user turn (without an <image> placeholder; the chat template adds it)",
    "chosen": "the preferred answer",
    "rejected": "the dispreferred answer (usually a minimal factual edit of `chosen`)",
    "rejected_image": "path of a corrupted image (lesion-region noise, crop, ...) for image-side terms",
    "weight": "per-record weight >= 0 (MMedPO's clinical-relevance score; authors' key `weighted_score`)",
    "error_type": "error taxonomy key of the rejected answer (medbench/data/error_taxonomy.yaml; error-targeted recipes)",
    "control_image": "held-out scoring only: the control m″, the same corruption as `rejected_image` on a lesion-free "
    "region of the same size (`medbench prefs build --control`)",
}

Row = tuple[str, str]

# The objective that trains online (medbench.train.grpo) instead of on preference records.
ONLINE_OBJECTIVE = "grpo"

TRL_LOSS_TYPES: tuple[str, ...] = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)


# A term's adapter: (the pure loss function, the scored rows, the recipe (α, γ, δ), the run's trl.DPOConfig (β, ε),
# the batch) -> per-sample losses. Rows are medbench.train.trainer.ScoredRows: p(row), r(row), n(row) give the
# policy log-probs, reference log-probs and answer-token counts of a row.
Adapter = Callable[[Callable[..., Any], Any, Any, Any, Mapping[str, Any]], Any]


@dataclass(frozen=True)
class Term:
    """One loss term a recipe can list (``terms: [dpo, copo, anchor]``): its pure function and how to feed it.

    Attributes:
        name: Identifier in recipe files.
        function: The :mod:`medbench.train.losses` function that computes it (the tested code that trains).
        rows: The scored sequences it reads, as ``(answer field, image field)`` pairs.
        adapter: Feeds ``function`` the rows, hyperparameters and batch fields it reads (see :data:`Adapter`).
        reference_free: True when it reads no reference log-probs.
        needs: Extra batch fields it reads (``weight``, ``is_visual``).
        label_smoothing: Reads ε (``trl.DPOConfig.label_smoothing``) as an assumed label-flip rate; ε = 0 would
            reduce it to plain DPO, so a run with this term needs ε > 0.
    """

    name: str
    function: str
    rows: tuple[Row, ...]
    adapter: Adapter
    reference_free: bool = False
    needs: tuple[str, ...] = ()
    label_smoothing: bool = False

    def pure_function(self) -> Callable[..., Any]:
        """The :mod:`medbench.train.losses` function (imports torch on first use)."""
        from . import losses

        return getattr(losses, self.function)

    def __call__(self, rows: Any, recipe: Any, args: Any, batch: Mapping[str, Any]) -> Any:
        """Per-sample losses of this term for one batch (``rows``: the trainer's ``ScoredRows``)."""
        return self.adapter(self.pure_function(), rows, recipe, args, batch)


_W, _L, _WC, _LC = ("chosen", "image"), ("rejected", "image"), ("chosen", "rejected_image"), ("rejected", "rejected_image")


def _on(batch: Mapping[str, Any], key: str, like: Any) -> Any:
    return batch[key].to(like.device)


TERMS: dict[str, Term] = {
    t.name: t
    for t in (
        Term("dpo", "dpo_loss", (_W, _L), lambda f, x, c, t, b: f(x.p(_W), x.p(_L), x.r(_W), x.r(_L), t.beta)),
        Term(
            "dpo_nll", "dpo_nll_loss", (_W, _L),
            lambda f, x, c, t, b: f(x.p(_W), x.p(_L), x.r(_W), x.r(_L), x.n(_W), beta=t.beta, alpha=c.nll_weight),
        ),
        Term(
            "ipo", "ipo_loss", (_W, _L),
            lambda f, x, c, t, b: f(x.p(_W), x.p(_L), x.r(_W), x.r(_L), x.n(_W), x.n(_L), beta=t.beta),
        ),
        Term(
            "robust_dpo", "robust_dpo_loss", (_W, _L),
            lambda f, x, c, t, b: f(x.p(_W), x.p(_L), x.r(_W), x.r(_L), beta=t.beta, label_smoothing=t.label_smoothing),
            label_smoothing=True,
        ),
        Term(
            "cdpo", "conservative_dpo_loss", (_W, _L),
            lambda f, x, c, t, b: f(x.p(_W), x.p(_L), x.r(_W), x.r(_L), beta=t.beta, label_smoothing=t.label_smoothing),
            label_smoothing=True,
        ),
        Term(
            "simpo", "simpo_loss", (_W, _L),
            lambda f, x, c, t, b: f(x.p(_W), x.p(_L), x.n(_W), x.n(_L), beta=t.beta, gamma=c.simpo_gamma),
            reference_free=True,
        ),
        Term(
            "orpo", "orpo_loss", (_W, _L), lambda f, x, c, t, b: f(x.p(_W), x.p(_L), x.n(_W), x.n(_L), lam=t.beta),
            reference_free=True,
        ),
        Term("copo", "copo_loss", (_W, _WC), lambda f, x, c, t, b: f(x.p(_W), x.p(_WC), x.r(_W), x.r(_WC), t.beta)),
        Term("anchor", "anchor_loss", (_W,), lambda f, x, c, t, b: f(x.p(_W), x.r(_W), t.beta, delta=c.anchor_delta)),
        Term(
            "mmedpo", "mmedpo_loss", (_W, _LC),
            lambda f, x, c, t, b: f(x.p(_W), x.p(_LC), x.r(_W), x.r(_LC), _on(b, "weight", x.p(_W)), t.beta),
            needs=("weight",),
        ),
        # The collator put each record's losing sequence in block 1: (y_l, m) for text-side records and (y_w, m')
        # for visual ones, so it serves as both the rejected and the corrupted input.
        Term(
            "error_targeted", "error_targeted_loss", (_W, _L),
            lambda f, x, c, t, b: f(
                x.p(_W), x.p(_L), x.p(_L), x.r(_W), x.r(_L), x.r(_L), _on(b, "is_visual", x.p(_W)), t.beta
            ),
            needs=("is_visual",),
        ),
        Term("sft", "sft_loss", (_W,), lambda f, x, c, t, b: f(x.p(_W), x.n(_W)), reference_free=True),
    )
}


@dataclass(frozen=True)
class Objective:
    """Static description of one objective.

    Attributes:
        name: Identifier used in recipe files (``objective: <name>``).
        equation: One-line statement of the loss, for ``--list`` and the README table.
        requires: Record fields every record must carry.
        rows: The scored sequences, as ``(answer field, image field)`` pairs, in block order.
        reference_free: True when no reference model is needed.
        per_record_rows: True when the second row depends on the record (error-targeted objective).
        needs_note: Extra, record-dependent requirements in words (for ``--list`` and the README).
        terms: The loss terms it sums with weight 1 (a recipe may list others over the same rows, with weights).
    """

    name: str
    equation: str
    requires: tuple[str, ...]
    rows: tuple[Row, ...]
    reference_free: bool = False
    per_record_rows: bool = False
    needs_note: str = ""
    terms: tuple[str, ...] = ()

    def default_terms(self) -> tuple[str, ...]:
        """The terms summed when a recipe lists none (the objective's own name for single-term objectives)."""
        return self.terms or ((self.name,) if self.name in TERMS else ())

    @property
    def n_rows(self) -> int:
        """Number of sequences scored per record."""
        return len(self.rows)

    def rows_for(self, record: Mapping[str, object], visual_error_types: frozenset[str]) -> tuple[Row, ...]:
        """The rows to score for one record.

        Args:
            record: A preference record (mapping with the fields of :data:`RECORD_FIELDS`).
            visual_error_types: Error types that count as visual misinterpretation.

        Returns:
            One ``(answer field, image field)`` pair per row block.
        """
        if not self.per_record_rows:
            return self.rows
        if is_visual_error(record, visual_error_types):
            return (("chosen", "image"), ("chosen", "rejected_image"))
        return (("chosen", "image"), ("rejected", "image"))

    def fields_for(self, record: Mapping[str, object], visual_error_types: frozenset[str]) -> tuple[str, ...]:
        """Fields this record must carry under this objective (``requires`` plus what its rows read)."""
        needed = list(self.requires)
        for answer, image in self.rows_for(record, visual_error_types):
            for name in (answer, image):
                if name not in needed:
                    needed.append(name)
        return tuple(needed)


def is_visual_error(record: Mapping[str, object], visual_error_types: frozenset[str]) -> bool:
    """Whether a record's error type (a :mod:`medbench.taxonomy` key), or its category, is in ``visual_error_types``."""
    from medbench.taxonomy import load_taxonomy

    value = record.get("error_type")
    return load_taxonomy().is_visual(value if isinstance(value, str) else None, visual_error_types)


_PAIR: tuple[Row, ...] = (("chosen", "image"), ("rejected", "image"))
_BASE = ("image", "question", "chosen")

OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("dpo", "−log σ(β[r(y_w|m) − r(y_l|m)])", (*_BASE, "rejected"), _PAIR),
        Objective("dpo_nll", "DPO + α·(−log π(y_w|m)/|y_w|)", (*_BASE, "rejected"), _PAIR),
        Objective("ipo", "(r(y_w|m)/|y_w| − r(y_l|m)/|y_l| − 1/(2β))²", (*_BASE, "rejected"), _PAIR),
        Objective("robust_dpo", "[(1−ε)ℓ(βh) − εℓ(−βh)]/(1−2ε), h = r(y_w|m) − r(y_l|m)", (*_BASE, "rejected"), _PAIR),
        Objective("cdpo", "(1−ε)ℓ(βh) + εℓ(−βh), h = r(y_w|m) − r(y_l|m)", (*_BASE, "rejected"), _PAIR),
        Objective(
            "simpo",
            "−log σ(β·log π(y_w|m)/|y_w| − β·log π(y_l|m)/|y_l| − γ)",
            (*_BASE, "rejected"),
            _PAIR,
            reference_free=True,
        ),
        Objective(
            "orpo",
            "−log π(y_w|m)/|y_w| − λ·log σ(log odds(y_w|m) − log odds(y_l|m))",
            (*_BASE, "rejected"),
            _PAIR,
            reference_free=True,
        ),
        Objective(
            "copo",
            "−log σ(β[r(y_w|m) − r(y_w|m′)])",
            (*_BASE, "rejected_image"),
            (("chosen", "image"), ("chosen", "rejected_image")),
        ),
        Objective(
            "mdpo",
            "DPO + CoPO − log σ(β·r(y_w|m))",
            (*_BASE, "rejected", "rejected_image"),
            (("chosen", "image"), ("rejected", "image"), ("chosen", "rejected_image")),
            terms=("dpo", "copo", "anchor"),
        ),
        Objective(
            "mmedpo",
            "w·(−log σ(β[r(y_w|m) − r(y_l|m′)]))",
            (*_BASE, "rejected", "rejected_image", "weight"),
            (("chosen", "image"), ("rejected", "rejected_image")),
        ),
        Objective(
            "error_targeted",
            "CoPO for visual-misinterpretation records, DPO for the others",
            (*_BASE, "error_type"),
            # The second row is chosen per record by `rows_for`; this placeholder only fixes the row count.
            (("chosen", "image"), ("rejected", "image")),
            per_record_rows=True,
            needs_note="+ rejected (text-side records) or rejected_image (visual records)",
        ),
        Objective(
            "sft",
            "−log π(y_w|m)/|y_w| (supervised fine-tuning on the chosen answer; the study's comparator)",
            _BASE,
            (("chosen", "image"),),
            reference_free=True,
        ),
        Objective(
            "trl",
            "any TRL 1.16 DPOTrainer loss_type, computed by TRL itself",
            (*_BASE, "rejected"),
            _PAIR,
        ),
        # Online RL: no scored rows, no pairs; TRL's GRPOTrainer samples answers and medbench's rewards score them.
        Objective(
            ONLINE_OBJECTIVE,
            "GRPO (TRL 1.16 GRPOTrainer, loss_type dapo/grpo/dr_grpo): group-relative advantage of sampled answers "
            "scored by medbench rewards",
            _BASE,
            (),
            reference_free=True,
            needs_note="(chosen is the reference answer: any supervised file `prefs build` reads, `answer` or `chosen`, "
            "optional answer_type; no rejected answers)",
        ),
    )
}


def check_terms(objective: Objective, terms: list[str], weights: list[float] | None) -> str | None:
    """Why ``terms`` (with ``weights``) cannot train under ``objective``, or None when they can.

    A term may only read rows the objective's collation builds, and a reference-free objective (no reference
    model) cannot carry a reference-based term.
    """
    if objective.name == "trl":
        return "objective `trl` computes TRL's own loss; set trl_loss_type / trl_loss_weights instead"
    unknown = [t for t in terms if t not in TERMS]
    if unknown:
        return f"has unknown terms {unknown}; choose from {', '.join(TERMS)}"
    if not terms:
        return "must list at least one term"
    if weights is not None and len(weights) != len(terms):
        return f"lists {len(terms)} terms but {len(weights)} term_weights"
    for name in terms:
        term = TERMS[name]
        # error_targeted's second row differs per record; only terms that read row 0 alone can join it.
        if objective.per_record_rows and name not in ("error_targeted", "anchor", "sft"):
            return f"term {name} cannot be combined with objective {objective.name}'s per-record rows"
        if name == "error_targeted" and not objective.per_record_rows:
            return f"term error_targeted needs objective error_targeted (per-record rows), not {objective.name}"
        missing = [row for row in term.rows if row not in objective.rows]
        if missing:
            return f"term {name} reads rows {missing} that objective {objective.name} does not build"
        if objective.reference_free and not term.reference_free:
            return f"term {name} needs a reference model, which objective {objective.name} does not build"
    return None


def get_objective(name: str) -> Objective:
    """Look an objective up by name.

    Raises:
        KeyError: for an unknown name (config validation reports it to the user first).
    """
    return OBJECTIVES[name]
