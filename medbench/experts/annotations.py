"""Read annotation files (the form's JSON, the CSV, the XLSX) and check them against the export key.

Every problem becomes one line naming the file and what to fix; :func:`read_annotations` collects all of them
before failing, so an annotator's file is fixed in one round.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbench.errors import MedbenchError
from medbench.experts.export import ANNOTATIONS_SCHEMA, CSV_COLUMNS, KEY_SCHEMA
from medbench.experts.rubric import TIE, Rubric, load_rubric


@dataclass
class Annotation:
    """One annotator's grades of one output (``values``: correctness, severity, error_types, comment)."""

    annotator: str
    item_id: str
    code: str
    values: dict[str, Any]


@dataclass
class AnnotationSet:
    """Everything read from the annotation files."""

    annotations: list[Annotation] = field(default_factory=list)
    preferences: list[tuple[str, str, str]] = field(default_factory=list)  # (annotator, item, code or "tie")
    annotators: dict[str, Path] = field(default_factory=dict)
    blank: int = 0
    missing: dict[Path, list[str]] = field(default_factory=dict)  # file -> "item code" rows it lacks (--allow-partial)


class AnnotationProblems(MedbenchError):
    """Annotation files did not validate; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) in the annotation files (listed above); nothing was imported")


def read_tagged_json(path: Path, option: str, schema: str, member: str, what: str, fix: str) -> dict[str, Any]:
    """A JSON object medbench wrote, checked by its ``schema`` tag and its ``member`` mapping.

    Raises:
        MedbenchError: One line naming ``option``, the file and ``fix``: unreadable, not JSON, or not ``what``.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise MedbenchError(f"{option} {path}: cannot read ({error.strerror}); {fix}") from None
    except json.JSONDecodeError:
        raise MedbenchError(f"{option} {path}: not JSON; {fix}") from None
    if not isinstance(document, dict) or document.get("schema") != schema or not isinstance(document.get(member), dict):
        raise MedbenchError(f"{option} {path}: not {what} ({schema}); {fix}")
    return document


def load_key(path: Path) -> dict[str, Any]:
    """Read and check an export key file.

    Raises:
        MedbenchError: Unreadable or not a key written by ``medbench experts export``.
    """
    return read_tagged_json(path, "--key", KEY_SCHEMA, "items", "an export key",
                            "pass the key.json written by `medbench experts export`")


def _records_from_json(path: Path, problems: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(header, rows)`` from the form's JSON; rows share the spreadsheet's column names."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        problems.append(f"{path}: not JSON (line {error.lineno}); send the file the form's Save button wrote")
        return {}, []
    if not isinstance(document, dict) or document.get("schema") != ANNOTATIONS_SCHEMA:
        problems.append(f"{path}: not an annotations file ({ANNOTATIONS_SCHEMA}); send the file the form's Save button wrote")
        return {}, []
    rows = []
    items = document.get("items")
    if not isinstance(items, dict):
        problems.append(f"{path}: missing field 'items'; send the file the form's Save button wrote")
        items = {}
    for item_id, entry in items.items():
        outputs = entry.get("outputs") if isinstance(entry, dict) else None
        if not isinstance(outputs, dict):
            problems.append(f"{path}: item {item_id}: missing field 'outputs'")
            continue
        for position, (code, values) in enumerate(outputs.items()):
            if not isinstance(values, dict):
                problems.append(f"{path}: item {item_id} output {code}: not an object")
                continue
            rows.append(
                {
                    "item_id": item_id,
                    "output_code": code,
                    **values,
                    "preference": entry.get("preference") if position == 0 else None,
                    "annotator": document.get("annotator"),
                    "export_id": document.get("export_id"),
                }
            )
    return document, rows


SEPARATORS = {",": "comma", ";": "semicolon", "\t": "tab"}


def _records_from_csv(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    """Rows of a CSV as a spreadsheet saved it: UTF-8 with or without BOM, CRLF or LF, ``,`` ``;`` or tab.

    Excel and LibreOffice in many locales save with ``;`` (the comma is their decimal mark), so the separator
    is the one that makes the header hold the export's columns.
    """
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        problems.append(
            f"{path}: not UTF-8 (byte 0x{data[error.start]:02x} at offset {error.start}); save it as "
            "'CSV UTF-8' (Excel) or with character set 'Unicode (UTF-8)' (LibreOffice)"
        )
        return []
    first_line = text.splitlines()[0] if text.strip() else ""
    headers = {separator: next(csv.reader([first_line], delimiter=separator), []) for separator in SEPARATORS}
    separator = max(SEPARATORS, key=lambda candidate: sum(column in CSV_COLUMNS for column in headers[candidate]))
    missing = [column for column in CSV_COLUMNS if column not in headers[separator]]
    if missing:
        problems.append(
            f"{path}: missing column(s) {', '.join(missing)} (read with {SEPARATORS[separator]} separators); "
            "start from the items.csv of the export"
        )
        return []
    return list(csv.DictReader(io.StringIO(text, newline=""), delimiter=separator))


def _records_from_xlsx(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    try:
        from openpyxl import load_workbook
    except ImportError:
        problems.append(f"{path}: reading .xlsx needs openpyxl (pip install openpyxl), or save the sheet as CSV")
        return []
    try:
        sheet = load_workbook(path, read_only=True, data_only=True).worksheets[0]
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as error:
        problems.append(f"{path}: not a readable .xlsx ({type(error).__name__}: {error}); save the sheet again, or as CSV")
        return []
    rows = sheet.iter_rows(values_only=True)
    header = [str(cell) if cell is not None else "" for cell in next(rows, [])]
    missing = [column for column in CSV_COLUMNS if column not in header]
    if missing:
        problems.append(f"{path}: missing column(s) {', '.join(missing)}; start from the items.xlsx of the export")
        return []
    records = []
    for row in rows:
        if row is None or all(cell is None for cell in row):
            continue
        records.append({name: ("" if cell is None else str(cell)) for name, cell in zip(header, row, strict=False)})
    return records


def _rubric_matches(document: dict[str, Any], rubric: Rubric, path: Path, problems: list[str]) -> None:
    given = document.get("rubric") or {}
    if given.get("name") != rubric.name or str(given.get("version")) != str(rubric.version):
        problems.append(
            f"{path}: made with rubric {given.get('name')} v{given.get('version')}, this medbench uses "
            f"{rubric.name} v{rubric.version}; import it with the medbench version that exported it"
        )


def read_annotations(
    paths: Iterable[Path], key: dict[str, Any], rubric: Rubric | None = None, *, allow_partial: bool = False
) -> AnnotationSet:
    """Read, validate and collect annotation files.

    Every file is checked against the export key: a file that lacks rows of the export (a truncated sheet, or
    rows deleted) is a problem unless ``allow_partial``, when the missing rows are recorded in ``missing``.

    Raises:
        AnnotationProblems: Any problem (unknown items or codes, missing fields, bad values, duplicate
            annotators, files from another export, wrong rubric version, missing rows), one line each.
    """
    rubric = rubric or load_rubric()
    problems: list[str] = []
    result = AnnotationSet()
    export_id = key["export_id"]
    exported_with = key.get("rubric") or {}
    if exported_with and (exported_with.get("name") != rubric.name or str(exported_with.get("version")) != str(rubric.version)):
        raise AnnotationProblems([
            (
                f"--key: export {export_id} was made with rubric {exported_with.get('name')} v{exported_with.get('version')}, "
                f"this medbench uses {rubric.name} v{rubric.version}; import with the medbench version that exported it"
            )
        ])
    for path in paths:
        if not path.is_file():
            problems.append(f"{path}: no such file; pass the annotation files (.json from the form, .csv, .xlsx)")
            continue
        suffix = path.suffix.lower()
        header: dict[str, Any] = {}
        if suffix == ".json":
            header, rows = _records_from_json(path, problems)
            if header:
                _rubric_matches(header, rubric, path, problems)
        elif suffix == ".csv":
            rows = _records_from_csv(path, problems)
        elif suffix == ".xlsx":
            rows = _records_from_xlsx(path, problems)
        else:
            problems.append(f"{path}: unknown file type {suffix!r}; pass .json (from the form), .csv or .xlsx")
            continue
        _check_rows(path, rows, key, rubric, export_id, result, problems, allow_partial)
    if problems:
        raise AnnotationProblems(problems)
    return result


def _check_rows(
    path: Path,
    rows: list[dict[str, Any]],
    key: dict[str, Any],
    rubric: Rubric,
    export_id: str,
    result: AnnotationSet,
    problems: list[str],
    allow_partial: bool = False,
) -> None:
    exports = {str(row.get("export_id") or "").strip() for row in rows} - {""}
    if exports and exports != {export_id}:
        other = ", ".join(sorted(exports - {export_id})) or "?"
        problems.append(f"{path}: belongs to export {other}, but the key is for {export_id}; pass that export's key.json")
        return
    graded: list[tuple[dict[str, Any], dict[str, Any]]] = []
    seen: set[tuple[str, str]] = set()
    annotators: dict[str, str] = {}  # identity (case and spacing ignored) -> the name as first written
    unnamed: list[str] = []  # graded rows without a name, reported once
    preferences: dict[str, str] = {}
    for number, row in enumerate(rows, start=2):
        item_id = str(row.get("item_id") or "").strip()
        code = str(row.get("output_code") or "").strip()
        where = f"{path}: item {item_id or '?'} output {code or '?'}"
        item = key["items"].get(item_id)
        if item is None:
            problems.append(f"{path}: unknown item {item_id!r} (row {number}); it is not in export {export_id}")
            continue
        if code not in item["codes"]:
            problems.append(f"{where}: unknown output code (this item has {', '.join(item['codes'])})")
            continue
        if (item_id, code) in seen:
            problems.append(f"{where}: graded twice in one file; keep one row per output")
            continue
        seen.add((item_id, code))
        preference = str(row.get("preference") or "").strip()
        if preference:
            pair = item["codes"][:2]
            if preference.lower() == TIE:
                preference = TIE
            if preference not in (*pair, TIE):
                problems.append(f"{path}: item {item_id}: preference {preference!r} is not {' or '.join(pair)} or tie")
            elif item_id in preferences and preferences[item_id] != preference:
                problems.append(f"{path}: item {item_id}: two different preferences; give one")
            else:
                preferences[item_id] = preference
        clean, found = rubric.check_output(row, where)
        problems += found
        annotator = " ".join(str(row.get("annotator") or "").split())
        if annotator:
            annotators.setdefault(annotator.casefold(), annotator)
        if clean is None:
            result.blank += 1
            continue
        if not annotator:
            unnamed.append(f"item {item_id} output {code}")
            continue
        if not found:
            graded.append((row, {"item_id": item_id, "code": code, "values": clean, "annotator": annotator}))
    if unnamed:
        problems.append(
            f"{path}: {len(unnamed)} graded row(s) have no 'annotator' (first: {unnamed[0]}); write the annotator's "
            "name on every graded row"
        )
    expected = [(item_id, code) for item_id, item in key["items"].items() for code in item["codes"]]
    if rows and len(rows) < len(expected):  # a full-length file with a wrong row has that row reported above
        absent = [f"{item_id} {code}" for item_id, code in expected if (item_id, code) not in seen]
        if absent and allow_partial:
            result.missing[path] = absent
        elif absent:
            shown = ", ".join(absent[:8]) + (", ..." if len(absent) > 8 else "")
            problems.append(
                f"{path}: {len(absent)} of the export's {len(expected)} rows are missing ({shown}); the file looks "
                "truncated or rows were deleted: send the whole sheet, or import with --allow-partial"
            )
    if not graded and not preferences and not problems:
        problems.append(f"{path}: no graded output; fill correctness and severity for the outputs you reviewed")
        return
    if len(annotators) > 1:
        problems.append(f"{path}: several annotators ({', '.join(sorted(annotators.values()))}); send one file per annotator")
        return
    if not annotators:
        if preferences and not unnamed:  # preferences alone are a contribution too: they need a name
            problems.append(f"{path}: preferences but no annotator name; write the annotator's name on the rows with a preference")
        return
    annotator = next(iter(annotators.values()))
    known = {name.casefold(): name for name in result.annotators}
    if annotator.casefold() in known:
        earlier = known[annotator.casefold()]
        problems.append(
            f"{path}: annotator {annotator!r} already came from {result.annotators[earlier]}"
            f"{f' (as {earlier!r})' if earlier != annotator else ''}; "
            "each annotator sends one file (merge them, or give each person a distinct name)"
        )
        return
    result.annotators[annotator] = path
    for _, entry in graded:
        result.annotations.append(Annotation(annotator, entry["item_id"], entry["code"], entry["values"]))
    result.preferences += [(annotator, item_id, choice) for item_id, choice in preferences.items()]
