"""Every medbench metric, declared once.

A :class:`Metric` says what a metric is (level, direction, bounds), how lmms-eval aggregates it, whether
it can be recomputed offline and by which rule, and whether it may be left out of a run. Everything else
derives from these declarations (in the spirit of lm-evaluation-harness's ``Metric`` dataclass):

* the task YAMLs' ``metric_list`` (``python -m medbench.docsgen`` writes it; a test fails when stale);
* the aggregation functions the YAMLs name (``medbench.lmms.report`` builds one per corpus metric);
* the leaderboard's verification rules, its columns and their directions;
* :data:`medbench.results.NON_SCORE_METRICS` (counters are not scores).

Recompute rules (``check``), as the leaderboard applies them to a run's per-sample log:

* ``sample``: each per-sample value is recomputed from the logged answer and reference with the function
  the task itself used; the score must be their mean.
* ``sum``: recomputed per sample like ``sample``; the score is their sum (question counts).
* ``corpus``: the score (and per-sample values, where the metric has them) is recomputed over all samples.
* ``java``: a corpus metric needing a Java runtime (METEOR): recomputed when ``java`` is on PATH.
* ``consistency``: needs a model or an API (BERTScore, the LLM judge, RadGraph): the score must equal the
  mean of the logged per-sample values, which must lie within the metric's bounds.
* ``count``: a counter; the score must equal the sum of the logged per-sample values.
* ``none``: a corpus score from a model with no per-sample values (CheXbert-F1): only range-checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Level = Literal["sample", "corpus"]
Aggregation = Literal["mean", "sum", "function"]
CheckKind = Literal["sample", "sum", "corpus", "java", "consistency", "count", "none"]
TaskKind = Literal["vqa", "report", "chest_xray"]


@dataclass(frozen=True)
class Metric:
    """One metric of the medbench tasks.

    Attributes:
        name: The metric key in ``process_results`` records, the task YAML and lmms-eval's results.
        description: One line for humans (docs, the board's legend).
        level: ``sample``: the score is the mean (or sum) of per-sample values; ``corpus``: it is computed
            over all samples at once.
        higher_is_better: Direction.
        aggregation: ``mean`` (lmms-eval's), ``sum`` (:func:`medbench.lmms.common.total`) or ``function``
            (a function of the same name in :attr:`module`, computed over the whole task).
        check: How the leaderboard re-derives it from the per-sample log (see the module docstring).
        bounds: The range every per-sample value and the score must lie in.
        family: ``None``: every run reports it. Otherwise the name of a group of optional metrics that need
            something the run may not have (Java, a model, a judge): a run reports all of a family or none.
        counter: A count, not a score (kept out of the board's columns and the demo table's scores).
        filled_by_aggregation: Per-sample values are written into the logged record by the aggregation
            (a deferred metric), so multi-process lmms-eval runs log none.
        must_be_zero: A counter that disqualifies a run from the leaderboard when positive.
        primary: The task's headline metric (plotted and summarised by default).
        module: Where ``function`` aggregations live.
    """

    name: str
    description: str
    level: Level
    higher_is_better: bool
    aggregation: Aggregation
    check: CheckKind
    bounds: tuple[float, float] = (0.0, 1.0)
    family: str | None = None
    counter: bool = False
    filled_by_aggregation: bool = False
    must_be_zero: bool = False
    primary: bool = False
    module: str = "medbench.lmms.report"

    @property
    def yaml_aggregation(self) -> str:
        """The ``aggregation:`` value of the task YAML."""
        if self.aggregation == "mean":
            return "mean"
        if self.aggregation == "sum":
            return "!function medbench.lmms.common.total"
        return f"!function {self.module}.{self.name}"

    @property
    def recomputable(self) -> bool:
        """Whether the leaderboard recomputes it offline (``java``: only where Java is installed)."""
        return self.check in ("sample", "sum", "corpus", "java", "count")

    @property
    def mean_of_samples(self) -> bool:
        """The score is the mean of per-sample values (so it has a bootstrap CI and a paired test)."""
        return self.level == "sample" and not self.counter


_COUNT = (0.0, float(2**31))
# Failed model calls (lmms-eval writes "[LMMS_EVAL_REQUEST_FAILED ...]" as the answer) are counted, never
# scored; a run with any is turned away by the leaderboard.
FAILED_GENERATIONS = Metric(
    "failed_generations",
    "generations that failed (model or API error) and were not scored",
    "sample",
    False,
    "sum",
    "count",
    _COUNT,
    family="failed_generations",
    counter=True,
    must_be_zero=True,
)

VQA_METRICS: tuple[Metric, ...] = (
    Metric("overall", "closed accuracy or open recall, whichever applies, over all questions", "sample", True, "mean", "sample", primary=True),
    Metric("closed_accuracy", "accuracy on closed (yes/no) questions; unparseable answers are wrong", "sample", True, "mean", "sample"),
    Metric("open_recall", "share of reference tokens recalled by the answer, open questions", "sample", True, "mean", "sample"),
    Metric("exact_match", "normalised answer equals the reference", "sample", True, "mean", "sample"),
    Metric("token_f1", "token-level F1 of answer and reference", "sample", True, "mean", "sample"),
    Metric("closed_unparsed", "share of closed questions whose answer reads as neither yes nor no", "sample", False, "mean", "sample"),
    Metric("n_closed", "number of closed questions", "sample", True, "sum", "sum", _COUNT, counter=True),
    Metric("n_open", "number of open questions", "sample", True, "sum", "sum", _COUNT, counter=True),
)

_JUDGE = "LLM judge (docs/judge.md)"
REPORT_METRICS: tuple[Metric, ...] = (
    *(
        Metric(f"bleu{n}", f"corpus BLEU-{n} (coco-caption)", "corpus", True, "function", "corpus")
        for n in range(1, 5)
    ),
    Metric("bleu4_sentence", "sentence BLEU-4 (smoothed), mean over reports", "sample", True, "mean", "sample"),
    Metric("rouge_l", "ROUGE-L F-measure (rouge-score), mean over reports", "sample", True, "mean", "sample", primary=True),
    Metric("meteor", "METEOR 1.5 corpus score (needs Java)", "corpus", True, "function", "java", family="meteor", filled_by_aggregation=True),
    Metric("cider", "CIDEr, mean over reports of scores with IDF from all test references (0-10)", "sample", True, "function", "corpus", (0.0, 10.0), filled_by_aggregation=True),
    Metric("bertscore_f1", "BERTScore F1 with a local model", "sample", True, "function", "consistency", (-1.0, 1.0), family="bertscore", filled_by_aggregation=True),
    Metric("judge_completeness", f"share of reference facts the output states ({_JUDGE})", "sample", True, "function", "consistency", family="judge:nli", filled_by_aggregation=True),
    Metric("judge_hallucination", f"share of reference facts the output contradicts ({_JUDGE})", "sample", False, "function", "consistency", family="judge:nli", filled_by_aggregation=True),
    Metric("judge_fabrication", f"share of output claims the reference does not support ({_JUDGE})", "sample", False, "function", "consistency", family="judge:fabrication", filled_by_aggregation=True),
    Metric("judge_severe", f"share of outputs whose worst error is severe ({_JUDGE})", "sample", False, "function", "consistency", family="judge:severity", filled_by_aggregation=True),
    Metric("judge_unscored", "samples missing a judge score after retries", "sample", False, "function", "count", _COUNT, family="judge", counter=True, filled_by_aggregation=True),
)

CHEST_XRAY_METRICS: tuple[Metric, ...] = (
    *(
        Metric(f"chexbert_f1_{avg}_{n}", f"CheXbert-F1, {avg}-averaged over {n} observations", "corpus", True, "function", "none", family="chexbert")
        for n in (14, 5)
        for avg in ("micro", "macro")
    ),
    *(
        Metric(f"radgraph_f1_{level}", f"RadGraph-F1 ({level}), mean over reports", "sample", True, "function", "consistency", family="radgraph", filled_by_aggregation=True)
        for level in ("partial", "simple", "complete")
    ),
)

TASK_KIND_METRICS: dict[TaskKind, tuple[Metric, ...]] = {
    "vqa": (*VQA_METRICS, FAILED_GENERATIONS),
    "report": (*REPORT_METRICS, FAILED_GENERATIONS),
    "chest_xray": (*REPORT_METRICS, *CHEST_XRAY_METRICS, FAILED_GENERATIONS),
}

METRICS: dict[str, Metric] = {metric.name: metric for metrics in TASK_KIND_METRICS.values() for metric in metrics}

# lmms-eval's per-sample detail record rides in the process_results output like a metric; it is not one.
DETAIL_KEY = "medbench_detail"

COUNTERS = frozenset(name for name, metric in METRICS.items() if metric.counter)


def metric_list(kind: TaskKind) -> list[dict[str, object]]:
    """The task YAML ``metric_list`` of a kind of task (``aggregation`` as the YAML spells it)."""
    return [
        {"metric": m.name, "aggregation": m.yaml_aggregation, "higher_is_better": m.higher_is_better}
        for m in TASK_KIND_METRICS[kind]
    ]


def get(name: str) -> Metric | None:
    """The declaration of ``name``, or ``None`` for a name medbench does not declare."""
    return METRICS.get(name)
