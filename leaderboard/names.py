"""Display names people can tell apart: normalised, free of invisible characters, not confusable with another.

A board row is found by its name, and the first accepted run owns it. Two names that render alike in a
browser would let a newcomer pose as an accepted run, so a name is

* NFKC-normalised (full-width, ligature and other compatibility forms become their plain letters) and
  stripped of surrounding white space;
* refused when it holds an invisible format character (``unicodedata.category == "Cf"``: zero-width
  space and joiners, bidi overrides and isolates, soft hyphen ...), another control or bidi-control
  character, or a line break;
* compared with the accepted names through a confusables *skeleton* (Unicode TR39): every character is
  replaced by a representative of the characters it can be mistaken for (Cyrillic ``а`` and Latin ``a``,
  ``l``, ``I`` and ``1``), so ``skeleton(a) == skeleton(b)`` means the names may look the same.

The confusables come from the data file the ``confusable-homoglyphs`` package ships (generated from
Unicode's ``confusables.txt``). It lists, for each character, the strings it can be confused with, in both
directions; the skeleton maps each character to one member of its class (the classes are the connected
components of that relation, so look-alike chains are merged: stricter than TR39, never looser).
"""

from __future__ import annotations

import json
import unicodedata
from functools import cache
from importlib import resources

from medbench.errors import MedbenchError

# Bidi classes of the explicit embedding, override and isolate controls (all of them are also Cf, but a
# future Unicode version must not slip one past the category check) and of the implicit marks.
_BIDI_CONTROLS = frozenset({"LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI"})
_MARKS = frozenset("\u200e\u200f\u061c")


class NameRefused(ValueError):
    """A display name that cannot go on the board; the message says why and how to fix it."""


def normalise(name: str) -> str:
    """The name as the board shows and compares it: NFKC, stripped.

    Raises:
        NameRefused: The name is empty or holds an invisible, control or bidi-control character.
    """
    text = unicodedata.normalize("NFKC", name).strip()
    if not text:
        raise NameRefused("the display name is empty; choose a name of visible characters")
    for char in text:
        category = unicodedata.category(char)
        if category == "Cf" or category == "Cc" or category in ("Zl", "Zp") or char in _MARKS:
            raise NameRefused(
                f"the display name holds the invisible or control character U+{ord(char):04X} "
                f"({unicodedata.name(char, 'unnamed')}); remove it"
            )
        if unicodedata.bidirectional(char) in _BIDI_CONTROLS:
            raise NameRefused(f"the display name holds the bidi control U+{ord(char):04X}; remove it")
    return text


@cache
def _classes() -> dict[str, str]:
    """Character -> the representative of its confusable class (or a multi-character prototype)."""
    try:
        data = json.loads(
            resources.files("confusable_homoglyphs").joinpath("confusables.json").read_text(encoding="utf-8")
        )
    except ModuleNotFoundError:
        raise MedbenchError(
            "the leaderboard needs confusable-homoglyphs: pip install -c medbench/lock.txt 'medbench[leaderboard]'"
        ) from None
    parent: dict[str, str] = {}

    def find(char: str) -> str:
        root = char
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(char, char) != root:  # path compression keeps the lookups flat
            parent[char], char = root, parent[char]
        return root

    expansions: dict[str, str] = {}
    for source, glyphs in data.items():
        for glyph in glyphs:
            target = "".join(c for c in glyph["c"] if c not in _MARKS)
            if len(source) != 1 or not target:
                continue
            if len(target) == 1:
                a, b = find(source), find(target)
                if a != b:
                    # The smaller code point represents the class: ASCII letters stand for their look-alikes.
                    parent[max(a, b)], parent[min(a, b)] = min(a, b), min(a, b)
            else:
                expansions.setdefault(source, target)  # "m" looks like "rn": one character, several
    table = {char: find(char) for char in list(parent)}
    for source, target in expansions.items():
        if source not in table:
            table[source] = "".join(table.get(c, c) for c in target)
    return table


def skeleton(name: str) -> str:
    """A string equal for two names that may look alike (see the module docstring)."""
    table = _classes()
    text = unicodedata.normalize("NFD", name)
    mapped = "".join(table.get(char, char) for char in text)
    return unicodedata.normalize("NFD", mapped)
