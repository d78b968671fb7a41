"""Training throughput of ``medbench train`` on the tiny study's model: today's path, the preprocessed path, the floor.

Three loops over the same model (``medbench synth model``: the 0.5 M-parameter LLaVA of ``medbench/studies/tiny.yaml``),
the same synthetic lesion data (``medbench synth vqa`` + ``medbench prefs build``), batch 32, one thread, in one
process, for SFT and DPO:

* ``per-step collation``: ``MedPreferenceTrainer`` with ``preprocess: false`` (every step decodes the images, renders
  the chat template, tokenizes and runs the image processor: the path before preprocessing existed);
* ``preprocessed``: ``medbench train`` as it runs now (``preprocess: true``: the training set is collated once into a
  cached dataset; each step only pads and stacks);
* ``bare PyTorch``: the floor. A hand-written loop over the same model and the same preprocessed batches: forward
  (plus the reference model's forward for DPO), the loss from plain log-softmax, backward, AdamW, nothing else.

Reported: steps per second of each (after warm-up steps), ``preprocessed / per-step`` (target >= 2.5) and ``floor /
preprocessed`` (target <= 1.3). Time is the process's CPU time (one thread, so a quiet core's wall time): on a shared
machine wall time mostly measures the other processes. Wall-clock rates are printed too. The three loops run in
interleaved rounds and the median round is reported.

    OMP_NUM_THREADS=1 python benchmarks/bench_train_throughput.py [--steps 40] [--rounds 3] [--warmup 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BATCH = 32
STUDY_TRAIN = {  # the tiny study's training settings (medbench/studies/tiny.yaml)
    "per_device_train_batch_size": BATCH, "freeze_vision_tower": False, "freeze_projector": False,
    "activation_checkpointing": False, "max_length": 128, "precision": "fp32", "save_strategy": "no",
    "logging_steps": 10, "warmup_steps": 0, "lr_scheduler_type": "constant", "learning_rate": 3e-4, "beta": 0.1,
    "report_to": "none",
}


def prepare(root: Path, n_items: int) -> tuple[Path, dict[str, Path]]:
    """The study model and the SFT / DPO preference files, built as the study builds them."""
    from medbench.synth import corpus_of, make_lesion_vqa
    from medbench.tiny import build_tiny_model
    from medbench.train.prefs.build import BuildOptions, build

    make_lesion_vqa(root / "data", n_items, 8, seed=0, progress=False)
    model = build_tiny_model(root / "model", "llava", corpus=corpus_of([root / "data" / "train.jsonl"]), seed=0,
                             size="study")
    prefs = {}
    for recipe in ("sft", "dpo"):
        options = BuildOptions(recipe=recipe, seed=0, corruption="blackout", prompt_of="medbench_vqa_rad",
                               progress=False)
        prefs[recipe] = build(str(root / "data" / "train.jsonl"), root / f"prefs_{recipe}", options).records_path
    return model, prefs


def _step_clock():
    """A ``TrainerCallback`` that records the wall time at the end of every step (in ``.times``)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append((time.process_time(), time.perf_counter()))

    return StepClock()


def _rate(times: list[tuple[float, float]], warmup: int) -> tuple[float, float]:
    """``(steps per CPU second, steps per wall second)`` after ``warmup`` steps."""
    steps = len(times) - 1 - warmup
    return steps / (times[-1][0] - times[warmup][0]), steps / (times[-1][1] - times[warmup][1])


def medbench_rate(recipe_name: str, model: Path, data: Path, out: Path, steps: int, warmup: int,
                  preprocess: bool) -> tuple[float, float]:
    """Steps/s of ``MedPreferenceTrainer`` as ``medbench train`` builds it."""
    from medbench.train.config import load_recipe
    from medbench.train.run import build_trainer

    recipe = load_recipe(recipe_name, {**STUDY_TRAIN, "max_steps": steps + warmup + 1, "preprocess": preprocess,
                                       "seed": 1})
    clock = _step_clock()
    run = build_trainer(recipe, model, data, out, callbacks=[clock])
    run.trainer.train()
    return _rate(clock.times, warmup)


def floor_rate(recipe_name: str, model_dir: Path, data: Path, steps: int, warmup: int) -> tuple[float, float]:
    """Steps/s of a bare PyTorch loop over the same model and the same preprocessed batches."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from medbench.train.collator import CachedCollator, PreferenceCollator, indexed_dataset
    from medbench.train.data import load_or_preprocess, load_preference_file
    from medbench.train.objectives import get_objective

    torch.manual_seed(1)
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    reference = None
    if recipe_name == "dpo":
        reference = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
        reference.requires_grad_(False)
    records = load_preference_file(data)
    objective = get_objective(recipe_name)
    collator = PreferenceCollator(processor, objective, max_length=STUDY_TRAIN["max_length"])
    cached = CachedCollator(load_or_preprocess(records, data, collator))
    dataset = indexed_dataset(records)
    order = torch.randperm(len(records)).tolist()
    batches = [cached([dataset[i] for i in (order * 4)[start:start + BATCH]])
               for start in range(0, BATCH * (steps + warmup + 1), BATCH)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=STUDY_TRAIN["learning_rate"])
    model.train()

    def answer_logps(network, batch):
        inputs = {key: value for key, value in batch.items() if key != "completion_mask"}
        logits = network(**inputs, use_cache=False).logits[:, :-1]
        mask = batch["completion_mask"][:, 1:].float()
        token = torch.log_softmax(logits.float(), dim=-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        return (token * mask).sum(dim=1), mask.sum(dim=1)

    times = []
    for batch in batches:
        logps, lengths = answer_logps(model, batch)
        if reference is None:
            loss = (-logps / lengths.clamp(min=1)).mean()
        else:
            with torch.no_grad():
                ref_logps, _ = answer_logps(reference, batch)
            chosen, rejected = logps.chunk(2)
            ref_chosen, ref_rejected = ref_logps.chunk(2)
            loss = -F.logsigmoid(STUDY_TRAIN["beta"] * ((chosen - ref_chosen) - (rejected - ref_rejected))).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append((time.process_time(), time.perf_counter()))
    return _rate(times, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per loop and round (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--items", type=int, default=640, help="training items (default 640)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["MEDBENCH_TRAIN_CACHE"] = str(root / "cache")
        model, prefs = prepare(root, args.items)
        rates: dict[str, dict[str, list[tuple[float, float]]]] = {}
        for round_index in range(args.rounds):
            for recipe in ("sft", "dpo"):
                loops = {
                    "per-step collation": lambda r=recipe: medbench_rate(r, model, prefs[r], root / "out", args.steps,
                                                                         args.warmup, preprocess=False),
                    "preprocessed": lambda r=recipe: medbench_rate(r, model, prefs[r], root / "out", args.steps,
                                                                   args.warmup, preprocess=True),
                    "bare PyTorch": lambda r=recipe: floor_rate(r, model, prefs[r], args.steps, args.warmup),
                }
                for name, loop in loops.items():
                    rates.setdefault(recipe, {}).setdefault(name, []).append(loop())
            print(f"round {round_index + 1}/{args.rounds} done", flush=True)
    figures: dict[str, dict[str, float]] = {}
    for clock, column in (("CPU time", 0), ("wall clock", 1)):
        print(f"\nsteps/s ({clock}) at batch {BATCH}, one thread, median of {args.rounds} rounds of {args.steps} steps")
        print(f"{'objective':<10}{'per-step':>10}{'preproc.':>10}{'floor':>10}{'preproc./per-step':>20}"
              f"{'floor/preproc.':>16}")
        for recipe, by_loop in rates.items():
            median = {name: statistics.median(value[column] for value in values) for name, values in by_loop.items()}
            speedup = median["preprocessed"] / median["per-step collation"]
            gap = median["bare PyTorch"] / median["preprocessed"]
            figures[f"{recipe} ({clock})"] = {**median, "speedup": speedup, "floor_gap": gap}
            print(f"{recipe:<10}{median['per-step collation']:>10.2f}{median['preprocessed']:>10.2f}"
                  f"{median['bare PyTorch']:>10.2f}{speedup:>19.2f}x{gap:>15.2f}x")
    print("targets: preprocessed / per-step >= 2.5x; floor / preprocessed <= 1.3x")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
