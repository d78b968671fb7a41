"""Rebuild the demo images in ``medbench/data/demo/images`` from files that PyPI packages ship.

Run ``python -m medbench.data.build_demo`` after changing this file. The images are real medical images
(pydicom's CT/MR/ultrasound test files, scikit-image's fundus and immunohistochemistry samples, nibabel's
brain MRI); the questions and reports in the demo JSONL files were written for medbench. The DICOM
Modality tag is the ground truth for the modality questions, and :func:`modality_of` lets the tests check
that the demo answers agree with it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGES_DIR = Path(__file__).resolve().parent / "demo" / "images"
MAX_SIDE = 224

# demo image name -> (package, file or function)
DICOM_IMAGES = {
    "ct_small.png": "CT_small.dcm",
    "mr_small.png": "MR_small.dcm",
    "us_rgb.png": "examples_rgb_color.dcm",
}
SKIMAGE_IMAGES = {
    "fundus_retina.png": "retina",
    "fundus_microaneurysms.png": "microaneurysms",
    "pathology_ihc.png": "immunohistochemistry",
}
NIFTI_IMAGES = {"brain_mri.png": "example4d.nii.gz"}


def _to_uint8(array: np.ndarray) -> np.ndarray:
    array = array.astype(np.float64)
    low, high = np.percentile(array, [1, 99])
    scaled = np.clip((array - low) / max(high - low, 1e-6), 0, 1)
    return (scaled * 255).round().astype(np.uint8)


def _dicom_path(name: str) -> str:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        raise FileNotFoundError(f"pydicom does not ship {name}")
    return str(path)


def modality_of(demo_image: str) -> str:
    """The DICOM Modality tag behind a demo image ("CT", "MR", "US"), read from the pydicom test file."""
    import pydicom

    return str(pydicom.dcmread(_dicom_path(DICOM_IMAGES[demo_image]), stop_before_pixels=True).Modality)


def _dicom_array(name: str) -> np.ndarray:
    import pydicom

    dataset = pydicom.dcmread(_dicom_path(name))
    pixels = dataset.pixel_array
    if pixels.ndim == 2:
        return _to_uint8(pixels)
    return pixels.astype(np.uint8)


def _nifti_array(name: str) -> np.ndarray:
    import nibabel
    import nibabel.testing

    volume = np.asanyarray(nibabel.load(str(Path(nibabel.testing.data_path) / name)).dataobj)
    axial = volume[:, :, volume.shape[2] // 2, 0]
    return _to_uint8(np.rot90(axial))


def _skimage_array(name: str) -> np.ndarray:
    import skimage.data

    return np.asarray(getattr(skimage.data, name)())


def build(images_dir: Path = IMAGES_DIR) -> list[Path]:
    """Write every demo image as PNG (longest side at most ``MAX_SIDE`` pixels) and return the paths."""
    from PIL import Image

    images_dir.mkdir(parents=True, exist_ok=True)
    arrays = {name: _dicom_array(source) for name, source in DICOM_IMAGES.items()}
    arrays.update({name: _skimage_array(source) for name, source in SKIMAGE_IMAGES.items()})
    arrays.update({name: _nifti_array(source) for name, source in NIFTI_IMAGES.items()})
    written = []
    for name, array in arrays.items():
        image = Image.fromarray(array).convert("RGB")
        if min(image.size) < 96:  # tiny test files: upsample so a vision encoder sees more than a few patches
            image = image.resize((image.width * 2, image.height * 2), Image.Resampling.BICUBIC)
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        path = images_dir / name
        image.save(path, optimize=True)
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in build():
        print(written_path)
