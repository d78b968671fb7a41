"""Where a run came from and how it was made: display metadata, prompt, decoding, and how they depart from the task.

A run may use another prompt, system instruction or decoding than the task defines (a model-specific
prompt is legitimate research); the board does not hide that it did. :func:`departures` lists every
difference from the installed task YAML, and the board marks such runs *non-standard* on every page.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from . import names
from .discovery import MANIFEST_NAME
from .rules import Limits, Rejected
from .safe_io import read_json

TRAINING_METADATA_NAME = "medbench_train.json"  # what medbench-train writes (trainers/outputs.py)

_MODEL_ARG = re.compile(r"(?:^|,)\s*(?P<key>pretrained|revision|model_version)\s*=\s*(?P<value>[^,]+)")


def model_args(value: Any) -> dict[str, str]:
    """``pretrained`` / ``revision`` / ``model_version`` from lmms-eval's ``model_args`` (string or dict)."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    return {m["key"]: m["value"].strip() for m in _MODEL_ARG.finditer(str(value or ""))}


def prompt(raw: dict[str, Any], task: str) -> dict[str, Any]:
    """The prompt pieces a run used for ``task``."""
    kwargs = dict(raw["configs"].get(task, {}).get("lmms_eval_specific_kwargs") or {})
    kwargs.pop("default", None)  # lmms-eval copies the chosen profile to the top level
    return {
        "task_kwargs": kwargs,
        "system_instruction": raw.get("system_instruction"),
        "chat_template_sha": raw.get("chat_template_sha"),
    }


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def decoding(path: Path, raw: dict[str, Any], task: str) -> dict[str, Any]:
    """The generation settings a run used for ``task`` (``sampled``: temperature > 0 or sampling on).

    Raises:
        Rejected: A temperature that is not a number.
    """
    settings = dict(raw["configs"].get(task, {}).get("generation_kwargs") or {})
    override = raw["config"].get("gen_kwargs")
    if override:
        settings["override"] = override  # lmms-eval's --gen_kwargs replaces the YAML's settings
    temperature = settings.get("temperature", 0)
    if temperature is not None and _number(temperature) is None:
        raise Rejected(
            "schema",
            path,
            f"configs/{task}/generation_kwargs/temperature is {json.dumps(temperature)[:40]}, not a finite number",
        )
    text = json.dumps(settings).lower()
    settings["sampled"] = (
        bool(settings.get("do_sample")) or (_number(temperature) or 0.0) > 0 or "do_sample=true" in text
    )
    return settings


def _same(ours: Any, theirs: Any) -> bool:
    a, b = _number(ours), _number(theirs)
    if a is not None and b is not None and not isinstance(ours, str) and not isinstance(theirs, str):
        return a == b
    return ours == theirs


def _command_line(raw: dict[str, Any], key: str) -> str:
    """What lmms-eval's resolved command line recorded for ``key`` (``config.resolved_cli_args``), as text."""
    resolved = raw["config"].get("resolved_cli_args")
    value = resolved.get(key) if isinstance(resolved, dict) else None
    return "" if value in (None, "", {}, []) else str(value)


def departures(
    raw: dict[str, Any], task: str, config: dict[str, Any], inputs: list[Any], expected_prompts: list[str] | None
) -> tuple[list[str], list[str]]:
    """How a run of ``task`` departs from the installed task YAML ``config``, and what evidence is missing.

    A run is *standard* only on evidence: its logged prompts equal the task's prompts rebuilt from the
    reference data, and its decoding and system instruction are recorded and equal to the task's. A
    departure makes it *non-standard*; missing or contradictory evidence makes its protocol *unknown*.

    Args:
        raw: The lmms-eval results file.
        task: Task name.
        config: The installed task YAML (merged).
        inputs: The logged prompts (``input`` of every sample; ``None`` where not logged).
        expected_prompts: The task's prompt for each sample, rebuilt from the reference data with the task's
            own prompt function (``None``: the board holds no copy of the questions).

    Returns:
        ``(departures, missing evidence)``; both empty: standard.
    """
    found: list[str] = []
    unknown: list[str] = []
    run = raw["configs"].get(task, {})
    standard_kwargs = dict((config.get("lmms_eval_specific_kwargs") or {}).get("default") or {})
    used = prompt(raw, task)["task_kwargs"]
    for key in sorted(set(standard_kwargs) | set(used)):
        if key in standard_kwargs and not _same(standard_kwargs[key], used.get(key, standard_kwargs[key])):
            found.append(f"prompt {key} changed")
        elif key not in standard_kwargs:
            found.append(f"prompt {key} added")
    if "system_instruction" not in raw:
        unknown.append("no system instruction recorded")
    elif raw.get("system_instruction") not in (None, ""):
        found.append("system instruction set")
    elif raw.get("system_instruction_sha") not in (None, "") or _command_line(raw, "system_instruction"):
        unknown.append("no system instruction recorded, but its hash or the command line names one")
    standard_decoding = config.get("generation_kwargs") or {}
    used_decoding = run.get("generation_kwargs")
    if not isinstance(used_decoding, dict) or (standard_decoding and not used_decoding):
        unknown.append("no decoding settings (generation_kwargs) recorded")
        used_decoding = {}
    for key in sorted(set(standard_decoding) | set(used_decoding)):
        if key not in used_decoding:
            unknown.append(f"decoding {key} not recorded")
        elif not _same(standard_decoding.get(key), used_decoding.get(key)):
            found.append(f"decoding {key}={json.dumps(used_decoding.get(key))[:30]}")
    if raw["config"].get("gen_kwargs"):
        found.append(f"decoding overridden (--gen_kwargs {json.dumps(raw['config']['gen_kwargs'])[:40]})")
    elif _command_line(raw, "gen_kwargs"):
        unknown.append(f"the command line says --gen_kwargs {_command_line(raw, 'gen_kwargs')[:40]!r}, the configuration records none")
    elif "gen_kwargs" not in raw["config"]:
        unknown.append("no --gen_kwargs record (config.gen_kwargs)")
    # The logged prompts say what the model was really asked, whatever the config block claims.
    missing = sum(1 for text in inputs if not isinstance(text, str))
    if missing:
        unknown.append(f"{missing} samples log no prompt")
    if expected_prompts is None:
        unknown.append("the board has no copy of the questions to rebuild the prompts from")
    else:
        odd = sum(1 for text, expected in zip(inputs, expected_prompts, strict=False) if isinstance(text, str) and text != expected)
        if odd:
            found.append(f"{odd} logged prompts differ from the task's")
    return found, unknown


def training_summary(document: dict[str, Any]) -> dict[str, Any]:
    """The parts of ``medbench_train.json`` a reader of the board needs (recipe, settings, data, versions)."""

    def block(name: str) -> dict[str, Any]:
        value = document.get(name)
        return value if isinstance(value, dict) else {}

    return {
        "recipe": _text(document.get("recipe")),
        "objective": _text(document.get("objective")),
        "paper": _text(document.get("paper")),
        "backbone": _text(block("config").get("backbone")),
        "base_checkpoint": _text(block("model").get("source")),
        "hyperparameters": document.get("hyperparameters") if isinstance(document.get("hyperparameters"), dict) else None,
        "data_sha256": _text(block("data").get("sha256")),
        "data_records": block("data").get("records") if isinstance(block("data").get("records"), int) else None,
        "versions": document.get("versions") if isinstance(document.get("versions"), dict) else None,
        "created_utc": _text(document.get("created_utc")),
    }


def _text(value: Any) -> str | None:
    return value[:300] if isinstance(value, str) else None


def meta(root: Path, manifest: dict[str, Any] | None, model: dict[str, Any], limits: Limits):
    """The run's :class:`~medbench.leaderboard.runs.RunMeta` (manifest, else training metadata, else lmms-eval)."""
    from .runs import RunMeta

    manifest = manifest or {}
    training = None
    if "training_metadata" in manifest:
        path = root / manifest["training_metadata"]
        document, _ = read_json(root, path, limits.training_metadata_bytes, "the training metadata", limits)
        if not isinstance(document, dict):
            raise Rejected(
                "schema",
                path,
                f"the training metadata must be the JSON object {TRAINING_METADATA_NAME} written by medbench-train",
            )
        training = training_summary(document)
    args = model_args(model["model_args"])
    fallback_name = args.get("pretrained") or model["model_name"] or model["model"] or root.name
    where = root / MANIFEST_NAME if manifest.get("display_name") else root
    try:
        display_name = names.normalise(manifest.get("display_name") or Path(fallback_name).name or fallback_name)
        base_model = names.normalise(manifest["base_model"]) if manifest.get("base_model") else None
    except names.NameRefused as error:
        raise Rejected("name", where, f"{error} (display_name and base_model in {MANIFEST_NAME})") from None
    return RunMeta(
        display_name=display_name,
        backbone=manifest.get("backbone") or (training or {}).get("backbone"),
        variant=manifest.get("variant") or (training or {}).get("recipe") or "base",
        base_model=base_model,
        model_revision=manifest.get("model_revision") or args.get("revision") or args.get("model_version"),
        homepage=manifest.get("homepage"),
        contact=manifest.get("contact"),
        notes=manifest.get("notes"),
        training=training,
    )
