"""The judge against servers that behave like real endpoints: GPT-5's parameter rules, a bad key, a dead URL,
a judge whose answers cannot be parsed, a rate-limited server. Real ``openai`` client, loopback servers."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from judge_server import LoopbackJudgeServer

from medbench.cli import main as medbench_main
from medbench.judge.cache import JudgeCache
from medbench.judge.client import JudgeAbort, JudgeConfigError, OpenAITransport, summarize_attempts
from medbench.judge.config import JudgeConfig
from medbench.judge.ratelimit import RateController, parse_duration, parse_retry_after, read_budget, retry_delay
from medbench.judge.runner import JudgeItem, JudgeRunner

SECRET = "sk-medbench-endpoints-SECRET-9090"
REPO = Path(__file__).resolve().parents[2]


def items(count: int) -> list[JudgeItem]:
    return [
        JudgeItem(f"s{i}", f"The heart is enlarged in case {i}.", "r", facts=(f"The heart is enlarged in case {i}.", "No effusion."))
        for i in range(count)
    ]


def config(server_or_url, **overrides) -> JudgeConfig:
    base_url = server_or_url if isinstance(server_or_url, str) else server_or_url.base_url
    values = dict(
        model="loopback-judge", base_url=base_url, api_key=SECRET, timeout=5.0, backoff_base=0.001, backoff_max=0.05,
        max_retries=3, concurrency=8, progress=False,
    )
    values.update(overrides)
    return JudgeConfig(**values)


def dead_url() -> str:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def run_cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "medbench", "judge", *args, "--no-progress"],
        env={**os.environ, **env}, cwd=REPO, capture_output=True, text=True, timeout=180,
    )


def write_samples(path: Path, count: int, *, task_prefix: str = "case") -> None:
    with path.open("w") as handle:
        for index in range(count):
            text = f"The heart is enlarged in {task_prefix} {index}."
            record = {"doc_id": index, "target": text, "filtered_resps": [text],
                      "medbench_detail": {"id": f"{task_prefix}-{index}", "facts": [text]}}
            handle.write(json.dumps(record) + "\n")


# -- GPT-5 / o-series parameter rules -------------------------------------------------------------------------


def test_known_reasoning_family_gets_max_completion_tokens_and_no_temperature():
    with LoopbackJudgeServer(reasoning=True) as server:
        report = JudgeRunner(config(server, model="gpt-5-mini")).judge(items(6), parts=("nli",))
        bodies = [r.body for r in server.requests]
    assert all(not v.failures for v in report.samples)
    assert server.statuses() == {200: 6}  # right the first time: no 400 at all
    assert all("max_completion_tokens" in b and "max_tokens" not in b and "temperature" not in b for b in bodies)
    request = report.judge["request"]
    assert request["token_limit_parameter"] == "max_completion_tokens"
    assert request["temperature"] == "server default (not sent)"


def test_unknown_model_learns_from_the_400_once_and_records_it():
    with LoopbackJudgeServer(reasoning=True) as server:
        runner = JudgeRunner(config(server, model="house-reasoner-2", concurrency=4))
        report = runner.judge(items(12), parts=("nli",))
        rejected = server.statuses().get(400, 0)
        # The next batch (same process, same endpoint and model) sends the learnt parameters at once.
        again = JudgeRunner(config(server, model="house-reasoner-2", concurrency=4)).judge(
            [JudgeItem("new", "Other text.", "r", facts=("Other text.",))], parts=("nli",)
        )
        assert server.statuses().get(400, 0) == rejected
    assert all(not v.failures for v in report.samples), [v.failures for v in report.samples]
    assert 2 <= rejected <= 2 * 4  # one per parameter, at most one wave of the in-flight requests each
    assert report.usage["failures"] == 0 and report.usage["retries"] == 0  # adaptation is not a retry
    learnt = report.judge["request"]["learnt_from_server"]
    assert any("max_completion_tokens instead of max_tokens" in note for note in learnt)
    assert any("temperature omitted" in note and "Only the default (1) value is supported" in note for note in learnt)
    assert not again.samples[0].failures


def test_a_rejection_keeps_the_servers_message():
    with LoopbackJudgeServer(script=["400"]) as server:
        report = JudgeRunner(config(server)).judge(items(3), parts=("nli",))
    failed = [v for v in report.samples if v.failures]
    assert len(failed) == 1
    reason = failed[0].failures["completeness"]
    assert "request rejected (400: This model's maximum context length is 8192 tokens." in reason


def test_the_same_rejection_on_every_request_stops_the_run_with_the_message():
    with LoopbackJudgeServer(failure_rate=1.0, faults=["400"]) as server:
        with pytest.raises(JudgeAbort, match="rejected every request.*maximum context length") as error:
            JudgeRunner(config(server, concurrency=2, fail_fast_after=4)).judge(items(50), parts=("nli",))
        assert server.count() < 50
    assert "\n" not in str(error.value)


# -- bad key, dead URL: one line, exit 2, nothing lost ----------------------------------------------------------


def test_bad_key_exits_2_with_one_line_and_no_traceback(tmp_path):
    samples = tmp_path / "2026-01-01T00-00-00_samples_medbench_amboss.jsonl"
    write_samples(samples, 40)
    with LoopbackJudgeServer(failure_rate=1.0, faults=["401"], latency=0.01) as server:
        env = {"MEDBENCH_JUDGE_MODEL": "loopback", "MEDBENCH_JUDGE_BASE_URL": server.base_url,
               "MEDBENCH_JUDGE_API_KEY": SECRET, "MEDBENCH_JUDGE_CACHE": "off", "MEDBENCH_JUDGE_CONCURRENCY": "16"}
        for _ in range(3):  # the old failure (a traceback from tasks left running) was intermittent
            result = run_cli([str(tmp_path)], env)
            assert result.returncode == 2, result.stderr
            assert "Traceback" not in result.stderr and "Task exception" not in result.stderr, result.stderr
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            # The server quotes the key it got; the message keeps the server's words without the key.
            assert len(lines) == 1 and "rejected the API key (401: Incorrect API key provided: ***.)" in lines[0], result.stderr
            assert SECRET not in result.stderr + result.stdout
        assert server.count() <= 3 * 16


def test_dead_url_stops_after_a_few_attempts_naming_the_url():
    url = dead_url()
    attempts = []

    class Counting(OpenAITransport):
        async def __call__(self, messages):
            attempts.append(1)
            return await super().__call__(messages)

    cfg = config(url, concurrency=4, fail_fast_after=6)
    with pytest.raises(JudgeAbort, match="cannot reach the judge at http://127.0.0.1:.*none has succeeded") as error:
        JudgeRunner(cfg, transport=Counting(cfg)).judge(items(500), parts=("nli",))
    assert len(attempts) <= 6 + 4  # the breaker's count plus what was already in flight, not 500 × 4
    assert url.rsplit(":", 1)[1].split("/")[0] in str(error.value)


def test_dead_url_on_the_command_line(tmp_path):
    samples = tmp_path / "2026-01-01T00-00-00_samples_medbench_mimic_cxr.jsonl"
    write_samples(samples, 30)
    result = run_cli([str(samples)], {"MEDBENCH_JUDGE_MODEL": "m", "MEDBENCH_JUDGE_BASE_URL": dead_url(), "MEDBENCH_JUDGE_CACHE": "off"})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot reach the judge" in lines[0], result.stderr


def test_an_abort_keeps_what_was_already_scored(tmp_path):
    cache = tmp_path / "cache.sqlite"
    with LoopbackJudgeServer(script=[None] * 5 + ["401"] * 200) as server, pytest.raises(JudgeConfigError):
        JudgeRunner(config(server, concurrency=1, cache_path=cache)).judge(items(20), parts=("nli",))
    assert len(JudgeCache(cache)) == 5
    with LoopbackJudgeServer() as server:
        report = JudgeRunner(config(server, cache_path=cache)).judge(items(20), parts=("nli",))
        assert server.count() == 15  # the five answers of the stopped run are not asked again
    assert report.usage["cache_hits"] == 5 and all(not v.failures for v in report.samples)


def test_a_stop_writes_what_was_answered_and_exits_2(tmp_path, monkeypatch, capsys):
    samples = tmp_path / "2026-01-01T00-00-00_samples_medbench_amboss.jsonl"
    write_samples(samples, 40)
    with LoopbackJudgeServer(script=[None] * 10 + ["wrong_count"] * 500) as server:
        for name, value in {**server.environment(), "MEDBENCH_JUDGE_CONCURRENCY": "1"}.items():
            monkeypatch.setenv(name, value)
        assert medbench_main(["judge", str(tmp_path), "--no-progress"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "unparseable answers in its last 20" in err[0]
    verdicts = [json.loads(line) for line in next(tmp_path.glob("*_judge_samples_*.jsonl")).read_text().splitlines()]
    results = json.loads(next(tmp_path.glob("*_judge_results_*.json")).read_text())
    scored = [v for v in verdicts if not v["failures"]]
    assert len(verdicts) == 40 and len(scored) == 10
    stopped = [v for v in verdicts if "not judged: the run stopped (the judge 'loopback-judge' gave" in v["failures"].get("completeness", "")]
    assert len(stopped) + len(scored) + 4 >= 40  # the rest: stopped, or given up on before the stop (3 attempts each)
    assert results["results"]["medbench_amboss"]["judge_unscored,none"] == 30
    assert results["results"]["medbench_amboss"]["judge_completeness,none"] == 1.0
    assert "unparseable answers" in results["medbench_judge"]["usage"]["stopped"]


@pytest.mark.parametrize("fault", ["500", "error200"])
def test_a_server_failing_everything_is_stopped(fault):
    with LoopbackJudgeServer(failure_rate=1.0, faults=[fault]) as server:
        with pytest.raises(JudgeAbort, match=r"failed 40 requests in a row \((500 server error|200 with an error body \(upstream model overloaded\)) ×40\)"):
            JudgeRunner(config(server, concurrency=8)).judge(items(96), parts=("nli",))
        assert server.count() < 40 + 8  # not 96 samples × 4 attempts


def test_ctrl_c_is_one_line(monkeypatch, tmp_path, capsys):
    from medbench.judge import runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    write_samples(tmp_path / "2026-01-01T00-00-00_samples_medbench_amboss.jsonl", 2)
    monkeypatch.setattr(runner.JudgeRunner, "judge_many", interrupted)
    monkeypatch.setenv("MEDBENCH_JUDGE_MODEL", "loopback")
    monkeypatch.setenv("MEDBENCH_JUDGE_BASE_URL", dead_url())
    assert medbench_main(["judge", str(tmp_path), "--no-progress"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["medbench: interrupted; what finished is kept: run the same command again to resume"]


def test_a_fastapi_422_keeps_its_reason_and_adapts_the_parameters():
    with LoopbackJudgeServer(fastapi_strict=True) as server:
        report = JudgeRunner(config(server, model="o3-mini")).judge(items(2), parts=("nli",))
        statuses = server.statuses()
    assert all(not v.failures for v in report.samples) and statuses == {422: 1, 200: 2}
    learnt = report.judge["request"]["learnt_from_server"]
    assert learnt == ["max_tokens instead of max_completion_tokens (server: max_completion_tokens: Extra inputs are not permitted)"]


# -- a judge whose answers cannot be parsed ---------------------------------------------------------------------


def test_unparseable_judge_stops_the_run_showing_an_answer():
    with LoopbackJudgeServer(failure_rate=1.0, faults=["wrong_count"]) as server:
        with pytest.raises(JudgeAbort, match=r"unparseable answers in its last 20 \(unparseable answer \(1 labels for 2 facts\)\), e\.g\. '\[\"1\. ") as error:
            JudgeRunner(config(server, concurrency=4)).judge(items(200), parts=("nli",))
        assert server.count() < 40  # not 200 samples × 3 answers
    assert "\n" not in str(error.value)


def test_unparseable_answers_are_recorded_not_cached_and_not_asked_again(tmp_path):
    cache = tmp_path / "cache.sqlite"
    with LoopbackJudgeServer(failure_rate=1.0, faults=["wrong_count"]) as server:
        cfg = config(server, cache_path=cache, max_parse_retries=2)
        first = JudgeRunner(cfg).judge(items(3), parts=("nli",))
        assert server.count() == 3 * 3  # each request asked three times, then given up
        reason = first.samples[0].failures["completeness"]
        assert "no usable answer after 3 attempts: unparseable answer (1 labels for 2 facts) ×3" in reason
        second = JudgeRunner(cfg).judge(items(3), parts=("nli",))
        assert server.count() == 9  # a re-run does not hammer the same prompts
        assert "not asked again" in second.samples[0].failures["completeness"]
        assert second.usage["skipped_unparseable"] == 3
        with sqlite3.connect(cache) as db:
            assert db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 0  # never cached as a score
            assert db.execute("SELECT MAX(attempts) FROM unparseable").fetchone()[0] == 3
    with LoopbackJudgeServer() as server:  # a fixed judge, asked on purpose: scored, record cleared
        third = JudgeRunner(config(server, cache_path=cache, retry_unparseable=True)).judge(items(3), parts=("nli",))
        assert server.count() == 3
    assert all(not v.failures for v in third.samples)
    with sqlite3.connect(cache) as db:
        assert db.execute("SELECT COUNT(*) FROM unparseable").fetchone()[0] == 0


def test_failure_reason_lists_every_attempt():
    with LoopbackJudgeServer(script=["429", "500", "garbage", "wrong_count", "500"]) as server:
        report = JudgeRunner(config(server, max_retries=3, max_parse_retries=0)).judge(items(1), parts=("nli",))
        assert server.count() == 4
    reason = report.samples[0].failures["completeness"]
    assert reason.endswith(
        "no usable answer after 4 attempts: 429 rate limited; 500 server error; malformed response body; "
        "unparseable answer (1 labels for 2 facts)"
    ), reason
    assert summarize_attempts(["a", "a", "b", "a"]) == "a ×2; b; a"


# -- rate limits ------------------------------------------------------------------------------------------------


def test_rate_limited_server_every_sample_scored_and_pace_learnt():
    with LoopbackJudgeServer(rate_limit=20, latency=0.02) as server:
        report = JudgeRunner(config(server, concurrency=16, backoff_max=2.0)).judge(items(60), parts=("nli",))
        statuses = server.statuses()
    assert all(not v.failures for v in report.samples)
    assert statuses[200] == 60
    assert report.usage["rate_limited"] == statuses.get(429, 0)
    paced = report.judge["request"]["rate_control"]["paced_requests_per_second"]
    assert paced is not None and 10 < paced < 25  # learnt from x-ratelimit-* headers (20/s)


def test_small_burst_with_per_minute_headers_keeps_429s_rare():
    """OpenAI's headers are per minute (remaining stays high until the 429); the bucket behind them holds 5."""
    with LoopbackJudgeServer(rate_limit=20, burst=5, per_minute_headers=True, latency=0.05) as server:
        report = JudgeRunner(config(server, concurrency=16, backoff_max=2.0)).judge(items(100), parts=("nli",))
        statuses = server.statuses()
        first = sorted(server.requests, key=lambda r: r.at)[:16]
    assert all(not v.failures for v in report.samples)
    assert statuses[200] == 100
    assert statuses.get(429, 0) / sum(statuses.values()) < 0.05, statuses
    assert sum(r.status == 429 for r in first) <= 1  # no opening wave of 16 requests into a bucket of 5
    rate = report.judge["request"]["rate_control"]
    assert 18 <= rate["paced_requests_per_second"] <= 20  # paced at the measured rate, not switched off


@pytest.mark.parametrize(
    "text, seconds",
    [("1s", 1.0), ("6m0s", 360.0), ("120ms", 0.12), ("1h2m3.5s", 3723.5), ("0.5", 0.5), ("2m", 120.0), ("", None), ("soon", None)],
)
def test_openai_durations(text, seconds):
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_retry_delay_reads_every_header_form():
    assert retry_delay({"retry-after-ms": "250", "retry-after": "1"}) == pytest.approx(0.25)
    assert retry_delay({"retry-after": "1.5"}) == pytest.approx(1.5)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s",
               "x-ratelimit-remaining-tokens": "5000", "x-ratelimit-reset-tokens": "6m0s"}
    assert retry_delay(headers) == pytest.approx(2.0)  # the exhausted budget decides, not the longest reset
    assert retry_delay({}) is None
    budget = read_budget({"x-ratelimit-limit-requests": "1200", "x-ratelimit-remaining-requests": "1199",
                          "x-ratelimit-reset-requests": "50ms"}, "requests")
    assert budget is not None and budget.refill_rate == pytest.approx(20.0)


def test_aimd_halves_once_per_wave_and_grows_back():
    async def scenario() -> RateController:
        clock = [0.0]
        control = RateController(16, rng=lambda: 0.5, clock=lambda: clock[0])
        probe = await control.acquire()  # one request until the server has answered once
        assert not control._waiters and control.in_flight == 1
        control.release(probe, succeeded=True)
        starts = [await control.acquire() for _ in range(8)]
        clock[0] = 1.0
        for started in starts:  # eight 429s from one wave of requests
            control.release(started, rate_limited=True)
        assert control.limit == 8 and control.decreases == 1
        started = await control.acquire()
        clock[0] = 2.0
        control.release(started, rate_limited=True)  # a request sent after the cut: cut again
        assert control.limit == 4
        for _ in range(40):
            started = await control.acquire()
            control.release(started, succeeded=True)
        return control

    control = asyncio.run(scenario())
    assert 4 < control.limit <= 16 and control.in_flight == 0


def test_fixed_concurrency_keeps_the_limit():
    async def scenario() -> RateController:
        control = RateController(4, adaptive=False, rng=lambda: 0.5)
        started = await control.acquire()
        control.release(started, rate_limited=True)
        control.observe({"x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "1", "x-ratelimit-reset-requests": "1s"})
        return control

    control = asyncio.run(scenario())
    assert control.limit == 4 and control.rate is None and control.pause(1.0) == 0.0


# -- medbench judge RUN_DIR and the demo ------------------------------------------------------------------------


def test_run_dir_judges_only_long_form_files_all_at_once(tmp_path):
    run = tmp_path / "run" / "model"
    run.mkdir(parents=True)
    write_samples(run / "2026-01-01T00-00-00_samples_medbench_amboss.jsonl", 2, task_prefix="amboss")
    write_samples(run / "2026-01-01T00-00-00_samples_medbench_mimic_cxr.jsonl", 2, task_prefix="cxr")
    write_samples(run / "2026-01-01T00-00-00_samples_medbench_vqa_rad.jsonl", 5, task_prefix="vqa")
    with LoopbackJudgeServer(latency=0.3) as server:
        env = {"MEDBENCH_JUDGE_MODEL": "loopback", "MEDBENCH_JUDGE_BASE_URL": server.base_url, "MEDBENCH_JUDGE_CACHE": "off",
               "MEDBENCH_JUDGE_CONCURRENCY": "8"}
        result = run_cli([str(tmp_path / "run")], env)
        assert result.returncode == 0, result.stderr
        assert server.count() == 4  # two per long-form file, none for VQA
        # One request first (the server's limits are unknown until it answers), then the other three together:
        # the two files were judged together, not one after another.
        assert server.max_in_flight == 3
        judged = " ".join(r.messages[-1]["content"] for r in server.requests)
    assert "vqa" not in judged and "amboss" in judged and "cxr" in judged
    assert "skipping 1 file(s) of VQA or unknown tasks: medbench_vqa_rad" in result.stdout
    assert sorted(p.name for p in run.glob("*_judge_results_*")) == [
        "2026-01-01T00-00-00_judge_results_medbench_amboss.json", "2026-01-01T00-00-00_judge_results_medbench_mimic_cxr.json",
    ]


def test_demo_passes_the_judge_settings_through(monkeypatch):
    from medbench.commands.demo import demo_environment

    monkeypatch.setenv("MEDBENCH_JUDGE_MODEL", "local-judge")
    monkeypatch.setenv("MEDBENCH_JUDGE_BASE_URL", "http://127.0.0.1:8000/v1")
    monkeypatch.setenv("MEDBENCH_VQA_RAD", "/somewhere/else.jsonl")
    env = demo_environment()
    assert env["MEDBENCH_JUDGE_MODEL"] == "local-judge" and env["MEDBENCH_JUDGE_BASE_URL"].endswith("/v1")
    assert "MEDBENCH_VQA_RAD" not in env and env["MEDBENCH_DATA"] == "demo"
