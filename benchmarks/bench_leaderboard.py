"""Leaderboard cost over many synthetic runs: a registry built from scratch, one run added, an unchanged board rendered.

Writes ``--runs`` synthetic lmms-eval result folders (results JSON plus ``--log_samples`` files for the five
medbench tasks, every score computed with medbench's own scorers so each run passes verification) and one
more, then times, in this process:

* **parse floor**: ``json.loads`` of every results file and every sample line of the ``--runs`` runs, nothing
  else (the baseline: no board of those runs can be built faster than its input can be read);
* **registry from scratch**: ``medbench leaderboard submit`` of every run into an empty registry (each run
  verified once: every sample's scores recomputed, its name and answers checked against every accepted run)
  and ``build --registry`` of the page;
* **add one run**: ``submit`` of the extra run to the ``--runs``-run registry (target: at most 2 s);
* **render after the addition**: ``build --registry`` once the run is in: bootstrap CIs, paired tests against
  a baseline run, HTML, Markdown, CSV and plots from the registry without reading any run's files;
* **render unchanged**: the same build again, nothing new (target: at most 3x the parse floor): everything is
  recomputed from the registry except the plots, which are not drawn again when what they show is unchanged;
  and the same without plots.

Each is reported in seconds (median of ``--repeats``, the from-scratch build once) and as a multiple of the
parse floor.

    python benchmarks/bench_leaderboard.py [--runs 500] [--vqa-items 100] [--report-items 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from medbench.lmms.vqa import process_results as score_vqa
from medbench.metrics.text import cider, corpus_bleu, rouge_l, sentence_bleu4
from medbench.taskfiles import task_configs, task_versions

VQA_TASKS = ("medbench_vqa_rad", "medbench_slake", "medbench_pathvqa")
REPORT_TASKS = ("medbench_mimic_cxr", "medbench_amboss")
WORDS = [
    "left",
    "right",
    "lung",
    "heart",
    "liver",
    "kidney",
    "enlarged",
    "normal",
    "opacity",
    "effusion",
    "mass",
    "nodule",
    "fracture",
    "lesion",
    "consolidation",
    "pneumothorax",
    "cardiomegaly",
    "atelectasis",
    "edema",
    "axial",
    "coronal",
    "sagittal",
    "ct",
    "mri",
    "xray",
    "ultrasound",
    "brain",
    "spine",
    "chest",
    "abdomen",
    "pelvis",
    "bone",
    "soft",
    "tissue",
    "contrast",
    "acute",
    "chronic",
    "mild",
    "moderate",
    "severe",
    "small",
    "large",
    "no",
    "evidence",
    "of",
]


def _image(task: str, index: int) -> str:
    # VQA sets ask several questions about one image (SLAKE: 1,061 on 96): three per image here.
    return f"{task}-{index // 3 if task in VQA_TASKS else index}.png"


def _prompt(task: str, item: dict) -> str:
    from medbench.lmms.common import doc_to_text

    pieces = (task_configs()[task].get("lmms_eval_specific_kwargs") or {}).get("default") or {}
    return doc_to_text(item, pieces)


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def _items(seed: int, vqa_items: int, report_items: int) -> dict[str, list[dict]]:
    """The test items every run answers (shared references, so the runs can be compared pairwise)."""
    rng = random.Random(seed)
    items: dict[str, list[dict]] = {}
    for task in VQA_TASKS:
        rows = []
        for index in range(vqa_items):
            closed = index % 3 != 2
            answer = (
                rng.choice(["yes", "no"]) if closed else " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
            )
            rows.append(
                {
                    "id": f"{task}-{index}",
                    "question": f"Question {index} about the image?",
                    "answer": answer,
                    "answer_type": "CLOSED" if closed else "OPEN",
                }
            )
        items[task] = rows
    for task in REPORT_TASKS:
        items[task] = [
            {"id": f"{task}-{index}", "reference": _text(rng, rng.randint(12, 30))} for index in range(report_items)
        ]
    return items


def _pin_reference_data(folder: Path, items: dict[str, list[dict]]) -> None:
    """Write the synthetic test sets as the board's own copies (``MEDBENCH_<TASK>``), so runs match them."""
    import os

    from medbench.data.sources import get_source

    folder.mkdir(parents=True)
    for task, rows in items.items():
        path = folder / f"{task}.jsonl"
        path.write_text("".join(json.dumps({**row, "image": _image(task, index)}) + "\n" for index, row in enumerate(rows)))
        os.environ[get_source(task).env_var] = str(path)
        os.environ[get_source(task).images_env_var] = str(folder)


def _results_document(name: str, scores: dict[str, dict[str, float]], counts: dict[str, int]) -> dict:
    configs = task_configs()
    versions = task_versions()
    tasks = list(scores)
    return {
        "results": {task: {"alias": task, **{f"{m},none": v for m, v in scores[task].items()}} for task in tasks},
        "group_subtasks": {task: [] for task in tasks},
        "configs": {
            task: {
                "task": task,
                "generation_kwargs": dict(configs[task]["generation_kwargs"]),
                "lmms_eval_specific_kwargs": dict(configs[task].get("lmms_eval_specific_kwargs", {})),
                "metadata": {"version": versions[task]},
            }
            for task in tasks
        },
        "versions": {task: versions[task] for task in tasks},
        "n-samples": {task: {"original": counts[task], "effective": counts[task]} for task in tasks},
        "config": {
            "model": "medbench_hf",
            "model_args": f"pretrained=synthetic/{name}",
            "limit": None,
            "gen_kwargs": "",
        },
        "model_name": f"synthetic/{name}",
        "system_instruction": None,
        "lmms_eval_version": "0.7.3",
        "date": "20260101_000000",
    }


def write_run(folder: Path, name: str, skill: float, seed: int, items: dict[str, list[dict]]) -> None:
    """One synthetic run: answers right with probability ``skill``, scored by medbench's scorers."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    stamp = "20260101_000000"
    scores: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    for task in VQA_TASKS:
        records, sums = [], {}
        for doc_id, item in enumerate(items[task]):
            if rng.random() < skill:
                prediction = item["answer"]
            else:
                prediction = (
                    rng.choice(["yes", "no", "maybe"]) if item["answer_type"] == "CLOSED" else rng.choice(WORDS)
                )
            record = score_vqa({**item, "source": "synthetic"}, [prediction])
            for metric, value in record.items():
                if metric != "medbench_detail":
                    sums.setdefault(metric, []).append(value)
            records.append(
                {
                    "doc_id": doc_id,
                    "target": item["answer"],
                    "filtered_resps": prediction,
                    **record,
                    "input": _prompt(task, item),
                }
            )
        scores[task] = {m: (sum(v) if m.startswith("n_") else sum(v) / len(v)) for m, v in sums.items()}
        counts[task] = len(records)
        (folder / f"{stamp}_samples_{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for task in REPORT_TASKS:
        predictions = [
            item["reference"] if rng.random() < skill else _text(rng, rng.randint(10, 30)) for item in items[task]
        ]
        references = [item["reference"] for item in items[task]]
        bleu = corpus_bleu(predictions, references)
        cider_score, cider_samples = cider(predictions, references)
        records, rouge_values, bleu_values = [], [], []
        for doc_id, (item, prediction, cider_value) in enumerate(zip(items[task], predictions, cider_samples, strict=True)):
            rouge_value, bleu_value = (
                rouge_l(prediction, item["reference"]),
                sentence_bleu4(prediction, item["reference"]),
            )
            rouge_values.append(rouge_value)
            bleu_values.append(bleu_value)
            records.append(
                {
                    "doc_id": doc_id,
                    "target": item["reference"],
                    "filtered_resps": prediction,
                    "rouge_l": rouge_value,
                    "bleu4_sentence": bleu_value,
                    **{f"bleu{n}": {"id": item["id"]} for n in range(1, 5)},
                    "cider": {"id": item["id"], "score": cider_value},
                    "medbench_detail": {"id": item["id"], "source": "synthetic"},
                    "input": _prompt(task, item),
                }
            )
        scores[task] = {
            **bleu,
            "cider": cider_score,
            "rouge_l": sum(rouge_values) / len(rouge_values),
            "bleu4_sentence": sum(bleu_values) / len(bleu_values),
        }
        counts[task] = len(records)
        (folder / f"{stamp}_samples_{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / f"{stamp}_results.json").write_text(json.dumps(_results_document(name, scores, counts)))
    (folder / "medbench-submission.json").write_text(
        json.dumps(
            {
                "schema": "medbench-submission/1",
                "display_name": name,
                "backbone": f"backbone-{seed % 2}",
                "variant": "base" if seed % 10 == 0 else "dpo",
                **({"base_model": f"run-{seed - seed % 10:03d}"} if seed % 10 else {}),
            }
        )
    )


def parse_floor(root: Path) -> None:
    """Read every file the board reads, with json.loads only.

    A loop of its own on purpose: the floor must exclude every check a reader adds (iter_json_records' UTF-8
    and line reporting included), so that the board's time can be compared with parsing alone.
    """
    for path in root.rglob("*.json*"):
        if path.suffix == ".jsonl":
            for line in path.read_bytes().split(b"\n"):
                if line:
                    json.loads(line)
        else:
            json.loads(path.read_bytes())


def _time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _quiet(leaderboard, argv: list[str], expect: str) -> None:
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = leaderboard(argv)
    assert code == 0 and expect in printed.getvalue(), printed.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--vqa-items", type=int, default=100, help="questions per VQA task")
    parser.add_argument("--report-items", type=int, default=50, help="reports per long-form task")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from medbench.leaderboard.cli import main as leaderboard
    from medbench.leaderboard.registry import REGISTRY_FILE, Registry

    workdir = Path(tempfile.mkdtemp(prefix="bench-leaderboard-"))
    try:
        runs, extra = workdir / "runs", workdir / "extra"
        items = _items(0, args.vqa_items, args.report_items)
        _pin_reference_data(workdir / "data", items)
        started = time.perf_counter()
        for index in range(args.runs + 1):
            write_run(
                (runs if index < args.runs else extra) / f"run-{index:03d}",
                f"run-{index:03d}",
                skill=0.3 + 0.6 * index / max(args.runs, 1),
                seed=index,
                items=items,
            )
        samples = args.runs * (len(VQA_TASKS) * args.vqa_items + len(REPORT_TASKS) * args.report_items)
        print(f"{args.runs} synthetic runs x 5 tasks, {samples} samples, written in {time.perf_counter() - started:.1f} s")
        registry, site = workdir / "registry", workdir / "site"
        submitted = sorted(runs.iterdir())
        build = ["build", "--registry", str(registry), "--baseline", "run-000", "--out", str(site)]

        # Warm-up on a throw-away registry: imports, matplotlib's font cache, the reference data.
        _quiet(leaderboard, ["submit", *map(str, submitted[:2]), "--registry", str(workdir / "warm")], "2 accepted")
        floor = _time(lambda: parse_floor(runs), args.repeats)

        started = time.perf_counter()
        _quiet(leaderboard, ["submit", *map(str, submitted), "--registry", str(registry)], f"{args.runs} accepted")
        submit_all = time.perf_counter() - started
        _quiet(leaderboard, build, " 0 rejected")
        scratch = time.perf_counter() - started

        snapshot = workdir / "registry-500"
        shutil.copytree(registry, snapshot)

        def add_one() -> None:
            shutil.rmtree(registry)
            shutil.copytree(snapshot, registry)  # the same 500-run registry before every repeat
            started = time.perf_counter()
            _quiet(leaderboard, ["submit", str(extra / f"run-{args.runs:03d}"), "--registry", str(registry)], "1 accepted")
            add_times.append(time.perf_counter() - started)

        add_times: list[float] = []
        for _ in range(args.repeats):
            add_one()
        add = statistics.median(add_times)
        # The first build after the new run redraws the plots (what they show changed); then nothing changes.
        started = time.perf_counter()
        _quiet(leaderboard, build, " 0 rejected")
        render_changed = time.perf_counter() - started
        render = _time(lambda: _quiet(leaderboard, build, " 0 rejected"), args.repeats)
        render_plain = _time(lambda: _quiet(leaderboard, [*build, "--no-plots"], " 0 rejected"), args.repeats)
        with Registry(registry) as opened:
            shown = len(opened.accepted())
        size = (registry / REGISTRY_FILE).stat().st_size / 2**20
        results = {
            f"parse floor ({args.runs} runs, json.loads only)": floor,
            f"registry from scratch ({args.runs} submits + build)": scratch,
            "  of which submit (verify, admit)": submit_all,
            f"add 1 run to the {args.runs}-run registry": add,
            f"render after adding it ({shown} runs, plots redrawn)": render_changed,
            f"render unchanged registry ({shown} runs)": render,
            "render unchanged, no plots": render_plain,
        }
        print(f"registry: {size:.1f} MiB")
        print(f"{'phase':48} {'seconds':>8} {'x parse floor':>14}")
        for label, seconds in results.items():
            print(f"{label:48} {seconds:8.2f} {seconds / floor:14.1f}")
        floor_shown = floor * shown / args.runs
        print(f"target: add a run <= 2 s -> {'met' if add <= 2 else 'NOT met'} ({add:.2f} s)")
        print(
            f"target: render <= 3x the parse floor of the {shown} runs it shows ({3 * floor_shown:.2f} s) -> "
            f"{'met' if render <= 3 * floor_shown else 'NOT met'} ({render / floor_shown:.1f}x)"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
