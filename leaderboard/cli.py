"""``medbench leaderboard build|validate`` (also installed as ``medbench-leaderboard``).

Examples::

    medbench leaderboard validate submissions/my-model/
    medbench leaderboard build medbench-demo/results/* submissions/* --baseline baseline --out board/
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from medbench import stats
from medbench.errors import MedbenchError

from .discovery import CACHE_DIR, STATS_CACHE_DIR
from .rules import printable


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``leaderboard`` with its ``build`` and ``validate`` subcommands (entry point ``medbench.commands``)."""
    parser = subparsers.add_parser(
        "leaderboard",
        help="build a verified leaderboard from lmms-eval result folders, or validate a submission",
        description="Build a leaderboard (HTML, Markdown, CSV, plots) from lmms-eval output folders, recomputing "
        "every score from the --log_samples files, or validate one submission. See docs/leaderboard.md.",
    )
    commands = parser.add_subparsers(
        dest="leaderboard_command", metavar="{submit,build,validate,withdraw,export,import,fingerprint}"
    )
    parser.set_defaults(func=lambda args: _missing_subcommand(parser))

    submit = commands.add_parser("submit", help="verify submissions once and append them to a registry")
    submit.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="submission folders (or lmms-eval output folders)")
    _registry_argument(submit, required=True)
    submit.add_argument("--keep-identical", action="store_true",
                        help="note copies instead of rejecting them (the cells of one study)")
    submit.add_argument("--strict", action="store_true", help="exit 1 when any submission is rejected")
    submit.set_defaults(func=run_submit)

    withdraw = commands.add_parser("withdraw", help="take an accepted run off the board (it stays in the registry)")
    withdraw.add_argument("name", metavar="NAME", help="display name of the accepted run")
    withdraw.add_argument("--reason", required=True, help="why (shown on the board)")
    _registry_argument(withdraw, required=True)
    withdraw.set_defaults(func=run_withdraw)

    export = commands.add_parser("export", help="write the registry as JSON lines (to keep a board in git)")
    _registry_argument(export, required=True)
    export.add_argument("--out", type=Path, required=True, metavar="FILE", help="the JSON lines file to write")
    export.set_defaults(func=run_export)

    load = commands.add_parser("import", help="rebuild a registry from a JSON lines export")
    load.add_argument("file", type=Path, metavar="FILE", help="a file written by `leaderboard export`")
    _registry_argument(load, required=True)
    load.set_defaults(func=run_import)

    build = commands.add_parser("build", help="build the board from a registry, or from result folders")
    build.add_argument(
        "runs", nargs="*", type=Path, metavar="RUN",
        help="lmms-eval output folders or submission folders (a temporary registry, in argument order)",
    )
    _registry_argument(build, required=False)
    build.add_argument(
        "--out", type=Path, required=True, help="output folder (index.html, leaderboard.md, leaderboard.csv, plots/)"
    )
    build.add_argument("--baseline", metavar="NAME", help="display name of the run every other run is tested against")
    build.add_argument("--keep-identical", action="store_true",
                       help="keep runs whose answers equal another run's on every item, with a note (the cells of "
                       "one study); by default such duplicates are rejected")
    build.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="TASK=METRIC",
        help="metric to plot and summarise for a task (default: the first per-sample metric of its YAML)",
    )
    build.add_argument(
        "--iterations", type=int, default=stats.DEFAULT_ITERATIONS, help="bootstrap / permutation draws (default 1000)"
    )
    build.add_argument(
        "--alpha", type=float, default=stats.DEFAULT_ALPHA, help="significance level of the paired tests (default 0.05)"
    )
    build.add_argument("--title", default="medbench leaderboard", help="page title")
    build.add_argument("--link", action="append", default=[], metavar="LABEL=HREF",
                       help="a link shown under the title (repeatable), e.g. 'the study's claims=study.md'")
    build.add_argument("--no-plots", action="store_true", help="skip the matplotlib plots")
    build.add_argument(
        "--no-cache",
        action="store_true",
        help=f"re-verify every run and recompute every interval (default: reuse, from OUT/{CACHE_DIR}, verifications "
        "of unchanged files and intervals of unchanged inputs)",
    )
    build.add_argument(
        "--experts", type=Path, metavar="FILE", help="experts_summary.json from `medbench experts import`: adds the expert columns"
    )
    build.add_argument("--strict", action="store_true", help="exit 1 when any submission is rejected")
    build.set_defaults(func=run_build)

    validate = commands.add_parser("validate", help="check a submission against the schema and every trust rule")
    validate.add_argument("run", type=Path, metavar="RUN", help="submission folder (or an lmms-eval output folder)")
    validate.add_argument(
        "--board",
        nargs="+",
        type=Path,
        default=[],
        metavar="RUN",
        help="runs already on the board: also check for duplicates and for a different test set",
    )
    _registry_argument(validate, required=False)
    validate.set_defaults(func=run_validate)

    fingerprint = commands.add_parser(
        "fingerprint",
        help="print the reference-data fingerprint of each task's configured data (for metadata.data_fingerprints)",
    )
    fingerprint.add_argument("tasks", nargs="*", metavar="TASK", help="tasks (default: every medbench task)")
    fingerprint.set_defaults(func=run_fingerprint)


def _registry_argument(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--registry", type=Path, required=required, metavar="DIR",
        help="the registry folder (registry.sqlite inside; created when missing)",
    )


def _missing_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _primary(pairs: list[str]) -> dict[str, str]:
    primary = {}
    for pair in pairs:
        task, sep, metric = pair.partition("=")
        if not sep or not task or not metric:
            raise MedbenchError(f"--metric {pair!r}: write TASK=METRIC, e.g. medbench_mimic_cxr=rouge_l")
        primary[task] = metric
    return primary


def run_build(args: argparse.Namespace) -> int:
    """Build the board into ``args.out``; returns 0 (1 with ``--strict`` when something was rejected)."""
    from . import names
    from .board import build_board, collect
    from .cache import StatsCache, VerificationCache
    from .registry import Registry
    from .render import render_html, render_markdown, write_csv

    if args.iterations < 100:
        raise MedbenchError(f"--iterations {args.iterations}: use at least 100 draws for a 95% interval")
    if not 0 < args.alpha < 1:
        raise MedbenchError(f"--alpha {args.alpha}: choose a level between 0 and 1, e.g. 0.05")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if bool(args.runs) == bool(args.registry):
        raise MedbenchError("build: pass either RUN folders (a temporary registry) or --registry DIR, not both or neither")
    cache = VerificationCache(None if args.no_cache or args.registry else out / CACHE_DIR)
    registry = Registry(args.registry)
    try:
        if args.runs:
            collect(args.runs, registry, cache=cache, keep_identical=args.keep_identical)
        runs, rejected, notes = registry.accepted(), registry.rejections(), registry.notes()
        withdrawn = registry.withdrawals()
    finally:
        registry.close()
    baseline = names.normalise(args.baseline) if args.baseline else None
    stats_cache = StatsCache(None if args.no_cache else out / STATS_CACHE_DIR)
    board = build_board(
        runs, rejected, baseline, _primary(args.metric), args.alpha, args.iterations, notes=notes, stats_cache=stats_cache
    )
    board.notes += [f"{name}: withdrawn on {when} ({reason})" for name, reason, when in withdrawn]
    if not board.rows:
        reasons = "; ".join(str(error) for error in board.rejected) or "no runs"
        raise MedbenchError(f"no run was accepted, nothing to show ({reasons})")
    plots: dict[str, Path] = {}
    if not args.no_plots:
        from .plots import plot_deltas, plot_scores

        (out / "plots").mkdir(exist_ok=True)
        scores = plot_scores(board, out / "plots" / "scores.png")
        if scores:
            plots["Per-task scores with bootstrap 95% confidence intervals"] = scores
        deltas = plot_deltas(board, out / "plots" / "deltas.png")
        if deltas:
            plots["Each trained variant minus its base model (paired, 95% CI)"] = deltas
    extra_html, extra_markdown = [], ""
    if args.experts:
        from . import experts
        from .rules import Rejected

        try:
            panel = experts.match(board, experts.load_summary(args.experts))
            html_section, markdown_section = experts.render_html(panel), experts.render_markdown(panel)
        except (MedbenchError, ValueError, TypeError, KeyError, IndexError, AttributeError, OSError, RuntimeError,
                RecursionError, MemoryError) as error:
            # A malformed experts file is one rejection line; the board is built without the expert columns.
            reason = str(error).replace(str(args.experts), args.experts.name)[:300] or type(error).__name__
            board.rejected.append(Rejected("unreadable", args.experts.name, f"--experts file not used: {reason}"))
        else:
            extra_html.append(html_section)
            extra_markdown = "\n" + markdown_section
            board.notes += [f"expert-reviewed model {label!r} is not on the board" for label in panel.unmatched]
    links = [tuple(link.split("=", 1)) for link in args.link]
    if any(len(link) != 2 or not all(link) for link in links):
        raise MedbenchError(f"--link {args.link!r}: write LABEL=HREF, e.g. 'the study's claims=study.md'")
    (out / "index.html").write_text(render_html(board, plots, args.title, extra_html, links), encoding="utf-8")
    (out / "leaderboard.md").write_text(render_markdown(board) + extra_markdown, encoding="utf-8")
    write_csv(board, out / "leaderboard.csv")
    (out / "rejected.json").write_text(
        json.dumps(
            [{"rule": r.rule, "where": r.where, "reason": r.reason} for r in board.rejected],
            indent=2,
            ensure_ascii=False,
        )
        + "\n",
        encoding="utf-8",
    )
    print(
        f"{len(board.rows)} runs on the board, {len(board.rejected)} rejected"
        + (f" (verification cache: {cache.hits} reused, {cache.misses} verified)" if cache.folder and args.runs else "")
    )
    for error in board.rejected:
        print(f"  rejected [{error.rule}] {error}")
    for note in board.notes:
        print(f"  note: {printable(note)}")
    print(
        f"wrote {out / 'index.html'}, {out / 'leaderboard.md'}, {out / 'leaderboard.csv'}"
        + (f", {len(plots)} plots" if plots else "")
    )
    return 1 if args.strict and board.rejected else 0


def run_validate(args: argparse.Namespace) -> int:
    """Validate one submission; one line per problem; returns 0 when it would be accepted.

    The submission is checked on its own against every per-run rule and the task's reference data, then
    against the accepted runs exactly as ``submit`` would decide (names, look-alike names, copies, weaker
    reference data): those of ``--registry``, or of ``--board`` runs submitted in order to a temporary one.
    Nothing is recorded.
    """
    from .board import _relabelled, collect, screen, source_label
    from .discovery import find_submissions
    from .registry import Registry
    from .rules import Limits, Rejected
    from .verification import board_references, safe_load_run

    references = board_references()
    with Registry(args.registry) as registry:
        if args.board:
            before = len(registry.rejections(limit=10**9))
            collect(args.board, registry, references=references)
            for error in registry.rejections(limit=10**9)[before:]:
                print(f"note: a --board run is itself rejected and ignored: {error}", file=sys.stderr)
        accepted = registry.accepted()
        roots, problems_found = find_submissions([args.run])
        problems = len(problems_found)
        for error in problems_found:
            print(f"medbench: error: rejected [{error.rule}] {error}", file=sys.stderr)
        for root in roots:
            label = source_label(args.run, root)
            try:
                try:
                    run = safe_load_run(root, Limits(), None, references)
                except Rejected as error:
                    raise _relabelled(error, root, label) from None
                run.root = Path(label)
                problem = registry.check(run)
                if problem is None:
                    _, screened_out = screen([*accepted, run])
                    problem = next((error for error in screened_out if error.where == printable(label)), None)
                if problem is not None:
                    raise problem
            except Rejected as error:
                problems += 1
                print(f"medbench: error: rejected [{error.rule}] {error}", file=sys.stderr)
                continue
            samples = sum(len(scores.item_ids) for scores in run.tasks.values())
            verdicts: dict[str, int] = {}
            for scores in run.tasks.values():
                for verdict in scores.checks.values():
                    verdicts[verdict] = verdicts.get(verdict, 0) + 1
            data = ", ".join(sorted({scores.data for scores in run.tasks.values()}))
            print(
                f"ok: {printable(run.name)} ({printable(label)}): {len(run.tasks)} tasks, {samples} samples on {data} data; scores "
                + ", ".join(f"{count} {verdict}" for verdict, count in sorted(verdicts.items()))
            )
            for task, departures in run.nonstandard.items():
                print(f"note: non-standard {task}: {printable('; '.join(departures))}")
            for task, reasons in run.unknown_protocol.items():
                print(f"note: unknown protocol on {task}: {printable('; '.join(reasons))}")
    return 2 if problems else 0


def run_submit(args: argparse.Namespace) -> int:
    """Verify each submission once and append it to the registry; one line per decision."""
    from .board import collect
    from .registry import Registry

    with Registry(args.registry) as registry:
        admissions = collect(args.runs, registry, keep_identical=args.keep_identical)
        for admission in admissions:
            if admission.rejection is not None:
                print(f"  rejected [{admission.rejection.rule}] {admission.rejection}")
            for note in admission.notes:
                print(f"  note: {printable(note)}")
        accepted = sum(a.accepted for a in admissions)
        counts = registry.counts()
    print(
        f"{accepted} accepted, {len(admissions) - accepted} rejected; the registry holds {counts['runs']} runs "
        f"({counts['withdrawals']} withdrawn) and {counts['rejections']} rejections"
    )
    return 1 if args.strict and accepted < len(admissions) else 0


def run_withdraw(args: argparse.Namespace) -> int:
    """Mark an accepted run withdrawn, with the reason."""
    from .registry import Registry

    with Registry(args.registry) as registry:
        registry.withdraw(args.name, args.reason)
    print(f"withdrew {printable(args.name)}: {printable(args.reason)}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Write the registry as JSON lines."""
    from .registry import Registry

    with Registry(args.registry) as registry:
        rows = registry.export(args.out)
    print(f"wrote {rows} rows to {args.out}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    """Rebuild a registry from an export."""
    from .registry import Registry

    with Registry(args.registry) as registry:
        rows = registry.load_export(args.file)
    print(f"imported {rows} rows into {args.registry}")
    return 0


def run_fingerprint(args: argparse.Namespace) -> int:
    """Print each task's reference fingerprints on this installation, as YAML for ``metadata.data_fingerprints``."""
    from medbench.data.fingerprint import reference_data
    from medbench.taskfiles import task_configs

    configs = task_configs()
    unknown = [task for task in args.tasks if task not in configs]
    if unknown:
        raise MedbenchError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(configs)}")
    for task in args.tasks or list(configs):
        print(f"{task}:")
        for reference in reference_data(task, configs[task]):
            print(f"  - {{data: {json.dumps(reference.data)}, sha256: {reference.sha256}, size: {reference.size}}}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``medbench-leaderboard``: an alias of ``medbench leaderboard``."""
    from medbench.cli import main as medbench_main

    return medbench_main(["leaderboard", *(sys.argv[1:] if argv is None else argv)])
