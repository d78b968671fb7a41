"""Which folders the command line's RUN arguments stand for (one submission each)."""

from __future__ import annotations

from pathlib import Path

from .rules import Rejected

MANIFEST_NAME = "medbench-submission.json"
CACHE_DIR = ".leaderboard-cache"
STATS_CACHE_DIR = f"{CACHE_DIR}/stats"  # a build's intervals and tests, reused while their inputs are unchanged


def _results_below(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*_results.json") if CACHE_DIR not in p.parts)


def find_submissions(paths: list[Path]) -> tuple[list[Path], list[Rejected]]:
    """Submission folders for the RUN arguments, and one rejection per argument that holds none.

    A folder with a manifest is one submission. A folder without one whose results all lie in one folder
    (lmms-eval's ``--output_path``, with the ``<model>/`` folder inside and a ``medbench_judge/`` sidecar
    folder beside it) is one submission. Otherwise each results file's folder is a submission, unless a
    manifest in an enclosing folder (up to the argument) claims it. A results file given directly stands
    for its folder. A missing or empty argument is a rejection, so the rest of the board still builds.
    """
    found: list[Path] = []
    rejected: list[Rejected] = []
    for path in paths:
        if path.is_file():
            candidates = [path.parent]
        elif path.is_dir():
            results = [] if (path / MANIFEST_NAME).is_file() else _results_below(path)
            if (path / MANIFEST_NAME).is_file() or len({r.parent for r in results}) == 1:
                candidates = [path]
            else:
                candidates = []
                for result in results:
                    owner = next(
                        (
                            parent
                            for parent in [result.parent, *result.parent.parents]
                            if (parent / MANIFEST_NAME).is_file() and parent.is_relative_to(path)
                        ),
                        result.parent,
                    )
                    candidates.append(owner)
                if not candidates:
                    rejected.append(
                        Rejected(
                            "missing_samples",
                            path,
                            "no lmms-eval results (*_results.json) below it; pass the --output_path folder of an lmms-eval run",
                        )
                    )
        else:
            rejected.append(
                Rejected("unreadable", path, "does not exist; pass lmms-eval output folders or submission folders")
            )
            continue
        for candidate in candidates:
            if candidate not in found:
                found.append(candidate)
    return found, rejected
