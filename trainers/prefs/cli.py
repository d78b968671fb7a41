"""``medbench prefs build``: preference records for a recipe from a supervised VQA data set.

Usage::

    medbench prefs build INPUT --recipe NAME --output_dir DIR [--seed N] [--mode rules|llm]
        [--error_types rules|llm] [--relevance offline|llm]
        [--corruption noise|crop|blackout|blur|fill] [--control] [--sigma S] [--radius R] [--max_area F] [--blackout_region full]
        [--rules yes_no,presence_flip,swap,number] [--weight_range LOW,HIGH] [--image_root DIR] [--limit N]
        [--llm_model NAME] [--llm_base_url URL] [--no_progress]

INPUT is a JSONL/JSON file (a task's local file, or the trainer's schema) or a medbench task name.
The LLM steps (``--mode llm``: rejected answers, ``--error_types llm``: error-type classifier, ``--relevance llm``:
MMedPO clinical-relevance weights) read the judge's settings (MEDBENCH_JUDGE_MODEL, MEDBENCH_JUDGE_BASE_URL,
MEDBENCH_JUDGE_API_KEY, concurrency, retries, cache; see docs/judge.md); ``--llm_model`` / ``--llm_base_url``
override them. They share one client and one cost report.
"""

from __future__ import annotations

import argparse

from medbench.errors import MedbenchError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``prefs build`` and ``prefs score`` to the ``medbench`` command line (entry point ``medbench.commands``)."""
    prefs = subparsers.add_parser("prefs", help="build preference data (chosen/rejected pairs, corrupted images)")
    inner = prefs.add_subparsers(dest="prefs_command", metavar="SUBCOMMAND")
    parser = inner.add_parser(
        "build",
        help="preference records for a recipe from (image, question, answer) data",
        description="Build preference records (trainer schema), derived images and a manifest for one recipe.",
    )
    parser.add_argument("input", help="JSONL/JSON file or medbench task name (e.g. medbench_vqa_rad)")
    parser.add_argument("--recipe", required=True, help="trainer recipe the records are for (see medbench train --list)")
    parser.add_argument("--output_dir", required=True, help="folder for prefs.jsonl, images/ and manifest.json")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    parser.add_argument("--mode", choices=("rules", "llm"), default="rules", help="rejected answers from rules or an LLM")
    parser.add_argument("--error_types", choices=("rules", "llm"), default="rules",
                        help="error types from the rule-based tagger or an LLM classifier (falls back to rules; counted)")
    parser.add_argument("--relevance", choices=("offline", "llm"), default="offline",
                        help="MMedPO weights from the offline error-type table or an LLM's clinical-relevance score "
                             "(falls back to the table; counted)")
    parser.add_argument("--corruption", choices=("noise", "crop", "blackout", "blur", "fill"), help="rejected_image kind")
    parser.add_argument("--control", action="store_true",
                        help="also write control_image m″: the same corruption on a lesion-free region of the same size")
    parser.add_argument("--sigma", type=float, help="noise: standard deviation in grey levels (default 60)")
    parser.add_argument("--radius", type=float, help="blur: Gaussian radius in pixels (default 8)")
    parser.add_argument("--max_area", type=float, help="crop: largest kept area fraction (default 0.2)")
    parser.add_argument("--blackout_region", choices=("region", "full"), help="blackout: lesion/default region or all")
    parser.add_argument("--rules", help="comma-separated offline rules to use (yes_no, presence_flip, swap, number)")
    parser.add_argument("--weight_range", default="0.5,1.5", help="MMedPO weight range LOW,HIGH (default 0.5,1.5)")
    parser.add_argument("--image_root", help="folder relative image paths resolve against (default: input's folder)")
    parser.add_argument("--limit", type=int, help="build at most this many records")
    parser.add_argument("--prompt_of", metavar="TASK",
                        help="give the questions the prompt TASK evaluates with (e.g. medbench_vqa_rad)")
    parser.add_argument("--llm_model", help="LLM steps: model name (default MEDBENCH_JUDGE_MODEL)")
    parser.add_argument("--llm_base_url", help="LLM steps: OpenAI-compatible endpoint (default MEDBENCH_JUDGE_BASE_URL)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    score = inner.add_parser(
        "score",
        help="held-out preference accuracy, margin and image dependence of a model",
        description="Score preference records under a model: log π(y_w|m) − log π(y_l|m) (margin, accuracy) and "
        "log π(y_w|m) − log π(y_w|m′) (image dependence). Writes scores.jsonl and summary.json.",
    )
    score.add_argument("model", help="checkpoint folder (or hub id) of an image-text-to-text model")
    score.add_argument("data", help="preference file (trainer schema), e.g. from `prefs build TEST.jsonl --recipe mdpo`")
    score.add_argument("--output_dir", required=True, help="folder for scores.jsonl and summary.json")
    score.add_argument("--image_root", help="folder relative image paths resolve against (default: the file's folder)")
    score.add_argument("--batch_size", type=int, default=32, help="records per forward pass (default 32)")
    score.add_argument("--max_length", type=int, default=1024, help="longest row in tokens, as in training")
    score.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    score.add_argument("--no_progress", action="store_true", help="no progress bar")
    score.set_defaults(func=run_score)
    prefs.set_defaults(func=lambda args: prefs.print_help() or 2)


def run_score(args: argparse.Namespace) -> int:
    """Run ``medbench prefs score``."""
    from ..probe import score_file

    summary = score_file(args.model, args.data, args.output_dir, image_root=args.image_root,
                         batch_size=args.batch_size, max_length=args.max_length, device=args.device,
                         progress=not args.no_progress)
    parts = [f"{summary['records']} records"]
    for name in ("correct", "margin", "image_dependence"):
        entry = summary[name]
        if entry["n"]:
            label = "preference accuracy" if name == "correct" else name.replace("_", " ")
            parts.append(f"{label} {entry['mean']:.3f}")
    print(f"medbench prefs score: {', '.join(parts)} -> {args.output_dir}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``medbench prefs build``."""
    from .build import BuildOptions, build

    try:
        low, high = (float(v) for v in args.weight_range.split(","))
    except ValueError:
        raise MedbenchError(f"--weight_range {args.weight_range!r} must be LOW,HIGH (e.g. 0.5,1.5)") from None
    if args.max_area is not None and not 0 < args.max_area <= 0.2:
        raise MedbenchError(f"--max_area {args.max_area} must lie in (0, 0.2] (mDPO keeps at most 20 % of the image)")
    corruption_options: dict[str, dict] = {}
    for kind, key, value in (("noise", "sigma", args.sigma), ("blur", "radius", args.radius),
                             ("crop", "max_area", args.max_area), ("blackout", "region", args.blackout_region)):
        if value is not None:
            corruption_options.setdefault(kind, {})[key] = value
    if args.max_area is not None:
        corruption_options["crop"]["min_area"] = min(0.05, args.max_area)
    options = BuildOptions(
        recipe=args.recipe,
        seed=args.seed,
        mode=args.mode,
        error_types=args.error_types,
        relevance=args.relevance,
        corruption=args.corruption,
        corruption_options=corruption_options,
        rules=[r.strip() for r in args.rules.split(",") if r.strip()] if args.rules else None,
        weight_range=(low, high),
        image_root=args.image_root,
        limit=args.limit,
        prompt_of=args.prompt_of,
        control=args.control,
        progress=not args.no_progress,
    )
    llm = None
    steps = [f"--{flag} llm" for flag in ("mode", "error_types", "relevance") if getattr(args, flag) == "llm"]
    if steps:
        from medbench.judge.config import JudgeConfig

        from .llm import PrefsLLM

        config = JudgeConfig.from_env(model=args.llm_model, base_url=args.llm_base_url,
                                      progress=False)
        if config is None:
            raise MedbenchError(f"{' and '.join(steps)} needs a model: set MEDBENCH_JUDGE_MODEL or pass --llm_model")
        llm = PrefsLLM(config)
    report = build(args.input, args.output_dir, options, llm=llm)
    counts = report.manifest["counts"]
    print(f"medbench prefs build: {counts['built']} of {counts['input']} records built for recipe {args.recipe} "
          f"({counts['skipped']} skipped) -> {report.records_path}")
    for entry in report.manifest["skipped"]:
        print(f"  skipped {entry['where']} (id {entry['id']}): {entry['problem']}")
    if counts["rule"]:
        print("  rules: " + ", ".join(f"{k} {v}" for k, v in counts["rule"].items()))
    if counts["error_type"]:
        print("  error types: " + ", ".join(f"{k} {v}" for k, v in counts["error_type"].items()))
    for name, used in (("error_type", args.error_types == "llm"), ("relevance", args.relevance == "llm")):
        if used:
            sources = ", ".join(f"{k} {v}" for k, v in counts[f"{name}_source"].items())
            fallbacks = ", ".join(f"{k} {v}" for k, v in counts[f"{name}_fallback"].items()) or "none"
            print(f"  {name.replace('_', ' ')} sources: {sources} (fallback reasons: {fallbacks})")
    if report.manifest["llm"]:
        stats = report.manifest["llm"]["stats"]
        print(f"  llm: {stats['requests']} requests, {stats['retries']} retries, {stats['failures']} failures, "
              f"cost {stats['cost_usd'] if stats['cost_usd'] is not None else 'unknown'} USD")
    print(f"  manifest: {report.manifest_path}")
    return 0
