"""``medbench_hf``: evaluate any Hugging Face image-text-to-text checkpoint inside lmms-eval.

Usage::

    lmms-eval --include_path "$(medbench tasks-dir)" --model medbench_hf \\
        --model_args pretrained=PATH_OR_HUB_ID,batch_size=8 --tasks medbench_vqa_rad

The checkpoint must load with ``AutoModelForImageTextToText`` and ``AutoProcessor`` and carry a chat
template (or be given one with ``chat_template=FILE``); it is loaded by :mod:`medbench.hfload` and prompted through
:mod:`medbench.prompts`, exactly as ``medbench train`` does. Original-format LLaVA checkpoints (LLaVA-Med v1.5,
HuatuoGPT-Vision-7B) load after ``medbench convert``. Requests are sorted by prompt length and batched
with left padding; images go through the model's own processor. Greedy decoding is what the tasks ask for;
sampling is honoured when a task or ``--gen_kwargs`` asks for it, with a warning because the scores then
vary between runs.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from tqdm import tqdm

from medbench.lmms.models.base import GenerationOnlyModel, process_device
from medbench.prompts import needs_special_tokens, render_prompt

_GENERATE_KEYS = ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "num_beams", "repetition_penalty")


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def is_sampling(gen_kwargs: dict) -> bool:
    """Whether generation settings make the output random (sampling with a positive temperature)."""
    if not _as_bool(gen_kwargs.get("do_sample", False)):
        return False
    return float(gen_kwargs.get("temperature", 1.0) or 0.0) > 0.0


def truncate_at_stops(text: str, stops: list[str]) -> str:
    """Cut ``text`` at the earliest stop string (lmms-eval's ``until``)."""
    cut = min((index for stop in stops if stop and (index := text.find(stop)) >= 0), default=len(text))
    return text[:cut]


class MedbenchHF(GenerationOnlyModel):
    """lmms-eval model for ``AutoModelForImageTextToText`` checkpoints; see the module docstring.

    Args:
        pretrained: Hub id or local folder of the checkpoint.
        revision: Hub revision (branch, tag or commit) to load.
        device: ``"cuda"``, ``"cpu"``, ``"cuda:1"``...; default: this process's GPU (``cuda:LOCAL_RANK``) when
            CUDA is available, else the CPU.
        dtype: ``"auto"`` (bfloat16 on GPU, float32 on CPU), ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        batch_size: Requests generated together.
        max_new_tokens: Overrides the task's ``max_new_tokens`` when given.
        chat_template: A Jinja chat template file to use instead of the processor's.
        system_prompt: Optional system message put before every request.
        trust_remote_code: Passed to ``from_pretrained``.
        attn_implementation: Passed to ``from_pretrained`` (e.g. ``"sdpa"``, ``"flash_attention_2"``).
        device_map: Passed to ``from_pretrained`` for models that must be sharded (e.g. ``"auto"``).
    """

    def __init__(
        self,
        pretrained: str,
        revision: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int | str = 1,
        max_new_tokens: int | str | None = None,
        chat_template: str | None = None,
        system_prompt: str | None = None,
        trust_remote_code: bool | str = False,
        attn_implementation: str | None = None,
        device_map: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        from medbench.hfload import load_vision_language_model

        if kwargs:
            warnings.warn(f"medbench_hf ignores unknown model_args: {', '.join(sorted(kwargs))}", stacklevel=2)
        # Under `accelerate launch` each process loads the model on its own GPU (LOCAL_RANK).
        self.device_name = device or process_device()
        self.pretrained = str(pretrained)
        self.model, self.processor = load_vision_language_model(
            self.pretrained,
            dtype=dtype,
            device=self.device_name,
            device_map=device_map,
            revision=revision,
            trust_remote_code=_as_bool(trust_remote_code),
            attn_implementation=attn_implementation,
            chat_template=Path(chat_template).read_text(encoding="utf-8") if chat_template else None,
        )
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.tokenizer.padding_side = "left"
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens) if max_new_tokens is not None else None
        self.system_prompt = self._resolve_system_prompt(system_prompt) if system_prompt else None
        self._warned_sampling = False

    def render(self, text: str, n_images: int) -> str:
        """The prompt for one request, from the builder the trainer also uses (:mod:`medbench.prompts`)."""
        return render_prompt(self.processor, text, n_images, self.system_prompt)

    def encode(self, texts: list[str], images: list) -> Any:
        """Model inputs for rendered prompts and their images (left-padded), on the model's device."""
        inputs = self.processor(
            text=texts,
            images=images or None,
            return_tensors="pt",
            padding=True,
            add_special_tokens=needs_special_tokens(self.tokenizer, texts[0]),
        )
        return inputs.to(self.model.device)

    def _generation_settings(self, gen_kwargs: dict) -> tuple[dict, list[str]]:
        settings = {key: gen_kwargs[key] for key in _GENERATE_KEYS if key in gen_kwargs}
        if self.max_new_tokens is not None:
            settings["max_new_tokens"] = self.max_new_tokens
        settings.setdefault("max_new_tokens", 128)
        if is_sampling(settings):
            if not self._warned_sampling:
                warnings.warn(
                    f"sampling is on (temperature={settings.get('temperature')}): scores will vary between runs; "
                    "medbench tasks default to greedy decoding",
                    stacklevel=2,
                )
                self._warned_sampling = True
            settings["do_sample"] = True
        else:
            settings["do_sample"] = False
            settings.pop("temperature", None)  # transformers warns about a temperature without sampling
            settings.pop("top_p", None)
            settings.pop("top_k", None)
        stops = gen_kwargs.get("until") or []
        return settings, [stops] if isinstance(stops, str) else list(stops)

    def _generate_batch(self, requests: list) -> list[str]:
        import torch

        texts, images = [], []
        for request in requests:
            context, _gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            visuals = [visual.convert("RGB") for visual in doc_to_visual(self.task_dict[task][split][doc_id])]
            images.extend(visuals)
            texts.append(self.render(context, len(visuals)))
        settings, stops = self._generation_settings(requests[0].args[1])
        inputs = self.encode(texts, images)
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            output = self.model.generate(
                **inputs, **settings, pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        decoded = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [truncate_at_stops(text, stops).strip() for text in decoded]

    def generate_until(self, requests) -> list[str]:
        # Sort by prompt length so a batch pads little; group by generation settings so a batch shares them.
        order = sorted(range(len(requests)), key=lambda i: (repr(requests[i].args[1]), -len(requests[i].args[0])))
        answers: list[str] = [""] * len(requests)
        progress = tqdm(total=len(requests), desc="medbench_hf", disable=self.rank != 0)
        start = 0
        while start < len(order):
            settings_key = repr(requests[order[start]].args[1])
            batch = [order[start]]
            while (
                len(batch) < self.batch_size
                and start + len(batch) < len(order)
                and repr(requests[order[start + len(batch)]].args[1]) == settings_key
            ):
                batch.append(order[start + len(batch)])
            for index, answer in zip(batch, self._generate_batch([requests[i] for i in batch])):
                answers[index] = answer
                self.cache_hook.add_partial("generate_until", requests[index].args, answer)
            progress.update(len(batch))
            start += len(batch)
        progress.close()
        return answers
