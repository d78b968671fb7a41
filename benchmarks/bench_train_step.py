"""Step time of medbench-train's objectives against stock TRL, measured in one process on one batch.

Two ratios per architecture (tiny models from ``medbench.tiny``, same weights, same records):

* ``dpo / TRL``: our ``dpo`` recipe (``MedPreferenceTrainer`` + ``PreferenceCollator``) against stock
  ``trl.DPOTrainer`` (``loss_type=["sigmoid"]``, TRL's vision collator). Target <= 1.05.
* ``mdpo / dpo``: our ``mdpo`` against our ``dpo``. mDPO scores three sequences per record where DPO scores two,
  so about 1.5 is expected; target <= 1.6.

"Model step" times ``Trainer.training_step`` (forward of policy and reference, loss, backward) on a batch collated
once; "with collation" adds building the batch from the records (image decoding, chat template, tokenisation),
which both pipelines do on the fly for image data. Trainers are timed in interleaved rounds and the median per-step
time is reported, so drift on a shared machine affects all of them alike.

    python benchmarks/bench_train_step.py [--arch llava qwen2_5_vl] [--batch-size 4] [--steps 5] [--rounds 7]
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

# Questions and answers written for this benchmark; images are scikit-image's sample photographs.
_QA = [
    (
        "Is the optic disc visible in this fundus image?",
        "Yes, the optic disc is visible on the left.",
        "Yes, the optic disc is visible on the right.",
    ),
    (
        "What does the brown staining show?",
        "Brown staining marks positive cells in the tissue.",
        "Brown staining marks negative nuclei in the tissue.",
    ),
    ("Are there microaneurysms in the retina?", "No microaneurysms are seen.", "Multiple microaneurysms are seen."),
    ("Is the tissue normal?", "No, the tissue shows abnormal cells.", "Yes, the tissue is normal."),
]


def write_data(root: Path, n_records: int) -> Path:
    """Images (real and centre-noised) and a JSONL preference file with every field."""
    import numpy as np
    from PIL import Image
    from skimage import data as skdata

    (root / "img").mkdir(parents=True, exist_ok=True)
    sources = {"retina": skdata.retina(), "ihc": skdata.immunohistochemistry()}
    rng = np.random.default_rng(0)
    for name, pixels in sources.items():
        image = np.asarray(Image.fromarray(pixels).convert("RGB").resize((96, 96))).astype("float32")
        Image.fromarray(image.astype("uint8")).save(root / "img" / f"{name}.png")
        image[24:72, 24:72] += rng.normal(0, 60, size=image[24:72, 24:72].shape)
        Image.fromarray(image.clip(0, 255).astype("uint8")).save(root / "img" / f"{name}_noised.png")
    lines = []
    for i in range(n_records):
        question, chosen, rejected = _QA[i % len(_QA)]
        name = "retina" if i % 2 == 0 else "ihc"
        lines.append(
            json.dumps(
                {
                    "id": str(i),
                    "image": f"img/{name}.png",
                    "rejected_image": f"img/{name}_noised.png",
                    "question": question,
                    "chosen": chosen,
                    "rejected": rejected,
                }
            )
        )
    path = root / "prefs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def dpo_config(output_dir: Path, batch_size: int, **extra):
    from trl import DPOConfig

    return DPOConfig(
        output_dir=str(output_dir),
        use_cpu=True,
        bf16=False,
        report_to="none",
        max_length=256,
        per_device_train_batch_size=batch_size,
        learning_rate=1e-6,
        save_strategy="no",
        seed=0,
        **extra,
    )


def build(arch: str, root: Path, batch_size: int):
    """Stock TRL DPOTrainer, our dpo and our mdpo trainers, each with its records and collator."""
    from datasets import Dataset
    from transformers import AutoProcessor
    from trl import DPOTrainer

    from medbench.tiny import build_tiny_model
    from medbench.train.config import load_recipe
    from medbench.train.data import load_image, load_preference_file
    from medbench.train.run import build_trainer

    model_dir = build_tiny_model(root / arch, arch)
    data = write_data(root / "data", batch_size)
    records = load_preference_file(data)
    trl_rows = [
        {
            "images": [load_image(r["image"])],
            "prompt": [{"role": "user", "content": r["question"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in records
    ]
    stock = DPOTrainer(
        model=str(model_dir),
        args=dpo_config(root / "stock", batch_size),
        train_dataset=Dataset.from_list(trl_rows),
        processing_class=AutoProcessor.from_pretrained(model_dir),
    )

    def fresh_trl_rows():  # TRL's collator rewrites its input dicts, so give it new ones each time
        return [dict(row) for row in trl_rows]

    overrides = {"max_length": "256", "per_device_train_batch_size": str(batch_size), "save_strategy": "no"}
    ours = {
        name: build_trainer(load_recipe(name, overrides), model_dir, data, root / name).trainer
        for name in ("dpo", "mdpo")
    }
    for trainer in (stock, *ours.values()):
        # Set by Trainer.train()'s loop, read by training_step; the benchmark calls training_step directly.
        trainer.current_gradient_accumulation_steps = 1
    return {
        "TRL DPOTrainer": (stock, fresh_trl_rows),
        "medbench dpo": (ours["dpo"], lambda: records),
        "medbench mdpo": (ours["mdpo"], lambda: records),
    }


def time_steps(trainer, make_examples, steps: int, collate: bool) -> float:
    """Seconds per training step (forward, loss, backward), optionally including collation."""
    import torch

    batch = trainer.data_collator(make_examples())
    start = time.perf_counter()
    for _ in range(steps):
        if collate:
            batch = trainer.data_collator(make_examples())
        trainer.training_step(trainer.model, batch)
        trainer.model.zero_grad(set_to_none=True)
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    return (time.perf_counter() - start) / steps


def measure(candidates, steps: int, rounds: int, collate: bool) -> dict[str, float]:
    for trainer, make_examples in candidates.values():  # warm-up: allocator, kernels, lazy imports
        time_steps(trainer, make_examples, 2, collate)
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, (trainer, make_examples) in candidates.items():
            samples[name].append(time_steps(trainer, make_examples, steps, collate))
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--arch", nargs="+", default=["llava", "qwen2_5_vl"], choices=["llava", "qwen2_vl", "qwen2_5_vl"]
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (the median is reported)")
    args = parser.parse_args()

    import torch
    import transformers
    import trl

    transformers.logging.set_verbosity_error()
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
        f"{torch.get_num_threads()} threads, batch {args.batch_size} records, median of {args.rounds} rounds"
    )
    print(
        f"{'arch':<12} {'timing':<16} {'TRL dpo ms':>11} {'our dpo ms':>11} {'our mdpo ms':>12} "
        f"{'dpo/TRL':>8} {'mdpo/dpo':>9}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch:
            candidates = build(arch, Path(tmp) / arch, args.batch_size)
            for collate in (False, True):
                t = measure(candidates, args.steps, args.rounds, collate)
                stock, dpo, mdpo = t["TRL DPOTrainer"], t["medbench dpo"], t["medbench mdpo"]
                label = "with collation" if collate else "model step"
                print(
                    f"{arch:<12} {label:<16} {stock * 1e3:>11.1f} {dpo * 1e3:>11.1f} {mdpo * 1e3:>12.1f} "
                    f"{dpo / stock:>8.3f} {mdpo / dpo:>9.3f}"
                )
    print("targets: dpo/TRL <= 1.05, mdpo/dpo <= 1.6 (three scored sequences per record vs two: 1.5)")


if __name__ == "__main__":
    main()
