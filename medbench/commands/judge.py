"""``medbench judge``: (re-)score lmms-eval ``--log_samples`` output with the LLM judge.

Examples::

    export MEDBENCH_JUDGE_MODEL=gpt-4.1 MEDBENCH_JUDGE_API_KEY=...
    medbench judge runs/my-model/                      # every *_samples_<task>.jsonl below it
    medbench judge runs/x_samples_medbench_amboss.jsonl --parts nli,fabrication,severity
    medbench judge FILE --scoring authors --data facts.jsonl   # the study's rules and shipped facts

The API key is read from the environment only (a flag would end up in shell history and ``ps``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from medbench.errors import MedbenchError

if TYPE_CHECKING:
    from medbench.judge.config import JudgeConfig

PARTS = ("nli", "fabrication", "severity")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``judge`` subcommand."""
    parser = subparsers.add_parser(
        "judge",
        help="score lmms-eval --log_samples output with the LLM judge",
        description="Score long-form outputs in lmms-eval --log_samples files with the LLM judge "
        "(atomic-fact completeness/hallucination, fabrication, severity). Configure the judge with "
        "MEDBENCH_JUDGE_* environment variables (see docs/judge.md); flags override them.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="samples files (*_samples_<task>.jsonl) or folders holding them")
    parser.add_argument("--parts", default="nli", help=f"comma-separated subset of {','.join(PARTS)} (default: nli)")
    parser.add_argument("--data", type=Path, help="JSON/JSONL with id, reference and optional facts, matched by sample id")
    parser.add_argument("--model", help="judge model (default: $MEDBENCH_JUDGE_MODEL)")
    parser.add_argument("--base-url", help="OpenAI-compatible endpoint (default: $MEDBENCH_JUDGE_BASE_URL)")
    parser.add_argument("--concurrency", type=int, help="requests in flight (default 16)")
    parser.add_argument("--max-retries", type=int, help="retries per request (default 4)")
    parser.add_argument("--timeout", type=float, help="seconds per request (default 120)")
    parser.add_argument("--cache", help="SQLite cache file, or 'off' (default: $MEDBENCH_JUDGE_CACHE or ~/.cache/medbench)")
    parser.add_argument("--prices", type=Path, help="price table (YAML/JSON: model -> {input, output} USD per 1M tokens)")
    parser.add_argument("--scoring", choices=("tolerant", "authors"), help="label parsing: tolerant (default) or the authors' case-sensitive rules")
    parser.add_argument("--limit", type=int, help="judge only the first N samples of each file")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> JudgeConfig:
    """The judge configuration: the environment, with the command-line flags winning."""
    from medbench.judge.config import ENV_CACHE, JudgeConfig, load_prices

    overrides: dict[str, object] = {
        "model": args.model,
        "base_url": args.base_url,
        "concurrency": args.concurrency,
        "max_retries": args.max_retries,
        "timeout": args.timeout,
        "scoring": args.scoring,
        "progress": False if args.no_progress else None,
    }
    env = dict(os.environ)
    if args.cache is not None:
        env[ENV_CACHE] = args.cache  # "off" is understood where the variable is parsed
    if args.prices is not None:
        overrides["prices"] = load_prices(args.prices)
    config = JudgeConfig.from_env(env, **overrides)
    if config is None:
        raise MedbenchError("no judge configured: set MEDBENCH_JUDGE_MODEL (and MEDBENCH_JUDGE_API_KEY / MEDBENCH_JUDGE_BASE_URL) or pass --model")
    return config


def run(args: argparse.Namespace) -> int:
    """Judge every samples file given; returns 0 when every sample got every requested score, 1 otherwise."""
    from medbench.judge.runner import JudgeRunner
    from medbench.judge.samples import find_samples_files, load_reference_data, read_samples_file, write_outputs

    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise MedbenchError(f"--parts {args.parts!r}: choose from {','.join(PARTS)}")
    config = config_from_args(args)
    data = load_reference_data(args.data) if args.data else None
    runner = JudgeRunner(config)
    incomplete = 0
    for path in find_samples_files(args.paths):
        samples = read_samples_file(path, data)
        if args.limit is not None:
            samples.items, samples.doc_ids = samples.items[: args.limit], samples.doc_ids[: args.limit]
        report = runner.judge(samples.items, parts)
        write_outputs(samples, report, parts)
        incomplete += sum(bool(v.failures) for v in report.samples)
        _print_report(samples.task, report, samples.results_path)
    return 1 if incomplete else 0


def _print_report(task: str, report, results_path: Path) -> None:
    print(f"{task}: judge {report.judge['model']} ({', '.join(p['id'] for p in report.judge['prompts'].values())}, scoring={report.judge['scoring']})")
    for metric, stats in report.summary.items():
        mean = "n/a" if stats["mean"] is None else f"{stats['mean']:.4f}"
        stderr = "" if stats["stderr"] is None else f" ± {stats['stderr']:.4f}"
        arrow = "↑" if stats["higher_is_better"] else "↓"
        print(f"  judge_{metric} {arrow} {mean}{stderr}   scored {stats['scored']}, unscored {stats['failed']}")
    usage = report.usage
    cost = "" if usage["cost_usd"] is None else f", cost ${usage['cost_usd']:.4f}"
    print(
        f"  requests {usage['requests']} (retries {usage['retries']}), cache hits {usage['cache_hits']}, "
        f"tokens {usage['prompt_tokens']} in / {usage['completion_tokens']} out{cost}"
    )
    if usage["errors"]:
        print("  request problems: " + ", ".join(f"{k} ×{v}" for k, v in usage["errors"].items()))
    print(f"  wrote {results_path}")
