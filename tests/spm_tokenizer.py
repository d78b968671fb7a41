"""A Llama-style sentencepiece BPE ``tokenizer.model`` trained offline (byte fallback, dummy prefix), as
LLaVA-Med v1.5 ships one; shared by the conversion and the collator tests."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path


def write_sentencepiece_model(folder: Path, corpus: Iterable[str], vocab_size: int = 400) -> Path:
    """Train on ``corpus`` and write ``folder/tokenizer.model``; returns its path."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(corpus)), model_writer=buffer, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", split_digits=True, character_coverage=1.0,
    )
    path = Path(folder) / "tokenizer.model"
    path.write_bytes(buffer.getvalue())
    return path
