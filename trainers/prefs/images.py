"""Corrupted images for the image-side objectives (CoPO, mDPO, MMedPO, error-targeted), with their parameters.

Each corruption is a pure function ``(image, rng, **options) -> (corrupted image, parameters)``; the parameters
(region, sizes, seeds) go into the record's ``meta`` and the manifest, so any derived image can be re-made.

* ``noise``: Gaussian noise (σ in grey levels) inside the record's lesion box or mask when it has one, else the
  documented default region: the central box spanning the middle half of the width and height (25 % of the area),
  where most single-finding images put the finding. CoPO and MMedPO noise the lesion region.
* ``crop``: a random crop keeping at most 20 % of the area (mDPO's paper: 0-20 %), aspect ratio kept.
* ``blackout``: the same region as ``noise`` set to black (the whole image with ``region: full``).
* ``blur``: Gaussian blur of the whole image (radius in pixels).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np

CORRUPTIONS = ("noise", "crop", "blackout", "blur")
DEFAULTS: dict[str, dict[str, Any]] = {
    "noise": {"sigma": 60.0},
    "crop": {"min_area": 0.05, "max_area": 0.20},
    "blackout": {},
    "blur": {"radius": 8.0},
}
DEFAULT_REGION = "centre: x and y from 25 % to 75 % of the image (25 % of the area)"

Box = tuple[int, int, int, int]


def default_box(width: int, height: int) -> Box:
    """The default region (:data:`DEFAULT_REGION`) as ``(x0, y0, x1, y1)`` pixels."""
    return (width // 4, height // 4, max(width // 4 + 1, 3 * width // 4), max(height // 4 + 1, 3 * height // 4))


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
        x1, y1 = min(width, max(x0 + 1, int(round(x1)))), min(height, max(y0 + 1, int(round(y1))))
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
        box: Lesion box ``[x0, y0, x1, y1]`` in pixels (or 0-1 fractions) for ``noise`` / ``blackout``.
        mask: Lesion mask image (non-zero = lesion) for ``noise`` / ``blackout``; wins over ``box``.
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
    else:  # blackout
        pixels[region] = 0.0
    return Image.fromarray(pixels.clip(0, 255).round().astype("uint8")), params
