"""``medbench experts``: blinded expert review of model outputs.

Examples::

    medbench experts export runs/model-a runs/model-b --n 60 --seed 1 --out review/
    #  -> review/annotators/ (form.html, items.csv, items.xlsx, images/) for the clinicians,
    #     review/key.json (which code is which model) for you
    medbench experts import annotations_*.json filled.csv --key review/key.json --out review/results
    #  -> experts_summary.json (for `medbench leaderboard build --experts`), annotations_unblinded.csv
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``experts`` subcommand with ``export`` and ``import``."""
    parser = subparsers.add_parser(
        "experts",
        help="blinded clinician review: export an annotation form, import the grades",
        description="Export blinded model outputs for clinicians to grade with the versioned rubric, and import "
        "their grades: per-model scores with CIs, inter-rater agreement and judge-expert agreement.",
    )
    commands = parser.add_subparsers(dest="experts_command", metavar="ACTION", required=True)
    export = commands.add_parser(
        "export",
        help="sample items from runs and write the blinded annotation form, CSV/XLSX and key",
        description="Sample documents every run answered (stratified by task), blind the outputs (random codes, "
        "order shuffled per item) and write OUT/annotators/ (form.html, items.csv, items.xlsx) and OUT/key.json.",
    )
    export.add_argument("runs", nargs="+", metavar="RUNS", help="lmms-eval output folders (run with --log_samples), as FOLDER or LABEL=FOLDER")
    export.add_argument("--n", type=int, required=True, help="number of documents to sample")
    export.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    export.add_argument("--out", type=Path, required=True, help="new, empty export folder")
    export.add_argument("--tasks", help="comma-separated tasks to sample from (default: every task all runs share)")
    export.add_argument("--stratify-judge", action="store_true", help="also stratify by the worst judge severity among an item's outputs")
    export.set_defaults(func=run_export)
    imports = commands.add_parser(
        "import",
        help="validate returned annotations, unblind them and compute summaries and agreement",
        description="Validate annotation files (.json from the form, .csv, .xlsx) against the export key, unblind "
        "them and write experts_summary.json and annotations_unblinded.csv.",
    )
    imports.add_argument("files", nargs="+", type=Path, metavar="FILES", help="annotation files, one per annotator")
    imports.add_argument("--key", type=Path, required=True, help="the key.json of the export")
    imports.add_argument("--out", type=Path, help="output folder (default: results/ beside the key)")
    imports.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    imports.add_argument(
        "--allow-partial", action="store_true",
        help="import files that lack some of the export's rows (reported); by default such a file is refused",
    )
    imports.set_defaults(func=run_import)


def run_export(args: argparse.Namespace) -> int:
    from medbench.experts.export import export

    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()] if args.tasks else None
    written = export(args.runs, args.out, args.n, args.seed, args.stratify_judge, tasks)
    print(f"export {written['export_id']}: {written['items']} items, {written['outputs']} blinded outputs")
    print(f"  for the annotators: {written['annotators']} (form.html, items.csv{', items.xlsx' if written['xlsx'] else ''})")
    if not written["xlsx"]:
        print("  items.xlsx skipped: openpyxl is not installed (pip install openpyxl); items.csv has the same content")
    print(f"  key (keep it from the annotators): {written['key']}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from medbench.experts.annotations import AnnotationProblems, load_key, read_annotations
    from medbench.experts.summary import SUMMARY_FILE, format_summary, summarise, write_unblinded

    key = load_key(args.key)
    try:
        annotations = read_annotations(args.files, key, allow_partial=args.allow_partial)
    except AnnotationProblems as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        raise
    for path, absent in annotations.missing.items():
        print(f"{path}: imported without its {len(absent)} missing row(s) ({', '.join(absent[:8])}{', ...' if len(absent) > 8 else ''})")
    summary = summarise(annotations, key, seed=args.seed)
    out = args.out or args.key.parent / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_unblinded(out / "annotations_unblinded.csv", annotations, key)
    print(format_summary(summary))
    print(f"wrote {out / SUMMARY_FILE} and {out / 'annotations_unblinded.csv'}")
    return 0
