"""Rate-limit awareness: what a server's headers say, and how many requests to have in flight.

Two mechanisms share one :class:`RateController`:

* **Pacing from headers.** OpenAI (and servers imitating it) send ``x-ratelimit-limit-requests``,
  ``x-ratelimit-remaining-requests`` and ``x-ratelimit-reset-requests`` (the time until the remaining
  budget is full again) on every response, and the same trio for tokens. For a budget that refills at a
  steady rate ``R``, ``reset = (limit - remaining) / R``, so each response tells the refill rate whatever the
  window (per second or per minute). Once the rate is known, request starts are always spaced ``1/R``
  apart: OpenAI states its budget per minute, but enforces it over much shorter intervals, so a high
  ``remaining`` says nothing about how many requests may go at once (pacing only when it ran low let the
  client climb back into the limit about once a second).
* **AIMD concurrency.** Until the first response arrives only one request is in flight (a server's limits
  are unknown before its first headers; 16 requests sent blind into a bucket of 5 are 11 429s). Then the
  in-flight limit is the configured concurrency; every 429 halves it (at most once per round of requests:
  a wave of 429s sent together counts once), every success adds ``1/limit`` (about one more request per
  round), up to the configured maximum.

A 429's own delay (``retry-after-ms``, ``retry-after`` in seconds or as an HTTP date, or the relevant
``x-ratelimit-reset-*``) pauses every new request, not only the refused one, with jitter so the waiting
requests do not wake together.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(value: str | None) -> float | None:
    """Seconds from an OpenAI reset duration (``"1s"``, ``"6m0s"``, ``"120ms"``, ``"1h2m3.5s"``) or a bare number.

    Returns:
        The duration in seconds, or ``None`` when the value cannot be read.
    """
    if value is None:
        return None
    text = str(value).strip().lower()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    return total if position == len(text) and position else None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` value: delay seconds (integer or float) or an HTTP date."""
    if value is None:
        return None
    text = str(value).strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None:
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def _get(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    if value is None:
        value = headers.get(name.title())
    return value


def retry_delay(headers: Mapping[str, str] | None) -> float | None:
    """The server's requested delay before the next attempt, in seconds, or ``None`` if it says nothing.

    Order: ``retry-after-ms``, ``retry-after``, then the reset time of each exhausted ``x-ratelimit-*``
    budget (the longest one), then the shortest reset time given at all.
    """
    milliseconds = _get(headers, "retry-after-ms")
    if milliseconds is not None:
        try:
            return max(0.0, float(milliseconds) / 1000.0)
        except ValueError:
            pass
    delay = parse_retry_after(_get(headers, "retry-after"))
    if delay is not None:
        return delay
    exhausted, resets = [], []
    for kind in ("requests", "tokens"):
        reset = parse_duration(_get(headers, f"x-ratelimit-reset-{kind}"))
        if reset is None:
            continue
        resets.append(reset)
        remaining = _number(_get(headers, f"x-ratelimit-remaining-{kind}"))
        if remaining is not None and remaining <= 0:
            exhausted.append(reset)
    if exhausted:
        return max(exhausted)
    return min(resets) if resets else None


@dataclass(frozen=True)
class Budget:
    """One ``x-ratelimit-*`` budget as a response reported it."""

    limit: float
    remaining: float
    reset: float

    @property
    def refill_rate(self) -> float | None:
        """Units per second the budget refills at, when the response allows telling."""
        used = self.limit - self.remaining
        if used <= 0 or self.reset <= 0:
            return None
        return used / self.reset


def read_budget(headers: Mapping[str, str] | None, kind: str) -> Budget | None:
    """The ``requests`` or ``tokens`` budget from response headers, if all three headers are there."""
    limit = _number(_get(headers, f"x-ratelimit-limit-{kind}"))
    remaining = _number(_get(headers, f"x-ratelimit-remaining-{kind}"))
    reset = parse_duration(_get(headers, f"x-ratelimit-reset-{kind}"))
    if limit is None or remaining is None or reset is None or limit <= 0:
        return None
    return Budget(limit=limit, remaining=remaining, reset=reset)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class Ticket:
    """One admitted request: when it started and its place in the sending order."""

    started: float
    seq: int


class RateController:
    """Gate for sending requests: an AIMD in-flight limit, a pacer, and a shared pause after 429s.

    Args:
        max_concurrency: The ceiling (the configured concurrency).
        adaptive: ``False`` keeps a fixed in-flight limit and ignores rate headers (servers with no limits).
        rng: Random source for jitter (``random.random``-like).
        clock: Monotonic clock (injectable for tests).
        headroom: Fraction of the measured refill rate to pace at.
    """

    def __init__(
        self,
        max_concurrency: int,
        *,
        adaptive: bool = True,
        rng: Callable[[], float],
        clock: Callable[[], float] = time.monotonic,
        headroom: float = 0.97,
    ) -> None:
        self.max_concurrency = max_concurrency
        self.adaptive = adaptive
        self.limit = float(max_concurrency)
        self.in_flight = 0
        self.decreases = 0
        self._rng = rng
        self._clock = clock
        self._headroom = headroom
        self._seq = 0
        self._next_start = 0.0
        self._pause_until = 0.0
        self._last_decrease = -1.0
        self._interval: float | None = None  # seconds per request of refill, once measured
        self._bounds: deque[float] = deque(maxlen=64)  # recent upper bounds of the refill rate
        self._opened = not adaptive  # a first response has come back: its headers say what the server allows
        self._capacity = 1.0  # the request budget's size (x-ratelimit-limit-requests)
        self._token_rate: float | None = None  # requests/s the token budget allows, when it runs low
        self._tokens_per_request: float | None = None
        self._waiters: list[asyncio.Future] = []
        self._pacing_lock: asyncio.Lock | None = None

    @property
    def rate(self) -> float | None:
        """Requests per second the pacer spaces starts at (``None``: not pacing)."""
        rates = [self._headroom / self._interval if self._interval else None, self._token_rate]
        known = [rate for rate in rates if rate]
        return min(known) if known else None

    async def acquire(self) -> Ticket:
        """Wait for a free slot, the pacer and any pause; returns the ticket to pass to :meth:`release`."""
        while self.in_flight >= (max(1, int(self.limit)) if self._opened else 1):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.in_flight += 1
        if self._pacing_lock is None:
            self._pacing_lock = asyncio.Lock()
        try:
            async with self._pacing_lock:  # one request at a time reserves its start slot
                while True:
                    now = self._clock()
                    start = max(now, self._next_start, self._pause_until)
                    if start <= now:
                        break
                    await asyncio.sleep(start - now)
                rate = self.rate
                if rate:
                    # A start that wakes late may catch up by a few intervals (never more than the budget's
                    # size allows), so a busy event loop does not turn into a lower rate.
                    slack = min(3.0, max(0.0, self._capacity - 1.0)) / rate
                    self._next_start = max(now - slack, self._next_start) + 1.0 / rate
                self._seq += 1
                ticket = Ticket(started=now, seq=self._seq)
        except BaseException:
            self._leave()
            raise
        return ticket

    def release(self, ticket: Ticket, *, rate_limited: bool = False, succeeded: bool = False) -> None:
        """Free the slot and adapt: halve on a 429 (once per round), grow gently on success."""
        self._opened = True
        if self.adaptive:
            if rate_limited and ticket.started >= self._last_decrease:
                self.limit = max(1.0, self.limit / 2)
                self._last_decrease = self._clock()
                self.decreases += 1
            elif succeeded:
                self.limit = min(float(self.max_concurrency), self.limit + 1.0 / max(1.0, self.limit))
        self._leave()

    def _leave(self) -> None:
        self.in_flight -= 1
        for waiter in self._waiters:  # each re-checks the limit; a cancelled waiter cannot swallow a wake-up
            if not waiter.done():
                waiter.set_result(None)

    def pause(self, seconds: float) -> float:
        """Hold back every new request for ``seconds`` plus jitter (up to half as long again); returns the pause."""
        if not self.adaptive or seconds <= 0:
            return 0.0
        pause = seconds * (1.0 + 0.5 * self._rng())
        self._pause_until = max(self._pause_until, self._clock() + pause)
        return pause

    def observe(self, headers: Mapping[str, str] | None, tokens_used: int = 0, ticket: Ticket | None = None) -> None:
        """Learn the refill rate from a response's ``x-ratelimit-*`` headers (requests are paced at it from then on)."""
        del ticket  # kept in the signature: which request the headers belong to
        if not self.adaptive or not headers:
            return
        requests = read_budget(headers, "requests")
        if requests is not None:
            used = requests.limit - requests.remaining
            if used >= 1 and requests.reset > 0:
                # ``remaining`` is rounded down, so the budget really spent lies in (used - 1, used]:
                # used / reset is an upper bound of the refill rate, and the lowest recent bound the estimate.
                self._bounds.append(used / requests.reset)
                self._interval = 1.0 / min(self._bounds)
            self._capacity = requests.limit
        if tokens_used > 0:
            previous = self._tokens_per_request
            self._tokens_per_request = tokens_used if previous is None else 0.8 * previous + 0.2 * tokens_used
        tokens = read_budget(headers, "tokens")
        if tokens is not None and tokens.refill_rate is not None and self._tokens_per_request:
            low = tokens.remaining < 2 * self.max_concurrency * self._tokens_per_request
            self._token_rate = self._headroom * tokens.refill_rate / self._tokens_per_request if low else None

    def describe(self) -> dict[str, Any]:
        """What the controller ended with (for the usage report)."""
        rate = self.rate
        measured = 1.0 / self._interval if self._interval else None
        return {
            "adaptive": self.adaptive,
            "final_in_flight_limit": int(self.limit),
            "paced_requests_per_second": round(rate, 3) if rate else None,
            "measured_limit_requests_per_second": round(measured, 3) if measured else None,
            "concurrency_decreases": self.decreases,
        }
