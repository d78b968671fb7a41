"""Score held-out preference pairs under a model: preference accuracy, margin and image dependence.

For every record of a preference file (the trainer's schema) this computes, with the very collator that trains
(same prompt, same answer tokens, same truncation), the summed answer log-probabilities

* ``chosen``: log π(y_w | m, x),
* ``rejected``: log π(y_l | m, x), when the record has a ``rejected`` answer,
* ``chosen_corrupted``: log π(y_w | m′, x), when it has a ``rejected_image`` m′,
* ``chosen_control``: log π(y_w | m″, x), when it has a ``control_image`` m″ (the same corruption on a lesion-free
  region of the same size: ``medbench prefs build --control``),

and from them the per-record quantities the study compares:

* ``margin`` = log π(y_w|m) − log π(y_l|m), and ``correct`` = margin > 0 (preference accuracy is its mean);
* ``image_dependence`` = log π(y_w|m) − log π(y_w|m′): how much the model's belief in the right answer drops when
  the lesion region is corrupted. It mixes the loss of the lesion's evidence with the model's reaction to the
  corruption itself (a black square lowers it wherever it is);
* ``control_dependence`` = log π(y_w|m) − log π(y_w|m″): the same drop when an empty region is corrupted;
* ``lesion_evidence`` = image_dependence − control_dependence = log π(y_w|m″) − log π(y_w|m′): the part of the
  drop that is due to the lesion, the corruption's own effect cancelled.

``medbench prefs score MODEL DATA --output_dir DIR`` writes ``DIR/scores.jsonl`` (one line per record) and
``DIR/summary.json`` (means, counts, the model and the data file's SHA-256).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from medbench.errors import MedbenchError
from medbench.study.analysis import PROBE_SCORES

SCORES_FILE = PROBE_SCORES  # the study's analysis reads it
SUMMARY_FILE = "summary.json"
QUANTITIES = ("margin", "correct", "image_dependence", "control_dependence", "lesion_evidence")


def _objective_for(records: list[dict[str, Any]]):
    """The scoring rows: chosen and, where every record has them, rejected and chosen-under-m′."""
    from .objectives import Objective

    rows: list[tuple[str, str]] = [("chosen", "image")]
    if all(record.get("rejected") for record in records):
        rows.append(("rejected", "image"))
    if all(record.get("rejected_image") for record in records):
        rows.append(("chosen", "rejected_image"))
        if all(record.get("control_image") for record in records):
            rows.append(("chosen", "control_image"))
    if len(rows) == 1:
        raise MedbenchError(
            "prefs score: the records have neither `rejected` nor `rejected_image` in every line; build held-out "
            "pairs with `medbench prefs build TEST.jsonl --recipe mdpo`"
        )
    fields = tuple(dict.fromkeys(["image", "question", "chosen", *(name for row in rows for name in row)]))
    return Objective("probe", "held-out scoring", fields, tuple(rows), reference_free=True)


def score_records(model: Any, processor: Any, records: list[dict[str, Any]], *, batch_size: int = 32,
                  max_length: int | None = 1024, system_prompt: str | None = None, progress: bool = True):
    """Per-record scores (dicts with the log-probs, token counts and derived quantities), in record order."""
    import torch

    from medbench.progress import progress_bar

    from .collator import PreferenceCollator

    objective = _objective_for(records)
    collator = PreferenceCollator(processor, objective, max_length=max_length, system_prompt=system_prompt)
    device = next(model.parameters()).device
    names = {("chosen", "image"): "chosen", ("rejected", "image"): "rejected",
             ("chosen", "rejected_image"): "chosen_corrupted", ("chosen", "control_image"): "chosen_control"}
    results: list[dict[str, Any]] = []
    bar = progress_bar(len(records), progress, "prefs score", "record")
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        batch = collator(chunk)
        inputs = {key: value.to(device) for key, value in batch.items()
                  if key not in ("completion_mask", "weight", "is_visual")}
        with torch.no_grad():
            logits = model(**inputs, use_cache=False).logits.float()
        targets = batch["input_ids"][:, 1:].to(device)
        mask = batch["completion_mask"][:, 1:].to(device).float()
        token_logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        summed = (token_logps * mask).sum(dim=1).cpu().tolist()
        counts = mask.sum(dim=1).cpu().tolist()
        n = len(chunk)
        for index, record in enumerate(chunk):
            entry: dict[str, Any] = {"id": record["id"], "error_type": record.get("error_type")}
            for block, row in enumerate(objective.rows):
                entry[names[row]] = summed[block * n + index]
                entry[f"{names[row]}_tokens"] = int(counts[block * n + index])
            if "rejected" in entry:
                entry["margin"] = entry["chosen"] - entry["rejected"]
                entry["correct"] = float(entry["margin"] > 0)
            if "chosen_corrupted" in entry:
                entry["image_dependence"] = entry["chosen"] - entry["chosen_corrupted"]
            if "chosen_control" in entry:
                entry["control_dependence"] = entry["chosen"] - entry["chosen_control"]
                entry["lesion_evidence"] = entry["chosen_control"] - entry["chosen_corrupted"]
            results.append(entry)
        bar.update(n)
    bar.close()
    return results


def summarise(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of each quantity over the records that have it (and how many do)."""
    summary: dict[str, Any] = {"records": len(scores)}
    for name in QUANTITIES:
        values = [entry[name] for entry in scores if name in entry]
        summary[name] = {"mean": math.fsum(values) / len(values) if values else None, "n": len(values)}
    return summary


def score_file(model_dir: str, data: str | Path, output_dir: str | Path, *, image_root: str | None = None,
               batch_size: int = 32, max_length: int | None = 1024, device: str | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Score ``data`` under ``model_dir``; write ``scores.jsonl`` and ``summary.json``; return the summary."""
    from medbench.data.fingerprint import file_sha256
    from medbench.hfload import load_vision_language_model

    from .data import load_preference_file

    records = load_preference_file(data, image_root)
    model, processor = load_vision_language_model(model_dir, dtype="float32", device=device)
    scores = score_records(model, processor, records, batch_size=batch_size, max_length=max_length, progress=progress)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / SCORES_FILE).open("w", encoding="utf-8") as handle:
        for entry in scores:
            handle.write(json.dumps(entry) + "\n")
    summary = {"model": str(model_dir), "data": str(data), "data_sha256": file_sha256(data), **summarise(scores)}
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
