"""The prior-only answerer (``medbench_baseline`` with ``prior=TRAIN.jsonl``): majority training answer per question."""

import json

import pytest

from medbench.errors import MedbenchError
from medbench.lmms.models.baseline import MedbenchBaseline, majority_answers


def _train(tmp_path, rows):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows), encoding="utf-8")
    return path


def test_prior_only_answers_each_question_with_its_majority_training_answer(tmp_path):
    side = "On which side of the image is the lesion?"
    presence = "Is there a lesion in this image?"
    path = _train(tmp_path, [(side, "left"), (side, "right"), (side, "right"), (presence, "yes"), (presence, "no"),
                             ("What is the imaging modality?", "CT")])
    assert majority_answers(path) == {"on which side of image is lesion": "right",
                                      "is there lesion in this image": "no",  # a tie: the alphabetically first
                                      "what is imaging modality": "CT"}
    model = MedbenchBaseline(prior=str(path))
    assert model.answer({"question": side.upper()}) == "right"  # matched after normalisation
    assert model.answer({"question": presence}) == "no"
    assert model.answer({"question": "Is the heart enlarged?"}) == "yes"  # unseen: the always-yes rule
    assert model.answer({"question": "Which organ is shown?"}) == ""
    assert MedbenchBaseline().answer({"question": side}) == ""  # without a prior nothing changes


def test_a_missing_prior_file_is_one_line(tmp_path):
    with pytest.raises(MedbenchError, match="prior=.*no such file"):
        majority_answers(tmp_path / "nope.jsonl")
