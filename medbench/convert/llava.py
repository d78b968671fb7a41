"""Convert an original-format LLaVA checkpoint to a transformers ``LlavaForConditionalGeneration`` folder.

Input families (``model_type`` in the original ``config.json``): ``llava_llama``, ``llava_mistral`` (LLaVA-Med
v1.5) and ``llava_qwen2`` (HuatuoGPT-Vision-7B). Everything the original code reads is read from that
``config.json``: ``mm_projector_type``, ``mm_vision_select_layer``, ``mm_vision_select_feature``,
``mm_hidden_size``, ``image_aspect_ratio``, ``mm_use_im_start_end``, ``mm_vision_tower``.

The vision tower. Both published checkpoints store a CLIP copy under ``model.vision_tower.vision_tower.*``, and
the two codebases disagree on which copy they run:

* LLaVA / LLaVA-Med (``llava_llama``, ``llava_mistral``) ignore the stored copy and load the folder named by
  ``mm_vision_tower`` (a hub id such as ``openai/clip-vit-large-patch14-336``). Nothing is fetched here, so that
  folder must exist locally: ``mm_vision_tower`` as a local path, or ``--vision-tower DIR``.
* HuatuoGPT-Vision (``llava_qwen2``) runs the stored copy; its config and image processor come from
  ``mm_vision_tower`` resolved against the checkpoint folder (``./vit/...``). Where that folder is missing the
  original silently falls back to ``openai/clip-vit-large-patch14-336``; here that is an error asking for
  ``--vision-tower DIR``.

``--vision-weights stored|folder`` overrides the family's choice; the copy used is recorded in
``medbench_conversion.json`` next to the converted weights.

Output: sharded safetensors, ``config.json``, ``generation_config.json``, the processor (tokenizer with an
``<image>`` token, ``LlavaImageProcessor`` with ``do_pad`` from ``image_aspect_ratio``) and the study's chat
template for the family (:mod:`medbench.prompts`). Tensors are streamed one source shard at a time, so the peak
memory is about one source shard plus one output shard.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbench.errors import MedbenchError

FAMILIES: dict[str, str] = {"llava_llama": "llama", "llava_mistral": "mistral", "llava_qwen2": "qwen2"}
DEFAULT_CHAT_STYLE: dict[str, str] = {
    "llava_llama": "llava_med",
    "llava_mistral": "llava_med",
    "llava_qwen2": "huatuogpt_vision",
}
# Which CLIP copy the family's original code runs (see the module docstring).
DEFAULT_VISION_WEIGHTS: dict[str, str] = {"llava_llama": "folder", "llava_mistral": "folder", "llava_qwen2": "stored"}
HUATUO_FALLBACK_TOWER = "openai/clip-vit-large-patch14-336"
IMAGE_TOKEN = "<image>"
IM_START, IM_END = "<im_start>", "<im_end>"
RECORD_NAME = "medbench_conversion.json"

# Keys of the original config that describe the multimodal wrapper or its training, not the language model.
_NON_TEXT_KEYS = {
    "architectures", "_name_or_path", "model_type", "transformers_version", "torch_dtype", "dtype",
    "image_aspect_ratio", "image_grid_pinpoints", "tokenizer_model_max_length", "tokenizer_padding_side",
    "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "unfreeze_mm_vision_tower", "use_mm_proj", "feature_outs",
    "img_size", "vision_backbone", "segtok_posembed", "mm_patch_merge_type", "auto_map", "quantization_config",
}
_CLIP_TEXT_HALF = re.compile(r"^(text_model\.|text_projection\.|visual_projection\.|logit_scale$)")


@dataclass
class Plan:
    """What a conversion will do, worked out from the original config and folders before any tensor moves."""

    source: Path
    family: str
    text_type: str
    original: dict[str, Any]
    vision_dir: Path | None
    vision_weights: str
    projector_type: str
    select_layer: int
    select_feature: str
    do_pad: bool
    use_im_start_end: bool
    chat_style: str
    notes: list[str] = field(default_factory=list)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MedbenchError(f"{path}: missing; {what}") from None
    except json.JSONDecodeError as error:
        raise MedbenchError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(data, dict):
        raise MedbenchError(f"{path}: expected a JSON object")
    return data


def make_plan(
    source: str | Path,
    vision_tower: str | Path | None = None,
    vision_weights: str | None = None,
    chat_style: str | None = None,
) -> Plan:
    """Read the original ``config.json`` and decide the vision tower copy, projector and preprocessing.

    Args:
        source: The original checkpoint folder.
        vision_tower: A local CLIP folder (``config.json``, ``preprocessor_config.json`` and, when its weights
            are used, ``*.safetensors``/``pytorch_model.bin``) replacing ``mm_vision_tower``.
        vision_weights: ``"stored"`` or ``"folder"``; default: what the family's original code does.
        chat_style: A :data:`medbench.prompts.CHAT_STYLES` name; default: the family's.

    Raises:
        MedbenchError: not a supported original checkpoint, or a needed folder is missing.
    """
    from medbench.prompts import CHAT_STYLES

    source = Path(source)
    if not source.is_dir():
        raise MedbenchError(f"{source}: not a folder; pass the original checkpoint folder (local, nothing is fetched)")
    config = _read_json(source / "config.json", "an original LLaVA checkpoint has a config.json")
    family = config.get("model_type")
    if family not in FAMILIES:
        raise MedbenchError(
            f"{source / 'config.json'}: model_type {family!r} is not an original LLaVA family "
            f"({', '.join(FAMILIES)}); a transformers `llava` checkpoint needs no conversion"
        )
    if not config.get("mm_vision_tower"):
        raise MedbenchError(
            f"{source / 'config.json'}: no `mm_vision_tower`; this is not a multimodal LLaVA checkpoint"
        )
    projector = config.get("mm_projector_type", "linear")
    match = re.fullmatch(r"mlp(\d+)x_gelu", projector)
    if not (projector in ("linear", "identity") or (match and int(match.group(1)) <= 2)):
        raise MedbenchError(
            f"{source / 'config.json'}: mm_projector_type {projector!r} has no transformers LLaVA equivalent "
            "(supported: linear, identity, mlp1x_gelu, mlp2x_gelu)"
        )
    select_feature = config.get("mm_vision_select_feature", "patch")
    if select_feature not in ("patch", "cls_patch"):
        raise MedbenchError(
            f"{source / 'config.json'}: mm_vision_select_feature {select_feature!r} is not patch or cls_patch"
        )
    aspect = config.get("image_aspect_ratio")
    if aspect not in (None, "pad", "square", "resize"):
        raise MedbenchError(
            f"{source / 'config.json'}: image_aspect_ratio {aspect!r} (any-resolution tiling) is not supported; "
            "only pad and square images convert to LlavaImageProcessor"
        )
    vision_weights = vision_weights or DEFAULT_VISION_WEIGHTS[family]
    if vision_weights not in ("stored", "folder"):
        raise MedbenchError(f"--vision-weights {vision_weights!r}: choose stored or folder")
    chat_style = chat_style or DEFAULT_CHAT_STYLE[family]
    if chat_style not in CHAT_STYLES:
        raise MedbenchError(f"--chat-style {chat_style!r}: choose from {', '.join(CHAT_STYLES)}")
    plan = Plan(
        source=source,
        family=family,
        text_type=FAMILIES[family],
        original=config,
        vision_dir=None,
        vision_weights=vision_weights,
        projector_type=projector,
        select_layer=int(config.get("mm_vision_select_layer", -2)),
        select_feature=select_feature,
        do_pad=aspect == "pad",
        use_im_start_end=bool(config.get("mm_use_im_start_end", False)),
        chat_style=chat_style,
    )
    plan.vision_dir = _resolve_vision_dir(plan, vision_tower)
    return plan


def _resolve_vision_dir(plan: Plan, vision_tower: str | Path | None) -> Path:
    named = str(plan.original["mm_vision_tower"])
    if vision_tower is not None:
        folder = Path(vision_tower)
        if not (folder / "config.json").is_file():
            raise MedbenchError(f"--vision-tower {folder}: no config.json there; pass a local CLIP folder")
        plan.notes.append(f"vision tower folder: --vision-tower {folder} (config names {named})")
        return folder
    candidates = [Path(named)]
    if plan.family == "llava_qwen2":
        candidates.append(plan.source / named)  # HuatuoGPT resolves a relative path against the checkpoint
    for folder in candidates:
        if (folder / "config.json").is_file():
            plan.notes.append(f"vision tower folder: {folder} (mm_vision_tower)")
            return folder
    if plan.family == "llava_qwen2":
        raise MedbenchError(
            f"{plan.source / 'config.json'}: mm_vision_tower {named!r} is not a folder here or under the checkpoint "
            f"(the original would silently fall back to {HUATUO_FALLBACK_TOWER}); pass --vision-tower DIR with that "
            "CLIP's config.json and preprocessor_config.json"
        )
    raise MedbenchError(
        f"{plan.source / 'config.json'}: mm_vision_tower {named!r} is not a local folder and nothing is fetched; "
        "download it once and pass --vision-tower DIR (LLaVA-Med runs that CLIP, not the stored copy)"
    )


def _weight_files(folder: Path, what: str) -> list[Path]:
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        files = sorted(p for p in folder.glob(pattern) if p.is_file())
        if files:
            return files
    raise MedbenchError(f"{folder}: no *.safetensors or pytorch_model*.bin files; {what}")


def _iter_keys(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    return list(_load_bin(path))


def _load_bin(path: Path) -> dict[str, Any]:
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a bad pickle; name the file either way
        raise MedbenchError(f"{path}: cannot read this weights file ({type(error).__name__}: {error})") from None


def _iter_tensors(path: Path) -> Iterator[tuple[str, Any]]:
    """``(key, tensor)`` of one weights file, one tensor at a time for safetensors."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - a safetensors handle has keys() but cannot be iterated
                yield key, handle.get_tensor(key)
    else:
        yield from _load_bin(path).items()


# A rule: (group, source pattern, target template or None for "not converted", why).
Rule = tuple[str, "re.Pattern[str]", str | None, str]


def _checkpoint_rules(plan: Plan) -> list[Rule]:
    mlp = plan.projector_type.startswith("mlp")
    stored = plan.vision_weights == "stored"
    rules: list[Rule] = [
        ("buffers", re.compile(r"^model\..*(rotary_emb\.inv_freq|embeddings\.position_ids)$"), None, "buffer"),
        ("language_model", re.compile(r"^model\.(embed_tokens|layers|norm)\.(.+)$"), r"model.language_model.\1.\2", ""),
        ("lm_head", re.compile(r"^lm_head\.(weight|bias)$"), r"lm_head.\1", ""),
        (
            "vision_tower (stored copy)" if stored else "ignored: stored vision tower copy",
            re.compile(r"^model\.vision_tower\.vision_tower\.vision_model\.(.+)$"),
            r"model.vision_tower.\1" if stored else None,
            "" if stored else f"the {plan.family} original runs the mm_vision_tower folder instead",
        ),
    ]
    if mlp:
        for index, layer in (("0", "linear_1"), ("2", "linear_2")):
            pattern = re.compile(rf"^model\.mm_projector\.{index}\.(weight|bias)$")
            rules.append(("projector", pattern, rf"model.multi_modal_projector.{layer}.\1", ""))
    elif plan.projector_type == "linear":
        pattern = re.compile(r"^model\.mm_projector\.(weight|bias)$")
        rules.append(("projector", pattern, r"model.multi_modal_projector.linear_1.\1", ""))
    return rules


def _folder_rules() -> list[Rule]:
    return [
        ("buffers", re.compile(r"^.*embeddings\.position_ids$"), None, "recomputed buffer"),
        # CLIP checkpoints name the encoder vision_model.* (CLIPModel, older CLIPVisionModel saves) or, saved by
        # transformers 5's CLIPVisionModel, without that prefix.
        (
            "vision_tower (folder)",
            re.compile(r"^(?:vision_model\.)?((?:embeddings|encoder|pre_layrnorm|post_layernorm)\..+)$"),
            r"model.vision_tower.\1",
            "",
        ),
        ("ignored: CLIP text half", _CLIP_TEXT_HALF, None, "LLaVA uses the CLIP vision encoder only"),
    ]


def _route(key: str, rules: list[Rule]) -> tuple[str, str | None] | None:
    for group, pattern, target, _why in rules:
        if pattern.match(key):
            return group, (pattern.sub(target, key) if target else None)
    return None


def _sources(plan: Plan) -> list[tuple[Path, list[Rule]]]:
    files = [(path, _checkpoint_rules(plan)) for path in _weight_files(plan.source, "is this the checkpoint folder?")]
    if plan.vision_weights == "folder":
        assert plan.vision_dir is not None
        files += [(path, _folder_rules()) for path in _weight_files(plan.vision_dir, "the CLIP weights are needed")]
    return files


def route_keys(plan: Plan) -> dict[str, Any]:
    """Map every source key to its target (or to a reason it is not converted), reading only file headers.

    Returns:
        ``{"groups": {group: count}, "examples": {group: (source, target)}, "targets": {target: source}}``.

    Raises:
        MedbenchError: keys no rule understands (one line naming the first few).
    """
    groups: Counter[str] = Counter()
    examples: dict[str, tuple[str, str | None]] = {}
    targets: dict[str, str] = {}
    unknown: list[str] = []
    for path, rules in _sources(plan):
        for key in _iter_keys(path):
            routed = _route(key, rules)
            if routed is None:
                unknown.append(f"{path.name}:{key}")
                continue
            group, target = routed
            groups[group] += 1
            examples.setdefault(group, (key, target))
            if target is not None:
                targets[target] = key
    if unknown:
        shown = ", ".join(unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        raise MedbenchError(
            f"{len(unknown)} weight keys this converter does not understand: {shown}; nothing was written"
        )
    return {"groups": dict(groups), "examples": examples, "targets": targets}


def _vision_config(plan: Plan):
    from transformers import CLIPVisionConfig

    assert plan.vision_dir is not None
    try:
        return CLIPVisionConfig.from_pretrained(str(plan.vision_dir))
    except (OSError, ValueError) as error:
        first = str(error).splitlines()[0]
        raise MedbenchError(f"{plan.vision_dir}/config.json: not a CLIP config ({first})") from None


def build_tokenizer(plan: Plan):
    """The checkpoint's tokenizer as a fast tokenizer with ``<image>`` (and im_start/end when used) added.

    Returns:
        ``(tokenizer, how it was built)``.
    """
    from transformers import AutoTokenizer

    config_path = plan.source / "tokenizer_config.json"
    tokenizer_config = _read_json(config_path, "") if config_path.is_file() else {}
    if (plan.source / "tokenizer.json").is_file() or (plan.source / "vocab.json").is_file():
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(plan.source))
        except (OSError, ValueError) as error:
            raise MedbenchError(f"{plan.source}: its tokenizer does not load ({str(error).splitlines()[0]})") from None
        how = "loaded from the checkpoint's tokenizer files"
    elif (plan.source / "tokenizer.model").is_file():
        from .tokenizer import fast_tokenizer_from_sentencepiece

        tokenizer = fast_tokenizer_from_sentencepiece(plan.source / "tokenizer.model", tokenizer_config)
        how = "built from tokenizer.model (sentencepiece BPE) by medbench; a ▁ follows <image> as in the original"
    else:
        raise MedbenchError(f"{plan.source}: no tokenizer.json, vocab.json or tokenizer.model")
    if plan.use_im_start_end and any(t not in tokenizer.get_vocab() for t in (IM_START, IM_END)):
        raise MedbenchError(f"{plan.source}: mm_use_im_start_end is set but the tokenizer lacks {IM_START}/{IM_END}")
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    return tokenizer, how


def _image_processor(plan: Plan):
    from transformers import LlavaImageProcessor

    assert plan.vision_dir is not None
    path = plan.vision_dir / "preprocessor_config.json"
    settings = _read_json(path, "the CLIP folder's image preprocessing is needed (resize, crop, mean, std)")
    keep = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
            "do_normalize", "image_mean", "image_std", "do_convert_rgb")
    kwargs = {key: settings[key] for key in keep if key in settings}
    if isinstance(kwargs.get("size"), int):
        kwargs["size"] = {"shortest_edge": kwargs["size"]}
    if isinstance(kwargs.get("crop_size"), int):
        kwargs["crop_size"] = {"height": kwargs["crop_size"], "width": kwargs["crop_size"]}
    return LlavaImageProcessor(do_pad=plan.do_pad, **kwargs)


def _llava_config(plan: Plan, vision_config, image_token_id: int, vocab_rows: int):
    from transformers import AutoConfig, LlavaConfig

    text_fields = {
        key: value
        for key, value in plan.original.items()
        if key not in _NON_TEXT_KEYS and not key.startswith("mm_")
    }
    text_fields["vocab_size"] = vocab_rows
    text_config = AutoConfig.for_model(plan.text_type, **text_fields)
    tie = bool(plan.original.get("tie_word_embeddings", False))
    strategy = "default" if plan.select_feature == "patch" else "full"
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_id=image_token_id,
        projector_hidden_act="gelu" if plan.projector_type.startswith("mlp2") else "linear",
        vision_feature_select_strategy=strategy,
        vision_feature_layer=plan.select_layer,
        image_seq_length=patches if strategy == "default" else patches + 1,
        multimodal_projector_bias=True,
        tie_word_embeddings=tie,
        # transformers' own save_pretrained writes this from the model class; a config saved on its own does
        # not, and TRL (reloading the reference model for full fine-tuning) reads the class from it.
        architectures=["LlavaForConditionalGeneration"],
    )
    dtype = plan.original.get("torch_dtype") or plan.original.get("dtype")
    if dtype:
        config.dtype = dtype
    mm_hidden = plan.original.get("mm_hidden_size")
    if mm_hidden is not None and int(mm_hidden) != vision_config.hidden_size:
        raise MedbenchError(
            f"{plan.source / 'config.json'}: mm_hidden_size {mm_hidden} but the vision tower "
            f"({plan.vision_dir}) has hidden_size {vision_config.hidden_size}; pass the matching --vision-tower"
        )
    return config


def _expected_shapes(config) -> dict[str, tuple[int, ...]]:
    import torch
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    return shapes


class _ShardWriter:
    """Writes tensors into ``model-XXXXX-of-YYYYY.safetensors`` files of at most ``max_bytes`` each."""

    def __init__(self, out: Path, max_bytes: int) -> None:
        self.out, self.max_bytes = out, max_bytes
        self.pending: dict[str, Any] = {}
        self.pending_bytes = 0
        self.shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, key: str, tensor: Any) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self.flush()
        self.pending[key] = tensor.contiguous()
        self.pending_bytes += size
        self.total_bytes += size

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.pending:
            return
        path = self.out / f"shard-{len(self.shards):05d}.tmp"
        save_file(self.pending, str(path), metadata={"format": "pt"})
        self.shards.append((path, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> None:
        self.flush()
        count = len(self.shards)
        weight_map = {}
        for index, (path, keys) in enumerate(self.shards):
            name = f"model-{index + 1:05d}-of-{count:05d}.safetensors" if count > 1 else "model.safetensors"
            path.rename(self.out / name)
            weight_map.update({key: name for key in keys})
        if count > 1:
            index_data = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            (self.out / "model.safetensors.index.json").write_text(json.dumps(index_data, indent=2) + "\n")


def _extend_rows(tensor: Any, rows: int) -> Any:
    """``tensor`` with rows appended up to ``rows``, each the mean of the existing rows (LLaVA's own choice for
    tokens it adds); the mean output row also keeps the new token's logit at the average, never the argmax."""
    import torch

    if tensor.shape[0] >= rows:
        return tensor
    mean = tensor.float().mean(dim=0, keepdim=True).to(tensor.dtype)
    return torch.cat([tensor, mean.expand(rows - tensor.shape[0], *tensor.shape[1:])], dim=0)


def _projector_identity(plan: Plan, hidden: int, mm_hidden: int, dtype: Any) -> dict[str, Any]:
    """Weights standing in for the layers a linear/identity projector lacks (exact: identity maps)."""
    import torch

    extra: dict[str, Any] = {}
    if plan.projector_type == "identity":
        extra["model.multi_modal_projector.linear_1.weight"] = torch.eye(hidden, mm_hidden, dtype=dtype)
        extra["model.multi_modal_projector.linear_1.bias"] = torch.zeros(hidden, dtype=dtype)
    if plan.projector_type in ("identity", "linear", "mlp1x_gelu"):
        extra["model.multi_modal_projector.linear_2.weight"] = torch.eye(hidden, dtype=dtype)
        extra["model.multi_modal_projector.linear_2.bias"] = torch.zeros(hidden, dtype=dtype)
    return extra


def convert(
    source: str | Path,
    out: str | Path,
    *,
    vision_tower: str | Path | None = None,
    vision_weights: str | None = None,
    chat_style: str | None = None,
    max_shard_size: str = "5GB",
    dry_run: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Convert ``source`` (original LLaVA format) into a transformers LLaVA folder ``out``; see the module doc.

    Returns:
        The conversion record (also written to ``out/medbench_conversion.json``).

    Raises:
        MedbenchError: unsupported config, missing folders, unknown or missing keys, ``out`` not empty.
    """
    plan = make_plan(source, vision_tower, vision_weights, chat_style)
    routing = route_keys(plan)
    tokenizer, tokenizer_how = build_tokenizer(plan)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    vision_config = _vision_config(plan)
    embed_source = routing["targets"].get("model.language_model.embed_tokens.weight")
    if embed_source is None:
        raise MedbenchError(f"{plan.source}: no model.embed_tokens.weight among the weights")
    original_rows = int(plan.original.get("vocab_size", 0))
    vocab_rows = max(original_rows, image_token_id + 1)
    config = _llava_config(plan, vision_config, image_token_id, vocab_rows)
    expected = _expected_shapes(config)
    provided = set(routing["targets"]) | set(
        _projector_identity(plan, config.text_config.hidden_size, vision_config.hidden_size, None)
    )
    missing = sorted(set(expected) - provided)
    if missing:
        raise MedbenchError(
            f"{len(missing)} weights of the converted model have no source, e.g. {', '.join(missing[:3])}; "
            "is --vision-weights right for this checkpoint?"
        )
    extra = sorted(provided - set(expected))
    if extra:
        raise MedbenchError(f"{len(extra)} converted keys are not in LlavaForConditionalGeneration, e.g. {extra[0]}")

    log(f"{plan.source} ({plan.family}) -> LlavaForConditionalGeneration ({plan.text_type} + CLIP)")
    for group, count in sorted(routing["groups"].items()):
        src, dst = routing["examples"][group]
        log(f"  {group}: {count} keys, e.g. {src} -> {dst or 'not converted'}")
    copy = "stored copy in the checkpoint" if plan.vision_weights == "stored" else f"folder {plan.vision_dir}"
    log(f"  vision tower weights: {copy}; config and preprocessing: {plan.vision_dir}")
    for note in plan.notes:
        log(f"  {note}")
    log(
        f"  projector {plan.projector_type}, select layer {plan.select_layer}, {plan.select_feature} tokens, "
        f"pad to square: {plan.do_pad}, im_start/end: {plan.use_im_start_end}, chat style {plan.chat_style}"
    )
    log(f"  tokenizer: {tokenizer_how}; <image> = id {image_token_id}; embedding rows {original_rows} -> {vocab_rows}")
    record: dict[str, Any] = {
        "source": str(plan.source),
        "family": plan.family,
        "vision_tower_weights": plan.vision_weights,
        "vision_tower_folder": str(plan.vision_dir),
        "projector_type": plan.projector_type,
        "vision_select_layer": plan.select_layer,
        "vision_select_feature": plan.select_feature,
        "pad_to_square": plan.do_pad,
        "mm_use_im_start_end": plan.use_im_start_end,
        "chat_style": plan.chat_style,
        "tokenizer": tokenizer_how,
        "image_token_id": image_token_id,
        "embedding_rows": {"original": original_rows, "converted": vocab_rows},
        "keys": routing["groups"],
    }
    if dry_run:
        log("dry run: nothing written")
        return record

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise MedbenchError(f"{out}: not empty; choose a new folder or pass --overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    writer = _ShardWriter(out, _parse_size(max_shard_size))
    written: set[str] = set()
    for path, rules in _sources(plan):
        for key, tensor in _iter_tensors(path):
            routed = _route(key, rules)
            assert routed is not None  # route_keys checked every key
            target = routed[1]
            if target is None:
                continue
            if target in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
                tensor = _extend_rows(tensor, vocab_rows)
            if tuple(tensor.shape) != expected[target]:
                raise MedbenchError(
                    f"{path.name}:{key} has shape {tuple(tensor.shape)}, {target} needs {expected[target]}"
                )
            writer.add(target, tensor)
            written.add(target)
    dtype = next(iter(writer.pending.values())).dtype if writer.pending else None
    for key, tensor in _projector_identity(
        plan, config.text_config.hidden_size, vision_config.hidden_size, dtype or _dtype_of(plan)
    ).items():
        writer.add(key, tensor)
    writer.finish()
    config.save_pretrained(out)
    _save_generation_config(plan, out, tokenizer)
    _save_processor(plan, out, tokenizer, vision_config)
    (out / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {out} ({len(writer.shards)} shard(s), {writer.total_bytes / 2**20:.1f} MiB)")
    return record


def _dtype_of(plan: Plan) -> Any:
    import torch

    name = plan.original.get("torch_dtype") or plan.original.get("dtype") or "float32"
    return getattr(torch, str(name).replace("torch.", ""), torch.float32)


def _parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B)?\s*", str(text).upper())
    if not match:
        raise MedbenchError(f"--max-shard-size {text!r}: write it like 5GB, 500MB or 1000000")
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, None: 1}[match.group(2)]
    return int(float(match.group(1)) * scale)


def _save_generation_config(plan: Plan, out: Path, tokenizer: Any) -> None:
    from transformers import GenerationConfig

    path = plan.source / "generation_config.json"
    generation = GenerationConfig.from_pretrained(str(plan.source)) if path.is_file() else GenerationConfig()
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generation.save_pretrained(out)


def _save_processor(plan: Plan, out: Path, tokenizer: Any, vision_config: Any) -> None:
    from transformers import LlavaProcessor

    from medbench.prompts import chat_template

    markup = f"{IM_START}{IMAGE_TOKEN}{IM_END}" if plan.use_im_start_end else IMAGE_TOKEN
    processor = LlavaProcessor(
        image_processor=_image_processor(plan),
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy="default" if plan.select_feature == "patch" else "full",
        chat_template=chat_template(plan.chat_style, markup),
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )
    processor.save_pretrained(out)
