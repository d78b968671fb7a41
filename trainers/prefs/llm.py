"""The LLM steps of ``medbench prefs build``, through the judge's transport (client, cache, retries, concurrency, cost).

Three versioned prompts in ``prompts/``, each identified in the manifest by id + SHA-256:

* ``rejected_answer-v<N>`` (``--mode llm``): a minimally edited, clinically wrong answer. An answer that is not the
  asked-for JSON is retried by the judge client (and never cached). A parsed answer is then checked: identical to
  the chosen answer (after normalising case, spaces and final punctuation), empty, or not minimal (more than half
  of the words changed, or more than twice as long) is *rejected and counted*, never used. The model's
  ``error_type`` must be a taxonomy key; otherwise the rule-based tagger decides (counted).
* ``error_type-v<N>`` (``--error_types llm``): the taxonomy key of an edit. Only an exact key passes (case aside,
  :meth:`medbench.taxonomy.Taxonomy.check`): a near miss such as ``"visual misinterpretation"`` is refused.
* ``relevance-v<N>`` (``--relevance llm``): MMedPO's clinical relevance of the difference between the chosen and
  the rejected answer, a number in [0, 1]; a number outside it is refused.

A refused or failed answer gives an :class:`LLMVerdict` without a value and with the reason; the builder then falls
back to the offline rule (rule-based tag, offline relevance table) and counts it. Nothing becomes a silent zero.
All steps share one :class:`medbench.judge.client.JudgeClient`, so the manifest has one cost report.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from medbench.errors import DataError
from medbench.taxonomy import load_taxonomy

from .rules import Edit, tag_error_type

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
# The shipped prompt of each LLM step (a new wording is a new file with the next version).
PROMPT_FILES = {
    "rejected_answer": "rejected_answer-v1.yaml",
    "error_type": "error_type-v1.yaml",
    "relevance": "relevance-v1.yaml",
}
R = TypeVar("R")


def load_step_prompt(step: str, path: str | Path | None = None):
    """The prompt of one LLM step (the shipped version, or a file of the judge prompt format)."""
    from medbench.judge.prompts import load_prompt

    return load_prompt(str(path or PROMPTS_DIR / PROMPT_FILES[step]))


def _json_object(text: str) -> dict[str, Any]:
    found = re.search(r"\{.*\}", text.strip(), re.DOTALL)
    if found is None:
        raise ValueError("no JSON object")
    try:
        data = json.loads(found.group(0))
    except json.JSONDecodeError as error:
        raise ValueError(f"invalid JSON: {error.msg}") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")  # noqa: TRY004 - the judge client re-asks on ValueError only
    return data


def parse_rejected(text: str) -> dict[str, Any]:
    """``{"rejected": str, "error_type": str | None}`` from a model answer.

    Raises:
        ValueError: the answer is not a JSON object with a non-empty ``rejected`` string (the client retries).
    """
    data = _json_object(text)
    if not isinstance(data.get("rejected"), str) or not data["rejected"].strip():
        raise ValueError("no `rejected` string")
    error_type = data.get("error_type")
    return {"rejected": data["rejected"].strip(), "error_type": error_type if isinstance(error_type, str) else None}


def parse_error_type(text: str) -> str:
    """The ``error_type`` string of a model answer, as written (validated against the taxonomy afterwards).

    Raises:
        ValueError: the answer is not a JSON object with a non-empty ``error_type`` string (the client retries).
    """
    value = _json_object(text).get("error_type")
    if not isinstance(value, str) or not value.strip():
        raise ValueError("no `error_type` string")
    return value


def parse_relevance(text: str) -> dict[str, Any]:
    """``{"score": float, "reason": str | None}`` from a model answer (the range is checked afterwards).

    Raises:
        ValueError: the answer is not a JSON object with a numeric ``score`` (the client retries).
    """
    data = _json_object(text)
    score = data.get("score")
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise ValueError("no numeric `score`")  # noqa: TRY004 - the judge client re-asks on ValueError only
    reason = data.get("reason")
    return {"score": float(score), "reason": reason.strip() if isinstance(reason, str) and reason.strip() else None}


def taxonomy_key(value: str | None) -> str | None:
    """The canonical taxonomy key for ``value`` (exact key, case aside), or None for anything else."""
    if value is None:
        return None
    try:
        return load_taxonomy().check(value)
    except DataError:
        return None


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(".!;: ")


def sanity_problem(chosen: str, rejected: str) -> str | None:
    """Why an LLM edit is unusable (``identical``, ``not_minimal``), or None when it is a usable minimal edit."""
    if _normal(chosen) == _normal(rejected):
        return "identical"
    old, new = _normal(chosen).split(), _normal(rejected).split()
    if len(new) > 2 * len(old) + 3:
        return "not_minimal"
    ratio = difflib.SequenceMatcher(a=old, b=new, autojunk=False).ratio()
    if len(old) >= 4 and ratio < 0.5:
        return "not_minimal"
    return None


@dataclass
class LLMOutcome:
    """A rejected answer for one record: an edit, or the reason there is none."""

    edit: Edit | None
    problem: str | None = None
    error_type_source: str = "llm"


@dataclass
class LLMVerdict:
    """An error type or relevance score for one record, or the reason there is none (``reason: detail``).

    Attributes:
        value: The taxonomy key / the score in [0, 1]; None when the answer failed or was refused.
        problem: ``llm_failed: ...``, ``not_a_taxonomy_key: ...`` or ``out_of_range: ...`` when ``value`` is None.
        reason: The model's one-line reason (relevance only).
    """

    value: Any = None
    problem: str | None = None
    reason: str | None = None


def _failed(failure: Exception) -> str:
    return f"llm_failed: {str(failure).split(':', 1)[-1].strip()}"


class PrefsLLM:
    """The LLM steps of a build, sharing one :class:`medbench.judge.client.JudgeClient`.

    Args:
        config: A :class:`medbench.judge.config.JudgeConfig` (model, endpoint, retries, concurrency, cache).
        prompts: Step name (``rejected_answer``, ``error_type``, ``relevance``) -> prompt spec, replacing the shipped
            one.
        transport: Optional transport override (tests); default the judge's OpenAI-compatible one.
    """

    def __init__(self, config: Any, prompts: dict[str, Any] | None = None, transport: Any | None = None) -> None:
        self.config = config
        self.prompts = {step: load_step_prompt(step) for step in PROMPT_FILES}
        self.prompts.update(prompts or {})
        self._transport = transport
        self._client: Any = None
        self._used: set[str] = set()

    @property
    def client(self) -> Any:
        """The judge client, built on first use (it opens the answer cache): a refused build writes nothing."""
        if self._client is None:
            from medbench.judge.client import JudgeClient

            self._client = JudgeClient(self.config, transport=self._transport)
        return self._client

    async def _ask(self, step: str, values: dict[str, object], parse: Callable[[str], R]) -> R:
        self._used.add(step)
        return await self.client.ask(self.prompts[step], values, parse)

    async def rejected(self, question: str, chosen: str) -> LLMOutcome:
        """A minimal clinically wrong edit of ``chosen``, checked (see the module docstring)."""
        from medbench.judge.client import JudgeFailure

        values = {"question": question, "answer": chosen, "error_types": ", ".join(load_taxonomy().keys)}
        try:
            answer = await self._ask("rejected_answer", values, parse_rejected)
        except JudgeFailure as failure:
            return LLMOutcome(None, _failed(failure))
        problem = sanity_problem(chosen, answer["rejected"])
        if problem:
            return LLMOutcome(None, problem)
        key, source = taxonomy_key(answer["error_type"]), "llm"
        if key is None:
            key, source = tag_error_type(question, chosen, answer["rejected"]), "rules"
        prompt = self.prompts["rejected_answer"]
        return LLMOutcome(Edit("llm", answer["rejected"], key, prompt.ident), None, source)

    async def error_type(self, question: str, chosen: str, rejected: str) -> LLMVerdict:
        """The taxonomy key of the error ``rejected`` makes, or the reason there is none."""
        from medbench.judge.client import JudgeFailure

        taxonomy = load_taxonomy()
        keys = [f"- {key}: {text}" for key, text in taxonomy.categories.items()]
        keys += [f"- {key} ({category}): {text}" for key, (category, text) in taxonomy.subtypes.items()]
        values = {"question": question, "answer": chosen, "rejected": rejected, "error_types": "\n".join(keys)}
        try:
            raw = await self._ask("error_type", values, parse_error_type)
        except JudgeFailure as failure:
            return LLMVerdict(problem=_failed(failure))
        key = taxonomy_key(raw)
        if key is None:
            return LLMVerdict(problem=f"not_a_taxonomy_key: {raw.strip()!r}")
        return LLMVerdict(key)

    async def relevance(self, question: str, chosen: str, rejected: str) -> LLMVerdict:
        """The clinical relevance in [0, 1] of the difference between ``chosen`` and ``rejected``."""
        from medbench.judge.client import JudgeFailure

        values = {"question": question, "answer": chosen, "rejected": rejected}
        try:
            answer = await self._ask("relevance", values, parse_relevance)
        except JudgeFailure as failure:
            return LLMVerdict(problem=_failed(failure))
        score = answer["score"]
        if not (math.isfinite(score) and 0.0 <= score <= 1.0):
            return LLMVerdict(problem=f"out_of_range: {score}", reason=answer["reason"])
        return LLMVerdict(score, reason=answer["reason"])

    def run(self, jobs: list[Callable[[], Awaitable[R]]]) -> list[R]:
        """Run ``jobs`` (coroutine factories) concurrently (the judge's concurrency), results in order.

        Raises:
            MedbenchError: the endpoint rejects the configuration itself (key, model, URL), or the run cannot go
                on (:class:`medbench.judge.client.JudgeAbort`).
        """

        from medbench.judge.client import gather_or_cancel
        from medbench.judge.runner import run_coroutine

        async def main() -> list[R]:
            try:
                return await gather_or_cancel(job() for job in jobs)
            finally:
                await self.client.aclose()

        return run_coroutine(main)

    def describe(self, step: str) -> dict[str, Any]:
        """The model and prompt identity of one step (recorded where the manifest names its result)."""
        return {"model": self.config.model, "prompt": self.prompts[step].describe()}

    def report(self) -> dict[str, Any]:
        """Requests, retries, failures, tokens and cost (the judge's own accounting), model and the prompts used."""
        return {
            "model": self.config.model,
            "base_url": self.config.public_base_url,
            "prompts": {step: self.prompts[step].describe() for step in PROMPT_FILES if step in self._used},
            "stats": self.client.stats.as_dict(self.config),
        }
