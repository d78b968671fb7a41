"""The one bootstrap of medbench: confidence intervals and paired tests by resampling.

Every interval in the project (leaderboard cells, study estimates, expert agreement) is a **percentile
bootstrap** computed here, with one percentile rule (:func:`percentile_interval`: numpy's linear
interpolation between order statistics, resamples with an undefined statistic left out).

* **Items.** Resample the test items with replacement ``B`` times; the interval is the ``alpha/2`` and
  ``1 - alpha/2`` percentiles of the resampled means. The draws are a ``B × n`` matrix of counts, so one
  matrix product gives every metric of every run at once (:class:`Resampler`, :func:`bootstrap_ci`).
* **Clusters.** With ``clusters=`` (one label per item) the clusters are resampled, not the items: every
  question about one image enters or leaves a resample together. When outcomes within a cluster are
  correlated (SLAKE's 1,061 test questions sit on 96 images) the item bootstrap is too narrow; if all ``q``
  questions of an image share one outcome the clustered interval is ``sqrt(q)`` times wider.
* **Paired differences** of two runs on the same items: the bootstrap interval of the mean difference, and a
  two-sided p-value, either by bootstrap (the resampled differences shifted to the null:
  ``p = (#{|d*_b - d| >= |d|} + 1) / (B + 1)``) or by the sign-flip permutation test (each item's or
  cluster's difference is equally likely to have either sign under the null). The ``+1`` keeps ``p > 0``.
* **Seeds, then items** (:func:`hierarchical_ci`, :func:`hierarchical_paired`): for ``values[seed, item]``
  each resample draws seeds with replacement, then items with replacement, and averages the drawn cells; both
  the training noise (seeds) and the test-set noise (items) widen the interval.

Draws are deterministic: a :class:`Resampler` is seeded by a string key (the leaderboard uses the task
name, so every run of a task is resampled with the same draws and a rebuilt board shows the same intervals);
the functions over plain arrays take an integer ``seed``. No correction for multiple comparisons is made.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np

DEFAULT_ITERATIONS = 1000
DEFAULT_ALPHA = 0.05

PairedMethod = Literal["bootstrap", "sign_flip"]


# ------------------------------------------------------------------------------------------ the one rule


def percentile_interval(samples: np.ndarray, alpha: float = DEFAULT_ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise ``alpha/2`` and ``1 - alpha/2`` percentiles of resampled statistics.

    Args:
        samples: ``B × m`` resampled statistics (NaN where a resample left the statistic undefined, e.g. it
            drew no item the metric applies to; such resamples are left out of that column).
        alpha: 1 − confidence level.

    Returns:
        ``(low, high)`` arrays of length ``m`` (NaN for a column with no defined resample).
    """
    samples = np.asarray(samples, dtype=np.float64)
    levels = [alpha / 2, 1 - alpha / 2]
    low = np.full(samples.shape[1], np.nan)
    high = np.full(samples.shape[1], np.nan)
    finite = np.isfinite(samples)
    complete = finite.all(axis=0)
    if complete.any():
        low[complete], high[complete] = np.quantile(samples[:, complete], levels, axis=0)
    partial = ~complete & finite.any(axis=0)
    if partial.any():
        masked = np.where(finite[:, partial], samples[:, partial], np.nan)
        low[partial], high[partial] = np.nanquantile(masked, levels, axis=0)
    return low, high


# ------------------------------------------------------------------------------- draws shared by many runs


@dataclass(frozen=True)
class Resampler:
    """The random draws shared by every run of one task (or any set of aligned items).

    Attributes:
        weights: ``B × n`` bootstrap counts: how often each item is drawn in each resample (with clusters:
            how often its cluster is drawn).
        signs: ``B × n`` random ±1 for the sign-flip test (with clusters: one sign per cluster).
    """

    weights: np.ndarray
    signs: np.ndarray


def resampler(
    key: str, n_items: int, iterations: int = DEFAULT_ITERATIONS, clusters: Sequence[Hashable] | None = None
) -> Resampler:
    """The draws for ``n_items`` aligned items, seeded by ``key`` (reproducible intervals).

    Args:
        key: Seed string (the leaderboard passes the task name).
        n_items: Number of items.
        iterations: Number of resamples ``B``.
        clusters: Optional label per item; clusters are resampled instead of items.

    Returns:
        The cached :class:`Resampler`.

    Raises:
        ValueError: ``clusters`` does not hold one label per item.
    """
    if clusters is None:
        return _item_resampler(key, n_items, iterations)
    if len(clusters) != n_items:
        raise ValueError(f"clusters= has {len(clusters)} labels for {n_items} items; pass one label per item")
    return _cluster_resampler(key, tuple(clusters), iterations)


@lru_cache(maxsize=64)
def _item_resampler(key: str, n_items: int, iterations: int) -> Resampler:
    rng = np.random.default_rng(zlib.crc32(f"{key}:{n_items}".encode()))
    weights = rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=iterations).astype(np.float64)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(iterations, n_items))
    return Resampler(weights=weights, signs=signs)


@lru_cache(maxsize=64)
def _cluster_resampler(key: str, clusters: tuple[Hashable, ...], iterations: int) -> Resampler:
    position: dict[Hashable, int] = {}
    index = np.array([position.setdefault(label, len(position)) for label in clusters])
    draws = _item_resampler(f"{key}:clusters", len(position), iterations)
    # Every item takes its cluster's count and sign: a drawn image brings all of its questions.
    return Resampler(weights=draws.weights[:, index], signs=draws.signs[:, index])


def as_matrix(columns: list[list[float | None]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample value lists (``None``: not applicable) as an ``n × m`` value matrix and 0/1 mask."""
    values = np.array([[np.nan if v is None else v for v in column] for column in columns], dtype=np.float64).T
    mask = ~np.isnan(values)
    return np.where(mask, values, 0.0), mask.astype(np.float64)


def bootstrap_ci(
    draws: Resampler, values: np.ndarray, mask: np.ndarray, alpha: float = DEFAULT_ALPHA
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the mean of each column.

    Args:
        draws: The items' resampler.
        values: ``n × m`` per-sample values (0 where not applicable).
        mask: ``n × m`` 1 where the metric applies to the item.
        alpha: 1 − confidence level.

    Returns:
        ``(low, high)`` arrays of length ``m`` (NaN where a column has no values).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (draws.weights @ (values * mask)) / (draws.weights @ mask)
    return percentile_interval(means, alpha)


@dataclass
class PairedResult:
    """A run against another on shared items, per metric (arrays of length ``m``).

    Attributes:
        difference: Mean of (run − baseline) over items both scored.
        low: Lower bound of the paired bootstrap CI of the difference.
        high: Upper bound.
        p_value: Two-sided p-value (by the method asked for).
        n_pairs: Items both runs scored.
    """

    difference: np.ndarray
    low: np.ndarray
    high: np.ndarray
    p_value: np.ndarray
    n_pairs: np.ndarray


# A resampled statistic within this of the observed one counts as "as extreme": identical runs get p = 1.
_TIES = 1e-12


def paired_test(
    draws: Resampler,
    run: tuple[np.ndarray, np.ndarray],
    baseline: tuple[np.ndarray, np.ndarray],
    alpha: float = DEFAULT_ALPHA,
    method: PairedMethod = "bootstrap",
) -> PairedResult:
    """Paired comparison of ``run`` with ``baseline`` (``(values, mask)`` pairs from :func:`as_matrix`).

    Args:
        draws: The items' resampler.
        run: ``(values, mask)``, ``n × m``.
        baseline: ``(values, mask)`` on the same items and metrics.
        alpha: 1 − confidence level of the interval.
        method: ``"bootstrap"`` (null-shifted bootstrap p-value) or ``"sign_flip"`` (permutation test).

    Returns:
        The :class:`PairedResult`; NaN where no item was scored by both.
    """
    values, mask = run
    base_values, base_mask = baseline
    both = mask * base_mask
    diffs = (values - base_values) * both
    count = both.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = diffs.sum(axis=0) / count
        resampled = (draws.weights @ diffs) / (draws.weights @ both)
        if method == "sign_flip":
            null = (draws.signs @ diffs) / count
        elif method == "bootstrap":
            null = resampled - observed
        else:
            raise ValueError(f"method must be 'bootstrap' or 'sign_flip', not {method!r}")
    extreme = (np.abs(null) >= np.abs(observed) - _TIES).sum(axis=0)
    p_value = np.where(count > 0, (extreme + 1) / (null.shape[0] + 1), np.nan)
    low, high = percentile_interval(resampled, alpha)
    return PairedResult(difference=observed, low=low, high=high, p_value=p_value, n_pairs=count)


# ---------------------------------------------------------------------------- plain arrays, one statistic


@dataclass(frozen=True)
class Estimate:
    """A mean with its percentile bootstrap interval.

    Attributes:
        mean: The observed mean.
        low: Lower bound.
        high: Upper bound.
        n: Number of items.
    """

    mean: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class Difference:
    """A paired mean difference ``a − b`` with its interval and two-sided p-value.

    Attributes:
        difference: The observed mean difference.
        low: Lower bound of its bootstrap interval.
        high: Upper bound.
        p_value: Two-sided p-value.
        n: Number of paired items.
    """

    difference: float
    low: float
    high: float
    p_value: float
    n: int


def _vector(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or not array.size:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values; drop the items that were not scored first")
    return array


def mean_ci(
    values: Sequence[float] | np.ndarray,
    *,
    seed: int = 0,
    clusters: Sequence[Hashable] | None = None,
    iterations: int = DEFAULT_ITERATIONS,
    alpha: float = DEFAULT_ALPHA,
) -> Estimate:
    """Percentile bootstrap interval of the mean of ``values`` (clusters resampled when given).

    Args:
        values: One value per item.
        seed: Seed of the draws.
        clusters: Optional label per item (e.g. the image a question is about).
        iterations: Number of resamples.
        alpha: 1 − confidence level.

    Returns:
        The :class:`Estimate`.
    """
    vector = _vector(values, "values")
    draws = resampler(f"seed:{seed}", vector.size, iterations, clusters)
    ones = np.ones((vector.size, 1))
    low, high = bootstrap_ci(draws, vector[:, None], ones, alpha)
    return Estimate(mean=float(vector.mean()), low=float(low[0]), high=float(high[0]), n=int(vector.size))


def paired_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    seed: int = 0,
    clusters: Sequence[Hashable] | None = None,
    iterations: int = DEFAULT_ITERATIONS,
    alpha: float = DEFAULT_ALPHA,
    method: PairedMethod = "bootstrap",
) -> Difference:
    """Mean of ``a − b`` over aligned items, its bootstrap interval and a two-sided p-value.

    Args:
        a: One value per item.
        b: The other system's value on the same items, same order.
        seed: Seed of the draws.
        clusters: Optional label per item; clusters are resampled (and sign-flipped) together.
        iterations: Number of resamples.
        alpha: 1 − confidence level.
        method: ``"bootstrap"`` or ``"sign_flip"`` p-value (see the module docstring).

    Returns:
        The :class:`Difference`.

    Raises:
        ValueError: ``a`` and ``b`` are not aligned.
    """
    first, second = _vector(a, "a"), _vector(b, "b")
    if first.shape != second.shape:
        raise ValueError(f"a has {first.size} items and b {second.size}; pass values on the same items")
    draws = resampler(f"seed:{seed}", first.size, iterations, clusters)
    ones = np.ones((first.size, 1))
    result = paired_test(draws, (first[:, None], ones), (second[:, None], ones), alpha, method)
    return Difference(
        difference=float(result.difference[0]),
        low=float(result.low[0]),
        high=float(result.high[0]),
        p_value=float(result.p_value[0]),
        n=int(first.size),
    )


# ------------------------------------------------------------------------------------ seeds, then items


def _matrix(values: Sequence[Sequence[float]] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or not array.size:
        raise ValueError(f"{name} must be a non-empty values[seed, item] matrix, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values; every seed must score every item")
    return array


def _counts(rng: np.random.Generator, n: int, iterations: int) -> np.ndarray:
    return rng.multinomial(n, np.full(n, 1.0 / n), size=iterations).astype(np.float64)


def _hierarchical_means(values: np.ndarray, seed_counts: np.ndarray, item_counts: np.ndarray) -> np.ndarray:
    """Per resample ``b``: the mean of ``values[seeds_b][:, items_b]`` (counts as weights, no copies)."""
    n_seeds, n_items = values.shape
    return np.einsum("bs,si,bi->b", seed_counts, values, item_counts) / (n_seeds * n_items)


def hierarchical_ci(
    values: Sequence[Sequence[float]] | np.ndarray,
    *,
    seed: int = 0,
    iterations: int = DEFAULT_ITERATIONS,
    alpha: float = DEFAULT_ALPHA,
) -> Estimate:
    """Bootstrap interval of the grand mean of ``values[seed, item]``: resample seeds, then items.

    Args:
        values: ``S × N`` matrix (training seed × test item), every cell scored.
        seed: Seed of the draws (the random generator's, not a training seed).
        iterations: Number of resamples.
        alpha: 1 − confidence level.

    Returns:
        The :class:`Estimate` (``n``: number of items).
    """
    matrix = _matrix(values, "values")
    rng = np.random.default_rng(seed)
    seed_counts = _counts(rng, matrix.shape[0], iterations)
    item_counts = _counts(rng, matrix.shape[1], iterations)
    means = _hierarchical_means(matrix, seed_counts, item_counts)
    low, high = percentile_interval(means[:, None], alpha)
    return Estimate(mean=float(matrix.mean()), low=float(low[0]), high=float(high[0]), n=int(matrix.shape[1]))


def hierarchical_paired(
    a: Sequence[Sequence[float]] | np.ndarray,
    b: Sequence[Sequence[float]] | np.ndarray,
    *,
    seed: int = 0,
    iterations: int = DEFAULT_ITERATIONS,
    alpha: float = DEFAULT_ALPHA,
) -> Difference:
    """Grand-mean difference of two systems scored as ``values[seed, item]`` on the same items.

    Items are paired (one item draw per resample, shared by both systems); seeds are not (each system's
    training seeds are resampled on their own: seed 0 of one model has nothing to do with seed 0 of another).
    The p-value is the null-shifted bootstrap one.

    Args:
        a: ``S_a × N`` matrix.
        b: ``S_b × N`` matrix on the same ``N`` items, same order.
        seed: Seed of the draws.
        iterations: Number of resamples.
        alpha: 1 − confidence level.

    Returns:
        The :class:`Difference` (``n``: number of items).

    Raises:
        ValueError: The two matrices cover different numbers of items.
    """
    first, second = _matrix(a, "a"), _matrix(b, "b")
    if first.shape[1] != second.shape[1]:
        raise ValueError(f"a covers {first.shape[1]} items and b {second.shape[1]}; pass the same items")
    rng = np.random.default_rng(seed)
    item_counts = _counts(rng, first.shape[1], iterations)
    resampled = _hierarchical_means(first, _counts(rng, first.shape[0], iterations), item_counts) - _hierarchical_means(
        second, _counts(rng, second.shape[0], iterations), item_counts
    )
    observed = float(first.mean() - second.mean())
    extreme = int((np.abs(resampled - observed) >= abs(observed) - _TIES).sum())
    low, high = percentile_interval(resampled[:, None], alpha)
    return Difference(
        difference=observed,
        low=float(low[0]),
        high=float(high[0]),
        p_value=(extreme + 1) / (iterations + 1),
        n=int(first.shape[1]),
    )


# ------------------------------------------------------------------------------------ any statistic


def bootstrap_statistic(
    units: Sequence[Any],
    statistic: Callable[[Sequence[Any]], float | None],
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of any ``statistic`` over ``units`` resampled with replacement.

    The unit is whatever the caller groups (expert agreement passes one item's ratings as a unit, so ratings
    of one item stay together). Resamples where the statistic is undefined (``None``) are left out.

    Args:
        units: The resampling units.
        statistic: Function of a resample (a list of units), ``None`` when undefined.
        confidence: Confidence level.
        resamples: Number of resamples.
        seed: Seed of the draws.

    Returns:
        ``(low, high)``, or ``None`` for fewer than two units or no defined resample.
    """
    if len(units) < 2:
        return None
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(units), size=(resamples, len(units)))
    values = [statistic([units[i] for i in row]) for row in picks]
    defined = np.array([value for value in values if value is not None], dtype=np.float64)
    if not defined.size:
        return None
    low, high = percentile_interval(defined[:, None], 1 - confidence)
    return float(low[0]), float(high[0])


__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_ITERATIONS",
    "Difference",
    "Estimate",
    "PairedResult",
    "Resampler",
    "as_matrix",
    "bootstrap_ci",
    "bootstrap_statistic",
    "hierarchical_ci",
    "hierarchical_paired",
    "mean_ci",
    "paired_difference",
    "paired_test",
    "percentile_interval",
    "resampler",
]
