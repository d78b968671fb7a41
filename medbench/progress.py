"""One progress bar for medbench's long loops (judge, preference-data builds): tqdm, or a silent stand-in."""

from __future__ import annotations

from typing import Any


class _NoProgress:
    def update(self, n: int) -> None:
        del n

    def close(self) -> None:
        return None


def progress_bar(total: int, enabled: bool, desc: str, unit: str) -> Any:
    """A ``tqdm`` bar with ``update(n)`` and ``close()``; without ``enabled``, an object that does nothing."""
    if not enabled:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)
