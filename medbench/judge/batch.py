"""OpenAI Batch API mode: the same judging, at half the price, answered within 24 hours.

How it works: the runner judges the batch as usual, but with :class:`BatchTransport` instead of HTTP. A
request whose answer is not known yet is queued and fails for now ("queued for the Batch API"); the queued
requests are written as one JSONL file, uploaded (``/v1/files``, purpose ``batch``), and a batch is created
(``/v1/batches``, endpoint ``/v1/chat/completions``). When it finishes, its output and error files are
downloaded, and the runner judges again: answers now come from the batch (and go into the same cache as
live answers), and requests that depend on them (fact labelling after fact extraction) are queued for the
next round. Rounds repeat until nothing is queued.

Resumable: every batch id and every downloaded file is saved in the state folder before anything else
happens, so a killed run picks the same batch up and a finished batch is never paid for twice. An expired
batch's finished requests are kept and only the rest is sent again; requests the batch reports as failed
are recorded as failures (with the server's message), not resent.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from medbench.errors import MedbenchError
from medbench.judge.client import Completion, JudgeConfigError, JudgeFailure, Queued, request_params
from medbench.judge.config import JudgeConfig

TERMINAL = ("completed", "failed", "expired", "cancelled")
STATE_FILE = "state.json"


def custom_id(model: str, messages: list[dict[str, str]]) -> str:
    """The batch line id of one request: a hash of model and messages (the same request, the same id)."""
    payload = json.dumps([model, messages], ensure_ascii=False, sort_keys=True)
    return "mb-" + hashlib.sha256(payload.encode("utf-8")).hexdigest()[:40]


@dataclass
class BatchTransport:
    """A transport answering from finished batches and queueing everything else for the next one."""

    config: JudgeConfig
    answers: dict[str, Completion] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    _used: set[str] = field(default_factory=set)

    async def __call__(self, messages: list[dict[str, str]]) -> Completion:
        ident = custom_id(self.config.model, messages)
        if ident in self.errors:
            raise JudgeFailure(f"batch request failed ({self.errors[ident]})")
        answer = self.answers.get(ident)
        if answer is not None and ident not in self._used:
            self._used.add(ident)  # a second ask (the answer did not parse) goes into the next batch
            return answer
        self.answers.pop(ident, None)
        body = {"model": self.config.model, "messages": messages, **request_params(self.config).arguments(self.config)}
        self.pending[ident] = {"custom_id": ident, "method": "POST", "url": "/v1/chat/completions", "body": body}
        raise Queued("queued for the Batch API")


class BatchState:
    """The state folder: ``state.json`` (batch ids, which requests each holds) and downloaded files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / STATE_FILE
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                raise MedbenchError(f"{self.path} is not JSON: restore it or delete it (unfinished batches are then forgotten)") from None
        else:
            self.data = {"batches": []}

    @property
    def batches(self) -> list[dict[str, Any]]:
        return self.data["batches"]

    def save(self) -> None:
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.data, indent=2) + "\n", encoding="utf-8")
        temporary.replace(self.path)

    def load_results(self) -> tuple[dict[str, Completion], dict[str, str]]:
        """Answers and errors of every downloaded batch."""
        answers: dict[str, Completion] = {}
        errors: dict[str, str] = {}
        for batch in self.batches:
            for name in ("output", "error"):
                path = self.folder / f"{batch['id']}_{name}.jsonl"
                if path.is_file():
                    _parse_lines(path.read_text(encoding="utf-8"), answers, errors)
        for ident in answers:
            errors.pop(ident, None)  # a later batch answered what an earlier one did not
        return answers, errors


def _parse_lines(text: str, answers: dict[str, Completion], errors: dict[str, str]) -> None:
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        ident = record.get("custom_id")
        if not isinstance(ident, str):
            continue
        response = record.get("response") or {}
        body = response.get("body") or {}
        error = record.get("error")
        if response.get("status_code") == 200 and isinstance(body, dict) and body.get("choices"):
            try:
                text_answer = body["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                text_answer = None
            if isinstance(text_answer, str):
                usage = body.get("usage") or {}
                answers[ident] = Completion(
                    text=text_answer,
                    prompt_tokens=int(usage.get("prompt_tokens") or 0),
                    completion_tokens=int(usage.get("completion_tokens") or 0),
                )
                continue
        if isinstance(error, dict) and error.get("code") == "batch_expired":
            continue  # not an answer, not a failure: send it again
        message = (error or {}).get("message") if isinstance(error, dict) else None
        if message is None and isinstance(body, dict):
            message = (body.get("error") or {}).get("message")
        errors[ident] = f"{response.get('status_code', 'error')}: {' '.join(str(message or 'no message').split())[:300]}"


class BatchDriver:
    """Runs judge rounds until nothing is queued, one Batch API job per round.

    Args:
        config: Judge configuration (the endpoint must implement the Batch API).
        state_folder: Where batch ids and downloaded files are kept.
        poll_seconds: Seconds between status checks.
        client: An ``openai.OpenAI``-like client (tests inject one); created from the config by default.
        say: Progress printer.
        max_rounds: Safety bound on rounds (each round depends on the previous one's answers).
    """

    def __init__(
        self,
        config: JudgeConfig,
        state_folder: Path,
        *,
        poll_seconds: float = 30.0,
        client: Any = None,
        say: Callable[[str], None] = print,
        max_rounds: int = 8,
    ) -> None:
        self.config = config
        self.state = BatchState(state_folder)
        self.poll_seconds = poll_seconds
        self._client = client
        self.say = say
        self.max_rounds = max_rounds

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import openai
            except ImportError:
                raise JudgeConfigError("the judge needs the 'openai' package: pip install 'openai>=1.40'") from None
            self._client = openai.OpenAI(
                api_key=self.config.resolved_api_key(), base_url=self.config.base_url, max_retries=3, timeout=self.config.timeout
            )
        return self._client

    def run(self, judge: Callable[[BatchTransport], Any]) -> Any:
        """Call ``judge(transport)`` round after round; returns its last result (nothing left queued)."""
        for _ in range(self.max_rounds):
            answers, errors = self.state.load_results()
            transport = BatchTransport(self.config, answers=answers, errors=errors)
            result = judge(transport)
            if not transport.pending:
                return result
            received = self._complete(transport.pending)
            if not received:
                raise MedbenchError(
                    f"the Batch API returned nothing for {len(transport.pending)} queued request(s): "
                    f"see the batch files in {self.state.folder}"
                )
        raise MedbenchError(f"the judge still had requests queued after {self.max_rounds} Batch API rounds: see {self.state.folder}")

    def _complete(self, pending: dict[str, dict[str, Any]]) -> int:
        """Resume the unfinished batch that holds these requests, or submit a new one; wait; download.

        Returns:
            The number of answers and errors the batch returned.
        """
        batch = next(
            (b for b in self.state.batches if not b.get("downloaded") and set(b["requests"]) & set(pending)),
            None,
        )
        if batch is None:
            batch = self._submit(pending)
        else:
            self.say(f"resuming batch {batch['id']} ({len(batch['requests'])} requests)")
        self._wait_and_download(batch)
        answers: dict[str, Completion] = {}
        errors: dict[str, str] = {}
        for name in ("output", "error"):
            path = self.state.folder / f"{batch['id']}_{name}.jsonl"
            if path.is_file():
                _parse_lines(path.read_text(encoding="utf-8"), answers, errors)
        return len(answers) + len(errors)

    def _submit(self, pending: dict[str, dict[str, Any]]) -> dict[str, Any]:
        lines = "".join(json.dumps(pending[ident], ensure_ascii=False) + "\n" for ident in sorted(pending))
        stamp = time.strftime("%Y%m%dT%H%M%S")
        request_file = self.state.folder / f"requests_{stamp}.jsonl"
        request_file.write_text(lines, encoding="utf-8")
        with _errors(self.config):
            uploaded = self.client.files.create(file=(request_file.name, lines.encode("utf-8")), purpose="batch")
            created = self.client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
                metadata={"source": "medbench judge"},
            )
        batch = {"id": created.id, "input_file_id": uploaded.id, "requests": sorted(pending), "status": created.status,
                 "request_file": request_file.name}
        self.state.batches.append(batch)
        self.state.save()  # before waiting: a killed run resumes this batch instead of paying for a new one
        self.say(f"submitted batch {created.id}: {len(pending)} requests (state in {self.state.folder})")
        return batch

    def _wait_and_download(self, batch: dict[str, Any]) -> None:
        last_line = ""
        while True:
            with _errors(self.config):
                remote = self.client.batches.retrieve(batch["id"])
            counts = getattr(remote, "request_counts", None)
            done = getattr(counts, "completed", 0) or 0
            failed = getattr(counts, "failed", 0) or 0
            total = getattr(counts, "total", 0) or len(batch["requests"])
            line = f"batch {batch['id']}: {remote.status}, {done}/{total} done, {failed} failed"
            if line != last_line:
                self.say(line)
                last_line = line
            batch["status"] = remote.status
            if remote.status in TERMINAL:
                break
            time.sleep(self.poll_seconds)
        for name, file_id in (("output", getattr(remote, "output_file_id", None)), ("error", getattr(remote, "error_file_id", None))):
            if file_id:
                with _errors(self.config):
                    content = self.client.files.content(file_id)
                text = content.text if hasattr(content, "text") else content.read().decode("utf-8")
                (self.state.folder / f"{batch['id']}_{name}.jsonl").write_text(text, encoding="utf-8")
        batch["downloaded"] = True
        self.state.save()
        if remote.status == "failed" and not getattr(remote, "output_file_id", None):
            errors = getattr(getattr(remote, "errors", None), "data", None) or []
            message = "; ".join(str(getattr(e, "message", e)) for e in errors[:3]) or "no reason given"
            raise MedbenchError(f"batch {batch['id']} failed: {message}")
        if remote.status in ("expired", "cancelled"):
            self.say(f"batch {batch['id']} {remote.status}: keeping its {done} answers, sending the rest again")


class _errors:
    """Turn the Batch API's auth/not-found errors into one line."""

    def __init__(self, config: JudgeConfig) -> None:
        self.config = config

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: object) -> bool:
        if error is None:
            return False
        try:
            import openai
        except ImportError:
            return False
        where = self.config.public_base_url
        if isinstance(error, openai.AuthenticationError):
            raise JudgeConfigError(f"the Batch API at {where} rejected the API key (401): set a valid MEDBENCH_JUDGE_API_KEY") from None
        if isinstance(error, openai.NotFoundError):
            raise JudgeConfigError(f"{where} has no Batch API (404): use --batch only with OpenAI or a server that implements /v1/batches") from None
        if isinstance(error, openai.APIStatusError):
            raise MedbenchError(f"the Batch API at {where} refused a call ({error.status_code}): {error.message}") from None
        if isinstance(error, openai.APIConnectionError):
            raise MedbenchError(f"cannot reach the Batch API at {where}: start the server or fix MEDBENCH_JUDGE_BASE_URL") from None
        return False


def state_folder_for(paths: Sequence[Path]) -> Path:
    """``<folder>/medbench_judge_batch`` beside the first samples file or in the first folder given."""
    first = paths[0]
    return (first if first.is_dir() else first.parent) / "medbench_judge_batch"
