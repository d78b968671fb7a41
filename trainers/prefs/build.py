"""``medbench prefs build``: turn a supervised (image, question, answer) data set into preference records.

Input is a task's local JSONL/JSON file (VQA fields, aliases as in :data:`medbench.data.loading.VQA_FIELDS`), a
medbench task name (its configured source: demo, local file or hub), or a file in the trainer's schema (its
``chosen`` is the answer). Output, in ``--output_dir``:

* ``prefs.jsonl``: records in the trainer's schema with the fields ``--recipe`` needs, each with ``meta``
  naming the rule (or LLM prompt) behind its rejected answer, where its error type and MMedPO relevance came from
  (``meta.error_type.source``, ``meta.relevance.source``, with the reason of a fallback), and the corruption
  behind its ``rejected_image``;
* ``images/``: the derived (corrupted) images, and the source images of hub data sets;
* ``manifest.json``: builder version, input hashes, seed, every option, taxonomy and lexicon versions, the error-type
  tagger and relevance scorer (model, prompt id + SHA-256), counts per rule / error type / corruption / source /
  fallback reason, the skipped records with their reason, and the LLM cost report.

Every random choice comes from a generator seeded by ``(seed, record id, purpose)``: the same seed gives the same
records and images whatever the record order (the output lists records in input order). A bad record (missing or
unreadable image, empty question or answer, a line that is not JSON, an id used twice, no applicable rule) is
reported and skipped; the others are built.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from medbench.data.fingerprint import file_sha256
from medbench.errors import DataError, MedbenchError
from medbench.progress import progress_bar
from medbench.taxonomy import load_taxonomy

from .images import CORRUPTIONS, DEFAULT_REGION, DEFAULTS, REGION_CORRUPTIONS, control_box, corrupt
from .llm import LLMVerdict
from .rules import Edit, load_lexicon, record_rng, rule_edit, tag_error_type

BUILDER_VERSION = "1.0"
RECORDS_FILE = "prefs.jsonl"
MANIFEST_FILE = "manifest.json"
IMAGES_DIR = "images"

# The corruption each image-side recipe gets by default: lesion-region noise (CoPO, MMedPO), crop (mDPO's paper).
DEFAULT_CORRUPTION = {"mdpo": "crop"}

# Offline clinical-relevance scores per error type for MMedPO's weights (`--relevance offline`, and the fallback of
# a record the LLM scorer gave no usable score): errors that change diagnosis or management score 1.0, attribute
# errors less; other keys DEFAULT_RELEVANCE. Mapped linearly onto --weight_range like the LLM's score.
OFFLINE_RELEVANCE = {
    "laterality_position": 1.0,
    "presence_abnormality": 1.0,
    "organ": 1.0,
    "modality": 0.9,
    "diagnosis": 1.0,
    "clinical_knowledge": 0.8,
    "size": 0.7,
    "count": 0.7,
    "plane": 0.5,
    "colour": 0.5,
}
DEFAULT_RELEVANCE = 0.6


@dataclass
class BuildOptions:
    """Every option of one build (recorded in the manifest).

    Attributes:
        recipe: Trainer recipe the records are for (decides which fields are built).
        seed: Seed of every random choice.
        mode: ``rules`` (offline) or ``llm`` (rejected answers from an LLM through the judge transport).
        error_types: ``rules`` (the rule's tag; an LLM edit's own key, else the rule-based tagger) or ``llm`` (an LLM
            classifier, falling back to the rule-based tag; counted).
        relevance: ``offline`` (the error-type table) or ``llm`` (an LLM's clinical-relevance score, falling back
            to the table; counted): MMedPO's weights.
        corruption: ``noise``, ``crop``, ``blackout`` or ``blur``; None picks the recipe's default.
        corruption_options: Overrides of the corruption's defaults (``sigma``, ``radius``, ``max_area``, ...).
        rules: Restrict the offline rules (names as in :func:`medbench.train.prefs.rules.rule_edit`); None = all.
        weight_range: ``(low, high)`` MMedPO weights are mapped onto.
        image_root: Folder relative image paths resolve against (default: the input file's folder).
        limit: Build at most this many records (None: all).
        prompt_of: A medbench task whose prompt (its ``pre_prompt`` + question + ``post_prompt``) the records'
            questions get, so training sees the prompt that task evaluates with; None keeps the bare question.
        control: Also write ``control_image`` m″: the corruption of ``rejected_image`` applied to a region of the same
            size that overlaps no lesion box (``boxes``, else ``box``); region corruptions only. For held-out scoring.
        progress: Show a progress bar.
    """

    recipe: str = "dpo"
    seed: int = 0
    mode: str = "rules"
    error_types: str = "rules"
    relevance: str = "offline"
    corruption: str | None = None
    corruption_options: dict[str, Any] = field(default_factory=dict)
    rules: list[str] | None = None
    weight_range: tuple[float, float] = (0.5, 1.5)
    image_root: str | None = None
    limit: int | None = None
    prompt_of: str | None = None
    control: bool = False
    progress: bool = True


@dataclass
class BuildReport:
    """What a build wrote and counted."""

    output_dir: Path
    records_path: Path
    manifest_path: Path
    manifest: dict[str, Any]


def _task_prompt(task: str) -> tuple[str, str]:
    """``(pre_prompt, post_prompt)`` a medbench VQA task puts around its questions."""
    from medbench.taskfiles import task_configs

    config = task_configs().get(task)
    if config is None or "lmms_eval_specific_kwargs" not in config:
        known = ", ".join(name for name, c in task_configs().items() if "lmms_eval_specific_kwargs" in c)
        raise MedbenchError(f"prefs build: --prompt_of {task!r} is not a medbench VQA task; choose one of: {known}")
    default = config["lmms_eval_specific_kwargs"].get("default") or {}
    return str(default.get("pre_prompt") or ""), str(default.get("post_prompt") or "")


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_supervised(source: str, image_root: str | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Read (id, image, question, answer) items from a file or a medbench task name, without failing on bad rows.

    Returns:
        ``(items, input description)``; an item with a problem carries ``problem`` (and is skipped by the builder).

    Raises:
        DataError: the source itself is unusable (no such file or task, unreadable file).
    """
    from medbench.data.loading import VQA_FIELDS

    path = Path(source).expanduser()
    if path.is_file():
        root = Path(image_root).expanduser() if image_root else path.parent
        description = {"kind": "file", "path": path.name, "sha256": file_sha256(path)}
        return _items_from_json(_json_rows(path), root, VQA_FIELDS, str(path)), description
    if source.startswith("medbench_"):
        return _items_from_task(source, image_root)
    raise DataError(f"prefs build input {source!r} is neither a file nor a medbench task name (e.g. medbench_vqa_rad)")


class _Unreadable(str):
    """A JSONL line that is not JSON (its parser message): skipped and counted like any bad record."""


def _json_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, record)`` of a JSONL file, a bad line as :class:`_Unreadable`; a ``.json`` list whole."""
    from medbench.data.loading import iter_json_records, read_text_file

    if path.suffix == ".json":
        yield from iter_json_records(path)  # one document: unreadable is unreadable as a whole
        return
    # Not iter_json_records for JSONL, which stops at the first bad line: here a bad line is one more skipped
    # record, reported with its reason like any other.
    for number, line in enumerate(read_text_file(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            yield number, _Unreadable(f"not valid JSON ({error.msg})")


def _items_from_json(rows, root: Path, fields, where_prefix: str) -> list[dict[str, Any]]:
    from medbench.data.loading import pick_field

    items = []
    # answer_type rides along for readers that score answers (GRPO rewards); the builder ignores it.
    aliases = {**fields, "answer": ("chosen", *fields["answer"]), "answer_type": ("answer_type",)}
    for number, raw in rows:
        where = f"{where_prefix}:{number}"
        if isinstance(raw, _Unreadable):
            items.append({"id": str(number), "where": where, "problem": str(raw)})
            continue
        if not isinstance(raw, dict):
            items.append({"id": str(number), "where": where, "problem": "not a JSON object"})
            continue
        if "conversations" in raw:  # the authors' LLaVA form of the trainer schema
            turns = raw.get("conversations") or []
            texts = [t.get("value") for t in turns if isinstance(t, dict)]
            raw = {**raw, "question": texts[0] if texts else None, "answer": texts[1] if len(texts) > 1 else None}
        item = {name: pick_field(raw, names) for name, names in aliases.items()}
        item["id"] = str(item["id"]) if item["id"] is not None else str(number)
        item["where"] = where
        for key in ("box", "bbox"):
            if raw.get(key) is not None:
                item["box"] = raw[key]
        if raw.get("boxes") is not None:  # every lesion's box (the control image avoids them all)
            item["boxes"] = raw["boxes"]
        if raw.get("mask"):
            item["mask"] = str(root / raw["mask"]) if not Path(str(raw["mask"])).is_absolute() else str(raw["mask"])
        for key in ("question", "answer"):
            value = item.get(key)
            item[key] = str(value).replace("<image>", "").strip() if value is not None else ""
        if item["image"] is not None:
            image = Path(str(item["image"])).expanduser()
            item["image"] = str(image if image.is_absolute() else root / image)
        items.append(item)
    return items


def _items_from_task(task: str, image_root: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from medbench.data.loading import VQA_FIELDS, iter_json_records, load_task_docs, resolve_source
    from medbench.data.sources import get_source

    try:
        source = get_source(task)
    except (KeyError, MedbenchError):
        raise DataError(f"unknown medbench task {task!r}; see `medbench tasks list`") from None
    if source.kind != "vqa":
        raise DataError(f"{task} is a report task; prefs build needs (image, question, answer) VQA data")
    resolved = resolve_source(task)
    if resolved.origin in ("local", "demo"):
        path = Path(resolved.location)
        root = Path(image_root) if image_root else (resolved.images_dir or path.parent)
        description = {"kind": "task", "task": task, "source": resolved.origin, "file": path.name,
                       "sha256": file_sha256(path)}
        return _items_from_json(iter_json_records(path), root, VQA_FIELDS, str(path)), description
    try:
        dataset = load_task_docs(task)
    except MedbenchError:
        raise
    except Exception as error:  # noqa: BLE001 - datasets raises ConnectionError, FileNotFoundError, ... for an unreachable hub
        first = (str(error).splitlines() or [type(error).__name__])[0]
        raise DataError(
            f"{task}: cannot load {resolved.describe()} ({first}); point {source.env_var} at a local copy"
        ) from None
    items = [
        {"id": str(doc["id"]), "where": f"{task}[{i}]", "question": doc["question"] or "", "answer": doc["answer"] or "",
         "image": doc["image"], "answer_type": doc.get("answer_type")}
        for i, doc in enumerate(dataset)
    ]
    description = {"kind": "task", "task": task, "source": resolved.describe(),
                   "fingerprint": getattr(dataset, "_fingerprint", None)}
    return items, description


def _needs(recipe_name: str) -> tuple[set[str], str]:
    """(fields to build, objective name) for a recipe (reads the recipe's objective, no torch)."""
    from ..config import load_recipe
    from ..objectives import OBJECTIVES

    recipe = load_recipe(recipe_name)
    objective = OBJECTIVES[recipe.objective]
    fields = set(objective.requires) | {name for row in objective.rows for name in row}
    if objective.per_record_rows:
        fields |= {"rejected", "rejected_image", "error_type"}
    return fields, recipe.objective


def _open_image(item: dict[str, Any]):
    from ..data import load_image

    image = item["image"]
    if image is None:
        raise DataError("no image field")
    if not isinstance(image, str):
        return image.convert("RGB")  # a decoded hub image
    if not Path(image).is_file():
        raise DataError(f"image not found: {image}")
    return load_image(image)


@dataclass
class _TextSide:
    """The answer side of one record: its edit (or why there is none), where its error type and relevance came from."""

    edit: Edit | None = None
    problem: str | None = None  # why the record has no rejected answer (it is skipped)
    check: str | None = None  # the LLM sanity check that refused the edit
    error_type_source: str = "rules"
    error_type_problem: str | None = None  # why the LLM classifier's answer was not used
    relevance: LLMVerdict | None = None


def _rule_side(item: dict[str, Any], seed: int, rules: frozenset[str] | None) -> _TextSide:
    edit = rule_edit(item["question"], item["answer"], record_rng(seed, item["id"], "rejected"), rules)
    return _TextSide(edit) if edit is not None else _TextSide(problem="no rule applies")


async def _llm_side(llm: Any, item: dict[str, Any], side: _TextSide, options: BuildOptions) -> _TextSide:
    """Complete ``side`` with the build's LLM steps: rejected answer, error type, relevance (in that order)."""
    question, chosen = item["question"], item["answer"]
    if options.mode == "llm":
        outcome = await llm.rejected(question, chosen)
        if outcome.edit is None:
            return _TextSide(problem=f"llm: {outcome.problem}", check=outcome.problem.split(":")[0])
        side = _TextSide(outcome.edit, error_type_source=outcome.error_type_source)
    if side.edit is None:
        return side
    rejected = side.edit.rejected
    if options.error_types == "llm":
        verdict = await llm.error_type(question, chosen, rejected)
        if verdict.value is not None:
            side.edit, side.error_type_source = replace(side.edit, error_type=verdict.value), "llm_classifier"
        else:
            # The rule-based tag: the offline rule's own, or the tagger's for an LLM edit.
            fallback = side.edit.error_type if side.edit.rule != "llm" else tag_error_type(question, chosen, rejected)
            side.edit, side.error_type_source = replace(side.edit, error_type=fallback), "rules"
            side.error_type_problem = verdict.problem
    if options.relevance == "llm":
        side.relevance = await llm.relevance(question, chosen, rejected)
    return side


def build(source: str, output_dir: str | Path, options: BuildOptions, llm: Any | None = None) -> BuildReport:
    """Build preference records for ``options.recipe`` from ``source`` into ``output_dir``.

    Args:
        source: Input file or medbench task name (see the module docstring).
        output_dir: Folder for ``prefs.jsonl``, ``images/`` and ``manifest.json`` (created; must not hold a
            previous build's records unless they are overwritten on purpose by the caller).
        options: The build's options.
        llm: For ``mode``, ``error_types`` or ``relevance`` set to ``llm``, a
            :class:`medbench.train.prefs.llm.PrefsLLM`.

    Returns:
        The :class:`BuildReport`.

    Raises:
        MedbenchError: unusable input source, options, or LLM configuration (one line); nothing is written then.
    """
    for flag, value, allowed in (("mode", options.mode, ("rules", "llm")),
                                 ("error_types", options.error_types, ("rules", "llm")),
                                 ("relevance", options.relevance, ("offline", "llm"))):
        if value not in allowed:
            raise MedbenchError(f"prefs build: --{flag} {value!r} is not {' or '.join(allowed)}")
    llm_steps = [flag for flag, value in (("mode", options.mode), ("error_types", options.error_types),
                                          ("relevance", options.relevance)) if value == "llm"]
    if llm_steps and llm is None:
        raise MedbenchError(f"prefs build: --{llm_steps[0]} llm needs a judge model (set MEDBENCH_JUDGE_MODEL or "
                            "--llm_model)")
    corruption = options.corruption
    if corruption is not None and corruption not in CORRUPTIONS:
        raise MedbenchError(f"prefs build: --corruption {corruption!r}; choose {', '.join(CORRUPTIONS)}")
    low, high = options.weight_range
    if not 0 <= low <= high:
        raise MedbenchError(f"prefs build: --weight_range {low},{high} must satisfy 0 <= low <= high")
    fields, objective = _needs(options.recipe)
    pre, post = _task_prompt(options.prompt_of) if options.prompt_of else ("", "")
    needs_rejected, weights = "rejected" in fields, "weight" in fields
    if options.relevance == "llm" and not (weights and needs_rejected):
        raise MedbenchError(f"prefs build: --relevance llm scores MMedPO weights; recipe {options.recipe} has no "
                            "weight field (use --recipe mmedpo or drop --relevance)")
    if options.error_types == "llm" and not needs_rejected:
        raise MedbenchError(f"prefs build: --error_types llm tags rejected answers; recipe {options.recipe} has none")
    corruption = corruption or DEFAULT_CORRUPTION.get(objective, "noise")
    if options.control and ("rejected_image" not in fields or corruption not in REGION_CORRUPTIONS
                            or options.corruption_options.get(corruption, {}).get("region") == "full"):
        raise MedbenchError(f"prefs build: --control needs a recipe with rejected_image and a region corruption "
                            f"({', '.join(REGION_CORRUPTIONS)}; got {options.recipe} with {corruption})")
    items, input_description = read_supervised(source, options.image_root)
    if options.limit is not None:
        items = items[: options.limit]
    output_dir = Path(output_dir)
    (output_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    taxonomy = load_taxonomy()
    lexicon = load_lexicon()
    rules = frozenset(options.rules) if options.rules else None

    skipped: list[dict[str, str]] = []
    usable: list[dict[str, Any]] = []
    image_hashes: list[str] = []
    # Derived files are named after the id: two records with one id would share (and overwrite) them.
    occurrences = Counter(item["id"] for item in items if not item.get("problem"))
    for item in items:
        problem = item.get("problem")
        if not problem and occurrences[item["id"]] > 1:
            problem = f"id {item['id']!r} occurs {occurrences[item['id']]} times; ids must be unique"
        if not problem and not item.get("question"):
            problem = "empty question"
        if not problem and not item.get("answer"):
            problem = "empty answer"
        if not problem:
            try:
                item["pil"] = _open_image(item)
            except DataError as error:
                problem = str(error)
        if problem:
            skipped.append({"id": item["id"], "where": item["where"], "problem": problem})
            continue
        usable.append(item)

    llm_used = needs_rejected and bool(llm_steps)
    progress = progress_bar(len(usable) * (2 if llm_used else 1), options.progress, "prefs build", "record")
    sides: dict[str, _TextSide] = {}
    if needs_rejected:
        sides = {item["id"]: _rule_side(item, options.seed, rules) if options.mode == "rules" else _TextSide()
                 for item in usable}
    llm_report = None
    if llm_used:
        def job(item: dict[str, Any]):
            async def run() -> None:
                sides[item["id"]] = await _llm_side(llm, item, sides[item["id"]], options)
                progress.update(1)

            return run

        llm.run([job(item) for item in usable])
        llm_report = llm.report()

    counts = {"rule": Counter(), "error_type": Counter(), "category": Counter(), "corruption": Counter(),
              "rejected_by_check": Counter(), "error_type_source": Counter(), "error_type_fallback": Counter(),
              "relevance_source": Counter(), "relevance_fallback": Counter()}
    records = []
    for item in usable:
        progress.update(1)
        record: dict[str, Any] = {"id": item["id"], "question": pre + item["question"] + post, "chosen": item["answer"]}
        if item.get("answer_type"):  # kept for the GRPO rewards (closed questions); the preference trainers ignore it
            record["answer_type"] = item["answer_type"]
        meta: dict[str, Any] = {"source": item["where"].rsplit("/", 1)[-1]}
        if isinstance(item["image"], str):
            # Relative to the pairs file (the loaders resolve it there), so a moved output tree keeps working.
            record["image"] = os.path.relpath(os.path.abspath(item["image"]), os.path.abspath(output_dir))
            image_hashes.append(file_sha256(Path(item["image"])))
        else:
            name = f"{IMAGES_DIR}/source-{_safe(item['id'])}.png"
            item["pil"].save(output_dir / name)
            record["image"] = name
            image_hashes.append(file_sha256(output_dir / name))
        side = sides.get(item["id"])
        if side is not None:
            if side.edit is None:
                if side.check:
                    counts["rejected_by_check"][side.check] += 1
                skipped.append({"id": item["id"], "where": item["where"], "problem": side.problem})
                continue
            edit = side.edit
            record["rejected"] = edit.rejected
            record["error_type"] = edit.error_type
            meta.update(rule=edit.rule, edit=edit.detail, error_type={"source": side.error_type_source})
            counts["error_type_source"][side.error_type_source] += 1
            if side.error_type_problem:
                meta["error_type"]["problem"] = side.error_type_problem
                counts["error_type_fallback"][side.error_type_problem.split(":")[0]] += 1
            counts["rule"][edit.rule] += 1
            counts["error_type"][edit.error_type] += 1
            counts["category"][taxonomy.category(edit.error_type)] += 1
        elif "error_type" in fields:
            record["error_type"] = "other"
        if "rejected_image" in fields:
            box = item.get("box")
            mask = None
            if item.get("mask"):
                from PIL import Image

                with Image.open(item["mask"]) as opened:
                    mask = opened.copy()
            image, params = corrupt(item["pil"], corruption, record_rng(options.seed, item["id"], "image"), box=box,
                                    mask=mask, options=options.corruption_options.get(corruption))
            name = f"{IMAGES_DIR}/{_safe(item['id'])}-{corruption}.png"
            image.save(output_dir / name)
            record["rejected_image"] = name
            meta["corruption"] = params
            counts["corruption"][corruption] += 1
            if options.control:
                region = params.get("box")
                lesions = item.get("boxes") or ([box] if box is not None else [])
                where = None if region is None else control_box(*item["pil"].size, region, lesions,
                                                                  record_rng(options.seed, item["id"], "control"))
                if where is None:  # no box-shaped region (a mask), or no free place of its size
                    skipped.append({"id": item["id"], "where": item["where"],
                                    "problem": "no lesion-free region of the corrupted region's size for the control"})
                    continue
                control, control_params = corrupt(item["pil"], corruption, record_rng(options.seed, item["id"], "image"),
                                                  box=where, options=options.corruption_options.get(corruption))
                name = f"{IMAGES_DIR}/{_safe(item['id'])}-{corruption}-control.png"
                control.save(output_dir / name)
                record["control_image"] = name
                meta["control"] = control_params
        if weights:
            meta["relevance"] = _relevance(record.get("error_type"), side.relevance if side else None, options)
            record["weight"] = round(low + meta["relevance"]["score"] * (high - low), 4)
            counts["relevance_source"][meta["relevance"]["source"]] += 1
            if "problem" in meta["relevance"]:
                counts["relevance_fallback"][meta["relevance"]["problem"].split(":")[0]] += 1
        record["meta"] = meta
        records.append(record)
    progress.close()

    records_path = output_dir / RECORDS_FILE
    text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
    records_path.write_text(text, encoding="utf-8")
    manifest = {
        "builder": {"name": "medbench prefs build", "version": BUILDER_VERSION},
        "input": {**input_description, "records": len(items),
                  "images_sha256": _sha256_bytes("".join(sorted(image_hashes)).encode())},
        "seed": options.seed,
        "options": {**asdict(options), "corruption": corruption, "weight_range": list(options.weight_range)},
        "recipe": {"name": options.recipe, "objective": objective, "fields": sorted(fields)},
        "taxonomy": taxonomy.describe(),
        "lexicon": {"version": lexicon.version, "sha256": lexicon.sha256},
        "corruption": {"kind": corruption, "defaults": DEFAULTS[corruption], "default_region": DEFAULT_REGION}
        if "rejected_image" in fields else None,
        "error_types": {"tagger": options.error_types, "fallback": "rule-based tag",
                        **(llm.describe("error_type") if options.error_types == "llm" else {})}
        if needs_rejected else None,
        "weights": {"range": list(options.weight_range), "scorer": options.relevance,
                    **(llm.describe("relevance") if options.relevance == "llm" else {}),
                    "offline": {"table": OFFLINE_RELEVANCE, "default": DEFAULT_RELEVANCE}} if weights else None,
        "counts": {"input": len(items), "built": len(records), "skipped": len(skipped),
                   **{name: dict(sorted(counter.items())) for name, counter in counts.items()}},
        "skipped": skipped,
        "llm": llm_report,
        "output": {"records": RECORDS_FILE, "sha256": _sha256_bytes(text.encode("utf-8"))},
    }
    manifest_path = output_dir / MANIFEST_FILE
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return BuildReport(output_dir, records_path, manifest_path, manifest)


def _relevance(error_type: str | None, verdict: LLMVerdict | None, options: BuildOptions) -> dict[str, Any]:
    """``meta.relevance`` of one record: the LLM's score, else the offline table's (a fallback says why)."""
    if verdict is not None and verdict.value is not None:
        relevance = {"score": verdict.value, "source": "llm"}
        if verdict.reason:
            relevance["reason"] = verdict.reason
        return relevance
    relevance = {"score": OFFLINE_RELEVANCE.get(error_type or "", DEFAULT_RELEVANCE), "source": "offline"}
    if verdict is not None:
        relevance.update(source="offline_fallback", problem=verdict.problem)
    return relevance


def _safe(name: str) -> str:
    """A file-name form of a record id, distinct for distinct ids (``a/b`` and ``a_b`` must not share images)."""
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in name)
    if safe == name and not safe.startswith("."):
        return safe
    return f"{safe}-{hashlib.sha256(name.encode('utf-8')).hexdigest()[:10]}"

