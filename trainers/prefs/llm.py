"""LLM-written rejected answers through the judge's transport (client, cache, retries, concurrency, cost report).

The request is the versioned prompt ``prompts/rejected_answer-v<N>.yaml``; its identity (id + SHA-256) goes into the
manifest. An answer that is not the asked-for JSON is retried by the judge client (and never cached). A parsed
answer is then checked: identical to the chosen answer (after normalising case, spaces and final punctuation),
empty, or not minimal (more than half of the words changed, or more than twice as long) is *rejected and counted*,
never used. The model's ``error_type`` must be a taxonomy key; otherwise the rule-based tagger decides (counted).
"""

from __future__ import annotations

import asyncio
import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from medbench.taxonomy import load_taxonomy

from .rules import Edit, tag_error_type

PROMPT_PATH = Path(__file__).resolve().parent / "prompts" / "rejected_answer-v1.yaml"


def load_rejected_prompt(path: str | Path | None = None):
    """The rejected-answer prompt (the shipped version, or a file of the judge prompt format)."""
    from medbench.judge.prompts import load_prompt

    return load_prompt(str(path or PROMPT_PATH))


def parse_rejected(text: str) -> dict[str, Any]:
    """``{"rejected": str, "error_type": str | None}`` from a model answer.

    Raises:
        ValueError: the answer is not a JSON object with a non-empty ``rejected`` string (the client retries).
    """
    stripped = text.strip()
    fenced = re.search(r"\{.*\}", stripped, re.DOTALL)
    if fenced is None:
        raise ValueError("no JSON object")
    try:
        data = json.loads(fenced.group(0))
    except json.JSONDecodeError as error:
        raise ValueError(f"invalid JSON: {error.msg}") from None
    if not isinstance(data, dict) or not isinstance(data.get("rejected"), str) or not data["rejected"].strip():
        raise ValueError("no `rejected` string")
    error_type = data.get("error_type")
    return {"rejected": data["rejected"].strip(), "error_type": error_type if isinstance(error_type, str) else None}


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
    """The result for one record: an edit, or the reason there is none."""

    edit: Edit | None
    problem: str | None = None
    error_type_source: str = "llm"


class LLMRejectedWriter:
    """Writes rejected answers with an LLM through :class:`medbench.judge.client.JudgeClient`.

    Args:
        config: A :class:`medbench.judge.config.JudgeConfig` (model, endpoint, retries, concurrency, cache).
        prompt: The prompt spec (default: the shipped ``rejected_answer`` prompt).
        transport: Optional transport override (tests); default the judge's OpenAI-compatible one.
    """

    def __init__(self, config: Any, prompt: Any | None = None, transport: Any | None = None) -> None:
        from medbench.judge.client import JudgeClient

        self.config = config
        self.prompt = prompt or load_rejected_prompt()
        self.client = JudgeClient(config, transport=transport)

    async def _one(self, question: str, chosen: str) -> LLMOutcome:
        from medbench.judge.client import JudgeFailure

        taxonomy = load_taxonomy()
        values = {"question": question, "answer": chosen, "error_types": ", ".join(taxonomy.keys)}
        try:
            answer = await self.client.ask(self.prompt, values, parse_rejected)
        except JudgeFailure as failure:
            return LLMOutcome(None, f"llm_failed: {str(failure).split(':', 1)[-1].strip()}")
        problem = sanity_problem(chosen, answer["rejected"])
        if problem:
            return LLMOutcome(None, problem)
        source = "llm"
        raw_type = answer["error_type"]
        key = raw_type.strip().lower() if raw_type else None
        if key not in taxonomy.categories and key not in taxonomy.subtypes:
            key, source = tag_error_type(question, chosen, answer["rejected"]), "rules"
        return LLMOutcome(Edit("llm", answer["rejected"], key, self.prompt.ident), None, source)

    def write_all(self, items: list[tuple[str, str]], on_done: Callable[[], None] | None = None) -> list[LLMOutcome]:
        """Edits for ``[(question, chosen), ...]`` in order, requests running concurrently (judge concurrency).

        Raises:
            MedbenchError: the endpoint rejects the configuration itself (key, model, URL).
        """

        async def run() -> list[LLMOutcome]:
            async def tracked(question: str, chosen: str) -> LLMOutcome:
                outcome = await self._one(question, chosen)
                if on_done is not None:
                    on_done()
                return outcome

            try:
                return list(await asyncio.gather(*(tracked(q, a) for q, a in items)))
            finally:
                await self.client.aclose()

        from medbench.judge.runner import run_coroutine

        return run_coroutine(run)

    def report(self) -> dict[str, Any]:
        """Requests, retries, failures, tokens and cost (the judge's own accounting) plus model and prompt."""
        return {
            "model": self.config.model,
            "base_url": self.config.public_base_url,
            "prompt": self.prompt.describe(),
            "stats": self.client.stats.as_dict(self.config),
        }
