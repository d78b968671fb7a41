"""Versioned judge prompts.

Each prompt is a YAML file in ``medbench/judge/prompts/`` named ``<name>-v<version>.yaml`` with the keys
``name``, ``version``, ``description``, ``output``, ``changelog``, ``system`` and ``user``. A prompt is
never edited in place once released: a change is a new file with the next version, so a result that
records ``nli-v1`` and its SHA-256 can always be traced to the exact words the judge saw.

Templates use ``{placeholder}`` fields; ``{{`` and ``}}`` stand for literal braces.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from medbench.errors import MedbenchError

_FIELD = re.compile(r"\{\{|\}\}|\{([a-z_]+)\}")
_FILE_NAME = re.compile(r"^(?P<name>[a-z_]+)-v(?P<version>\d+)\.yaml$")


@dataclass(frozen=True)
class PromptSpec:
    """One versioned judge prompt.

    Attributes:
        name: The prompt's role (``facts``, ``nli``, ``claims``, ``severity``).
        version: Integer version; a wording change means a new version.
        system: System message.
        user: User message template.
        description: One line saying what the prompt does.
        source: Where the prompt was read from (package file name or path).
    """

    name: str
    version: int
    system: str
    user: str
    description: str = ""
    source: str = ""

    @property
    def ident(self) -> str:
        """``<name>-v<version>``, the identifier recorded in results."""
        return f"{self.name}-v{self.version}"

    @property
    def sha256(self) -> str:
        """Hash of the exact system and user text, so an edited file cannot pass for the released one."""
        payload = json.dumps({"system": self.system, "user": self.user}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    @property
    def fields(self) -> frozenset[str]:
        """Placeholder names the user template expects."""
        return frozenset(m.group(1) for m in _FIELD.finditer(self.user) if m.group(1))

    def render(self, **values: object) -> list[dict[str, str]]:
        """Chat messages with the placeholders filled in.

        Raises:
            KeyError: A placeholder has no value.
        """

        def fill(match: re.Match) -> str:
            token = match.group(0)
            if token == "{{":
                return "{"
            if token == "}}":
                return "}"
            return str(values[match.group(1)])

        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": _FIELD.sub(fill, self.user)},
        ]

    def describe(self) -> dict[str, object]:
        """The identity recorded with every judged result."""
        return {"id": self.ident, "sha256": self.sha256}


def available_prompts() -> dict[str, list[int]]:
    """Prompt names shipped with medbench and their versions, oldest first."""
    found: dict[str, list[int]] = {}
    for entry in resources.files("medbench.judge").joinpath("prompts").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.setdefault(match["name"], []).append(int(match["version"]))
    return {name: sorted(versions) for name, versions in sorted(found.items())}


def load_prompt(spec: str) -> PromptSpec:
    """Load a prompt by name (latest version), by ``name-vN``, or from a YAML file path.

    Args:
        spec: ``"nli"``, ``"nli-v1"`` or a path to a prompt file of the same format.

    Raises:
        MedbenchError: Unknown prompt name/version, or a malformed prompt file.
    """
    return _load_prompt(spec)


@cache
def _load_prompt(spec: str) -> PromptSpec:
    if spec.endswith((".yaml", ".yml")) or "/" in spec:
        path = Path(spec)
        if not path.is_file():
            raise MedbenchError(f"judge prompt file {spec} does not exist: pass an existing YAML prompt file")
        return _parse(path.read_text(encoding="utf-8"), str(path))
    shipped = available_prompts()
    name, _, version = spec.partition("-v")
    if name not in shipped:
        raise MedbenchError(f"unknown judge prompt {spec!r}: choose one of {', '.join(shipped)} or a file path")
    chosen = int(version) if version.isdigit() else shipped[name][-1]
    if chosen not in shipped[name]:
        raise MedbenchError(f"judge prompt {name!r} has no version {version}: available {shipped[name]}")
    file_name = f"{name}-v{chosen}.yaml"
    text = resources.files("medbench.judge").joinpath("prompts").joinpath(file_name).read_text(encoding="utf-8")
    return _parse(text, file_name)


def _parse(text: str, source: str) -> PromptSpec:
    import yaml

    data = yaml.safe_load(text)
    missing = [key for key in ("name", "version", "system", "user") if not isinstance(data, dict) or key not in data]
    if missing:
        raise MedbenchError(f"judge prompt {source} lacks field(s) {', '.join(missing)}: add them (see medbench/judge/prompts)")
    return PromptSpec(
        name=str(data["name"]),
        version=int(data["version"]),
        system=str(data["system"]).strip(),
        user=str(data["user"]),
        description=str(data.get("description", "")),
        source=source,
    )
