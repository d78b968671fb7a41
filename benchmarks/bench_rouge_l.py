"""ROUGE-L on long texts: medbench's bit-parallel LCS against rouge-score's n x m table (the baseline).

For texts of ``n`` words a side, times one ROUGE-L score with rouge-score
(``RougeScorer(["rougeL"], use_stemmer=True)``, which fills an (n+1) x (m+1) table of Python ints) and with
:func:`medbench.metrics.text.rouge_l` (same tokens, LCS as one big-integer step per token, O(min(n, m))
memory), checks both give the same value (within the 4096-token cap), and reports the ratio.
Peak memory is measured with ``tracemalloc``.

    python benchmarks/bench_rouge_l.py [--words 500 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import tracemalloc
from functools import partial


def _timed(function, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    tracemalloc.start()
    function()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return statistics.median(times), peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--words", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from rouge_score import rouge_scorer

    from medbench.metrics.text import rouge_l

    stock = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    vocabulary = [
        "lungs", "clear", "heart", "size", "normal", "effusion", "pleural", "opacity", "right", "left", "lower",
        "lobe", "stable", "no", "acute",
    ]
    rng = random.Random(0)
    print(f"{'words':>6} {'rouge-score s':>14} {'MiB':>8} {'medbench s':>11} {'MiB':>6} {'speed-up':>9}")
    for words in args.words:
        prediction = " ".join(rng.choices(vocabulary, k=words))
        reference = " ".join(rng.choices(vocabulary, k=words))
        assert rouge_l(prediction, reference) == stock.score(reference, prediction)["rougeL"].fmeasure
        slow, slow_mib = _timed(partial(stock.score, reference, prediction), args.repeats)
        fast, fast_mib = _timed(partial(rouge_l, prediction, reference), args.repeats)
        print(f"{words:6d} {slow:14.3f} {slow_mib:8.1f} {fast:11.4f} {fast_mib:6.2f} {slow / fast:8.0f}x")


if __name__ == "__main__":
    main()
