"""Fixtures for the trainer tests (data helpers live in ``_prefdata.py``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _prefdata import RECORDS, to_llava_conversations, write_images, write_jsonl

# The simpo/orpo cross-checks import trl.experimental, which warns on import.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


@pytest.fixture(scope="session")
def pref_dir(tmp_path_factory) -> Path:
    """A folder with images and ``prefs.jsonl`` (native schema, every field) and ``llava.json`` (authors' form)."""
    root = write_images(tmp_path_factory.mktemp("prefdata"))
    write_jsonl(root / "prefs.jsonl", RECORDS)
    (root / "llava.json").write_text(json.dumps([to_llava_conversations(r) for r in RECORDS]), encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def pref_file(pref_dir) -> Path:
    return pref_dir / "prefs.jsonl"
