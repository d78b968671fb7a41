"""One loader for a vision-language checkpoint and its processor, used by ``medbench_hf`` and ``medbench train``.

LLaVA checkpoints get their image processor with the PIL backend: transformers' default torchvision backend
resizes slightly differently from the original LLaVA code's PIL bicubic path (on a tiny converted model the
normalised pixels differ by up to 0.015 and the logits by about 2e-3), while ``LlavaImageProcessor(do_pad=True)``
on PIL reproduces the original exactly. lmms-eval's own ``llava_hf`` calls ``AutoProcessor.from_pretrained``
without a backend and so gets the torchvision one: close to the original, not identical.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medbench.errors import MedbenchError

# model_type values whose original preprocessing is PIL-based (the LLaVA family).
PIL_BACKEND_MODEL_TYPES = frozenset({"llava"})


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _model_type(pretrained: str) -> str | None:
    config = Path(pretrained) / "config.json"
    if config.is_file():
        try:
            return json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except (OSError, json.JSONDecodeError):
            return None
    return None


def resolve_dtype(dtype: str, device: str) -> Any:
    """``"auto"`` (bfloat16 on CUDA, float32 elsewhere), ``"checkpoint"`` (the saved dtype) or a torch dtype name."""
    import torch

    if dtype == "checkpoint":
        return "auto"  # from_pretrained's own "auto": the dtype the checkpoint was saved in
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise MedbenchError(f"dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return value


def load_vision_language_model(
    pretrained: str | Path,
    *,
    dtype: str = "auto",
    device: str | None = None,
    device_map: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    chat_template: str | None = None,
) -> tuple[Any, Any]:
    """Load an ``AutoModelForImageTextToText`` checkpoint and its processor.

    Args:
        pretrained: Local folder or hub id.
        dtype: ``"auto"`` (bfloat16 on CUDA, float32 elsewhere), ``"checkpoint"`` or a torch dtype name.
        device: Where to put the model when ``device_map`` is not given; default CUDA when available. ``None``
            with ``device_map`` lets ``from_pretrained`` place it.
        device_map: Passed to ``from_pretrained`` (e.g. ``"auto"``).
        revision: Hub revision.
        trust_remote_code: Passed to ``from_pretrained``.
        attn_implementation: Passed to ``from_pretrained``.
        chat_template: Jinja text replacing the processor's chat template.

    Returns:
        ``(model, processor)``; the model is in eval mode, the tokenizer has a pad token.

    Raises:
        MedbenchError: the checkpoint or processor cannot be loaded, or there is no chat template.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    pretrained = str(pretrained)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": bool(trust_remote_code)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    processor_kwargs = dict(kwargs)
    processor_kwargs.pop("attn_implementation", None)
    if _model_type(pretrained) in PIL_BACKEND_MODEL_TYPES:
        processor_kwargs["backend"] = "pil"
    try:
        processor = AutoProcessor.from_pretrained(pretrained, **processor_kwargs)
        model = AutoModelForImageTextToText.from_pretrained(
            pretrained, dtype=resolve_dtype(dtype, device), device_map=device_map, **kwargs
        )
    except (OSError, ValueError, KeyError) as error:
        raise MedbenchError(
            f"cannot load an image-text-to-text model from {pretrained} ({type(error).__name__}: "
            f"{_first_line(error)}); pass a local checkpoint folder or a reachable hub id"
        ) from None
    if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
        raise MedbenchError(f"{pretrained}: AutoProcessor gave {type(processor).__name__}, not a vision processor")
    if device_map is None:
        model.to(device)
    model.eval()
    if chat_template:
        processor.chat_template = chat_template
    if not getattr(processor, "chat_template", None):
        raise MedbenchError(f"{pretrained} ships no chat template; give one (a .jinja file or a --backbone profile)")
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return model, processor
