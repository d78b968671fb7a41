"""``medbench convert``: an original-format LLaVA checkpoint -> a transformers LLaVA folder (see medbench.convert)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert an original LLaVA checkpoint (llava_llama/llava_mistral/llava_qwen2) to transformers LLaVA",
        description="Convert an original-format LLaVA checkpoint folder (LLaVA-Med v1.5, HuatuoGPT-Vision-7B) into a "
        "transformers LlavaForConditionalGeneration folder with sharded safetensors, processor and chat template. "
        "Local folders only; nothing is fetched. Needs torch, transformers and safetensors.",
    )
    parser.add_argument("source", help="the original checkpoint folder")
    parser.add_argument("out", nargs="?", help="the folder to write (required unless --dry-run)")
    parser.add_argument(
        "--vision-tower",
        metavar="DIR",
        help="local CLIP folder replacing the config's mm_vision_tower (needed when that is a hub id)",
    )
    parser.add_argument(
        "--vision-weights",
        choices=("stored", "folder"),
        help="which CLIP weights to convert: the copy stored in the checkpoint or the vision-tower folder's "
        "(default: what the family's original code runs — folder for LLaVA/LLaVA-Med, stored for HuatuoGPT)",
    )
    parser.add_argument("--chat-style", help="chat template: llava_med or huatuogpt_vision (default: by family)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest output shard (default 5GB)")
    parser.add_argument("--dry-run", action="store_true", help="report what would be converted; write nothing")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.set_defaults(func=_convert)


def _convert(args: argparse.Namespace) -> int:
    from medbench.errors import MedbenchError

    if not args.dry_run and not args.out:
        raise MedbenchError("medbench convert: give the output folder (or --dry-run)")
    try:
        from medbench.convert.llava import convert
    except ImportError as error:
        raise MedbenchError(f"medbench convert needs torch, transformers and safetensors ({error})") from None
    convert(
        args.source,
        args.out,
        vision_tower=args.vision_tower,
        vision_weights=args.vision_weights,
        chat_style=args.chat_style,
        max_shard_size=args.max_shard_size,
        dry_run=args.dry_run,
        overwrite=args.overwrite,
    )
    return 0
