"""``medbench experts export``: sample documents, blind the models' outputs, write the annotation packet.

The export folder holds two things that must travel separately:

* ``annotators/`` — what clinicians get: ``form.html`` (self-contained, works offline), ``items.csv`` and
  ``items.xlsx`` (the same items for spreadsheet users), ``images/`` (for the spreadsheets) and a README.
  Nothing in it names a model: every output carries a random code drawn per item, outputs are shuffled per
  item, and file names hold only item numbers.
* ``key.json`` — which code is which model (plus the judge's grade of every output). Keep it away from the
  annotators; ``medbench experts import`` needs it to unblind.

Sampling is reproducible from ``--seed`` (stratified by task and, with ``--stratify-judge``, by the worst judge
grade among an item's outputs); the blinding codes and output order come from the operating system's random
source, so knowing the seed does not reveal them.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import mimetypes
import random
import secrets
import string
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbench.errors import MedbenchError
from medbench.experts.collect import ModelOutputs, Output, parse_run_argument, read_model_outputs
from medbench.experts.rubric import Rubric, load_rubric

KEY_SCHEMA = "medbench-experts-key/1"
FORM_SCHEMA = "medbench-experts-export/1"
ANNOTATIONS_SCHEMA = "medbench-expert-annotations/1"
# Spreadsheet columns; the first block is given, the second is for the annotator.
GIVEN_COLUMNS = ("export_id", "item_id", "task", "output_code", "image", "prompt", "reference", "output", "pair")
ANSWER_COLUMNS = ("annotator", "correctness", "severity", "error_types", "comment", "preference")
CSV_COLUMNS = GIVEN_COLUMNS + ANSWER_COLUMNS
# Without look-alike characters (0/O, 1/I/L), so codes copied by hand into a spreadsheet stay right.
CODE_ALPHABET = "".join(c for c in string.ascii_uppercase + string.digits if c not in "0O1IL")
JUDGE_UNGRADED = "unjudged"


@dataclass
class ExportItem:
    """One sampled document with its blinded outputs (``codes`` in display order)."""

    item_id: str
    task: str
    sample_id: str
    prompt: str
    reference: str
    image: tuple[bytes, str] | None
    codes: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    judge: dict[str, str | None] = field(default_factory=dict)

    @property
    def pair(self) -> list[str] | None:
        return self.codes[:2] if len(self.codes) >= 2 else None


# A code starts with a letter: "3E45" or "2345" would be read as numbers by a spreadsheet and mangled.
CODE_LETTERS = "".join(c for c in CODE_ALPHABET if c.isalpha())


def _new_code(taken: set[str]) -> str:
    while True:
        code = secrets.choice(CODE_LETTERS) + "".join(secrets.choice(CODE_ALPHABET) for _ in range(3))
        if code not in taken:
            return code


def _allocate(strata: dict[Any, list[Any]], n: int, rng: random.Random) -> list[Any]:
    """``n`` keys drawn from the strata in proportion to their size (largest remainder, at least one each)."""
    total = sum(len(members) for members in strata.values())
    if n >= total:
        chosen = [key for members in strata.values() for key in members]
        rng.shuffle(chosen)
        return chosen
    names = sorted(strata, key=str)
    quota = {name: n * len(strata[name]) / total for name in names}
    counts = {name: min(len(strata[name]), int(quota[name])) for name in names}
    if n >= len(names):
        for name in names:
            counts[name] = max(counts[name], 1)
    while sum(counts.values()) > n:  # the minimum of one per stratum overshot: trim the largest
        name = max(names, key=lambda s: (counts[s], str(s)))
        counts[name] -= 1
    by_remainder = sorted(names, key=lambda s: (-(quota[s] - int(quota[s])), str(s)))
    while sum(counts.values()) < n:
        for name in by_remainder:
            if sum(counts.values()) < n and counts[name] < len(strata[name]):
                counts[name] += 1
    chosen = []
    for name in names:
        members = sorted(strata[name])
        chosen += rng.sample(members, counts[name])
    rng.shuffle(chosen)
    return chosen


def _worst_grade(outputs: Sequence[Output]) -> str:
    order = {"none": 0, "minor": 1, "severe": 2}
    grades = [output.judge_severity for output in outputs if output.judge_severity in order]
    return max(grades, key=order.__getitem__) if grades else JUDGE_UNGRADED


def _documents(task: str, source: str | None) -> dict[str, dict[str, Any]]:
    """The task's documents by id, read from the source the run recorded (images as paths or PIL images)."""
    from medbench.data.loading import DEMO_DIR, ResolvedSource, load_task_docs, read_local_records, resolve_source
    from medbench.data.sources import get_source

    spec = get_source(task)
    try:
        resolved = resolve_source(task)
    except MedbenchError:
        resolved = None
    recorded_origin = (source or "").split(":", 1)[0]
    if resolved is not None and resolved.describe() == source:
        pass
    elif recorded_origin == "demo":
        resolved = ResolvedSource(task, "demo", str(DEMO_DIR / spec.demo_file), DEMO_DIR)
    elif recorded_origin == "local" and Path(source.split(":", 1)[1]).is_file():  # type: ignore[union-attr]
        location = Path(source.split(":", 1)[1])  # type: ignore[union-attr]
        resolved = ResolvedSource(task, "local", str(location), location.parent)
    else:
        raise MedbenchError(
            f"{task}: the outputs were made on data {source!r}, but {spec.env_var} now points elsewhere; "
            f"set {spec.env_var} (and {spec.images_env_var}) to that data so the form can show the images"
        )
    if resolved.origin in ("demo", "local"):
        return {doc["id"]: doc for doc in read_local_records(resolved, check_images=False)}
    return {str(doc["id"]): doc for doc in load_task_docs(task)}


def _image_bytes(image: Any, where: str) -> tuple[bytes, str]:
    if isinstance(image, str):
        path = Path(image)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise MedbenchError(f"{where}: image {path} cannot be read ({error.strerror}); fix the data folder") from None
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return data, mime
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue(), "image/png"


def build_items(
    models: Sequence[ModelOutputs], n: int, seed: int, stratify_judge: bool = False, tasks: Sequence[str] | None = None
) -> tuple[list[ExportItem], dict[str, Any]]:
    """Sample ``n`` documents that every model answered and blind their outputs.

    Returns:
        The items (in presentation order) and sampling facts for the key (strata and their sizes).

    Raises:
        MedbenchError: No document answered by every model.
    """
    common = set.intersection(*(set(model.outputs) for model in models))
    if tasks:
        unknown = sorted(set(tasks) - {task for task, _ in common})
        if unknown:
            raise MedbenchError(f"--tasks: {', '.join(unknown)} not answered by every run; drop it or add its runs")
        common = {key for key in common if key[0] in set(tasks)}
    if not common:
        raise MedbenchError("the runs share no document (same task and sample id); pass runs of the same tasks and data")
    strata: dict[Any, list[tuple[str, str]]] = defaultdict(list)
    for key in common:
        outputs = [model.outputs[key] for model in models]
        stratum = (key[0], _worst_grade(outputs)) if stratify_judge else (key[0],)
        strata[stratum].append(key)
    chosen = _allocate(dict(strata), n, random.Random(seed))
    system = random.SystemRandom()
    documents: dict[str, dict[str, dict[str, Any]]] = {}
    items = []
    width = max(3, len(str(len(chosen))))
    for number, (task, sample_id) in enumerate(chosen, start=1):
        outputs = {model.label: model.outputs[(task, sample_id)] for model in models}
        first = next(iter(outputs.values()))
        if task not in documents:
            documents[task] = _documents(task, first.source)
        document = documents[task].get(sample_id)
        if document is None:
            raise MedbenchError(f"{first.samples_file}: sample id {sample_id!r} is not in the task's data; point the task at the evaluated data")
        prompts = Counter(output.prompt for output in outputs.values())
        item = ExportItem(
            item_id=f"item-{number:0{width}d}",
            task=task,
            sample_id=sample_id,
            prompt=prompts.most_common(1)[0][0] or str(document.get("question", "")),
            reference=first.reference or str(document.get("answer", document.get("reference", ""))),
            image=_image_bytes(document["image"], f"{task} {sample_id}") if document.get("image") is not None else None,
        )
        labels = list(outputs)
        system.shuffle(labels)
        for label in labels:
            code = _new_code(set(item.codes))
            item.codes.append(code)
            item.labels[code] = label
            item.texts[code] = outputs[label].text
            item.judge[code] = outputs[label].judge_severity
        items.append(item)
    sampling = {
        "seed": seed,
        "n_requested": n,
        "n_items": len(items),
        "stratified_by": ["task", "judge_severity"] if stratify_judge else ["task"],
        "strata": {"/".join(stratum): len(members) for stratum, members in sorted(strata.items(), key=str)},
    }
    return items, sampling


def _data_uri(image: tuple[bytes, str] | None) -> str | None:
    if image is None:
        return None
    return f"data:{image[1]};base64,{base64.b64encode(image[0]).decode('ascii')}"


def _image_name(item: ExportItem) -> str:
    if item.image is None:
        return ""
    extension = mimetypes.guess_extension(item.image[1]) or ".img"
    return f"images/{item.item_id}{extension}"


def form_payload(export_id: str, items: Sequence[ExportItem], rubric: Rubric) -> dict[str, Any]:
    """The data the HTML form renders (no model identities)."""
    return {
        "schema": FORM_SCHEMA,
        "export_id": export_id,
        "annotations_schema": ANNOTATIONS_SCHEMA,
        "rubric": rubric.for_form(),
        "items": [
            {
                "item_id": item.item_id,
                "task": item.task,
                "prompt": item.prompt,
                "reference": item.reference,
                "image": _data_uri(item.image),
                "outputs": [{"code": code, "text": item.texts[code]} for code in item.codes],
                "pair": item.pair,
            }
            for item in items
        ],
    }


def spreadsheet_rows(export_id: str, items: Sequence[ExportItem]) -> list[dict[str, str]]:
    """One row per (item, output), the annotator's columns empty."""
    rows = []
    for item in items:
        for position, code in enumerate(item.codes):
            pair = " vs ".join(item.pair) if item.pair and position == 0 else ""
            rows.append(
                {
                    "export_id": export_id,
                    "item_id": item.item_id,
                    "task": item.task,
                    "output_code": code,
                    "image": _image_name(item),
                    "prompt": item.prompt,
                    "reference": item.reference,
                    "output": item.texts[code],
                    "pair": pair,
                    **{column: "" for column in ANSWER_COLUMNS},
                }
            )
    return rows


def write_csv(path: Path, rows: Sequence[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def write_xlsx(path: Path, rows: Sequence[dict[str, str]], rubric: Rubric) -> bool:
    """The spreadsheet with drop-down lists for the graded columns; ``False`` when openpyxl is missing."""
    try:
        from openpyxl import Workbook
        from openpyxl.worksheet.datavalidation import DataValidation
    except ImportError:
        return False
    book = Workbook()
    sheet = book.active
    sheet.title = "items"
    sheet.append(list(CSV_COLUMNS))
    for row in rows:
        sheet.append([row[column] for column in CSV_COLUMNS])
        for cell in sheet[sheet.max_row]:
            if isinstance(cell.value, str) and cell.value.startswith("="):
                cell.data_type = "s"  # model text, not a formula: "=5 cm" must not become a live cell
    last = len(rows) + 1
    for column, values in (
        ("correctness", [str(value) for value in rubric.levels("correctness")]),
        ("severity", rubric.levels("severity")),
    ):
        letter = chr(ord("A") + CSV_COLUMNS.index(column))
        validation = DataValidation(type="list", formula1='"' + ",".join(values) + '"', allow_blank=True)
        sheet.add_data_validation(validation)
        validation.add(f"{letter}2:{letter}{max(last, 2)}")
    guide = book.create_sheet("rubric")
    guide.append(["field", "value", "meaning"])
    for name in ("correctness", "severity"):
        for level in rubric.raw["fields"][name]["levels"]:
            guide.append([name, str(level["value"]), f"{level['label']}: {level.get('help', '')}"])
    for entry in rubric.error_types:
        guide.append(["error_types", entry.key, entry.description])
    guide.append(["preference", "an output code of the pair, or tie", rubric.raw["pairwise"]["question"]])
    book.save(path)
    return True


README = """Expert review packet {export_id} (rubric {rubric} v{version})

Open form.html in a browser (it works offline). Your work is kept in the browser as you go; press
"Save annotations" to download annotations_{export_id}_<your name>.json and send that file back.

Prefer a spreadsheet? Fill items.csv or items.xlsx instead: one row per model output. Write your name in
the annotator column of every row you grade; correctness is one of {correctness}; severity one of
{severity}; error_types are taxonomy keys separated by ';' (see the rubric sheet or the form); preference
(on the first row of an item, which names its pair) is one of the two codes or 'tie'. The image of each item
is in images/. Do not change the export_id, item_id or output_code columns.
"""


def export(
    runs: Sequence[str],
    out: Path,
    n: int,
    seed: int = 0,
    stratify_judge: bool = False,
    tasks: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write the annotation packet and the key; returns a summary of what was written.

    Args:
        runs: ``LABEL=FOLDER`` or ``FOLDER`` per model (lmms-eval output folders with ``--log_samples``).
        out: The export folder (must be empty or absent).
        n: How many documents to sample.
        seed: Sampling seed.
        stratify_judge: Stratify by the worst judge severity among each document's outputs too.
        tasks: Only these tasks.

    Raises:
        MedbenchError: Fewer than one run, duplicate labels, a non-empty ``out`` or unusable runs.
    """
    if n < 1:
        raise MedbenchError(f"--n {n}: sample at least one item")
    parsed = [parse_run_argument(argument) for argument in runs]
    labels = [label for label, _ in parsed]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise MedbenchError(f"two runs are both called {duplicates[0]!r}; name them with LABEL=FOLDER")
    if out.exists() and any(out.iterdir()):
        raise MedbenchError(f"--out {out} is not empty; choose a new folder (an export is never overwritten)")
    models = [read_model_outputs(label, folder) for label, folder in parsed]
    rubric = load_rubric()
    items, sampling = build_items(models, n, seed, stratify_judge, tasks)
    export_id = "exp-" + secrets.token_hex(6)
    annotators = out / "annotators"
    (annotators / "images").mkdir(parents=True, exist_ok=True)
    for item in items:
        if item.image is not None:
            (annotators / _image_name(item)).write_bytes(item.image[0])
    from medbench.experts.form import render_form

    payload = form_payload(export_id, items, rubric)
    (annotators / "form.html").write_text(render_form(payload), encoding="utf-8")
    rows = spreadsheet_rows(export_id, items)
    write_csv(annotators / "items.csv", rows)
    xlsx = write_xlsx(annotators / "items.xlsx", rows, rubric)
    (annotators / "README.txt").write_text(
        README.format(
            export_id=export_id,
            rubric=rubric.name,
            version=rubric.version,
            correctness=", ".join(map(str, rubric.levels("correctness"))),
            severity=", ".join(rubric.levels("severity")),
        ),
        encoding="utf-8",
    )
    key = {
        "schema": KEY_SCHEMA,
        "export_id": export_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "rubric": rubric.describe(),
        "sampling": sampling,
        "models": {
            model.label: {
                "folder": str(model.folder),
                "model_name": model.model_name,
                "results_files": [str(path) for path in model.results_files],
            }
            for model in models
        },
        "items": {
            item.item_id: {
                "task": item.task,
                "sample_id": item.sample_id,
                "codes": item.codes,
                "models": item.labels,
                "judge_severity": item.judge,
            }
            for item in items
        },
    }
    key_path = out / "key.json"
    key_path.write_text(json.dumps(key, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return {"export_id": export_id, "items": len(items), "outputs": len(rows), "key": key_path, "annotators": annotators, "xlsx": xlsx}
