"""Read lmms-eval output folders: the results JSON and the per-sample logs of a run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbench.errors import MedbenchError

# Per-sample detail keys and counts are written by the medbench tasks but are not scores.
NON_SCORE_METRICS = frozenset({"n_closed", "n_open", "medbench_detail"})


@dataclass
class RunResults:
    """One lmms-eval run (one results JSON) and where its files are.

    Attributes:
        path: The results JSON.
        raw: Its parsed content.
        samples: Per task, the ``--log_samples`` JSONL file of this run (when written).
    """

    path: Path
    raw: dict[str, Any]
    samples: dict[str, Path] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return str(self.raw.get("model_name") or self.raw.get("config", {}).get("model", "?"))

    @property
    def tasks(self) -> list[str]:
        return sorted(task for task in self.raw.get("results", {}) if task in self.raw.get("configs", {}))

    def metrics(self, task: str) -> dict[str, tuple[float, float | None]]:
        """``{metric: (value, stderr or None)}`` for a task, filter suffixes (",none") removed."""
        values: dict[str, tuple[float, float | None]] = {}
        entry = self.raw["results"][task]
        for key, value in entry.items():
            if "," not in key or "_stderr" in key:
                continue
            metric, filter_name = key.split(",", 1)
            if metric in NON_SCORE_METRICS or not isinstance(value, (int, float)):
                continue
            stderr = entry.get(f"{metric}_stderr,{filter_name}")
            values[metric] = (float(value), float(stderr) if isinstance(stderr, (int, float)) else None)
        return values

    def count(self, task: str, metric: str) -> float | None:
        value = self.raw["results"].get(task, {}).get(f"{metric},none")
        return float(value) if isinstance(value, (int, float)) else None


def find_runs(folder: Path) -> list[RunResults]:
    """All lmms-eval runs under ``folder`` (results JSONs found recursively), oldest first.

    Raises:
        MedbenchError: When the folder holds no results JSON.
    """
    paths = sorted(folder.rglob("*_results.json")) if folder.is_dir() else [folder]
    runs = []
    for path in paths:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise MedbenchError(f"{path}: not a readable lmms-eval results file ({error})") from None
        stamp = path.name[: -len("_results.json")]
        samples = {
            sample.name[len(f"{stamp}_samples_") : -len(".jsonl")]: sample
            for sample in path.parent.glob(f"{stamp}_samples_*.jsonl")
        }
        runs.append(RunResults(path=path, raw=raw, samples=samples))
    if not runs:
        raise MedbenchError(f"{folder}: no lmms-eval results (*_results.json) found; was --output_path set?")
    return runs
