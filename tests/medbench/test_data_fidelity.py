"""Data fidelity: VQA-RAD's own closed/open labels, the study's question files as they are, pinned hub reads,
and bad files (encodings, truncated images) that stop with one line."""

import csv
import io
import json
import re
import threading
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from medbench.cli import main
from medbench.commands.data import check_tasks
from medbench.data import loading
from medbench.data.answer_types import normalize_key_text, read_table
from medbench.data.loading import load_task_docs
from medbench.data.sources import SOURCES
from medbench.errors import DataError
from medbench.metrics.vqa import is_closed_question
from medbench.taskfiles import task_configs, tasks_dir

TABLE = tasks_dir() / "medbench_vqa_rad" / "answer_types.tsv"


def _table_rows() -> list[dict]:
    with TABLE.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def _hub_text(text: str) -> str:
    """The hub copy's cleaning of VQA-RAD text (its processing script: lower-case, single spaces, "?" glued)."""
    return re.sub(" +", " ", text.lower()).replace(" ?", "?").strip()


@pytest.fixture
def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


# --- VQA-RAD closed/open labels -------------------------------------------------------------------------------


def test_the_shipped_label_table_gives_vqa_rad_own_counts():
    table = read_table(TABLE)
    declared = task_configs()["medbench_vqa_rad"]["metadata"]["answer_types"]
    counts = Counter(row["answer_type"] for row in _table_rows())
    assert table.rows == 451 == SOURCES["medbench_vqa_rad"].expected_rows
    assert (counts["CLOSED"], counts["OPEN"]) == (272, 179) == (declared["closed"], declared["open"])
    # the yes/no rule the task used before misses 21 choice questions ("Is this an MRI or a CT scan?")
    inferred = Counter(is_closed_question(row["answer"]) for row in _table_rows())
    assert (inferred[True], inferred[False]) == (251, 200)
    assert table.lookup("Is this an MRI or a CT scan?", "MRI") == "CLOSED"


def test_hub_rows_get_the_dataset_labels_and_are_read_at_the_pinned_split_and_revision(monkeypatch, tmp_path):
    import datasets

    rows = _table_rows()
    picture = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(picture)
    table = datasets.Dataset.from_dict(
        {
            "image": [str(picture)] * len(rows),
            "question": [_hub_text(row["question"]) for row in rows],
            "answer": [_hub_text(row["answer"]) for row in rows],
        }
    ).cast_column("image", datasets.Image())
    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return table

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    docs = load_task_docs("medbench_vqa_rad", {})
    kinds = Counter(docs["answer_type"])
    assert (kinds["CLOSED"], kinds["OPEN"]) == (272, 179)
    assert calls == [
        ("flaviagiammarino/vqa-rad", {"split": "test", "revision": SOURCES["medbench_vqa_rad"].hub_revision})
    ]
    assert docs[0]["source"] == f"hub:flaviagiammarino/vqa-rad:test@{SOURCES['medbench_vqa_rad'].hub_revision}"

    pinned = SOURCES["medbench_vqa_rad"].hub_revision
    assert check_tasks(["medbench_vqa_rad"], {}) == [
        f"medbench_vqa_rad: 451 documents from hub:flaviagiammarino/vqa-rad:test@{pinned} (272 closed, 179 open)"
    ]

    # a hub row the table does not know means the data is not the pinned copy: stop, do not guess
    changed = table.select(range(3)).map(lambda row: {"question": row["question"] + " really"})
    monkeypatch.setattr(datasets, "load_dataset", lambda path, **kwargs: changed)
    with pytest.raises(DataError, match=r"3 of 3 rows are not in the label table answer_types.tsv"):
        load_task_docs("medbench_vqa_rad", {"MEDBENCH_VQA_RAD_REVISION": "main"})


def test_label_keys_ignore_case_punctuation_and_the_image_marker():
    assert normalize_key_text("Is this an MRI or a CT scan?\n<image>") == normalize_key_text("is this an mri or a ct scan?")
    assert normalize_key_text("Is the  lesion on the left ?") == "is the lesion on the left"


def test_a_local_copy_without_labels_uses_the_table_and_keeps_its_own_labels(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    rows = [
        {"image": "a.png", "question": "Is this an MRI or a CT scan?", "answer": "MRI"},
        {"image": "a.png", "question": "Is this an MRI or a CT scan?", "answer": "MRI", "answer_type": "OPEN"},
        {"image": "a.png", "question": "A question of my own?", "answer": "left"},
    ]
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    docs = load_task_docs("medbench_vqa_rad", {"MEDBENCH_VQA_RAD": str(data)})
    assert docs["answer_type"] == ["CLOSED", "OPEN", "OPEN"]


# --- the study's question files, as they are -------------------------------------------------------------------
# Field names, types and layout of dmis-lab/med-vlm-dpo data/benchmark_question_file/; the texts are medbench's own.

STUDY_VQA_FILES = {
    "medbench_vqa_rad": (
        "VQA_RAD_test_llavamed_format.jsonl",
        [
            {"question_id": 10, "image": "synpic100.jpg", "text": "Is the liver enlarged?\n<image>", "gpt4_answer": "yes", "answer_type": "CLOSED"},
            {"question_id": 12, "image": "synpic100.jpg", "text": "Is this a CT or an MRI?\n<image>", "gpt4_answer": "CT", "answer_type": "CLOSED"},
            {"question_id": 13, "image": "synpic101.jpg", "text": "Which lobe holds the lesion?\n<image>", "gpt4_answer": "Right upper lobe", "answer_type": "OPEN"},
        ],
    ),
    "medbench_slake": (
        "SLAKE_test_llavamed_format.jsonl",
        [
            {"question_id": 11934, "image": "xmlab100/source.jpg", "text": "What modality is shown?", "gpt4_answer": "MRI", "answer_type": "OPEN"},
            {"question_id": 11935, "image": "xmlab100/source.jpg", "text": "Is the brain healthy?", "gpt4_answer": "No", "answer_type": "CLOSED"},
        ],
    ),
    "medbench_pathvqa": (
        "pvqa_test_llavamed_format.jsonl",
        [
            {"question_id": 0, "image": "test0_0.png", "text": "What does the left panel show?", "gpt4_answer": "a granuloma", "answer_type": "OPEN"},
            {"question_id": 1, "image": "test0_1.png", "text": "is necrosis present?\n<image>", "gpt4_answer": "yes", "answer_type": "CLOSED"},
        ],
    ),
}


def _images_for(rows: list[dict], folder: Path, field: str, jpeg: bytes) -> None:
    for row in rows:
        for name in row[field] if isinstance(row[field], list) else [row[field]]:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(jpeg)


@pytest.mark.parametrize("task", sorted(STUDY_VQA_FILES))
def test_the_study_vqa_question_files_load_unchanged(tmp_path, task, jpeg_bytes):
    name, rows = STUDY_VQA_FILES[task]
    images = tmp_path / "images"
    _images_for(rows, images, "image", jpeg_bytes)
    data = tmp_path / name
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    env = {SOURCES[task].env_var: str(data), SOURCES[task].images_env_var: str(images)}
    docs = load_task_docs(task, env)
    assert docs["id"] == [str(row["question_id"]) for row in rows]
    assert docs["question"] == [row["text"].replace("<image>", "").strip() for row in rows]
    assert docs["answer"] == [row["gpt4_answer"] for row in rows]
    assert docs["answer_type"] == [row["answer_type"] for row in rows]
    assert docs[0]["image"].size == (64, 64)


MIMIC_ROWS = [
    {"id": 50000001, "report": "The lungs are clear. No pleural effusion.", "image_path": ["0a1b2c3d-00000001.jpg"]},
    {"id": 50000002, "report": "Mild cardiomegaly. No focal consolidation.", "image_path": ["0a1b2c3d-00000002.jpg"]},
]


@pytest.mark.parametrize("layout", ["jsonl", "json"])
def test_the_study_mimic_cxr_findings_file_loads_unchanged(tmp_path, layout, jpeg_bytes):
    images = tmp_path / "mimic-cxr-jpg"
    images.mkdir()
    _images_for(MIMIC_ROWS, images, "image_path", jpeg_bytes)
    data = tmp_path / f"mimic-cxr-findings_test_single_image.{layout}"
    text = json.dumps(MIMIC_ROWS, indent=4) if layout == "json" else "".join(json.dumps(row) + "\n" for row in MIMIC_ROWS)
    data.write_text(text)
    docs = load_task_docs("medbench_mimic_cxr", {"MEDBENCH_MIMIC_CXR": str(data), "MEDBENCH_MIMIC_CXR_IMAGES": str(images)})
    assert docs["id"] == ["50000001", "50000002"]
    assert docs["reference"] == [row["report"] for row in MIMIC_ROWS]
    assert docs[1]["image"].size == (64, 64)


def test_a_row_with_several_images_says_one_image_per_row(tmp_path, jpeg_bytes):
    rows = [{"id": 1, "report": "Clear lungs.", "image_path": ["a.jpg", "b.jpg"]}]
    _images_for(rows, tmp_path, "image_path", jpeg_bytes)
    data = tmp_path / "two.jsonl"
    data.write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(DataError, match=r"row 1: field 'image_path' holds 2 entries; medbench evaluates one image per row"):
        load_task_docs("medbench_mimic_cxr", {"MEDBENCH_MIMIC_CXR": str(data)})


# --- hub reads --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["medbench_vqa_rad", "medbench_pathvqa"])
def test_a_failed_hub_load_is_one_line(monkeypatch, task):
    import datasets

    def offline(path, **kwargs):
        raise ConnectionError("Couldn't reach 'x' on the Hub (LocalEntryNotFoundError)\nlong traceback text")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as caught:
        load_task_docs(task, {})
    message = str(caught.value)
    assert "\n" not in message
    assert f"could not load hub:{SOURCES[task].hub_id}:test@" in message
    assert f"set {SOURCES[task].env_var} to a local copy" in message


def test_pathvqa_without_a_verified_pin_reads_and_records_the_default_branch(monkeypatch):
    import datasets

    seen = {}
    monkeypatch.setattr(datasets, "load_dataset", lambda path, **kwargs: seen.update(kwargs) or datasets.Dataset.from_dict({}))
    with pytest.raises(DataError):
        load_task_docs("medbench_pathvqa", {})
    assert seen == {"split": "test", "revision": SOURCES["medbench_pathvqa"].hub_revision}


def test_concurrent_unpacks_of_the_same_archive_both_succeed(tmp_path, jpeg_bytes):
    archive = tmp_path / "imgs.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for index in range(40):
            bundle.writestr(f"imgs/xmlab{index}/source.jpg", jpeg_bytes)
    target = tmp_path / "cache" / "slake" / "rev" / "imgs"
    errors = []

    def unpack():
        try:
            loading._unpack_atomically(archive, "imgs", target)
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=unpack) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(list(target.rglob("source.jpg"))) == 40
    assert [path.name for path in target.parent.iterdir()] == ["imgs"]


# --- bad files --------------------------------------------------------------------------------------------------


def test_a_non_utf8_file_names_the_line_and_the_fix(tmp_path, jpeg_bytes):
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes)
    data = tmp_path / "latin1.jsonl"
    good = json.dumps({"id": 1, "image": "a.jpg", "question": "Is it?", "answer": "yes"})
    data.write_bytes((good + "\n" + '{"id": 2, "image": "a.jpg", "question": "Caf\u00e9?", "answer": "no"}\n').encode("latin-1"))
    with pytest.raises(DataError) as caught:
        load_task_docs("medbench_vqa_rad", {"MEDBENCH_VQA_RAD": str(data)})
    message = str(caught.value)
    assert message.startswith(f"{data}: line 2 is not UTF-8 (byte 0xe9)")
    assert "re-save the file as UTF-8" in message and "\n" not in message


@pytest.mark.parametrize("suffix", ["jsonl", "json"])
def test_a_byte_order_mark_is_accepted(tmp_path, jpeg_bytes, suffix):
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes)
    rows = [{"id": "bom", "image": "a.jpg", "question": "Is it?", "answer": "yes"}]
    data = tmp_path / f"bom.{suffix}"
    body = json.dumps(rows) if suffix == "json" else json.dumps(rows[0]) + "\n"
    data.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    assert load_task_docs("medbench_vqa_rad", {"MEDBENCH_VQA_RAD": str(data)})["id"] == ["bom"]


@pytest.fixture
def truncated_jpeg_task(tmp_path, jpeg_bytes):
    (tmp_path / "cut.jpg").write_bytes(jpeg_bytes[: len(jpeg_bytes) * 3 // 4])
    with Image.open(tmp_path / "cut.jpg") as image:
        image.verify()  # the header is intact: verify() alone lets this file through
    data = tmp_path / "test.jsonl"
    data.write_text(json.dumps({"id": 1, "image": "cut.jpg", "question": "Is it?", "answer": "yes"}) + "\n")
    return data


def test_a_truncated_jpeg_fails_even_where_lmms_eval_allows_truncated_images(truncated_jpeg_task, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # what importing lmms_eval.api.task does
    with pytest.raises(DataError, match=r"row 1: image 'cut.jpg' cannot be read as an image \(OSError: .*truncated"):
        load_task_docs("medbench_vqa_rad", {"MEDBENCH_VQA_RAD": str(truncated_jpeg_task)})
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the global switch is left as it was


def test_medbench_data_check_fails_on_a_truncated_jpeg(truncated_jpeg_task, monkeypatch, capsys):
    monkeypatch.setenv("MEDBENCH_VQA_RAD", str(truncated_jpeg_task))
    assert main(["data", "check", "medbench_vqa_rad"]) == 2
    error = capsys.readouterr().err.strip()
    assert "cut.jpg' cannot be read as an image" in error and len(error.splitlines()) == 1


def test_data_check_decodes_every_image_of_a_saved_hub_copy(tmp_path, jpeg_bytes):
    import datasets

    (tmp_path / "good.jpg").write_bytes(jpeg_bytes)
    (tmp_path / "cut.jpg").write_bytes(jpeg_bytes[: len(jpeg_bytes) * 3 // 4])
    table = datasets.Dataset.from_dict(
        {"image": [str(tmp_path / "good.jpg"), str(tmp_path / "cut.jpg")], "question": ["is it?", "where?"], "answer": ["no", "lung"]}
    ).cast_column("image", datasets.Image())
    table.save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataError, match=r"saved:.*: the image of document '1' cannot be read as an image \(OSError"):
        check_tasks(["medbench_pathvqa"], {"MEDBENCH_PATHVQA": str(tmp_path / "saved")})
