"""The lmms-eval model plugins, driven directly with lmms-eval-shaped requests."""

from types import SimpleNamespace

import pytest
from PIL import Image

from medbench.lmms.models.baseline import MedbenchBaseline, is_yes_no_question
from medbench.lmms.models.hf import is_sampling, truncate_at_stops


def _requests(docs, gen_kwargs):
    task_dict = {"t": {"test": docs}}
    requests = [
        SimpleNamespace(args=(doc["question"], dict(gen_kwargs), lambda d: [d["image"]], index, "t", "test"))
        for index, doc in enumerate(docs)
    ]
    return task_dict, requests


@pytest.fixture(scope="module")
def docs():
    colours = [(200, 10, 10), (10, 200, 10), (10, 10, 200), (90, 90, 90), (250, 250, 0)]
    questions = ["Is there a mass?", "Which organ is shown in this image?", "Is this CT?", "What modality?", "Is the lung normal?"]
    return [{"question": q, "image": Image.new("RGB", (40 + 7 * i, 30), c)} for i, (q, c) in enumerate(zip(questions, colours, strict=True))]


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_batched_generation_matches_one_by_one(tiny_model_dirs, docs, arch):
    from medbench.lmms.models.hf import MedbenchHF

    model = MedbenchHF(pretrained=str(tiny_model_dirs[arch]), device="cpu", batch_size=1)
    model.task_dict, requests = _requests(docs, {"max_new_tokens": 6, "do_sample": False, "until": []})
    one_by_one = model.generate_until(requests)
    model.batch_size = 4
    batched = model.generate_until(requests)
    assert batched == one_by_one
    assert all(isinstance(answer, str) and answer for answer in batched)


def test_missing_checkpoint_is_one_clear_error(tmp_path):
    from medbench.errors import MedbenchError
    from medbench.lmms.models.hf import MedbenchHF

    with pytest.raises(MedbenchError, match="cannot load an image-text-to-text model from"):
        MedbenchHF(pretrained=str(tmp_path / "nothing-here"))


def test_sampling_detection_and_stop_strings():
    assert not is_sampling({"do_sample": False, "temperature": 0.8})
    assert not is_sampling({"do_sample": True, "temperature": 0})
    assert is_sampling({"do_sample": "true", "temperature": 0.8})
    assert truncate_at_stops("yes\n\nQuestion: next", ["\n\n"]) == "yes"
    assert truncate_at_stops("no. STOP here", ["STOP", "."]) == "no"
    assert truncate_at_stops("unchanged", []) == "unchanged"


def test_sampling_warns(tiny_llava_dir, docs):
    from medbench.lmms.models.hf import MedbenchHF

    model = MedbenchHF(pretrained=str(tiny_llava_dir), device="cpu")
    model.task_dict, requests = _requests(docs[:1], {"max_new_tokens": 2, "do_sample": True, "temperature": 0.8})
    with pytest.warns(UserWarning, match="sampling is on"):
        model.generate_until(requests)


def test_baseline_answers_from_question_shape_only():
    baseline = MedbenchBaseline(closed_answer="no", open_answer="lung", report="Normal study.")
    assert baseline.answer({"question": "Is there an effusion?", "answer": "yes"}) == "no"
    assert baseline.answer({"question": "Which organ is this?", "answer": "liver"}) == "lung"
    assert baseline.answer({"reference": "Cardiomegaly."}) == "Normal study."
    assert is_yes_no_question("  Does the image show a fracture?")
    assert not is_yes_no_question("Where is the lesion?")
    assert not is_yes_no_question("")
