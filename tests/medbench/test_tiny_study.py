"""The CPU-scale study end to end (``medbench/studies/tiny.yaml``, seed set A): the claims as the README states them.

Run with ``python -m pytest -m slow tests/medbench/test_tiny_study.py``. The claims are those of
:mod:`medbench.study.analysis`: each difference must have its 95% interval above 0. The study runs once for the
module (two seeds, so the intervals resample held-out items only: conditional on the trained models).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TINY = Path(__file__).resolve().parents[2] / "medbench" / "studies" / "tiny.yaml"
LESION_KINDS = ("presence", "side", "count")


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-study")
    command = [sys.executable, "-m", "medbench", "study", "run", str(TINY), "--out", str(out), "--jobs", "2"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=7200, check=False)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    board = out / "tiny" / "board"
    assert (board / "index.html").is_file() and (board / "study.png").is_file()
    return json.loads((board / "study.json").read_text())


def _claim(analysis, key):
    return next(claim for claim in analysis["claims"] if claim["claim"] == key)


def _lows(claim):
    return {(e["variant"], e["against"], e["quantity"], e["group"]): e["low"] for e in claim["evidence"]}


def _accuracy(analysis, variant, group):
    row = next(row for row in analysis["estimates"] if row["variant"] == variant and row["backbone"] == "tiny")
    return row["accuracy"][group]["mean"]


def test_sft_is_tested_against_prior_only_always_yes_and_its_own_blind_score_per_lesion_kind(analysis):
    lows = _lows(_claim(analysis, "sft_learns_the_task"))
    expected = {("sft", against, "accuracy", kind) for kind in LESION_KINDS
                for against in ("prior_only", "medbench_baseline", "sft (blind_accuracy)")}
    assert set(lows) == expected
    assert "conditional on the trained models" in analysis["intervals"]


def test_sft_learns_the_task(analysis):
    # Measured on seed set A (the shipped file) and on seed set B (data 7, seeds 3, 4) alike (README).
    lows = _lows(_claim(analysis, "sft_learns_the_task"))
    assert all(low > 0 for low in lows.values()), lows


def test_sft_reaches_the_retuning_targets(analysis):
    # Seed means (README): side 0.952, presence 0.946 on seed set A; 0.858, 0.853 on seed set B (data 7, seeds 3, 4).
    assert _accuracy(analysis, "sft", "side") >= 0.75 and _accuracy(analysis, "sft", "presence") >= 0.80


def test_preference_training_raises_the_held_out_margin_over_the_sft_of_its_seed(analysis):
    lows = {key: low for key, low in _lows(_claim(analysis, "preference_training_raises_margin")).items()
            if key[2] == "margin"}
    assert {variant for variant, _, _, _ in lows} == {"dpo", "dpo_nll", "mdpo"}
    assert all(low > 0 for low in lows.values()), lows


@pytest.mark.xfail(reason="README: preference accuracy moves by -0.014 to +0.003 over SFT on seed set A (SFT is "
                   "at 0.953), every interval spanning 0", strict=False)
def test_preference_training_raises_the_held_out_preference_accuracy_over_the_sft_of_its_seed(analysis):
    lows = {key: low for key, low in _lows(_claim(analysis, "preference_training_raises_margin")).items()
            if key[2] == "correct"}
    assert {variant for variant, _, _, _ in lows} == {"dpo", "dpo_nll", "mdpo"}
    assert all(low > 0 for low in lows.values()), lows


def test_copo_family_terms_raise_lesion_evidence_over_dpo_on_lesion_items(analysis):
    claim = _claim(analysis, "copo_family_raises_lesion_evidence")
    lows = _lows(claim)
    assert set(lows) == {(variant, "dpo", "lesion_evidence", "with a lesion")
                         for variant in ("copo", "mdpo", "error_targeted")}
    assert all(low > 0 for low in lows.values()), lows


def test_grpo_leaves_task_accuracy_where_sft_left_it(analysis):
    # README: GRPO - SFT of its seed is +0.011 [-0.005, +0.026] overall on seed set A; every lesion kind's interval
    # spans 0.
    rows = [c for c in analysis["comparisons"] if c["variant"] == "grpo" and c["against"] == "sft"
            and c["quantity"] == "accuracy" and c["group"] in ("all", *LESION_KINDS)]
    assert len(rows) == 4
    assert all(row["low"] <= 0 <= row["high"] for row in rows), rows
