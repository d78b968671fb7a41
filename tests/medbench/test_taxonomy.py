"""The error taxonomy: one file, strict keys, near misses suggested, subtypes mapped to their category."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medbench.errors import DataError
from medbench.taxonomy import KNOWLEDGE, VISUAL, load_taxonomy, markdown_table


def test_top_level_follows_medheval_plus_omission_and_other():
    taxonomy = load_taxonomy()
    assert list(taxonomy.categories) == [VISUAL, KNOWLEDGE, "context_misalignment", "omission", "other"]
    visual = [key for key, (category, _) in taxonomy.subtypes.items() if category == VISUAL]
    assert visual == [
        "modality", "plane", "organ", "laterality_position", "presence_abnormality", "size", "count", "colour"
    ]
    assert taxonomy.version.count(".") == 1


@pytest.mark.parametrize(
    "value, suggestion",
    [
        ("visual misinterpretation", "visual_misinterpretation"),
        ("Visual-Misinterpretation", "visual_misinterpretation"),
        ("knowledge_error", "knowledge_deficiency"),
        ("laterality", "laterality_position"),
    ],
)
def test_near_misses_fail_with_one_line_naming_the_key(value, suggestion):
    with pytest.raises(DataError) as caught:
        load_taxonomy().check(value, "prefs.jsonl:3")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("prefs.jsonl:3: ")
    assert f"did you mean '{suggestion}'" in message


def test_exact_keys_pass_case_insensitively_and_subtypes_know_their_category():
    taxonomy = load_taxonomy()
    assert taxonomy.check(" Visual_Misinterpretation ") == VISUAL
    assert taxonomy.category("laterality_position") == VISUAL
    assert taxonomy.category("diagnosis") == KNOWLEDGE
    assert taxonomy.is_visual("count") and not taxonomy.is_visual("reasoning")
    assert not taxonomy.is_visual("visual misinterpretation")  # unknown keys are never visual
    assert taxonomy.is_visual("size", ["size"]) and not taxonomy.is_visual("count", ["size"])
    with pytest.raises(DataError):
        taxonomy.check("")


def test_markdown_lists_every_key():
    table = markdown_table()
    assert all(f"`{key}`" in table for key in load_taxonomy().keys)


def test_taxonomy_imports_no_torch():
    code = "import sys, medbench.taxonomy as t; t.load_taxonomy(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
