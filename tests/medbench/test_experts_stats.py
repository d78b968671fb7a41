"""Golden values for the agreement statistics: hand computations, published examples, scikit-learn."""

from __future__ import annotations

import random

import pytest

from medbench.experts.stats import cohen_kappa, fleiss_kappa, krippendorff_alpha


def test_cohen_kappa_two_by_two_by_hand():
    # 50 items: both yes 20, A yes / B no 5, A no / B yes 10, both no 15.
    # p_o = 35/50 = 0.7; p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = 0.2 / 0.5 = 0.4.
    first = ["yes"] * 25 + ["no"] * 25
    second = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(first, second) == pytest.approx(0.4)


def test_quadratic_weighted_kappa_by_hand():
    # Pairs (0,0) (1,2) (2,2) (2,1) on a 0-2 scale, w = ((i-j)/2)^2: observed disagreement (0.25 + 0.25) / 4 =
    # 0.125; both marginals (1/4, 1/4, 1/2): expected = 2/64 + 16/64 + 4/64 = 22/64; kappa = 1 - 8/22 = 7/11.
    assert cohen_kappa([0, 1, 2, 2], [0, 2, 2, 1], [0, 1, 2], "quadratic") == pytest.approx(7 / 11)


@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
def test_cohen_kappa_matches_scikit_learn(weights):
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(7)
    for _ in range(20):
        first = [rng.randrange(4) for _ in range(40)]
        second = [value if rng.random() < 0.6 else rng.randrange(4) for value in first]
        expected = metrics.cohen_kappa_score(first, second, labels=[0, 1, 2, 3], weights=weights)
        assert cohen_kappa(first, second, [0, 1, 2, 3], weights) == pytest.approx(expected, abs=1e-12)


def test_cohen_kappa_undefined_without_variation_and_rejects_unpaired():
    assert cohen_kappa(["none"] * 5, ["none"] * 5) is None
    assert cohen_kappa([], []) is None
    with pytest.raises(ValueError, match="rated 2 and 1"):
        cohen_kappa(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="not among the categories"):
        cohen_kappa(["a"], ["z"], ["a", "b"])


def test_fleiss_kappa_small_case_by_hand():
    # [a a] [a b] [b b]: P_i = 1, 0, 1 -> P_bar = 2/3; p_a = p_b = 1/2 -> P_e = 1/2; kappa = (2/3 - 1/2) / (1/2) = 1/3.
    assert fleiss_kappa([["a", "a"], ["a", "b"], ["b", "b"]]) == pytest.approx(1 / 3)


def test_fleiss_kappa_published_example():
    # Fleiss (1971)-style worked example (10 subjects, 14 raters, 5 categories; counts per category): kappa 0.210.
    table = [
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ]
    units = [[category for category, count in enumerate(row) for _ in range(count)] for row in table]
    assert fleiss_kappa(units) == pytest.approx(0.20993, abs=1e-4)


def test_fleiss_kappa_needs_equal_rater_counts():
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa([["a", "b"], ["a", "b", "b"]])
    assert fleiss_kappa([["a", "a"], ["a", "a"]]) is None


# Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 observers x 12 units, values 1-5, gaps.
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]
UNITS_2011 = [list(unit) for unit in zip(*KRIPPENDORFF_2011)]


@pytest.mark.parametrize(("level", "published"), [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_krippendorff_alpha_published_values(level, published):
    assert krippendorff_alpha(UNITS_2011, level, [1, 2, 3, 4, 5]) == pytest.approx(published, abs=5e-4)


def _alpha_by_pairs(units, level, scale):
    """Alpha from its pair definition, without a coincidence matrix: D_o over within-unit pairs (each weighted
    1 / (m_u - 1)), D_e over all pairs of distinct pooled values."""
    units = [[v for v in unit if v is not None] for unit in units]
    units = [unit for unit in units if len(unit) >= 2]
    pooled = [v for unit in units for v in unit]
    n = len(pooled)
    frequency = {c: pooled.count(c) for c in scale}

    def delta(a, b):
        if level == "nominal":
            return float(a != b)
        low, high = sorted((scale.index(a), scale.index(b)))
        between = sum(frequency[scale[g]] for g in range(low, high + 1))
        return (between - (frequency[a] + frequency[b]) / 2) ** 2

    observed = sum(
        delta(unit[i], unit[j]) / (len(unit) - 1) for unit in units for i in range(len(unit)) for j in range(len(unit)) if i != j
    ) / n
    expected = sum(delta(pooled[i], pooled[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    return 1 - observed / expected


@pytest.mark.parametrize("level", ["nominal", "ordinal"])
def test_krippendorff_alpha_matches_pair_definition_on_random_data(level):
    rng = random.Random(11)
    scale = ["none", "minor", "severe"]
    for _ in range(15):
        units = []
        for _ in range(25):
            truth = rng.randrange(3)
            unit = [scale[truth] if rng.random() < 0.7 else rng.choice(scale) for _ in range(rng.randrange(1, 5))]
            units.append(unit + [None] * rng.randrange(2))
        assert krippendorff_alpha(units, level, scale) == pytest.approx(_alpha_by_pairs(units, level, scale), abs=1e-12)


def test_krippendorff_two_raters_small_case_by_hand():
    # [a a] [a b] [b b]: o_aa = 2, o_ab = o_ba = 1, o_bb = 2, n = 6; D_o = 2/6, D_e = 2*3*3/(6*5) = 0.6 -> 4/9.
    assert krippendorff_alpha([["a", "a"], ["a", "b"], ["b", "b"]]) == pytest.approx(4 / 9)
    assert krippendorff_alpha([["a"], ["b", None]]) is None
    assert krippendorff_alpha([["a", "a"], ["a", "a"]]) is None


def test_expert_modules_are_light():
    import subprocess
    import sys

    modules = ("medbench.experts.stats", "medbench.experts.rubric", "medbench.experts.export", "medbench.experts.annotations", "medbench.experts.summary", "medbench.commands.experts")
    code = "import sys\n" + "".join(f"import {name}\n" for name in modules)
    code += "print(','.join(m for m in ('torch', 'trl', 'transformers', 'lmms_eval', 'datasets', 'openai') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_rubric_is_versioned_and_uses_the_shared_taxonomy():
    from medbench.experts.rubric import load_rubric
    from medbench.taxonomy import load_taxonomy

    rubric = load_rubric()
    assert rubric.describe() == {"name": "medbench-expert-rubric", "version": 1, "taxonomy_version": load_taxonomy().version}
    assert rubric.levels("severity") == ["none", "minor", "severe"]
    assert rubric.levels("correctness") == [0, 1, 2, 3]
    assert set(rubric.error_type_keys) == set(load_taxonomy().keys)
    clean, problems = rubric.check_output({"correctness": "2", "severity": " Minor ", "error_types": "organ; SIZE"}, "f")
    assert problems == [] and clean == {"correctness": 2, "severity": "minor", "error_types": ["organ", "size"], "comment": ""}
    assert rubric.check_output({"correctness": "", "severity": "", "error_types": [], "comment": " "}, "f") == (None, [])
    _, problems = rubric.check_output({"correctness": "2.5", "severity": "bad"}, "f")
    assert problems == ["f: correctness '2.5' is not one of [0, 1, 2, 3]", "f: severity 'bad' is not one of none, minor, severe"]
