"""One per-sample record: producers write a SampleDetail, every reader parses it, "failed" is one property."""

from __future__ import annotations

import pytest

from medbench.lmms.failures import unless_failed
from medbench.lmms.vqa import process_results
from medbench.results import FAILED_GENERATION_MARK, JudgeIdentity, RecordError, SampleDetail, parse_sample_record

DOC = {"id": "q1", "source": "demo", "answer": "yes", "answer_type": "CLOSED"}


def _logged(record: dict, answer: str) -> dict:
    # What lmms-eval writes per sample: its own fields beside the process_results record.
    return {"doc_id": 0, "target": DOC["answer"], "filtered_resps": [answer], **record}


def test_the_vqa_task_writes_a_sample_detail_that_reads_back_the_same():
    record = process_results(DOC, ["Yes."])
    sample = parse_sample_record(_logged(record, "Yes."))
    assert sample.detail == SampleDetail(
        id="q1", source="demo", answer_type="CLOSED", metadata={"parsed": True, "read_as": "yes"}
    )
    assert SampleDetail.from_json(sample.detail.to_json()) == sample.detail
    assert record["medbench_detail"] == sample.detail.to_json()
    assert not sample.failed and sample.item_id == "q1" and sample.answer_type == "CLOSED"


def test_failed_is_one_property_whoever_marked_it():
    failure = f"{FAILED_GENERATION_MARK} after 3 retries] 503 Service Unavailable"
    record = unless_failed(lambda doc, results: {})(DOC, [failure])
    sample = parse_sample_record(_logged(record, failure))
    assert sample.failed and sample.detail.failed and sample.detail.failure.startswith(FAILED_GENERATION_MARK)
    assert record["medbench_detail"]["failed_generation"] is True
    # A log whose task did not mark it (an older or foreign producer) is still failed by its answer text.
    unmarked = parse_sample_record({"doc_id": 1, "target": "yes", "filtered_resps": [failure],
                                    "medbench_detail": {"id": "q2", "source": "demo"}})
    assert unmarked.failed and not unmarked.detail.failed


@pytest.mark.parametrize(
    "detail, message",
    [
        ("q1", "medbench_detail: not an object"),
        ({"id": True}, "medbench_detail/id: not a string or integer"),
        ({"id": "a", "answer_type": "closed"}, "medbench_detail/answer_type: not CLOSED or OPEN"),
        ({"id": "a", "facts": "one fact"}, "medbench_detail/facts: not a list of strings"),
        ({"id": "a", "failed_generation": "yes"}, "medbench_detail/failed_generation: not true or false"),
    ],
)
def test_a_malformed_detail_names_its_field(detail, message):
    with pytest.raises(RecordError, match=message):
        SampleDetail.from_json(detail)


def test_the_judge_identity_is_data():
    report_judge = {"model": "m", "prompts": {"facts": {"id": "facts-v1", "sha256": "0123456789abcdef"}}}
    identity = JudgeIdentity.of_report(report_judge)
    assert identity.to_json() == {"model": "m", "prompts": {"facts": "facts-v1:01234567"}}
    assert JudgeIdentity.from_json(identity.to_json()) == identity
    assert JudgeIdentity.from_json("m facts-v1:01234567") is None  # a string is not an identity
