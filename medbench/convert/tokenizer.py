"""A fast tokenizer from a sentencepiece ``tokenizer.model``, without sentencepiece's protobuf schema.

LLaVA-Med v1.5 ships only ``tokenizer.model``. transformers turns such a file into a fast tokenizer through
sentencepiece's bundled ``sentencepiece_model_pb2``, which fails to import with recent protobuf releases. The
model file is a small protobuf message; the few fields a Llama/Mistral BPE tokenizer needs are read here with a
minimal wire-format reader, and the pieces, scores and types come from ``sentencepiece`` itself when installed
(else from the same reader).

The result follows sentencepiece's own segmentation: every stretch of text between special tokens gets the
dummy-prefix ``▁``, exactly as the original LLaVA code's ``tokenizer_image_token`` produces by tokenizing the text
on each side of ``<image>`` separately (so ``<image>\\nWhat`` gives ``<image> ▁ <0x0A> What``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medbench.errors import MedbenchError

# sentencepiece_model.proto field numbers
_PIECES, _TRAINER_SPEC, _NORMALIZER_SPEC = 1, 2, 3
_PIECE_TEXT, _PIECE_SCORE, _PIECE_TYPE = 1, 2, 3
_TRAINER_MODEL_TYPE, _TRAINER_BYTE_FALLBACK = 3, 35
_NORMALIZER_ADD_DUMMY_PREFIX = 3
_BPE = 2
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int, Any]]:
    """``(field number, wire type, value)`` of a protobuf message; length-delimited values stay bytes."""
    out, pos = [], 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((number, wire, value))
    return out


def read_sentencepiece(path: Path) -> dict[str, Any]:
    """Pieces ``[(text, score, type)]``, model type, byte fallback and dummy prefix of a sentencepiece model.

    Raises:
        MedbenchError: the file is not a sentencepiece model.
    """
    import struct

    try:
        fields = _fields(path.read_bytes())
        pieces, trainer, normalizer = [], {}, {}
        for number, _wire, value in fields:
            if number == _PIECES:
                piece = {n: v for n, _w, v in _fields(value)}
                score = struct.unpack("<f", piece[_PIECE_SCORE])[0] if _PIECE_SCORE in piece else 0.0
                pieces.append((piece[_PIECE_TEXT].decode("utf-8"), score, piece.get(_PIECE_TYPE, _NORMAL)))
            elif number == _TRAINER_SPEC:
                trainer = {n: v for n, _w, v in _fields(value)}
            elif number == _NORMALIZER_SPEC:
                normalizer = {n: v for n, _w, v in _fields(value)}
    except (ValueError, IndexError, KeyError, UnicodeDecodeError, struct.error) as error:
        raise MedbenchError(f"{path}: not a readable sentencepiece model ({error})") from None
    if not pieces:
        raise MedbenchError(f"{path}: a sentencepiece model with no pieces")
    return {
        "pieces": pieces,
        "model_type": trainer.get(_TRAINER_MODEL_TYPE, 1),
        "byte_fallback": bool(trainer.get(_TRAINER_BYTE_FALLBACK, 0)),
        "add_dummy_prefix": bool(normalizer.get(_NORMALIZER_ADD_DUMMY_PREFIX, 1)),
    }


def _bpe_merges(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """BPE merges implied by a sentencepiece BPE vocabulary, in the order sentencepiece applies them.

    sentencepiece BPE merges the adjacent pair whose merged piece has the best score; pieces are stored by
    descending score, so the merged piece's id is the merge rank.
    """
    ranked = []
    for piece, piece_id in vocab.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((piece_id, vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(left, right) for _pid, _lid, _rid, left, right in ranked]


def fast_tokenizer_from_sentencepiece(path: Path, tokenizer_config: dict[str, Any]):
    """A ``PreTrainedTokenizerFast`` equivalent to the sentencepiece BPE model at ``path``.

    Args:
        path: The ``tokenizer.model`` file.
        tokenizer_config: The checkpoint's ``tokenizer_config.json`` (special tokens, ``model_max_length``).

    Raises:
        MedbenchError: the model is not BPE (Llama/Mistral tokenizers are), or is unreadable.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    spec = read_sentencepiece(path)
    if spec["model_type"] != _BPE:
        raise MedbenchError(
            f"{path}: sentencepiece model type {spec['model_type']} is not BPE; only Llama/Mistral-style BPE "
            "tokenizers are converted — add a tokenizer.json to the checkpoint folder"
        )
    vocab = {text: index for index, (text, _score, _type) in enumerate(spec["pieces"])}
    unk = next((text for text, _s, kind in spec["pieces"] if kind == _UNKNOWN), None)
    backend = Tokenizer(
        BPE(vocab=vocab, merges=_bpe_merges(vocab), unk_token=unk, fuse_unk=True, byte_fallback=spec["byte_fallback"])
    )
    # sentencepiece: spaces become ▁ and each text stretch gets a leading ▁ (the dummy prefix). As a normalizer
    # (not a pre-tokenizer) the prefix is added to every stretch between special tokens, as in the original.
    steps = [normalizers.Prepend("▁")] if spec["add_dummy_prefix"] else []
    backend.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    decode_steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if spec["add_dummy_prefix"]:
        decode_steps.append(decoders.Strip(content=" ", left=1))
    backend.decoder = decoders.Sequence(decode_steps)
    specials = [text for text, _s, kind in spec["pieces"] if kind in (_CONTROL, _UNKNOWN)]
    backend.add_special_tokens([AddedToken(text, special=True, normalized=False) for text in specials])

    def token(name: str, default: str | None) -> str | None:
        value = tokenizer_config.get(name, default)
        return value.get("content") if isinstance(value, dict) else value

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=token("bos_token", "<s>"),
        eos_token=token("eos_token", "</s>"),
        unk_token=token("unk_token", unk),
        pad_token=token("pad_token", None),
        model_max_length=tokenizer_config.get("model_max_length", 4096),
        clean_up_tokenization_spaces=False,
    )
