"""The study's error taxonomy: one versioned data file, read here, used by preference data, training and rubrics.

The taxonomy lives in ``medbench/data/error_taxonomy.yaml``. Its top level follows MedHEval's hallucination types
(visual misinterpretation, knowledge deficiency, context misalignment) plus omission and other; visual
misinterpretation splits into modality, plane, organ, laterality/position, presence/abnormality, size, count and
colour. An ``error_type`` value is a category key or a subtype key. Validation is strict: only exact keys
(case-insensitive) pass, and a near miss such as ``"visual misinterpretation"`` fails with one line suggesting the
right key, so no record silently falls to the wrong side of an error-targeted objective.

Import-light: PyYAML only (no torch).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from medbench.errors import DataError

VISUAL = "visual_misinterpretation"
KNOWLEDGE = "knowledge_deficiency"
CONTEXT = "context_misalignment"
OMISSION = "omission"
OTHER = "other"


@dataclass(frozen=True)
class Taxonomy:
    """The loaded taxonomy.

    Attributes:
        version: The taxonomy's version string (``major.minor``), recorded with every built data set.
        categories: Category key -> one-line description.
        subtypes: Subtype key -> ``(category key, description)``.
    """

    version: str
    categories: dict[str, str]
    subtypes: dict[str, tuple[str, str]]

    @property
    def keys(self) -> tuple[str, ...]:
        """Every valid ``error_type`` value: categories, then subtypes, in file order."""
        return (*self.categories, *self.subtypes)

    def category(self, key: str) -> str:
        """The category of a valid key (a category is its own category)."""
        key = key.strip().lower()
        if key in self.categories:
            return key
        return self.subtypes[key][0]

    def is_visual(self, key: str | None, visual_keys: Iterable[str] = (VISUAL,)) -> bool:
        """Whether ``key`` (or its category) is one of ``visual_keys``; None and unknown keys are not visual."""
        if not key:
            return False
        key = key.strip().lower()
        if key not in self.categories and key not in self.subtypes:
            return False
        wanted = {k.strip().lower() for k in visual_keys}
        return key in wanted or self.category(key) in wanted

    def suggest(self, value: str) -> str | None:
        """The key a misspelt value most likely meant, or None."""
        folded = re.sub(r"[\s\-/]+", "_", value.strip().lower())
        if folded in self.categories or folded in self.subtypes:
            return folded
        close = difflib.get_close_matches(folded, self.keys, n=1, cutoff=0.6)
        return close[0] if close else None

    def check(self, value: object, where: str = "error_type") -> str:
        """Return the canonical (lower-case) key for ``value``.

        Raises:
            DataError: ``value`` is not a taxonomy key; the one line names ``where`` and suggests the key.
        """
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: `error_type` must be a non-empty string (one of: {', '.join(self.categories)})")
        key = value.strip().lower()
        if key in self.categories or key in self.subtypes:
            return key
        hint = self.suggest(value)
        fix = f"did you mean '{hint}'?" if hint else f"use a category ({', '.join(self.categories)}) or a subtype key"
        raise DataError(f"{where}: error_type {value!r} is not in the error taxonomy v{self.version}; {fix}")

    def describe(self) -> dict[str, object]:
        """Identity recorded in manifests and metadata."""
        return {"name": "medbench-error-taxonomy", "version": self.version}


@lru_cache(maxsize=1)
def load_taxonomy() -> Taxonomy:
    """Read ``medbench/data/error_taxonomy.yaml`` (cached)."""
    import yaml

    text = resources.files("medbench").joinpath("data", "error_taxonomy.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    categories: dict[str, str] = {}
    subtypes: dict[str, tuple[str, str]] = {}
    for name, body in data["categories"].items():
        categories[name] = str(body["description"])
        for sub, description in (body.get("subtypes") or {}).items():
            if sub in subtypes or sub in data["categories"]:
                raise ValueError(f"medbench/data/error_taxonomy.yaml: key {sub!r} is defined twice")
            subtypes[sub] = (name, str(description))
    return Taxonomy(version=str(data["version"]), categories=categories, subtypes=subtypes)


def markdown_table() -> str:
    """The taxonomy as a Markdown table (for READMEs and the rubric)."""
    taxonomy = load_taxonomy()
    lines = [f"Error taxonomy v{taxonomy.version}", "", "| category | subtype | meaning |", "|---|---|---|"]
    for name, description in taxonomy.categories.items():
        lines.append(f"| `{name}` | | {description} |")
        for sub, (category, text) in taxonomy.subtypes.items():
            if category == name:
                lines.append(f"| `{name}` | `{sub}` | {text} |")
    return "\n".join(lines)


__all__ = ["CONTEXT", "KNOWLEDGE", "OMISSION", "OTHER", "VISUAL", "Taxonomy", "load_taxonomy", "markdown_table"]
