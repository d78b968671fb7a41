"""One GRPO step of the tiny study model, split into generation, reward and optimisation time; the rewards' share.

Builds the tiny study's data and untrained model (``medbench synth vqa`` / ``medbench synth model``), then trains the
``grpo`` recipe for a few steps with TRL's ``GRPOTrainer`` and times, per step (after a warm-up step):

* **generation**: ``GRPOTrainer._generate`` (sampling ``num_generations`` answers per question);
* **reward**: ``GRPOTrainer._calculate_rewards`` (every reward of the step), and the ``closed_exact`` reward itself;
* **optimisation**: the rest of the step (log-probs, loss, backward, optimiser).

Two figures against their baselines, measured in the same process:

* ``closed_exact`` (with ``open_recall``, the tiny study's rewards): the rewards' time as a share of the step.
  Target <= 2 %.
* ``judge_nli`` against the loopback judge (``tests/judge_server.py``, in its own process as a real judge is remote)
  answering after 100 ms, 16 requests in flight (``MEDBENCH_JUDGE_CONCURRENCY``'s default), every completion of a
  step an open question: the time the judge adds to a step (reward time with the judge minus without), divided by
  the judge's own latency - both the nominal 100 ms and what one round of 16 concurrent requests to the same server
  costs a bare ``openai.AsyncOpenAI`` client in this process (the floor of any OpenAI-client judge on this machine).
  The rewards of a step are requested concurrently, so one round trip is the floor. Target <= 1.2x. Measured twice:
  with every reference's atomic facts in the judge's cache (a step is one round of NLI calls), and cold (a step whose
  references are new first extracts their facts: two rounds; a ``facts`` column or the cache spares it).

    OMP_NUM_THREADS=1 python benchmarks/bench_grpo.py [--steps 8] [--completions 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from medbench.data.loading import iter_json_records
from medbench.synth import corpus_of, make_lesion_vqa
from medbench.tiny import build_tiny_model
from medbench.train.config import load_recipe
from medbench.train.run import build_trainer

JUDGE_SERVER = Path(__file__).resolve().parents[1] / "tests" / "judge_server.py"  # the test suite's fake judge
LATENCY = 0.1


class StepTimer:
    """Wraps a trainer's generation and reward methods and its steps with wall-clock timers."""

    def __init__(self, trainer, reward_names: list[str]) -> None:
        from transformers import TrainerCallback

        self.rows: list[dict[str, float]] = []
        self.current: dict[str, float] = {}
        timer = self

        def timed(name: str, function):
            def wrapper(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return function(*args, **kwargs)
                finally:
                    timer.current[name] = timer.current.get(name, 0.0) + time.perf_counter() - start

            return wrapper

        trainer._generate = timed("generation", trainer._generate)
        trainer._calculate_rewards = timed("reward", trainer._calculate_rewards)
        for index, function in enumerate(trainer.reward_funcs):
            if reward_names[index] == "closed_exact":
                trainer.reward_funcs[index] = timed("closed_exact", function)
                trainer.reward_funcs[index].__name__ = "closed_exact"

        class Steps(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer.current = {"start": time.perf_counter()}

            def on_step_end(self, args, state, control, **kwargs):
                row = dict(timer.current)
                row["step"] = time.perf_counter() - row.pop("start")
                row["optimisation"] = row["step"] - row.get("generation", 0.0) - row.get("reward", 0.0)
                timer.rows.append(row)

        trainer.add_callback(Steps())

    def series(self, key: str, skip: int = 1) -> list[float]:
        return [row.get(key, 0.0) for row in self.rows[skip:]]

    def medians(self, skip: int = 1) -> dict[str, float]:
        rows = self.rows[skip:]
        return {key: statistics.median(row.get(key, 0.0) for row in rows) for key in rows[0]}


def make_inputs(root: Path, n_items: int) -> tuple[Path, Path, Path]:
    """The tiny study's data (train split) and untrained model; a copy of the data with every question OPEN."""
    make_lesion_vqa(root / "data", n_train=n_items, n_test=1, seed=0, progress=False)
    train = root / "data" / "train.jsonl"
    model = build_tiny_model(root / "model", "llava", corpus=corpus_of([train]), seed=0, size="study")
    rows = [row for _number, row in iter_json_records(train)]
    open_rows = root / "data" / "open.jsonl"
    open_rows.write_text("".join(json.dumps({**row, "answer_type": "OPEN"}) + "\n" for row in rows))
    return model, train, open_rows


def start_judge(latency: float) -> tuple[subprocess.Popen, str]:
    """The loopback judge in a child process; returns it and its base URL."""
    server = subprocess.Popen([sys.executable, str(JUDGE_SERVER), "--port", "0", "--latency", str(latency)],
                              stdout=subprocess.PIPE, text=True)
    line = server.stdout.readline()  # "loopback judge at http://127.0.0.1:PORT/v1 (Ctrl-C to stop)"
    return server, line.split(" at ", 1)[1].split()[0]


def bare_round(base_url: str, n: int, rounds: int = 5) -> float:
    """Median time of ``n`` concurrent chat requests from a fresh bare ``openai.AsyncOpenAI`` client."""
    from openai import AsyncOpenAI

    async def one_round(index: int) -> float:
        client = AsyncOpenAI(api_key="no-key", base_url=base_url, max_retries=0)
        start = time.perf_counter()
        await asyncio.gather(*(client.chat.completions.create(
            model="loopback-judge", messages=[{"role": "user", "content": f"Text: round {index} request {i}."}])
            for i in range(n)))
        elapsed = time.perf_counter() - start
        await client.close()
        return elapsed

    return statistics.median(asyncio.run(one_round(index)) for index in range(rounds + 1)[1:])


def warm_facts(data: Path) -> None:
    """Extract every reference's atomic facts into the judge's cache (an empty answer needs no NLI call)."""
    from medbench.judge.config import JudgeConfig
    from medbench.judge.runner import JudgeItem, JudgeRunner

    references = sorted({record["answer"] for _number, record in iter_json_records(data)})
    config = JudgeConfig.from_env(progress=False)
    JudgeRunner(config).judge([JudgeItem(str(i), "", reference) for i, reference in enumerate(references)])


def run(model: Path, data: Path, out: Path, settings: dict, rewards: list[str], steps: int) -> dict[str, float]:
    overrides = {**settings, "rewards": rewards, "reward_weights": [1.0] * len(rewards), "max_steps": steps}
    prepared = build_trainer(load_recipe("grpo", overrides), model, data, out)
    timer = StepTimer(prepared.trainer, rewards)
    prepared.trainer.train()
    if os.environ.get("BENCH_GRPO_VERBOSE"):
        print(rewards, "reward ms per step:", [round(v * 1e3, 1) for v in timer.series("reward")], file=sys.stderr)
    return timer.medians()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per run (the first is a warm-up)")
    parser.add_argument("--completions", type=int, default=16, help="completions per step (per_device_train_batch_size)")
    parser.add_argument("--generations", type=int, default=4, help="answers per question (num_generations)")
    parser.add_argument("--max-completion-length", type=int, default=16)
    args = parser.parse_args(argv)
    settings = {
        "per_device_train_batch_size": args.completions, "num_generations": args.generations,
        "max_completion_length": args.max_completion_length, "save_strategy": "no", "warmup_steps": 0.0,
        "learning_rate": 1e-4, "dataloader_num_workers": 0, "prompt_of": "null", "freeze_projector": False,
        "freeze_vision_tower": False, "activation_checkpointing": False,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n_items = args.completions // args.generations * (args.steps + 1)
        model, train, open_rows = make_inputs(root, n_items)
        base = run(model, train, root / "closed", settings, ["closed_exact", "open_recall"], args.steps)
        baseline_open = run(model, open_rows, root / "open", settings, ["open_recall"], args.steps)
        server, base_url = start_judge(LATENCY)
        try:
            os.environ.update({"MEDBENCH_JUDGE_MODEL": "loopback-judge", "MEDBENCH_JUDGE_BASE_URL": base_url,
                               "MEDBENCH_JUDGE_CACHE": "off", "MEDBENCH_JUDGE_CONCURRENCY": "16"})
            bare = bare_round(base_url, args.completions)
            cold = run(model, open_rows, root / "judge-cold", settings, ["open_recall", "judge_nli"], args.steps)
            # Warm: every reference's atomic facts already in the judge's cache (a second epoch, or facts cached by
            # an earlier run), so a step is the NLI calls alone.
            os.environ["MEDBENCH_JUDGE_CACHE"] = str(root / "judge-cache.sqlite")
            warm_facts(open_rows)
            judged = run(model, open_rows, root / "judge-warm", settings, ["open_recall", "judge_nli"], args.steps)
        finally:
            server.terminate()
            server.wait()
    print(f"tiny study model, {args.completions} completions/step ({args.generations} per question), "
          f"max {args.max_completion_length} tokens, median of {args.steps - 1} steps after a warm-up:")
    print(f"  step {base['step'] * 1e3:8.1f} ms = generation {base['generation'] * 1e3:.1f} + reward "
          f"{base['reward'] * 1e3:.2f} + optimisation {base['optimisation'] * 1e3:.1f}")
    share = base["reward"] / base["step"]
    print(f"  rewards (closed_exact + open_recall): {share:.2%} of a step; closed_exact alone "
          f"{base['closed_exact'] * 1e3:.3f} ms = {base['closed_exact'] / base['step']:.3%} (target <= 2 %)")
    print(f"  judge_nli ({LATENCY * 1e3:.0f} ms latency, concurrency 16); a bare client's round of {args.completions} "
          f"concurrent requests: {bare * 1e3:.1f} ms; reward time without the judge {baseline_open['reward'] * 1e3:.2f} ms")
    for label, timing in (("facts cached", judged), ("cold (facts extracted as references first appear)", cold)):
        added = timing["reward"] - baseline_open["reward"]
        print(f"    {label}: adds {added * 1e3:.1f} ms per step = {added / LATENCY:.2f}x the nominal latency, "
              f"{added / bare:.2f}x the bare round (target <= 1.2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
