"""How much of an lmms-eval run medbench's own code costs.

Runs lmms-eval in this process on the demo data (all five tasks) with the tiny LLaVA-architecture model
and times, inside that same run, medbench's scoring (``process_results`` of every task + the ``total``
aggregation) and its data loading (``process_docs``). Reports each as a share of the lmms-eval wall time.
Target: scoring <= 5% of the run.

    python benchmarks/bench_plugin_overhead.py [--repeats 3] [--tasks medbench]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.update(MEDBENCH_DATA="demo", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")

SPENT: dict[str, float] = defaultdict(float)


def _timed(kind: str, function):
    @functools.wraps(function)  # lmms-eval inspects aggregation signatures
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            SPENT[kind] += time.perf_counter() - start

    return wrapper


def _instrument() -> None:
    """Wrap medbench's task functions before lmms-eval resolves the YAMLs' ``!function`` references."""
    from medbench.lmms import common, report, vqa

    vqa.process_results = _timed("scoring", vqa.process_results)
    report.process_results = _timed("scoring", report.process_results)
    common.total = _timed("scoring", common.total)
    for name in ("vqa_rad_docs", "slake_docs", "pathvqa_docs", "mimic_cxr_docs", "amboss_docs"):
        setattr(common, name, _timed("loading", getattr(common, name)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tasks", default="medbench")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from medbench.taskfiles import tasks_dir
    from medbench.tiny import build_tiny_model

    _instrument()
    model_dir = build_tiny_model(Path(tempfile.mkdtemp()) / "tiny-llava", "llava")
    walls, scoring, loading = [], [], []
    for _ in range(args.repeats):
        SPENT.clear()
        manager = TaskManager("WARNING", include_path=str(tasks_dir()))
        start = time.perf_counter()
        simple_evaluate(
            model="medbench_hf",
            model_args=f"pretrained={model_dir}",
            tasks=[args.tasks],
            batch_size=args.batch_size,
            task_manager=manager,
            log_samples=True,
            verbosity="WARNING",
        )
        walls.append(time.perf_counter() - start)
        scoring.append(SPENT["scoring"])
        loading.append(SPENT["loading"])
    wall = statistics.median(walls)
    print(f"lmms-eval wall time (median of {args.repeats}): {wall:.2f} s")
    print(f"medbench scoring (process_results + aggregation): {statistics.median(scoring) * 1000:.1f} ms "
          f"= {100 * statistics.median(scoring) / wall:.2f}% of the run (target <= 5%)")
    print(f"medbench data loading + validation (process_docs): {statistics.median(loading) * 1000:.1f} ms "
          f"= {100 * statistics.median(loading) / wall:.2f}% of the run")


if __name__ == "__main__":
    main()
