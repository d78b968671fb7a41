"""Generation throughput: ``medbench_hf`` against lmms-eval's own ``llava_hf`` and ``qwen2_5_vl``, same model.

Builds two random vision-language models big enough that the model, not Python, dominates (a LLaVA with a
Llama language model and a Qwen2.5-VL, each with about 30M language-model parameters), then generates the same
greedy answers to the same image questions through each lmms-eval model class in this process, at batch size 1
and 8, and prints tokens/s and the ratio to lmms-eval's class at batch 1. lmms-eval's ``llava_hf`` only runs at
batch size 1 (it asserts so), so its batch-8 row is absent.

Targets: ``medbench_hf`` at least 1.0x lmms-eval at batch 1; the batch-8 gain is reported.

Usage::

    python benchmarks/bench_generation.py [--requests 16] [--new-tokens 32] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

PIXELS = 56 * 56
# lmms-eval's qwen2_5_vl always sends a system message; medbench_hf gets the same one so both run the same prompt.
SYSTEM = "You are a helpful assistant."


def _enlarge(folder: Path, arch: str, hidden: int, layers: int) -> Path:
    """Re-initialise the tiny model's language model at a benchmark size (same tokenizer and processor)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(folder)
    text = config.text_config
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = hidden, hidden * 3, layers
    text.num_attention_heads = text.num_key_value_heads = hidden // 64
    if getattr(text, "layer_types", None):
        text.layer_types = [text.layer_types[0]] * layers
    if arch == "qwen2_5_vl":
        config.vision_config.out_hidden_size = hidden
        text.rope_parameters = {**text.rope_parameters, "mrope_section": [8, 12, 12]}  # sums to head_dim / 2
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config)
    with torch.no_grad():  # EOS's logit pinned at 0 while a few hundred others are random: answers run full length
        model.get_output_embeddings().weight[config.text_config.eos_token_id].zero_()
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.save_pretrained(folder)
    if arch == "qwen2_5_vl":  # the image size lmms-eval's qwen2_5_vl is given (min = max pixels), for the same work
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(folder)
        processor.image_processor.size = {"shortest_edge": PIXELS, "longest_edge": PIXELS}
        for name in ("min_pixels", "max_pixels"):
            if hasattr(processor.image_processor, name):
                setattr(processor.image_processor, name, PIXELS)
        processor.save_pretrained(folder)
    return folder


def _requests(n: int, new_tokens: int):
    from lmms_eval.api.instance import Instance
    from PIL import Image

    docs = [{"image": Image.new("RGB", (56, 56), (40 + 7 * i, 90, 160 - 5 * i))} for i in range(n)]
    questions = ["Is there a fracture?", "What organ is shown in this image?", "Describe the findings in detail."]
    gen_kwargs = {"max_new_tokens": new_tokens, "temperature": 0, "do_sample": False, "until": ["\n\n\n\n"]}
    requests = [
        Instance(
            request_type="generate_until",
            arguments=(questions[i % 3] + " " * (i % 4), dict(gen_kwargs), lambda doc: [doc["image"]], i, "bench", "test"),
            idx=0,
            metadata={"task": "bench", "doc_id": i, "repeats": 1},
        )
        for i in range(n)
    ]
    return docs, requests


def _count_generated(hf_model, eos_id: int, counter: list[int]) -> None:
    """Wrap ``hf_model.generate`` to add each row's new tokens (up to and including EOS) to ``counter``."""
    generate = hf_model.generate

    def counting(*args, **kwargs):
        out = generate(*args, **kwargs)
        prompt = (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).shape[1]
        for row in out[:, prompt:].tolist():
            counter[0] += row.index(eos_id) + 1 if eos_id in row else len(row)
        return out

    hf_model.generate = counting


def _time(model, docs, requests, repeats: int) -> tuple[float, int, list[str]]:
    model.task_dict = {"bench": {"test": docs}}
    counter = [0]
    _count_generated(model.model, model.model.config.text_config.eos_token_id, counter)
    model.generate_until(requests[:2])  # warm-up
    best, tokens = float("inf"), 0
    for _ in range(repeats):
        counter[0] = 0
        start = time.perf_counter()
        answers = model.generate_until(requests)
        elapsed = time.perf_counter() - start
        if elapsed < best:
            best, tokens = elapsed, counter[0]
    return best, tokens, answers


def _format(row: tuple) -> str:
    arch, params, name, batch, tokens, seconds, rate, ratio, same = row
    if isinstance(seconds, float):
        seconds, rate, ratio = f"{seconds:.2f}", f"{rate:.1f}", f"{ratio:.2f}x"
    return f"{arch:<11} {params:>6}  {name:<22} {batch:>5} {tokens:>6} {seconds:>8} {rate:>8} {ratio:>10}  {same}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    args = parser.parse_args()

    import torch
    from lmms_eval.models.simple.llava_hf import LlavaHf
    from lmms_eval.models.simple.qwen2_5_vl import Qwen2_5_VL

    from medbench.lmms.models.hf import MedbenchHF
    from medbench.tiny import build_tiny_model

    torch.set_grad_enabled(False)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for arch in ("llava", "qwen2_5_vl"):
            folder = _enlarge(build_tiny_model(Path(root) / arch, arch), arch, args.hidden, args.layers)
            docs, requests = _requests(args.requests, args.new_tokens)
            params = sum(p.numel() for p in MedbenchHF(pretrained=str(folder), device=args.device).model.parameters())
            if arch == "llava":
                baseline = {1: LlavaHf(pretrained=str(folder), device=args.device, device_map=args.device, batch_size=1)}
            else:
                baseline = {
                    b: Qwen2_5_VL(pretrained=str(folder), device=args.device, device_map=args.device, batch_size=b,
                                  min_pixels=PIXELS, max_pixels=PIXELS, system_prompt=SYSTEM)
                    for b in (1, 8)
                }
            system = SYSTEM if arch == "qwen2_5_vl" else None
            ours = {
                b: MedbenchHF(pretrained=str(folder), device=args.device, batch_size=b, system_prompt=system)
                for b in (1, 8)
            }
            reference_rate, reference_answers = None, None
            for batch in (1, 8):
                for name, models in ((f"lmms-eval {'llava_hf' if arch == 'llava' else 'qwen2_5_vl'}", baseline), ("medbench_hf", ours)):
                    if batch not in models:
                        continue
                    seconds, tokens, answers = _time(models[batch], docs, requests, args.repeats)
                    rate = tokens / seconds
                    if reference_rate is None:
                        reference_rate, reference_answers = rate, answers
                    same = "same" if answers == reference_answers else "differ"
                    row = (arch, f"{params / 1e6:.0f}M", name, batch, tokens, seconds, rate, rate / reference_rate, same)
                    rows.append(row)
                    print("RESULT " + _format(row), flush=True)
    print(_format(("model", "params", "backend", "batch", "tokens", "seconds", "tok/s", "vs lmms b1", "answers")))
    for row in rows:
        print(_format(row))
    print("targets: medbench_hf >= 1.0x lmms-eval at batch 1; batch 8 shows the batching gain")


if __name__ == "__main__":
    main()
