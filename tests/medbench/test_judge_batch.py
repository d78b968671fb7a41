"""Batch API mode against a loopback server implementing /v1/files and /v1/batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from judge_server import LoopbackJudgeServer

from medbench.errors import MedbenchError
from medbench.judge.batch import BatchDriver
from medbench.judge.cache import JudgeCache
from medbench.judge.config import JudgeConfig, Price
from medbench.judge.runner import JudgeItem, JudgeRunner

REPO = Path(__file__).resolve().parents[2]


def items(count: int, *, facts: bool = True) -> list[JudgeItem]:
    out = []
    for i in range(count):
        reference = f"The heart is enlarged in case {i}. There is no effusion."
        out.append(JudgeItem(f"s{i}", f"The heart is enlarged in case {i}.", reference,
                             facts=(f"The heart is enlarged in case {i}.", "There is no effusion.") if facts else None))
    return out


def make(server: LoopbackJudgeServer, **overrides) -> JudgeConfig:
    values = dict(model="gpt-4.1-mini", base_url=server.base_url, api_key="sk-batch", progress=False, timeout=5.0)
    values.update(overrides)
    return JudgeConfig(**values)


def judge_with(driver: BatchDriver, config: JudgeConfig, cache: JudgeCache, batch: list[JudgeItem], parts=("nli",)):
    return driver.run(lambda transport: JudgeRunner(config, cache=cache, transport=transport).judge(batch, parts))


def test_rounds_until_every_request_is_answered_and_no_live_request(tmp_path):
    lines: list[str] = []
    with LoopbackJudgeServer() as server:
        config = make(server)
        driver = BatchDriver(config, tmp_path / "state", poll_seconds=0, say=lines.append)
        report = judge_with(driver, config, JudgeCache(None), items(4, facts=False), parts=("nli", "fabrication"))
        assert server.batch_api.created == 2  # round 1: facts + claims; round 2: the labelling that needs them
        assert all(r.fault == "batch" for r in server.requests)  # not one live chat request
        bodies = [r.body for r in server.requests]
    assert all(not v.failures for v in report.samples), [v.failures for v in report.samples]
    assert all("max_tokens" in b and b["temperature"] == 0 and b["model"] == "gpt-4.1-mini" for b in bodies)
    assert any(line.startswith("submitted batch batch_1") for line in lines)
    assert any("in_progress, 0/" in line for line in lines) and any("completed, " in line for line in lines)
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert [b["id"] for b in state["batches"]] == ["batch_1", "batch_2"] and all(b["downloaded"] for b in state["batches"])


def test_a_finished_batch_is_never_paid_twice(tmp_path):
    with LoopbackJudgeServer() as server:
        config = make(server)
        first = judge_with(BatchDriver(config, tmp_path, poll_seconds=0, say=lambda _: None), config, JudgeCache(None), items(3))
        # A new process with no answer cache at all: the downloaded batch output is enough.
        second = judge_with(BatchDriver(config, tmp_path, poll_seconds=0, say=lambda _: None), config, JudgeCache(None), items(3))
        assert server.batch_api.created == 1
    assert [v.scores for v in first.samples] == [v.scores for v in second.samples]


def test_a_killed_run_resumes_the_same_batch(tmp_path):
    class Killed(Exception):
        pass

    def die_after_submit(line: str) -> None:
        if line.startswith("submitted"):
            raise Killed  # the state file is already written

    with LoopbackJudgeServer() as server:
        config = make(server)
        with pytest.raises(Killed):
            judge_with(BatchDriver(config, tmp_path, poll_seconds=0, say=die_after_submit), config, JudgeCache(None), items(3))
        lines: list[str] = []
        report = judge_with(BatchDriver(config, tmp_path, poll_seconds=0, say=lines.append), config, JudgeCache(None), items(3))
        assert server.batch_api.created == 1
    assert lines[0] == "resuming batch batch_1 (3 requests)"
    assert all(not v.failures for v in report.samples)


def test_an_expired_batch_keeps_its_answers_and_resends_the_rest(tmp_path):
    lines: list[str] = []
    with LoopbackJudgeServer() as server:
        server.batch_api.expire_after = 2
        config = make(server)
        driver = BatchDriver(config, tmp_path, poll_seconds=0, say=lines.append)

        def run(transport):
            server.batch_api.expire_after = 2 if server.batch_api.created == 0 else None
            return JudgeRunner(config, cache=JudgeCache(None), transport=transport).judge(items(5), ("nli",))

        report = driver.run(run)
        assert server.batch_api.created == 2
        second = json.loads((tmp_path / "state.json").read_text())["batches"][1]
        assert len(second["requests"]) == 3  # only what expired
    assert any("expired: keeping its 2 answers" in line for line in lines)
    assert all(not v.failures for v in report.samples)


def test_failed_lines_are_recorded_with_the_servers_message(tmp_path):
    with LoopbackJudgeServer() as server:
        server.batch_api.fail_every = 3
        config = make(server)
        report = judge_with(BatchDriver(config, tmp_path, poll_seconds=0, say=lambda _: None), config, JudgeCache(None), items(6))
        assert server.batch_api.created == 1  # failed lines are not resent
    failed = [v for v in report.samples if v.failures]
    assert len(failed) == 2 and len([v for v in report.samples if v.scores]) == 4
    assert "batch request failed (400: This model's maximum context length is 8192 tokens." in failed[0].failures["completeness"]


def test_a_failed_batch_is_sent_again_once_then_stops_with_one_line(tmp_path):
    lines: list[str] = []
    with LoopbackJudgeServer() as server:
        server.batch_api.status_after_create = "failed"
        config = make(server)
        with pytest.raises(MedbenchError, match=r"batch batch_2 failed: .*already sent again once") as stop:
            judge_with(BatchDriver(config, tmp_path, poll_seconds=0, say=lines.append), config, JudgeCache(None), items(2))
        assert server.batch_api.created == 2
    assert "sending 2 request(s) left unanswered by batch_1 again in a new batch (once)" in lines
    partial = stop.value.partial  # what the caller writes before exiting: every sample unscored, with the reason
    assert all("queued for the Batch API" in v.failures["completeness"] for v in partial.samples)


class Killed(Exception):
    pass


class DiesAfterCreate:
    """An openai client whose process is killed right after the server created the batch."""

    def __init__(self, real) -> None:
        self.real = real

    def __getattr__(self, name):
        return getattr(self.real, name)

    def with_options(self, **options):
        real = self.real.with_options(**options)

        class Batches:
            @staticmethod
            def create(**arguments):
                real.batches.create(**arguments)
                raise Killed

        return type("Client", (), {"batches": Batches()})()


def test_a_create_answered_after_the_timeout_pays_for_one_batch(tmp_path):
    lines: list[str] = []
    with LoopbackJudgeServer() as server:
        server.batch_api.create_delay = 1.5  # the batch exists, the answer comes after the client gave up
        config = make(server, timeout=0.5)
        report = judge_with(BatchDriver(config, tmp_path, poll_seconds=0, say=lines.append), config, JudgeCache(None), items(3))
        assert server.batch_api.created == 1  # not one per SDK retry
    assert any(line.startswith("found batch batch_1, created from file-1 although") for line in lines), lines
    assert all(not v.failures for v in report.samples)
    state = json.loads((tmp_path / "state.json").read_text())
    assert [(b["id"], b["input_file_id"]) for b in state["batches"]] == [("batch_1", "file-1")]


def test_a_kill_during_creation_adopts_the_batch_instead_of_paying_again(tmp_path):
    import openai

    with LoopbackJudgeServer() as server:
        config = make(server)
        real = openai.OpenAI(api_key="sk-batch", base_url=server.base_url, max_retries=0)
        with pytest.raises(Killed):
            judge_with(BatchDriver(config, tmp_path, poll_seconds=0, client=DiesAfterCreate(real), say=lambda _: None),
                       config, JudgeCache(None), items(3))
        intent = json.loads((tmp_path / "state.json").read_text())["batches"]
        assert intent[0]["id"] is None and intent[0]["input_file_id"] == "file-1"  # recorded before creating
        lines: list[str] = []
        report = judge_with(BatchDriver(config, tmp_path, poll_seconds=0, say=lines.append), config, JudgeCache(None), items(3))
        assert server.batch_api.created == 1
    assert lines[0] == "found batch batch_1, already created from file-1: not creating another"
    assert all(not v.failures for v in report.samples)


def test_a_batch_cancelled_from_outside_is_sent_again_once(tmp_path):
    lines: list[str] = []
    with LoopbackJudgeServer() as server:
        server.batch_api.answer_before_cancel = 1

        def cancel_the_first(line: str) -> None:
            lines.append(line)
            if line.startswith("submitted batch batch_1"):
                server.batch_api.cancel("batch_1")

        config = make(server)
        report = judge_with(BatchDriver(config, tmp_path, poll_seconds=0, say=cancel_the_first), config, JudgeCache(None), items(3))
        assert server.batch_api.created == 2
    assert "batch batch_1 cancelled: keeping its 1 answers" in lines
    assert "sending 2 request(s) left unanswered by batch_1 again in a new batch (once)" in lines
    assert all(not v.failures for v in report.samples)


def test_requests_cancelled_twice_are_unscored_with_the_reason_not_sent_a_third_time(tmp_path):
    with LoopbackJudgeServer() as server:
        server.batch_api.answer_before_cancel = 1

        def cancel_every_batch(line: str) -> None:
            if line.startswith("submitted batch"):
                server.batch_api.cancel(line.split()[2].rstrip(":"))

        config = make(server)
        report = judge_with(BatchDriver(config, tmp_path, poll_seconds=0, say=cancel_every_batch), config, JudgeCache(None), items(3))
        assert server.batch_api.created == 2
        again = judge_with(BatchDriver(config, tmp_path, poll_seconds=0, say=cancel_every_batch), config, JudgeCache(None), items(3))
        assert server.batch_api.created == 2  # a re-run neither loops nor stops
    unscored = [v for v in report.samples if v.failures]
    assert len(unscored) == 1 and "lost by two batches (batch_1 cancelled, batch_2 cancelled)" in unscored[0].failures["completeness"]
    assert [v.scores for v in again.samples] == [v.scores for v in report.samples]


def test_billing_counts_every_round_and_failed_lines_can_be_retried(tmp_path):
    with LoopbackJudgeServer() as server:
        server.batch_api.fail_every = 3
        config = make(server, prices={"gpt-4.1-mini": Price(input=1.0, output=2.0)})
        driver = BatchDriver(config, tmp_path, poll_seconds=0, say=lambda _: None)
        first = judge_with(driver, config, JudgeCache(None), items(6, facts=False))
        assert server.batch_api.created == 2  # facts, then labels
        billing = driver.billing()
        answered = 4 + 3  # 6 fact requests, every third failed; then 4 labelling requests, the third failed
        assert billing["batch_prompt_tokens"] == 10 * answered and billing["batches"] == 2
        assert billing["cost_usd"] == pytest.approx(0.5 * (billing["batch_prompt_tokens"] * 1.0 + billing["batch_completion_tokens"] * 2.0) / 1e6)
        assert sum(bool(v.failures) for v in first.samples) == 3
        server.batch_api.fail_every = None
        retried = judge_with(BatchDriver(config, tmp_path, poll_seconds=0, say=lambda _: None, retry_failed=True),
                             config, JudgeCache(None), items(6, facts=False))
    assert all(not v.failures for v in retried.samples)


def test_batch_on_the_command_line(tmp_path):
    samples = tmp_path / "2026-01-01T00-00-00_samples_medbench_amboss.jsonl"
    with samples.open("w") as handle:
        for item in items(3):
            handle.write(json.dumps({"doc_id": item.id, "target": item.reference, "filtered_resps": [item.prediction],
                                     "medbench_detail": {"id": item.id, "facts": list(item.facts or ())}}) + "\n")
    with LoopbackJudgeServer() as server:
        env = {**os.environ, "MEDBENCH_JUDGE_MODEL": "gpt-4.1-mini", "MEDBENCH_JUDGE_BASE_URL": server.base_url,
               "MEDBENCH_JUDGE_API_KEY": "sk-batch", "MEDBENCH_JUDGE_CACHE": str(tmp_path / "cache.sqlite")}
        command = [sys.executable, "-m", "medbench", "judge", str(tmp_path), "--batch", "--batch-poll", "0", "--no-progress"]
        result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        again = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and server.batch_api.created == 1
    assert "submitted batch batch_1: 3 requests" in result.stdout
    results = json.loads((tmp_path / "2026-01-01T00-00-00_judge_results_medbench_amboss.json").read_text())
    assert results["medbench_judge"]["usage"]["batch_api"] is True
    assert results["results"]["medbench_amboss"]["judge_unscored,none"] == 0
