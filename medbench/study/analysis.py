"""What a study's training did, measured on held-out items: per-kind estimates, paired comparisons and the claims.

Inputs are the completed cells of a study:

* every evaluation cell's per-sample logs: the task's headline metric per item (``overall`` for VQA, ROUGE-L for
  reports), on each task and on its image-blind twin (``medbench_vqa_rad_blind``: the same questions with a uniform
  image), so each model has an **accuracy** and a **blind accuracy** per item, and **image reliance** = accuracy −
  blind accuracy;
* when the study has a ``probe:``, every model's held-out preference scores (``medbench prefs score``): preference
  **correct** and **margin** log π(y_w|m) − log π(y_l|m), **image dependence** log π(y_w|m) − log π(y_w|m′) (m′: the
  lesion region corrupted), **control dependence** log π(y_w|m) − log π(y_w|m″) (m″: the same corruption on a
  lesion-free region of the same size) and **lesion evidence** = image dependence − control dependence;
* each training cell's ``medbench_train.json``: the objective and the ``(answer, image)`` rows it scores.

**Kinds.** When the task's documents carry a ``kind`` (the synthetic lesion set: presence, side, count, modality),
every table is given per kind as well as over all items; probe quantities also over the items that hold a lesion.

**Intervals.** A model trained with several seeds has one value per seed and item. With at least
:data:`MIN_SEEDS` seeds the 95% interval resamples seeds, then items (:func:`medbench.stats.hierarchical_ci`), so
it includes the training noise. With fewer, the seeds are averaged per item and only items are resampled: the
interval is then *conditional on the trained models* and says nothing about another seed (the report says so).
Comparisons are paired over the same items; a variant is compared with the SFT model of its own seed (the model it
was trained from), seed by seed.

The claims (per backbone; a claim holds when the interval of every difference it names lies above 0):

1. **SFT learns the task**: on every lesion question kind (presence, side, count), SFT's accuracy exceeds every
   reference model's (the prior-only answerer, which gives each question the majority training answer, and the
   always-yes baseline) and its own blind accuracy.
2. **Preference training raises the held-out preference accuracy and margin** over SFT, for every variant whose
   objective compares y_w with y_l under the real image.
3. **CoPO-family terms raise lesion evidence** over plain ``dpo`` on the items that hold a lesion, for every variant
   whose objective scores y_w under the corrupted image (image dependence when the probe has no control image).

Whatever a claim's outcome, every estimate and difference is reported.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medbench.errors import MedbenchError
from medbench.study.spec import BASE, REFERENCE, SFT, Study

ANALYSIS_JSON = "study.json"
ANALYSIS_MD = "study.md"
ANALYSIS_PNG = "study.png"
# Written by `medbench train` (medbench.train.outputs.METADATA_FILE) and `medbench prefs score` (medbench.train.probe).
TRAINING_METADATA = "medbench_train.json"
PROBE_SCORES = "scores.jsonl"
MIN_SEEDS = 3
LESION_KINDS = ("presence", "side", "count")
ALL, LESION = "all", "with a lesion"
QUANTITIES = {
    "accuracy": "held-out accuracy",
    "blind_accuracy": "blind accuracy (uniform image)",
    "image_reliance": "image reliance (accuracy − blind)",
    "correct": "preference accuracy",
    "margin": "preference margin",
    "image_dependence": "image dependence (m vs m′)",
    "control_dependence": "control dependence (m vs m″)",
    "lesion_evidence": "lesion evidence (m″ vs m′)",
}
PROBE_QUANTITIES = ("correct", "margin", "image_dependence", "control_dependence", "lesion_evidence")


@dataclass
class ModelValues:
    """Per-item values of one model (all seeds of one variant of one backbone)."""

    backbone: str
    variant: str
    seeds: list[int | None] = field(default_factory=list)
    values: dict[str, dict[int | None, dict[str, float]]] = field(default_factory=dict)  # quantity -> seed -> item

    def add(self, quantity: str, seed: int | None, item: str, value: float) -> None:
        self.values.setdefault(quantity, {}).setdefault(seed, {})[item] = value


def _task_of_twin(task: str) -> tuple[str, bool]:
    """``(the sighted task, whether task is its blind twin)``."""
    from medbench.data.sources import SOURCES

    source = SOURCES.get(task)
    return (source.blind_of, True) if source is not None and source.blind_of else (task, False)


def _accuracy_items(folder: Path) -> Iterable[tuple[str, bool, str, float]]:
    """``(task, blind, item id, value)`` of an evaluation cell's logs: each task's headline per-sample metric."""
    from medbench.data.loading import iter_json_records
    from medbench.metrics.registry import METRICS
    from medbench.results import find_runs, parse_sample_record

    for run in find_runs(folder):
        for task, samples in run.samples.items():
            sighted, blind = _task_of_twin(task)
            for _number, raw in iter_json_records(samples):
                record = parse_sample_record(raw, strict=False)
                metric = next((name for name in record.raw if name in METRICS and METRICS[name].primary), None)
                value = record.raw.get(metric) if metric else None
                if isinstance(value, (int, float)):
                    yield sighted, blind, str(record.item_id), float(value)


def _probe_items(folder: Path) -> Iterable[dict[str, Any]]:
    from medbench.data.loading import iter_json_records

    path = folder / PROBE_SCORES
    if not path.is_file():
        raise MedbenchError(f"{path}: no held-out scores; rerun the probe cell (medbench prefs score)")
    for _number, record in iter_json_records(path, fix="rerun the probe cell (medbench prefs score)"):
        yield record


def collect(study: Study, complete: set[str]) -> dict[tuple[str, str], ModelValues]:
    """Per (backbone, variant), the per-seed, per-item values of its completed evaluation and probe cells."""
    models: dict[tuple[str, str], ModelValues] = {}
    for cell in study.cells:
        if cell.kind not in ("eval", "probe") or cell.id not in complete:
            continue
        key = (cell.meta["backbone"], cell.meta["variant"])
        model = models.setdefault(key, ModelValues(*key))
        seed = cell.meta["seed"]
        if seed not in model.seeds:
            model.seeds.append(seed)
        if cell.kind == "eval":
            for task, blind, item, value in _accuracy_items(study.folder(cell)):
                model.add("blind_accuracy" if blind else "accuracy", seed, f"{task}:{item}", value)
        else:
            for entry in _probe_items(study.folder(cell)):
                for quantity in PROBE_QUANTITIES:
                    if isinstance(entry.get(quantity), (int, float)):
                        model.add(quantity, seed, str(entry["id"]), float(entry[quantity]))
    for model in models.values():
        sighted, blind = model.values.get("accuracy", {}), model.values.get("blind_accuracy", {})
        for seed in sighted:
            for item in sighted[seed].keys() & blind.get(seed, {}).keys():
                model.add("image_reliance", seed, item, sighted[seed][item] - blind[seed][item])
    return models


def item_facts(study: Study, complete: set[str]) -> dict[str, dict[str, Any]]:
    """Item id -> ``{"kind", "lesions"}`` from the evaluated documents, where they carry them (local JSONL data)."""
    import os

    from medbench.data.loading import iter_json_records, resolve_source

    facts: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for cell in study.cells:
        if cell.kind != "eval" or cell.id not in complete:
            continue
        tasks = cell.argv[cell.argv.index("--tasks") + 1].split(",") if "--tasks" in cell.argv else []
        for task in tasks:
            try:
                resolved = resolve_source(task, {**os.environ, **cell.env})
            except (KeyError, MedbenchError):
                continue
            if resolved.origin != "local" or resolved.location in seen:
                continue
            seen.add(resolved.location)
            for _, record in iter_json_records(Path(resolved.location)):
                if isinstance(record, dict) and record.get("kind") is not None:
                    facts[str(record.get("id"))] = {"kind": str(record["kind"]), "lesions": record.get("lesions")}
    return facts


def _groups(facts: dict[str, dict[str, Any]], probe: bool) -> list[str]:
    order = {kind: index for index, kind in enumerate(LESION_KINDS)}
    kinds = sorted({fact["kind"] for fact in facts.values()}, key=lambda k: (order.get(k, len(order)), k))
    extra = [LESION] if probe and any((fact.get("lesions") or 0) > 0 for fact in facts.values()) else []
    return [ALL, *kinds, *extra]


def _in_group(item: str, group: str, facts: dict[str, dict[str, Any]]) -> bool:
    if group == ALL:
        return True
    fact = facts.get(item.rpartition(":")[2])
    if fact is None:
        return False
    return (fact.get("lesions") or 0) > 0 if group == LESION else fact["kind"] == group


def _matrix(model: ModelValues, quantity: str, items: list[str]) -> np.ndarray:
    by_seed = model.values[quantity]
    return np.array([[by_seed[seed][item] for item in items] for seed in model.seeds], dtype=np.float64)


def _common_items(models: list[tuple[ModelValues, str]], group: str, facts: dict[str, dict[str, Any]]) -> list[str]:
    """Items every seed of every (model, quantity) scored, in the group."""
    sets = []
    for model, quantity in models:
        by_seed = model.values.get(quantity)
        if not by_seed or set(by_seed) != set(model.seeds):
            return []
        sets += [set(values) for values in by_seed.values()]
    return sorted(item for item in set.intersection(*sets) if _in_group(item, group, facts)) if sets else []


def _draw_seed(name: str) -> int:
    return zlib.crc32(name.encode())


def _seeds_resampled(*models: ModelValues) -> bool:
    return all(len(model.seeds) >= MIN_SEEDS or model.seeds == [None] for model in models) and any(
        len(model.seeds) >= MIN_SEEDS for model in models)


def _estimate(name: str, model: ModelValues, quantity: str, group: str,
              facts: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    from medbench import stats

    items = _common_items([(model, quantity)], group, facts)
    if not items:
        return None
    matrix = _matrix(model, quantity, items)
    if _seeds_resampled(model):
        result = stats.hierarchical_ci(matrix, seed=_draw_seed(name))
    else:
        result = stats.mean_ci(matrix.mean(axis=0), seed=_draw_seed(name))
    return {"mean": result.mean, "low": result.low, "high": result.high, "n": result.n}


def _difference(name: str, mine: ModelValues, my_quantity: str, theirs: ModelValues, their_quantity: str,
                group: str, facts: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Paired mean difference on shared items; seed by seed when both models have the same seeds."""
    from medbench import stats

    items = _common_items([(mine, my_quantity), (theirs, their_quantity)], group, facts)
    if not items:
        return None
    a, b = _matrix(mine, my_quantity, items), _matrix(theirs, their_quantity, items)
    seed = _draw_seed(name)
    if _seeds_resampled(mine, theirs):
        if mine.seeds == theirs.seeds or theirs.seeds == [None]:  # seed-paired (or against a seedless model)
            result = stats.hierarchical_ci(a - b, seed=seed)
            return {"difference": result.mean, "low": result.low, "high": result.high, "p": None, "n": result.n}
        paired = stats.hierarchical_paired(a, b, seed=seed)
    else:
        paired = stats.paired_difference(a.mean(axis=0), b.mean(axis=0), seed=seed)
    return {"difference": paired.difference, "low": paired.low, "high": paired.high, "p": paired.p_value,
            "n": paired.n}


def _objective_rows(study: Study, backbone: str, variant: str) -> set[tuple[str, str]]:
    """The rows a variant's objective scores, from its training metadata (per-record objectives: every row they may
    score, with their text-side row left out: it depends on the data, so such a variant is not counted text-side)."""
    for cell in study.cells:
        if cell.kind == "train" and cell.meta["backbone"] == backbone and cell.meta["variant"] == variant:
            path = study.folder(cell) / TRAINING_METADATA
            if not path.is_file():
                continue
            scored = json.loads(path.read_text(encoding="utf-8")).get("objective_rows") or {}
            rows = {tuple(row) for row in scored.get("rows", [])}
            if scored.get("per_record_rows"):
                rows = (rows | {("chosen", "rejected_image")}) - {("rejected", "image")}
            return rows  # type: ignore[return-value]
    return set()


def analyse(study: Study, complete: Iterable[str]) -> dict[str, Any]:
    """Estimates per model, kind and quantity, the paired differences the claims need, and the claims.

    Args:
        study: The study.
        complete: Ids of the cells that are complete (the runner's verdict); others are left out.

    Raises:
        MedbenchError: No evaluation or probe cell is complete yet.
    """
    complete = set(complete)
    models = collect(study, complete)
    if not models:
        raise MedbenchError(f"study {study.name}: no evaluation or probe cell is complete yet")
    facts = item_facts(study, complete)
    groups = _groups(facts, any(model.values.get("correct") for model in models.values()))
    seed_counts = sorted({len(model.seeds) for model in models.values() if model.seeds != [None]})
    resampled = bool(seed_counts) and min(seed_counts) >= MIN_SEEDS

    estimates = []
    for (backbone, variant), model in models.items():
        row: dict[str, Any] = {"backbone": backbone, "variant": variant,
                               "seeds": [seed for seed in model.seeds if seed is not None]}
        for quantity in QUANTITIES:
            if quantity in model.values:
                row[quantity] = {group: estimate for group in groups
                                 if (estimate := _estimate(f"{backbone}/{variant}/{quantity}/{group}", model,
                                                           quantity, group, facts))}
        estimates.append(row)

    comparisons: list[dict[str, Any]] = []
    made: dict[tuple, dict[str, Any] | None] = {}

    def compare(backbone: str, variant: str, against: tuple[str, str], quantity: str, group: str,
                their_quantity: str | None = None) -> dict[str, Any] | None:
        their_quantity = their_quantity or quantity
        key = (backbone, variant, against, quantity, their_quantity, group)
        if key not in made:
            made[key] = None
            mine, theirs = models.get((backbone, variant)), models.get(against)
            if mine is not None and theirs is not None:
                name = f"{backbone}/{variant}-{against[1]}/{quantity}-{their_quantity}/{group}"
                result = _difference(name, mine, quantity, theirs, their_quantity, group, facts)
                if result is not None:
                    label = against[1] if their_quantity == quantity else f"{against[1]} ({their_quantity})"
                    made[key] = {"backbone": backbone, "variant": variant, "against": label, "quantity": quantity,
                                 "group": group, **result}
                    comparisons.append(made[key])
        return made[key]

    claims = []
    backbones = sorted({backbone for backbone, _ in models if backbone != REFERENCE})
    references = sorted(variant for backbone, variant in models if backbone == REFERENCE)
    lesion_groups = [group for group in groups if group in LESION_KINDS] or [ALL]
    for backbone in backbones:
        variants = [variant for b, variant in models if b == backbone and variant not in (BASE, SFT)]
        kind_groups = [group for group in groups if group != LESION]
        for group in kind_groups:
            compare(backbone, SFT, (backbone, BASE), "accuracy", group)
            for reference in references:
                compare(backbone, SFT, (REFERENCE, reference), "accuracy", group)
            for variant in [BASE, SFT, *variants]:
                compare(backbone, variant, (backbone, variant), "accuracy", group, "blind_accuracy")
            for variant in variants:
                compare(backbone, variant, (backbone, SFT), "accuracy", group)
        first = [part for group in lesion_groups for part in (
            *(compare(backbone, SFT, (REFERENCE, reference), "accuracy", group) for reference in references),
            compare(backbone, SFT, (backbone, SFT), "accuracy", group, "blind_accuracy"))]
        claims.append(_claim(backbone, "sft_learns_the_task",
                             "SFT beats every reference model (prior-only, always-yes) and its own blind score on "
                             f"each lesion question kind ({', '.join(lesion_groups)})", first))

        text_side = [v for v in variants if ("rejected", "image") in _objective_rows(study, backbone, v)]
        second = [compare(backbone, v, (backbone, SFT), q, ALL) for v in text_side for q in ("correct", "margin")]
        claims.append(_claim(backbone, "preference_training_raises_margin",
                             "preference training raises held-out preference accuracy and margin over the SFT model "
                             f"of its seed ({', '.join(text_side) or 'no text-side variant'})", second))
        for v in variants:
            if v not in text_side:
                for q in ("correct", "margin"):
                    compare(backbone, v, (backbone, SFT), q, ALL)

        evidence = "lesion_evidence" if any("lesion_evidence" in m.values for m in models.values()) \
            else "image_dependence"
        scope = LESION if LESION in groups else ALL
        image_side = [v for v in variants if ("chosen", "rejected_image") in _objective_rows(study, backbone, v)
                      and v != "dpo"]
        third = [compare(backbone, v, (backbone, "dpo"), evidence, scope) for v in image_side]
        claims.append(_claim(backbone, "copo_family_raises_lesion_evidence",
                             f"CoPO-family terms raise {QUANTITIES[evidence]} over DPO on items {scope} "
                             f"({', '.join(image_side) or 'no CoPO-family variant'})", third))
        for v in [SFT, *variants]:
            if v != "dpo":
                for quantity in ("image_dependence", "control_dependence", "lesion_evidence"):
                    for group in groups:
                        compare(backbone, v, (backbone, "dpo"), quantity, group)
    return {"study": study.name, "groups": groups, "seeds": seed_counts, "seeds_resampled": resampled,
            "intervals": _interval_note(resampled, seed_counts), "estimates": estimates,
            "comparisons": comparisons, "claims": claims}


def _interval_note(resampled: bool, seed_counts: list[int]) -> str:
    if resampled:
        return (f"95% intervals resample training seeds, then held-out items ({min(seed_counts)}+ seeds per model): "
                "they include seed-to-seed variance.")
    seeds = " or ".join(str(n) for n in seed_counts) or "no"
    return (f"95% intervals resample held-out items only, with each model's {seeds} seed(s) averaged per item: they "
            f"are conditional on the trained models and leave out seed-to-seed variance (fewer than {MIN_SEEDS} "
            "seeds). Compare seed sets to see that variance.")


def _claim(backbone: str, key: str, statement: str, parts: list[dict[str, Any] | None]) -> dict[str, Any]:
    evidence = [part for part in parts if part is not None]
    complete = bool(parts) and len(evidence) == len(parts)
    holds = complete and all(part["low"] > 0 for part in evidence)
    return {"backbone": backbone, "claim": key, "statement": statement,
            "holds": holds if complete else None, "evidence": evidence}


def _interval(entry: dict[str, Any] | None, key: str = "mean") -> str:
    if not entry:
        return "—"
    if key == "difference":
        return f"{entry[key]:+.3f} [{entry['low']:+.3f}, {entry['high']:+.3f}]"
    return f"{entry[key]:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


def _name(row: dict[str, Any]) -> str:
    return row["variant"] if row["backbone"] == REFERENCE else f"{row['backbone']} {row['variant']}"


def render_markdown(analysis: dict[str, Any]) -> str:
    """``study.md``: one table per quantity (overall and per kind), the claims, every paired difference."""
    groups = analysis["groups"]
    lines = [f"# Study {analysis['study']}: what training did on held-out items", "", analysis["intervals"], ""]
    for quantity, label in QUANTITIES.items():
        rows = [row for row in analysis["estimates"] if row.get(quantity)]
        if not rows:
            continue
        shown = [group for group in groups if any(group in row[quantity] for row in rows)]
        lines += [f"## {label[0].upper()}{label[1:]}", "", "| model | seeds | " + " | ".join(shown) + " |",
                  "|---|---|" + "---|" * len(shown)]
        for row in rows:
            seeds = ", ".join(map(str, row["seeds"])) or "—"
            cells = " | ".join(_interval(row[quantity].get(group)) for group in shown)
            lines.append(f"| {_name(row)} | {seeds} | {cells} |")
        lines.append("")
    lines += ["## Claims", ""]
    for claim in analysis["claims"]:
        verdict = {True: "holds", False: "does not hold", None: "not measured"}[claim["holds"]]
        lines.append(f"- **{claim['backbone']}: {claim['statement']}**: {verdict}")
        for part in claim["evidence"]:
            p = f"p = {part['p']:.3f}, " if part["p"] is not None else ""
            lines.append(f"  - {part['variant']} − {part['against']}, {QUANTITIES[part['quantity']]}, {part['group']}: "
                         f"{_interval(part, 'difference')} ({p}{part['n']} items)")
    lines += ["", "## Every paired difference", "",
              "| backbone | variant | against | quantity | items | difference [95% CI] | p |",
              "|---|---|---|---|---|---|---|"]
    for part in analysis["comparisons"]:
        p = f"{part['p']:.3f}" if part["p"] is not None else "—"
        lines.append(f"| {part['backbone']} | {part['variant']} | {part['against']} | {part['quantity']} | "
                     f"{part['group']} | {_interval(part, 'difference')} | {p} |")
    return "\n".join(lines) + "\n"


def plot(analysis: dict[str, Any], path: Path) -> Path | None:
    """Top row: each model's overall estimate per quantity; bottom row: held-out accuracy per kind. Intervals as
    error bars; the figure is saved with a tight bounding box, so no label is clipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    shown = [q for q in ("accuracy", "blind_accuracy", "image_reliance", "margin", "lesion_evidence",
                         "image_dependence") if any(row.get(q, {}).get(ALL) for row in analysis["estimates"])]
    kinds = [group for group in analysis["groups"] if group not in (ALL, LESION)]
    if not shown:
        return None
    panels = [(q, ALL) for q in shown] + [("accuracy", kind) for kind in kinds]
    columns = max(len(shown), len(kinds), 1)
    rows = 2 if kinds else 1
    figure, axes = plt.subplots(rows, columns, figsize=(3.3 * columns, 0.32 * len(analysis["estimates"]) * rows + 2),
                                squeeze=False)
    for axis in axes.flat:
        axis.set_visible(False)
    for index, (quantity, group) in enumerate(panels):
        axis = axes[0 if group == ALL else 1][index if group == ALL else index - len(shown)]
        axis.set_visible(True)
        entries = [(row, row[quantity][group]) for row in analysis["estimates"] if row.get(quantity, {}).get(group)]
        means = [entry["mean"] for _, entry in entries]
        errors = [[m - entry["low"] for m, (_, entry) in zip(means, entries, strict=True)],
                  [entry["high"] - m for m, (_, entry) in zip(means, entries, strict=True)]]
        colours = ["#999999" if row["variant"] == BASE or row["backbone"] == REFERENCE else
                   "#4c72b0" if row["variant"] == SFT else "#dd8452" for row, _ in entries]
        axis.barh(range(len(entries)), means, xerr=errors, color=colours, capsize=2)
        axis.set_yticks(range(len(entries)), [_name(row) for row, _ in entries], fontsize=7)
        axis.invert_yaxis()
        axis.axvline(0, color="black", linewidth=0.6)
        axis.set_title(QUANTITIES[quantity] if group == ALL else f"accuracy: {group}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def write_analysis(study: Study, folder: Path, complete: Iterable[str]) -> dict[str, Any]:
    """``study.json``, ``study.md`` and ``study.png`` in ``folder``; returns the analysis."""
    analysis = analyse(study, complete)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ANALYSIS_JSON).write_text(json.dumps(analysis, indent=2) + "\n", encoding="utf-8")
    (folder / ANALYSIS_MD).write_text(render_markdown(analysis), encoding="utf-8")
    plot(analysis, folder / ANALYSIS_PNG)
    return analysis


__all__ = ["ModelValues", "analyse", "collect", "item_facts", "plot", "render_markdown", "write_analysis"]
