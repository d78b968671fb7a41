"""``medbench train`` (alias ``medbench-train``): preference-optimise a vision-language model with a recipe.

Usage::

    medbench train --config trainers/recipes/<recipe>.yaml --model PATH_OR_ID --data FILE --output_dir DIR \\
        [--backbone NAME] [--image_root DIR] [--rejected_image_root DIR] [--resume [PATH|never]] [--key value ...]
    medbench train --list

``--key value`` overrides any recipe setting: medbench's own (``--use_lora``, ``--nll_weight 0.5``) or any
``trl.DPOConfig`` argument (``--beta 0.2``, ``--max_steps 100``, ``--save_steps 500``). A flag without a value means
``true``; a list is comma-separated (``--lora_target_modules q_proj,v_proj``); ``null`` means None.
Run under ``accelerate launch`` for several GPUs (configs in ``trainers/accelerate/``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from medbench.errors import MedbenchError

PROG = "medbench train"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` to the ``medbench`` command line (entry point ``medbench.commands``)."""
    parser = subparsers.add_parser(
        "train",
        help="preference-optimise a vision-language model with one of the study's recipes",
        description="Preference optimisation (DPO family) for vision-language models, recipe by recipe.",
        epilog="Any other --key value sets a recipe field or a trl.DPOConfig argument. See trainers/README.md.",
    )
    parser.add_argument("--list", action="store_true", help="list the recipes and backbone profiles, then exit")
    parser.add_argument("--config", help="recipe YAML file (or a shipped recipe name, e.g. dpo)")
    parser.add_argument("--model", help="model checkpoint directory or Hugging Face hub id")
    parser.add_argument("--data", help="preference data file (.jsonl / .json)")
    parser.add_argument("--output_dir", help="run folder for the checkpoint, merged model, metadata and plot")
    parser.add_argument("--backbone", help="backbone profile from trainers/backbones/ (see --list)")
    parser.add_argument("--image_root", help="folder relative image paths resolve against (default: data folder)")
    parser.add_argument("--rejected_image_root", help="folder for relative rejected_image paths (default: image_root)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default="auto",
        help="resume from the latest complete checkpoint in --output_dir (default: automatically when there is "
        "one); `--resume PATH` picks one, `--resume never` starts over",
    )
    parser.set_defaults(func=run, passthrough=True)


def parse_overrides(tokens: list[str]) -> dict[str, Any]:
    """Turn ``["--beta", "0.2", "--use_lora", "--x=1"]`` into ``{"beta": "0.2", "use_lora": True, "x": "1"}``.

    Values stay strings: the recipe loader types each from its field's annotation, as it types the recipe file's
    values (so ``--save_strategy no`` stays the word "no").

    Raises:
        MedbenchError: a token that is not an option.
    """
    overrides: dict[str, Any] = {}
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if not token.startswith("--") or token == "--":
            raise MedbenchError(f"unexpected argument {token!r}; options look like --key value")
        key, eq, value = token[2:].partition("=")
        key = key.replace("-", "_")
        if eq:
            overrides[key] = value
            index += 1
        elif index + 1 < len(tokens) and not tokens[index + 1].startswith("--"):
            overrides[key] = tokens[index + 1]
            index += 2
        else:
            overrides[key] = True
            index += 1
    return overrides


def run(args: argparse.Namespace) -> int:
    """Train one recipe (``medbench train``); unknown ``--key value`` pairs in ``args.extra`` are overrides."""
    if args.list:
        from .docs import list_text

        print(list_text())
        return 0
    missing = [name for name in ("config", "model", "data", "output_dir") if getattr(args, name) is None]
    if missing:
        raise MedbenchError(
            f"missing --{', --'.join(missing)} (usage: {PROG} --config RECIPE --model PATH --data FILE "
            "--output_dir DIR)"
        )
    overrides = parse_overrides(args.extra)
    if args.backbone:
        overrides["backbone"] = args.backbone
    from .config import load_recipe

    recipe = load_recipe(args.config, overrides)
    # Our progress messages at INFO; other libraries stay at WARNING (transformers logs through its own handler).
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("medbench.train").setLevel(logging.INFO)
    from .run import train

    result = train(
        recipe,
        args.model,
        args.data,
        args.output_dir,
        image_root=args.image_root,
        rejected_image_root=args.rejected_image_root,
        resume=args.resume,
    )
    if result.model_dir is not None:
        print(f"{PROG}: done; model for evaluation: {result.model_dir}")
    else:
        print(f"{PROG}: done; LoRA adapter (not merged: merge_lora is false) in {result.output_dir}")
    print(f"{PROG}: metadata: {result.metadata_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``medbench-train``: an alias of ``medbench train``."""
    from medbench.cli import main as medbench_main

    return medbench_main(["train", *(sys.argv[1:] if argv is None else argv)])
