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

import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

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
        for key, base in (("image", root), ("rejected_image", rejected_root)):
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
    except Exception as exc:  # pydicom raises many types for broken files; any of them means "unreadable"
        raise DataError(f"cannot read DICOM image {path}: {exc}") from None
    if pixels.ndim == 3 and pixels.shape[-1] not in (3, 4):
        pixels = pixels[pixels.shape[0] // 2]  # multi-frame: the middle slice
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)
    if getattr(dataset, "PhotometricInterpretation", "") == "MONOCHROME1":
        scaled = 1.0 - scaled  # MONOCHROME1 stores inverted grey levels
    return Image.fromarray((scaled * 255).round().astype("uint8")).convert("RGB")
