"""``medbench demo``: the whole evaluation pipeline offline, on the embedded demo data.

It builds a tiny randomly initialised LLaVA-architecture model (no download), evaluates it and the
non-neural baseline on the five medbench tasks through the real lmms-eval with the demo data
(``MEDBENCH_DATA=demo``), and prints a results table. The tiny model's answers are noise: the demo shows the
machinery working end to end, not a medical model.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from medbench.commands.eval import run_lmms_eval
from medbench.data.loading import DEMO_DIR, iter_json_records
from medbench.data.sources import SOURCES
from medbench.results import RunResults, find_runs


def _demo_corpus() -> list[str]:
    texts = []
    for path in sorted(DEMO_DIR.glob("*.jsonl")):
        for _number, record in iter_json_records(path):
            texts += [str(record.get(key, "")) for key in ("question", "answer", "reference")]
    return texts


def demo_environment() -> dict[str, str]:
    """This environment, offline, with every task pointed at the demo data.

    ``MEDBENCH_*`` data and metric settings are dropped so the demo always reads its own data; the judge's
    (``MEDBENCH_JUDGE*``) pass through, so a judge on a local OpenAI-compatible server (or a key) adds the
    judge metrics to the demo table. The demo's offline switches do not stop the judge: they only cover
    the Hugging Face hub.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("MEDBENCH_") or key.startswith("MEDBENCH_JUDGE")}
    env.update(MEDBENCH_DATA="demo", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def format_table(runs: dict[str, RunResults]) -> str:
    """A Markdown table: one row per (task, metric), one column per model, values with standard errors."""
    names = list(runs)
    header = ["task", "metric", *names]
    rows = []
    tasks = sorted({task for run in runs.values() for task in run.tasks})
    for task in tasks:
        metrics = sorted({metric for run in runs.values() if task in run.tasks for metric in run.metrics(task)})
        for metric in metrics:
            cells = []
            for name in names:
                value = runs[name].metrics(task).get(metric) if task in runs[name].tasks else None
                if value is None:
                    cells.append("-")
                else:
                    score, stderr = value
                    cells.append(f"{score:.3f}" + (f" ± {stderr:.3f}" if stderr is not None else ""))
            rows.append([task, metric, *cells])
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    lines += ["| " + " | ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)) + " |" for row in rows]
    return "\n".join(lines)


def run_demo(out: Path, tasks: str = "medbench", architecture: str = "llava", batch_size: int = 8) -> str:
    """Run the demo into ``out`` and return the results table (also written to ``out/summary.md``)."""
    from medbench.tiny import build_tiny_model

    out.mkdir(parents=True, exist_ok=True)
    model_dir = out / "models" / f"tiny-{architecture}"
    print(f"[1/3] building a tiny random {architecture} model in {model_dir}", flush=True)
    build_tiny_model(model_dir, architecture, corpus=_demo_corpus())
    env = demo_environment()
    models = {
        f"tiny-{architecture}": ["--model", "medbench_hf", "--model_args", f"pretrained={model_dir}", "--batch_size", str(batch_size)],
        "baseline": ["--model", "medbench_baseline"],
    }
    runs: dict[str, RunResults] = {}
    for step, (name, model_args) in enumerate(models.items(), start=2):
        print(f"[{step}/3] evaluating {name} on {tasks} (demo data) with lmms-eval", flush=True)
        output = out / "results" / name
        written = run_lmms_eval(
            [*model_args, "--tasks", tasks, "--output_path", str(output), "--verbosity", "WARNING"], env
        )
        runs[name] = next(run for run in find_runs(output) if run.path == written[-1])
    table = format_table(runs)
    (out / "summary.md").write_text(table + "\n", encoding="utf-8")
    return table


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="evaluate a tiny model and a baseline on the embedded demo data, offline")
    parser.add_argument("--out", type=Path, default=Path("medbench-demo"), help="output folder (default: medbench-demo)")
    parser.add_argument("--tasks", default="medbench", help="tasks or groups to run (default: medbench, all five)")
    parser.add_argument("--arch", default="llava", choices=["llava", "qwen2_vl", "qwen2_5_vl"], help="tiny model architecture")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    table = run_demo(args.out, args.tasks, args.arch, args.batch_size)
    print()
    print(table)
    print()
    print(f"results, per-sample logs and summary.md are in {args.out}/ "
          f"(demo data: {', '.join(sorted({s.demo_file for s in SOURCES.values()}))})")
    return 0
