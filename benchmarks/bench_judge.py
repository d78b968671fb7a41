"""Judge throughput: concurrent vs sequential requests, a fully cached re-run, and a rate-limited server.

Starts the test suite's loopback OpenAI-compatible judge server (``tests/judge_server.py``) with a fixed
per-request latency (standing in for a remote model), then scores the same batch three ways in this process:

1. sequentially (concurrency 1, empty cache),
2. with ``--concurrency`` requests in flight (default 16, empty cache),
3. again with a warm on-disk cache (a re-run of step 2's configuration).

It prints wall times, the speed-up of 2 over 1 (target >= 12x at 16-way; 16x is the ceiling) and the
number of requests the cached re-run sent (target 0).

Then the rate-limited scenario: a fresh server with a token bucket of ``--rate-limit`` requests/s and a small
burst (``--rl-burst``, default 5; above it 429 with OpenAI's body and ``retry-after``/``retry-after-ms``),
whose ``x-ratelimit-*`` headers, on every answer, state the budget per minute as OpenAI does (limit
``60 * rate``, so ``remaining`` stays high until the 429), ``--rl-samples`` samples at ``--rl-concurrency``, judged

* by the old fixed policy, measured in the same run as the baseline: a fixed semaphore, ``retry-after``
  read as whole seconds and slept exactly (no jitter), 429s counted against the same 5 attempts;
* by medbench's judge client (pacing from the headers, AIMD in-flight limit, jittered shared pause).

For each it prints the throughput as a fraction of the server's limit (answered requests per second over
the limit; and over what the bucket allowed in that time, burst included), the share of requests answered
429, and the samples left unscored (targets: >= 90%, < 5%, 0). Nothing is asserted; the numbers are the result.

    python benchmarks/bench_judge.py [--samples 96] [--latency 0.1] [--concurrency 16] [--parts nli]
                                     [--rate-limit 20] [--rl-burst 5] [--rl-samples 120] [--rl-concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from medbench.judge.cache import JudgeCache
from medbench.judge.config import JudgeConfig
from medbench.judge.prompts import load_prompt
from medbench.judge.runner import JudgeItem, JudgeRunner, numbered

# The loopback server is a test double and lives in tests/ (imported after medbench, so that tests/medbench
# cannot pass for the package).
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
from judge_server import LoopbackJudgeServer


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


def legacy_fixed_run(base_url: str, items: list[JudgeItem], concurrency: int, max_retries: int = 4) -> int:
    """The judge client's policy before rate-limit awareness, for the baseline: returns samples unscored.

    A fixed semaphore of ``concurrency``; on 429 sleep ``float(retry-after)`` exactly (no jitter, the precise
    ``retry-after-ms`` and ``x-ratelimit-*`` ignored), otherwise exponential backoff; 5 attempts in all.
    """
    import openai

    prompt = load_prompt("nli")

    async def run() -> int:
        client = openai.AsyncOpenAI(api_key="no-key", base_url=base_url, max_retries=0, timeout=30)
        semaphore = asyncio.Semaphore(concurrency)

        async def one(item: JudgeItem) -> bool:
            messages = prompt.render(premise=item.prediction, hypotheses=numbered(item.facts or ()), n=len(item.facts or ()))
            for attempt in range(max_retries + 1):
                delay = min(60.0, 1.0 * 2**attempt)
                async with semaphore:
                    try:
                        await client.chat.completions.create(model="loopback-judge", messages=messages, temperature=0.0, max_tokens=1024)
                        return True
                    except openai.RateLimitError as error:
                        value = error.response.headers.get("retry-after")
                        delay = float(value) if value is not None else delay
                    except openai.APIError:
                        pass
                if attempt < max_retries:
                    await asyncio.sleep(delay)
            return False

        try:
            done = await asyncio.gather(*(one(item) for item in items))
        finally:
            await client.close()
        return sum(not ok for ok in done)

    return asyncio.run(run())


def rate_limited(label: str, items: list[JudgeItem], rate: float, burst: float, concurrency: int, latency: float, legacy: bool) -> dict:
    """One policy against a fresh token-bucket server; the figures the scenario reports."""
    with LoopbackJudgeServer(rate_limit=rate, burst=burst, per_minute_headers=True, latency=latency) as server:
        start = time.perf_counter()
        if legacy:
            unscored = legacy_fixed_run(server.base_url, items, concurrency)
        else:
            config = JudgeConfig(model="loopback-judge", base_url=server.base_url, concurrency=concurrency, progress=False, timeout=30)
            report = JudgeRunner(config, cache=JudgeCache(None)).judge(items, ("nli",))
            unscored = sum(bool(v.failures) for v in report.samples)
        elapsed = time.perf_counter() - start
        statuses = server.statuses()
    answered, refused, total = statuses.get(200, 0), statuses.get(429, 0), sum(statuses.values())
    allowed = server.burst + rate * elapsed
    return {
        "label": label, "seconds": elapsed, "answered": answered, "requests": total, "refused": refused,
        "of_limit": answered / elapsed / rate, "of_allowed": answered / allowed, "share_429": refused / total if total else 0.0,
        "unscored": unscored,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds the server waits per request")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--parts", default="nli", help="judge parts, e.g. nli or nli,fabrication,severity")
    parser.add_argument("--rate-limit", type=float, default=20.0, help="requests/s of the rate-limited server")
    parser.add_argument("--rl-burst", type=float, default=5.0, help="bucket capacity of the rate-limited server")
    parser.add_argument("--rl-samples", type=int, default=120)
    parser.add_argument("--rl-concurrency", type=int, default=16)
    parser.add_argument("--rl-latency", type=float, default=0.05, help="seconds per answered request in the rate-limited scenario")
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

    rl_items = make_items(args.rl_samples)
    print(
        f"rate-limited server: token bucket {args.rate_limit:g} requests/s (burst {args.rl_burst:g}, per-minute headers), {args.rl_samples} samples, "
        f"concurrency {args.rl_concurrency}, latency {args.rl_latency * 1000:.0f} ms"
    )
    for legacy, label in ((True, "old fixed policy (baseline)"), (False, "medbench judge client")):
        row = rate_limited(label, rl_items, args.rate_limit, args.rl_burst, args.rl_concurrency, args.rl_latency, legacy)
        print(
            f"  {row['label']:<28} {row['seconds']:6.2f} s  {row['of_limit'] * 100:5.1f}% of the limit "
            f"({row['of_allowed'] * 100:5.1f}% of what the bucket allowed)  429s {row['refused']}/{row['requests']} "
            f"= {row['share_429'] * 100:4.1f}%  unscored {row['unscored']}/{args.rl_samples}"
        )
    print("  targets: >= 90% of the limit, < 5% answered 429, 0 unscored")


if __name__ == "__main__":
    main()
