"""Rewards for online RL (TRL's ``GRPOTrainer``), derived from medbench's metric declarations.

A reward is not a second implementation of a metric: each :class:`RewardSpec` names the declared metrics
(:mod:`medbench.metrics.registry`) it is computed from, and the reward calls the function the declaration names
(``Metric.sample_function``: the one the task scores with and the board recomputes with; where it returns ``None``
the metric does not apply, and neither does the reward). ``reward_fn(name)`` returns a TRL reward function,
``f(prompts, completions, **columns) -> list[float | None]``:

* ``closed_exact``: the tasks' ``closed_accuracy`` (closed questions only, with the closed-question normaliser).
  An answer that reads as neither yes nor no scores 0 and is counted by the catalogue's ``closed_unparsed``
  (``unparsed``; logged by TRL as ``<name>/unparsed``).
* ``open_recall``: the tasks' ``open_recall`` (open questions only).
* ``token_f1``, ``rouge_l``: every row; the tasks' ``token_f1`` and ``rouge_l``.
* ``judge_nli``: open questions and reports; completeness - hallucination from the atomic-fact judge
  (``judge_completeness`` and ``judge_hallucination``, signed by their declared direction), through
  :class:`medbench.judge.runner.JudgeRunner` with its cache, concurrency, rate limiting and stops. All samples of a
  call are requested concurrently. It is an ``async`` callable: TRL awaits it on its event loop, beside the other
  rewards; :func:`score` runs any reward from synchronous code.

Columns are medbench's supervised schema: the reference is ``answer``; VQA rows may carry ``answer_type``
(``CLOSED``/``OPEN``, read by :func:`medbench.metrics.vqa.is_closed_question`: any case; without one, a yes/no
reference makes a closed question); ``facts`` (the
reference's atomic facts, as the long-form tasks carry them) spare the judge a call. Completions are strings or TRL's
conversational form (a list of messages; the assistant's text is scored). A reasoning-format completion
(``<think>...</think>`` then the answer) is scored on its answer, by :func:`medbench.reasoning.strip_reasoning`, as
the tasks score it.

A reward that does not apply to a sample, and a judge call that failed after its retries, give ``None``, never 0:
TRL leaves that sample out of that reward (``reward_weights`` and ``multi_objective_aggregation`` combine several).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medbench.errors import MedbenchError
from medbench.metrics.registry import METRICS, Answer, Metric
from medbench.metrics.vqa import is_closed_question
from medbench.reasoning import strip_reasoning

ANSWER_COLUMN = "answer"
ANSWER_TYPE_COLUMN = "answer_type"
FACTS_COLUMN = "facts"

UNPARSED_METRIC = "closed_unparsed"  # the catalogue's count of closed answers that read as neither yes nor no
Reward = Callable[..., Any]


@dataclass(frozen=True)
class RewardSpec:
    """One reward: the declared metrics it is computed from.

    Attributes:
        name: The name recipes and :func:`reward_fn` use (TRL logs ``rewards/<name>/mean``).
        metrics: Names of the :mod:`medbench.metrics.registry` declarations it derives from. One metric: the reward
            is that metric's per-sample value (``None`` where the metric does not apply). Several (the judge's): the
            sum of their values, each signed by its declared direction (``higher_is_better``).
        description: One line for docs.
        open_only: Only for rows that are not closed questions (the judge's metrics are the long-form tasks'; a
            closed question is scored by ``closed_exact``).
        counts_unparsed: Count closed answers that read as neither yes nor no (the catalogue's ``closed_unparsed``).
    """

    name: str
    metrics: tuple[str, ...]
    description: str
    open_only: bool = False
    counts_unparsed: bool = False

    @property
    def declarations(self) -> tuple[Metric, ...]:
        """The metric declarations, looked up in the catalogue."""
        return tuple(METRICS[name] for name in self.metrics)


REWARD_LIST: tuple[RewardSpec, ...] = (
    RewardSpec("closed_exact", ("closed_accuracy",), "closed questions: the answer gives the reference (1/0); unparseable answers score 0 and are counted", counts_unparsed=True),
    RewardSpec("open_recall", ("open_recall",), "open questions: share of reference tokens the answer recalls"),
    RewardSpec("token_f1", ("token_f1",), "token-level F1 of answer and reference"),
    RewardSpec("rouge_l", ("rouge_l",), "ROUGE-L F-measure of answer and reference"),
    RewardSpec("judge_nli", ("judge_completeness", "judge_hallucination"), "LLM judge: completeness - hallucination over the reference's atomic facts (docs/judge.md)", open_only=True),
)
REWARDS: dict[str, RewardSpec] = {spec.name: spec for spec in REWARD_LIST}


def completion_text(completion: Any, reward: str = "reward") -> str:
    """The text of a completion: a string, or TRL's conversational form (the assistant messages' text).

    Raises:
        MedbenchError: a completion of another shape.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and all(isinstance(m, Mapping) for m in completion):
        texts = []
        for message in completion:
            if message.get("role", "assistant") != "assistant":
                continue
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                texts.extend(str(part.get("text", "")) for part in content if isinstance(part, Mapping) and part.get("type") == "text")
        return "".join(texts)
    raise MedbenchError(f"{reward}: a completion must be a string or a list of chat messages, got {type(completion).__name__}")


def _answers(reward: str, completions: Sequence[Any], columns: Mapping[str, Any]) -> list[Answer | None]:
    """One :class:`medbench.metrics.registry.Answer` per completion (``None`` where the row has no reference), as the
    tasks score it: the answer part of the completion, the reference, the answer type as ``CLOSED`` / ``OPEN``."""
    if ANSWER_COLUMN not in columns:
        present = ", ".join(sorted(k for k in columns if not k.startswith(("trainer_", "log_")))) or "none"
        raise MedbenchError(
            f"{reward}: the data has no `{ANSWER_COLUMN}` column (the reference answer; columns passed: {present}); "
            "GRPO data needs medbench's supervised schema (question, image, answer[, answer_type])"
        )
    references = list(columns[ANSWER_COLUMN])
    types = list(columns.get(ANSWER_TYPE_COLUMN) or [None] * len(references))
    if not len(references) == len(types) == len(completions):
        raise MedbenchError(
            f"{reward}: {len(completions)} completions but {len(references)} `{ANSWER_COLUMN}` and {len(types)} "
            f"`{ANSWER_TYPE_COLUMN}` values; pass one per completion"
        )
    answers: list[Answer | None] = []
    for completion, reference, answer_type in zip(completions, references, types, strict=True):
        if reference is None:
            answers.append(None)
            continue
        closed = is_closed_question(str(reference), answer_type)
        prediction = strip_reasoning(completion_text(completion, reward))
        answers.append(Answer(prediction, str(reference), "CLOSED" if closed else "OPEN"))
    return answers


class MetricReward:
    """A reward that is one declared metric's per-sample function (see :func:`reward_fn`).

    Attributes:
        spec: What it is.
        scored: Rows scored so far; ``unparsed``: of those, closed answers that read as neither yes nor no.
    """

    def __init__(self, spec: RewardSpec) -> None:
        (metric,) = spec.declarations
        self.spec = spec
        self.__name__ = spec.name  # TRL names the logged reward after it
        self._function = metric.sample_function
        self._unparsed = METRICS[UNPARSED_METRIC].sample_function if spec.counts_unparsed else None
        self.scored = 0
        self.unparsed = 0

    def __call__(self, prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (), **columns: Any) -> list[float | None]:
        rewards: list[float | None] = []
        unparsed = scored = 0
        for answer in _answers(self.spec.name, completions, columns):
            value = None if answer is None else self._function(answer)
            rewards.append(None if value is None else float(value))
            if value is not None:
                scored += 1
                unparsed += int(bool(self._unparsed and self._unparsed(answer)))
        self.scored += scored
        self.unparsed += unparsed
        log_metric = columns.get("log_metric")
        if self._unparsed and scored and callable(log_metric):
            log_metric(f"{self.spec.name}/unparsed", unparsed / scored)
        return rewards


class JudgeReward:
    """A reward from the LLM judge's metrics (``judge_nli``): an async TRL reward function (see :func:`reward_fn`).

    Attributes:
        spec: What it is.
        runner: The :class:`medbench.judge.runner.JudgeRunner` (built on the first call unless given).
        scored / failed: Rows the judge scored, and rows whose judge calls failed (their reward is ``None``).
    """

    def __init__(self, spec: RewardSpec, config: Any = None, runner: Any = None) -> None:
        from medbench.judge.config import ENV_MODEL, JudgeConfig
        from medbench.judge.parts import COLUMNS

        self.spec = spec
        self.__name__ = spec.name
        self._signs = {COLUMNS[m.name].name: 1.0 if m.higher_is_better else -1.0 for m in spec.declarations}
        self._part = COLUMNS[spec.metrics[0]].part
        if runner is None and config is None:
            config = JudgeConfig.from_env()
            if config is None:
                raise MedbenchError(
                    f"reward {spec.name} needs an LLM judge: set {ENV_MODEL} (and MEDBENCH_JUDGE_BASE_URL or an API "
                    "key; see docs/judge.md), or drop the reward"
                )
        if runner is None:
            # One progress bar per GRPO step would drown the training log.
            config = dataclasses.replace(config, progress=False)
        self._config = config
        self.runner = runner
        self._own_runner = runner is None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cache: Any = None
        self.scored = 0
        self.failed = 0

    def _runner_for_this_loop(self) -> Any:
        """The judge runner; an own one keeps its HTTP client (and its pooled connections) from step to step.

        TRL awaits async rewards on one event loop, so the client lives as long as the training; a call from another
        loop (:func:`score` runs each call in a fresh one) gets a fresh client. The answer cache is shared throughout.
        """
        from medbench.judge.cache import JudgeCache
        from medbench.judge.client import OpenAITransport
        from medbench.judge.runner import JudgeRunner

        loop = asyncio.get_running_loop()
        if self._own_runner and self._loop is not loop:
            self._cache = self._cache or JudgeCache(self._config.cache_path)
            self.runner = JudgeRunner(self._config, cache=self._cache, transport=_KeptOpen(OpenAITransport(self._config)))
            self._loop = loop
        return self.runner

    async def __call__(self, prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (), **columns: Any) -> list[float | None]:
        from medbench.judge.runner import JudgeItem

        answers = _answers(self.spec.name, completions, columns)
        facts = list(columns.get(FACTS_COLUMN) or [None] * len(answers))
        items = [
            JudgeItem(id=str(index), prediction=answer.prediction, reference=answer.reference,
                      facts=tuple(facts[index]) if facts[index] else None)
            for index, answer in enumerate(answers)
            if answer is not None and not (self.spec.open_only and answer.answer_type == "CLOSED")
        ]
        rewards: list[float | None] = [None] * len(answers)
        if not items:
            return rewards
        report = await self._runner_for_this_loop().judge_async(items, (self._part,))
        for item, verdict in zip(items, report.samples, strict=True):
            if all(name in verdict.scores for name in self._signs):
                rewards[int(item.id)] = sum(sign * verdict.scores[name] for name, sign in self._signs.items())
                self.scored += 1
            else:
                self.failed += 1
        return rewards


class _KeptOpen:
    """A judge transport whose HTTP client outlives each judge call (the judge client closes its transport after
    every batch; a GRPO step is one batch, and reconnecting every step costs more than the step's own requests)."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.params = transport.params

    def prepare(self) -> None:
        self.transport.prepare()

    async def __call__(self, messages: list[dict[str, str]]) -> Any:
        return await self.transport(messages)

    async def aclose(self) -> None:
        """Kept open on purpose (see the class docstring)."""


def reward_fn(name: str, *, judge: Any = None, runner: Any = None) -> Reward:
    """The TRL reward function ``name`` (one of :data:`REWARDS`).

    Args:
        name: ``closed_exact``, ``open_recall``, ``token_f1``, ``rouge_l`` or ``judge_nli``.
        judge: For judge rewards: a :class:`medbench.judge.config.JudgeConfig` (default: from the
            ``MEDBENCH_JUDGE_*`` environment).
        runner: For judge rewards: a ready :class:`medbench.judge.runner.JudgeRunner` (tests, shared caches).

    Returns:
        ``f(prompts, completions, **columns) -> list[float | None]`` (a coroutine function for judge rewards).

    Raises:
        MedbenchError: an unknown reward, or a judge reward without a judge configured.
    """
    spec = REWARDS.get(name)
    if spec is None:
        raise MedbenchError(f"unknown reward {name!r}; choose from {', '.join(REWARDS)}")
    if any(metric.family and metric.family.startswith("judge") for metric in spec.declarations):
        return JudgeReward(spec, judge, runner)
    return MetricReward(spec)


def score(reward: Reward, prompts: Sequence[Any] | None, completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """Call a reward from synchronous code (a judge reward's coroutine is run to completion)."""
    result = reward(prompts, completions, **columns)
    if inspect.isawaitable(result):
        from medbench.judge.runner import run_coroutine

        return run_coroutine(lambda: result)
    return result


__all__ = ["REWARDS", "REWARD_LIST", "JudgeReward", "MetricReward", "RewardSpec", "completion_text", "reward_fn", "score"]
