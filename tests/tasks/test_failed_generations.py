"""A failed model call is never scored: lmms-eval's own ``openai`` model against a loopback endpoint that is down
or answers 500, through the real lmms-eval (run inside the test process, ``lmms_here``) and ``medbench eval``."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from lmms_here import lmms_eval_in_process

from medbench.commands.demo import demo_environment
from medbench.commands.eval import run_lmms_eval
from medbench.errors import MedbenchError
from medbench.lmms import failures, vqa
from medbench.results import find_runs

FAILED_ANSWER = "[LMMS_EVAL_REQUEST_FAILED after 1 retries] Connection error."
SCORE_METRICS = ("overall", "closed_accuracy", "open_recall", "exact_match", "token_f1", "closed_unparsed")


def _openai_args(port: int, out, tasks: str = "medbench_vqa_rad") -> list[str]:
    return [
        "--model", "openai",
        "--model_args", f"model_version=loopback-test,base_url=http://127.0.0.1:{port}/v1,api_key=test,max_retries=1,retry_backoff_s=0",
        "--tasks", tasks, "--output_path", str(out), "--verbosity", "WARNING",
    ]


def _samples(out, task: str) -> list[dict]:
    run = find_runs(out)[-1]
    return [json.loads(line) for line in run.samples[task].read_text().splitlines()]


def test_a_failed_answer_gets_no_score_and_is_marked():
    doc = {"id": "q1", "question": "Is it?", "answer": "no", "answer_type": "CLOSED", "source": "demo:x"}
    record = vqa.process_results(doc, [FAILED_ANSWER])
    assert record == {
        "failed_generations": 1.0,
        "medbench_detail": {"id": "q1", "source": "demo:x", "failed_generation": True, "failure": FAILED_ANSWER},
    }
    scored = vqa.process_results(doc, ["no"])
    assert scored["failed_generations"] == 0.0 and scored["overall"] == 1.0
    assert scored["medbench_detail"]["failed_generation"] is False
    # a model that merely mentions the marker mid-answer is answering, not failing
    assert failures.failed_generation(["The text [LMMS_EVAL_REQUEST_FAILED] is odd"]) is None


def test_a_failed_report_gets_no_score():
    doc = {"id": "r1", "reference": "The heart is normal.", "facts": [], "source": "demo:x"}
    record = failures.report_process_results(doc, [FAILED_ANSWER])
    assert set(record) == {"failed_generations", "medbench_detail"}
    assert record["medbench_detail"]["failed_generation"] is True
    assert failures.chest_xray_process_results(doc, [FAILED_ANSWER]) == record
    assert failures.report_process_results(doc, ["The heart is normal."])["rouge_l"] == pytest.approx(1.0)


def test_a_down_endpoint_is_counted_and_medbench_eval_exits_nonzero(tmp_path):
    with socket.socket() as probe:  # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with lmms_eval_in_process(), pytest.raises(MedbenchError, match=r"^24 of 24 generations failed in medbench_vqa_rad \(") as caught:
        run_lmms_eval(_openai_args(port, tmp_path), demo_environment())
    assert "\n" not in str(caught.value)
    run = find_runs(tmp_path)[-1]
    assert run.raw["results"]["medbench_vqa_rad"]["failed_generations,none"] == 24
    assert not any(f"{metric},none" in run.raw["results"]["medbench_vqa_rad"] for metric in SCORE_METRICS)
    rows = _samples(tmp_path, "medbench_vqa_rad")
    assert all(row["filtered_resps"].startswith("[LMMS_EVAL_REQUEST_FAILED") for row in rows)
    assert all(row["medbench_detail"]["failed_generation"] is True for row in rows)
    assert not any("overall" in row for row in rows)


def _texts(messages: list) -> list[str]:
    """The text parts of chat messages (images travel as base64, which can spell anything)."""
    parts = []
    for message in messages:
        content = message.get("content")
        for part in content if isinstance(content, list) else [{"type": "text", "text": content}]:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
    return parts


class _HalfBrokenBackend(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint: 500 for questions about CT, else the answer "yes"."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if "CT" in " ".join(_texts(body["messages"])):
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "backend exploded"}}')
            return
        payload = json.dumps({
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "yes"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_partly_failing_backend_scores_only_the_real_answers(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HalfBrokenBackend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with lmms_eval_in_process(), pytest.raises(MedbenchError, match=r"^(\d+) of 24 generations failed in medbench_vqa_rad") as caught:
            run_lmms_eval(_openai_args(server.server_address[1], tmp_path), demo_environment())
    finally:
        server.shutdown()
        server.server_close()
    rows = _samples(tmp_path, "medbench_vqa_rad")
    failed = [row for row in rows if row["medbench_detail"]["failed_generation"]]
    answered = [row for row in rows if not row["medbench_detail"]["failed_generation"]]
    assert failed and answered
    assert str(caught.value).startswith(f"{len(failed)} of 24 generations failed")
    assert all("CT" in row["input"] for row in failed)
    assert not any("CT" in row["input"] for row in answered)
    results = find_runs(tmp_path)[-1].raw["results"]["medbench_vqa_rad"]
    assert results["failed_generations,none"] == len(failed)
    # every score is averaged over the real answers only: a failed call is not a wrong answer
    assert results["exact_match,none"] == pytest.approx(sum(row["exact_match"] for row in answered) / len(answered))
    assert results["n_closed,none"] + results["n_open,none"] == len(answered)
