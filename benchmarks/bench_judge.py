"""Judge throughput: concurrent vs sequential requests, and the cost of a fully cached re-run.

Starts medbench's loopback OpenAI-compatible judge server with a fixed per-request latency (standing in
for a remote model), then scores the same batch three ways in this process:

1. sequentially (concurrency 1, empty cache),
2. with ``--concurrency`` requests in flight (default 16, empty cache),
3. again with a warm on-disk cache (a re-run of step 2's configuration).

It prints wall times, the speed-up of 2 over 1 (target >= 12x at 16-way; 16x is the ceiling) and the
number of requests the cached re-run sent (target 0). Nothing is asserted; the numbers are the result.

    python benchmarks/bench_judge.py [--samples 96] [--latency 0.1] [--concurrency 16] [--parts nli]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from medbench.judge.cache import JudgeCache
from medbench.judge.config import JudgeConfig
from medbench.judge.loopback import LoopbackJudgeServer
from medbench.judge.runner import JudgeItem, JudgeRunner


def make_items(count: int) -> list[JudgeItem]:
    """Distinct samples with precomputed facts, so the 'nli' part costs exactly one request each."""
    items = []
    for i in range(count):
        facts = (f"The heart is enlarged in study {i}.", "There is a right pleural effusion.", "There is no pneumothorax.")
        prediction = f"Study {i}: the heart is enlarged and there is a {'left' if i % 2 else 'right'} pleural effusion."
        items.append(JudgeItem(id=str(i), prediction=prediction, reference=" ".join(facts), facts=facts))
    return items


def timed_run(server: LoopbackJudgeServer, items: list[JudgeItem], parts: tuple[str, ...], concurrency: int, cache: JudgeCache) -> tuple[float, int, dict]:
    config = JudgeConfig(model="loopback-judge", base_url=server.base_url, concurrency=concurrency, progress=False, timeout=30)
    runner = JudgeRunner(config, cache=cache)
    before = server.count()
    start = time.perf_counter()
    report = runner.judge(items, parts)
    elapsed = time.perf_counter() - start
    return elapsed, server.count() - before, report.summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds the server waits per request")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--parts", default="nli", help="judge parts, e.g. nli or nli,fabrication,severity")
    args = parser.parse_args()
    parts = tuple(args.parts.split(","))
    items = make_items(args.samples)

    with LoopbackJudgeServer(latency=args.latency) as server, tempfile.TemporaryDirectory() as folder:
        # Warm-up: import openai and open the first connection outside the timed runs.
        timed_run(server, items[:2], ("nli",), 2, JudgeCache(None))
        sequential, seq_requests, _ = timed_run(server, items, parts, 1, JudgeCache(None))
        disk_cache = JudgeCache(Path(folder) / "cache.sqlite")
        concurrent, conc_requests, summary = timed_run(server, items, parts, args.concurrency, disk_cache)
        disk_cache.close()
        cached, cached_requests, cached_summary = timed_run(
            server, items, parts, args.concurrency, JudgeCache(Path(folder) / "cache.sqlite")
        )

    ideal = seq_requests * args.latency / args.concurrency
    print(f"judge benchmark: {args.samples} samples, parts={','.join(parts)}, server latency {args.latency * 1000:.0f} ms")
    print(f"  sequential (1 in flight):      {sequential:7.2f} s  {seq_requests} requests  ({sequential / args.samples * 1000:.1f} ms/sample)")
    print(f"  concurrent ({args.concurrency} in flight):    {concurrent:7.2f} s  {conc_requests} requests  ({concurrent / args.samples * 1000:.1f} ms/sample; ideal {ideal:.2f} s)")
    print(f"  speed-up:                      {sequential / concurrent:7.1f}x  (target >= 12x, ceiling {args.concurrency}x)")
    print(f"  cached re-run:                 {cached:7.2f} s  {cached_requests} requests  (target 0)")
    print(f"  same scores from the cache:    {summary == cached_summary}")


if __name__ == "__main__":
    main()
