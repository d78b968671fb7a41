"""Corrupted images for the image-side objectives (CoPO, mDPO, MMedPO, error-targeted), with their parameters.

Each corruption is a pure function ``(image, rng, **options) -> (corrupted image, parameters)``; the parameters
(region, sizes, seeds) go into the record's ``meta`` and the manifest, so any derived image can be re-made.

* ``noise``: Gaussian noise (σ in grey levels) inside the record's lesion box or mask when it has one, else the
  documented default region: the central box spanning the middle half of the width and height (25 % of the area),
  where most single-finding images put the finding. CoPO and MMedPO noise the lesion region.
* ``crop``: a random crop keeping at most 20 % of the area (mDPO's paper: 0-20 %), aspect ratio kept.
* ``blackout``: the same region as ``noise`` set to black (the whole image with ``region: full``).
* ``blur``: Gaussian blur of the whole image (radius in pixels).
* ``fill``: the same region as ``noise`` painted with the mean colour of the rest of the image: it hides what the region holds
  without the black square of ``blackout`` (a probe corruption the image-side recipes need not have trained on).

A *control* image m″ (:func:`control_box`) applies the same corruption to a region of the same size that overlaps
no lesion box, so ``log π(y|m″) − log π(y|m′)`` separates the evidence in the lesion from the reaction to the
corruption itself.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np

CORRUPTIONS = ("noise", "crop", "blackout", "blur", "fill")
# Corruptions of a region (lesion box, mask or default box); only these have a control image.
REGION_CORRUPTIONS = ("noise", "blackout", "fill")
DEFAULTS: dict[str, dict[str, Any]] = {
    "noise": {"sigma": 60.0},
    "crop": {"min_area": 0.05, "max_area": 0.20},
    "blackout": {},
    "blur": {"radius": 8.0},
    "fill": {},
}
DEFAULT_REGION = "centre: x and y from 25 % to 75 % of the image (25 % of the area)"

Box = tuple[int, int, int, int]


def default_box(width: int, height: int) -> Box:
    """The default region (:data:`DEFAULT_REGION`) as ``(x0, y0, x1, y1)`` pixels."""
    return (width // 4, height // 4, max(width // 4 + 1, 3 * width // 4), max(height // 4 + 1, 3 * height // 4))


def _overlaps(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def control_box(width: int, height: int, region: Sequence[int], lesions: Sequence[Sequence[float]],
                rng: random.Random) -> Box | None:
    """A box of ``region``'s size, inside the image, overlapping none of ``lesions`` (pixel boxes ``[x0, y0, x1,
    y1]``), drawn uniformly among all such positions; None when there is none.

    Args:
        width: Image width.
        height: Image height.
        region: The corrupted region of m′ (its size is kept).
        lesions: Every lesion box of the image.
        rng: The record's generator.
    """
    w, h = int(region[2]) - int(region[0]), int(region[3]) - int(region[1])
    free = [(x, y) for y in range(height - h + 1) for x in range(width - w + 1)
            if not any(_overlaps((x, y, x + w, y + h), lesion) for lesion in lesions)]
    if not free:
        return None
    x, y = free[rng.randrange(len(free))]
    return (x, y, x + w, y + h)


def _region_mask(size: tuple[int, int], box: Sequence[float] | None, mask: Any | None) -> tuple[np.ndarray, dict]:
    width, height = size
    if mask is not None:
        from PIL import Image

        array = np.asarray(mask.convert("L").resize((width, height), Image.NEAREST)) > 0
        if array.any():
            return array, {"region": "mask", "mask_pixels": int(array.sum())}
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in box)
        if max(x0, y0, x1, y1) <= 1.0:  # normalised coordinates
            x0, x1, y0, y1 = x0 * width, x1 * width, y0 * height, y1 * height
        x0, y0 = max(0, int(x0)), max(0, int(y0))
        x1, y1 = min(width, max(x0 + 1, round(x1))), min(height, max(y0 + 1, round(y1)))  # round() of a float is an int
        chosen: Box = (x0, y0, x1, y1)
        source = "box"
    else:
        chosen, source = default_box(width, height), "default"
    array = np.zeros((height, width), dtype=bool)
    array[chosen[1] : chosen[3], chosen[0] : chosen[2]] = True
    return array, {"region": source, "box": list(chosen)}


def corrupt(
    image: Any,
    kind: str,
    rng: random.Random,
    *,
    box: Sequence[float] | None = None,
    mask: Any | None = None,
    options: dict[str, Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Corrupt ``image`` (an RGB ``PIL.Image``) with ``kind`` and return it with its recorded parameters.

    Args:
        image: The original image.
        kind: One of :data:`CORRUPTIONS`.
        rng: The record's generator (noise and crop positions are drawn from it).
        box: Lesion box ``[x0, y0, x1, y1]`` in pixels (or 0-1 fractions) for ``noise`` / ``blackout`` / ``fill``.
        mask: Lesion mask image (non-zero = lesion) for the region corruptions; wins over ``box``.
        options: Overrides of :data:`DEFAULTS` for this kind (e.g. ``{"sigma": 30}``, ``{"region": "full"}``).

    Returns:
        ``(corrupted image, parameters)``.
    """
    from PIL import Image, ImageFilter

    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; choose from {', '.join(CORRUPTIONS)}")
    settings = {**DEFAULTS[kind], **(options or {})}
    params: dict[str, Any] = {"kind": kind, **settings, "size": list(image.size)}
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(float(settings["radius"]))), params
    if kind == "crop":
        width, height = image.size
        area = rng.uniform(float(settings["min_area"]), float(settings["max_area"]))
        scale = area**0.5
        cw, ch = max(1, int(width * scale)), max(1, int(height * scale))
        x0, y0 = rng.randint(0, width - cw), rng.randint(0, height - ch)
        params.update(box=[x0, y0, x0 + cw, y0 + ch], kept_area=round(cw * ch / (width * height), 4))
        return image.crop((x0, y0, x0 + cw, y0 + ch)), params
    if kind == "blackout" and settings.get("region") == "full":
        params.update(region="full")
        return Image.new("RGB", image.size), params
    region, where = _region_mask(image.size, box, mask)
    params.update(where)
    pixels = np.asarray(image.convert("RGB")).astype("float32")
    if kind == "noise":
        noise_rng = np.random.default_rng(rng.getrandbits(64))
        noise = noise_rng.normal(0.0, float(settings["sigma"]), size=pixels.shape).astype("float32")
        pixels[region] += noise[region]
    elif kind == "fill":
        pixels[region] = pixels[~region].mean(axis=0) if (~region).any() else 128.0  # the colour around it
    else:  # blackout
        pixels[region] = 0.0
    return Image.fromarray(pixels.clip(0, 255).round().astype("uint8")), params
