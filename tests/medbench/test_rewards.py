"""GRPO rewards: golden values, None where a reward does not apply or the judge failed, and one source of truth
(every reward equals the metric the board computes for the same answer)."""

from __future__ import annotations

import asyncio

import pytest
from judge_server import LoopbackJudgeServer

from medbench.errors import MedbenchError
from medbench.judge.config import JudgeConfig
from medbench.reasoning import REASONING_TAGS, strip_reasoning
from medbench.rewards import REWARDS, reward_fn, score

CLOSED, OPEN = "CLOSED", "OPEN"


def rewards(name: str, completions: list, answers: list[str], types: list[str | None] | None = None, **kwargs) -> list:
    columns = {"answer": answers, **({"answer_type": types} if types is not None else {})}
    return score(reward_fn(name, **kwargs), [""] * len(completions), completions, **columns)


# -- closed_exact ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "answer", "expected", "parsed"),
    [
        ("Yes", "yes", 1.0, True),
        ("No, there is no effusion.", "no", 1.0, True),
        ("Yes, there is no effusion.", "yes", 1.0, True),
        ("Normal", "no", 0.0, False),  # "no" is not a word of "Normal"
        ("None seen.", "no", 0.0, False),
        ("yes and no", "yes", 0.0, False),  # a hedge is not an answer
        ("It could be yes, could be no.", "no", 0.0, False),
        ("", "yes", 0.0, False),
        ("It is a CT scan.", "CT", 1.0, True),  # closed choice: whole-word phrase
        ("CTA", "CT", 0.0, True),
        ("<think>It might be no... the image shows fluid.</think> Yes", "yes", 1.0, True),
        ("<think>yes</think>\nNo.", "yes", 0.0, True),  # scored on the answer, not the reasoning
        ("fluid is visible</think> Yes", "yes", 1.0, True),  # template-prefilled <think>
    ],
)
def test_closed_exact_golden(completion, answer, expected, parsed):
    reward = reward_fn("closed_exact")
    assert score(reward, [""], [completion], answer=[answer], answer_type=[CLOSED]) == [expected]
    assert reward.scored == 1 and reward.unparsed == (0 if parsed else 1)


def test_closed_exact_skips_open_rows_and_counts_unparsed():
    logged = {}
    reward = reward_fn("closed_exact")
    values = reward(
        [""] * 4,
        ["Yes", "Normal", "left lung", "No"],
        answer=["yes", "no", "left lung", "no"],
        answer_type=[CLOSED, CLOSED, OPEN, None],  # no answer type: a yes/no reference is closed
        log_metric=lambda name, value: logged.update({name: value}),
    )
    assert values == [1.0, 0.0, None, 1.0]
    assert (reward.scored, reward.unparsed) == (3, 1)
    assert logged == {"closed_exact/unparsed": pytest.approx(1 / 3)}


def test_conversational_completions_are_scored_on_the_assistant_text():
    completions = [
        [{"role": "assistant", "content": "Yes"}],
        [{"role": "assistant", "content": [{"type": "text", "text": "<think>hmm</think>"}, {"type": "text", "text": "No"}]}],
    ]
    assert rewards("closed_exact", completions, ["yes", "yes"], [CLOSED, CLOSED]) == [1.0, 0.0]


# -- open_recall, token_f1, rouge_l ---------------------------------------------------------------------------------


def test_open_rewards_golden():
    answers, types = ["left lung", "left lung", "yes"], [OPEN, OPEN, CLOSED]
    completions = ["A mass in the LEFT lung.", "<think>left?</think> right lung", "yes"]
    assert rewards("open_recall", completions, answers, types) == [1.0, 0.5, None]
    # token F1: "left lower lobe" vs "the left lobe" -> overlap 2, precision 2/3, recall 1 -> 0.8
    assert rewards("token_f1", ["left lower lobe"], ["the left lobe"], [OPEN]) == [pytest.approx(0.8)]
    assert rewards("token_f1", ["Yes"], ["yes"], [CLOSED]) == [1.0]  # token F1 scores every row, as the tasks do
    # ROUGE-L (stemmed): LCS("the heart is enlarg", "heart is normal") = 2 -> P 1/2, R 2/3 -> F 4/7
    assert rewards("rouge_l", ["The heart is enlarged"], ["Heart is normal"]) == [pytest.approx(4 / 7)]
    assert rewards("rouge_l", ["<think>long reasoning</think>Heart is normal"], ["Heart is normal"]) == [1.0]


def test_unknown_reward_and_missing_answer_column_are_one_line_errors():
    with pytest.raises(MedbenchError, match="unknown reward 'exact'; choose from closed_exact, "):
        reward_fn("exact")
    with pytest.raises(MedbenchError, match=r"closed_exact: the data has no `answer` column .*columns passed: solution"):
        reward_fn("closed_exact")([""], ["yes"], solution=["yes"])


# -- judge_nli ------------------------------------------------------------------------------------------------------

REFERENCE = "The heart is enlarged. There is a right pleural effusion."


def judge_config(server: LoopbackJudgeServer, **overrides) -> JudgeConfig:
    values = {"model": "loopback-judge", "base_url": server.base_url, "timeout": 5.0, "backoff_base": 0.001,
              "backoff_max": 0.01, "max_retries": 2, "concurrency": 16, "progress": False}
    return JudgeConfig(**{**values, **overrides})


def test_judge_nli_golden_and_concurrent():
    completions = [
        REFERENCE,  # every fact entailed: 1 - 0
        "The heart is enlarged.",  # one fact entailed, one neutral: 0.5 - 0
        "<think>right or left?</think>The heart is enlarged. There is a left pleural effusion.",  # 0.5 - 0.5
        "Yes",  # a closed question: the judge does not score it
    ]
    with LoopbackJudgeServer(latency=0.05) as server:
        reward = reward_fn("judge_nli", judge=judge_config(server))
        values = score(reward, [""] * 4, completions, answer=[REFERENCE] * 3 + ["yes"], answer_type=[OPEN] * 3 + [CLOSED])
        assert server.max_in_flight >= 3  # the step's samples were asked at once, not one by one
        assert server.count() == 4  # one fact extraction (same reference, cached) + three NLI calls
    assert values == [1.0, 0.5, 0.0, None]
    assert (reward.scored, reward.failed) == (3, 0)


def test_failed_judge_call_gives_none_not_zero():
    # Facts come with the data; the first sample's NLI call is answered, every attempt of the second fails
    # (3 attempts: max_retries=2).
    with LoopbackJudgeServer(script=[None, "500", "500", "500"]) as server:
        reward = reward_fn("judge_nli", judge=judge_config(server, concurrency=1))
        values = score(reward, None, [REFERENCE, "The heart is enlarged."], answer=[REFERENCE, REFERENCE],
                       facts=[["The heart is enlarged.", "There is a right pleural effusion."]] * 2)
    assert values == [1.0, None]
    assert (reward.scored, reward.failed) == (1, 1)


def test_judge_reward_without_a_judge_is_a_one_line_error(monkeypatch):
    monkeypatch.delenv("MEDBENCH_JUDGE_MODEL", raising=False)
    with pytest.raises(MedbenchError, match="reward judge_nli needs an LLM judge: set MEDBENCH_JUDGE_MODEL"):
        reward_fn("judge_nli")
    assert asyncio.iscoroutinefunction(type(reward_fn("judge_nli", judge=JudgeConfig(model="m"))).__call__)


# -- one source of truth ---------------------------------------------------------------------------------------------

ROWS = [  # (completion, reference, answer type)
    ("Yes", "yes", CLOSED),
    ("Normal", "no", CLOSED),
    ("yes and no", "yes", CLOSED),
    ("<think>no?</think>Yes, small.", "yes", CLOSED),
    ("Axial CT", "CT", CLOSED),
    ("left lung", "the left lung", OPEN),
    ("<think>maybe the liver</think> The spleen.", "spleen", OPEN),
    ("There is a left pleural effusion.", "There is a right pleural effusion.", OPEN),
    (REFERENCE, REFERENCE, OPEN),
]


def test_every_reward_equals_the_metric_the_board_computes(monkeypatch):
    """The reward of a completion is the per-sample value the task logs and the leaderboard recomputes for the same
    answer: the catalogue's per-sample function, and for the judge its task aggregation over the same samples."""
    from lmms_eval.api.reasoning import strip_reasoning_tags

    from medbench.leaderboard.recompute import REGISTRY, Sample
    from medbench.lmms.records import Deferred
    from medbench.metrics.registry import METRICS

    completions = [row[0] for row in ROWS]
    columns = {"answer": [row[1] for row in ROWS], "answer_type": [row[2] for row in ROWS]}
    # What lmms-eval logs as the answer: its own reasoning-tag stripping, with medbench's tag pairs.
    logged = [strip_reasoning_tags(text, [list(pair) for pair in REASONING_TAGS]) for text in completions]
    assert logged == [strip_reasoning(text) for text in completions]
    samples = [Sample(i, str(i), logged[i], row[1], row[2], {}) for i, row in enumerate(ROWS)]
    with LoopbackJudgeServer() as server:
        for key, value in server.environment().items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("MEDBENCH_JUDGE_PARTS", "nli")
        checked = set()
        for name, spec in REWARDS.items():
            values = score(reward_fn(name, judge=judge_config(server)), None, completions, **columns)
            if len(spec.metrics) == 1:
                per_sample = REGISTRY[spec.metrics[0]].per_sample
                expected = [per_sample(sample.answer) for sample in samples]
            else:  # the judge's metrics: the task's own aggregation over the open samples, one value per metric
                open_rows = [i for i, row in enumerate(ROWS) if row[2] == OPEN]
                by_metric = {}
                for metric in spec.declarations:
                    items = [Deferred(str(i), logged[i], ROWS[i][1]) for i in open_rows]
                    metric.corpus_function(items, metric.name)
                    sign = 1.0 if metric.higher_is_better else -1.0
                    by_metric[metric.name] = {i: sign * item["score"] for i, item in zip(open_rows, items, strict=True)}
                expected = [sum(v[i] for v in by_metric.values()) if i in open_rows else None for i in range(len(ROWS))]
                assert set(by_metric) == {"judge_completeness", "judge_hallucination"}
                assert METRICS["judge_completeness"].higher_is_better and not METRICS["judge_hallucination"].higher_is_better
            assert values == pytest.approx(expected), name
            assert any(v is not None for v in values) and any(v is None for v in values) == (name in (
                "closed_exact", "open_recall", "judge_nli")), name
            checked.add(name)
    assert checked == set(REWARDS)


def test_strip_reasoning_matches_lmms_eval_rule():
    from lmms_eval.api.reasoning import strip_reasoning_tags

    pairs = [list(pair) for pair in REASONING_TAGS]
    cases = [
        "<think>a</think>b", "x<think>a</think>y<think>c</think>z", "only reasoning</think> answer",
        "<think>never closed", "<thinking>t</thinking> Yes", "<think>a</think><thinking>b</thinking>c",
        "  plain answer  ", "</think>", "<THINK>upper</THINK> kept",
    ]
    for text in cases:
        expected = strip_reasoning_tags(text, pairs) if any(t in text for p in pairs for t in p) else text
        assert strip_reasoning(text) == expected, text
        assert strip_reasoning(strip_reasoning(text)) == strip_reasoning(text)


def test_evaluation_tasks_score_the_answer_part():
    from medbench.lmms.failures import report_process_results
    from medbench.lmms.vqa import process_results

    doc = {"id": "q1", "source": "t", "answer": "yes", "answer_type": CLOSED}
    record = process_results(doc, ["<think>no, wait</think> Yes"])
    assert record["closed_accuracy"] == 1.0 and record["medbench_detail"]["read_as"] == "yes"
    assert record["closed_accuracy"] == score(reward_fn("closed_exact"), None, ["<think>no, wait</think> Yes"],
                                              answer=["yes"], answer_type=[CLOSED])[0]
    report = report_process_results({"id": "r1", "reference": REFERENCE}, [f"<think>draft</think>{REFERENCE}"])
    assert report["rouge_l"] == 1.0


def test_a_runner_keeps_what_its_rate_controller_learned_from_batch_to_batch():
    # A GRPO reward judges one small batch per step. The first batch of a runner opens with one request (a server's
    # limits are unknown until its first answer); later batches in the same event loop go out at once, so a step
    # costs one round trip, not two.
    from medbench.judge.runner import JudgeItem, JudgeRunner

    facts = ("The heart is enlarged.", "There is a right pleural effusion.")

    def batch(step: int) -> list[JudgeItem]:
        return [JudgeItem(id=f"{step}-{i}", prediction=f"The heart is enlarged ({step}, {i}).", reference=REFERENCE,
                          facts=facts) for i in range(6)]

    with LoopbackJudgeServer(latency=0.05) as server:
        runner = JudgeRunner(judge_config(server))
        peaks = []

        async def two_steps() -> None:
            for step in range(2):
                server.max_in_flight = 0
                await runner.judge_async(batch(step), ("nli",))
                peaks.append(server.max_in_flight)

        asyncio.run(two_steps())
    first, second = peaks
    assert first < 6  # the first request went alone
    assert second == 6  # every request of the next batch was in flight together
