"""The metric catalogue computes: every declaration names its functions, and everything derives from it."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from medbench.judge import parts
from medbench.leaderboard.recompute import REGISTRY
from medbench.lmms import report
from medbench.metrics.registry import FAMILIES, METRICS, TASK_KIND_METRICS, Answer, Family, Metric

PACKAGE = Path(__file__).resolve().parents[2] / "medbench"


@pytest.mark.parametrize("name", sorted(METRICS))
def test_the_board_recomputes_with_the_tasks_own_function(name):
    metric, rule = METRICS[name], REGISTRY[name]
    if metric.check in ("sample", "sum"):
        assert rule.per_sample is metric.sample_function is not None
    elif metric.check in ("corpus", "java"):
        assert rule.corpus is metric.corpus_function is not None
    else:  # consistency, count, none: nothing to recompute offline
        assert rule.per_sample is None and rule.corpus is None


@pytest.mark.parametrize("name", sorted(name for name, m in METRICS.items() if m.aggregation == "function"))
def test_every_whole_task_metric_has_its_named_aggregation(name):
    function = getattr(report, name)
    assert function.__name__ == name and function.__module__ == "medbench.lmms.report"
    assert METRICS[name].yaml_aggregation == f"!function medbench.lmms.report.{name}"
    # lmms-eval passes args= only to aggregations that declare it; the judge needs it for its sidecar.
    wants_args = "args" in inspect.signature(METRICS[name].corpus_function).parameters
    assert ("args" in inspect.signature(function).parameters) == wants_args


def test_every_family_is_declared_and_answers_whether_it_runs():
    families = {m.family for m in METRICS.values() if m.family}
    assert families == set(FAMILIES)
    for family in FAMILIES.values():
        reason = family.reason_unavailable()
        assert reason is None or (isinstance(reason, str) and reason)
    assert FAMILIES["failed_generations"].reason_unavailable() is None


def test_judge_metrics_derive_from_the_judge_parts():
    judged = {m.name: m for m in METRICS.values() if m.family and m.family.startswith("judge:")}
    assert set(judged) == set(parts.COLUMNS)
    for name, metric in judged.items():
        assert metric.higher_is_better == parts.COLUMNS[name].higher_is_better
        assert metric.family == f"judge:{parts.COLUMNS[name].part}"
    assert METRICS[parts.UNSCORED].family == "judge"


def test_vqa_record_is_a_loop_over_the_catalogue():
    from medbench.lmms.vqa import process_results

    closed = process_results({"id": "q1", "source": "s", "answer": "no", "answer_type": "CLOSED"}, ["No."])
    opened = process_results({"id": "q2", "source": "s", "answer": "left lung", "answer_type": "OPEN"}, ["left"])
    for record, answer in ((closed, Answer("No.", "no", "CLOSED")), (opened, Answer("left", "left lung", "OPEN"))):
        for metric in TASK_KIND_METRICS["vqa"]:
            if metric.sample_function is None:
                continue
            expected = metric.sample_function(answer)
            assert record.get(metric.name) == expected, metric.name
    assert closed["closed_accuracy"] == 1.0 and "open_recall" not in closed
    assert opened["open_recall"] == 0.5 and "closed_accuracy" not in opened


def test_declarations_name_a_function_and_keep_aggregation_and_corpus_together():
    with pytest.raises(ValueError, match="declare sample= or corpus="):
        Metric(name="x", description="x", level="sample", higher_is_better=True, aggregation="mean", check="sample")
    with pytest.raises(ValueError, match="go together"):
        Metric(name="x", description="x", level="corpus", higher_is_better=True, aggregation="function", check="corpus")
    with pytest.raises(TypeError):
        Metric("x", "x", "sample", True, "mean", "sample", sample="m.f")  # keywords only
    assert isinstance(FAMILIES["meteor"], Family)


def test_no_name_built_dispatch_remains():
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        assert "globals()[" not in source, f"{path.name}: names made with globals()[...] are invisible to grep"
    source = (PACKAGE / "lmms" / "report.py").read_text(encoding="utf-8")
    assert 'startswith("bleu")' not in source and 'startswith("judge_")' not in source
    assert "def bleu1(items" in source  # grep -rn "def bleu1" medbench/ finds the aggregation
