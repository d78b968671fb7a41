"""Load and validate the evaluation data of a medbench task.

The loaders turn every supported source (hub dataset, local JSONL, saved dataset, demo set) into one
document shape, so the task code never sees dataset quirks:

* VQA documents: ``id``, ``question``, ``answer``, ``answer_type`` ("CLOSED" / "OPEN"), ``image``, ``source``.
* Report documents: ``id``, ``reference``, ``facts`` (precomputed atomic facts, possibly empty), ``image``,
  ``source``.

``answer_type`` is the dataset's own label when the row has one; else the task's label table when it ships one
(``metadata.answer_types`` in its YAML, see :mod:`medbench.data.answer_types`; hub rows must all be found
there); else CLOSED for yes/no gold answers (see :func:`medbench.metrics.vqa.is_closed_question`). Problems
with user data raise :class:`DataError` with one line naming the file, the row and the fix.

Hub datasets are read at the commit pinned in :mod:`medbench.data.sources` (``MEDBENCH_<TASK>_REVISION``
overrides it), and the commit is part of every document's ``source``. Downloaded archives are unpacked into
medbench's own cache (``MEDBENCH_CACHE``, default ``~/.cache/medbench``), never into the read-only hub cache.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from medbench.data.answer_types import AnswerTypeTable, read_table
from medbench.data.sources import TaskSource, get_source
from medbench.errors import DataError
from medbench.metrics.vqa import is_closed_question

DEMO_DIR = Path(__file__).resolve().parent / "demo"

# Accepted spellings of each document field, first match wins. The aliases cover the study authors'
# LLaVA-Med question files (question_id, text, gpt4_answer) and SLAKE's own JSON (qid, img_name).
VQA_FIELDS: dict[str, tuple[str, ...]] = {
    "id": ("id", "question_id", "qid"),
    "image": ("image", "img_name", "image_path"),
    "question": ("question", "text"),
    "answer": ("answer", "gpt4_answer"),
}
REPORT_FIELDS: dict[str, tuple[str, ...]] = {
    "id": ("id", "question_id", "study_id"),
    "image": ("image", "image_path", "img_name"),
    "reference": ("reference", "findings", "report", "caption", "gpt4_answer", "answer"),
}
_OPTIONAL_ID = "id"


@dataclass(frozen=True)
class ResolvedSource:
    """Where a task's data will be read from.

    Attributes:
        task: The task name.
        origin: ``"hub"``, ``"local"`` (a JSONL/JSON file), ``"saved"`` (``save_to_disk`` folder),
            ``"snapshot"`` (a downloaded hub folder) or ``"demo"``.
        location: Hub id, file or folder.
        images_dir: Folder that relative image paths are resolved against (JSON sources only).
        revision: The hub commit (or branch) read, for hub sources; None means the default branch.
    """

    task: str
    origin: str
    location: str
    images_dir: Path | None = None
    revision: str | None = None

    def describe(self) -> str:
        """``hub:ID:SPLIT@REVISION`` for hub sources, else ``ORIGIN:PATH`` (recorded in every document)."""
        if self.origin == "hub":
            source = get_source(self.task)
            return f"hub:{self.location}:{source.hub_split}@{self.revision or 'main'}"
        return f"{self.origin}:{self.location}"


def resolve_source(task: str, environ: dict[str, str] | None = None) -> ResolvedSource:
    """Decide where ``task`` reads its data from, without reading it.

    Args:
        task: A medbench task name, e.g. ``"medbench_vqa_rad"``.
        environ: The environment to read (defaults to ``os.environ``).

    Returns:
        The resolved source.

    Raises:
        DataError: When a configured path does not exist, or a licensed task has no local data.
    """
    env = os.environ if environ is None else environ
    source = get_source(task)
    configured = env.get(source.env_var, "").strip()
    images = env.get(source.images_env_var, "").strip()
    if configured.lower() == "demo" or (not configured and env.get("MEDBENCH_DATA", "").strip().lower() == "demo"):
        return ResolvedSource(task, "demo", str(DEMO_DIR / source.demo_file), DEMO_DIR)
    if configured:
        return _resolve_local(source, Path(configured).expanduser(), images)
    if env.get("MEDBENCH_DATA", "").strip():
        raise DataError(
            f"MEDBENCH_DATA={env['MEDBENCH_DATA']!r} is not understood; the only value is 'demo' "
            f"(point single tasks at local copies with {source.env_var}=PATH)"
        )
    if source.licensed:
        raise DataError(f"{task} has no local data: {source.access}")
    revision = env.get(source.revision_env_var, "").strip() or source.hub_revision
    return ResolvedSource(task, "hub", str(source.hub_id), revision=revision)


def cache_dir(environ: dict[str, str] | None = None) -> Path:
    """medbench's own writable cache: ``MEDBENCH_CACHE``, else ``$XDG_CACHE_HOME/medbench``, else ``~/.cache/medbench``."""
    env = os.environ if environ is None else environ
    configured = env.get("MEDBENCH_CACHE", "").strip()
    if configured:
        return Path(configured).expanduser()
    base = env.get("XDG_CACHE_HOME", "").strip()
    return (Path(base).expanduser() if base else Path.home() / ".cache") / "medbench"


def _resolve_local(source: TaskSource, path: Path, images: str) -> ResolvedSource:
    if not path.exists():
        raise DataError(f"{source.env_var}={path} does not exist; point it at a JSONL file or a dataset folder")
    if images and not Path(images).expanduser().is_dir():
        raise DataError(f"{source.images_env_var}={images} is not a folder; point it at the folder holding the images")
    if path.is_dir():
        for name in ("test.jsonl", "test.json"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
                return ResolvedSource(source.task, "saved", str(path))
            if any(path.rglob("*.parquet")):
                return ResolvedSource(source.task, "snapshot", str(path))
            raise DataError(
                f"{source.env_var}={path}: folder holds no test.jsonl, test.json, saved dataset or parquet files"
            )
    images_dir = Path(images).expanduser() if images else path.parent
    return ResolvedSource(source.task, "local", str(path), images_dir)


def read_text_file(path: Path) -> str:
    """A UTF-8 text file's contents (a leading byte-order mark is dropped).

    Raises:
        DataError: Naming the line and byte when the file is not UTF-8, with the fix.
    """
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line} is not UTF-8 (byte 0x{raw[error.start]:02x}); re-save the file as UTF-8, "
            f"e.g. iconv -f latin1 -t utf-8 {path.name} > fixed.jsonl"
        ) from None


def iter_json_records(path: Path, fix: str = "fix or remove that line") -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, record)`` from a JSONL file, or ``(index + 1, record)`` from a JSON list.

    Blank lines are skipped. Lines end at ``\n`` only (a ``\r`` before it is JSON whitespace): model outputs
    logged with ``ensure_ascii=False`` may hold U+2028 or U+0085 inside a string, where ``str.splitlines``
    would cut the record in two.

    Args:
        path: A ``.json`` file holding a list, or a JSON-lines file (any other suffix).
        fix: What the user should do about a line that is not JSON (ends that error message).

    Raises:
        DataError: When the file is not UTF-8, or a line or the file is not valid JSON.
    """
    text = read_text_file(path)
    if path.suffix == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}); fix the file") from None
        if not isinstance(records, list):
            raise DataError(f"{path}: a .json data file must hold a list of objects; use JSONL for one object per line")
        yield from enumerate(records, start=1)
        return
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: line {number} is not valid JSON ({error.msg}); {fix}") from None
        yield number, record


ANSWER_TYPES = ("CLOSED", "OPEN")


def pick_field(record: dict, names: tuple[str, ...]) -> Any:
    """The value of the first of ``names`` that ``record`` fills (the alias tables :data:`VQA_FIELDS`, ...).

    ``None`` and a blank string count as absent, so an empty alias never hides a filled one.

    Args:
        record: One row of a JSON/JSON-lines file.
        names: Accepted field names, preferred first.
    """
    for name in names:
        value = record.get(name)
        if value is not None and not (isinstance(value, str) and not value.strip()):
            return value
    return None


def _pick_image(values: dict[str, Any], record: dict, aliases: tuple[str, ...]) -> tuple[Any, str | None]:
    """The row's image path; the study's MIMIC-CXR files hold it as a one-element list."""
    image = values["image"]
    if isinstance(image, list):
        field = next(alias for alias in aliases if record.get(alias) is image)
        if len(image) != 1 or not isinstance(image[0], str) or not image[0]:
            return None, (
                f"field '{field}' holds {len(image)} entries; medbench evaluates one image per row "
                f"(keep one path, or one row per image)"
            )
        return image[0], None
    return image, None


def decode_problem(opened: Any) -> str | None:
    """Decode an image completely and return what is wrong with it, or None.

    ``Image.verify()`` only checks the header and lmms-eval sets ``ImageFile.LOAD_TRUNCATED_IMAGES`` at import,
    which turns a truncated file into a grey picture; so decode every byte here with that switch off.

    Args:
        opened: A file path, a file-like object or raw bytes.
    """
    import io

    from PIL import Image, ImageFile, UnidentifiedImageError

    stream = io.BytesIO(opened) if isinstance(opened, (bytes, bytearray)) else opened
    lenient = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(stream) as image:
            if image.format == "JPEG":
                image.draft(image.mode, (64, 64))  # scaled decode: still reads every byte, much faster
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        detail = str(error).split("\n")[0][:80]
        return f"cannot be read as an image ({type(error).__name__}: {detail})"
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient
    return None


def _check_image(path: Path) -> str | None:
    """Return a problem description when ``path`` is missing or not a completely decodable image."""
    if not path.is_file():
        return "not found"
    return decode_problem(path)


def read_local_records(resolved: ResolvedSource, *, check_images: bool = True) -> list[dict[str, Any]]:
    """Read and validate a JSONL/JSON task file into documents (image as an absolute path).

    Args:
        resolved: A source with origin ``"local"`` or ``"demo"``.
        check_images: Open every image to make sure it exists and decodes.

    Returns:
        The documents in file order.

    Raises:
        DataError: On the first problem, naming file, row, field and fix (and how many more rows are bad).
    """
    source = get_source(resolved.task)
    path = Path(resolved.location)
    fields = VQA_FIELDS if source.kind == "vqa" else REPORT_FIELDS
    images_dir = resolved.images_dir or path.parent
    documents: list[dict[str, Any]] = []
    problems: list[str] = []
    for number, record in iter_json_records(path):
        if not isinstance(record, dict):
            problems.append(f"row {number} is not a JSON object")
            continue
        if source.kind == "vqa" and str(record.get("q_lang", "en")).lower() != "en":
            continue  # SLAKE carries Chinese questions too; the benchmark uses the English ones
        values = {name: pick_field(record, aliases) for name, aliases in fields.items()}
        # A blank answer ("   ") is as missing as an absent one: it would be scored against every prediction.
        missing = [name for name, value in values.items() if name != _OPTIONAL_ID and (value is None or not str(value).strip())]
        if missing:
            name = missing[0]
            problems.append(
                f"row {number}: missing field '{name}' (accepted names: {', '.join(fields[name])})"
            )
            continue
        label = record.get("answer_type")
        if source.kind == "vqa" and label is not None and str(label).strip() and str(label).strip().upper() not in ANSWER_TYPES:
            problems.append(f"row {number}: answer_type {label!r} is not one of {', '.join(ANSWER_TYPES)}; fix it or leave it out")
            continue
        image_value, problem = _pick_image(values, record, fields["image"])
        if problem:
            problems.append(f"row {number}: {problem}")
            continue
        image_path = Path(str(image_value))
        if not image_path.is_absolute():
            image_path = images_dir / image_path
        if check_images and (problem := _check_image(image_path)):
            problems.append(
                f"row {number}: image '{image_value}' {problem} under {images_dir} "
                f"(fix the path or set {source.images_env_var} to the image folder)"
            )
            continue
        doc_id = str(values["id"]) if values["id"] is not None else str(number)
        if source.kind == "vqa":
            question = str(values["question"]).replace("<image>", "").strip()
            answer = str(values["answer"]).strip()
            documents.append(
                {
                    "id": doc_id,
                    "question": question,
                    "answer": answer,
                    "answer_type": record.get("answer_type"),  # resolved by assign_answer_types
                    "image": str(image_path),
                }
            )
        else:
            facts = record.get("facts") or []
            if not isinstance(facts, list) or not all(isinstance(fact, str) for fact in facts):
                problems.append(f"row {number}: field 'facts' must be a list of strings")
                continue
            documents.append(
                {"id": doc_id, "reference": str(values["reference"]).strip(), "facts": facts, "image": str(image_path)}
            )
    if problems:
        more = f" (and {len(problems) - 1} more rows with problems)" if len(problems) > 1 else ""
        raise DataError(f"{path}: {problems[0]}{more}")
    if not documents:
        raise DataError(f"{path}: no usable rows; the file is empty (or holds no English questions)")
    ids = [document["id"] for document in documents]
    if len(set(ids)) != len(ids):
        duplicate = next(doc_id for doc_id in ids if ids.count(doc_id) > 1)
        raise DataError(f"{path}: id {duplicate!r} occurs more than once; ids must be unique")
    return documents


def answer_type_table(task: str) -> AnswerTypeTable | None:
    """The label table a task ships (``metadata.answer_types.file`` in its YAML), or None."""
    return _answer_type_table(task)


@cache
def _answer_type_table(task: str) -> AnswerTypeTable | None:
    from medbench.taskfiles import task_configs, tasks_dir

    config = task_configs().get(task, {})
    declared = (config.get("metadata") or {}).get("answer_types")
    if not declared:
        return None
    return read_table(tasks_dir() / task / str(declared["file"]))


def assign_answer_types(
    task: str, questions: list[str], answers: list[str], given: list[Any], *, description: str, complete: bool
) -> list[str]:
    """CLOSED/OPEN for each row: the row's own label, else the task's label table, else yes/no gold.

    Args:
        task: The task name (selects the label table).
        questions: The questions.
        answers: The gold answers.
        given: The rows' own labels (None where absent).
        description: The source, for error messages.
        complete: Every unlabelled row must be in the table (true for the pinned hub copy).

    Raises:
        DataError: When ``complete`` and rows are missing from the table.
    """
    table = answer_type_table(task)
    types: list[str] = []
    missing = 0
    for question, answer, label in zip(questions, answers, given, strict=True):
        if (label is None or not str(label).strip()) and table is not None:
            label = table.lookup(question, answer)
            missing += label is None
        types.append("CLOSED" if is_closed_question(str(answer), None if label is None else str(label)) else "OPEN")
    if complete and table is not None and missing:
        raise DataError(
            f"{description}: {missing} of {len(types)} rows are not in the label table {table.path.name} of {task} "
            f"(the data differs from the pinned copy); use the pinned revision or a local copy with answer_type"
        )
    return types


def load_task_docs(task: str, environ: dict[str, str] | None = None):
    """Load the evaluation documents of ``task`` as a ``datasets.Dataset`` with an ``Image`` column.

    Args:
        task: A medbench task name.
        environ: The environment to read the source variables from (defaults to ``os.environ``).

    Returns:
        A ``datasets.Dataset`` in the document shape described in the module docstring.

    Raises:
        DataError: When the data is missing, malformed or empty.
    """
    resolved = resolve_source(task, environ)
    source = get_source(task)
    if resolved.origin in ("local", "demo"):
        return _documents_to_dataset(read_local_records(resolved), source, resolved.describe())
    if task == "medbench_slake" and resolved.origin == "hub":
        local = _fetch_slake(resolved, environ)
        return _documents_to_dataset(read_local_records(local), source, resolved.describe(), complete=True)
    return _table_to_dataset(_load_table(resolved, source), source, resolved.describe(), complete=resolved.origin == "hub")


def _load_table(resolved: ResolvedSource, source: TaskSource):
    import datasets

    split = source.hub_split or "test"
    if resolved.origin == "saved":
        loaded = datasets.load_from_disk(resolved.location)
    elif resolved.origin == "snapshot":
        try:
            loaded = datasets.load_dataset(resolved.location, split=split)
        except ValueError as error:  # datasets names the splits it found
            raise DataError(f"{resolved.location}: no '{split}' split ({str(error).splitlines()[0][:160]})") from None
    else:
        # split= makes datasets prepare only the evaluated split (PathVQA: 6.7k of 32.6k images)
        try:
            loaded = datasets.load_dataset(resolved.location, split=split, revision=resolved.revision)
        except Exception as error:  # noqa: BLE001 - the hub client and datasets raise many types (offline, auth, HTTP, cache)
            reason = (str(error).splitlines() or [""])[0][:160]
            raise DataError(
                f"{source.task}: could not load {resolved.describe()} from the Hugging Face hub "
                f"({type(error).__name__}: {reason}); download it once with network access or set "
                f"{source.env_var} to a local copy"
            ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"{resolved.location}: no '{split}' split (found: {', '.join(loaded)})")
        loaded = loaded[split]
    return loaded


def _table_to_dataset(table, source: TaskSource, description: str, *, complete: bool = False):
    """Bring a hub-format table (image/question/answer columns) into the document shape."""
    fields = VQA_FIELDS if source.kind == "vqa" else REPORT_FIELDS
    columns = set(table.column_names)
    renames = {}
    for name, aliases in fields.items():
        present = next((alias for alias in aliases if alias in columns), None)
        if present is None and name != _OPTIONAL_ID:
            raise DataError(
                f"{description}: dataset has no '{name}' column (accepted names: {', '.join(aliases)}; "
                f"found: {', '.join(sorted(columns))})"
            )
        if present is not None and present != name:
            renames[present] = name
    table = table.rename_columns(renames)
    if len(table) == 0:
        raise DataError(f"{description}: the evaluated split is empty")
    if "id" not in table.column_names:
        table = table.add_column("id", [str(index) for index in range(len(table))])
    if source.kind == "vqa":
        given = table["answer_type"] if "answer_type" in table.column_names else [None] * len(table)
        types = assign_answer_types(
            source.task, table["question"], table["answer"], given, description=description, complete=complete
        )
        if "answer_type" in table.column_names:
            table = table.remove_columns("answer_type")
        table = table.add_column("answer_type", types)
        keep = ["id", "question", "answer", "answer_type", "image"]
    else:
        if "facts" not in table.column_names:
            table = table.add_column("facts", [[] for _ in range(len(table))])
        keep = ["id", "reference", "facts", "image"]
    table = table.select_columns(keep)
    return table.add_column("source", [description] * len(table))


def first_table_image_problem(documents, description: str) -> str | None:
    """Decode every image of a hub-format document table completely; describe the first that fails, or None.

    ``datasets`` decodes images lazily (and leniently once lmms-eval is imported), so a truncated file in a
    hub or saved copy would reach the model as a grey picture; ``medbench data check`` calls this.
    """
    import datasets

    raw = documents.cast_column("image", datasets.Image(decode=False))
    for doc_id, image in zip(raw["id"], raw["image"], strict=True):
        payload = image.get("bytes") or image.get("path")
        problem = decode_problem(payload) if payload else "is empty"
        if problem:
            return f"{description}: the image of document {doc_id!r} {problem}; replace that file or use another copy"
    return None


def _documents_to_dataset(documents: list[dict[str, Any]], source: TaskSource, description: str, *, complete: bool = False):
    import datasets

    kind = source.kind
    if kind == "vqa":
        types = assign_answer_types(
            source.task,
            [document["question"] for document in documents],
            [document["answer"] for document in documents],
            [document["answer_type"] for document in documents],
            description=description,
            complete=complete,
        )
        documents = [{**document, "answer_type": label} for document, label in zip(documents, types, strict=True)]

    features = {"id": datasets.Value("string"), "image": datasets.Image()}
    if kind == "vqa":
        features.update(
            question=datasets.Value("string"), answer=datasets.Value("string"), answer_type=datasets.Value("string")
        )
    else:
        features.update(reference=datasets.Value("string"), facts=datasets.Sequence(datasets.Value("string")))
    columns: dict[str, list[Any]] = {name: [document[name] for document in documents] for name in features}
    columns["source"] = [description] * len(documents)
    features["source"] = datasets.Value("string")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def _fetch_slake(resolved: ResolvedSource, environ: dict[str, str] | None = None) -> ResolvedSource:
    """Download SLAKE's test questions and image archive from the hub (once; cached) and unpack the images.

    SLAKE's hub repository stores questions as JSON and images in ``imgs.zip``, so it cannot be read with
    ``datasets.load_dataset`` alone. The 212 MB of images go to medbench's cache (the hub cache may be shared
    and read-only), unpacked into a temporary folder and renamed into place, so several ranks can start at once.
    """
    from huggingface_hub import hf_hub_download

    source = get_source("medbench_slake")
    try:
        questions = Path(
            hf_hub_download(str(source.hub_id), f"{source.hub_split}.json", repo_type="dataset", revision=resolved.revision)
        )
        archive = Path(hf_hub_download(str(source.hub_id), "imgs.zip", repo_type="dataset", revision=resolved.revision))
    except Exception as error:  # noqa: BLE001 - the hub client raises many types (offline, auth, HTTP)
        raise DataError(
            f"medbench_slake: could not fetch {source.hub_id} from the Hugging Face hub ({type(error).__name__}); "
            f"download it once with network access or set {source.env_var} to a local copy"
        ) from None
    target = cache_dir(environ) / "slake" / (resolved.revision or "main") / "imgs"
    if not target.is_dir():
        _unpack_atomically(archive, "imgs", target)
    return ResolvedSource(source.task, "local", str(questions), target)


def _unpack_atomically(archive: Path, member_dir: str, target: Path) -> None:
    """Extract ``member_dir/`` of a zip archive to ``target``; the folder appears complete or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        try:
            with zipfile.ZipFile(archive) as bundle:
                bundle.extractall(scratch)
        except (zipfile.BadZipFile, OSError) as error:
            raise DataError(
                f"{archive}: cannot unpack ({type(error).__name__}); delete it from the hub cache and run again"
            ) from None
        unpacked = scratch / member_dir
        if not unpacked.is_dir():
            raise DataError(f"{archive}: holds no '{member_dir}/' folder; is this the right archive?")
        try:
            os.rename(unpacked, target)
        except OSError:
            if not target.is_dir():  # not a lost race with another rank: a real failure
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
