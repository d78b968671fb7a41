"""The one bootstrap (medbench.stats): hand-checkable cases and independent numpy computations."""

from __future__ import annotations

import numpy as np
import pytest

from medbench import stats

# ------------------------------------------------------------------------------------------ items


def test_bootstrap_matches_a_plain_resampling_loop():
    values = [0.0, 1.0, 1.0, 0.5, None, 1.0, 0.0, 0.25]
    draws = stats.resampler("t", len(values), 200)
    matrix, mask = stats.as_matrix([values])
    low, high = stats.bootstrap_ci(draws, matrix, mask)
    means = []
    for counts in draws.weights:
        drawn = [v for v, c in zip(values, counts, strict=True) for _ in range(int(c)) if v is not None]
        if drawn:
            means.append(sum(drawn) / len(drawn))
    assert low[0] == pytest.approx(np.quantile(means, 0.025)) and high[0] == pytest.approx(np.quantile(means, 0.975))


def test_bootstrap_interval_is_close_to_the_normal_interval_for_many_items():
    rng = np.random.default_rng(0)
    values = list(rng.random(2000))
    matrix, mask = stats.as_matrix([values])
    low, high = stats.bootstrap_ci(stats.resampler("big", 2000), matrix, mask)
    half_width = 1.96 * np.std(values, ddof=1) / np.sqrt(2000)
    assert low[0] == pytest.approx(np.mean(values) - half_width, abs=0.004)
    assert high[0] == pytest.approx(np.mean(values) + half_width, abs=0.004)


def test_percentile_rule_is_numpys_linear_interpolation_and_skips_undefined_resamples():
    samples = np.array([[0.0, 1.0], [1.0, np.nan], [2.0, 3.0], [3.0, 5.0], [4.0, np.nan]])
    low, high = stats.percentile_interval(samples, alpha=0.5)  # the 25th and 75th percentiles
    assert (low[0], high[0]) == (1.0, 3.0)  # positions 1 and 3 of 0..4
    assert (low[1], high[1]) == (2.0, 4.0)  # of [1, 3, 5]: positions 0.5 and 1.5
    low, high = stats.percentile_interval(np.full((3, 1), np.nan))
    assert np.isnan(low[0]) and np.isnan(high[0])


def test_mean_ci_is_deterministic_given_the_seed():
    values = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.5, 0.25]
    first = stats.mean_ci(values, seed=3)
    assert first == stats.mean_ci(values, seed=3)
    assert first.mean == pytest.approx(0.575) and first.low < first.mean < first.high and first.n == 10
    assert stats.mean_ci(values, seed=4) != first
    assert stats.mean_ci([0.5] * 7) == stats.Estimate(mean=0.5, low=0.5, high=0.5, n=7)


def test_plain_array_inputs_are_checked():
    with pytest.raises(ValueError, match="NaN"):
        stats.mean_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="same items"):
        stats.paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="one label per item"):
        stats.mean_ci([1.0, 2.0, 3.0], clusters=["a", "b"])


# ------------------------------------------------------------------------------------------ paired


def test_paired_test_identical_runs_have_p_one_and_clear_wins_small_p():
    draws = stats.resampler("pair", 12)
    same = stats.as_matrix([[0.1 * i for i in range(12)]])
    better = stats.as_matrix([[0.1 * i + 1 for i in range(12)]])
    for method in ("bootstrap", "sign_flip"):
        result = stats.paired_test(draws, same, same, method=method)
        assert result.difference[0] == 0 and result.p_value[0] == 1.0
        result = stats.paired_test(draws, better, same, method=method)
        # exact sign-flip p for 12 positive differences is 2 / 4096; the estimates are (k + 1) / (B + 1)
        assert result.difference[0] == pytest.approx(1.0) and result.p_value[0] < 0.01
        assert result.low[0] == pytest.approx(1.0) and result.high[0] == pytest.approx(1.0)


def test_paired_test_uses_only_items_both_runs_scored():
    draws = stats.resampler("mask", 4)
    run = stats.as_matrix([[1.0, None, 1.0, 0.0]])
    base = stats.as_matrix([[0.0, 1.0, None, 0.0]])
    result = stats.paired_test(draws, run, base)
    assert result.n_pairs[0] == 2 and result.difference[0] == pytest.approx(0.5)


def test_bootstrap_p_value_matches_an_independent_numpy_computation():
    rng = np.random.default_rng(7)
    a = rng.normal(0.1, 1.0, 60)
    b = rng.normal(0.0, 1.0, 60)
    result = stats.paired_difference(a, b, seed=1, iterations=4000)
    d = a - b
    picks = np.random.default_rng(99).integers(0, d.size, size=(4000, d.size))
    means = d[picks].mean(axis=1)
    p = ((np.abs(means - d.mean()) >= abs(d.mean())).sum() + 1) / 4001
    assert result.difference == pytest.approx(d.mean())
    assert result.p_value == pytest.approx(p, abs=0.03)  # two Monte Carlo estimates of one p-value
    assert result.low == pytest.approx(np.quantile(means, 0.025), abs=0.05)
    assert result.high == pytest.approx(np.quantile(means, 0.975), abs=0.05)


# ------------------------------------------------------------------------------------------ clusters


def _shared_outcomes(images: int, questions: int) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Every question about an image has the image's outcome (1 for 60% of images)."""
    per_image = (np.arange(images) % 5 < 3).astype(np.float64)
    return np.repeat(per_image, questions), list(np.repeat(np.arange(images), questions)), per_image


def test_cluster_draws_move_every_question_of_an_image_together():
    clusters = ["x", "x", "y", "z", "y", "x"]
    draws = stats.resampler("c", 6, 50, clusters)
    weights = draws.weights
    assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 0] == weights[:, 5]).all()
    assert (weights[:, 2] == weights[:, 4]).all() and (draws.signs[:, 2] == draws.signs[:, 4]).all()
    assert (weights[:, [0, 2, 3]].sum(axis=1) == 3).all()  # three clusters drawn per resample


def test_clustered_interval_is_wider_by_sqrt_questions_per_image():
    images, questions = 60, 9
    values, clusters, per_image = _shared_outcomes(images, questions)
    items = stats.mean_ci(values, seed=0, iterations=4000)
    clustered = stats.mean_ci(values, seed=0, iterations=4000, clusters=clusters)
    ratio = (clustered.high - clustered.low) / (items.high - items.low)
    assert ratio == pytest.approx(np.sqrt(questions), rel=0.15)
    # Independently: with equal-sized images the clustered mean is the mean of resampled image outcomes.
    picks = np.random.default_rng(123).integers(0, images, size=(4000, images))
    means = per_image[picks].mean(axis=1)
    assert clustered.low == pytest.approx(np.quantile(means, 0.025), abs=0.025)
    assert clustered.high == pytest.approx(np.quantile(means, 0.975), abs=0.025)


def test_clustered_paired_difference_is_wider_too():
    values, clusters, _ = _shared_outcomes(40, 4)
    baseline = np.zeros_like(values)
    items = stats.paired_difference(values, baseline, seed=2, iterations=2000)
    clustered = stats.paired_difference(values, baseline, seed=2, iterations=2000, clusters=clusters)
    assert clustered.difference == items.difference == pytest.approx(0.6)
    ratio = (clustered.high - clustered.low) / (items.high - items.low)
    assert ratio == pytest.approx(2.0, rel=0.2)


# ------------------------------------------------------------------------------------------ seeds, then items


def test_hierarchical_interval_with_seed_noise_only_is_the_seed_bootstrap():
    # Two seeds scoring 0 and 1 on every item: a resample draws seeds {0,0}, {0,1} or {1,1} (means 0, .5, 1
    # with chances 1/4, 1/2, 1/4), whatever items it draws; so the 95% interval is [0, 1].
    values = np.array([[0.0] * 20, [1.0] * 20])
    estimate = stats.hierarchical_ci(values, seed=0, iterations=2000)
    assert (estimate.mean, estimate.low, estimate.high, estimate.n) == (0.5, 0.0, 1.0, 20)


def test_hierarchical_interval_matches_an_independent_two_stage_loop():
    rng = np.random.default_rng(5)
    values = rng.normal(0.0, 0.3, (4, 1)) + rng.normal(0.5, 1.0, (1, 80))  # seed offsets + item effects
    estimate = stats.hierarchical_ci(values, seed=0, iterations=3000)
    draws = np.random.default_rng(42)
    means = []
    for _ in range(3000):
        seeds = draws.integers(0, 4, 4)
        items = draws.integers(0, 80, 80)
        means.append(values[np.ix_(seeds, items)].mean())
    assert estimate.mean == pytest.approx(values.mean())
    assert estimate.low == pytest.approx(np.quantile(means, 0.025), abs=0.06)
    assert estimate.high == pytest.approx(np.quantile(means, 0.975), abs=0.06)
    items_only = stats.mean_ci(values.mean(axis=0), seed=0, iterations=3000)
    assert estimate.high - estimate.low > items_only.high - items_only.low  # seed noise widens it
    assert stats.hierarchical_ci(values, seed=0, iterations=3000) == estimate


def test_hierarchical_paired_difference():
    base = np.random.default_rng(1).random((3, 30))
    same = stats.hierarchical_paired(base, base.copy(), seed=0)
    assert same.difference == 0 and same.p_value == 1.0
    shifted = stats.hierarchical_paired(np.tile(base[0] + 0.25, (3, 1)), base[:1], seed=0)
    assert shifted.difference == pytest.approx(0.25) and shifted.p_value < 0.01
    assert shifted.low == pytest.approx(0.25) and shifted.high == pytest.approx(0.25)
    with pytest.raises(ValueError, match="same items"):
        stats.hierarchical_paired(base, base[:, :10])


# ------------------------------------------------------------------------------------------ any statistic


def test_bootstrap_statistic_interval():
    values = [0, 1] * 50
    low, high = stats.bootstrap_statistic(values, lambda sample: sum(sample) / len(sample), seed=3)
    assert 0.38 < low < 0.5 < high < 0.62
    assert stats.bootstrap_statistic(values, lambda sample: sum(sample) / len(sample), seed=3) == (low, high)
    assert stats.bootstrap_statistic([1], lambda sample: 1.0) is None
    assert stats.bootstrap_statistic([1, 2], lambda sample: None) is None


def test_bootstrap_statistic_uses_the_one_percentile_rule():
    units = list(range(10))
    low, high = stats.bootstrap_statistic(units, lambda s: float(np.median(s)), resamples=500, seed=8)
    picks = np.random.default_rng(8).integers(0, 10, size=(500, 10))
    medians = np.median(np.array(units)[picks], axis=1)
    assert (low, high) == (pytest.approx(np.quantile(medians, 0.025)), pytest.approx(np.quantile(medians, 0.975)))
