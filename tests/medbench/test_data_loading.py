"""Loading and validating task data: every source kind, and one clear error line for each user mistake."""

import json
from pathlib import Path

import pytest
from PIL import Image

from medbench.data.build_demo import DICOM_IMAGES, modality_of
from medbench.data.loading import DEMO_DIR, load_task_docs, resolve_source
from medbench.data.sources import SOURCES
from medbench.errors import DataError

DEMO = {"MEDBENCH_DATA": "demo"}


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


@pytest.fixture
def image_dir(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (20, 16), (120, 30, 30)).save(folder / "a.png")
    Image.new("RGB", (20, 16), (30, 30, 120)).save(folder / "b.png")
    return folder


@pytest.mark.parametrize("task", sorted(SOURCES))
def test_demo_data_loads_for_every_task(task):
    docs = load_task_docs(task, DEMO)
    assert len(docs) > 0
    first = docs[0]
    assert first["image"].size[0] > 0
    assert first["source"].startswith("demo:")
    if SOURCES[task].kind == "vqa":
        assert set(docs["answer_type"]) == {"CLOSED", "OPEN"}
    else:
        assert first["reference"]


def test_demo_modality_answers_agree_with_dicom_tags():
    names = {"CT": {"ct"}, "MR": {"mri", "mr"}, "US": {"ultrasound", "us"}}
    rows = [json.loads(line) for line in (DEMO_DIR / "vqa.jsonl").read_text().splitlines()]
    checked = 0
    for row in rows:
        image = Path(row["image"]).name
        if image in DICOM_IMAGES and "modality" in row["question"].lower():
            assert row["answer"].lower() in names[modality_of(image)]
            checked += 1
        if image in DICOM_IMAGES and row["question"].startswith("Is this a CT scan?"):
            assert (row["answer"] == "yes") == (modality_of(image) == "CT")
            checked += 1
    assert checked >= 2


def test_local_jsonl_with_llava_med_field_names(tmp_path, image_dir):
    data = _write_jsonl(
        tmp_path / "q.jsonl",
        [
            {"question_id": 7, "image": "a.png", "text": "<image>\nIs there a mass?", "gpt4_answer": "No", "answer_type": "closed"},
            {"question_id": 8, "image": "b.png", "text": "Which organ?", "gpt4_answer": "Liver", "answer_type": "OPEN"},
        ],
    )
    docs = load_task_docs("medbench_vqa_rad", {"MEDBENCH_VQA_RAD": str(data), "MEDBENCH_VQA_RAD_IMAGES": str(image_dir)})
    assert docs["id"] == ["7", "8"]
    assert docs["question"] == ["Is there a mass?", "Which organ?"]
    assert docs["answer_type"] == ["CLOSED", "OPEN"]
    assert docs[0]["source"] == f"local:{data}"


def test_answer_type_is_derived_from_yes_no_gold_when_missing(tmp_path, image_dir):
    _write_jsonl(
        tmp_path / "test.jsonl",
        [{"image": "imgs/a.png", "question": "q1", "answer": "Yes"}, {"image": "imgs/b.png", "question": "q2", "answer": "Normal"}],
    )
    docs = load_task_docs("medbench_pathvqa", {"MEDBENCH_PATHVQA": str(tmp_path)})  # a folder holding test.jsonl
    assert docs["answer_type"] == ["CLOSED", "OPEN"]
    assert docs["id"] == ["1", "2"]


def test_slake_style_json_keeps_english_questions(tmp_path, image_dir):
    rows = [
        {"qid": 1, "img_name": "a.png", "question": "Is this a CT?", "answer": "Yes", "answer_type": "CLOSED", "q_lang": "en"},
        {"qid": 2, "img_name": "a.png", "question": "这是CT吗?", "answer": "是", "answer_type": "CLOSED", "q_lang": "zh"},
    ]
    (tmp_path / "test.json").write_text(json.dumps(rows, ensure_ascii=False))
    docs = load_task_docs("medbench_slake", {"MEDBENCH_SLAKE": str(tmp_path), "MEDBENCH_SLAKE_IMAGES": str(image_dir)})
    assert docs["id"] == ["1"]


def test_report_rows_with_precomputed_facts(tmp_path, image_dir):
    data = _write_jsonl(
        tmp_path / "findings.jsonl",
        [{"id": "s1", "image": "a.png", "findings": "No effusion. Heart normal.", "facts": ["No effusion.", "Heart normal."]}],
    )
    docs = load_task_docs("medbench_mimic_cxr", {"MEDBENCH_MIMIC_CXR": str(data), "MEDBENCH_MIMIC_CXR_IMAGES": str(image_dir)})
    assert docs[0]["reference"] == "No effusion. Heart normal."
    assert docs[0]["facts"] == ["No effusion.", "Heart normal."]


def test_hub_format_parquet_snapshot_and_saved_dataset(tmp_path, image_dir):
    import datasets

    table = datasets.Dataset.from_dict(
        {"image": [str(image_dir / "a.png"), str(image_dir / "b.png")], "question": ["is it?", "what?"], "answer": ["no", "lung"]}
    ).cast_column("image", datasets.Image())
    snapshot = tmp_path / "snapshot" / "data"
    snapshot.mkdir(parents=True)
    table.to_parquet(str(snapshot / "test-00000-of-00001.parquet"))
    docs = load_task_docs("medbench_vqa_rad", {"MEDBENCH_VQA_RAD": str(tmp_path / "snapshot")})
    assert docs["answer_type"] == ["CLOSED", "OPEN"]
    assert docs["id"] == ["0", "1"]
    assert docs[1]["image"].size == (20, 16)

    datasets.DatasetDict({"test": table}).save_to_disk(str(tmp_path / "saved"))
    saved = load_task_docs("medbench_vqa_rad", {"MEDBENCH_VQA_RAD": str(tmp_path / "saved")})
    assert saved["answer"] == ["no", "lung"]


def test_hub_table_missing_column_names_it(tmp_path, image_dir):
    import datasets

    table = datasets.Dataset.from_dict({"image": [str(image_dir / "a.png")], "query": ["is it?"], "answer": ["no"]})
    table.cast_column("image", datasets.Image()).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataError, match=r"no 'question' column \(accepted names: question, text"):
        load_task_docs("medbench_vqa_rad", {"MEDBENCH_VQA_RAD": str(tmp_path / "saved")})


ERROR_CASES = [
    # (rows or raw text, expected message fragment)
    ([{"id": 1, "image": "a.png", "question": "q"}], r"row 1: missing field 'answer' \(accepted names: answer, gpt4_answer\)"),
    ([{"id": 1, "image": "a.png", "answer": "yes"}], r"row 1: missing field 'question'"),
    ([{"id": 1, "image": "missing.png", "question": "q", "answer": "yes"}], r"row 1: image 'missing.png' not found under .*MEDBENCH_VQA_RAD_IMAGES"),
    ([{"id": 1, "image": "corrupt.png", "question": "q", "answer": "yes"}], r"row 1: image 'corrupt.png' cannot be read as an image"),
    (["{not json"], r"line 1 is not valid JSON"),
    ([], r"no usable rows; the file is empty"),
    (
        [{"id": 1, "image": "a.png", "question": "q", "answer": "y"}, {"id": 1, "image": "b.png", "question": "q", "answer": "n"}],
        r"id '1' occurs more than once",
    ),
    (
        [{"id": 1, "image": "nope1.png", "question": "q", "answer": "y"}, {"id": 2, "image": "nope2.png", "question": "q", "answer": "n"}],
        r"row 1: image 'nope1.png' not found.*\(and 1 more rows with problems\)",
    ),
    ([[1, 2]], r"row 1 is not a JSON object"),
    ([{"id": 1, "image": "a.png", "question": "Is it?", "answer": "   "}], r"row 1: missing field 'answer'"),
    (
        [{"id": 1, "image": "a.png", "question": "Is it?", "answer": "yes", "answer_type": "closed-ish"}],
        r"row 1: answer_type 'closed-ish' is not one of CLOSED, OPEN",
    ),
]


@pytest.mark.parametrize(("rows", "message"), ERROR_CASES)
def test_bad_local_data_gives_one_clear_line(tmp_path, image_dir, rows, message):
    (image_dir / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    data = _write_jsonl(tmp_path / "bad.jsonl", rows)
    env = {"MEDBENCH_VQA_RAD": str(data), "MEDBENCH_VQA_RAD_IMAGES": str(image_dir)}
    with pytest.raises(DataError, match=message) as caught:
        load_task_docs("medbench_vqa_rad", env)
    text = str(caught.value)
    assert "\n" not in text
    assert str(data) in text


def test_lmms_eval_loader_ends_the_run_with_the_one_line(tmp_path, image_dir, monkeypatch):
    """lmms-eval 0.7.3 turns any Exception of a run into a traceback and exit 0: the loader exits instead."""
    from medbench.lmms.common import vqa_rad_docs

    data = _write_jsonl(tmp_path / "bad.jsonl", [{"id": 1, "image": "a.png", "question": "Is it?", "answer": " "}])
    monkeypatch.setenv("MEDBENCH_VQA_RAD", str(data))
    monkeypatch.setenv("MEDBENCH_VQA_RAD_IMAGES", str(image_dir))
    with pytest.raises(SystemExit) as stop:
        vqa_rad_docs(None)
    assert not isinstance(stop.value, Exception)  # passes lmms-eval's `except Exception`
    message = str(stop.value.code)
    assert message.startswith(f"medbench: error: medbench_vqa_rad: {data}: row 1: missing field 'answer'") and "\n" not in message


def test_report_facts_must_be_strings(tmp_path, image_dir):
    data = _write_jsonl(tmp_path / "r.jsonl", [{"id": 1, "image": "a.png", "reference": "x", "facts": "x"}])
    with pytest.raises(DataError, match="field 'facts' must be a list of strings"):
        load_task_docs("medbench_amboss", {"MEDBENCH_AMBOSS": str(data), "MEDBENCH_AMBOSS_IMAGES": str(image_dir)})


@pytest.mark.parametrize("task", ["medbench_mimic_cxr", "medbench_amboss"])
def test_licensed_tasks_without_local_data_say_what_to_do(task):
    with pytest.raises(DataError) as caught:
        resolve_source(task, {})
    message = str(caught.value)
    assert SOURCES[task].env_var in message
    assert "licensed" in message.lower() or "physionet" in message.lower()


def test_public_tasks_default_to_the_hub_at_a_pinned_revision():
    resolved = resolve_source("medbench_vqa_rad", {})
    assert (resolved.origin, resolved.location) == ("hub", "flaviagiammarino/vqa-rad")
    pinned = SOURCES["medbench_vqa_rad"].hub_revision
    assert pinned and len(pinned) == 40
    assert resolved.describe() == f"hub:flaviagiammarino/vqa-rad:test@{pinned}"
    override = resolve_source("medbench_vqa_rad", {"MEDBENCH_VQA_RAD_REVISION": "refs/pr/1"})
    assert override.revision == "refs/pr/1" and override.describe().endswith("@refs/pr/1")


def test_configuration_mistakes(tmp_path):
    with pytest.raises(DataError, match="MEDBENCH_VQA_RAD=.*does not exist"):
        resolve_source("medbench_vqa_rad", {"MEDBENCH_VQA_RAD": str(tmp_path / "nope.jsonl")})
    with pytest.raises(DataError, match="MEDBENCH_DATA='all' is not understood"):
        resolve_source("medbench_vqa_rad", {"MEDBENCH_DATA": "all"})
    with pytest.raises(DataError, match="folder holds no test.jsonl"):
        resolve_source("medbench_vqa_rad", {"MEDBENCH_VQA_RAD": str(tmp_path)})
    (tmp_path / "test.jsonl").write_text("")
    with pytest.raises(DataError, match="MEDBENCH_VQA_RAD_IMAGES=.* is not a folder"):
        resolve_source("medbench_vqa_rad", {"MEDBENCH_VQA_RAD": str(tmp_path), "MEDBENCH_VQA_RAD_IMAGES": str(tmp_path / "x")})


def test_task_variable_overrides_demo_switch(tmp_path, image_dir):
    data = _write_jsonl(tmp_path / "q.jsonl", [{"id": "x", "image": "a.png", "question": "q", "answer": "yes"}])
    env = {"MEDBENCH_DATA": "demo", "MEDBENCH_VQA_RAD": str(data), "MEDBENCH_VQA_RAD_IMAGES": str(image_dir)}
    assert resolve_source("medbench_vqa_rad", env).origin == "local"
    assert resolve_source("medbench_slake", env).origin == "demo"


def test_slake_hub_download_is_unpacked_once_and_read_as_json(tmp_path, monkeypatch):
    import zipfile

    import huggingface_hub

    repo = tmp_path / "hub"
    repo.mkdir()
    (repo / "test.json").write_text(json.dumps([
        {"qid": 11, "img_name": "xmlab1/source.jpg", "question": "Is this a CT?", "answer": "Yes", "answer_type": "CLOSED", "q_lang": "en"},
        {"qid": 12, "img_name": "xmlab1/source.jpg", "question": "哪个器官?", "answer": "肺", "answer_type": "OPEN", "q_lang": "zh"},
    ]))
    picture = tmp_path / "source.jpg"
    Image.new("RGB", (8, 8)).save(picture)
    with zipfile.ZipFile(repo / "imgs.zip", "w") as bundle:
        bundle.write(picture, "imgs/xmlab1/source.jpg")
    calls = []

    def fake_download(repo_id, filename, repo_type, revision):
        calls.append((repo_id, filename, repo_type, revision))
        return str(repo / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    cache = tmp_path / "medbench-cache"
    env = {"MEDBENCH_CACHE": str(cache)}
    repo.chmod(0o555)  # the hub snapshot may be read-only (a shared cache): nothing is written next to it
    try:
        docs = load_task_docs("medbench_slake", env)
    finally:
        repo.chmod(0o755)
    pinned = SOURCES["medbench_slake"].hub_revision
    assert docs["id"] == ["11"] and docs[0]["source"] == f"hub:BoKelvin/SLAKE:test@{pinned}"
    assert ("BoKelvin/SLAKE", "imgs.zip", "dataset", pinned) in calls
    assert (cache / "slake" / pinned / "imgs" / "xmlab1" / "source.jpg").is_file()
    assert [path.name for path in (cache / "slake" / pinned).iterdir()] == ["imgs"]  # no scratch folder left
    assert not (repo / "imgs").exists()
    (repo / "imgs.zip").unlink()  # a second load reuses the unpacked images
    (repo / "imgs.zip").write_bytes(b"not a zip")
    assert load_task_docs("medbench_slake", env)["id"] == ["11"]


def test_slake_without_network_says_how_to_fix(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(DataError, match="could not fetch BoKelvin/SLAKE .*set MEDBENCH_SLAKE to a local copy"):
        load_task_docs("medbench_slake", {})


def test_a_blank_alias_never_hides_a_filled_one():
    from medbench.data.loading import VQA_FIELDS, pick_field

    names = VQA_FIELDS["answer"]
    assert len(names) >= 2
    assert pick_field({names[0]: "  ", names[1]: "yes"}, names) == "yes"
    assert pick_field({names[0]: None, names[1]: "no"}, names) == "no"
    assert pick_field({names[0]: 0}, names) == 0  # a falsy value that is not blank is a value
    assert pick_field({names[0]: ""}, names) is None
