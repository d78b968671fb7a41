"""Judge a batch of (prediction, reference) pairs concurrently and turn the answers into scores.

Per sample, the judge metrics are (``n`` reference facts, ``m`` prediction claims):

* ``completeness`` = (E + 0.5 PE) / n and ``hallucination`` = C / n - the study's metric: reference facts
  (precomputed in the data, or one cached judge call per distinct reference) labelled against the output.
* ``fabrication`` = (Neutral + Contradiction) / m - the reverse direction the study lacks: the output's own
  claims labelled against the reference; a claim the reference does not support is fabricated. An output
  with no claims fabricates nothing (0).
* ``severe`` = 1 when the worst error is graded *severe* by the versioned rubric, else 0 (so its mean is the
  rate of severely hallucinating outputs); the grade itself (none / minor / severe) is kept per sample.

A metric that could not be computed for a sample (judge failure after retries, unreadable answer, a
reference without facts) is recorded in ``failures`` with a reason, and left out of that metric's mean.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from medbench import __version__
from medbench.judge.cache import JudgeCache
from medbench.judge.client import JudgeAbort, JudgeClient, JudgeFailure, Transport, gather_or_cancel
from medbench.judge.config import JudgeConfig
from medbench.judge.parts import HIGHER_IS_BETTER, METRICS, PART_METRICS, PART_ROLES
from medbench.judge.prompts import PromptSpec, load_prompt
from medbench.metrics.facts import (
    NEUTRAL,
    extract_json_list,
    fabrication_from_labels,
    fact_scores,
    parse_labels,
    severe_from_grade,
)
from medbench.progress import progress_bar

logger = logging.getLogger("medbench.judge")
R = TypeVar("R")

__all__ = ["HIGHER_IS_BETTER", "METRICS", "PART_METRICS", "JudgeItem", "JudgeReport", "JudgeRunner", "SampleJudgement"]
SEVERITIES = ("none", "minor", "severe")
_NUMBERING = re.compile(r"^\s*\d+\s*[.)]\s*")


@dataclass(frozen=True)
class JudgeItem:
    """One output to judge.

    Attributes:
        id: Sample identifier (kept in results).
        prediction: Model output.
        reference: Reference text.
        facts: Precomputed reference atomic facts (as the authors shipped them); ``None`` or empty to have
            the judge extract them.
    """

    id: str
    prediction: str
    reference: str
    facts: tuple[str, ...] | None = None


@dataclass
class SampleJudgement:
    """The judge's verdict on one sample.

    Attributes:
        id: Sample identifier.
        scores: Metric -> value, only for metrics that were computed.
        failures: Metric -> reason, for requested metrics that could not be computed.
        details: Facts, labels, claims, severity grade, raw NLI answer - what a reader needs to audit a score.
    """

    id: str
    scores: dict[str, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "scores": self.scores, "failures": self.failures, **self.details}


@dataclass
class JudgeReport:
    """A judged batch: per-sample verdicts, per-metric summaries, judge identity and usage."""

    samples: list[SampleJudgement]
    summary: dict[str, dict[str, Any]]
    judge: dict[str, Any]
    usage: dict[str, Any]


def parse_text_list(text: str) -> list[str]:
    """A JSON list of strings (tolerating fences and prose), numbering removed.

    Raises:
        ValueError: No list of strings in the text.
    """
    items = extract_json_list(text)
    if items is None:
        raise ValueError("no JSON list")
    if not all(isinstance(item, str) for item in items):
        raise ValueError("list items are not strings")
    return [cleaned for cleaned in (_NUMBERING.sub("", item).strip() for item in items) if cleaned]


def parse_severity(text: str) -> tuple[str, str]:
    """``(grade, reason)`` from the severity answer.

    Raises:
        ValueError: No recognisable grade.
    """
    match = re.search(r"\{.*\}", text, flags=re.DOTALL)
    if match:
        try:
            data = json.loads(match.group(0))
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            grade = str(data.get("severity", "")).strip().lower()
            if grade in SEVERITIES:
                return grade, str(data.get("reason", "")).strip()
    bare = text.strip().strip("\"'.`* ").lower()
    if bare in SEVERITIES:
        return bare, ""
    raise ValueError("no severity grade")


def numbered(statements: Sequence[str]) -> str:
    """Hypotheses as the JSON list the NLI prompt shows: ``["1. ...", "2. ..."]``."""
    return json.dumps([f"{index}. {text}" for index, text in enumerate(statements, start=1)], ensure_ascii=False)


class JudgeRunner:
    """Runs the judge over batches with bounded concurrency, a shared cache and a progress bar.

    Args:
        config: Judge configuration.
        cache: Answer cache (default: from the configuration).
        transport: Request sender (default: OpenAI-compatible HTTP).
        sleep: Backoff sleep (tests pass a no-op).
        on_usage: Called with ``(prompt_tokens, completion_tokens)`` after each live judge answer.
    """

    def __init__(
        self,
        config: JudgeConfig,
        *,
        cache: JudgeCache | None = None,
        transport: Transport | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        on_usage: Callable[[int, int], None] | None = None,
    ) -> None:
        self.config = config
        self._on_usage = on_usage
        self.cache = cache if cache is not None else JudgeCache(config.cache_path)
        self.prompts: dict[str, PromptSpec] = {role: load_prompt(spec) for role, spec in config.prompts.items()}
        self._transport = transport
        self._sleep = sleep
        self.client: JudgeClient | None = None
        # What the last client's rate controller learned (the server's limits, the paced rate, the in-flight limit)
        # outlives a batch: a GRPO reward judges one small batch per step, and a controller started afresh each time
        # would send one request, wait for it, and only then the rest - two round trips per step instead of one. It
        # is handed on within one event loop only, because it holds loop-bound waiters and a lock.
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def judge_info(self, parts: Iterable[str] = tuple(PART_METRICS)) -> dict[str, Any]:
        """Judge identity for results: model, endpoint (no secrets), prompts with hashes, scoring mode, and
        what the requests carried (token-limit parameter, temperature) once a batch has run."""
        roles = _roles(parts)
        info: dict[str, Any] = {
            **self.config.describe(),
            "prompts": {role: self.prompts[role].describe() for role in roles},
            "medbench_version": __version__,
        }
        if self.client is not None:
            info["request"] = self.client.provenance()
        return info

    def judge(
        self,
        items: Sequence[JudgeItem],
        parts: Iterable[str] = ("nli",),
        on_usage: Callable[[int, int], None] | None = None,
    ) -> JudgeReport:
        """Judge ``items`` synchronously (an event loop is started, or a thread if one is running).

        Args:
            items: Samples to judge.
            parts: Any of ``nli`` (completeness, hallucination), ``fabrication``, ``severity``.
            on_usage: Usage callback for this batch (overrides the runner's).

        Raises:
            JudgeAbort: The run cannot continue (bad key, unknown model, unreachable URL, unparseable judge);
                requests in flight are cancelled and awaited first, answers already received stay cached.
        """
        parts = tuple(parts)
        return run_coroutine(lambda: self.judge_async(items, parts, on_usage))

    def judge_many(self, batches: Sequence[Sequence[JudgeItem]], parts: Iterable[str] = ("nli",)) -> list[JudgeReport]:
        """Judge several batches (e.g. one per samples file) as one concurrent run; one report per batch.

        The usage in each report is the whole run's (the batches share one client and its requests).
        """
        parts = tuple(parts)
        return run_coroutine(lambda: self.judge_many_async(batches, parts))

    async def judge_async(
        self,
        items: Sequence[JudgeItem],
        parts: Iterable[str] = ("nli",),
        on_usage: Callable[[int, int], None] | None = None,
    ) -> JudgeReport:
        """Async form of :meth:`judge`."""
        return (await self.judge_many_async([items], parts, on_usage))[0]

    async def judge_many_async(
        self,
        batches: Sequence[Sequence[JudgeItem]],
        parts: Iterable[str] = ("nli",),
        on_usage: Callable[[int, int], None] | None = None,
    ) -> list[JudgeReport]:
        """Async form of :meth:`judge_many`."""
        parts = tuple(parts)
        unknown = set(parts) - set(PART_METRICS)
        if unknown:
            raise ValueError(f"unknown judge parts {sorted(unknown)}; choose from {sorted(PART_METRICS)}")
        if self.config.temperature > 0:
            logger.warning("judge temperature is %s: judge answers will not be repeatable", self.config.temperature)
        kwargs: dict[str, Any] = {"on_usage": on_usage or self._on_usage}
        if self._sleep is not None:
            kwargs["sleep"] = self._sleep
        loop = asyncio.get_running_loop()
        if self.client is not None and self._client_loop is loop:
            kwargs["rate"] = self.client.rate
        self.client = JudgeClient(self.config, self.cache, self._transport, **kwargs)
        self._client_loop = loop
        items = [item for batch in batches for item in batch]
        samples = [SampleJudgement(id=item.id) for item in items]
        requested = [m for part in parts for m in PART_METRICS[part]]
        progress = progress_bar(len(items), self.config.progress, "judge", "sample")
        stop: JudgeAbort | None = None
        try:

            async def one(item: JudgeItem, verdict: SampleJudgement) -> None:
                await self._judge_one(item, parts, verdict)
                progress.update(1)

            # On an abort (bad key, dead URL, ...) every other sample is cancelled and awaited before the
            # client closes, so nothing runs against a closed HTTP client and no traceback escapes.
            await gather_or_cancel(one(item, verdict) for item, verdict in zip(items, samples, strict=True))
        except JudgeAbort as abort:
            stop = abort
            # What was answered is kept; every metric the stop left open says why it has no value.
            for verdict in samples:
                for metric in requested:
                    if metric not in verdict.scores and metric not in verdict.failures:
                        verdict.failures[metric] = f"not judged: the run stopped ({abort})"
        finally:
            progress.close()
            await self.client.aclose()
        usage = {**self.client.stats.as_dict(self.config), "batches": len(batches), "samples": len(items)}
        info = self.judge_info(parts)
        reports, start = [], 0
        for batch in batches:
            chunk = samples[start : start + len(batch)]
            start += len(batch)
            summary = summarize(chunk, requested)
            reports.append(JudgeReport(samples=chunk, summary=summary, judge=info, usage=usage))
        for metric in requested:
            failed = sum(metric in v.failures and "queued for the Batch API" not in v.failures[metric] for v in samples)
            if failed and stop is None:
                logger.warning("judge metric %s: %d of %d samples unscored (see failures)", metric, failed, len(samples))
        if stop is not None:
            stop.partial = reports
            raise stop
        return reports

    async def _judge_one(self, item: JudgeItem, parts: tuple[str, ...], verdict: SampleJudgement) -> None:
        tasks = []
        if "nli" in parts:
            tasks.append(self._forward(item, verdict))
        if "fabrication" in parts:
            tasks.append(self._reverse(item, verdict))
        if "severity" in parts:
            tasks.append(self._severity(item, verdict))
        await gather_or_cancel(tasks)

    async def _forward(self, item: JudgeItem, verdict: SampleJudgement) -> None:
        metrics = PART_METRICS["nli"]
        assert self.client is not None
        if item.facts:  # an empty list in the data means "not provided", not "no facts"
            facts = [_NUMBERING.sub("", fact).strip() for fact in item.facts]
            verdict.details["facts_source"] = "data"
        else:
            verdict.details["facts_source"] = "judge"
            try:
                facts = await self.client.ask(self.prompts["facts"], {"reference": item.reference}, parse_text_list)
            except JudgeFailure as error:
                _fail(verdict, metrics, f"fact extraction failed: {error}")
                return
        verdict.details["facts"] = facts
        if not facts:
            _fail(verdict, metrics, "reference has no atomic facts")
            return
        n = len(facts)
        if not item.prediction.strip():
            # Nothing can entail or contradict an empty output: every fact is Neutral. No call needed.
            verdict.details["labels"] = [NEUTRAL] * n
            verdict.scores.update(completeness=0.0, hallucination=0.0)
            return
        case_sensitive = self.config.case_sensitive

        def parse(text: str) -> str:
            # The authors kept whatever the judge said; the corrected mode retries answers it cannot score.
            if not case_sensitive and not fact_scores(text, n).parsed:
                labels = parse_labels(text)
                raise ValueError(f"{len(labels)} labels for {n} facts" if labels is not None else "no label list")
            return text

        values = {"premise": item.prediction, "hypotheses": numbered(facts), "n": n}
        try:
            answer = await self.client.ask(self.prompts["nli"], values, parse)
        except JudgeFailure as error:
            _fail(verdict, metrics, f"fact labelling failed: {error}")
            return
        scores = fact_scores(answer, n, case_sensitive=case_sensitive)
        verdict.details["nli_answer"] = answer
        verdict.details["labels"] = parse_labels(answer)
        if case_sensitive and not scores.parsed:
            verdict.details["authors_unparsed"] = True  # kept as 0/0, as the authors did
        verdict.scores.update(completeness=scores.completeness, hallucination=scores.hallucination)

    async def _reverse(self, item: JudgeItem, verdict: SampleJudgement) -> None:
        assert self.client is not None
        if not item.prediction.strip():
            verdict.details["claims"] = []
            verdict.scores["fabrication"] = 0.0
            return
        try:
            claims = await self.client.ask(self.prompts["claims"], {"prediction": item.prediction}, parse_text_list)
        except JudgeFailure as error:
            _fail(verdict, ("fabrication",), f"claim extraction failed: {error}")
            return
        verdict.details["claims"] = claims
        if not claims:
            verdict.scores["fabrication"] = 0.0
            return
        m = len(claims)

        def parse(text: str) -> list[str]:
            labels = parse_labels(text)
            if labels is None or len(labels) != m:
                raise ValueError(f"{len(labels)} labels for {m} claims" if labels is not None else "no label list")
            return labels

        values = {"premise": item.reference, "hypotheses": numbered(claims), "n": m}
        try:
            labels = await self.client.ask(self.prompts["nli"], values, parse)
        except JudgeFailure as error:
            _fail(verdict, ("fabrication",), f"claim labelling failed: {error}")
            return
        verdict.details["claim_labels"] = labels
        verdict.scores["fabrication"] = fabrication_from_labels(labels)

    async def _severity(self, item: JudgeItem, verdict: SampleJudgement) -> None:
        assert self.client is not None
        values = {"reference": item.reference, "prediction": item.prediction}
        try:
            grade, reason = await self.client.ask(self.prompts["severity"], values, parse_severity)
        except JudgeFailure as error:
            _fail(verdict, ("severe",), f"severity grading failed: {error}")
            return
        verdict.details["severity"] = grade
        verdict.details["severity_reason"] = reason
        verdict.scores["severe"] = severe_from_grade(grade)


def summarize(samples: Sequence[SampleJudgement], metrics: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Per metric: mean and standard error over scored samples, and how many were scored / failed."""
    summary: dict[str, dict[str, Any]] = {}
    for metric in metrics:
        values = [s.scores[metric] for s in samples if metric in s.scores]
        failed = sum(metric in s.failures for s in samples)
        mean = sum(values) / len(values) if values else None
        stderr = None
        if len(values) > 1 and mean is not None:
            variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
            stderr = math.sqrt(variance / len(values))
        summary[metric] = {
            "mean": mean,
            "stderr": stderr,
            "scored": len(values),
            "failed": failed,
            "higher_is_better": HIGHER_IS_BETTER[metric],
        }
    if "severe" in summary:
        grades = [s.details.get("severity") for s in samples]
        summary["severe"]["grades"] = {grade: grades.count(grade) for grade in SEVERITIES}
    return summary


def run_coroutine(factory: Callable[[], Awaitable[R]]) -> R:
    """Run a coroutine to completion from synchronous code, even when an event loop is already running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()  # type: ignore[arg-type]


def _roles(parts: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(role for part in parts for role in PART_ROLES[part]))


def _fail(verdict: SampleJudgement, metrics: Iterable[str], reason: str) -> None:
    for metric in metrics:
        verdict.failures[metric] = reason

