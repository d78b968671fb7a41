"""Confidence intervals and paired tests from per-sample scores.

Both are resampling methods over the test items, vectorised so a board of hundreds of runs builds in a
second:

* **Bootstrap 95% CI** (percentile method) of a mean-aggregated metric: resample the items with
  replacement ``B`` times and take the 2.5th/97.5th percentiles of the resampled means. Resampling is done
  with a ``B × n`` matrix of multinomial counts, so one matrix product gives every metric of a run at once.
* **Paired sign-flip permutation test** of a run against the baseline on the same items: under the null
  hypothesis that both models score alike, each item's score difference is equally likely to have either
  sign. ``p`` is the share of ``B`` random sign flips whose mean difference is at least as far from zero
  as the observed one (with the +1 correction, so ``p`` is never 0). The paired bootstrap CI of the mean
  difference comes with it.

Where a task asks several questions about one image (SLAKE's 1,061 test questions sit on 96 images), the
questions are not independent: both methods then resample *images* (clusters), not questions
(:func:`resampler`'s ``clusters``), which widens the intervals by about the square root of the questions per
image when the questions of an image share their outcome.

The random draws depend only on the task name, the number of items and of clusters (fixed seeds), so a
board rebuilt from the same runs shows the same intervals, and every run of a task is resampled with the
same draws.
No correction for multiple comparisons is applied: the board marks each comparison at level ``alpha``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

DEFAULT_ITERATIONS = 1000
DEFAULT_ALPHA = 0.05


@dataclass(frozen=True)
class Resampler:
    """The random draws shared by every run of one task.

    Attributes:
        weights: ``B × n`` bootstrap counts (how often each item is drawn in each resample).
        signs: ``B × n`` random ±1 for the sign-flip test.
    """

    weights: np.ndarray
    signs: np.ndarray


@lru_cache(maxsize=64)
def resampler(
    task: str, n_items: int, iterations: int = DEFAULT_ITERATIONS, clusters: tuple[str, ...] | None = None
) -> Resampler:
    """The draws for ``task`` with ``n_items`` items (seeded by the task name: reproducible boards).

    Args:
        task: Task name (the seed).
        n_items: Number of items.
        iterations: Number of draws ``B``.
        clusters: The cluster (image) of each item, in item order. Questions about one image are not
            independent draws, so with clusters the bootstrap resamples clusters with replacement (every
            item of a drawn cluster comes along, as many times as the cluster was drawn) and the sign-flip
            test flips whole clusters: the intervals are cluster-robust, as lmms-eval's clustered standard
            errors are. ``None`` (or one item per cluster) resamples items.
    """
    if clusters is not None and len(clusters) != n_items:
        raise ValueError(f"{len(clusters)} cluster labels for {n_items} items")
    if clusters is None:
        index, k, seed = np.arange(n_items), n_items, f"{task}:{n_items}"
    else:
        labels, index = np.unique(np.array([str(label) for label in clusters]), return_inverse=True)
        k, seed = len(labels), f"{task}:{n_items}:{len(labels)}"
    rng = np.random.default_rng(zlib.crc32(seed.encode()))
    cluster_weights = rng.multinomial(k, np.full(k, 1.0 / k), size=iterations).astype(np.float64)
    cluster_signs = rng.choice(np.array([-1.0, 1.0]), size=(iterations, k))
    return Resampler(weights=cluster_weights[:, index], signs=cluster_signs[:, index])


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
        draws: The task's resampler.
        values: ``n × m`` per-sample values (0 where not applicable).
        mask: ``n × m`` 1 where the metric applies to the item.
        alpha: 1 − confidence level.

    Returns:
        ``(low, high)`` arrays of length ``m`` (NaN where a column has no values).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (draws.weights @ (values * mask)) / (draws.weights @ mask)
    return _percentiles(means, alpha)


def _percentiles(samples: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise percentiles; a resample that drew no applicable item (NaN mean) is left out."""
    levels = [alpha / 2, 1 - alpha / 2]
    low = np.full(samples.shape[1], np.nan)
    high = np.full(samples.shape[1], np.nan)
    complete = np.isfinite(samples).all(axis=0)
    if complete.any():
        low[complete], high[complete] = np.quantile(samples[:, complete], levels, axis=0)
    partial = ~complete & np.isfinite(samples).any(axis=0)
    if partial.any():
        finite = np.where(np.isfinite(samples[:, partial]), samples[:, partial], np.nan)
        low[partial], high[partial] = np.nanquantile(finite, levels, axis=0)
    return low, high


@dataclass
class PairedResult:
    """A run against the baseline on shared items, per metric (arrays of length ``m``).

    Attributes:
        difference: Mean of (run − baseline) over items both scored.
        low: Lower bound of the paired bootstrap CI of the difference.
        high: Upper bound.
        p_value: Two-sided sign-flip permutation p-value.
        n_pairs: Items both runs scored.
    """

    difference: np.ndarray
    low: np.ndarray
    high: np.ndarray
    p_value: np.ndarray
    n_pairs: np.ndarray


def paired_test(
    draws: Resampler,
    run: tuple[np.ndarray, np.ndarray],
    baseline: tuple[np.ndarray, np.ndarray],
    alpha: float = DEFAULT_ALPHA,
) -> PairedResult:
    """Paired comparison of ``run`` with ``baseline`` (``(values, mask)`` pairs from :func:`as_matrix`)."""
    values, mask = run
    base_values, base_mask = baseline
    both = mask * base_mask
    diffs = (values - base_values) * both
    count = both.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = diffs.sum(axis=0) / count
        flipped = (draws.signs @ diffs) / count
        resampled = (draws.weights @ diffs) / (draws.weights @ both)
    # Ties count as "as extreme": a run identical to the baseline gets p = 1, not a spurious 0.
    tolerance = 1e-12
    extreme = (np.abs(flipped) >= np.abs(observed) - tolerance).sum(axis=0)
    p_value = np.where(count > 0, (extreme + 1) / (flipped.shape[0] + 1), np.nan)
    low, high = _percentiles(resampled, alpha)
    return PairedResult(difference=observed, low=low, high=high, p_value=p_value, n_pairs=count)
