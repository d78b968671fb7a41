"""The leaderboard's trust-rule vocabulary: why a submission is turned away, and the size caps it must fit."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from medbench.errors import MedbenchError

# Why a run was turned away; tests and the board's rejection list use these names.
RULES = (
    "unreadable",  # not JSON, not a folder, nesting or numbers beyond what a results file holds
    "schema",  # fails the submission / results / sample / judge schema, or a value out of its range
    "oversized",  # a file, a line or a sample count over the limits
    "path",  # a path (or link) that leaves the submission folder
    "limit",  # evaluated with --limit (or on fewer samples than the task has)
    "unknown_task",  # a task the board does not know (also one dressed up as a group)
    "version",  # a task version other than the board's
    "missing_samples",  # no --log_samples file, or fewer logged samples than evaluated
    "missing_metric",  # a metric of the task left out of the results (selective reporting)
    "failed_generations",  # model calls that failed: their error text is not an answer
    "tampered",  # scores the per-sample logs do not reproduce
    "duplicate",  # a name, or answers, an accepted run already has
    "name",  # a display name with invisible or bidi-control characters
    "data_mismatch",  # evaluated on other items or references than the task's reference data
)


class Rejected(MedbenchError):
    """A submission the board refuses; the message is one line naming the file and what to fix.

    Attributes:
        rule: Which trust rule failed (one of :data:`RULES`).
        where: The file or folder at fault.
    """

    def __init__(self, rule: str, where: Path | str, reason: str) -> None:
        where, reason = printable(str(where)), printable(reason)
        super().__init__(f"{where}: {reason}")
        self.rule = rule
        self.where = where
        self.reason = reason

    def relabel(self, root: Path | str, label: str) -> Rejected:
        """The same rejection with the folder ``root`` written as ``label`` (no operator paths on the page)."""
        prefix = printable(str(root))
        where = self.where.replace(prefix, label)
        return Rejected(self.rule, where, self.reason.replace(prefix, label))


@dataclass(frozen=True)
class Limits:
    """Size caps for untrusted input (bytes unless said otherwise).

    The defaults fit the real test sets (PathVQA's 6.7k questions, full MIMIC-CXR report logs) with room.
    """

    manifest_bytes: int = 64 * 1024
    training_metadata_bytes: int = 4 * 1024 * 1024
    results_bytes: int = 32 * 1024 * 1024
    samples_bytes: int = 512 * 1024 * 1024
    sample_line_bytes: int = 4 * 1024 * 1024
    bytes_per_sample: int = 64 * 1024  # a logged sample's share of its log: a long report and its scores fit many times
    samples_per_task: int = 200_000
    results_files: int = 32
    json_depth: int = 32  # lmms-eval's results nest about 6 deep, a sample record about 5
    integer_digits: int = 20  # anything longer is no count, id or seed


# C0/C1 control characters (terminal escapes), DEL, bidirectional overrides and lone surrogates: shown as
# escapes so a name cannot repaint a terminal, reorder a line or break an encoder.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` with control characters, bidi overrides and lone surrogates written as ``\\xNN``/``\\uNNNN``."""
    text = text.replace("\n", "\\n").replace("\t", " ")
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode("ascii"), text)
