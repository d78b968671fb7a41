"""The CPU-scale study end to end (``medbench/studies/tiny.yaml``, about 20 minutes on 2 cores): the three claims.

Run with ``python -m pytest -m slow tests/medbench/test_tiny_study.py``. The claims are those of
:mod:`medbench.study.analysis`; each difference must have its 95% bootstrap interval (over held-out items)
above 0. The study runs once for the module.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TINY = Path(__file__).resolve().parents[2] / "medbench" / "studies" / "tiny.yaml"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-study")
    command = [sys.executable, "-m", "medbench", "study", "run", str(TINY), "--out", str(out), "--jobs", "2"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    board = out / "tiny" / "board"
    assert (board / "index.html").is_file() and (board / "study.png").is_file()
    analysis = json.loads((board / "study.json").read_text())
    return {claim["claim"]: claim for claim in analysis["claims"]}


def _lows(claim, quantity=None):
    return {(e["variant"], e["against"], e["quantity"]): e["low"] for e in claim["evidence"]
            if quantity is None or e["quantity"] == quantity}


def test_sft_beats_the_untrained_model_and_the_non_neural_floor(study):
    lows = _lows(study["sft_learns_the_task"])
    assert set(lows) == {("sft", "base", "accuracy"), ("sft", "medbench_baseline", "accuracy")}
    assert all(low > 0 for low in lows.values()), lows


def test_preference_training_raises_the_held_out_margin_over_sft(study):
    lows = _lows(study["preference_training_raises_margin"], "margin")
    assert {variant for variant, _, _ in lows} == {"dpo", "dpo_nll", "mdpo"}
    assert all(low > 0 for low in lows.values()), lows


@pytest.mark.xfail(reason="measured Dec 2026: held-out preference accuracy moves by under 0.02 (CIs span 0); the "
                   "0.5 M model never learns the lesion's side (margin 0.00 on side items for every model)", strict=False)
def test_preference_training_raises_the_held_out_preference_accuracy_over_sft(study):
    lows = _lows(study["preference_training_raises_margin"], "correct")
    assert {variant for variant, _, _ in lows} == {"dpo", "dpo_nll", "mdpo"}
    assert all(low > 0 for low in lows.values()), lows


def test_copo_family_terms_raise_image_dependence_over_dpo(study):
    lows = _lows(study["copo_family_raises_image_dependence"])
    assert {variant for variant, _, _ in lows} == {"copo", "mdpo", "error_targeted"}
    assert all(low > 0 for low in lows.values()), lows
