"""Unblind expert annotations and summarise them: per-model scores with CIs, inter-rater and judge agreement.

Units: an *output* is one model's answer to one item; an *item* is one sampled document. Per-model scores
average each output's grades over the annotators who graded it, then average over outputs; their 95%
intervals are percentile bootstraps over items (ratings of one item resampled together). Inter-rater
agreement treats every output as a unit. Judge agreement compares the judge's grade with each expert's and
with the expert consensus (the median grade; with an even split, the more severe of the two middle grades,
so the consensus never hides a disagreement that calls an output severe).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medbench.experts import stats
from medbench.experts.annotations import AnnotationSet
from medbench.experts.rubric import CORRECTNESS, SEVERITY, TIE, Rubric, load_rubric
from medbench.stats import bootstrap_statistic

SUMMARY_SCHEMA = "medbench-experts-summary/1"
SUMMARY_FILE = "experts_summary.json"


def _consensus(grades: Sequence[str], scale: Sequence[str]) -> str:
    ordered = sorted(grades, key=scale.index)
    return ordered[len(ordered) // 2]  # upper median: with an even split, the more severe middle grade


def _estimate(
    units: list[Any], statistic: Callable[[Sequence[Any]], float | None], seed: int, n: int | None = None
) -> dict[str, Any]:
    """``{"value", "ci", "n"}``: the statistic, its bootstrap CI over ``units`` (items) and ``n`` outputs."""
    value = statistic(units)
    interval = bootstrap_statistic(units, statistic, seed=seed) if value is not None else None
    return {"value": value, "ci": list(interval) if interval else None, "n": len(units) if n is None else n}


def _agreement(by_output: dict[tuple[str, str], dict[str, Any]], annotators: list[str], scale: list[Any], seed: int) -> dict[str, Any]:
    """Inter-rater agreement on one ordinal field; units are outputs, keyed ``(item, code)``."""
    units = [[ratings.get(name) for name in annotators] for ratings in by_output.values()]
    multi = [unit for unit in units if sum(value is not None for value in unit) >= 2]
    result: dict[str, Any] = {"n_outputs": len(multi), "n_annotators": len(annotators)}
    if not multi:
        return result
    items = defaultdict(list)
    for (item_id, _), unit in zip(by_output, units, strict=True):
        if sum(value is not None for value in unit) >= 2:
            items[item_id].append(unit)
    grouped = list(items.values())

    def flat(groups: Sequence[list[list[Any]]]) -> list[list[Any]]:
        return [unit for group in groups for unit in group]

    count = len(multi)
    result["krippendorff_alpha_ordinal"] = _estimate(grouped, lambda g: stats.krippendorff_alpha(flat(g), "ordinal", scale), seed, count)
    result["krippendorff_alpha_nominal"] = _estimate(grouped, lambda g: stats.krippendorff_alpha(flat(g), "nominal", scale), seed, count)
    complete = [unit for unit in units if all(value is not None for value in unit)]
    result["percent_agreement"] = (
        sum(len(set(unit)) == 1 for unit in complete) / len(complete) if complete else None
    )
    if len(annotators) == 2:
        def cohen(weights: str | None) -> Callable[[Sequence[list[list[Any]]]], float | None]:
            def statistic(groups: Sequence[list[list[Any]]]) -> float | None:
                pairs = [unit for unit in flat(groups) if None not in unit]
                return stats.cohen_kappa([u[0] for u in pairs], [u[1] for u in pairs], scale, weights)
            return statistic

        paired = sum(None not in unit for unit in units)
        result["cohen_kappa"] = _estimate(grouped, cohen(None), seed, paired)
        result["cohen_kappa_quadratic"] = _estimate(grouped, cohen("quadratic"), seed, paired)
    else:
        def fleiss(groups: Sequence[list[list[Any]]]) -> float | None:
            rows = [unit for unit in flat(groups) if None not in unit]
            return stats.fleiss_kappa(rows, scale) if rows else None

        result["fleiss_kappa"] = _estimate(grouped, fleiss, seed, len(complete))
    return result


def _judge_agreement(
    pairs: list[tuple[str, str, list[str]]], scale: list[str], seed: int
) -> dict[str, Any]:
    """``pairs``: (item, judge grade, the experts' grades) per judged output."""
    result: dict[str, Any] = {"n_outputs": len(pairs)}
    if not pairs:
        return result
    items = defaultdict(list)
    for item_id, judge, experts in pairs:
        items[item_id].append((judge, _consensus(experts, scale), experts))
    grouped = list(items.values())

    def flat(groups: Sequence[list[tuple[str, str, list[str]]]]) -> list[tuple[str, str, list[str]]]:
        return [entry for group in groups for entry in group]

    def kappa(weights: str | None) -> Callable[[Sequence[Any]], float | None]:
        return lambda groups: stats.cohen_kappa([e[0] for e in flat(groups)], [e[1] for e in flat(groups)], scale, weights)

    def severe_kappa(groups: Sequence[Any]) -> float | None:
        entries = flat(groups)
        return stats.cohen_kappa([e[0] == "severe" for e in entries], [e[1] == "severe" for e in entries], [False, True])

    def pooled(groups: Sequence[Any]) -> float | None:
        judge, expert = [], []
        for entry in flat(groups):
            for grade in entry[2]:
                judge.append(entry[0])
                expert.append(grade)
        return stats.cohen_kappa(judge, expert, scale, "quadratic")

    entries = flat(grouped)
    count = len(entries)
    result["exact_agreement"] = sum(e[0] == e[1] for e in entries) / count
    result["cohen_kappa"] = _estimate(grouped, kappa(None), seed, count)
    result["cohen_kappa_quadratic"] = _estimate(grouped, kappa("quadratic"), seed, count)
    result["severe_vs_not_kappa"] = _estimate(grouped, severe_kappa, seed, count)
    result["per_expert_quadratic_kappa"] = _estimate(grouped, pooled, seed, sum(len(e[2]) for e in entries))
    result["confusion"] = {judge: {expert: 0 for expert in scale} for judge in scale}
    for judge, expert, _ in entries:
        result["confusion"][judge][expert] += 1
    result["rows"] = "judge grade"
    result["columns"] = "expert consensus grade"
    return result


def summarise(annotations: AnnotationSet, key: dict[str, Any], rubric: Rubric | None = None, seed: int = 0) -> dict[str, Any]:
    """The experts summary document (``experts_summary.json``) for validated annotations."""
    rubric = rubric or load_rubric()
    annotators = sorted(annotations.annotators)
    severity_scale = rubric.levels(SEVERITY)
    correctness_scale = rubric.levels(CORRECTNESS)
    top = max(correctness_scale)
    by_output: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for annotation in annotations.annotations:
        by_output[(annotation.item_id, annotation.code)][annotation.annotator] = annotation.values
    categories = sorted({entry.category for entry in rubric.error_types}, key=[e.category for e in rubric.error_types].index)
    category_of = {entry.key: entry.category for entry in rubric.error_types}

    models: dict[str, Any] = {}
    model_outputs: dict[str, list[tuple[str, str, dict[str, dict[str, Any]]]]] = defaultdict(list)
    for (item_id, code), ratings in by_output.items():
        model_outputs[key["items"][item_id]["models"][code]].append((item_id, code, ratings))
    for label in key["models"]:
        outputs = model_outputs.get(label, [])
        per_item: dict[str, list[dict[str, dict[str, Any]]]] = defaultdict(list)
        for item_id, _, ratings in outputs:
            per_item[item_id].append(ratings)
        groups = list(per_item.values())

        def average(extract: Callable[[dict[str, Any]], float]) -> Callable[[Sequence[Any]], float | None]:
            def statistic(sample: Sequence[list[dict[str, dict[str, Any]]]]) -> float | None:
                values = [stats.mean([extract(v) for v in ratings.values()]) for group in sample for ratings in group]
                return stats.mean([value for value in values if value is not None])
            return statistic

        entry: dict[str, Any] = {
            "n_outputs": len(outputs),
            "n_ratings": sum(len(ratings) for _, _, ratings in outputs),
            "correctness": _estimate(groups, average(lambda v: v[CORRECTNESS] / top), seed),
            "severe_rate": _estimate(groups, average(lambda v: float(v[SEVERITY] == "severe")), seed),
            "hallucination_rate": _estimate(groups, average(lambda v: float(v[SEVERITY] != "none")), seed),
            "error_types": {
                category: _estimate(
                    groups, average(lambda v, c=category: float(any(category_of[t] == c for t in v["error_types"]))), seed
                )
                for category in categories
            },
        }
        grades = [key["items"][item_id]["judge_severity"].get(code) for item_id, code, _ in outputs]
        grades = [grade for grade in grades if grade in severity_scale]
        if grades:
            entry["judge_severe_rate_same_outputs"] = sum(grade == "severe" for grade in grades) / len(grades)
            entry["n_judged_outputs"] = len(grades)
        models[label] = {**key["models"][label], **entry}

    pairwise: dict[str, Any] = {}
    for annotator, item_id, choice in annotations.preferences:
        item = key["items"][item_id]
        first, second = (item["models"][code] for code in item["codes"][:2])
        names = tuple(sorted((first, second)))
        record = pairwise.setdefault(" vs ".join(names), {"models": list(names), "wins": {names[0]: 0, names[1]: 0}, "ties": 0})
        if choice == TIE:
            record["ties"] += 1
        else:
            record["wins"][item["models"][choice]] += 1

    judge_pairs = []
    for (item_id, code), ratings in by_output.items():
        grade = key["items"][item_id]["judge_severity"].get(code)
        if grade in severity_scale:
            judge_pairs.append((item_id, grade, [values[SEVERITY] for values in ratings.values()]))

    return {
        "schema": SUMMARY_SCHEMA,
        "export_id": key["export_id"],
        "rubric": key["rubric"],
        "annotators": annotators,
        "n_items": len({item_id for item_id, _ in by_output}),
        "n_outputs": len(by_output),
        "n_ratings": len(annotations.annotations),
        "n_blank_outputs": annotations.blank,
        "scales": {
            "correctness": f"mean grade / {top} (0 = incorrect, 1 = correct)",
            "severe_rate": "share of outputs graded severe",
            "hallucination_rate": "share of outputs graded minor or severe",
            "error_types": "share of outputs with at least one error of the category",
            "ci": "95% percentile bootstrap over items",
        },
        "models": models,
        "agreement": {
            "correctness": _agreement(
                {k: {a: v[CORRECTNESS] for a, v in r.items()} for k, r in by_output.items()}, annotators, correctness_scale, seed
            ),
            "severity": _agreement(
                {k: {a: v[SEVERITY] for a, v in r.items()} for k, r in by_output.items()}, annotators, severity_scale, seed
            ),
        },
        "judge_agreement": _judge_agreement(judge_pairs, severity_scale, seed),
        "pairwise": pairwise,
    }


def write_unblinded(path: Path, annotations: AnnotationSet, key: dict[str, Any]) -> None:
    """One row per (annotator, output) with the model named and the judge's grade beside the expert's."""
    columns = ["annotator", "item_id", "task", "sample_id", "model", "output_code", "correctness", "severity", "judge_severity", "error_types", "comment"]
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for annotation in sorted(annotations.annotations, key=lambda a: (a.item_id, a.code, a.annotator)):
            item = key["items"][annotation.item_id]
            writer.writerow(
                {
                    "annotator": annotation.annotator,
                    "item_id": annotation.item_id,
                    "task": item["task"],
                    "sample_id": item["sample_id"],
                    "model": item["models"][annotation.code],
                    "output_code": annotation.code,
                    "correctness": annotation.values[CORRECTNESS],
                    "severity": annotation.values[SEVERITY],
                    "judge_severity": item["judge_severity"].get(annotation.code) or "",
                    "error_types": ";".join(annotation.values["error_types"]),
                    "comment": annotation.values["comment"],
                }
            )


def _cell(estimate: dict[str, Any] | None, digits: int = 2) -> str:
    if not estimate or estimate.get("value") is None:
        return "n/a"
    text = f"{estimate['value']:.{digits}f}"
    if estimate.get("ci"):
        low, high = estimate["ci"]
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def format_summary(summary: dict[str, Any]) -> str:
    """A Markdown report of the summary."""
    lines = [
        (
            f"Expert review {summary['export_id']}: {summary['n_ratings']} ratings of {summary['n_outputs']} outputs "
            f"({summary['n_items']} items) by {len(summary['annotators'])} annotator(s): {', '.join(summary['annotators'])}"
        ),
        "",
        "| model | n | correctness | severe | any hallucination | judge severe (same outputs) |",
        "|---|---|---|---|---|---|",
    ]
    for label, entry in summary["models"].items():
        judge = entry.get("judge_severe_rate_same_outputs")
        judged = "n/a" if judge is None else f"{judge:.2f} (n={entry['n_judged_outputs']})"
        lines.append(
            f"| {label} | {entry['n_outputs']} | {_cell(entry['correctness'])} | {_cell(entry['severe_rate'])} | "
            f"{_cell(entry['hallucination_rate'])} | {judged} |"
        )
    lines += ["", "Inter-rater agreement (units: outputs):"]
    for field_name, result in summary["agreement"].items():
        parts = [f"n={result['n_outputs']}"]
        for name in ("cohen_kappa", "cohen_kappa_quadratic", "fleiss_kappa", "krippendorff_alpha_ordinal", "krippendorff_alpha_nominal"):
            if name in result:
                parts.append(f"{name}={_cell(result[name])}")
        lines.append(f"- {field_name}: " + ", ".join(parts))
    judge = summary["judge_agreement"]
    if judge.get("n_outputs"):
        lines.append(
            f"Judge vs experts (severity, n={judge['n_outputs']}): exact agreement {judge['exact_agreement']:.2f}, "
            f"kappa {_cell(judge['cohen_kappa'])}, quadratic kappa {_cell(judge['cohen_kappa_quadratic'])}, "
            f"severe-vs-not kappa {_cell(judge['severe_vs_not_kappa'])}"
        )
    else:
        lines.append("Judge vs experts: no judged outputs among the annotated ones (run the judge's severity part first)")
    for name, record in summary["pairwise"].items():
        wins = ", ".join(f"{model} {count}" for model, count in record["wins"].items())
        lines.append(f"Pairwise {name}: wins {wins}, ties {record['ties']}")
    return "\n".join(lines)


__all__ = ["SUMMARY_FILE", "SUMMARY_SCHEMA", "format_summary", "summarise", "write_unblinded"]
