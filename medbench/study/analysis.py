"""What a study's training did, measured on held-out items: estimates, paired comparisons and the three claims.

Inputs are the completed cells of a study: the per-sample logs of every evaluation cell (the task's headline
metric per item: ``overall`` for VQA, ROUGE-L for reports) and, when the study has a ``probe:``, the held-out
preference scores of every model (:mod:`medbench.train.probe`: ``correct``, ``margin``, ``image_dependence``
per pair).

Seeds are folded per item: a variant's value on an item is the mean over its seeds, so every comparison is
*paired over the same held-out items* and its 95% interval is the percentile bootstrap over items of the mean
difference (:mod:`medbench.stats`, the board's own resampling; 1,000 draws, seeded by the
comparison's name). A claim holds when the interval of every difference it names lies above 0.

The claims (checked per backbone):

1. **SFT learns the task**: held-out accuracy of ``sft`` exceeds the untrained ``base`` model and every reference
   model (e.g. ``medbench_baseline``).
2. **Preference training raises the held-out preference accuracy and margin** log π(y_w) − log π(y_l) over
   ``sft``, for every variant whose objective compares y_w with y_l under the real image (DPO, DPO+NLL, IPO,
   robust DPO, SimPO, ORPO, mDPO ...).
3. **CoPO-family terms raise image dependence** log π(y_w|m) − log π(y_w|m′) over plain ``dpo``, for every variant
   whose objective scores y_w under the corrupted image (CoPO, mDPO, the error-targeted objective).

Whatever a claim's outcome, every estimate and difference is reported, including what the variants do to task
accuracy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from medbench.errors import MedbenchError
from medbench.study.spec import BASE, REFERENCE, SFT, Study

ANALYSIS_JSON = "study.json"
ANALYSIS_MD = "study.md"
PROBE_QUANTITIES = {"correct": "preference accuracy", "margin": "preference margin",
                    "image_dependence": "image dependence"}


@dataclass
class ModelItems:
    """Per-item values of one model (all seeds of one variant of one backbone)."""

    backbone: str
    variant: str
    seeds: list[int | None]
    accuracy: dict[str, list[float]]  # "task:item" -> one value per seed
    probe: dict[str, dict[str, list[float]]]  # quantity -> item -> one value per seed


@lru_cache(maxsize=1)
def _recipe_objectives() -> dict[str, str]:
    """Shipped recipe name -> the objective it trains (as ``medbench train --list`` reads it)."""
    from medbench.train.config import recipe_index

    return {entry["name"]: entry["objective"] for entry in recipe_index()}


def _objective_rows(recipe: str) -> set[tuple[str, str]]:
    """The rows a recipe's objective scores (per-record objectives: every row they may score)."""
    from medbench.train.objectives import OBJECTIVES

    spec = OBJECTIVES.get(_recipe_objectives().get(recipe, recipe))
    if spec is None:
        return set()
    rows = set(spec.rows)
    if spec.per_record_rows:
        rows |= {("chosen", "rejected_image")}
        rows -= {("rejected", "image")}  # its text-side rows depend on the data; it is not counted as text-side
    return rows


def _accuracy_items(folder: Path) -> dict[str, float]:
    """``task:item id`` -> the task's headline per-sample metric, from an evaluation cell's logs."""
    from medbench.metrics.registry import METRICS
    from medbench.results import find_runs, parse_sample_record

    values: dict[str, float] = {}
    for run in find_runs(folder):
        for task, samples in run.samples.items():
            for line in samples.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                record = parse_sample_record(json.loads(line), strict=False)
                metric = next((name for name in record.raw if name in METRICS and METRICS[name].primary), None)
                value = record.raw.get(metric) if metric else None
                if isinstance(value, (int, float)):
                    values[f"{task}:{record.item_id}"] = float(value)
    return values


def collect(study: Study) -> dict[tuple[str, str], ModelItems]:
    """Per (backbone, variant), the per-item values of its completed evaluation and probe cells."""
    from medbench.study.runner import cell_state
    from medbench.train.probe import read_scores

    models: dict[tuple[str, str], ModelItems] = {}
    for cell in study.cells:
        if cell.kind not in ("eval", "probe") or cell_state(study, cell) != "done":
            continue
        key = (cell.meta["backbone"], cell.meta["variant"])
        model = models.setdefault(key, ModelItems(key[0], key[1], [], {}, {}))
        if cell.meta["seed"] not in model.seeds:
            model.seeds.append(cell.meta["seed"])
        if cell.kind == "eval":
            for item, value in _accuracy_items(study.folder(cell)).items():
                model.accuracy.setdefault(item, []).append(value)
        else:
            for item, entry in read_scores(study.folder(cell)).items():
                for quantity in PROBE_QUANTITIES:
                    if quantity in entry:
                        model.probe.setdefault(quantity, {}).setdefault(item, []).append(float(entry[quantity]))
    return models


def _vector(values: dict[str, list[float]], items: list[str]) -> np.ndarray:
    return np.array([np.mean(values[item]) for item in items], dtype=np.float64)


def _estimate(name: str, values: dict[str, list[float]]) -> dict[str, Any]:
    from medbench import stats

    items = sorted(values)
    vector = _vector(values, items)[:, None]
    low, high = stats.bootstrap_ci(stats.resampler(name, len(items)), vector, np.ones_like(vector))
    return {"mean": float(vector.mean()), "low": float(low[0]), "high": float(high[0]), "n": len(items)}


def _difference(name: str, mine: dict[str, list[float]], theirs: dict[str, list[float]]) -> dict[str, Any] | None:
    from medbench import stats

    items = sorted(set(mine) & set(theirs))
    if not items:
        return None
    a, b = _vector(mine, items)[:, None], _vector(theirs, items)[:, None]
    ones = np.ones_like(a)
    result = stats.paired_test(stats.resampler(name, len(items)), (a, ones), (b, ones))
    return {"difference": float(result.difference[0]), "low": float(result.low[0]), "high": float(result.high[0]),
            "p": float(result.p_value[0]), "n": len(items)}


def analyse(study: Study) -> dict[str, Any]:
    """Estimates per model, the paired differences the claims need, and the claims; see the module docstring."""
    models = collect(study)
    if not models:
        raise MedbenchError(f"study {study.name}: no evaluation or probe cell is complete yet")
    estimates = []
    for (backbone, variant), model in models.items():
        row: dict[str, Any] = {"backbone": backbone, "variant": variant, "seeds": model.seeds}
        if model.accuracy:
            row["accuracy"] = _estimate(f"{backbone}/{variant}/accuracy", model.accuracy)
        for quantity, values in model.probe.items():
            row[quantity] = _estimate(f"{backbone}/{variant}/{quantity}", values)
        estimates.append(row)

    comparisons: list[dict[str, Any]] = []
    done: dict[tuple, dict[str, Any] | None] = {}

    def compare(backbone: str, variant: str, against: tuple[str, str], quantity: str) -> dict[str, Any] | None:
        key = (backbone, variant, against, quantity)
        if key not in done:
            done[key] = _compare(backbone, variant, against, quantity)
        return done[key]

    def _compare(backbone: str, variant: str, against: tuple[str, str], quantity: str) -> dict[str, Any] | None:
        mine, theirs = models.get((backbone, variant)), models.get(against)
        if mine is None or theirs is None:
            return None
        if quantity == "accuracy":
            a, b = mine.accuracy, theirs.accuracy
        else:
            a, b = mine.probe.get(quantity, {}), theirs.probe.get(quantity, {})
        result = _difference(f"{backbone}/{variant}-{against[1]}/{quantity}", a, b)
        if result is None:
            return None
        entry = {"backbone": backbone, "variant": variant, "against": against[1], "quantity": quantity, **result}
        comparisons.append(entry)
        return entry

    claims = []
    backbones = sorted({backbone for backbone, _ in models if backbone != REFERENCE})
    references = sorted(variant for backbone, variant in models if backbone == REFERENCE)
    for backbone in backbones:
        variants = [variant for b, variant in models if b == backbone and variant not in (BASE, SFT)]
        for variant in [SFT, *variants]:
            for against in ([(backbone, BASE)] + [(REFERENCE, r) for r in references] if variant == SFT
                            else [(backbone, SFT), (backbone, BASE)]):
                compare(backbone, variant, against, "accuracy")
        first = [compare(backbone, SFT, (backbone, BASE), "accuracy"),
                 *(compare(backbone, SFT, (REFERENCE, r), "accuracy") for r in references)]
        claims.append(_claim(backbone, "sft_learns_the_task",
                             "SFT beats the untrained model and every reference model on held-out accuracy", first))

        text_side = [v for v in variants if ("rejected", "image") in _objective_rows(v)]
        second = [compare(backbone, v, (backbone, SFT), q) for v in text_side for q in ("correct", "margin")]
        claims.append(_claim(backbone, "preference_training_raises_margin",
                             "preference training raises held-out preference accuracy and margin over SFT "
                             f"({', '.join(text_side) or 'no text-side variant'})", second))
        for v in variants:
            if v not in text_side:
                for q in ("correct", "margin"):
                    compare(backbone, v, (backbone, SFT), q)

        image_side = [v for v in variants if ("chosen", "rejected_image") in _objective_rows(v) and v != "dpo"]
        third = [compare(backbone, v, (backbone, "dpo"), "image_dependence") for v in image_side]
        claims.append(_claim(backbone, "copo_family_raises_image_dependence",
                             "CoPO-family terms raise image dependence over DPO "
                             f"({', '.join(image_side) or 'no CoPO-family variant'})", third))
        for v in [SFT, *variants]:
            if v not in image_side and v != "dpo":
                compare(backbone, v, (backbone, "dpo"), "image_dependence")
    return {"study": study.name, "estimates": estimates, "comparisons": comparisons, "claims": claims}


def _claim(backbone: str, key: str, statement: str, parts: list[dict[str, Any] | None]) -> dict[str, Any]:
    evidence = [part for part in parts if part is not None]
    complete = bool(parts) and len(evidence) == len(parts)
    holds = complete and all(part["low"] > 0 for part in evidence)
    return {"backbone": backbone, "claim": key, "statement": statement,
            "holds": holds if complete else None, "evidence": evidence}


def _interval(entry: dict[str, Any] | None, key: str = "mean") -> str:
    if not entry:
        return "—"
    return f"{entry[key]:+.3f} [{entry['low']:+.3f}, {entry['high']:+.3f}]" if key == "difference" else \
        f"{entry[key]:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


def render_markdown(analysis: dict[str, Any]) -> str:
    lines = [f"# Study {analysis['study']}: what training did on held-out items", "",
             "Means with 95% bootstrap intervals over held-out items (per item: the mean over seeds).", "",
             "| backbone | variant | seeds | accuracy | preference accuracy | margin | image dependence |",
             "|---|---|---|---|---|---|---|"]
    for row in analysis["estimates"]:
        seeds = ", ".join(str(s) for s in row["seeds"] if s is not None) or "—"
        lines.append(f"| {row['backbone']} | {row['variant']} | {seeds} | {_interval(row.get('accuracy'))} | "
                     f"{_interval(row.get('correct'))} | {_interval(row.get('margin'))} | "
                     f"{_interval(row.get('image_dependence'))} |")
    lines += ["", "## Claims", ""]
    for claim in analysis["claims"]:
        verdict = {True: "holds", False: "does not hold", None: "not measured"}[claim["holds"]]
        lines.append(f"- **{claim['backbone']}: {claim['statement']}**: {verdict}")
        for part in claim["evidence"]:
            label = "accuracy" if part["quantity"] == "accuracy" else PROBE_QUANTITIES[part["quantity"]]
            lines.append(f"  - {part['variant']} − {part['against']}, {label}: {_interval(part, 'difference')} "
                         f"(p = {part['p']:.3f}, {part['n']} items)")
    lines += ["", "## Every paired difference", "", "| backbone | variant | against | quantity | difference [95% CI] | p |",
              "|---|---|---|---|---|---|"]
    for part in analysis["comparisons"]:
        lines.append(f"| {part['backbone']} | {part['variant']} | {part['against']} | {part['quantity']} | "
                     f"{_interval(part, 'difference')} | {part['p']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(analysis: dict[str, Any], path: Path) -> Path | None:
    """One panel per quantity: each model's estimate with its interval."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    quantities = [("accuracy", "held-out accuracy"), *PROBE_QUANTITIES.items()]
    quantities = [(q, label) for q, label in quantities if any(q in row for row in analysis["estimates"])]
    if not quantities:
        return None
    figure, axes = plt.subplots(1, len(quantities), figsize=(3.6 * len(quantities), 3.8), squeeze=False)
    for axis, (quantity, label) in zip(axes[0], quantities):
        rows = [row for row in analysis["estimates"] if quantity in row]
        names = [row["variant"] if row["backbone"] in (REFERENCE,) or len({r["backbone"] for r in rows}) == 1
                 else f"{row['backbone']} {row['variant']}" for row in rows]
        means = [row[quantity]["mean"] for row in rows]
        errors = [[m - row[quantity]["low"] for m, row in zip(means, rows)],
                  [row[quantity]["high"] - m for m, row in zip(means, rows)]]
        colours = ["#999999" if row["variant"] in (BASE,) or row["backbone"] == REFERENCE else
                   "#4c72b0" if row["variant"] == SFT else "#dd8452" for row in rows]
        axis.barh(range(len(rows)), means, xerr=errors, color=colours, capsize=3)
        axis.set_yticks(range(len(rows)), names, fontsize=8)
        axis.invert_yaxis()
        axis.axvline(0, color="black", linewidth=0.6)
        axis.set_title(label, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_analysis(study: Study, folder: Path) -> dict[str, Any]:
    """``study.json``, ``study.md`` and ``study.png`` in ``folder``; returns the analysis."""
    analysis = analyse(study)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ANALYSIS_JSON).write_text(json.dumps(analysis, indent=2) + "\n", encoding="utf-8")
    (folder / ANALYSIS_MD).write_text(render_markdown(analysis), encoding="utf-8")
    plot(analysis, folder / "study.png")
    return analysis
