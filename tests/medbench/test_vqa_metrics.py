"""Golden tests for the VQA normaliser and scores. The tables are frozen: a change here is a metric change
and needs a task version bump."""

import pytest

from medbench.metrics.vqa import (
    closed_accuracy,
    closed_parsed,
    exact_match,
    is_closed_question,
    normalize_answer,
    open_recall,
    parse_yes_no,
    token_f1,
)

# (model answer, expected parse)
YES_NO_TABLE = [
    ("yes", "yes"),
    ("Yes", "yes"),
    ("YES.", "yes"),
    ("  yes  ", "yes"),
    ("Yes, there is a mass.", "yes"),
    ("The answer is yes.", "yes"),
    ("Yes, there is no effusion.", "yes"),
    ("yes!", "yes"),
    ("no", "no"),
    ("No.", "no"),
    ("NO", "no"),
    ("No, there is none.", "no"),
    ("No, the heart is normal in size, yes it is normal.", "no"),
    ("There is no mass.", "no"),
    ("The answer is: no", "no"),
    ("no\nthere is nothing", "no"),
    ("Normal", None),
    ("normal", None),
    ("Noted mass in the left lobe", None),
    ("Nodule", None),
    ("None", None),
    ("Nothing abnormal", None),
    ("Yesterday", None),
    ("yes and no", None),
    ("Yes or no", None),
    ("yes/no", None),
    ("It could be yes, could be no", None),
    ("", None),
    (None, None),
    ("   ", None),
    ("Maybe", None),
    ("Not sure", None),
    ("I cannot tell from this image", None),
    ("yess", None),
    ("nope", None),
    ("No-go", None),  # hyphenated word is one token "nogo"
    ("Know", None),
    ("Yes-like appearance", None),  # "yeslike" is one token
    ("The lesion is not present", None),
    ("Pneumothorax: no. Effusion: yes.", None),
    ("The answer is yes, but there is no effusion.", "yes"),
    ("Final answer: no. Yes, the film is rotated.", "no"),
]


@pytest.mark.parametrize(("text", "expected"), YES_NO_TABLE)
def test_parse_yes_no_table(text, expected):
    assert parse_yes_no(text) == expected


def test_table_is_large_enough():
    assert len(YES_NO_TABLE) >= 40


# (prediction, gold, closed accuracy)
CLOSED_TABLE = [
    ("Yes", "yes", 1.0),
    ("yes", "Yes", 1.0),
    ("The answer is yes.", "yes", 1.0),
    ("No, there is none.", "no", 1.0),
    ("Normal", "no", 0.0),
    ("Normal", "yes", 0.0),
    ("Noted mass", "no", 0.0),
    ("Yesterday", "yes", 0.0),
    ("yes and no", "yes", 0.0),
    ("yes and no", "no", 0.0),
    ("No", "yes", 0.0),
    ("", "no", 0.0),
    ("CT", "CT", 1.0),
    ("This is a CT scan.", "ct", 1.0),
    ("MRI", "CT", 0.0),
    ("X-ray", "xray", 1.0),
    ("xray", "X-Ray", 1.0),
    ("It is in the left lung.", "Left Lung", 1.0),
    ("right lung", "left lung", 0.0),
    ("lung", "left lung", 0.0),
    ("two", "2", 1.0),
    # A hedge naming both options is no answer for every closed question, as "yes or no" is for yes/no.
    ("yes or no", "yes", 0.0),
    ("Yes or no.", "no", 0.0),
    ("left or right", "left", 0.0),
    ("left or right", "right", 0.0),
    ("CT or MRI", "CT", 0.0),
    ("Either MRI or CT.", "CT", 0.0),
    ("CT/MRI", "CT", 0.0),
    ("CT vs MRI", "MRI", 0.0),
    ("both left and right", "left", 0.0),
    ("left and right", "right", 0.0),
    ("Left, not right.", "left", 1.0),
    ("It is a CT. Not sure about MRI or ultrasound.", "CT", 1.0),
    ("It is in the left lung and the heart is normal in size", "left lung", 1.0),
    ("left", "left", 1.0),
]


@pytest.mark.parametrize(("prediction", "gold", "expected"), CLOSED_TABLE)
def test_closed_accuracy_table(prediction, gold, expected):
    assert closed_accuracy(prediction, gold) == expected


def test_unparsed_closed_answers_are_flagged():
    assert not closed_parsed("Normal", "no")
    assert not closed_parsed("yes and no", "yes")
    assert closed_parsed("No", "yes")  # parsed, just wrong
    assert not closed_parsed("", "CT")
    assert closed_parsed("MRI", "CT")
    assert not closed_parsed("left or right", "left")
    assert not closed_parsed("CT or MRI", "CT")


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("X-ray", "xray"),
        ("xray", "xray"),
        ("The Left Lung.", "left lung"),
        ("T2-weighted MRI", "t2weighted mri"),
        ("isn't", "isnt"),
        ("two  nodules", "2 nodules"),
        ("An   axial\tplane", "axial plane"),
        ("cardio - thoracic", "cardio thoracic"),  # a free-standing hyphen is punctuation
        ("Ｃｔ", "ct"),  # full-width letters
    ],
)
def test_normalize_answer(text, normalised):
    assert normalize_answer(text) == normalised


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("left lung", "left lung", 1.0),
        ("the lesion is in the left lung", "left lung", 1.0),
        ("left kidney", "left lung", 0.5),
        ("", "left lung", 0.0),
        ("X-ray of chest", "chest xray", 1.0),
        ("lung lung lung", "left lung", 0.5),
        ("anything", "", 0.0),
    ],
)
def test_open_recall(prediction, gold, expected):
    assert open_recall(prediction, gold) == pytest.approx(expected)


def test_exact_match_and_f1():
    assert exact_match("The X-ray.", "xray") == 1.0
    assert exact_match("xray film", "xray") == 0.0
    assert token_f1("left lung", "left lung") == 1.0
    assert token_f1("left kidney", "left lung") == pytest.approx(0.5)
    assert token_f1("", "left lung") == 0.0


@pytest.mark.parametrize(
    ("answer", "answer_type", "closed"),
    [
        ("yes", None, True),
        ("No", None, True),
        ("CT", None, False),
        ("CT", "CLOSED", True),
        ("CT", " closed ", True),
        ("yes", "OPEN", False),
        ("yes", "", True),
    ],
)
def test_is_closed_question(answer, answer_type, closed):
    assert is_closed_question(answer, answer_type) is closed
