"""OpenAI Batch API mode: the same judging, at half the price, answered within 24 hours.

How it works: the runner judges the batch as usual, but with :class:`BatchTransport` instead of HTTP. A
request whose answer is not known yet is queued and fails for now ("queued for the Batch API"); the queued
requests are written as one JSONL file, uploaded (``/v1/files``, purpose ``batch``), and a batch is created
(``/v1/batches``, endpoint ``/v1/chat/completions``). When it finishes, its output and error files are
downloaded, and the runner judges again: answers now come from the batch (and go into the same cache as
live answers), and requests that depend on them (fact labelling after fact extraction) are queued for the
next round. Rounds repeat until nothing is queued.

Resumable and paid once: before a batch is created, its request file, the uploaded file's id and the
intent to create it are saved in the state folder; creation is never retried blindly (a late answer to a
create call still created a batch); a run that finds an intent without a batch id first lists the remote
batches and adopts the one made from that input file. Every batch id and every downloaded file is saved
before anything else happens, so a killed run picks the same batch up and a finished batch is never paid
for twice. An expired batch's finished requests are kept and only the rest is sent again; a cancelled or
failed batch's unanswered requests are sent again in a new batch once (a request lost twice is recorded
as a failure); requests the batch reports as failed are recorded as failures (with the server's message),
and sent again only with ``retry_failed`` (``--retry-failed``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbench.errors import MedbenchError
from medbench.judge.client import Completion, JudgeConfigError, JudgeFailure, Queued, redact, request_params
from medbench.judge.config import JudgeConfig

TERMINAL = ("completed", "failed", "expired", "cancelled")
LOST = ("failed", "cancelled")  # statuses whose unanswered requests are sent again once
STATE_FILE = "state.json"
NOT_RUN_CODES = ("batch_expired", "batch_cancelled")  # error lines for requests the batch never executed


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

    def created(self) -> list[dict[str, Any]]:
        """The batches that exist remotely (an intent whose creation is unconfirmed has no id yet)."""
        return [batch for batch in self.batches if batch.get("id")]

    def lost_twice(self, answered: set[str]) -> dict[str, str]:
        """Requests left unanswered by two cancelled or failed batches -> the reason they are not sent again."""
        seen: dict[str, list[str]] = {}
        for batch in self.created():
            if batch.get("status") in LOST and batch.get("downloaded"):
                for ident in batch["requests"]:
                    if ident not in answered:
                        seen.setdefault(ident, []).append(f"{batch['id']} {batch['status']}")
        return {ident: f"lost by two batches ({', '.join(where)}); not sent again" for ident, where in seen.items() if len(where) >= 2}

    def load_results(self) -> tuple[dict[str, Completion], dict[str, str]]:
        """Answers and errors of every downloaded batch."""
        answers: dict[str, Completion] = {}
        errors: dict[str, str] = {}
        for batch in self.created():
            for name in ("output", "error"):
                path = self.folder / f"{batch['id']}_{name}.jsonl"
                if path.is_file():
                    _parse_lines(path.read_text(encoding="utf-8"), answers, errors)
        for ident in answers:
            errors.pop(ident, None)  # a later batch answered what an earlier one did not
        return answers, errors


def _parse_lines(text: str, answers: dict[str, Completion], errors: dict[str, str]) -> None:
    # Not iter_json_records, which stops at the first bad line: a line of the provider's download that is not
    # JSON leaves its request unanswered, and an unanswered request is asked again in the next batch.
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
        if isinstance(error, dict) and error.get("code") in NOT_RUN_CODES:
            continue  # never executed: not an answer, not a failure; send it again
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
        retry_failed: Send again, once, the requests earlier batches reported as failed.
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
        retry_failed: bool = False,
    ) -> None:
        self.config = config
        self.state = BatchState(state_folder)
        self.poll_seconds = poll_seconds
        self._client = client
        self.say = say
        self.max_rounds = max_rounds
        self.retry_failed = retry_failed

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import openai
            except ImportError:
                raise JudgeConfigError("the judge needs the 'openai' package: pip install 'openai>=1.40'") from None
            # Retries are safe for reads and uploads (an extra file costs nothing); batch creation opts out.
            self._client = openai.OpenAI(
                api_key=self.config.resolved_api_key(), base_url=self.config.base_url, max_retries=3, timeout=self.config.timeout
            )
        return self._client

    def run(self, judge: Callable[[BatchTransport], Any]) -> Any:
        """Call ``judge(transport)`` round after round; returns its last result (nothing left queued).

        Raises:
            MedbenchError: The Batch API cannot finish the work; ``partial`` holds the last round's result
                (requests still queued are unscored there), so the caller can write what exists.
        """
        result = None
        for round_number in range(self.max_rounds):
            answers, errors = self.state.load_results()
            if self.retry_failed and round_number == 0 and errors:
                self.say(f"--retry-failed: sending {len(errors)} request(s) that failed in earlier batches again")
                errors = {}
            errors.update(self.state.lost_twice(set(answers)))
            transport = BatchTransport(self.config, answers=answers, errors=errors)
            result = judge(transport)
            if not transport.pending:
                return result
            try:
                received = self._complete(transport.pending)
            except MedbenchError as stop:
                stop.partial = result  # type: ignore[attr-defined]
                raise
            if not received and not self._lost(transport.pending):
                stop = MedbenchError(
                    f"the Batch API returned nothing for {len(transport.pending)} queued request(s): "
                    f"see the batch files in {self.state.folder}"
                )
                stop.partial = result  # type: ignore[attr-defined]
                raise stop
        stop = MedbenchError(f"the judge still had requests queued after {self.max_rounds} Batch API rounds: see {self.state.folder}")
        stop.partial = result  # type: ignore[attr-defined]
        raise stop

    def _lost(self, pending: dict[str, dict[str, Any]]) -> bool:
        """Whether the last batch of these requests was cancelled or failed (they are then sent again once)."""
        last = [b for b in self.state.created() if set(b["requests"]) & set(pending)]
        return bool(last) and last[-1].get("status") in LOST

    def billing(self) -> dict[str, Any]:
        """What every batch of this state folder was billed (all rounds, all runs): tokens and cost at half price."""
        prompt = completion = 0
        for batch in self.state.created():
            path = self.state.folder / f"{batch['id']}_output.jsonl"
            if path.is_file():
                answers: dict[str, Completion] = {}
                _parse_lines(path.read_text(encoding="utf-8"), answers, {})
                prompt += sum(a.prompt_tokens for a in answers.values())
                completion += sum(a.completion_tokens for a in answers.values())
        price = self.config.price()
        cost = None if price is None else 0.5 * (prompt * price.input + completion * price.output) / 1_000_000
        return {"batch_api": True, "batches": len(self.state.created()), "batch_prompt_tokens": prompt,
                "batch_completion_tokens": completion, "cost_usd": cost}

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
            batch = self._intend(pending)
        elif batch.get("id"):
            self.say(f"resuming batch {batch['id']} ({len(batch['requests'])} requests)")
        if not batch.get("id"):
            self._create(batch)
        self._wait_and_download(batch)
        answers: dict[str, Completion] = {}
        errors: dict[str, str] = {}
        for name in ("output", "error"):
            path = self.state.folder / f"{batch['id']}_{name}.jsonl"
            if path.is_file():
                _parse_lines(path.read_text(encoding="utf-8"), answers, errors)
        return len(answers) + len(errors)

    def _intend(self, pending: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Write the request file and record the intent to create its batch (before anything is sent)."""
        lines = "".join(json.dumps(pending[ident], ensure_ascii=False) + "\n" for ident in sorted(pending))
        digest = hashlib.sha256(lines.encode("utf-8")).hexdigest()[:16]
        request_file = self.state.folder / f"requests_{time.strftime('%Y%m%dT%H%M%S')}_{digest}.jsonl"
        request_file.write_text(lines, encoding="utf-8")
        lost = [b["id"] for b in self.state.created() if b.get("status") in LOST and set(b["requests"]) & set(pending)]
        if lost:
            self.say(f"sending {len(pending)} request(s) left unanswered by {', '.join(lost)} again in a new batch (once)")
        batch = {"id": None, "requests": sorted(pending), "request_file": request_file.name, "status": "intended"}
        self.state.batches.append(batch)
        self.state.save()
        return batch

    def _create(self, batch: dict[str, Any]) -> None:
        """Upload the request file (once) and create its batch (once): an earlier attempt's batch is adopted."""
        import openai

        if not batch.get("input_file_id"):
            content = (self.state.folder / batch["request_file"]).read_bytes()
            with _errors(self.config):
                uploaded = self.client.files.create(file=(batch["request_file"], content), purpose="batch")
            batch["input_file_id"] = uploaded.id
            self.state.save()  # from here on, a batch made from this file is found by its input_file_id
        remote = self._find(batch["input_file_id"])
        if remote is not None:
            message = f"found batch {remote.id}, already created from {batch['input_file_id']}: not creating another"
        else:
            try:
                remote = self.client.with_options(max_retries=0).batches.create(
                    input_file_id=batch["input_file_id"], endpoint="/v1/chat/completions", completion_window="24h",
                    metadata={"source": "medbench judge", "request_file": batch["request_file"]},
                )
            except openai.APIConnectionError:  # timeouts included
                # A create that got no answer may still have made the batch: look before saying anything.
                remote = self._find(batch["input_file_id"])
                if remote is None:
                    raise MedbenchError(
                        f"the Batch API at {self.config.public_base_url} gave no answer to creating the batch for "
                        f"{batch['input_file_id']} within {self.config.timeout:g} s: re-run the same command (it looks for "
                        f"that batch before creating one, so nothing is paid twice; state in {self.state.folder})"
                    ) from None
                message = f"found batch {remote.id}, created from {batch['input_file_id']} although the server did not answer in time"
            except openai.APIError as error:
                raise _one_line(self.config, error) from None
            else:
                message = f"submitted batch {remote.id}: {len(batch['requests'])} requests (state in {self.state.folder})"
        batch["id"], batch["status"] = remote.id, remote.status
        self.state.save()  # before waiting: a killed run resumes this batch instead of paying for a new one
        self.say(message)

    def _find(self, input_file_id: str) -> Any:
        """The remote batch created from ``input_file_id`` that this state folder does not know yet, if any."""
        known = {b["id"] for b in self.state.created()}
        with _errors(self.config):
            for seen, remote in enumerate(self.client.batches.list(limit=100)):
                if getattr(remote, "input_file_id", None) == input_file_id and remote.id not in known:
                    return remote
                if seen >= 1000:  # batches are listed newest first: an intent's batch is among the recent ones
                    break
        return None

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
        if remote.status in LOST:
            answers: dict[str, Completion] = {}
            path = self.state.folder / f"{batch['id']}_output.jsonl"
            if path.is_file():
                _parse_lines(path.read_text(encoding="utf-8"), answers, {})
            if remote.status == "failed" and not answers:
                errors = getattr(getattr(remote, "errors", None), "data", None) or []
                reason = "; ".join(str(getattr(e, "message", e)) for e in errors[:3]) or "no reason given"
                if self.state.lost_twice(set()).keys() >= set(batch["requests"]):
                    raise MedbenchError(f"batch {batch['id']} failed: {reason} (its requests were already sent again once)")
                self.say(f"batch {batch['id']} failed: {reason}")
            else:
                self.say(f"batch {batch['id']} {remote.status}: keeping its {len(answers)} answers")
        elif remote.status == "expired":
            self.say(f"batch {batch['id']} expired: keeping its {done} answers, sending the rest again")


class _errors:
    """Turn the Batch API's auth/not-found errors into one line."""

    def __init__(self, config: JudgeConfig) -> None:
        self.config = config

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: object) -> bool:
        if error is None:
            return False
        try:
            import openai
        except ImportError:
            return False
        if isinstance(error, openai.APIError):
            raise _one_line(self.config, error) from None
        return False


def _one_line(config: JudgeConfig, error: Exception) -> MedbenchError:
    """The one-line error for a failed Batch API call."""
    import openai

    where = config.public_base_url
    if isinstance(error, openai.AuthenticationError):
        return JudgeConfigError(f"the Batch API at {where} rejected the API key (401): set a valid MEDBENCH_JUDGE_API_KEY")
    if isinstance(error, openai.NotFoundError):
        return JudgeConfigError(f"{where} has no Batch API (404): use --batch only with OpenAI or a server that implements /v1/batches")
    if isinstance(error, openai.APIStatusError):
        return MedbenchError(f"the Batch API at {where} refused a call ({error.status_code}): {redact(error.message, config.api_key)}")
    if isinstance(error, openai.APITimeoutError):
        return MedbenchError(f"the Batch API at {where} did not answer within {config.timeout:g} s: re-run the same command to resume")
    return MedbenchError(f"cannot reach the Batch API at {where}: start the server or fix MEDBENCH_JUDGE_BASE_URL")


def state_folder_for(paths: Sequence[Path]) -> Path:
    """``<folder>/medbench_judge_batch`` beside the first samples file or in the first folder given."""
    first = paths[0]
    return (first if first.is_dir() else first.parent) / "medbench_judge_batch"
