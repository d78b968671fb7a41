"""Preference data: the JSONL schema, the authors' LLaVA-conversation records, validation and image loading.

Native schema (one JSON object per line; ``.json`` files holding a list of objects also load)::

    {"id": "vqa-17", "image": "images/ct_017.png", "question": "Is there a pleural effusion?",
     "chosen": "Yes, a small right pleural effusion.", "rejected": "Yes, a small left pleural effusion.",
     "rejected_image": "noised/ct_017.png", "weight": 0.8, "error_type": "visual_misinterpretation"}

Only the fields a recipe needs must be present (see :data:`medbench.train.objectives.RECORD_FIELDS`).

The study's released data (LLaVA conversation style) loads too::

    {"id": "...", "image": "...", "rejected_image": "...", "weighted_score": 0.8,
     "conversations": [{"from": "human", "value": "<image>\\nQuestion"}, {"from": "gpt", "value": "chosen"}],
     "rejected_conversations": [{"from": "human", "value": "<image>\\nQuestion"}, {"from": "gpt", "value": "rejected"}]}

Relative image paths resolve against ``image_root`` (default: the data file's folder); ``rejected_image`` paths
against ``rejected_image_root`` (default: ``image_root``), mirroring the authors' ``--image_folder`` /
``--rejected_image_folder``.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from medbench.data.fingerprint import file_sha256
from medbench.data.loading import iter_json_records
from medbench.errors import DataError
from medbench.taxonomy import load_taxonomy

from .objectives import RECORD_FIELDS, Objective, is_visual_error

logger = logging.getLogger(__name__)

Record = dict[str, Any]

_IMAGE_PLACEHOLDER = "<image>"


def _strip_placeholder(text: str) -> str:
    # The chat template inserts the image itself; a literal <image> would become a second image slot.
    return text.replace(_IMAGE_PLACEHOLDER, "").strip()


def _turns(value: Any, where: str, key: str) -> tuple[str, str]:
    """(question, answer) from a two-turn LLaVA conversation list."""
    if not isinstance(value, list) or len(value) != 2:
        raise DataError(f"{where}: `{key}` must be a list of two turns (human question, gpt answer)")
    texts = []
    for turn, expected in zip(value, (("human", "user"), ("gpt", "assistant")), strict=True):
        if not isinstance(turn, dict):
            raise DataError(f"{where}: `{key}` turns must be objects with `from` and `value`")
        role = str(turn.get("from", turn.get("role", ""))).lower()
        if role not in expected:
            raise DataError(f"{where}: `{key}` must alternate human then gpt, found role {role!r}")
        text = turn.get("value", turn.get("content"))
        if not isinstance(text, str):
            raise DataError(f"{where}: `{key}` turn has no text `value`")
        texts.append(text)
    return _strip_placeholder(texts[0]), texts[1].strip()


def _single_path(value: Any, where: str, key: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, list):
        if len(value) != 1:
            raise DataError(f"{where}: `{key}` lists {len(value)} images; records must have exactly one")
        value = value[0]
    if not isinstance(value, str):
        raise DataError(f"{where}: `{key}` must be a path string")
    return value


def _normalise(raw: Any, where: str, number: int) -> Record:
    """Map one raw object (native or LLaVA-conversation schema) to a record with every RECORD_FIELDS key."""
    if not isinstance(raw, dict):
        raise DataError(f"{where}: each record must be a JSON object")
    record: Record = {key: None for key in RECORD_FIELDS}
    record["id"] = str(raw["id"]) if raw.get("id") is not None else str(number)
    if "conversations" in raw:
        record["question"], record["chosen"] = _turns(raw["conversations"], where, "conversations")
        if raw.get("rejected_conversations") is not None:
            _, record["rejected"] = _turns(raw["rejected_conversations"], where, "rejected_conversations")
    else:
        for key in ("question", "chosen", "rejected"):
            value = raw.get(key)
            if value is not None and not isinstance(value, str):
                raise DataError(f"{where}: `{key}` must be a string")
            record[key] = value.strip() if isinstance(value, str) else None
        if record["question"] is not None:
            record["question"] = _strip_placeholder(record["question"])
    record["image"] = _single_path(raw.get("image"), where, "image")
    record["rejected_image"] = _single_path(raw.get("rejected_image"), where, "rejected_image")
    record["control_image"] = _single_path(raw.get("control_image"), where, "control_image")
    weight = raw.get("weight", raw.get("weighted_score"))
    if weight is not None:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise DataError(f"{where}: `weight` must be a finite number >= 0, got {weight!r}")
        record["weight"] = float(weight)
    error_type = raw.get("error_type")
    if error_type is not None:
        # Strict: a near miss ("visual misinterpretation") must not silently train with the text-side term.
        record["error_type"] = load_taxonomy().check(error_type, where)
    for key in ("question", "chosen", "rejected", "error_type"):
        if record[key] == "":
            record[key] = None  # an empty text is as unusable as a missing one
    return record


def load_preference_file(
    path: str | Path,
    image_root: str | Path | None = None,
    rejected_image_root: str | Path | None = None,
) -> list[Record]:
    """Read a preference file into records with absolute, existing image paths.

    Args:
        path: A ``.jsonl`` file (one record per line) or ``.json`` file (a list of records), in the native schema
            or the authors' LLaVA-conversation schema.
        image_root: Folder relative ``image`` paths resolve against; default the data file's folder.
        rejected_image_root: Folder relative ``rejected_image`` paths resolve against; default ``image_root``.

    Returns:
        Records as dicts with every key of :data:`medbench.train.objectives.RECORD_FIELDS` (None where absent).

    Raises:
        DataError: unreadable file, malformed record, or an image file that does not exist (one line naming it).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"preference data file not found: {path}")
    root = Path(image_root) if image_root is not None else path.parent
    rejected_root = Path(rejected_image_root) if rejected_image_root is not None else root
    records: list[Record] = []
    for number, raw in iter_json_records(path):
        where = f"{path}:{number}"
        record = _normalise(raw, where, number)
        record["_where"] = where
        for key, base in (("image", root), ("rejected_image", rejected_root), ("control_image", rejected_root)):
            if record[key] is None:
                continue
            resolved = Path(record[key]).expanduser()
            if not resolved.is_absolute():
                resolved = base / resolved
            if not resolved.is_file():
                raise DataError(
                    f"{where}: record '{record['id']}': {key} file not found: {resolved} "
                    f"(relative paths resolve against {base}; set --image_root / --rejected_image_root)"
                )
            record[key] = str(resolved)
        records.append(record)
    if not records:
        raise DataError(f"{path}: no preference records")
    return records


def validate_records(
    records: list[Record],
    recipe: str,
    objective: Objective,
    visual_error_types: frozenset[str],
    source: str | Path,
) -> None:
    """Check that every record carries the fields the recipe's objective reads.

    Raises:
        DataError: one line naming the first missing field, the recipe, how many records lack it, and the first.
    """
    missing: dict[str, list[Record]] = {}
    for record in records:
        for name in objective.fields_for(record, visual_error_types):
            if record.get(name) is None:
                missing.setdefault(name, []).append(record)
    if not missing:
        return
    # Report fields in the objective's own order so the message is stable.
    order = [name for name in RECORD_FIELDS if name in missing]
    name = order[0]
    lacking = missing[name]
    first = lacking[0]
    where = first.get("_where", "")
    more = f"; also missing: {', '.join(order[1:])}" if len(order) > 1 else ""
    raise DataError(
        f"recipe '{recipe}' needs field '{name}' ({RECORD_FIELDS[name]}), but {len(lacking)} of {len(records)} "
        f"records in {source} lack it (first: {where}, id '{first['id']}'){more}"
    )


def describe_error_types(records: list[Record], visual_error_types: frozenset[str]) -> dict[str, int]:
    """Count records per error type (taxonomy key; None as ``"<none>"``) and log the visual/text split."""
    counts = Counter(str(r.get("error_type") or "<none>") for r in records)
    visual = sum(1 for r in records if is_visual_error(r, visual_error_types))
    logger.info(
        "error types: %s; %d record(s) train with the image-side term, %d with the text-side term",
        dict(counts),
        visual,
        len(records) - visual,
    )
    return dict(counts)


def records_to_dataset(records: list[Record]):
    """A ``datasets.Dataset`` of the records (image paths as strings; images load in the collator)."""
    from datasets import Dataset

    rows = [{key: record.get(key) for key in RECORD_FIELDS} for record in records]
    return Dataset.from_list(rows)


def load_image(path: str | Path):
    """Open an image file as RGB ``PIL.Image``; DICOM files (``.dcm``) are read with pydicom and windowed.

    Raises:
        DataError: when the file cannot be decoded.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return _load_dicom(path)
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def _load_dicom(path: Path):
    import numpy as np
    from PIL import Image

    try:
        import pydicom
    except ImportError:
        raise DataError(f"{path} is a DICOM file; install pydicom (pip install medbench[eval])") from None
    try:
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array.astype("float32")
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for broken files; any of them means "unreadable"
        raise DataError(f"cannot read DICOM image {path}: {exc}") from None
    if pixels.ndim == 3 and pixels.shape[-1] not in (3, 4):
        pixels = pixels[pixels.shape[0] // 2]  # multi-frame: the middle slice
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)
    if getattr(dataset, "PhotometricInterpretation", "") == "MONOCHROME1":
        scaled = 1.0 - scaled  # MONOCHROME1 stores inverted grey levels
    return Image.fromarray((scaled * 255).round().astype("uint8")).convert("RGB")


# --------------------------------------------------------------------------------------------------- preprocessing
# A training set is tokenized and image-processed once, by the very collator that would otherwise run every step, and
# kept as per-record rows; the per-step collator (:class:`medbench.train.collator.CachedCollator`) only pads and stacks.
# The file is keyed by everything the rows depend on, so cells that share data, processor and objective share it and a
# change to any of them builds a new one. Bump CACHE_FORMAT when the stored layout or the collator's output changes.
CACHE_FORMAT = 1
CACHE_ENV = "MEDBENCH_TRAIN_CACHE"
# The folder is bounded: after each build the least recently used sets are removed until it holds at most this many
# gigabytes (the tiny study's 8,000 items take 0.8 GB per objective; a real set of 336-px images far more).
CACHE_LIMIT_ENV = "MEDBENCH_TRAIN_CACHE_GB"
DEFAULT_CACHE_LIMIT_GB = 20.0
_CHUNK = 64  # records per collator call while preprocessing


@dataclass
class PreprocessedRecords:
    """Every record's rows as :class:`medbench.train.collator.PreferenceCollator` builds them, unpadded.

    Attributes:
        key: The cache key (hex) the rows were built under.
        keys: The batch keys in the collator's order.
        token_keys: Keys that are per-token rows (``input_ids``, ``attention_mask``, ``completion_mask``, ...).
        rows: Per record, per row block: ``{token key: 1-D tensor}`` (attention mask implied: all ones).
        row_images: Per record, per row block: index into ``images``.
        images: Per distinct image: ``{image key: tensor}`` (the processor's slice for that image).
        pad_id: The id padded ``input_ids`` positions hold.
        weight: Per record (when the objective reads weights).
        is_visual: Per record (per-record objectives).
    """

    key: str
    keys: list[str]
    token_keys: list[str]
    rows: list[list[dict[str, Any]]]
    row_images: list[list[int]]
    images: list[dict[str, Any]]
    pad_id: int
    weight: list[float] | None = None
    is_visual: list[bool] | None = None

    def __len__(self) -> int:
        return len(self.rows)


def _processor_fingerprint(processor: Any) -> str:
    """A digest of what a processor does to text and images (its config, chat template and vocabulary)."""
    import json as _json

    tokenizer = getattr(processor, "tokenizer", processor)
    parts = [
        processor.to_json_string() if hasattr(processor, "to_json_string") else repr(processor),
        str(getattr(processor, "chat_template", None) or getattr(tokenizer, "chat_template", None)),
        _json.dumps(sorted(tokenizer.get_vocab().items())),
        _json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str),
        type(processor).__name__,
        type(tokenizer).__name__,
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def preprocessing_key(records: list[Record], data: str | Path, processor: Any, objective: Objective,
                      max_length: int | None, visual_error_types: frozenset[str], system_prompt: str | None) -> str:
    """The cache key of a training set: data and image bytes, processor, objective rows and collator settings."""
    import json as _json

    image_digests = {}
    for record in records:
        for name in ("image", "rejected_image", "control_image"):
            path = record.get(name)
            if isinstance(path, str) and path not in image_digests:
                image_digests[path] = file_sha256(path)
    settings = {
        "format": CACHE_FORMAT,
        "data": file_sha256(data),
        # Records as loaded (absolute image paths) and the bytes of every image they name.
        "records": hashlib.sha256(_json.dumps([{k: v for k, v in r.items() if k != "_where"} for r in records],
                                              sort_keys=True, default=str).encode()).hexdigest(),
        "images": hashlib.sha256(_json.dumps(image_digests, sort_keys=True).encode()).hexdigest(),
        "processor": _processor_fingerprint(processor),
        "objective": [objective.name, [list(row) for row in objective.rows], objective.per_record_rows,
                      sorted(objective.requires)],
        "max_length": max_length,
        "visual_error_types": sorted(visual_error_types),
        "system_prompt": system_prompt,
    }
    return hashlib.sha256(_json.dumps(settings, sort_keys=True).encode()).hexdigest()


def preprocessing_cache_dir() -> Path:
    """Where preprocessed training sets are kept: ``MEDBENCH_TRAIN_CACHE``, else medbench's cache ``/train``."""
    import os

    from medbench.data.loading import cache_dir

    configured = os.environ.get(CACHE_ENV, "").strip()
    return Path(configured).expanduser() if configured else cache_dir() / "train"


def cache_limit_bytes() -> int:
    """The preprocessing cache's size bound: ``MEDBENCH_TRAIN_CACHE_GB`` (default 20) gigabytes."""
    import os

    raw = os.environ.get(CACHE_LIMIT_ENV, "").strip()
    try:
        gigabytes = float(raw) if raw else DEFAULT_CACHE_LIMIT_GB
    except ValueError:
        raise DataError(f"{CACHE_LIMIT_ENV}={raw!r} is not a number; set it to the cache's size bound in GB "
                        f"(default {DEFAULT_CACHE_LIMIT_GB:g})") from None
    if gigabytes < 0:
        raise DataError(f"{CACHE_LIMIT_ENV}={raw!r} is negative; set it to the cache's size bound in GB")
    return int(gigabytes * 1e9)


def prune_cache(folder: Path, keep: Path, limit: int) -> list[Path]:
    """Remove the least recently used training sets of ``folder`` (never ``keep``) until it holds at most ``limit``
    bytes, and half-written files a killed build left more than an hour ago; return what was removed.

    A set being read while it is removed stays readable to its reader (POSIX); one removed before a reader opens it is
    rebuilt by that reader."""
    import time

    removed: list[Path] = []
    for stale in folder.glob("*.tmp"):
        if time.time() - stale.stat().st_mtime > 3600:
            stale.unlink(missing_ok=True)
            removed.append(stale)
    sets = [(path.stat(), path) for path in folder.glob("*.pt")]
    total = sum(stat.st_size for stat, _ in sets)
    for stat, path in sorted(sets, key=lambda item: item[0].st_mtime):
        if total <= limit:
            break
        if path == keep:
            continue
        path.unlink(missing_ok=True)
        total -= stat.st_size
        removed.append(path)
        logger.info("preprocessing cache over %.1f GB: removed %s (least recently used)", limit / 1e9, path.name)
    return removed


def preprocess_records(records: list[Record], collator: Any, key: str = "") -> PreprocessedRecords:
    """Run ``collator`` (a :class:`medbench.train.collator.PreferenceCollator`) over the records once, in chunks, and
    keep each record's rows unpadded, with every distinct image's processor output stored once.

    Raises:
        DataError: The processor's image outputs cannot be split per image (a layout medbench does not know).
    """
    objective = collator.objective
    tokenizer = getattr(collator.processor, "tokenizer", collator.processor)
    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    rows: list[list[dict[str, Any]]] = []
    row_images: list[list[int]] = []
    images: list[dict[str, Any]] = []
    image_index: dict[Any, int] = {}
    keys: list[str] = []
    token_keys: list[str] = []
    weight: list[float] | None = [] if "weight" in objective.requires else None
    is_visual: list[bool] | None = [] if objective.per_record_rows else None
    for start in range(0, len(records), _CHUNK):
        chunk = records[start:start + _CHUNK]
        batch = collator(chunk)
        n, width = len(chunk), batch["input_ids"].shape[1]
        if not keys:
            keys = list(batch)
            token_keys = [k for k in keys if k not in ("weight", "is_visual") and batch[k].dim() == 2
                          and batch[k].shape[1] == width and batch[k].shape[0] == n * objective.n_rows
                          and k != "image_grid_thw"]
        image_keys = [k for k in keys if k not in token_keys and k not in ("weight", "is_visual")]
        per_row_images = _split_images(batch, image_keys, n * objective.n_rows)
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        for index, record in enumerate(chunk):
            record_rows, record_images = [], []
            for block, (_, image_field) in enumerate(objective.rows_for(record, collator.visual_error_types)):
                row = block * n + index
                length = int(lengths[row])
                record_rows.append({k: batch[k][row, :length].clone() for k in token_keys if k != "attention_mask"})
                source = record[image_field]
                if source not in image_index:
                    image_index[source] = len(images)
                    images.append(per_row_images[row])
                record_images.append(image_index[source])
            rows.append(record_rows)
            row_images.append(record_images)
        if weight is not None:
            weight += batch["weight"].tolist()
        if is_visual is not None:
            is_visual += batch["is_visual"].tolist()
    return PreprocessedRecords(key, keys, token_keys, rows, row_images, images, pad_id, weight, is_visual)


def _split_images(batch: dict[str, Any], image_keys: list[str], n_rows: int) -> list[dict[str, Any]]:
    """The processor's image outputs of a batch, one ``{key: tensor}`` per row."""
    split: list[dict[str, Any]] = [{} for _ in range(n_rows)]
    grid = batch.get("image_grid_thw")
    for key in image_keys:
        tensor = batch[key]
        if key == "pixel_values" and grid is not None:  # Qwen-VL: patches of all images, concatenated
            pieces = tensor.split([int(n) for n in grid.prod(dim=1).tolist()])
        elif tensor.shape[0] == n_rows:
            pieces = tensor.split(1)
        else:
            raise DataError(f"preprocessing: the processor's `{key}` ({tuple(tensor.shape)}) does not split per image; "
                            "train with --preprocess false")
        for row, piece in enumerate(pieces):
            split[row][key] = piece.clone()
    return split


def load_or_preprocess(records: list[Record], data: str | Path, collator: Any) -> PreprocessedRecords:
    """The preprocessed training set: read from the cache when its key matches, else built and written (atomically).

    Cells that share data, processor and objective settings read one file; two that start at once may both build it
    (the second write replaces the first with identical content).
    """
    import os

    import torch

    key = preprocessing_key(records, data, collator.processor, collator.objective, collator.max_length,
                            collator.visual_error_types, collator.system_prompt)
    folder = preprocessing_cache_dir()
    path = folder / f"{key}.pt"
    if path.is_file():
        try:
            # Plain containers and tensors only: weights_only refuses a pickle that would run code when read.
            stored = PreprocessedRecords(**torch.load(path, weights_only=True))
            if stored.key == key and len(stored) == len(records):
                logger.info("preprocessed training set: %s (reused)", path)
                path.touch()  # recently used: the last the size bound removes
                return stored
        except Exception as error:  # noqa: BLE001 - torch.load raises many types; an unreadable file is rebuilt
            logger.warning("preprocessed training set %s is unreadable (%s); rebuilding it", path, error)
    prepared = preprocess_records(records, collator, key)
    folder.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({field.name: getattr(prepared, field.name) for field in fields(prepared)}, temporary)
    os.replace(temporary, path)
    logger.info("preprocessed training set: %s (built from %d records)", path, len(records))
    prune_cache(folder, keep=path, limit=cache_limit_bytes())
    return prepared
