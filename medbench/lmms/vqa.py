"""Scoring of the VQA tasks (VQA-RAD, SLAKE, PathVQA) inside lmms-eval.

Every sample returns the same record; metrics that do not apply to a sample are left out of it, so
lmms-eval's ``mean`` aggregation averages each metric over exactly the samples it applies to and reports
its standard error:

* ``closed_accuracy``: closed questions only; an unparseable answer counts as wrong.
* ``closed_unparsed``: closed questions only; 1 when no answer could be read (the share is reported).
* ``open_recall``: open questions only.
* ``overall``: every sample; closed accuracy or open recall, whichever applies.
* ``exact_match`` / ``token_f1``: every sample.
* ``n_closed`` / ``n_open``: counts (summed).
* ``failed_generations``: 1 when the backend failed and lmms-eval wrote its failure marker as the answer;
  such a sample gets no score at all (see :mod:`medbench.lmms.failures`).

``medbench_detail`` carries the document id and source and what the scorer read from the answer, for the
per-sample logs (lmms-eval does not write the documents themselves into them).
"""

from __future__ import annotations

from medbench.lmms.failures import unless_failed
from medbench.metrics.vqa import (
    closed_accuracy,
    closed_parsed,
    exact_match,
    normalize_answer,
    open_recall,
    parse_yes_no,
    token_f1,
)


@unless_failed
def process_results(doc: dict, results: list[str]) -> dict:
    """Score one VQA sample (see the module docstring for the record)."""
    prediction = results[0] if results else ""
    answer = doc["answer"]
    record: dict = {"exact_match": exact_match(prediction, answer), "token_f1": token_f1(prediction, answer)}
    if doc["answer_type"] == "CLOSED":
        score = closed_accuracy(prediction, answer)
        parsed = closed_parsed(prediction, answer)
        record.update(closed_accuracy=score, closed_unparsed=float(not parsed), n_closed=1.0)
        detail = {"answer_type": "CLOSED", "parsed": parsed, "read_as": parse_yes_no(prediction)}
    else:
        score = open_recall(prediction, answer)
        record.update(open_recall=score, n_open=1.0)
        detail = {"answer_type": "OPEN", "normalized_prediction": normalize_answer(prediction)}
    record["overall"] = score
    record["medbench_detail"] = {"id": doc["id"], "source": doc["source"], **detail}
    return record
