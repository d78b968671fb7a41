"""Test double: a loopback OpenAI-compatible chat server with a deterministic fake judge and fault injection.

It lives in ``tests/`` (not in the package) because it answers by reading medbench's own prompt wording:
it is a test double, not a judge. The test suite and ``benchmarks/bench_judge.py`` start it on
``127.0.0.1`` and point ``MEDBENCH_JUDGE_BASE_URL`` at it. It answers medbench's prompts plausibly
(sentence splitting for facts/claims, word overlap for NLI labels), and can be told to fail:

* ``"429"`` / ``"500"``: an HTTP error with an OpenAI-style error body;
* ``"hang"``: hold the request open (until the client times out or the server stops);
* ``"garbage"``: HTTP 200 with a body that is not JSON;
* ``"wrong_count"``: a well-formed completion whose label list is one short (other prompts get prose);
* ``"401"``: an authentication error that quotes the key it was sent (as some proxies do), ``"400"``:
  OpenAI's context-length rejection, ``"error200"``: HTTP 200 whose body is an OpenAI error object (never
  drawn at random unless listed in ``faults``; script them).

Faults come from a scripted queue (``script``), then from a seeded failure rate (``failure_rate``).
Besides faults it can behave like a real endpoint in two ways, with OpenAI's exact error bodies:

* ``reasoning=True``: like GPT-5 / the o-series - ``max_tokens`` is rejected (400 ``unsupported_parameter``)
  and any ``temperature`` other than 1 too (400 ``unsupported_value``);
* ``rate_limit=20``: a token bucket of that many requests per second (capacity ``burst``); above it, 429
  with OpenAI's body and ``retry-after``, ``retry-after-ms`` and ``x-ratelimit-*`` headers, which every
  answered request carries as well. With ``per_minute_headers=True`` the headers describe the budget as
  OpenAI does (requests per minute: limit ``60 * rate``, the remaining part of that minute's budget, and
  the time until it is full again) while the small bucket still decides - so ``remaining`` stays high
  right up to the 429, and only ``(limit - remaining) / reset`` tells the rate.

Every request is recorded (a hash of its messages, the fault applied, the request body, the time) so tests
can check what was sent. Run it by hand with ``python tests/judge_server.py --port 8000``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

FAULTS = ("429", "500", "hang", "garbage", "wrong_count")
_WORD = re.compile(r"[a-z0-9]+")
_STOP = {"the", "a", "an", "is", "are", "of", "in", "on", "and", "or", "with", "there", "this", "be", "seen", "to", "at"}
_SWAPS = {"left": "right", "right": "left", "no": "", "enlarged": "normal", "normal": "enlarged"}


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server saw."""

    key: str
    role: str
    fault: str | None
    messages: tuple = ()
    body: dict | None = None
    status: int = 200
    at: float = 0.0


def request_key(messages: list[dict]) -> str:
    """Hash of a request's messages (the same request always hashes the same)."""
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def fake_judge_answer(messages: list[dict], *, wrong_count: bool = False) -> tuple[str, str]:
    """Answer a medbench judge prompt deterministically. Returns ``(role, answer text)``."""
    user = messages[-1]["content"] if messages else ""
    if "HYPOTHESES:" in user and "PREMISE:" in user:
        premise = user.split("PREMISE:", 1)[1].split("HYPOTHESES:", 1)[0]
        hypotheses = json.loads(user.split("HYPOTHESES:", 1)[1].strip())
        labels = [f"{i}. {_label(premise, h)}" for i, h in enumerate(hypotheses, start=1)]
        if wrong_count:
            labels = labels[:-1]
        return "nli", json.dumps(labels)
    if "GENERATED:" in user and "REFERENCE:" in user:
        reference = user.split("REFERENCE:", 1)[1].split("GENERATED:", 1)[0]
        generated = user.split("GENERATED:", 1)[1]
        grade = _severity(reference, generated)
        return "severity", "I am not sure." if wrong_count else json.dumps({"severity": grade, "reason": "fake judge"})
    if "Text:" in user:
        role = "claims" if "atomic claims" in user else "facts"
        text = user.rsplit("Text:", 1)[1]
        sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if len(_words(s)) > 0]
        if wrong_count:
            return role, "Sorry, I cannot split this text."
        return role, json.dumps([f"{i}. {s}" for i, s in enumerate(sentences, start=1)])
    return "other", "Hello from the medbench loopback judge."


def _words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


def _label(premise: str, hypothesis: str) -> str:
    hypothesis = re.sub(r"^\s*\d+\.\s*", "", hypothesis)
    premise_words = set(_words(premise))
    words = _words(hypothesis)
    if not words:
        return "Neutral"
    for word in words:
        swapped = _SWAPS.get(word)
        if swapped and swapped in premise_words and word not in premise_words:
            return "Contradiction"
    overlap = sum(w in premise_words for w in words) / len(words)
    if overlap == 1.0:
        return "Entailment"
    if overlap >= 0.5:
        return "Partial Entailment"
    return "Neutral"


def _severity(reference: str, generated: str) -> str:
    ref, gen = set(_words(reference)), set(_words(generated))
    if any(_SWAPS.get(w) and _SWAPS[w] in ref and w not in ref for w in gen):
        return "severe"
    return "none" if gen <= ref else "minor"


# OpenAI's exact error bodies (December 2026) for the parameters reasoning models refuse, and for a 429.
MAX_TOKENS_REJECTION = {
    "error": {
        "message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": "unsupported_parameter",
    }
}
CONTEXT_LENGTH_BODY = {
    "error": {
        "message": "This model's maximum context length is 8192 tokens. However, your messages resulted in 9001 tokens. "
        "Please reduce the length of the messages.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}
RATE_LIMIT_BODY = {
    "error": {
        "message": "Rate limit reached for gpt-4.1-mini in organization org-loopback on requests per min (RPM): "
        "Limit 1200, Used 1200, Requested 1. Please try again in 50ms. Visit https://platform.openai.com/account/rate-limits to learn more.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}


def temperature_rejection(value: object) -> dict:
    return {
        "error": {
            "message": f"Unsupported value: 'temperature' does not support {value} with this model. Only the default (1) value is supported.",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "unsupported_value",
        }
    }


def reasoning_rejection(request: dict) -> dict | None:
    """What GPT-5 answers to a request carrying ``max_tokens`` or a non-default ``temperature`` (else ``None``)."""
    if "max_tokens" in request:
        return MAX_TOKENS_REJECTION
    if "temperature" in request and request["temperature"] != 1:
        return temperature_rejection(request["temperature"])
    return None


def openai_duration(seconds: float) -> str:
    """Seconds in OpenAI's reset format: ``"120ms"``, ``"1.5s"``, ``"6m0s"``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog (5) drops connections under 16-way concurrency

    def handle_error(self, request: object, client_address: object) -> None:
        return None  # a client that hangs up (a stopped run closing its connections) is not a server error


class LoopbackJudgeServer:
    """Threaded loopback server; use as a context manager.

    Args:
        latency: Seconds each answered request waits before replying (simulates a remote model).
        failure_rate: Probability that a request gets a random fault from ``faults``.
        faults: Faults drawn when ``failure_rate`` fires.
        script: Faults (or ``None`` for a normal answer) applied to the first requests, in order.
        seed: Seed of the fault draws.
        hang_seconds: How long a ``hang`` holds the request at most.
        answer: Function ``messages -> (role, text)`` replacing the fake judge.
        port: Port to listen on (0 picks a free one).
        reasoning: Behave like GPT-5 / o-series about ``max_tokens`` and ``temperature``.
        rate_limit: Requests per second of a token bucket (``None``: unlimited).
        burst: Bucket capacity (default: one second's worth).
        whole_second_retry_after: Send ``retry-after`` rounded up to whole seconds (as OpenAI does), beside
            the precise ``retry-after-ms``.
        limit_headers: Send the ``x-ratelimit-*`` headers (``False``: only the 429's retry headers).
        per_minute_headers: Report the budget per minute (OpenAI's RPM headers) instead of the bucket's.
        fastapi_strict: Reject ``max_completion_tokens`` as an unknown field with FastAPI's 422 body (older vLLM).
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        failure_rate: float = 0.0,
        faults: Iterable[str] = FAULTS,
        script: Iterable[str | None] = (),
        seed: int = 0,
        hang_seconds: float = 30.0,
        answer: Callable[[list[dict]], tuple[str, str]] | None = None,
        port: int = 0,
        reasoning: bool = False,
        rate_limit: float | None = None,
        burst: float | None = None,
        whole_second_retry_after: bool = True,
        limit_headers: bool = True,
        per_minute_headers: bool = False,
        fastapi_strict: bool = False,
    ) -> None:
        self.port = port
        self.latency = latency
        self.failure_rate = failure_rate
        self.faults = tuple(faults)
        self.script = list(script)
        self.hang_seconds = hang_seconds
        self.answer = answer
        self.reasoning = reasoning
        self.rate_limit = rate_limit
        self.burst = burst if burst is not None else (rate_limit or 0)
        self.whole_second_retry_after = whole_second_retry_after
        self.limit_headers = limit_headers
        self.per_minute_headers = per_minute_headers
        self.fastapi_strict = fastapi_strict
        self._tokens = self.burst
        self._minute_tokens = 60.0 * (rate_limit or 0)  # the per-minute budget the headers describe
        self._refilled = time.monotonic()
        self.requests: list[RecordedRequest] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.batch_api = BatchAPI(self)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``."""
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def environment(self) -> dict[str, str]:
        """The ``MEDBENCH_JUDGE_*`` settings that point medbench's judge at this server (no cache, no bar)."""
        return {
            "MEDBENCH_JUDGE_MODEL": "loopback-judge",
            "MEDBENCH_JUDGE_BASE_URL": self.base_url,
            "MEDBENCH_JUDGE_CACHE": "off",
            "MEDBENCH_JUDGE_PROGRESS": "0",
        }

    def start(self) -> LoopbackJudgeServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # header and body are separate writes: avoid the 40 ms delayed-ACK stall

            def log_message(self, format: str, *args: object) -> None:
                return None  # keep test output clean

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.rstrip("/").endswith(("/files", "/batches")):
                    server.batch_api.post(self, body)
                else:
                    server._handle(self, body)

            def do_GET(self) -> None:
                server.batch_api.get(self)

        self._httpd = _Server(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="loopback-judge", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def count(self, fault: str | None = "any") -> int:
        """Requests seen, optionally only those with one fault (``None`` = answered normally)."""
        with self._lock:
            if fault == "any":
                return len(self.requests)
            return sum(r.fault == fault for r in self.requests)

    def statuses(self) -> dict[int, int]:
        """HTTP status -> number of requests answered with it."""
        with self._lock:
            counts: dict[int, int] = {}
            for request in self.requests:
                counts[request.status] = counts.get(request.status, 0) + 1
            return counts

    def _take_token(self) -> tuple[bool, dict]:
        """One request's worth from the bucket; returns (allowed, x-ratelimit headers)."""
        with self._lock:
            now = time.monotonic()
            minute = 60.0 * self.rate_limit
            refill = (now - self._refilled) * self.rate_limit
            self._tokens = min(self.burst, self._tokens + refill)
            self._minute_tokens = min(minute, self._minute_tokens + refill)
            self._refilled = now
            allowed = self._tokens >= 1
            if allowed:
                self._tokens -= 1
                self._minute_tokens -= 1
            wait = 0.0 if allowed else (1 - self._tokens) / self.rate_limit
            capacity, level = (minute, self._minute_tokens) if self.per_minute_headers else (self.burst, self._tokens)
            remaining = max(0, math.floor(level))
            reset = (capacity - level) / self.rate_limit
        headers = {
            "x-ratelimit-limit-requests": str(int(capacity)),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": openai_duration(reset),
            "x-ratelimit-limit-tokens": "10000000",
            "x-ratelimit-remaining-tokens": "9990000",
            "x-ratelimit-reset-tokens": "6ms",
        }
        if not self.limit_headers:
            headers = {}
        if not allowed:
            headers["retry-after-ms"] = str(max(1, round(wait * 1000)))
            headers["retry-after"] = str(max(1, math.ceil(wait))) if self.whole_second_retry_after else f"{wait:.3f}"
        return allowed, headers

    def _next_fault(self) -> str | None:
        with self._lock:
            if self.script:
                return self.script.pop(0)
            if self.failure_rate and self._rng.random() < self.failure_rate:
                return self._rng.choice(self.faults)
            return None

    def _handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            self._respond(handler, body)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _respond(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        try:
            request = json.loads(body)
            messages = request["messages"]
        except (ValueError, KeyError, TypeError):
            self._send(handler, 400, {"error": {"message": "bad request", "type": "invalid_request_error"}})
            return
        limit_headers: dict = {}
        if self.reasoning:
            rejection = reasoning_rejection(request)
            if rejection is not None:
                self._record(request, messages, "other", "reasoning", 400)
                self._send(handler, 400, rejection)
                return
        if self.fastapi_strict and "max_completion_tokens" in request:
            self._record(request, messages, "other", "fastapi", 422)
            self._send(handler, 422, {"detail": [{"type": "extra_forbidden", "loc": ["body", "max_completion_tokens"],
                                                  "msg": "Extra inputs are not permitted", "input": request["max_completion_tokens"]}]})
            return
        if self.rate_limit:
            allowed, limit_headers = self._take_token()
            if not allowed:
                self._record(request, messages, "other", "rate_limit", 429)
                self._send(handler, 429, RATE_LIMIT_BODY, limit_headers)
                return
        fault = self._next_fault()
        role, text = (self.answer or (lambda m: fake_judge_answer(m, wrong_count=fault == "wrong_count")))(messages)
        status = {"400": 400, "401": 401, "429": 429, "500": 500}.get(fault or "", 200)
        key = handler.headers.get("Authorization", "").removeprefix("Bearer ")
        self._record(request, messages, role, fault, status)
        if fault == "hang":
            self._stopping.wait(self.hang_seconds)
            return
        if self.latency:
            time.sleep(self.latency)
        if fault == "401":
            self._send(handler, 401, {"error": {"message": f"Incorrect API key provided: {key}.", "type": "invalid_request_error"}})
        elif fault == "error200":
            self._send(handler, 200, {"error": {"message": "upstream model overloaded", "type": "server_error", "code": 503}})
        elif fault == "429":
            self._send(handler, 429, {"error": {"message": "rate limited", "type": "rate_limit_error"}}, {"Retry-After": "0"})
        elif fault == "400":
            self._send(handler, 400, CONTEXT_LENGTH_BODY)
        elif fault == "500":
            self._send(handler, 500, {"error": {"message": "internal error", "type": "server_error"}})
        elif fault == "garbage":
            self._send_raw(handler, 200, b"<html>upstream exploded", "application/json")
        else:
            prompt_tokens = sum(len(m.get("content", "").split()) for m in messages)
            self._send(
                handler,
                200,
                {
                    "id": "chatcmpl-loopback",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": request.get("model", "loopback"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": len(text.split()),
                        "total_tokens": prompt_tokens + len(text.split()),
                    },
                },
                limit_headers,
            )

    def _record(self, request: dict, messages: list, role: str, fault: str | None, status: int) -> None:
        with self._lock:
            self.requests.append(
                RecordedRequest(request_key(messages), role, fault, tuple(messages), request, status, time.monotonic())
            )

    def _send(self, handler: BaseHTTPRequestHandler, status: int, payload: dict, headers: dict | None = None) -> None:
        self._send_raw(handler, status, json.dumps(payload).encode(), "application/json", headers)

    @staticmethod
    def _send_raw(handler: BaseHTTPRequestHandler, status: int, data: bytes, content_type: str, headers: dict | None = None) -> None:
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            return  # the client gave up (timeout); nothing to answer


class BatchAPI:
    """OpenAI's Batch API on the loopback server: ``/v1/files`` and ``/v1/batches``.

    A batch advances one status per retrieve (``validating`` -> ``in_progress`` -> ``completed``). Its lines
    are answered like chat requests (faults included). Modes, set on the instance before a batch is created:

    * ``expire_after``: only that many lines are answered, the batch ends ``expired`` and the rest appear in
      the error file with code ``batch_expired`` (as OpenAI does);
    * ``fail_every``: every k-th line is answered 400 (OpenAI's context-length body) in the error file;
    * ``status_after_create``: force a terminal status (e.g. ``failed`` with no output file);
    * ``create_delay``: seconds ``POST /v1/batches`` waits *after* creating the batch before it answers (a
      client that times out and retries pays for another batch, as with OpenAI).

    ``GET /v1/batches`` lists batches newest first with OpenAI's cursor pagination (``limit``, ``after``), and
    :meth:`cancel` cancels a batch from outside (someone in the dashboard): the lines answered so far
    (``answer_before_cancel``) land in the output file, the rest in the error file with code
    ``batch_cancelled``.
    """

    def __init__(self, server: LoopbackJudgeServer) -> None:
        self.server = server
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.created = 0
        self.retrieves = 0
        self.expire_after: int | None = None
        self.fail_every: int | None = None
        self.status_after_create: str | None = None
        self.create_delay = 0.0
        self.answer_before_cancel = 0
        self._lock = threading.Lock()

    def cancel(self, batch_id: str) -> None:
        """Cancel a batch from outside, as a person in OpenAI's dashboard would."""
        with self._lock:
            batch = self.batches[batch_id]
            if batch["status"] in ("completed", "expired", "failed", "cancelled"):
                return
            self._finish(batch, answered=self.answer_before_cancel, status="cancelled", code="batch_cancelled",
                         message="The batch was cancelled before this request was executed.")

    def post(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        path = handler.path.rstrip("/")
        if path.endswith("/files"):
            content = _multipart_file(handler.headers.get("Content-Type", ""), body)
            if content is None:
                self.server._send(handler, 400, {"error": {"message": "no file", "type": "invalid_request_error"}})
                return
            with self._lock:
                file_id = f"file-{len(self.files) + 1}"
                self.files[file_id] = content
            self.server._send(handler, 200, _file_object(file_id, len(content), "batch"))
            return
        request = json.loads(body)
        with self._lock:
            source = self.files.get(request.get("input_file_id", ""))
            if source is None or request.get("endpoint") != "/v1/chat/completions":
                self.server._send(handler, 400, {"error": {"message": "bad input_file_id or endpoint", "type": "invalid_request_error"}})
                return
            self.created += 1
            batch_id = f"batch_{self.created}"
            lines = [json.loads(line) for line in source.decode().splitlines() if line.strip()]
            self.batches[batch_id] = {"id": batch_id, "lines": lines, "polls": 0, "status": "validating",
                                      "input_file_id": request["input_file_id"], "metadata": request.get("metadata")}
            payload = self._object(self.batches[batch_id])
        if self.create_delay:
            time.sleep(self.create_delay)  # created, but the answer comes late
        self.server._send(handler, 200, payload)

    def get(self, handler: BaseHTTPRequestHandler) -> None:
        path, _, query = handler.path.partition("?")
        parts = path.rstrip("/").split("/")
        with self._lock:
            if parts[-1] == "batches":
                payload = self._page(dict(pair.split("=", 1) for pair in query.split("&") if "=" in pair))
            elif len(parts) >= 2 and parts[-2] == "batches" and parts[-1] in self.batches:
                self.retrieves += 1
                batch = self.batches[parts[-1]]
                self._advance(batch)
                payload = self._object(batch)
            elif len(parts) >= 3 and parts[-1] == "content" and parts[-2] in self.files:
                data = self.files[parts[-2]]
                self.server._send_raw(handler, 200, data, "application/octet-stream")
                return
            else:
                payload = None
        if payload is None:
            self.server._send(handler, 404, {"error": {"message": f"no such object {handler.path}", "type": "invalid_request_error"}})
        else:
            self.server._send(handler, 200, payload)

    def _page(self, query: dict[str, str]) -> dict:
        newest_first = sorted(self.batches.values(), key=lambda b: int(b["id"].split("_")[1]), reverse=True)
        if "after" in query:
            ids = [b["id"] for b in newest_first]
            newest_first = newest_first[ids.index(query["after"]) + 1 :] if query["after"] in ids else []
        limit = int(query.get("limit", 20))
        page = newest_first[:limit]
        return {"object": "list", "data": [self._object(b) for b in page], "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None, "has_more": len(newest_first) > limit}

    def _advance(self, batch: dict) -> None:
        if batch["status"] in ("completed", "expired", "failed", "cancelled"):
            return
        batch["polls"] += 1
        if batch["polls"] == 1:
            batch["status"] = "in_progress"
            return
        if self.status_after_create:
            batch["status"] = self.status_after_create
            return
        expired = self.expire_after is not None and self.expire_after < len(batch["lines"])
        self._finish(batch, answered=self.expire_after, status="expired" if expired else "completed", code="batch_expired",
                     message="This request could not be executed before the completion window expired.")

    def _finish(self, batch: dict, *, answered: int | None, status: str, code: str, message: str) -> None:
        outputs, errors = [], []
        for index, line in enumerate(batch["lines"], start=1):
            ident = line["custom_id"]
            if answered is not None and index > answered:
                errors.append({"id": f"req_{index}", "custom_id": ident, "response": None, "error": {"code": code, "message": message}})
                continue
            if self.fail_every and index % self.fail_every == 0:
                errors.append({"id": f"req_{index}", "custom_id": ident,
                               "response": {"status_code": 400, "request_id": f"r{index}", "body": CONTEXT_LENGTH_BODY}, "error": None})
                continue
            messages = line["body"]["messages"]
            role, text = (self.server.answer or fake_judge_answer)(messages)
            self.server._record(line["body"], messages, role, "batch", 200)
            outputs.append({"id": f"req_{index}", "custom_id": ident, "error": None, "response": {
                "status_code": 200, "request_id": f"r{index}",
                "body": {"id": f"chatcmpl-b{index}", "object": "chat.completion", "model": line["body"].get("model"),
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split()), "total_tokens": 10 + len(text.split())}}}})
        batch["status"] = status
        for name, rows in (("output_file_id", outputs), ("error_file_id", errors)):
            if rows:
                file_id = f"file-{len(self.files) + 1}"
                self.files[file_id] = "".join(json.dumps(row) + "\n" for row in rows).encode()
                batch[name] = file_id
        batch["counts"] = {"total": len(batch["lines"]), "completed": len(outputs), "failed": len(errors)}

    @staticmethod
    def _object(batch: dict) -> dict:
        counts = batch.get("counts", {"total": len(batch["lines"]), "completed": 0, "failed": 0})
        return {
            "id": batch["id"], "object": "batch", "endpoint": "/v1/chat/completions", "errors": None,
            "input_file_id": batch["input_file_id"], "completion_window": "24h", "status": batch["status"],
            "output_file_id": batch.get("output_file_id"), "error_file_id": batch.get("error_file_id"),
            "created_at": int(time.time()), "request_counts": counts, "metadata": batch.get("metadata"),
        }


def _file_object(file_id: str, size: int, purpose: str) -> dict:
    return {"id": file_id, "object": "file", "bytes": size, "created_at": int(time.time()), "filename": "input.jsonl",
            "purpose": purpose, "status": "processed"}


def _multipart_file(content_type: str, body: bytes) -> bytes | None:
    """The ``file`` part of a multipart/form-data body."""
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "file":
            return part.get_payload(decode=True)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Loopback OpenAI-compatible fake judge (a test double).")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--rate-limit", type=float, default=None)
    parser.add_argument("--reasoning", action="store_true")
    args = parser.parse_args(argv)
    with LoopbackJudgeServer(
        latency=args.latency, failure_rate=args.failure_rate, port=args.port, rate_limit=args.rate_limit, reasoning=args.reasoning
    ) as server:
        print(f"loopback judge at {server.base_url} (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
