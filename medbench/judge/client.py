"""Async judge client: one chat completion per request, with bounded retries, a cache and accounting.

The transport is the ``openai`` package's ``AsyncOpenAI`` pointed at any OpenAI-compatible base URL. Its
own retry loop is switched off (``max_retries=0``) so that every retry - on 429, 5xx, timeouts, connection
errors, malformed bodies, and answers the parser rejects - goes through one bounded, logged policy here.
Errors that retrying cannot fix for *any* sample (bad key, unknown model or URL) abort the run with one
line; errors tied to one request (e.g. a 400 for an over-long input) fail that request only.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Generic, Protocol, TypeVar

from medbench.errors import MedbenchError
from medbench.judge.cache import CachedAnswer, JudgeCache, cache_key
from medbench.judge.config import JudgeConfig
from medbench.judge.prompts import PromptSpec

logger = logging.getLogger("medbench.judge")
T = TypeVar("T")


class JudgeFailure(Exception):
    """One request failed for good (after retries, or not retryable); the reason is a short line."""


class JudgeConfigError(MedbenchError):
    """The judge cannot work at all with this configuration (key, model, URL)."""


class RetryableError(Exception):
    """A transport failure worth retrying (rate limit, server error, timeout, malformed body)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Completion:
    """A judge answer and its token usage."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Transport(Protocol):
    """Sends one chat request. Raises :class:`RetryableError`, :class:`JudgeFailure` or :class:`JudgeConfigError`."""

    def __call__(self, messages: list[dict[str, str]]) -> Awaitable[Completion]: ...


@dataclass
class JudgeStats:
    """What a run cost.

    Attributes:
        requests: HTTP requests sent (including retries).
        answered: Requests that returned an answer that parsed.
        cache_hits: Answers served from the cache (no request).
        retries: Requests repeated after a retryable failure or an unparseable answer.
        failures: Requests that failed for good.
        prompt_tokens: Input tokens of live requests.
        completion_tokens: Output tokens of live requests.
        cached_prompt_tokens: Input tokens the cache saved.
        cached_completion_tokens: Output tokens the cache saved.
        errors: Count of each retryable/final error reason.
    """

    requests: int = 0
    answered: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def cost(self, config: JudgeConfig) -> float | None:
        """US dollars spent on live requests, when the price table knows the model."""
        price = config.price()
        if price is None:
            return None
        return (self.prompt_tokens * price.input + self.completion_tokens * price.output) / 1_000_000

    def as_dict(self, config: JudgeConfig) -> dict[str, Any]:
        """Report form, cost included when known."""
        report = {key: value for key, value in self.__dict__.items() if key != "errors"}
        report["errors"] = dict(sorted(self.errors.items()))
        report["cost_usd"] = self.cost(config)
        return report


class OpenAITransport:
    """Chat completions through ``openai.AsyncOpenAI`` (created lazily, inside the running event loop)."""

    def __init__(self, config: JudgeConfig) -> None:
        self.config = config
        self._client: Any = None

    def _ensure_client(self) -> Any:
        if self._client is None:
            from openai import AsyncOpenAI

            # httpx logs every request URL at INFO; a base URL may carry a key in its query string, and a
            # line per request is noise in an evaluation log anyway.
            for name in ("httpx", "httpx2"):
                logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))

            self._client = AsyncOpenAI(
                api_key=self.config.resolved_api_key(),
                base_url=self.config.base_url,
                max_retries=0,
                timeout=self.config.timeout,
            )
        return self._client

    async def __call__(self, messages: list[dict[str, str]]) -> Completion:
        import openai

        client = self._ensure_client()
        where = self.config.public_base_url
        try:
            response = await client.chat.completions.create(
                model=self.config.model,
                messages=messages,
                temperature=self.config.temperature,
                max_tokens=self.config.max_tokens,
            )
        except openai.AuthenticationError:
            raise JudgeConfigError(f"the judge endpoint {where} rejected the API key (401): set a valid MEDBENCH_JUDGE_API_KEY") from None
        except openai.PermissionDeniedError:
            raise JudgeConfigError(f"the judge endpoint {where} denied access to model {self.config.model!r} (403): check the key's permissions") from None
        except openai.NotFoundError:
            raise JudgeConfigError(f"the judge endpoint {where} has no model {self.config.model!r} or no chat API (404): fix MEDBENCH_JUDGE_MODEL / MEDBENCH_JUDGE_BASE_URL") from None
        except openai.RateLimitError as error:
            raise RetryableError("429 rate limited", _retry_after(error)) from None
        except openai.APITimeoutError:
            raise RetryableError("timeout") from None
        except openai.APIConnectionError:
            raise RetryableError("connection error") from None
        except openai.APIStatusError as error:
            if error.status_code >= 500 or error.status_code in (408, 409):
                raise RetryableError(f"{error.status_code} server error", _retry_after(error)) from None
            raise JudgeFailure(f"request rejected ({error.status_code})") from None
        except (openai.APIResponseValidationError, ValueError, TypeError):
            raise RetryableError("malformed response body") from None
        return _completion_from(response)

    async def aclose(self) -> None:
        """Close the HTTP client (call from the loop that created it)."""
        if self._client is not None:
            await self._client.close()
            self._client = None


def _completion_from(response: Any) -> Completion:
    try:
        text = response.choices[0].message.content
    except (AttributeError, IndexError, TypeError):
        raise RetryableError("malformed response body") from None
    if not isinstance(text, str):
        raise RetryableError("malformed response body (no message content)")
    usage = getattr(response, "usage", None)
    return Completion(
        text=text,
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
    )


def _retry_after(error: Any) -> float | None:
    headers = getattr(getattr(error, "response", None), "headers", None) or {}
    value = headers.get("retry-after") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class JudgeClient(Generic[T]):
    """Asks versioned prompts, validates answers, caches the good ones, retries the rest.

    Args:
        config: Judge configuration.
        cache: Answer cache (default: the configured SQLite file, or memory).
        transport: Request sender (default :class:`OpenAITransport`); tests inject fakes here.
        sleep: Coroutine used for backoff delays (injectable so tests need not wait).
        on_usage: Called with ``(prompt_tokens, completion_tokens)`` after each live answer (lmms-eval's
            usage tracker hooks in here so judge tokens appear in its results).
    """

    def __init__(
        self,
        config: JudgeConfig,
        cache: JudgeCache | None = None,
        transport: Transport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_usage: Callable[[int, int], None] | None = None,
    ) -> None:
        self.config = config
        self._on_usage = on_usage
        self.cache = cache if cache is not None else JudgeCache(config.cache_path)
        self.transport = transport if transport is not None else OpenAITransport(config)
        self.stats = JudgeStats()
        self._sleep = sleep
        self._semaphore: asyncio.Semaphore | None = None
        self._inflight: dict[str, asyncio.Future] = {}
        self._rng = random.Random(0)

    async def ask(self, prompt: PromptSpec, values: dict[str, object], parse: Callable[[str], Any]) -> Any:
        """Get ``parse(answer)`` for ``prompt`` filled with ``values``.

        The same request asked concurrently is sent once (single flight); a cached answer is not sent at all.

        Args:
            prompt: The versioned prompt.
            values: Placeholder values.
            parse: Turns the answer text into a value; raises ``ValueError`` when the answer is unusable
                (the request is then retried, and the answer is never cached).

        Raises:
            JudgeFailure: No usable answer after the allowed retries (or a non-retryable request error).
            JudgeConfigError: The endpoint rejects the configuration itself.
        """
        messages = prompt.render(**values)
        key = cache_key(self.config.model, prompt.ident, prompt.sha256, messages)
        cached = self.cache.get(key)
        if cached is not None:
            try:
                value = parse(cached.text)
            except ValueError:
                value = None  # stored by an older parser that accepted it; ask again
            else:
                self.stats.cache_hits += 1
                self.stats.cached_prompt_tokens += cached.prompt_tokens
                self.stats.cached_completion_tokens += cached.completion_tokens
                return value
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await self._fetch(prompt, key, messages, parse)
        except BaseException as error:
            if not future.done():
                future.set_exception(error)
                future.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        else:
            future.set_result(value)
            return value
        finally:
            self._inflight.pop(key, None)

    async def _fetch(self, prompt: PromptSpec, key: str, messages: list[dict[str, str]], parse: Callable[[str], Any]) -> Any:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.config.concurrency)
        reason = "no attempt made"
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self.stats.retries += 1
            retry_after = None
            async with self._semaphore:
                self.stats.requests += 1
                try:
                    completion = await asyncio.wait_for(self.transport(messages), timeout=self.config.timeout * 1.5)
                except RetryableError as error:
                    reason, retry_after = str(error), error.retry_after
                    completion = None
                except asyncio.TimeoutError:
                    reason, completion = "timeout", None
                except JudgeFailure as error:
                    self._count(str(error))
                    self.stats.failures += 1
                    raise
            if completion is not None:
                self.stats.prompt_tokens += completion.prompt_tokens
                self.stats.completion_tokens += completion.completion_tokens
                if self._on_usage is not None:
                    self._on_usage(completion.prompt_tokens, completion.completion_tokens)
                try:
                    value = parse(completion.text)
                except ValueError as error:
                    reason = f"unparseable answer ({error})"
                else:
                    self.stats.answered += 1
                    self.cache.put(
                        key,
                        model=self.config.model,
                        prompt=prompt.ident,
                        answer=CachedAnswer(completion.text, completion.prompt_tokens, completion.completion_tokens),
                    )
                    return value
            self._count(reason)
            if attempt < self.config.max_retries:
                await self._sleep(self._delay(attempt, retry_after))
        self.stats.failures += 1
        raise JudgeFailure(f"{prompt.ident}: {reason} after {self.config.max_retries + 1} attempt(s)")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self.config.backoff_max, max(0.0, retry_after))
        base = min(self.config.backoff_max, self.config.backoff_base * (2**attempt))
        return base * (0.5 + 0.5 * self._rng.random())  # jitter spreads out synchronized retries

    def _count(self, reason: str) -> None:
        short = reason.split(" (")[0]
        self.stats.errors[short] = self.stats.errors.get(short, 0) + 1
        logger.debug("judge request problem: %s", short)

    async def aclose(self) -> None:
        """Release the transport's HTTP resources."""
        closer = getattr(self.transport, "aclose", None)
        if closer is not None:
            await closer()
