"""Test data for the trainer tests: real images from PyPI packages and hand-written preference records.

Images: scikit-image's fundus photograph (``retina``) and immunohistochemistry slide, pydicom's ``CT_small.dcm``
(read as DICOM by the loader). Corrupted ("rejected") images add Gaussian noise to the central region, the way
CoPO/MMedPO data noise the lesion region. Questions and answers are written here for the tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

# Four records: two visual-misinterpretation errors (laterality, modality), two text-side errors.
RECORDS = [
    {
        "id": "fundus-disc",
        "image": "images/retina.png",
        "rejected_image": "noised/retina.png",
        "question": "Is the optic disc visible in this fundus image?",
        "chosen": "Yes, the optic disc is visible on the left.",
        "rejected": "Yes, the optic disc is visible on the right.",
        "weight": 0.9,
        "error_type": "visual_misinterpretation",
    },
    {
        "id": "ihc-stain",
        "image": "images/ihc.png",
        "rejected_image": "noised/ihc.png",
        "question": "What does the brown staining show?",
        "chosen": "Brown staining marks positive cells in the tissue.",
        "rejected": "Brown staining marks negative nuclei in the tissue.",
        "weight": 0.4,
        "error_type": "clinical_knowledge",
    },
    {
        "id": "ct-modality",
        "image": "images/ct_small.dcm",
        "rejected_image": "noised/ct.png",
        "question": "Which modality is this image?",
        "chosen": "This is a CT image of the abdomen.",
        "rejected": "This is an MRI image of the head.",
        "weight": 1.0,
        "error_type": "Visual_Misinterpretation",
    },
    {
        "id": "fundus-ma",
        "image": "images/retina.png",
        "rejected_image": "noised/retina.png",
        "question": "Are there microaneurysms in the retina?",
        "chosen": "No microaneurysms are seen.",
        "rejected": "Multiple microaneurysms are seen.",
        "weight": 0.2,
        "error_type": "reasoning",
    },
]


def _noise_centre(pixels: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = pixels.astype("float32").copy()
    h, w = out.shape[:2]
    region = out[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]
    region += rng.normal(0, 60, size=region.shape)
    return out.clip(0, 255).astype("uint8")


def write_images(root: Path) -> Path:
    """Write the test images (small copies, to keep image processing cheap) under ``root``."""
    import pydicom.data
    from PIL import Image
    from skimage import data as skdata

    from medbench.train.data import load_image

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "noised").mkdir(parents=True, exist_ok=True)
    retina = np.asarray(Image.fromarray(skdata.retina()).convert("RGB").resize((96, 96)))
    ihc = np.asarray(Image.fromarray(skdata.immunohistochemistry()).convert("RGB").resize((96, 96)))
    Image.fromarray(retina).save(root / "images" / "retina.png")
    Image.fromarray(ihc).save(root / "images" / "ihc.png")
    shutil.copy(pydicom.data.get_testdata_file("CT_small.dcm"), root / "images" / "ct_small.dcm")
    ct = np.asarray(load_image(root / "images" / "ct_small.dcm"))
    Image.fromarray(_noise_centre(retina, 0)).save(root / "noised" / "retina.png")
    Image.fromarray(_noise_centre(ihc, 1)).save(root / "noised" / "ihc.png")
    Image.fromarray(_noise_centre(ct, 2)).save(root / "noised" / "ct.png")
    return root


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def to_llava_conversations(record: dict) -> dict:
    """The authors' LLaVA-conversation form of a native record (weight under their `weighted_score` key)."""
    out = {
        "id": record["id"],
        "image": record["image"],
        "rejected_image": record["rejected_image"],
        "weighted_score": record["weight"],
        "conversations": [
            {"from": "human", "value": "<image>\n" + record["question"]},
            {"from": "gpt", "value": record["chosen"]},
        ],
        "rejected_conversations": [
            {"from": "human", "value": "<image>\n" + record["question"]},
            {"from": "gpt", "value": record["rejected"]},
        ],
    }
    if "error_type" in record:
        out["error_type"] = record["error_type"]
    return out


# Settings that keep a training run to a couple of seconds on 2 CPU cores.
FAST = {
    "max_steps": 2,
    "per_device_train_batch_size": 2,
    "learning_rate": 1e-4,
    "warmup_steps": 0.0,
    "save_strategy": "no",
    "max_length": 128,
    "lora_r": 4,
    "lora_alpha": 8,
    "dataloader_num_workers": 0,
}
