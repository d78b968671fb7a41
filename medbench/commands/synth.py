"""``medbench synth vqa|model``: the tiny study's synthetic-lesion VQA set and the small model it teaches."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth", help="generate the synthetic-lesion VQA set and the small LLaVA model of the tiny study (offline)"
    )
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    actions = parser.add_subparsers(dest="synth_command", metavar="{vqa,model}")
    vqa = actions.add_parser("vqa", help="train/test VQA items: synthetic lesions drawn on the bundled real images",
                             description="Write OUT/train.jsonl, OUT/test.jsonl, OUT/images/ and OUT/manifest.json "
                             "(see medbench/synth.py for the questions).")
    vqa.add_argument("--out", type=Path, required=True, help="output folder")
    vqa.add_argument("--train", type=int, default=4000, help="training items (default 4000)")
    vqa.add_argument("--test", type=int, default=400, help="held-out items (default 400)")
    vqa.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    vqa.add_argument("--seed", type=int, default=0, help="seed (default 0); the same seed gives identical files")
    vqa.add_argument("--no_progress", action="store_true", help="no progress bar")
    vqa.set_defaults(func=_vqa)
    model = actions.add_parser("model", help="a randomly initialised small LLaVA whose tokenizer knows the data's words",
                               description="Build the untrained model the tiny study teaches (0.5 M parameters: 64 px "
                               "images in 16 px patches, 64-wide vision tower, 128-wide language model).")
    model.add_argument("--out", type=Path, required=True, help="output folder (a transformers checkpoint)")
    model.add_argument("--corpus", type=Path, action="append", default=[], required=True,
                       help="JSONL file whose questions and answers the tokenizer must know (repeatable)")
    model.add_argument("--size", choices=("study", "demo"), default="study", help="model size (default study)")
    model.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    model.set_defaults(func=_model)


def _vqa(args: argparse.Namespace) -> int:
    from medbench.synth import make_lesion_vqa

    manifest = make_lesion_vqa(args.out, args.train, args.test, seed=args.seed, size=args.size,
                               progress=not args.no_progress)
    print(f"medbench synth vqa: {manifest['train']} train and {manifest['test']} test items -> {args.out}")
    return 0


def _model(args: argparse.Namespace) -> int:
    from medbench.errors import MedbenchError
    from medbench.synth import corpus_of
    from medbench.tiny import build_tiny_model

    missing = [str(path) for path in args.corpus if not path.is_file()]
    if missing:
        raise MedbenchError(f"medbench synth model: --corpus {missing[0]} does not exist; run `medbench synth vqa` first")
    out = build_tiny_model(args.out, "llava", corpus=corpus_of(args.corpus), seed=args.seed, size=args.size)
    print(f"medbench synth model: untrained {args.size} LLaVA -> {out}")
    return 0
