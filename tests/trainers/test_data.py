"""Preference files: the native schema, the authors' LLaVA-conversation records, validation, images."""

from __future__ import annotations

import json

import pytest
from _prefdata import RECORDS, to_llava_conversations, write_jsonl

from medbench.errors import DataError
from medbench.train.data import load_image, load_preference_file, records_to_dataset, validate_records
from medbench.train.objectives import OBJECTIVES

VISUAL = frozenset({"visual_misinterpretation"})


def _strip(record: dict) -> dict:
    return {key: value for key, value in record.items() if key != "_where"}


def test_native_file_loads_with_absolute_images(pref_dir, pref_file):
    records = load_preference_file(pref_file)
    assert [r["id"] for r in records] == [r["id"] for r in RECORDS]
    first = records[0]
    assert first["question"] == RECORDS[0]["question"]
    assert first["image"] == str(pref_dir / "images" / "retina.png")
    assert first["rejected_image"] == str(pref_dir / "noised" / "retina.png")
    assert first["weight"] == 0.9 and first["error_type"] == "visual_misinterpretation"


def test_llava_conversation_records_load_the_same(pref_dir, pref_file):
    native = [_strip(r) for r in load_preference_file(pref_file)]
    authors = [_strip(r) for r in load_preference_file(pref_dir / "llava.json")]
    # Same questions (<image> placeholder removed), answers, images, and the weight read from `weighted_score`.
    assert authors == native


def test_weighted_score_becomes_the_mmedpo_weight(tmp_path, pref_dir):
    record = to_llava_conversations(RECORDS[1])
    record["weighted_score"] = 0.37
    path = tmp_path / "one.jsonl"
    write_jsonl(path, [record])
    (loaded,) = load_preference_file(path, image_root=pref_dir)
    assert loaded["weight"] == 0.37
    validate_records([loaded], "mmedpo", OBJECTIVES["mmedpo"], VISUAL, path)


@pytest.mark.parametrize(
    ("recipe", "objective", "drop", "field"),
    [
        ("copo", "copo", "rejected_image", "rejected_image"),
        ("mdpo", "mdpo", "rejected_image", "rejected_image"),
        ("mmedpo", "mmedpo", "weight", "weight"),
        ("dpo", "dpo", "rejected", "rejected"),
        ("error_targeted", "error_targeted", "error_type", "error_type"),
    ],
)
def test_missing_field_stops_with_one_line_naming_field_and_recipe(tmp_path, pref_dir, recipe, objective, drop, field):
    rows = [dict(r) for r in RECORDS]
    for row in rows[1:3]:
        row.pop(drop)
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    records = load_preference_file(path, image_root=pref_dir)
    with pytest.raises(DataError) as info:
        validate_records(records, recipe, OBJECTIVES[objective], VISUAL, path)
    message = str(info.value)
    assert "\n" not in message
    assert f"recipe '{recipe}' needs field '{field}'" in message
    assert f"2 of 4 records in {path} lack it (first: {path}:2, id 'ihc-stain')" in message


def test_error_targeted_needs_rejected_only_for_text_side_records(tmp_path, pref_dir):
    rows = [dict(r) for r in RECORDS]
    rows[0].pop("rejected")  # visual record: trains with CoPO, needs no rejected answer
    rows[1].pop("rejected_image")  # text-side record: trains with DPO, needs no corrupted image
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    records = load_preference_file(path, image_root=pref_dir)
    validate_records(records, "error_targeted", OBJECTIVES["error_targeted"], VISUAL, path)
    rows[3].pop("rejected")  # text-side record without its rejected answer
    write_jsonl(path, rows)
    records = load_preference_file(path, image_root=pref_dir)
    with pytest.raises(DataError, match="recipe 'error_targeted' needs field 'rejected'.*id 'fundus-ma'"):
        validate_records(records, "error_targeted", OBJECTIVES["error_targeted"], VISUAL, path)
    # The CoPO-only ablation needs the corrupted image on every record.
    with pytest.raises(DataError, match="recipe 'error_targeted_copo_only' needs field 'rejected_image'"):
        validate_records(records, "error_targeted_copo_only", OBJECTIVES["copo"], VISUAL, path)


def test_missing_image_names_the_file_and_the_root(tmp_path, pref_dir):
    path = write_jsonl(tmp_path / "data.jsonl", [dict(RECORDS[0], image="images/missing.png")])
    with pytest.raises(DataError) as info:
        load_preference_file(path, image_root=pref_dir)
    message = str(info.value)
    assert f"{path}:1: record 'fundus-disc': image file not found: {pref_dir / 'images' / 'missing.png'}" in message
    assert "set --image_root" in message and "\n" not in message


def test_rejected_images_can_live_elsewhere(tmp_path, pref_dir):
    row = dict(RECORDS[0], rejected_image="retina.png")
    path = write_jsonl(tmp_path / "data.jsonl", [row])
    (record,) = load_preference_file(path, image_root=pref_dir, rejected_image_root=pref_dir / "noised")
    assert record["rejected_image"] == str(pref_dir / "noised" / "retina.png")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"id": 1, "image": "images/retina.png"\n', "data.jsonl: line 1 is not valid JSON"),
        (json.dumps({"image": "images/retina.png", "weight": -1}) + "\n", "`weight` must be a finite number >= 0"),
        (json.dumps({"image": "images/retina.png", "weight": "high"}) + "\n", "`weight` must be a finite number"),
        (json.dumps({"image": ["a.png", "b.png"]}) + "\n", "`image` lists 2 images"),
        (json.dumps({"conversations": [{"from": "human", "value": "q"}]}) + "\n", "must be a list of two turns"),
        (
            json.dumps({"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}) + "\n",
            "must alternate human then gpt",
        ),
        ("[1, 2]\n", "each record must be a JSON object"),
        ("\n", "no preference records"),
    ],
)
def test_malformed_files_fail_with_one_line(tmp_path, pref_dir, content, message):
    path = tmp_path / "data.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as info:
        load_preference_file(path, image_root=pref_dir)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_data_file():
    with pytest.raises(DataError, match="preference data file not found"):
        load_preference_file("/no/such/prefs.jsonl")


def test_empty_text_counts_as_missing(tmp_path, pref_dir):
    path = write_jsonl(tmp_path / "data.jsonl", [dict(RECORDS[0], rejected="  ")])
    records = load_preference_file(path, image_root=pref_dir)
    with pytest.raises(DataError, match="needs field 'rejected'"):
        validate_records(records, "dpo", OBJECTIVES["dpo"], VISUAL, path)


def test_dicom_and_png_images_load_as_rgb(pref_dir):
    ct = load_image(pref_dir / "images" / "ct_small.dcm")
    assert ct.mode == "RGB" and ct.size == (128, 128)
    assert len(set(ct.getdata())) > 10  # windowed to real grey levels, not a flat image
    assert load_image(pref_dir / "images" / "retina.png").mode == "RGB"
    (pref_dir / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot read image"):
        load_image(pref_dir / "broken.png")


def test_records_become_a_dataset_with_every_field(pref_file):
    dataset = records_to_dataset(load_preference_file(pref_file))
    assert len(dataset) == 4
    assert set(dataset.column_names) == {
        "id",
        "image",
        "question",
        "chosen",
        "rejected",
        "rejected_image",
        "weight",
        "error_type",
        "control_image",
    }


def test_near_miss_error_type_is_refused_with_the_right_key(tmp_path, pref_dir):
    import json

    record = {"id": "x", "image": str(pref_dir / "images" / "retina.png"), "question": "Side?", "chosen": "left",
              "rejected": "right", "error_type": "visual misinterpretation"}
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(DataError, match=r"prefs.jsonl:1: error_type 'visual misinterpretation' .* did you mean "
                                        r"'visual_misinterpretation'"):
        load_preference_file(path)


def test_subtype_error_types_route_to_the_image_side(tmp_path, pref_dir):
    import json

    from medbench.train.objectives import OBJECTIVES

    rows = [{"id": str(i), "image": str(pref_dir / "images" / "retina.png"), "question": "q", "chosen": "a",
             "rejected": "b", "rejected_image": str(pref_dir / "noised" / "retina.png"), "error_type": kind}
            for i, kind in enumerate(["laterality_position", "diagnosis"])]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first, second = load_preference_file(path)
    objective = OBJECTIVES["error_targeted"]
    assert objective.rows_for(first, VISUAL)[1] == ("chosen", "rejected_image")
    assert objective.rows_for(second, VISUAL)[1] == ("rejected", "image")
