"""``medbench judge``: (re-)score lmms-eval ``--log_samples`` output with the LLM judge.

Examples::

    export MEDBENCH_JUDGE_MODEL=gpt-4.1 MEDBENCH_JUDGE_API_KEY=...
    medbench judge runs/my-model/                      # every long-form *_samples_<task>.jsonl below it
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
from medbench.judge.parts import PARTS, parse_parts

if TYPE_CHECKING:
    from medbench.judge.config import JudgeConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``judge`` subcommand."""
    parser = subparsers.add_parser(
        "judge",
        help="score lmms-eval --log_samples output with the LLM judge",
        description="Score long-form outputs in lmms-eval --log_samples files with the LLM judge "
        "(atomic-fact completeness/hallucination, fabrication, severity). Configure the judge with "
        "MEDBENCH_JUDGE_* environment variables (see docs/judge.md); flags override them.",
    )
    parser.add_argument(
        "paths", nargs="+", type=Path,
        help="samples files (*_samples_<task>.jsonl) or folders holding them (only long-form tasks are judged)",
    )
    parser.add_argument("--parts", default="nli", help=f"comma-separated subset of {','.join(PARTS)} (default: nli)")
    parser.add_argument("--data", type=Path, help="JSON/JSONL with id, reference and optional facts, matched by sample id")
    parser.add_argument("--model", help="judge model (default: $MEDBENCH_JUDGE_MODEL)")
    parser.add_argument("--base-url", help="OpenAI-compatible endpoint (default: $MEDBENCH_JUDGE_BASE_URL)")
    parser.add_argument("--concurrency", type=int, help="requests in flight (default 16)")
    parser.add_argument("--max-retries", type=int, help="retries per request after 5xx/timeouts/connection errors (default 4)")
    parser.add_argument(
        "--retry-unparseable", action="store_true", default=None,
        help="ask again requests whose earlier answers could not be parsed (they are skipped by default)",
    )
    parser.add_argument(
        "--fixed-concurrency", action="store_true",
        help="keep --concurrency requests in flight regardless of 429s and rate-limit headers",
    )
    parser.add_argument("--timeout", type=float, help="seconds per request (default 120)")
    parser.add_argument("--cache", help="SQLite cache file, or 'off' (default: $MEDBENCH_JUDGE_CACHE or ~/.cache/medbench)")
    parser.add_argument("--prices", type=Path, help="price table (YAML/JSON: model -> {input, output} USD per 1M tokens)")
    parser.add_argument("--scoring", choices=("tolerant", "authors"), help="label parsing: tolerant (default) or the authors' case-sensitive rules")
    parser.add_argument("--limit", type=int, help="judge only the first N samples of each file")
    parser.add_argument(
        "--batch", action="store_true",
        help="use the OpenAI Batch API (half price, answers within 24 h; resumable: re-run the same command)",
    )
    parser.add_argument("--batch-poll", type=float, default=30.0, help="seconds between Batch API status checks (default 30)")
    parser.add_argument(
        "--retry-failed", action="store_true",
        help="with --batch: send again the requests an earlier batch reported as failed (they are kept as failures by default)",
    )
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
        "retry_unparseable": args.retry_unparseable,
        "adaptive_rate": False if args.fixed_concurrency else None,
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
    """Judge every long-form samples file given, all in one concurrent batch.

    Returns 0 when every sample got every requested score, 1 otherwise. A run that cannot work (bad key,
    unreachable URL, a judge whose answers do not parse) stops with one line (exit 2); the answers received
    until then stay in the cache, so the next run resumes.
    """
    from medbench.judge.runner import JudgeRunner
    from medbench.judge.samples import (
        find_samples_files,
        load_reference_data,
        read_samples_file,
        task_of,
        write_outputs,
    )

    parts = parse_parts(args.parts)
    config = config_from_args(args)
    data = load_reference_data(args.data) if args.data else None
    paths, skipped = find_samples_files(args.paths)
    if skipped:
        print(f"skipping {len(skipped)} file(s) of VQA or unknown tasks: {', '.join(sorted({str(task_of(p)) for p in skipped}))}")
    files = [read_samples_file(path, data) for path in paths]
    if args.limit is not None:
        for samples in files:
            samples.items, samples.doc_ids = samples.items[: args.limit], samples.doc_ids[: args.limit]
    batches = [samples.items for samples in files]
    driver = None
    try:
        if args.batch:
            from medbench.judge.batch import BatchDriver, state_folder_for
            from medbench.judge.cache import JudgeCache

            cache = JudgeCache(config.cache_path)
            driver = BatchDriver(config, state_folder_for(args.paths), poll_seconds=args.batch_poll, retry_failed=args.retry_failed)
            reports = driver.run(lambda transport: JudgeRunner(config, cache=cache, transport=transport).judge_many(batches, parts))
            reports[0].usage.update(driver.billing())  # one dict, shared by the reports of one run
        else:
            reports = JudgeRunner(config).judge_many(batches, parts)
    except MedbenchError as stop:
        # A stop keeps what was done: answered samples scored, the rest unscored with the stop's reason.
        partial = getattr(stop, "partial", None)
        # Nothing answered (a bad key, a dead URL): nothing to write, and an earlier run's results stay as they are.
        if partial and any(verdict.scores for report in partial for verdict in report.samples):
            if driver is not None:
                partial[0].usage.update(driver.billing())
            for samples, report in zip(files, partial):
                report.usage["stopped"] = str(stop)
                write_outputs(samples, report, parts)
                print(f"{samples.task}: run stopped; wrote {sum(not v.failures for v in report.samples)} scored and "
                      f"{sum(bool(v.failures) for v in report.samples)} unscored sample(s) to {samples.results_path}")
        raise
    incomplete = 0
    for samples, report in zip(files, reports):
        write_outputs(samples, report, parts)
        incomplete += sum(bool(v.failures) for v in report.samples)
        _print_report(samples.task, report, samples.results_path)
    _print_usage(reports[0].usage, len(files))
    return 1 if incomplete else 0


def _print_report(task: str, report, results_path: Path) -> None:
    print(f"{task}: judge {report.judge['model']} ({', '.join(p['id'] for p in report.judge['prompts'].values())}, scoring={report.judge['scoring']})")
    for metric, stats in report.summary.items():
        mean = "n/a" if stats["mean"] is None else f"{stats['mean']:.4f}"
        stderr = "" if stats["stderr"] is None else f" ± {stats['stderr']:.4f}"
        arrow = "↑" if stats["higher_is_better"] else "↓"
        print(f"  judge_{metric} {arrow} {mean}{stderr}   scored {stats['scored']}, unscored {stats['failed']}")
    failed = [v for v in report.samples if v.failures]
    if failed:
        reason = next(iter(failed[0].failures.values()))
        print(f"  e.g. {failed[0].id}: {reason}")
    print(f"  wrote {results_path}")


def _print_usage(usage: dict, files: int) -> None:
    cost = "" if usage["cost_usd"] is None else f", cost ${usage['cost_usd']:.4f}"
    print(
        f"judge usage: requests {usage['requests']} (retries {usage['retries']}), cache hits {usage['cache_hits']}, "
        f"tokens {usage['prompt_tokens']} in / {usage['completion_tokens']} out{cost} ({files} file(s))"
    )
    if usage["errors"]:
        print("  request problems: " + ", ".join(f"{k} ×{v}" for k, v in usage["errors"].items()))
