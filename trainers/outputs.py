"""What a run leaves next to its checkpoint: the metadata file, the log history and the training-curve plot."""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

METADATA_FILE = "medbench_train.json"
LOG_FILE = "training_log.jsonl"
PLOT_FILE = "training_curves.png"

_PACKAGES = ("medbench", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed")

# Curves drawn when logged, in this order; objective components ("loss/...") are added after them.
_PANELS = ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected", "learning_rate")


def package_versions(names: Iterable[str] = _PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages that shape training (None when not installed), plus Python's."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def objective_rows(objective: str) -> dict[str, Any]:
    """What an objective scores, for readers that must not import the trainer (the study's analysis): its
    ``(answer, image)`` rows and whether they vary per record (see :class:`medbench.train.objectives.Objective`)."""
    from .objectives import get_objective

    spec = get_objective(objective)
    return {"rows": [list(row) for row in spec.rows], "per_record_rows": bool(spec.per_record_rows)}


def write_metadata(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write the run's metadata JSON (adds a UTC timestamp, the command line, the objective's scored rows and
    package versions)."""
    path = Path(path)
    document = {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        **payload,
        **({"objective_rows": objective_rows(payload["objective"])} if payload.get("objective") else {}),
        "versions": package_versions(),
    }
    path.write_text(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    return path


def write_log_history(path: str | Path, log_history: list[dict[str, Any]]) -> Path:
    """One JSON object per logging event, as the trainer recorded it."""
    path = Path(path)
    path.write_text("".join(json.dumps(entry) + "\n" for entry in log_history), encoding="utf-8")
    return path


def plot_training_curves(log_history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Plot the logged training curves (loss, rewards, learning rate, loss components) into one PNG.

    Args:
        log_history: ``trainer.state.log_history``.
        path: PNG file to write.
        title: Figure title (the recipe name).

    Returns:
        The path written, or None when no training step was logged.
    """
    steps = [entry for entry in log_history if "loss" in entry and "step" in entry]
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")  # headless: training machines have no display
    import matplotlib.pyplot as plt

    keys = [key for key in _PANELS if any(key in entry for entry in steps)]
    keys += sorted({key for entry in steps for key in entry if key.startswith("loss/")})
    columns = min(3, len(keys))
    rows = (len(keys) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for axis, key in zip(axes.flat, keys, strict=False):
        points = [(entry["step"], entry[key]) for entry in steps if key in entry]
        axis.plot([s for s, _ in points], [v for _, v in points], marker="o" if len(points) < 30 else None)
        axis.set_title(key)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(keys) :]:
        axis.set_visible(False)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
