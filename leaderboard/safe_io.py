"""Reading untrusted submission files: inside the folder, under a size cap, as bounded JSON, schema-checked.

Every way a file can crash a parser becomes a :class:`~medbench.leaderboard.rules.Rejected` instead: JSON
nested deeper than any lmms-eval output (``json`` recurses and Python's stack is finite), integers too long
for ``int()`` (over 4300 digits) or for ``float()``, text that is not UTF-8 or holds lone surrogates (they
cannot be written to the HTML page or ``rejected.json``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from medbench.errors import MedbenchError

from .rules import Limits, Rejected

_SURROGATE = re.compile("[\ud800-\udfff]")


class _BadNumber(ValueError):
    pass


def inside(root: Path, path: Path, what: str) -> Path:
    """``path`` resolved (links followed), refused when it leaves ``root``."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        # Where it points is not shown: that would put the board operator's folders on the page.
        raise Rejected("path", path, f"{what} resolves outside the submission folder; keep every file inside it")
    return resolved


def read_bytes(root: Path, path: Path, cap: int, what: str) -> bytes:
    """The file's bytes, when it lies inside ``root`` and is at most ``cap`` bytes."""
    resolved = inside(root, path, what)
    if not resolved.is_file():
        raise Rejected("unreadable", path, f"{what} is missing or not a file")
    size = resolved.stat().st_size
    if size > cap:
        raise Rejected("oversized", path, f"{what} is {size} bytes, over the {cap}-byte limit")
    with resolved.open("rb") as handle:
        data = handle.read(cap + 1)  # bounded: a file that grew after the stat is not read past the cap
    if len(data) > cap:
        raise Rejected("oversized", path, f"{what} is over the {cap}-byte limit")
    return data


def _integer(limits: Limits):
    def parse(text: str) -> int:
        if len(text.lstrip("-")) > limits.integer_digits:
            raise _BadNumber(f"an integer of {len(text)} digits")
        return int(text)

    return parse


def loads(data: bytes | str, limits: Limits) -> Any:
    """Parse JSON within the limits (depth, integer length, valid text).

    Raises:
        ValueError: With a short reason (the caller names the file).
    """
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    depth = _max_depth(text)
    if depth > limits.json_depth:
        raise ValueError(f"nested {depth} levels deep, over the limit of {limits.json_depth}")
    try:
        document = json.loads(text, parse_int=_integer(limits))
    except _BadNumber as error:
        raise ValueError(f"holds {error}; numbers must fit {limits.integer_digits} digits") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if _SURROGATE.search(text) or ("\\u" in text and _has_surrogate(document)):
        raise ValueError("holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text; write valid Unicode")
    return document


def _max_depth(text: str) -> int:
    """Nesting depth of brackets outside strings (a linear scan, no recursion)."""
    if "[" not in text and "{" not in text:
        return 0
    depth = deepest = 0
    # Strings are skipped with a regex so brackets inside them do not count.
    for match in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest


def _has_surrogate(document: Any) -> bool:
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return True
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def read_json(root: Path, path: Path, cap: int, what: str, limits: Limits) -> tuple[Any, bytes]:
    """A JSON file inside ``root``, parsed within the limits, and its bytes."""
    data = read_bytes(root, path, cap, what)
    return parse(path, data, what, limits), data


def parse(path: Path, data: bytes, what: str, limits: Limits) -> Any:
    """``data`` parsed within the limits, or a ``Rejected("unreadable")`` naming ``path``."""
    try:
        return loads(data, limits)
    except UnicodeDecodeError as error:
        raise Rejected("unreadable", path, f"{what} is not UTF-8 text (byte {error.start}); write it as UTF-8") from None
    except ValueError as error:
        raise Rejected("unreadable", path, f"{what} is not valid JSON ({_short(error)})") from None


def parse_lines(path: Path, data: bytes, limits: Limits, what: str) -> Iterator[tuple[int, Any]]:
    """``(line number, record)`` of a JSONL file within the line and JSON limits.

    Not :func:`medbench.data.loading.iter_json_records`: a submission is untrusted, so this works on bytes
    already read under a size cap, refuses oversized lines and numbers, and rejects with a :class:`Rejected`.
    """
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        if len(line) > limits.sample_line_bytes:
            raise Rejected(
                "oversized",
                path,
                f"line {number} of {what} is {len(line)} bytes, over the {limits.sample_line_bytes}-byte limit",
            )
        try:
            record = loads(line, limits)
        except UnicodeDecodeError:
            raise Rejected("unreadable", path, f"line {number} of {what} is not UTF-8 text") from None
        except ValueError as error:
            raise Rejected("unreadable", path, f"line {number} of {what} is not JSON ({_short(error)})") from None
        yield number, record


def _short(error: Exception) -> str:
    text = str(error)
    return text if len(text) <= 160 else text[:160] + "..."


def relative(root: Path, path: Path) -> str:
    """``path`` relative to ``root`` for messages (as given when it lies elsewhere)."""
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------------- schemas


@cache
def load_schema(name: str) -> dict[str, Any]:
    """A JSON Schema shipped in ``leaderboard/schema``."""
    return json.loads(resources.files("medbench.leaderboard").joinpath("schema", name).read_text(encoding="utf-8"))


@cache
def _validator(name: str) -> Any:
    try:
        from jsonschema import Draft202012Validator
        from referencing import Registry, Resource
    except ImportError as error:
        raise MedbenchError(
            f"the leaderboard needs {error.name}: pip install -c medbench/lock.txt 'medbench[leaderboard]'"
        ) from None

    folder = resources.files("medbench.leaderboard").joinpath("schema")
    # Schemas refer to each other by $id (the sidecar's samples are judge verdicts).
    registry = Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema))
        for schema in (load_schema(entry.name) for entry in folder.iterdir() if entry.name.endswith(".schema.json"))
    )
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, registry=registry)


def schema_problem(document: Any, schema: str) -> str | None:
    """The first schema violation of ``document`` as ``field: problem``, or ``None`` when valid."""
    validator = _validator(schema)
    if validator.is_valid(document):
        return None
    error = min(validator.iter_errors(document), key=lambda e: (len(e.absolute_path), str(e.message)))
    location = "/".join(str(part) for part in error.absolute_path) or "(top level)"
    message = error.message if len(error.message) <= 200 else error.message[:200] + "..."
    return f"{location}: {message}"
