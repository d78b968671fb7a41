"""The probe's control image m″: the same corruption as m′ on a lesion-free region of the same size."""

import json
import random

import numpy as np
import pytest

from medbench.synth import make_lesion_vqa
from medbench.train.prefs.build import BuildOptions, build
from medbench.train.prefs.images import control_box


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_control_box_keeps_the_size_and_never_overlaps_a_lesion():
    rng = random.Random(0)
    for trial in range(300):
        lesions = []
        for _ in range(rng.randint(0, 4)):
            x, y, side = rng.randint(0, 50), rng.randint(0, 50), rng.randint(4, 14)
            lesions.append([x, y, min(64, x + side), min(64, y + side)])
        x, y = rng.randint(0, 40), rng.randint(0, 40)
        region = [x, y, x + rng.randint(3, 24), y + rng.randint(3, 24)]
        box = control_box(64, 64, region, lesions, random.Random(trial))
        assert box is not None
        assert (box[2] - box[0], box[3] - box[1]) == (region[2] - region[0], region[3] - region[1])
        assert 0 <= box[0] and box[2] <= 64 and 0 <= box[1] and box[3] <= 64
        assert not any(_overlap(box, lesion) for lesion in lesions)
    assert control_box(10, 10, [0, 0, 6, 6], [[4, 4, 6, 6]], random.Random(0)) is None  # no free place


@pytest.fixture(scope="module")
def probe_pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    make_lesion_vqa(root / "data", 4, 80, seed=3, progress=False)
    options = BuildOptions(recipe="mdpo", corruption="fill", control=True, prompt_of="medbench_vqa_rad", progress=False)
    report = build(str(root / "data" / "test.jsonl"), root / "pairs", options)
    items = {json.loads(line)["id"]: json.loads(line) for line in (root / "data" / "test.jsonl").read_text().splitlines()}
    records = [json.loads(line) for line in report.records_path.read_text().splitlines()]
    return root, items, records


def test_built_controls_avoid_every_lesion_and_corrupt_the_same_size_alike(probe_pairs):
    from PIL import Image

    root, items, records = probe_pairs
    assert len(records) == 80 and all(record["control_image"] for record in records)
    for record in records:
        lesions = items[record["id"]].get("boxes", [])
        corrupted, control = record["meta"]["corruption"], record["meta"]["control"]
        assert control["kind"] == corrupted["kind"] == "fill"
        a, b = corrupted["box"], control["box"]
        assert (a[2] - a[0], a[3] - a[1]) == (b[2] - b[0], b[3] - b[1])
        assert not any(_overlap(b, lesion) for lesion in lesions)
        # The control image differs from the original only inside its box.
        original = np.asarray(Image.open(root / "pairs" / record["image"]).convert("RGB")).astype(int)
        changed = np.asarray(Image.open(root / "pairs" / record["control_image"]).convert("RGB")).astype(int) != original
        outside = changed.copy()
        outside[b[1]:b[3], b[0]:b[2]] = False
        assert not outside.any()


def test_the_probe_scores_lesion_evidence_as_image_minus_control_dependence(probe_pairs, tiny_llava_dir):
    from medbench.hfload import load_vision_language_model
    from medbench.train.data import load_preference_file
    from medbench.train.probe import score_records, summarise

    root, _, _ = probe_pairs
    records = load_preference_file(root / "pairs" / "prefs.jsonl")[:8]
    model, processor = load_vision_language_model(str(tiny_llava_dir), dtype="float32")
    scores = score_records(model, processor, records, batch_size=4, progress=False)
    for entry in scores:
        assert entry["lesion_evidence"] == pytest.approx(entry["chosen_control"] - entry["chosen_corrupted"])
        assert entry["lesion_evidence"] == pytest.approx(entry["image_dependence"] - entry["control_dependence"])
    assert summarise(scores)["lesion_evidence"]["n"] == 8
