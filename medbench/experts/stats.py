"""Agreement statistics for expert ratings: Cohen's kappa, Fleiss' kappa, Krippendorff's alpha.

Their bootstrap intervals come from :func:`medbench.stats.bootstrap_statistic`, the project's one bootstrap.

Ratings are category labels (any hashable). Ordinal scales pass their categories in order, so weighted
kappa and ordinal alpha know the distances. Every function returns ``None`` when the statistic is undefined
(fewer than two items, or no variation at all: chance agreement 1), so callers report "n/a" instead of 0.

Definitions (the textbook ones):

* Cohen's kappa (two raters, same items): ``1 - sum(w * observed) / sum(w * expected)`` with disagreement
  weights ``w`` — 0/1 (nominal), ``|i-j|/(k-1)`` (linear) or ``((i-j)/(k-1))**2`` (quadratic); ``expected`` is
  the outer product of the two raters' marginals.
* Fleiss' kappa (m >= 2 raters per item, the same number for every item; raters need not be the same people):
  ``(P_bar - P_e) / (1 - P_e)`` with ``P_i = (sum_j n_ij^2 - m) / (m (m - 1))`` and ``P_e = sum_j p_j^2``.
* Krippendorff's alpha (any number of raters, missing ratings allowed): ``1 - D_o / D_e`` from the coincidence
  matrix ``o_ck = sum_u (number of c-k pairs in unit u) / (m_u - 1)`` over units with ``m_u >= 2`` ratings;
  ``D_o = sum o_ck delta_ck / n``, ``D_e = sum n_c n_k delta_ck / (n (n - 1))``. Nominal ``delta = [c != k]``;
  ordinal ``delta_ck = (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2`` (Krippendorff 2011, "Computing Krippendorff's
  alpha-reliability"); interval ``delta = (c - k)^2`` on numeric labels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence

Label = Hashable


def _categories(labels: Iterable[Label], categories: Sequence[Label] | None) -> list[Label]:
    present = list(dict.fromkeys(labels))
    if categories is None:
        try:
            return sorted(present)  # type: ignore[type-var]
        except TypeError:
            return present
    unknown = [label for label in present if label not in categories]
    if unknown:
        raise ValueError(f"labels {unknown!r} are not among the categories {list(categories)!r}")
    return list(categories)


def _weight(i: int, j: int, k: int, weights: str | None) -> float:
    if weights is None:
        return 0.0 if i == j else 1.0
    if k < 2:
        return 0.0
    if weights == "linear":
        return abs(i - j) / (k - 1)
    if weights == "quadratic":
        return ((i - j) / (k - 1)) ** 2
    raise ValueError(f"weights must be None, 'linear' or 'quadratic', not {weights!r}")


def cohen_kappa(
    first: Sequence[Label], second: Sequence[Label], categories: Sequence[Label] | None = None, weights: str | None = None
) -> float | None:
    """Cohen's kappa between two raters who rated the same items (``first[i]`` and ``second[i]``).

    Args:
        first: Rater A's labels.
        second: Rater B's labels, same length and item order.
        categories: The scale in order (needed for ``weights``; default: the sorted labels seen).
        weights: ``None`` (nominal), ``"linear"`` or ``"quadratic"``.

    Returns:
        Kappa, or ``None`` when undefined (no items, or expected disagreement 0).
    """
    if len(first) != len(second):
        raise ValueError(f"the two raters rated {len(first)} and {len(second)} items; pass paired ratings")
    if not first:
        return None
    scale = _categories([*first, *second], categories)
    index = {label: position for position, label in enumerate(scale)}
    k, n = len(scale), len(first)
    observed = [[0.0] * k for _ in range(k)]
    for a, b in zip(first, second):
        observed[index[a]][index[b]] += 1 / n
    row = [sum(observed[i]) for i in range(k)]
    column = [sum(observed[i][j] for i in range(k)) for j in range(k)]
    disagreement = sum(_weight(i, j, k, weights) * observed[i][j] for i in range(k) for j in range(k))
    expected = sum(_weight(i, j, k, weights) * row[i] * column[j] for i in range(k) for j in range(k))
    if expected <= 1e-15:
        return None
    return 1.0 - disagreement / expected


def fleiss_kappa(units: Sequence[Sequence[Label]], categories: Sequence[Label] | None = None) -> float | None:
    """Fleiss' kappa over items each rated by the same number ``m >= 2`` of raters.

    Args:
        units: Per item, the labels it received (order irrelevant).
        categories: The categories (default: those seen).

    Returns:
        Kappa, or ``None`` when undefined (no items, or everyone always used one category).

    Raises:
        ValueError: Items with different numbers of ratings, or fewer than two.
    """
    if not units:
        return None
    sizes = {len(unit) for unit in units}
    if len(sizes) != 1 or min(sizes) < 2:
        raise ValueError(f"Fleiss' kappa needs the same number (>= 2) of ratings per item, got sizes {sorted(sizes)}")
    m = sizes.pop()
    scale = _categories([label for unit in units for label in unit], categories)
    counts = [Counter(unit) for unit in units]
    n = len(units)
    p_items = [(sum(count[c] ** 2 for c in scale) - m) / (m * (m - 1)) for count in counts]
    p_bar = sum(p_items) / n
    shares = [sum(count[c] for count in counts) / (n * m) for c in scale]
    p_e = sum(share**2 for share in shares)
    if p_e >= 1 - 1e-15:
        return None
    return (p_bar - p_e) / (1 - p_e)


def krippendorff_alpha(
    units: Sequence[Sequence[Label | None]], level: str = "nominal", categories: Sequence[Label] | None = None
) -> float | None:
    """Krippendorff's alpha; each unit lists the labels it received (``None`` = not rated, dropped).

    Args:
        units: Per item, its ratings (any number; units with fewer than two ratings do not count).
        level: ``"nominal"``, ``"ordinal"`` (pass ``categories`` in order) or ``"interval"`` (numeric labels).
        categories: The scale in order (ordinal); default: the sorted labels seen.

    Returns:
        Alpha, or ``None`` when undefined (fewer than two pairable ratings, or no variation).
    """
    pairable = [[label for label in unit if label is not None] for unit in units]
    pairable = [unit for unit in pairable if len(unit) >= 2]
    if not pairable:
        return None
    scale = _categories([label for unit in pairable for label in unit], categories)
    index = {label: position for position, label in enumerate(scale)}
    k = len(scale)
    coincidence = [[0.0] * k for _ in range(k)]
    for unit in pairable:
        counts = Counter(index[label] for label in unit)
        share = 1.0 / (len(unit) - 1)
        for c, n_c in counts.items():
            for d, n_d in counts.items():
                coincidence[c][d] += share * (n_c * (n_d - (1 if c == d else 0)))
    marginals = [sum(coincidence[c]) for c in range(k)]
    total = sum(marginals)
    if total <= 1:
        return None

    def delta(c: int, d: int) -> float:
        if level == "nominal":
            return 0.0 if c == d else 1.0
        if level == "ordinal":
            low, high = min(c, d), max(c, d)
            return (sum(marginals[low : high + 1]) - (marginals[c] + marginals[d]) / 2) ** 2
        if level == "interval":
            return (float(scale[c]) - float(scale[d])) ** 2  # type: ignore[arg-type]
        raise ValueError(f"level must be 'nominal', 'ordinal' or 'interval', not {level!r}")

    observed = sum(coincidence[c][d] * delta(c, d) for c in range(k) for d in range(k)) / total
    expected = sum(marginals[c] * marginals[d] * delta(c, d) for c in range(k) for d in range(k)) / (total * (total - 1))
    if expected <= 1e-15:
        return None
    return 1.0 - observed / expected


def mean(values: Sequence[float]) -> float | None:
    """The arithmetic mean, ``None`` for no values."""
    return sum(values) / len(values) if values else None


__all__ = ["cohen_kappa", "fleiss_kappa", "krippendorff_alpha", "mean"]
