"""The versioned expert rubric (``rubric-v1.yaml``) and the validation of one annotated output against it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

RUBRIC_FILE = "rubric-v1.yaml"
CORRECTNESS = "correctness"
SEVERITY = "severity"
ERROR_TYPES = "error_types"
COMMENT = "comment"
TIE = "tie"


@dataclass(frozen=True)
class TaxonomyEntry:
    """One selectable error type: its key, the category it belongs to (itself for a category) and its meaning."""

    key: str
    category: str
    description: str


def error_taxonomy() -> tuple[str, tuple[TaxonomyEntry, ...]]:
    """``(taxonomy version, entries)`` of the shared error taxonomy, categories before their subtypes.

    The one place the expert rubric reads the taxonomy (``medbench.taxonomy``, owned by the preference-data
    work); the rubric itself names no error type.
    """
    from medbench.taxonomy import load_taxonomy

    taxonomy = load_taxonomy()
    entries = []
    for category, description in taxonomy.categories.items():
        entries.append(TaxonomyEntry(category, category, description))
        entries += [
            TaxonomyEntry(sub, category, text) for sub, (owner, text) in taxonomy.subtypes.items() if owner == category
        ]
    return taxonomy.version, tuple(entries)


@dataclass(frozen=True)
class Rubric:
    """The parsed rubric.

    Attributes:
        name: The rubric's name.
        version: Its version (recorded in every export and checked at import).
        raw: The YAML content, as shown in the form.
        taxonomy_version: Version of the error taxonomy the error types come from.
        error_types: The selectable error types.
    """

    name: str
    version: int
    raw: dict[str, Any]
    taxonomy_version: str
    error_types: tuple[TaxonomyEntry, ...]

    def levels(self, field: str) -> list[Any]:
        """The level values of an ordinal field, in order (worst correctness first, least severe first)."""
        return [level["value"] for level in self.raw["fields"][field]["levels"]]

    @property
    def error_type_keys(self) -> list[str]:
        return [entry.key for entry in self.error_types]

    def describe(self) -> dict[str, Any]:
        """Identity recorded in exports, keys and summaries."""
        return {"name": self.name, "version": self.version, "taxonomy_version": self.taxonomy_version}

    def for_form(self) -> dict[str, Any]:
        """What the HTML form needs: fields with levels, the error types, the pairwise question."""
        return {
            **self.describe(),
            "instructions": self.raw.get("instructions", ""),
            "fields": self.raw["fields"],
            "pairwise": self.raw.get("pairwise"),
            "error_types": [entry.__dict__ for entry in self.error_types],
        }

    def check_output(self, values: dict[str, Any], where: str) -> tuple[dict[str, Any] | None, list[str]]:
        """Validate one output's annotation.

        Args:
            values: ``correctness``, ``severity``, ``error_types`` (list of keys), ``comment`` as read from a file
                (strings from spreadsheets are converted).
            where: Prefix naming file, item and output for the problem lines.

        Returns:
            ``(clean values or None when the output was left entirely blank, problems)``.
        """
        correctness = values.get(CORRECTNESS)
        severity = values.get(SEVERITY)
        types = values.get(ERROR_TYPES) or []
        comment = values.get(COMMENT) or ""
        if isinstance(types, str):
            types = [part.strip() for part in types.replace(",", ";").split(";") if part.strip()]
        if _blank(correctness) and _blank(severity) and not types and not str(comment).strip():
            return None, []
        problems = []
        clean: dict[str, Any] = {"error_types": [], "comment": str(comment).strip()}
        correctness_levels = self.levels(CORRECTNESS)
        if _blank(correctness):
            problems.append(f"{where}: missing field 'correctness' (one of {correctness_levels})")
        else:
            try:
                number = int(float(correctness))
            except (TypeError, ValueError):
                number = None
            if number not in correctness_levels or float(correctness) != number:
                problems.append(f"{where}: correctness {correctness!r} is not one of {correctness_levels}")
            else:
                clean[CORRECTNESS] = number
        severity_levels = self.levels(SEVERITY)
        if _blank(severity):
            problems.append(f"{where}: missing field 'severity' (one of {', '.join(severity_levels)})")
        elif str(severity).strip().lower() not in severity_levels:
            problems.append(f"{where}: severity {severity!r} is not one of {', '.join(severity_levels)}")
        else:
            clean[SEVERITY] = str(severity).strip().lower()
        keys = self.error_type_keys
        if not isinstance(types, list):
            problems.append(f"{where}: error_types must be a list of taxonomy keys")
            types = []
        for key in types:
            folded = str(key).strip().lower()
            if folded not in keys:
                problems.append(f"{where}: error type {key!r} is not in the error taxonomy v{self.taxonomy_version}")
            elif folded not in clean["error_types"]:
                clean["error_types"].append(folded)
        return clean, problems


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


@lru_cache(maxsize=1)
def load_rubric() -> Rubric:
    """Read the packaged rubric (cached)."""
    import yaml

    raw = yaml.safe_load(resources.files("medbench.experts").joinpath(RUBRIC_FILE).read_text(encoding="utf-8"))
    taxonomy_version, entries = error_taxonomy()
    return Rubric(
        name=str(raw["name"]), version=int(raw["version"]), raw=raw, taxonomy_version=taxonomy_version, error_types=entries
    )
