"""Scoring of the VQA tasks (VQA-RAD, SLAKE, PathVQA) inside lmms-eval.

Every sample returns the same record, a loop over the VQA metrics of the catalogue
(:func:`medbench.lmms.records.score`, functions in :mod:`medbench.metrics.functions`); metrics that do not
apply to a sample are left out of it, so lmms-eval's ``mean`` aggregation averages each metric over exactly
the samples it applies to and reports its standard error:

* ``closed_accuracy``: closed questions only; an unparseable answer counts as wrong.
* ``closed_unparsed``: closed questions only; 1 when no answer could be read (the share is reported).
* ``open_recall``: open questions only.
* ``overall``: every sample; closed accuracy or open recall, whichever applies.
* ``exact_match`` / ``token_f1``: every sample.
* ``n_closed`` / ``n_open``: counts (summed).
* ``failed_generations``: 1 when the backend failed and lmms-eval wrote its failure marker as the answer;
  such a sample gets no score at all (see :mod:`medbench.lmms.failures`).

``medbench_detail`` (a :class:`medbench.results.SampleDetail`) carries the document id and source and what the
scorer read from the answer, for the per-sample logs (lmms-eval does not write the documents themselves into them).
"""

from __future__ import annotations

from medbench.lmms.failures import unless_failed
from medbench.lmms.records import score
from medbench.metrics.registry import DETAIL_KEY, Answer
from medbench.metrics.vqa import closed_parsed, normalize_answer, parse_yes_no
from medbench.results import SampleDetail


@unless_failed
def process_results(doc: dict, results: list[str]) -> dict:
    """Score one VQA sample (see the module docstring for the record)."""
    prediction = results[0] if results else ""
    record = score("vqa", Answer(prediction, doc["answer"], doc["answer_type"]))
    if doc["answer_type"] == "CLOSED":
        read = {"parsed": closed_parsed(prediction, doc["answer"]), "read_as": parse_yes_no(prediction)}
        detail = SampleDetail(id=doc["id"], source=doc["source"], answer_type="CLOSED", metadata=read)
    else:
        read = {"normalized_prediction": normalize_answer(prediction)}
        detail = SampleDetail(id=doc["id"], source=doc["source"], answer_type="OPEN", metadata=read)
    record[DETAIL_KEY] = detail.to_json()
    return record
