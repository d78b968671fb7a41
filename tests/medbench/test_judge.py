"""The judge against a loopback OpenAI-compatible server: faults, retries, cache, resume, secrets."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from judge_server import LoopbackJudgeServer, fake_judge_answer, request_key

from medbench.errors import MedbenchError
from medbench.judge.cache import JudgeCache
from medbench.judge.client import JudgeConfigError
from medbench.judge.config import JudgeConfig, load_prices
from medbench.judge.prompts import load_prompt
from medbench.judge.runner import JudgeItem, JudgeRunner, parse_severity, parse_text_list

SECRET = "sk-medbench-test-SECRET-4242"
ALL_PARTS = ("nli", "fabrication", "severity")
REPO = Path(__file__).resolve().parents[2]


def make_items(count: int, *, shared_reference: bool = False) -> list[JudgeItem]:
    """Distinct samples (so one failing request hits one sample), with mixed agreement."""
    items = []
    for i in range(count):
        reference = "The heart is enlarged. There is a right pleural effusion. No pneumothorax."
        if not shared_reference:
            reference += f" Study number {i} shows a {i} mm nodule."
        side = "left" if i % 3 == 0 else "right"
        prediction = f"The heart is enlarged. There is a {side} pleural effusion. Nodule of {i} mm."
        items.append(JudgeItem(id=f"s{i}", prediction=prediction, reference=reference))
    return items


def make_config(server: LoopbackJudgeServer, **overrides) -> JudgeConfig:
    values = dict(
        model="loopback-judge",
        base_url=server.base_url,
        api_key=SECRET,
        timeout=3.0,  # generous: a loaded CI machine must not turn slow answers into timeouts
        backoff_base=0.001,
        backoff_max=0.01,
        max_retries=3,
        concurrency=8,
        progress=False,
    )
    values.update(overrides)
    return JudgeConfig(**values)


@pytest.fixture
def server():
    with LoopbackJudgeServer(hang_seconds=5) as running:
        yield running


def test_clean_run_scores_every_metric(server):
    report = JudgeRunner(make_config(server)).judge(make_items(6), parts=ALL_PARTS)
    for verdict in report.samples:
        assert not verdict.failures
        assert set(verdict.scores) == {"completeness", "hallucination", "fabrication", "severe"}
    first = report.samples[0]  # prediction says "left", reference says "right"
    assert first.details["labels"][1] == "Contradiction"
    assert first.scores["hallucination"] > 0 and first.details["severity"] == "severe"
    assert report.summary["completeness"]["scored"] == 6 and report.summary["completeness"]["failed"] == 0
    assert report.judge["prompts"]["nli"]["id"] == "nli-v1"
    assert report.judge["prompts"]["nli"]["sha256"] == load_prompt("nli-v1").sha256
    assert report.usage["requests"] == server.count() and report.usage["prompt_tokens"] > 0


@pytest.mark.parametrize("fault", ["429", "500", "hang", "garbage", "wrong_count"])
def test_each_fault_is_retried_then_scored(fault):
    with LoopbackJudgeServer(script=[fault], hang_seconds=5) as server:
        items = [JudgeItem("a", "The heart is enlarged.", "The heart is enlarged.", facts=("The heart is enlarged.",))]
        report = JudgeRunner(make_config(server)).judge(items, parts=("nli",))
        assert report.samples[0].scores == {"completeness": 1.0, "hallucination": 0.0}
        assert server.count(fault) == 1 and server.count(None) == 1
        assert report.usage["retries"] == 1 and sum(report.usage["errors"].values()) == 1


def test_exhausted_retries_are_recorded_not_zero():
    with LoopbackJudgeServer(script=["500"] * 4) as server:
        items = [JudgeItem("a", "The heart is enlarged.", "The heart is enlarged.", facts=("The heart is enlarged.",))]
        report = JudgeRunner(make_config(server, max_retries=3)).judge(items, parts=("nli",))
    verdict = report.samples[0]
    assert verdict.scores == {}
    assert "no usable answer after 4 attempts: 500 server error ×4" in verdict.failures["completeness"]
    assert report.summary["completeness"] == {
        "mean": None, "stderr": None, "scored": 0, "failed": 1, "higher_is_better": True,
    }


def test_wrong_label_count_in_authors_mode_is_kept_as_the_authors_did():
    with LoopbackJudgeServer(script=["wrong_count"]) as server:
        facts = ("The heart is enlarged.", "There is an effusion.")
        items = [JudgeItem("a", "The heart is enlarged. There is an effusion.", "x", facts=facts)]
        report = JudgeRunner(make_config(server, scoring="authors")).judge(items, parts=("nli",))
    # One label missing counts as Neutral: completeness 1/2, no retry.
    assert report.samples[0].scores == {"completeness": 0.5, "hallucination": 0.0}
    assert server.count() == 1


def test_authentication_error_aborts_with_one_line():
    with LoopbackJudgeServer(script=["401"]) as server, pytest.raises(JudgeConfigError, match="rejected the API key"):
        JudgeRunner(make_config(server)).judge(make_items(1), parts=("nli",))


def test_thirty_percent_failures_every_sample_scored_or_marked_failed():
    items = make_items(40)
    with LoopbackJudgeServer(failure_rate=0.3, seed=3, hang_seconds=5) as server:
        # max_retries=1 so that some requests really do fail for good.
        report = JudgeRunner(make_config(server, max_retries=1, timeout=0.3)).judge(items, parts=ALL_PARTS)
        faults = {f: server.count(f) for f in ("429", "500", "hang", "garbage", "wrong_count")}
    assert all(count > 0 for count in faults.values()), faults
    assert [v.id for v in report.samples] == [i.id for i in items]
    for verdict in report.samples:
        for metric in ("completeness", "hallucination", "fabrication", "severe"):
            assert (metric in verdict.scores) != (metric in verdict.failures), (verdict.id, metric)
            if metric in verdict.failures:
                assert verdict.failures[metric]  # a reason, never a silent gap
    for metric, stats in report.summary.items():
        assert stats["scored"] + stats["failed"] == len(items), metric
        scored = [v.scores[metric] for v in report.samples if metric in v.scores]
        assert stats["mean"] == pytest.approx(sum(scored) / len(scored))  # failures are not averaged in as 0
    assert sum(s["failed"] for s in report.summary.values()) > 0


def test_rerun_is_served_from_cache_with_zero_requests(tmp_path):
    items = make_items(5)
    with LoopbackJudgeServer() as server:
        config = make_config(server, cache_path=tmp_path / "cache.sqlite")
        first = JudgeRunner(config).judge(items, parts=ALL_PARTS)
        sent = server.count()
        second = JudgeRunner(config).judge(items, parts=ALL_PARTS)
        assert server.count() == sent  # no new request
    assert second.usage["requests"] == 0 and second.usage["cache_hits"] == sent
    assert [v.scores for v in second.samples] == [v.scores for v in first.samples]
    assert second.usage["cached_prompt_tokens"] == first.usage["prompt_tokens"]


def test_identical_references_are_split_into_facts_once(server):
    items = make_items(6, shared_reference=True)
    JudgeRunner(make_config(server)).judge(items, parts=("nli",))
    roles = [r.role for r in server.requests]
    assert roles.count("facts") == 1 and roles.count("nli") == len({i.prediction for i in items})


def test_precomputed_facts_skip_extraction(server):
    items = [JudgeItem("a", "The heart is enlarged.", "ignored", facts=("1. The heart is enlarged.", "2. No effusion."))]
    report = JudgeRunner(make_config(server)).judge(items, parts=("nli",))
    assert [r.role for r in server.requests] == ["nli"]
    assert report.samples[0].details["facts"] == ["The heart is enlarged.", "No effusion."]
    assert report.samples[0].details["facts_source"] == "data"


def test_empty_prediction_and_factless_reference(server):
    items = [
        JudgeItem("empty", "  ", "The heart is enlarged.", facts=("The heart is enlarged.",)),
        JudgeItem("nofacts", "Something.", "", facts=()),
    ]
    report = JudgeRunner(make_config(server)).judge(items, parts=("nli", "fabrication"))
    empty, nofacts = report.samples
    assert empty.scores == {"completeness": 0.0, "hallucination": 0.0, "fabrication": 0.0}
    assert nofacts.failures["completeness"] == "reference has no atomic facts"
    assert "completeness" not in nofacts.scores


def test_secret_never_reaches_cache_results_or_logs(tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    with LoopbackJudgeServer(script=["429", "500", "garbage"]) as server:
        config = make_config(server, cache_path=tmp_path / "cache.sqlite", base_url=server.base_url + "?api-key=" + SECRET)
        assert SECRET not in repr(config)
        report = JudgeRunner(config).judge(make_items(3), parts=ALL_PARTS)
    dumped = json.dumps([report.judge, report.usage, report.summary, [v.as_dict() for v in report.samples]])
    cache_bytes = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    captured = capsys.readouterr()
    for text in (dumped, caplog.text, captured.out, captured.err):
        assert SECRET not in text
    assert SECRET.encode() not in cache_bytes
    assert report.judge["base_url"].endswith("/v1") and "?" not in report.judge["base_url"]


def test_concurrency_is_bounded():
    with LoopbackJudgeServer(latency=0.05) as server:
        items = [JudgeItem(f"s{i}", f"p{i}", "r", facts=("r",)) for i in range(24)]
        JudgeRunner(make_config(server, concurrency=4)).judge(items, parts=("nli",))
        assert 1 < server.max_in_flight <= 4


class TestConfig:
    def test_from_env(self, tmp_path):
        assert JudgeConfig.from_env({}) is None
        assert JudgeConfig.from_env({"MEDBENCH_JUDGE_MODEL": "m", "MEDBENCH_JUDGE": "off"}) is None
        env = {
            "MEDBENCH_JUDGE_MODEL": "m",
            "MEDBENCH_JUDGE_BASE_URL": "http://127.0.0.1:9/v1",
            "OPENAI_API_KEY": SECRET,
            "MEDBENCH_JUDGE_CONCURRENCY": "3",
            "MEDBENCH_JUDGE_CACHE": "off",
            "MEDBENCH_JUDGE_SCORING": "authors",
        }
        config = JudgeConfig.from_env(env, concurrency=5)
        assert (config.model, config.concurrency, config.cache_path, config.case_sensitive) == ("m", 5, None, True)
        assert config.resolved_api_key() == SECRET and SECRET not in repr(config)
        config = JudgeConfig.from_env({"MEDBENCH_JUDGE_MODEL": "m", "XDG_CACHE_HOME": str(tmp_path)})
        assert config.cache_path is not None

    @pytest.mark.parametrize(
        "env, message",
        [
            ({"MEDBENCH_JUDGE_CONCURRENCY": "many"}, "MEDBENCH_JUDGE_CONCURRENCY"),
            ({"MEDBENCH_JUDGE_CONCURRENCY": "0"}, "concurrency must be >= 1"),
            ({"MEDBENCH_JUDGE_SCORING": "strict"}, "scoring must be one of"),
        ],
    )
    def test_bad_values_are_one_line_errors(self, env, message):
        with pytest.raises(MedbenchError, match=message) as error:
            JudgeConfig.from_env({"MEDBENCH_JUDGE_MODEL": "m", "MEDBENCH_JUDGE_CACHE": "off", **env})
        assert "\n" not in str(error.value)

    def test_openai_endpoint_without_key(self):
        with pytest.raises(MedbenchError, match="no API key"):
            JudgeConfig(model="gpt-4.1").resolved_api_key()
        assert JudgeConfig(model="m", base_url="http://127.0.0.1:8000/v1").resolved_api_key() == "no-key"

    def test_prices_and_cost(self, tmp_path):
        path = tmp_path / "prices.yaml"
        path.write_text("loopback-judge: {input: 2.0, output: 8.0}\n")
        prices = load_prices(path)
        with LoopbackJudgeServer() as server:
            report = JudgeRunner(make_config(server, prices=prices)).judge(make_items(2), parts=("nli",))
        usage = report.usage
        assert usage["cost_usd"] == pytest.approx((usage["prompt_tokens"] * 2 + usage["completion_tokens"] * 8) / 1e6)
        path.write_text("m: {input: cheap}\n")
        with pytest.raises(MedbenchError, match="numeric 'input' and 'output'"):
            load_prices(path)


class TestParsers:
    def test_text_lists(self):
        assert parse_text_list('```json\n["1. A.", "2. B."]\n```') == ["A.", "B."]
        assert parse_text_list("[]") == []
        with pytest.raises(ValueError):
            parse_text_list("Sorry, I cannot.")

    def test_severity(self):
        assert parse_severity('{"severity": "Severe", "reason": "wrong side"}') == ("severe", "wrong side")
        assert parse_severity("minor") == ("minor", "")
        with pytest.raises(ValueError):
            parse_severity('{"severity": "catastrophic"}')


def test_cache_survives_reopen(tmp_path):
    from medbench.judge.cache import CachedAnswer

    cache = JudgeCache(tmp_path / "c.sqlite")
    cache.put("k", model="m", prompt="nli-v1", answer=CachedAnswer("[]", 3, 1))
    cache.close()
    assert JudgeCache(tmp_path / "c.sqlite").get("k") == CachedAnswer("[]", 3, 1)


def _write_samples(path: Path, items: list[JudgeItem]) -> None:
    with path.open("w") as handle:
        for index, item in enumerate(items):
            record = {"doc_id": index, "target": item.reference, "filtered_resps": [item.prediction], "rouge_l": 0.1}
            handle.write(json.dumps(record) + "\n")


def _run_cli(args: list[str], env: dict, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "medbench", "judge", *args],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs,
    )


def test_kill_mid_run_then_resume_repeats_no_cached_request(tmp_path):
    from medbench.judge.cache import cache_key

    items = make_items(16)
    samples = tmp_path / "2026-01-01T00-00-00_samples_medbench_amboss.jsonl"
    _write_samples(samples, items)
    cache = tmp_path / "cache.sqlite"
    prompts = {role: load_prompt(role) for role in ("facts", "nli", "claims", "severity")}
    with LoopbackJudgeServer(latency=0.05) as server:
        env = {**os.environ, "MEDBENCH_JUDGE_MODEL": "loopback-judge", "MEDBENCH_JUDGE_BASE_URL": server.base_url,
               "MEDBENCH_JUDGE_API_KEY": SECRET, "MEDBENCH_JUDGE_CACHE": str(cache), "MEDBENCH_JUDGE_CONCURRENCY": "2"}
        args = [str(samples), "--parts", "nli,fabrication,severity", "--no-progress"]
        process = _run_cli(args, env)
        deadline = time.monotonic() + 60
        while server.count() < 12 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.01)
        assert process.poll() is None, "the run finished before it could be interrupted"
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed_after = server.count()
        with sqlite3.connect(cache) as db:
            cached_at_kill = {row[0] for row in db.execute("SELECT key FROM answers")}
        assert cached_at_kill, "nothing was cached before the kill"

        process = _run_cli(args, env)
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        resumed = server.requests[killed_after:]
        assert resumed, "the resumed run had work left"
        for request in resumed:
            key = cache_key("loopback-judge", prompts[request.role].ident, prompts[request.role].sha256, list(request.messages))
            assert key not in cached_at_kill, f"a cached {request.role} request was sent again"
        assert killed_after + len(resumed) <= len(items) * 5 + 2  # at most the two in-flight requests repeat

        before = server.count()
        process = _run_cli(args, env)
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        assert server.count() == before  # a third run is free
    assert "requests 0 (retries 0)" in out
    results = json.loads((tmp_path / "2026-01-01T00-00-00_judge_results_medbench_amboss.json").read_text())
    task = results["results"]["medbench_amboss"]
    assert task["judge_unscored,none"] == 0 and 0 <= task["judge_completeness,none"] <= 1
    assert results["medbench_judge"]["judge"]["prompts"]["facts"]["id"] == "facts-v1"
    verdicts = (tmp_path / "2026-01-01T00-00-00_judge_samples_medbench_amboss.jsonl").read_text().splitlines()
    assert len(verdicts) == len(items)
    for path in tmp_path.iterdir():
        assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in out + err


def test_request_hash_matches_fake_answers():
    messages = load_prompt("facts").render(reference="Heart enlarged. Lungs clear.")
    assert request_key(messages) == request_key(json.loads(json.dumps(messages)))
    assert fake_judge_answer(messages) == ("facts", json.dumps(["1. Heart enlarged.", "2. Lungs clear."]))


def test_judge_modules_import_light():
    modules = ("medbench.metrics.facts", "medbench.judge.runner", "medbench.judge.samples", "medbench.judge.parts", "medbench.judge.ratelimit",
               "medbench.commands.judge", "medbench.lmms.report")
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + (
        "print(','.join(m for m in ('openai', 'httpx', 'torch', 'transformers', 'lmms_eval', 'bert_score', 'pycocoevalcap') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout.strip() == ""


def test_prompt_files_are_frozen():
    """A released prompt is never edited in place: a wording change needs a new -vN file."""
    released = {
        "facts-v1": "b079058aa47beb57372b5d78713583094c81deb680be2bccab99ecfc0deb2a89",
        "nli-v1": "b1b7bd44e82ba962ce94616d5e8937d9c676191b02fb8c39fc2d8da4223baf1a",
        "claims-v1": "8050ed2b0970667513e4964fc3a00148c7654ca41a0b6f1caa0ca8de605cd91e",
        "severity-v1": "95619c2d5cc538b2d631fd7b6e8270125391a45fa0040c0a89e3be12b9785460",
    }
    for ident, sha in released.items():
        prompt = load_prompt(ident)
        assert prompt.sha256 == sha, f"{ident} changed: add {prompt.name}-v{prompt.version + 1}.yaml instead"
    assert load_prompt("nli").ident == "nli-v1"  # latest version by name
    with pytest.raises(MedbenchError, match="unknown judge prompt"):
        load_prompt("vibes")
    with pytest.raises(MedbenchError, match="has no version 9"):
        load_prompt("nli-v9")


def test_command_line_cache_flag_can_turn_the_cache_off(tmp_path, monkeypatch):
    from medbench.cli import build_parser
    from medbench.commands.judge import config_from_args

    monkeypatch.setenv("MEDBENCH_JUDGE_MODEL", "m")
    monkeypatch.setenv("MEDBENCH_JUDGE_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("MEDBENCH_JUDGE_CACHE", str(tmp_path / "env.sqlite"))
    parse = build_parser().parse_args
    assert config_from_args(parse(["judge", "x.jsonl"])).cache_path == tmp_path / "env.sqlite"
    assert config_from_args(parse(["judge", "x.jsonl", "--cache", "off"])).cache_path is None
    assert config_from_args(parse(["judge", "x.jsonl", "--cache", str(tmp_path / "c.sqlite")])).cache_path == tmp_path / "c.sqlite"
