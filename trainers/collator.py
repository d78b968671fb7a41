"""Batch preference records into the row blocks an objective scores, with the right image per row.

TRL's ``DataCollatorForVisionPreference`` pairs every answer with the record's one image. The image-side
objectives (CoPO, mDPO, MMedPO, error-targeted) also need the answer scored under the *corrupted* image, so this
collator builds one row per ``(answer, image)`` pair the objective asks for and stacks them block by block:
``[row 0 of every record; row 1 of every record; ...]``. For the two-row ``(chosen, image), (rejected, image)``
layout the output is exactly TRL's (checked in ``tests/trainers/test_parity.py``), so stock TRL losses can read it.

Answers are tokenized as the continuation of their prompt, not on their own: the prompt ids are what evaluation
feeds the model (the processor on the rendered prompt), and the answer ids are what follows them in the
tokenization of the whole conversation (:func:`continuation_ids`). A sentencepiece tokenizer (LLaVA-Med's) gives a
text stretch a dummy-prefix ``▁``, so an answer tokenized alone would start with a token the model never sees after
the prompt; TRL's collator tokenizes answers alone, and its batch equals ours where the two agree (tokenizers
without a dummy prefix, such as Qwen's byte-level BPE).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from trl.trainer.utils import flush_left

from medbench.errors import DataError
from medbench.prompts import needs_special_tokens, render_prompt_and_answers

from .data import load_image
from .objectives import Objective, is_visual_error

logger = logging.getLogger(__name__)

# Per-token tensors some processors add next to input_ids; they are extended over the answer and truncated with it.
_TOKEN_ALIGNED_KEYS = ("token_type_ids", "mm_token_type_ids")


def continuation_ids(tokenizer: Any, prompts: list[str], answers: list[str]) -> tuple[list[list[int]], list[int]]:
    """The token ids of each answer as the continuation of its prompt in the conversation's tokenization.

    ``prompts[i] + answers[i]`` is the whole conversation's text (see
    :func:`medbench.prompts.render_prompt_and_answers`). It is tokenized in one piece, and the answer's ids are the
    ones after the prompt's own ids, which must be a prefix of it. When they are not (a token merges across the
    boundary, so no split of the conversation's ids starts with the prompt's ids evaluation uses), the answer is
    tokenized on its own instead and its index is returned.

    Returns:
        ``(answer ids per pair, indices of the pairs that fell back to the answer alone)``.
    """
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer([p + a for p, a in zip(prompts, answers, strict=True)], add_special_tokens=False)["input_ids"]
    ids, fallbacks = [], []
    for index, (prompt, full) in enumerate(zip(prompt_ids, full_ids, strict=True)):
        if full[: len(prompt)] == prompt:
            ids.append(full[len(prompt) :])
        else:
            ids.append(tokenizer(answers[index], add_special_tokens=False)["input_ids"])
            fallbacks.append(index)
    return ids, fallbacks


@dataclass
class PreferenceCollator:
    """Collate preference records into model inputs for one objective.

    Args:
        processor: The model's processor (tokenizer + image processor + chat template).
        objective: Which rows to build (see :class:`medbench.train.objectives.Objective`).
        max_length: Longest row in tokens (prompt incl. image tokens + answer); answers are cut to fit, and rows
            scoring the same answer of one record (e.g. under the real and the corrupted image) keep the same answer
            tokens. A prompt that leaves no room for its answer is refused. None keeps all.
        visual_error_types: Error types routed to the image-side term by per-record objectives.
        system_prompt: Optional system message before every question.
        image_loader: Function opening an image path (defaults to :func:`medbench.train.data.load_image`).

    Returns (when called on a list of records) a dict with ``input_ids``, ``attention_mask``, ``completion_mask``,
    the processor's image tensors (``pixel_values``, ``image_grid_thw``, ...), and, when the objective uses them,
    ``weight`` (float, per record) and ``is_visual`` (bool, per record).
    """

    processor: Any
    objective: Objective
    max_length: int | None = None
    visual_error_types: frozenset[str] = frozenset({"visual_misinterpretation"})
    system_prompt: str | None = None
    image_loader: Callable[[str], Any] = field(default=load_image)
    _warned_fallback: bool = field(default=False, init=False, repr=False)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [self.objective.rows_for(example, self.visual_error_types) for example in examples]
        images: dict[Any, Any] = {}  # each file is decoded once per batch even when several rows use it
        prompts: list[str] = []
        row_images: list[list[Any]] = []
        answers: list[str] = []
        answer_keys: list[tuple[int, str]] = []  # (record, answer field) of each row
        rendered = [self._render(example, example_rows) for example, example_rows in zip(examples, rows, strict=True)]
        for block in range(self.objective.n_rows):
            for index, (example, example_rows, (prompt, texts)) in enumerate(zip(examples, rows, rendered, strict=True)):
                answer_field, image_field = example_rows[block]
                source = example[image_field]
                if source not in images:
                    images[source] = self.image_loader(source) if isinstance(source, str) else source
                prompts.append(prompt)
                row_images.append([images[source]])
                answers.append(texts[answer_field])
                answer_keys.append((index, answer_field))
        batch = self._tokenize(prompts, row_images, answers, examples, answer_keys)
        if "weight" in self.objective.requires:
            batch["weight"] = torch.tensor([float(example["weight"]) for example in examples], dtype=torch.float32)
        if self.objective.per_record_rows:
            batch["is_visual"] = torch.tensor(
                [is_visual_error(example, self.visual_error_types) for example in examples], dtype=torch.bool
            )
        return batch

    def _render(self, example: dict[str, Any], example_rows: tuple[tuple[str, str], ...]) -> tuple[str, dict[str, str]]:
        names = sorted({answer for answer, _ in example_rows})
        return render_prompt_and_answers(
            self.processor, example["question"], {name: example[name] for name in names}, self.system_prompt
        )

    def _tokenize(
        self,
        prompts: list[str],
        images: list[list[Any]],
        answers: list[str],
        examples: list[dict[str, Any]],
        answer_keys: list[tuple[int, str]],
    ) -> dict[str, torch.Tensor]:
        # Prompts are left-padded and answers right-padded, so after concatenation each row is
        # [pad... prompt answer pad...]; flush_left then removes the leading padding (the same layout TRL uses).
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        processed = self.processor(
            images=images,
            text=prompts,
            padding=True,
            padding_side="left",
            return_tensors="pt",
            add_special_tokens=needs_special_tokens(tokenizer, prompts[0]),  # as medbench_hf tokenizes the prompt
        )
        pad_id = getattr(tokenizer, "pad_token_id", None) or 0
        answer_ids, answer_mask = self._answer_tensors(tokenizer, prompts, answers, examples, answer_keys, pad_id)
        prompt_ids, prompt_mask = processed["input_ids"], processed["attention_mask"]
        input_ids = torch.cat((prompt_ids, answer_ids), dim=1)
        attention_mask = torch.cat((prompt_mask, answer_mask), dim=1)
        completion_mask = torch.cat((torch.zeros_like(prompt_mask), answer_mask), dim=1)
        aligned = [
            torch.cat((processed[key], torch.zeros_like(answer_ids)), dim=1)
            for key in _TOKEN_ALIGNED_KEYS
            if key in processed
        ]
        attention_mask, input_ids, completion_mask, *aligned = flush_left(
            attention_mask, input_ids, completion_mask, *aligned
        )
        if self.max_length is not None:
            prompt_lengths = prompt_mask.sum(dim=1)
            too_long = (prompt_lengths >= self.max_length).nonzero()
            if len(too_long):
                row = int(too_long[0])
                record = examples[row % len(examples)]
                raise DataError(
                    f"record '{record.get('id')}': its prompt (with image tokens) is {int(prompt_lengths[row])} "
                    f"tokens, leaving no room for the answer within max_length={self.max_length}; raise max_length"
                )
            # Truncate answers, never prompts, and give every row that scores the same answer of the same record
            # the same answer tokens: a larger corrupted image (more image tokens) must not leave its row fewer
            # answer tokens than the real image's, or CoPO would compare sums over different token sets.
            answer_lengths = answer_mask.sum(dim=1)
            kept = torch.minimum(answer_lengths, self.max_length - prompt_lengths)
            groups: dict[tuple[int, str], list[int]] = {}
            for row, key in enumerate(answer_keys):
                groups.setdefault(key, []).append(row)
            for members in groups.values():
                kept[members] = kept[members].min()
            totals = prompt_lengths + kept
            keep = torch.arange(input_ids.size(1)).unsqueeze(0) < totals.unsqueeze(1)
            width = int(totals.max())
            input_ids = input_ids.masked_fill(~keep, pad_id)[:, :width]
            attention_mask = (attention_mask * keep)[:, :width]
            completion_mask = (completion_mask * keep)[:, :width]
            aligned = [(tensor * keep)[:, :width] for tensor in aligned]
        batch = dict(processed)
        batch["input_ids"] = input_ids
        batch["attention_mask"] = attention_mask
        batch["completion_mask"] = completion_mask
        for key, tensor in zip([k for k in _TOKEN_ALIGNED_KEYS if k in processed], aligned, strict=True):
            batch[key] = tensor
        return batch

    def _answer_tensors(
        self,
        tokenizer: Any,
        prompts: list[str],
        answers: list[str],
        examples: list[dict[str, Any]],
        answer_keys: list[tuple[int, str]],
        pad_id: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded answer ids and mask, each answer tokenized as its prompt's continuation (once per pair)."""
        pairs = list(dict.fromkeys(zip(prompts, answers, strict=True)))
        ids, fallbacks = continuation_ids(tokenizer, [p for p, _ in pairs], [a for _, a in pairs])
        index_of = {pair: index for index, pair in enumerate(pairs)}
        row_pairs = [index_of[pair] for pair in zip(prompts, answers, strict=True)]
        if fallbacks and not self._warned_fallback:
            self._warned_fallback = True
            row = next(row for row, pair in enumerate(row_pairs) if pair in set(fallbacks))
            logger.warning(
                "record '%s': the prompt's tokens are not a prefix of the conversation's tokens (a token spans the "
                "prompt/answer boundary), so its answer is tokenized on its own (warned once per collator)",
                examples[answer_keys[row][0]].get("id"),
            )
        rows = [ids[pair] for pair in row_pairs]
        width = max(len(row) for row in rows)
        answer_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        answer_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):
            answer_ids[index, : len(row)] = torch.tensor(row, dtype=torch.long)
            answer_mask[index, : len(row)] = 1
        return answer_ids, answer_mask


@dataclass
class CachedCollator:
    """Pad and stack preprocessed rows (:func:`medbench.train.data.load_or_preprocess`) into the batch
    :class:`PreferenceCollator` would build for the same records, exactly (same keys, values, dtypes, layout).

    The examples it receives are ``{"index": i, ...}`` entries of :func:`indexed_dataset`; nothing is tokenized or
    image-processed per step.
    """

    store: Any  # medbench.train.data.PreprocessedRecords

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        store = self.store
        indices = [int(example["index"]) for example in examples]
        blocks = len(store.rows[indices[0]])
        rows = [store.rows[i][block] for block in range(blocks) for i in indices]
        images = [store.images[store.row_images[i][block]] for block in range(blocks) for i in indices]
        lengths = [len(row["input_ids"]) for row in rows]
        width = max(lengths)
        batch: dict[str, torch.Tensor] = {}
        for key in store.keys:
            if key == "attention_mask":
                batch[key] = (torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()
            elif key in store.token_keys:
                fill = store.pad_id if key == "input_ids" else 0
                first = rows[0][key]
                padded = torch.full((len(rows), width), fill, dtype=first.dtype)
                for index, row in enumerate(rows):
                    padded[index, : lengths[index]] = row[key]
                batch[key] = padded
            elif key == "weight":
                batch[key] = torch.tensor([store.weight[i] for i in indices], dtype=torch.float32)
            elif key == "is_visual":
                batch[key] = torch.tensor([store.is_visual[i] for i in indices], dtype=torch.bool)
            else:
                batch[key] = torch.cat([image[key] for image in images])
        return batch


def indexed_dataset(records: list[dict[str, Any]]):
    """The trainer's ``datasets.Dataset`` over preprocessed records: each entry's position and image (TRL reads
    ``image`` to know the data is multimodal, which leaves the collation to :class:`CachedCollator`)."""
    from datasets import Dataset

    return Dataset.from_dict({"index": list(range(len(records))), "image": [record.get("image") for record in records]})
