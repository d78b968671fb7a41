"""Async judge client: send a versioned prompt with values, get the parsed answer or a recorded failure.

This is the judge's transport, usable by anything that asks an LLM a versioned prompt (the judge runner,
preference-data builders):

* :class:`JudgeClient` - ``await client.ask(prompt, values, parse)`` returns ``parse(answer)`` or raises
  :class:`JudgeFailure` (this request failed for good; the reason lists every attempt) or
  :class:`JudgeAbort` (the run cannot work: bad key, dead URL, every request rejected, a judge whose
  answers cannot be parsed). :meth:`JudgeClient.attempt` returns an :class:`Outcome` instead of raising
  :class:`JudgeFailure`. Answers that parse are cached on disk; answers that do not are counted (never
  cached as answers) so a re-run does not ask a hopeless request again.
* :func:`gather_or_cancel` - run many such requests; on an abort every other one is cancelled and awaited
  before the error propagates, so the HTTP client can be closed under nothing.
* :attr:`JudgeClient.stats` - requests, retries, tokens, cost (:meth:`JudgeStats.as_dict`).

The HTTP side is ``openai.AsyncOpenAI`` pointed at any OpenAI-compatible base URL, with its own retries
off (``max_retries=0``) so that one policy here decides: 429s pause every request (server delay plus
jitter) and halve the in-flight limit (:mod:`medbench.judge.ratelimit`); 5xx, timeouts, connection errors
and malformed bodies back off with full jitter; unparseable answers are re-asked a bounded number of times.
Request parameters follow the model: ``max_completion_tokens`` and no ``temperature`` for OpenAI's
reasoning families, and whatever a server's 400 ``unsupported_parameter`` / ``unsupported_value`` reply says
for the rest (learnt once per endpoint and model, the request retried, what was sent recorded).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import urlsplit

from medbench.errors import MedbenchError
from medbench.judge.cache import CachedAnswer, JudgeCache, cache_key
from medbench.judge.config import OPENAI_DEFAULT_BASE_URL, JudgeConfig
from medbench.judge.prompts import PromptSpec
from medbench.judge.ratelimit import RateController, retry_delay

logger = logging.getLogger("medbench.judge")
T = TypeVar("T")

# OpenAI's reasoning models take max_completion_tokens and only the default temperature.
REASONING_MODELS = re.compile(r"^(?:.*/)?(?:gpt-5|o1|o3|o4)(?:$|[-.:_])", re.IGNORECASE)


class JudgeFailure(Exception):
    """One request failed for good (after retries, or not retryable); the reason is a short line."""


class Queued(JudgeFailure):
    """The transport took the request for later (Batch API mode): not a failure of the endpoint."""


class JudgeAbort(MedbenchError):
    """The run cannot continue (bad key, unreachable URL, every request rejected, unparseable judge).

    Attributes:
        partial: The reports of the stopped run (answered samples scored, the rest unscored with the
            stop's reason), set by the runner so the caller can write what exists before exiting.
    """

    partial: list[Any] | None = None


class JudgeConfigError(JudgeAbort):
    """The judge cannot work at all with this configuration (key, model, URL)."""


class RetryableError(Exception):
    """A transport failure worth retrying.

    Attributes:
        kind: ``rate_limit``, ``server``, ``timeout``, ``connection`` or ``malformed``.
        retry_after: Seconds the server asked to wait, if it said.
        headers: Response headers, when there was a response.
    """

    def __init__(self, reason: str, retry_after: float | None = None, *, kind: str = "server", headers: Mapping[str, str] | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.kind = kind
        self.headers = headers


@dataclass(frozen=True)
class Completion:
    """A judge answer, its token usage and the response headers (rate-limit information)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    headers: Mapping[str, str] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What :meth:`JudgeClient.attempt` returns: a parsed value, or the reason there is none."""

    value: T | None = None
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


class Transport(Protocol):
    """Sends one chat request. Raises :class:`RetryableError`, :class:`JudgeFailure` or :class:`JudgeAbort`."""

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
        rate_limited: Requests answered 429.
        unparseable: Answers the parser rejected (never cached as answers).
        skipped_unparseable: Requests not sent because earlier runs recorded only unparseable answers.
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
    rate_limited: int = 0
    unparseable: int = 0
    skipped_unparseable: int = 0
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


# --------------------------------------------------------------------------------------------------------
# Request parameters that follow the model


@dataclass
class RequestParams:
    """The token-limit parameter and temperature one endpoint/model accepts (shared, adapted in place)."""

    token_param: str = "max_tokens"
    send_temperature: bool = True
    learnt: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def arguments(self, config: JudgeConfig) -> dict[str, Any]:
        """Keyword arguments for ``chat.completions.create`` besides model and messages."""
        with self._lock:
            arguments: dict[str, Any] = {self.token_param: config.max_tokens}
            if self.send_temperature:
                arguments["temperature"] = config.temperature
        return arguments

    def adapt(self, error: Any, sent: Mapping[str, Any]) -> bool:
        """Adjust after a 400 that names an unsupported parameter or value; ``True`` means retry.

        Also ``True`` when another request already adapted since ``sent`` was built.
        """
        message = str(getattr(error, "message", "") or error)
        param = str(getattr(error, "param", "") or "")
        code = str(getattr(error, "code", "") or "")
        lowered = message.lower()
        unsupported = code in ("unsupported_parameter", "unsupported_value") or any(
            phrase in lowered for phrase in ("unsupported", "not supported", "not permitted", "extra_forbidden")
        )
        with self._lock:
            if self.token_param not in sent or ("temperature" in sent) != self.send_temperature:
                return True  # someone else learnt it while this request was in flight
            names_max_tokens = param == "max_tokens" or "'max_tokens'" in message or "max_tokens" in lowered.replace("max_completion_tokens", "")
            if "max_tokens" in sent and names_max_tokens and (unsupported or "max_completion_tokens" in message):
                self.token_param = "max_completion_tokens"
                self.learnt.append(f"max_completion_tokens instead of max_tokens (server: {message})")
                return True
            # Two tests on purpose: the outer reads the server's complaint, the inner stops a flip back.
            if "max_completion_tokens" in sent and (param == "max_completion_tokens" or "max_completion_tokens" in lowered) and (  # noqa: SIM102
                unsupported or "unrecognized" in lowered or "extra" in lowered or "unknown" in lowered
            ):
                if not any(note.startswith("max_completion_tokens instead") for note in self.learnt):
                    self.token_param = "max_tokens"
                    self.learnt.append(f"max_tokens instead of max_completion_tokens (server: {message})")
                    return True
            if "temperature" in sent and (param == "temperature" or "temperature" in lowered) and unsupported:
                self.send_temperature = False
                self.learnt.append(f"temperature omitted (server: {message})")
                return True
        return False

    def describe(self, config: JudgeConfig) -> dict[str, Any]:
        """What is sent, for the results' judge provenance."""
        with self._lock:
            return {
                "token_limit_parameter": self.token_param,
                "max_tokens": config.max_tokens,
                "temperature": config.temperature if self.send_temperature else "server default (not sent)",
                "learnt_from_server": list(self.learnt),
            }


_PARAMS: dict[tuple[str, str], RequestParams] = {}
_PARAMS_LOCK = threading.Lock()


def request_params(config: JudgeConfig) -> RequestParams:
    """The shared parameters for ``config``'s endpoint and model (created from the known model families)."""
    key = (config.public_base_url, config.model)
    with _PARAMS_LOCK:
        params = _PARAMS.get(key)
        if params is None:
            openai_host = urlsplit(config.public_base_url).hostname == urlsplit(OPENAI_DEFAULT_BASE_URL).hostname
            reasoning = bool(REASONING_MODELS.match(config.model))
            params = RequestParams(
                token_param="max_completion_tokens" if (openai_host or reasoning) else "max_tokens",
                send_temperature=not reasoning,
            )
            _PARAMS[key] = params
        return params


# --------------------------------------------------------------------------------------------------------
# HTTP transport


class OpenAITransport:
    """Chat completions through ``openai.AsyncOpenAI`` (created lazily, inside the running event loop)."""

    def __init__(self, config: JudgeConfig) -> None:
        self.config = config
        self.params = request_params(config)
        self._client: Any = None
        self._secret: str | None = None

    def prepare(self) -> None:
        """Import ``openai`` and build the HTTP client now, so that this is not timed as a request."""
        self._ensure_client()

    def _ensure_client(self) -> Any:
        if self._client is None:
            try:
                from openai import AsyncOpenAI
            except ImportError:
                raise JudgeConfigError("the judge needs the 'openai' package: pip install 'openai>=1.40'") from None

            # httpx logs every request URL at INFO; a base URL may carry a key in its query string, and a
            # line per request is noise in an evaluation log anyway.
            for name in ("httpx", "httpx2"):
                logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))

            self._secret = self.config.resolved_api_key()
            self._client = AsyncOpenAI(
                api_key=self._secret,
                base_url=self.config.base_url,
                max_retries=0,
                timeout=self.config.timeout,
            )
        return self._client

    async def __call__(self, messages: list[dict[str, str]]) -> Completion:
        import openai

        client = self._ensure_client()
        where = self.config.public_base_url
        model = self.config.model
        for _ in range(4):  # at most one adaptation per parameter, plus the final answer
            arguments = self.params.arguments(self.config)
            try:
                raw = await client.chat.completions.with_raw_response.create(model=model, messages=messages, **arguments)
                response = raw.parse()
            except openai.AuthenticationError as error:
                raise JudgeConfigError(f"the judge endpoint {where} rejected the API key (401: {_message(error, self._secret)}): set a valid MEDBENCH_JUDGE_API_KEY") from None
            except openai.PermissionDeniedError as error:
                raise JudgeConfigError(f"the judge endpoint {where} denied access to model {model!r} (403: {_message(error, self._secret)}): check the key's permissions") from None
            except openai.NotFoundError as error:
                raise JudgeConfigError(f"the judge endpoint {where} has no model {model!r} or no chat API (404: {_message(error, self._secret)}): fix MEDBENCH_JUDGE_MODEL / MEDBENCH_JUDGE_BASE_URL") from None
            except openai.RateLimitError as error:
                headers = _headers(error)
                if getattr(error, "code", None) == "insufficient_quota":
                    raise JudgeConfigError(f"the judge endpoint {where} says the account has no quota left (429: {_message(error, self._secret)}): add credit or use another key") from None
                raise RetryableError("429 rate limited", retry_delay(headers), kind="rate_limit", headers=headers) from None
            except openai.APITimeoutError:
                raise RetryableError("timeout", kind="timeout") from None
            except openai.APIConnectionError:
                raise RetryableError("connection error", kind="connection") from None
            except (openai.BadRequestError, openai.UnprocessableEntityError) as error:
                # FastAPI-based servers (vLLM, TGI) reject an unknown parameter with 422 rather than 400.
                if self.params.adapt(_Rejection(_message(error, self._secret), error), arguments):
                    logger.info("judge model %s: adapting request parameters (%s)", model, _message(error, self._secret))
                    continue
                raise JudgeFailure(f"request rejected ({error.status_code}: {_message(error, self._secret)})") from None
            except openai.APIStatusError as error:
                if error.status_code >= 500 or error.status_code in (408, 409):
                    headers = _headers(error)
                    raise RetryableError(f"{error.status_code} server error", retry_delay(headers), kind="server", headers=headers) from None
                raise JudgeFailure(f"request rejected ({error.status_code}: {_message(error, self._secret)})") from None
            except (openai.APIResponseValidationError, ValueError, TypeError):
                raise RetryableError("malformed response body", kind="malformed") from None
            return _completion_from(response, dict(raw.headers))
        raise JudgeFailure("request rejected (400): the server kept refusing the adapted parameters")

    async def aclose(self) -> None:
        """Close the HTTP client (call from the loop that created it)."""
        if self._client is not None:
            await self._client.close()
            self._client = None


@dataclass(frozen=True)
class _Rejection:
    """A 400/422 as :meth:`RequestParams.adapt` reads it: the readable message, and OpenAI's param and code."""

    message: str
    error: Any

    @property
    def param(self) -> str:
        return str(getattr(self.error, "param", "") or "")

    @property
    def code(self) -> str:
        return str(getattr(self.error, "code", "") or "")


def _message(error: Any, secret: str | None = None) -> str:
    """The server's own error message, on one line, bounded, and without the API key (servers echo it).

    Reads OpenAI's ``{"error": {"message"}}`` and FastAPI's ``{"detail": [{"loc", "msg"}]}`` (vLLM, TGI, ...).
    """
    body = getattr(error, "body", None)
    message = body.get("message") if isinstance(body, dict) else None
    detail = body.get("detail") if isinstance(body, dict) else None
    if message is None and isinstance(detail, list):
        parts = [
            f"{'.'.join(str(p) for p in entry.get('loc', []) if p != 'body')}: {entry.get('msg')}".lstrip(": ")
            for entry in detail if isinstance(entry, dict)
        ]
        message = "; ".join(parts) or None
    elif message is None and isinstance(detail, str):
        message = detail
    text = str(message or getattr(error, "message", "") or error)
    text = redact(" ".join(text.split()), secret)
    return text if len(text) <= 300 else text[:297] + "..."


def redact(text: str, secret: str | None) -> str:
    """``text`` with the API key (or a 12+ character prefix or suffix of it a server echoed) replaced by ``***``."""
    if not secret or len(secret) < 12:
        return text
    if secret in text:
        return text.replace(secret, "***")
    for width in range(len(secret) - 1, 11, -1):  # a server that quotes a prefix or suffix of the key
        for piece in {secret[:width], secret[-width:]}:
            if piece in text:
                return text.replace(piece, "***")
    return text


def _headers(error: Any) -> dict[str, str]:
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    return dict(headers) if headers is not None else {}


def _completion_from(response: Any, headers: Mapping[str, str] | None = None) -> Completion:
    error = getattr(response, "error", None)  # some proxies answer 200 with OpenAI's error object
    if error is not None and not getattr(response, "choices", None):
        message = error.get("message") if isinstance(error, dict) else getattr(error, "message", error)
        raise RetryableError(f"200 with an error body ({' '.join(str(message).split())[:200]})", kind="server")
    try:
        choice = response.choices[0]
        text = choice.message.content
    except (AttributeError, IndexError, TypeError):
        raise RetryableError("malformed response body", kind="malformed") from None
    if not text and getattr(choice, "finish_reason", None) == "length":
        raise JudgeFailure(
            "answer cut off at the token limit before any text (reasoning models spend tokens thinking): raise MEDBENCH_JUDGE_MAX_TOKENS"
        )
    if not isinstance(text, str):
        raise RetryableError("malformed response body (no message content)", kind="malformed")
    usage = getattr(response, "usage", None)
    return Completion(
        text=text,
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        headers=headers,
    )


# --------------------------------------------------------------------------------------------------------
# Run health: the circuit breakers


SERVER_ERROR_STREAK = 40  # twice the in-flight maximum of a default run: an outage, not bad luck


class RunHealth:
    """Stops a run that cannot work, instead of retrying it sample by sample.

    * no request has succeeded and ``fail_fast_after`` connection errors / timeouts happened;
    * no request has succeeded and the last ``fail_fast_after`` rejections (400) carry the same message;
    * more than ``parse_failure_threshold`` of the last ``parse_check_window`` answers did not parse;
    * :data:`SERVER_ERROR_STREAK` server errors (5xx, a 200 with an error body, malformed bodies) in a row
      with no answer in between: a server failing everything is not retried sample by sample.
    """

    def __init__(self, config: JudgeConfig) -> None:
        self.config = config
        self.succeeded = 0
        self.unreachable: dict[str, int] = {}
        self.rejections: deque[str] = deque(maxlen=max(1, config.fail_fast_after))
        self.answers: deque[bool] = deque(maxlen=max(1, config.parse_check_window))
        self.example: str | None = None
        self.example_reason: str | None = None
        self.server_errors: dict[str, int] = {}  # the current streak of server errors, by reason

    def success(self) -> None:
        self.succeeded += 1
        self.server_errors.clear()

    def transport_failure(self, error: RetryableError) -> None:
        if error.kind in ("server", "malformed"):
            self.server_errors[str(error)] = self.server_errors.get(str(error), 0) + 1
            streak = sum(self.server_errors.values())
            if streak >= SERVER_ERROR_STREAK:
                seen = ", ".join(f"{reason} ×{count}" for reason, count in self.server_errors.items())
                raise JudgeAbort(
                    f"the judge at {self.config.public_base_url} failed {streak} requests in a row ({seen}) with no answer "
                    "in between: check the server, then run the same command again to resume"
                )
        if self.succeeded or error.kind not in ("connection", "timeout"):
            return
        self.unreachable[str(error)] = self.unreachable.get(str(error), 0) + 1
        total = sum(self.unreachable.values())
        if total >= self.config.fail_fast_after:
            seen = ", ".join(f"{reason} ×{count}" for reason, count in self.unreachable.items())
            raise JudgeAbort(
                f"cannot reach the judge at {self.config.public_base_url}: {total} attempts failed ({seen}) and none has "
                "succeeded: start the server or fix MEDBENCH_JUDGE_BASE_URL"
            )

    def rejected(self, reason: str) -> None:
        if self.succeeded:
            return
        self.rejections.append(reason)
        if len(self.rejections) == self.rejections.maxlen and len(set(self.rejections)) == 1:
            raise JudgeAbort(
                f"the judge at {self.config.public_base_url} rejected every request, model {self.config.model!r}: {reason}"
            )

    def answer(self, parsed: bool, raw: str = "", reason: str = "") -> None:
        self.answers.append(parsed)
        if not parsed and self.example is None:
            self.example, self.example_reason = raw, reason
        window = self.answers.maxlen or 1
        bad = self.answers.count(False)
        if len(self.answers) == window and bad / window > self.config.parse_failure_threshold:
            example = " ".join((self.example or "").split())
            example = example if len(example) <= 160 else example[:157] + "..."
            raise JudgeAbort(
                f"the judge {self.config.model!r} gave {bad} unparseable answers in its last {window} "
                f"({self.example_reason}), e.g. {example!r}: use a model that follows the prompt, or check the prompt"
            )


def summarize_attempts(reasons: Iterable[str]) -> str:
    """``"429 rate limited ×3; 500 server error; unparseable answer (...)"`` - consecutive repeats grouped."""
    groups: list[list[Any]] = []
    for reason in reasons:
        if groups and groups[-1][0] == reason:
            groups[-1][1] += 1
        else:
            groups.append([reason, 1])
    return "; ".join(reason if count == 1 else f"{reason} ×{count}" for reason, count in groups)


async def gather_or_cancel(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """``asyncio.gather`` that, when one raises, cancels and awaits all the others before re-raising."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


# --------------------------------------------------------------------------------------------------------
# The client


class JudgeClient(Generic[T]):
    """Asks versioned prompts, validates answers, caches the good ones, retries the rest.

    Use ``async with JudgeClient(config) as client:`` (or call :meth:`aclose`) inside one event loop.

    Args:
        config: Judge configuration.
        cache: Answer cache (default: the configured SQLite file, or memory).
        transport: Request sender (default :class:`OpenAITransport`); tests inject fakes here.
        sleep: Coroutine used for backoff delays (injectable so tests need not wait).
        on_usage: Called with ``(prompt_tokens, completion_tokens)`` after each live answer (lmms-eval's
            usage tracker hooks in here so judge tokens appear in its results).
        seed: Seed of the jitter.
        rate: A rate controller to go on with (what an earlier client in this event loop learned about the
            server's limits); default: a new one.
    """

    def __init__(
        self,
        config: JudgeConfig,
        cache: JudgeCache | None = None,
        transport: Transport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_usage: Callable[[int, int], None] | None = None,
        seed: int = 0,
        rate: RateController | None = None,
    ) -> None:
        self.config = config
        self._on_usage = on_usage
        self.cache = cache if cache is not None else JudgeCache(config.cache_path)
        self.transport = transport if transport is not None else OpenAITransport(config)
        self.stats = JudgeStats()
        self._sleep = sleep
        self._inflight: dict[str, asyncio.Future] = {}
        self._rng = random.Random(seed)
        self.rate = rate if rate is not None else RateController(config.concurrency, adaptive=config.adaptive_rate,
                                                                 rng=self._rng.random)
        self.health = RunHealth(config)
        self._abort: JudgeAbort | None = None
        self._prepared = False

    async def __aenter__(self) -> JudgeClient[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def provenance(self) -> dict[str, Any]:
        """What requests carried (token-limit parameter, temperature, what the server taught), for results."""
        params = getattr(self.transport, "params", None)
        described = params.describe(self.config) if isinstance(params, RequestParams) else {}
        return {**described, "rate_control": self.rate.describe()}

    async def attempt(self, prompt: PromptSpec, values: dict[str, object], parse: Callable[[str], T]) -> Outcome[T]:
        """Like :meth:`ask`, but a failed request comes back as ``Outcome(failure=reason)``.

        Raises:
            JudgeAbort: The run cannot continue.
        """
        try:
            return Outcome(value=await self.ask(prompt, values, parse))
        except JudgeFailure as error:
            return Outcome(failure=str(error))

    async def ask(self, prompt: PromptSpec, values: dict[str, object], parse: Callable[[str], T]) -> T:
        """Get ``parse(answer)`` for ``prompt`` filled with ``values``.

        The same request asked concurrently is sent once (single flight); a cached answer is not sent at all.

        Args:
            prompt: The versioned prompt.
            values: Placeholder values.
            parse: Turns the answer text into a value; raises ``ValueError`` when the answer is unusable
                (the request is then re-asked up to ``max_parse_retries`` times, and the answer is never
                cached as an answer).

        Raises:
            JudgeFailure: No usable answer after the allowed retries (or a non-retryable request error).
            JudgeAbort: The run cannot continue (bad key, unreachable URL, ...).
        """
        messages = prompt.render(**values)
        key = cache_key(self.config.model, prompt.ident, prompt.sha256, messages)
        cached = self.cache.get(key)
        if cached is not None:
            try:
                value = parse(cached.text)
            except ValueError:
                pass  # stored by an older parser that accepted it; ask again
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

    def _stop(self, error: JudgeAbort) -> JudgeAbort:
        if self._abort is None:
            self._abort = error
        return self._abort

    async def _send(self, messages: list[dict[str, str]]) -> tuple[Completion | None, RetryableError | None]:
        if self._abort is not None:
            raise self._abort
        if not self._prepared:
            prepare = getattr(self.transport, "prepare", None)
            if prepare is not None:
                prepare()  # the first import of openai takes seconds on a busy machine: not a request timeout
            self._prepared = True
        ticket = await self.rate.acquire()
        rate_limited = succeeded = False
        try:
            if self._abort is not None:
                raise self._abort
            self.stats.requests += 1
            try:
                completion = await asyncio.wait_for(self.transport(messages), timeout=self.config.timeout * 1.5)
            except asyncio.TimeoutError:
                return None, RetryableError("timeout", kind="timeout")
            except RetryableError as error:
                rate_limited = error.kind == "rate_limit"
                self.rate.observe(error.headers, ticket=ticket)
                return None, error
            except JudgeAbort as error:
                raise self._stop(error) from None
            succeeded = True
            self.rate.observe(completion.headers, completion.prompt_tokens + completion.completion_tokens, ticket)
            return completion, None
        finally:
            self.rate.release(ticket, rate_limited=rate_limited, succeeded=succeeded)

    def _scope(self) -> str:
        from medbench import __version__

        return f"{self.config.scoring}|{__version__}"

    async def _fetch(self, prompt: PromptSpec, key: str, messages: list[dict[str, str]], parse: Callable[[str], T]) -> T:
        scope = self._scope()
        recorded = self.cache.failure(key, scope)
        if recorded is not None and recorded.attempts > self.config.max_parse_retries and not self.config.retry_unparseable:
            self.stats.skipped_unparseable += 1
            self.stats.failures += 1
            self._count("unparseable in an earlier run")
            raise JudgeFailure(
                f"{prompt.ident}: earlier runs got {recorded.attempts} unparseable answer(s) ({recorded.reason}); "
                "not asked again (pass --retry-unparseable / MEDBENCH_JUDGE_RETRY_UNPARSEABLE=1)"
            )
        attempts: list[str] = []
        transport_retries = rate_retries = parse_failures = 0
        while True:
            try:
                completion, error = await self._send(messages)
            except Queued as queued:
                self.stats.requests -= 1  # nothing was sent
                raise JudgeFailure(f"{prompt.ident}: {queued}") from None
            except JudgeFailure as failure:
                attempts.append(str(failure))
                self._count(str(failure))
                self.stats.failures += 1
                try:
                    self.health.rejected(str(failure))
                except JudgeAbort as abort:
                    raise self._stop(abort) from None
                raise JudgeFailure(f"{prompt.ident}: {self._attempts_text(attempts)}") from None
            if error is not None:
                attempts.append(str(error))
                self._count(str(error))
                try:
                    self.health.transport_failure(error)
                except JudgeAbort as abort:
                    raise self._stop(abort) from None
                if error.kind == "rate_limit":
                    self.stats.rate_limited += 1
                    rate_retries += 1
                    exhausted = rate_retries > self.config.max_rate_limit_retries
                else:
                    transport_retries += 1
                    exhausted = transport_retries > self.config.max_retries
                if exhausted:
                    break
                self.stats.retries += 1
                await self._sleep(self._delay(error, transport_retries if error.kind != "rate_limit" else rate_retries))
                continue
            assert completion is not None
            self.health.success()
            self.stats.prompt_tokens += completion.prompt_tokens
            self.stats.completion_tokens += completion.completion_tokens
            if self._on_usage is not None:
                self._on_usage(completion.prompt_tokens, completion.completion_tokens)
            try:
                value = parse(completion.text)
            except ValueError as problem:
                reason = f"unparseable answer ({problem})"
                attempts.append(reason)
                self._count(reason)
                self.stats.unparseable += 1
                self.cache.record_failure(key, scope, reason, completion.text)
                try:
                    self.health.answer(False, completion.text, reason)
                except JudgeAbort as abort:
                    raise self._stop(abort) from None
                parse_failures += 1
                if parse_failures > self.config.max_parse_retries:
                    break
                self.stats.retries += 1
                continue
            self.health.answer(True)
            self.stats.answered += 1
            self.cache.put(
                key,
                model=self.config.model,
                prompt=prompt.ident,
                answer=CachedAnswer(completion.text, completion.prompt_tokens, completion.completion_tokens),
            )
            if parse_failures or recorded is not None:
                self.cache.clear_failures(key)
            return value
        self.stats.failures += 1
        raise JudgeFailure(f"{prompt.ident}: {self._attempts_text(attempts)}")

    @staticmethod
    def _attempts_text(attempts: list[str]) -> str:
        if len(attempts) == 1:
            return attempts[0]
        return f"no usable answer after {len(attempts)} attempts: {summarize_attempts(attempts)}"

    def _delay(self, error: RetryableError, retry: int) -> float:
        """Server-given delay (shared pause, jittered) or capped exponential backoff with full jitter."""
        if error.retry_after is not None:
            hint = min(self.config.backoff_max, max(0.0, error.retry_after))
            if error.kind == "rate_limit" and self.config.adaptive_rate:
                self.rate.pause(hint)  # every new request waits, not only this one
            return hint * (1.0 + 0.5 * self._rng.random())
        ceiling = min(self.config.backoff_max, self.config.backoff_base * (2 ** max(0, retry - 1)))
        return ceiling * self._rng.random()

    def _count(self, reason: str) -> None:
        short = reason.split(" (")[0]
        self.stats.errors[short] = self.stats.errors.get(short, 0) + 1
        logger.debug("judge request problem: %s", short)

    async def aclose(self) -> None:
        """Release the transport's HTTP resources."""
        closer = getattr(self.transport, "aclose", None)
        if closer is not None:
            await closer()
