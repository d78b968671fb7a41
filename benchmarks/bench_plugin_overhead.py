"""How much of an lmms-eval run medbench's own code costs.

Runs lmms-eval on the demo data (all five tasks) with the tiny LLaVA-architecture model and times, inside
that same run, medbench's scoring (``process_results`` of every task and every aggregation function the task
YAMLs name: corpus BLEU, CIDEr, METEOR, ...) and its data loading (``process_docs``): the wall-clock time
during which at least one such call runs (lmms-eval scores documents on several threads). Reports each as a
share of the lmms-eval wall time. Target: scoring <= 5% of the run.

Each repeat is a fresh process, as a real ``lmms-eval`` run is: one-time costs (METEOR's JVM start-up,
module imports, scorer construction) are paid in every repeat rather than hidden by a warm process.

    python benchmarks/bench_plugin_overhead.py [--repeats 3] [--tasks medbench]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

# lmms-eval calls process_results from several threads at once, so summing call durations would count
# overlapping calls twice; keep the intervals and measure the time during which any medbench call runs.
INTERVALS: dict[str, list[tuple[float, float]]] = defaultdict(list)
BY_FUNCTION: dict[str, list[tuple[float, float]]] = defaultdict(list)


def covered(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def _timed(kind: str, label: str, function):
    @functools.wraps(function)  # lmms-eval inspects aggregation signatures
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            interval = (start, time.perf_counter())
            INTERVALS[kind].append(interval)
            BY_FUNCTION[label].append(interval)

    return wrapper


def _instrument() -> int:
    """Wrap medbench's task functions before lmms-eval resolves the YAMLs' ``!function`` references.

    The functions are read off the task YAMLs (process_docs, process_results and every aggregation that is
    medbench's), so a metric added to a task is timed without touching this script.
    """
    import importlib

    from medbench.taskfiles import task_configs

    kinds = {"process_docs": "loading", "process_results": "scoring"}
    targets: dict[str, str] = {}
    for config in task_configs().values():
        for key, kind in kinds.items():
            targets[config[key]] = kind
        for metric in config["metric_list"]:
            aggregation = metric.get("aggregation", "")
            if aggregation.startswith("!function "):
                targets[aggregation] = "scoring"
    for reference, kind in sorted(targets.items()):
        module_name, _, name = reference.removeprefix("!function ").rpartition(".")
        module = importlib.import_module(module_name)
        setattr(module, name, _timed(kind, f"{module_name.rsplit('.', 1)[-1]}.{name}", getattr(module, name)))
    return len(targets)


def single(tasks: str, batch_size: int) -> dict:
    """One evaluation in this process; returns the timings."""
    os.environ.update(MEDBENCH_DATA="demo", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from medbench.taskfiles import tasks_dir
    from medbench.tiny import build_tiny_model

    wrapped = _instrument()
    model_dir = build_tiny_model(Path(tempfile.mkdtemp()) / "tiny-llava", "llava")
    manager = TaskManager("WARNING", include_path=str(tasks_dir()))
    start = time.perf_counter()
    simple_evaluate(
        model="medbench_hf",
        model_args=f"pretrained={model_dir}",
        tasks=[tasks],
        batch_size=batch_size,
        task_manager=manager,
        log_samples=True,
        verbosity="WARNING",
    )
    wall = time.perf_counter() - start
    return {
        "wall": wall,
        "wrapped": wrapped,
        **{kind: covered(intervals) for kind, intervals in INTERVALS.items()},
        "by_function": {label: covered(intervals) for label, intervals in BY_FUNCTION.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tasks", default="medbench")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        print(json.dumps(single(args.tasks, args.batch_size)))
        return

    runs = []
    for _ in range(args.repeats):
        completed = subprocess.run(
            [sys.executable, __file__, "--single", "--tasks", args.tasks, "--batch-size", str(args.batch_size)],
            capture_output=True, text=True, check=True,
        )
        runs.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    wall = statistics.median(run["wall"] for run in runs)
    scoring = statistics.median(run.get("scoring", 0.0) for run in runs)
    loading = statistics.median(run.get("loading", 0.0) for run in runs)
    # METEOR is a Java program: its JVM start-up (seconds, once per process, whatever the data size) is
    # most of its time on small runs, so it is also shown on its own.
    meteor = statistics.median(run["by_function"].get("report.meteor", 0.0) for run in runs)
    print(f"timed {runs[0]['wrapped']} medbench functions named by the task YAMLs; {args.repeats} fresh processes")
    print(f"lmms-eval wall time (median): {wall:.2f} s")
    print(f"medbench scoring (process_results + aggregations): {scoring * 1000:.0f} ms = {100 * scoring / wall:.2f}% of the run (target <= 5%)")
    if meteor:
        print(f"  of which METEOR (Java; mostly its one-time JVM start-up): {meteor * 1000:.0f} ms; everything else: "
              f"{(scoring - meteor) * 1000:.0f} ms = {100 * (scoring - meteor) / wall:.2f}% of the run")
    print(f"medbench data loading + validation (process_docs): {loading * 1000:.0f} ms = {100 * loading / wall:.2f}% of the run")
    heaviest = sorted(runs[0]["by_function"].items(), key=lambda item: -item[1])[:4]
    print("largest shares (first run): " + ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in heaviest))


if __name__ == "__main__":
    main()
