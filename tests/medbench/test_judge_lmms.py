"""The long-form metrics inside lmms-eval: deferred aggregation, the judge on demo data, re-scoring."""

from __future__ import annotations

import json
import pickle

import pytest
from judge_server import LoopbackJudgeServer
from lmms_here import lmms_eval_in_process

from medbench.errors import MedbenchError
from medbench.judge import parts
from medbench.lmms import records, report

SECRET = "sk-medbench-lmms-SECRET-777"
JUDGE_METRICS = ("judge_completeness", "judge_hallucination", "judge_fabrication", "judge_severe", "judge_unscored")
DOCS = [
    {"id": "r1", "reference": "The heart is enlarged. There is a right pleural effusion.", "facts": ["The heart is enlarged.", "There is a right pleural effusion."]},
    {"id": "r2", "reference": "The lungs are clear. No pneumothorax.", "facts": []},
    {"id": "r3", "reference": "There is a left lower lobe opacity.", "source": "demo"},
]
OUTPUTS = ["The heart is enlarged. There is a left pleural effusion.", "The lungs are clear.", ""]


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in list(__import__("os").environ):
        if name.startswith("MEDBENCH_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(records, "_warned", set())
    monkeypatch.setattr(report, "_memo", {})
    monkeypatch.setattr(report, "_runner", None)
    return monkeypatch


def _aggregate(per_doc: list[dict], metric: str):
    items = [scores[metric] for scores in per_doc]
    return getattr(report, metric)(items), items


def test_without_a_judge_the_task_still_scores_and_says_so(clean_env, caplog):
    per_doc = [report.process_results(doc, [out]) for doc, out in zip(DOCS, OUTPUTS, strict=True)]
    assert not any(metric in per_doc[0] for metric in JUDGE_METRICS)
    assert {"rouge_l", "bleu4_sentence", "bleu1", "bleu4", "cider"} <= set(per_doc[0])
    assert "judge metrics skipped" in caplog.text and "MEDBENCH_JUDGE_MODEL" in caplog.text
    assert caplog.text.count("judge metrics skipped") == 1  # once, not once per document
    assert "BERTScore skipped" in caplog.text
    value, items = _aggregate(per_doc, "bleu1")
    assert 0 < value < 1 and items[0] == {"id": "r1"}  # texts are attributes, not logged per metric
    cider, items = _aggregate(per_doc, "cider")
    assert cider == pytest.approx(sum(item["score"] for item in items) / 3)


def test_judge_metrics_over_a_loopback_judge(clean_env, tmp_path):
    with LoopbackJudgeServer() as server:
        clean_env.setenv("MEDBENCH_JUDGE_MODEL", "loopback")
        clean_env.setenv("MEDBENCH_JUDGE_BASE_URL", server.base_url)
        clean_env.setenv("MEDBENCH_JUDGE_API_KEY", SECRET)
        clean_env.setenv("MEDBENCH_JUDGE_CACHE", str(tmp_path / "cache.sqlite"))
        clean_env.setenv("MEDBENCH_JUDGE_PROGRESS", "0")
        per_doc = [report.process_results(doc, [out]) for doc, out in zip(DOCS, OUTPUTS, strict=True)]
        assert all(metric in per_doc[0] for metric in JUDGE_METRICS)
        completeness, items = _aggregate(per_doc, "judge_completeness")
        sent = server.count()
        hallucination, _ = _aggregate(per_doc, "judge_hallucination")
        severe, _ = _aggregate(per_doc, "judge_severe")
        unscored, _ = _aggregate(per_doc, "judge_unscored")
        assert server.count() == sent  # one batch serves every sibling metric
    # r1: Entailment + Contradiction (left vs right) -> 0.5 / 0.5; r2 (facts extracted): E + N -> 0.5 / 0;
    # r3: empty output -> 0 / 0.
    assert completeness == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert hallucination == pytest.approx((0.5 + 0 + 0) / 3)
    assert unscored == 0.0 and 0.0 <= severe <= 1.0
    first = items[0]
    assert first["status"] == "scored" and first["facts_source"] == "data" and first["labels"] == ["Entailment", "Contradiction"]
    assert items[1]["facts_source"] == "judge"  # an empty facts list means "extract them"
    assert first["judge"]["model"] == "loopback" and first["judge"]["prompts"]["facts"].startswith("facts-v1:")
    assert SECRET not in json.dumps([dict(i) for i in items])


def test_judge_failure_is_recorded_not_raised(clean_env):
    with LoopbackJudgeServer(script=["401"]) as server:
        clean_env.setenv("MEDBENCH_JUDGE_MODEL", "loopback")
        clean_env.setenv("MEDBENCH_JUDGE_BASE_URL", server.base_url)
        clean_env.setenv("MEDBENCH_JUDGE_CACHE", "off")
        clean_env.setenv("MEDBENCH_JUDGE_PROGRESS", "0")
        per_doc = [report.process_results(doc, [out]) for doc, out in zip(DOCS, OUTPUTS, strict=True)]
        value, items = _aggregate(per_doc, "judge_completeness")
        unscored, _ = _aggregate(per_doc, "judge_unscored")
    assert value is None and unscored == 3.0
    assert all("rejected the API key" in item["status"] and "score" not in item for item in items)


def test_deferred_items_survive_pickling():
    item = report.Deferred("x", "pred", "ref", ["f"], "medbench_amboss")
    copy = pickle.loads(pickle.dumps(item))
    assert copy == {"id": "x"} and (copy.prediction, copy.reference, copy.facts, copy.task) == ("pred", "ref", ("f",), "medbench_amboss")


def test_judge_parts_setting(clean_env):
    assert parts.enabled_parts({"MEDBENCH_JUDGE_PARTS": "nli"}) == ("nli",)
    with pytest.raises(MedbenchError, match="unknown part"):
        parts.enabled_parts({"MEDBENCH_JUDGE_PARTS": "nli,vibes"})


def test_demo_data_through_lmms_eval_with_a_loopback_judge(tmp_path):
    """The real lmms-eval on the demo long-form tasks, judge on, then `medbench judge` re-scores the logs."""
    from medbench.commands.demo import demo_environment
    from medbench.commands.eval import run_lmms_eval
    from medbench.results import find_runs

    out = tmp_path / "run"
    with LoopbackJudgeServer() as server:
        env = demo_environment()
        env.update(MEDBENCH_JUDGE_MODEL="loopback", MEDBENCH_JUDGE_BASE_URL=server.base_url, MEDBENCH_JUDGE_API_KEY=SECRET,
                   MEDBENCH_JUDGE_CACHE=str(tmp_path / "cache.sqlite"), MEDBENCH_JUDGE_PROGRESS="0")
        args = ["--model", "medbench_baseline", "--tasks", "medbench_mimic_cxr,medbench_amboss", "--output_path", str(out),
                "--log_samples", "--verbosity", "WARNING"]
        with lmms_eval_in_process():
            written = run_lmms_eval(args, env)
        requests_in_lmms = server.count()
        run = find_runs(out)[-1]
        assert run.path == written[-1]
        for task in ("medbench_mimic_cxr", "medbench_amboss"):
            metrics = run.metrics(task)
            assert {"bleu1", "bleu4", "rouge_l", "cider", "judge_completeness", "judge_hallucination",
                    "judge_fabrication", "judge_severe"} <= set(metrics), task
            assert run.count(task, "judge_unscored") == 0.0
            assert 0.0 <= metrics["judge_completeness"][0] <= 1.0
            assert metrics["judge_completeness"][1] is None  # custom aggregation: no bootstrap stderr
            assert isinstance(run.raw["results"][task]["judge_completeness_stderr_clt,none"], float)
        assert run.raw["usage"]["by_source"]["judge"]["n_api_calls"] == requests_in_lmms
        assert set(run.raw["usage"]["by_task"]) == {"medbench_mimic_cxr", "medbench_amboss"}
        rows = [json.loads(line) for line in run.samples["medbench_amboss"].read_text().splitlines()]
        assert rows[0]["judge_completeness"]["status"] == "scored" and rows[0]["judge_completeness"]["facts_source"] == "judge"
        sidecars = sorted((out / "medbench_judge").glob("*.json"))
        assert {json.loads(p.read_text())["task"] for p in sidecars} == {"medbench_mimic_cxr", "medbench_amboss"}
        assert json.loads(sidecars[0].read_text())["judge"]["prompts"]["nli"]["id"] == "nli-v1"

        # Re-score the sample logs with the standalone command: same judge, same cache -> no new request.
        from medbench.cli import main

        code = main(["judge", str(out), "--parts", "nli,fabrication,severity", "--no-progress",
                     "--base-url", server.base_url, "--model", "loopback", "--cache", str(tmp_path / "cache.sqlite")])
        assert code == 0 and server.count() == requests_in_lmms
    for task in ("medbench_mimic_cxr", "medbench_amboss"):
        results = json.loads(next(out.rglob(f"*_judge_results_{task}.json")).read_text())["results"][task]
        assert results["judge_completeness,none"] == pytest.approx(run.metrics(task)["judge_completeness"][0])
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
