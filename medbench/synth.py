"""A synthetic-lesion VQA set drawn on the bundled real images, and the small model the tiny study teaches.

The CPU-scale study (``medbench/studies/tiny.yaml``) needs a task a model of a few hundred thousand parameters
can learn on two CPU cores in minutes, and whose answers *need the image*. Each item takes one of the seven
demo images (real CT, MRI, ultrasound, fundus and immunohistochemistry pictures from pydicom, scikit-image and
nibabel), a random crop of it resized to ``size`` pixels, and 0-3 synthetic lesions: white discs with a black
rim, visible on dark and bright backgrounds alike. One question is asked per image:

=============  ==========================================  ===============================  ===========
kind           question                                    answer                           answer_type
=============  ==========================================  ===============================  ===========
presence       Is there a lesion in this image?            yes / no                         CLOSED
side           On which side of the image is the lesion?   left / right (one lesion)        CLOSED
count          How many lesions are in this image?         one / two / three                OPEN
modality       What is the imaging modality?               CT, MRI, ultrasound, ...         OPEN
=============  ==========================================  ===============================  ===========

"Side" is the side of the *image* (not the patient's). Train and test items come from different random
streams, so the test images (crops, lesion positions and sizes) are held-out variants. Every record keeps the
box of its first lesion (``box``, for lesion-region image corruption), the boxes of all its lesions (``boxes``,
which a control corruption must avoid), its kind (``kind``) and its lesion count (``lesions``). The same seed
gives byte-identical files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

# Demo image -> the answer to the modality question (the lexicon's modality terms).
MODALITY = {
    "ct_small.png": "CT",
    "mr_small.png": "MRI",
    "brain_mri.png": "MRI",
    "us_rgb.png": "ultrasound",
    "fundus_retina.png": "fundus photograph",
    "fundus_microaneurysms.png": "fundus photograph",
    "pathology_ihc.png": "histology",
}
QUESTIONS = {
    "presence": "Is there a lesion in this image?",
    "side": "On which side of the image is the lesion?",
    "count": "How many lesions are in this image?",
    "modality": "What is the imaging modality?",
}
ANSWER_TYPES = {"presence": "CLOSED", "side": "CLOSED", "count": "OPEN", "modality": "OPEN"}
# Share of each question kind. Modality is learned almost at once, so it is kept rare: the spatial and
# presence questions are the ones that separate models.
KIND_WEIGHTS = {"presence": 0.35, "side": 0.35, "count": 0.15, "modality": 0.15}
_COUNT_WORDS = ["zero", "one", "two", "three"]
_SPLIT_STREAM = {"train": 1, "test": 2}


def _demo_images() -> dict[str, Any]:
    from PIL import Image

    folder = Path(__file__).resolve().parent / "data" / "demo" / "images"
    images = {}
    for name in MODALITY:
        with Image.open(folder / name) as opened:
            images[name] = opened.convert("RGB")
    return images


def _draw_lesion(pixels: np.ndarray, centre: tuple[float, float], radius: float) -> None:
    size = pixels.shape[0]
    yy, xx = np.mgrid[0:size, 0:size]
    distance = np.hypot(xx + 0.5 - centre[0], yy + 0.5 - centre[1])
    pixels[distance <= radius + 1.0] = 0
    pixels[distance <= radius] = 255


def _lesion_positions(rng: np.random.Generator, count: int, size: int, radius: float, kind: str):
    """Centres (x, y) of ``count`` non-overlapping lesions; a single lesion avoids the middle fifth."""
    margin = radius + 2
    centres: list[tuple[float, float]] = []
    while len(centres) < count:
        x = float(rng.uniform(margin, size - margin))
        y = float(rng.uniform(margin, size - margin))
        if count == 1 and kind == "side" and abs(x - size / 2) < size * 0.1:
            continue
        if all(np.hypot(x - cx, y - cy) > 2 * radius + 4 for cx, cy in centres):
            centres.append((x, y))
    return centres


def make_item(images: dict[str, Any], split: str, index: int, seed: int, size: int = 64) -> tuple[dict, Any]:
    """One (record, PIL image) of ``split``; a pure function of its arguments."""
    from PIL import Image

    rng = np.random.default_rng([seed, _SPLIT_STREAM[split], index])
    name = list(MODALITY)[int(rng.integers(len(MODALITY)))]
    base = images[name]
    width, height = base.size
    side = int(min(width, height) * rng.uniform(0.6, 1.0))
    left = int(rng.integers(0, width - side + 1))
    top = int(rng.integers(0, height - side + 1))
    crop = base.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    pixels = np.asarray(crop, dtype=np.uint8).copy()

    kinds = list(KIND_WEIGHTS)
    kind = kinds[int(rng.choice(len(kinds), p=list(KIND_WEIGHTS.values())))]
    if kind == "side":
        count = 1
    elif kind == "count":
        count = int(rng.integers(1, 4))
    elif kind == "presence":
        count = int(rng.choice([0, 1, 2], p=[0.5, 0.35, 0.15]))
    else:
        count = int(rng.integers(0, 3))
    radius = float(rng.uniform(size * 0.045, size * 0.075))
    centres = _lesion_positions(rng, count, size, radius, kind)
    for centre in centres:
        _draw_lesion(pixels, centre, radius)

    if kind == "presence":
        answer = "yes" if count else "no"
    elif kind == "side":
        answer = "left" if centres[0][0] < size / 2 else "right"
    elif kind == "count":
        answer = _COUNT_WORDS[count]
    else:
        answer = MODALITY[name]
    item_id = f"{split}-{index:05d}"
    record: dict[str, Any] = {
        "id": item_id,
        "image": f"images/{item_id}.png",
        "question": QUESTIONS[kind],
        "answer": answer,
        "answer_type": ANSWER_TYPES[kind],
        "kind": kind,
        "lesions": count,
        "source_image": name,
    }
    if centres:
        pad = radius + 1
        boxes = [[max(0, int(x - pad)), max(0, int(y - pad)), min(size, int(np.ceil(x + pad))),
                  min(size, int(np.ceil(y + pad)))] for x, y in centres]
        record["box"], record["boxes"] = boxes[0], boxes
    return record, Image.fromarray(pixels)


def make_lesion_vqa(out: Path, n_train: int, n_test: int, seed: int = 0, size: int = 64, progress: bool = True) -> dict:
    """Write ``out/train.jsonl``, ``out/test.jsonl``, ``out/images/`` and ``out/manifest.json``; return the manifest."""
    from medbench.progress import progress_bar

    if n_train < 1 or n_test < 1:
        raise ValueError("synth vqa: --train and --test must be at least 1")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images = _demo_images()
    counts: dict[str, dict[str, int]] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        lines = []
        bar = progress_bar(n, progress, f"synth {split}", "item")
        for index in range(n):
            record, image = make_item(images, split, index, seed, size)
            bar.update(1)
            image.save(out / record["image"])
            lines.append(json.dumps(record, sort_keys=True))
            key = f"{record['kind']}={record['answer']}"
            counts.setdefault(split, {})[key] = counts.get(split, {}).get(key, 0) + 1
        bar.close()
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    manifest = {
        "generator": "medbench.synth lesion VQA", "version": 2, "seed": seed, "size": size,
        "train": n_train, "test": n_test, "kind_weights": KIND_WEIGHTS,
        "answers": {split: dict(sorted(c.items())) for split, c in counts.items()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def corpus_of(paths: Iterable[Path]) -> list[str]:
    """Questions and answers of JSONL files: the words a model's tokenizer must know."""
    texts = []
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                texts += [str(record.get("question", "")), str(record.get("answer", ""))]
    return texts
