"""CheXbert labeller (Smit et al., EMNLP 2020) rebuilt from its published checkpoint, offline.

The checkpoint ``chexbert.pth`` is a ``torch.save`` of ``{"model_state_dict": ...}`` from a
``DataParallel``-wrapped ``bert_labeler``: a BERT-base (uncased) encoder, dropout, and 14 linear heads on
the [CLS] vector — 13 with 4 classes (blank, positive, negative, uncertain) for the 12 pathologies and
Support Devices, 1 with 2 classes (blank, positive) for No Finding. This module rebuilds that network with
``transformers.BertModel`` and loads the state dict strictly (apart from buffers older transformers
versions saved), so a wrong or truncated file fails loudly instead of scoring with random heads. The
tokenizer is ``bert-base-uncased``'s WordPiece vocabulary, read from a local folder. Nothing is fetched.

Imported only when CheXbert-F1 is computed (it imports torch and transformers).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medbench.metrics.text import MetricUnavailable

# Head classes: 0 blank, 1 positive, 2 negative, 3 uncertain (No Finding: 0 blank, 1 positive).
# Report-generation F1 counts "uncertain" as positive (f1chexbert's and RadEval's "rrg" mode): a generated "possible effusion" matches a reference "effusion" rather than contradicting it.
POSITIVE_CLASSES = (1, 3)
MAX_TOKENS = 512  # BERT's position table; longer reports keep their first 510 word pieces


class CheXbertLabeler(nn.Module):
    """BERT encoder + dropout + 14 linear heads on the [CLS] vector (the checkpoint's layout).

    Args:
        config: A ``transformers.BertConfig`` (bert-base-uncased for the published checkpoint).
    """

    def __init__(self, config: Any) -> None:
        super().__init__()
        from transformers import BertModel

        # With the pooler: the checkpoint carries its weights (unused) and a strict load wants them.
        self.bert = BertModel(config, add_pooling_layer=True)
        self.dropout = nn.Dropout(0.1)
        hidden = config.hidden_size
        self.linear_heads = nn.ModuleList([nn.Linear(hidden, 4) for _ in range(13)] + [nn.Linear(hidden, 2)])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """Logits of the 14 heads, each ``(batch, classes)``."""
        cls = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        cls = self.dropout(cls)
        return [head(cls) for head in self.linear_heads]


def encoder_config(tokenizer_dir: Path, state: dict[str, torch.Tensor], prefix: str) -> Any:
    """The encoder's ``BertConfig``: the tokenizer folder's ``config.json`` if it is a BERT config, else
    sizes read from the weights.

    ``BertConfig()``'s defaults are bert-base-uncased's; reading the sizes from the tensors lets a folder
    with only ``vocab.txt`` work, and a mismatching ``config.json`` is caught by the strict load.
    """
    from transformers import BertConfig

    path = tokenizer_dir / "config.json"
    if path.is_file():
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            values = None
        if isinstance(values, dict) and "hidden_size" in values:  # not, e.g., a RadGraph archive's AllenNLP config
            return BertConfig.from_json_file(str(path))
    return bert_config_from_state(state, prefix=prefix)


def bert_config_from_state(state: dict[str, torch.Tensor], prefix: str) -> Any:
    """A ``BertConfig`` whose sizes match a BERT state dict (heads of 64 dimensions, as in every BERT)."""
    from transformers import BertConfig

    words = state[f"{prefix}embeddings.word_embeddings.weight"]
    layers = {int(m.group(1)) for key in state if (m := re.match(re.escape(prefix) + r"encoder\.layer\.(\d+)\.", key))}
    hidden = words.shape[1]
    return BertConfig(
        vocab_size=words.shape[0],
        hidden_size=hidden,
        num_hidden_layers=max(layers) + 1 if layers else 0,
        num_attention_heads=max(hidden // 64, 1),
        intermediate_size=state[f"{prefix}encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=state[f"{prefix}embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state[f"{prefix}embeddings.token_type_embeddings.weight"].shape[0],
    )


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The labeller's state dict from ``chexbert.pth`` (``module.`` prefixes of DataParallel removed).

    Raises:
        MetricUnavailable: Not a CheXbert checkpoint.
    """
    try:
        # weights_only: a checkpoint is data, never code to run.
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise MetricUnavailable(f"CheXbert-F1 skipped: cannot read {path} as a torch checkpoint ({type(error).__name__})") from None
    state = raw.get("model_state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not any(str(k).endswith("linear_heads.13.weight") for k in state):
        raise MetricUnavailable(f"CheXbert-F1 skipped: {path} is not the CheXbert checkpoint (no model_state_dict with 14 linear heads)")
    return {re.sub(r"^module\.", "", key): value for key, value in state.items()}


class CheXbert:
    """Labels reports with the 14 CheXpert observations, from a local checkpoint and tokenizer.

    Args:
        weights: Path to ``chexbert.pth``.
        tokenizer_dir: Folder with bert-base-uncased's ``vocab.txt`` (``tokenizer_config.json`` and
            ``config.json`` optional).
        device: Torch device (default: CUDA when available).
        batch_size: Reports per forward pass.

    Raises:
        MetricUnavailable: Unreadable or mismatching checkpoint, or no vocabulary.
    """

    def __init__(self, weights: Path, tokenizer_dir: Path, device: str | None = None, batch_size: int = 32) -> None:
        from transformers import BertTokenizerFast

        state = read_checkpoint(weights)
        # Buffers, not parameters: older transformers saved position_ids in the state dict, newer don't.
        state = {k: v for k, v in state.items() if not k.endswith(("embeddings.position_ids", "embeddings.token_type_ids"))}
        try:
            self.tokenizer = BertTokenizerFast.from_pretrained(str(tokenizer_dir))
        except (OSError, ValueError, TypeError) as error:
            raise MetricUnavailable(f"CheXbert-F1 skipped: no BERT tokenizer in {tokenizer_dir} ({type(error).__name__}); it needs bert-base-uncased's vocab.txt") from None
        model = CheXbertLabeler(encoder_config(tokenizer_dir, state, prefix="bert."))
        own = {k for k in model.state_dict() if not k.endswith(("embeddings.position_ids", "embeddings.token_type_ids"))}
        missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
        if missing or unexpected:
            raise MetricUnavailable(
                f"CheXbert-F1 skipped: {weights} does not fit the CheXbert network "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        try:
            model.load_state_dict(state, strict=False)  # strictness checked above, minus the buffers
        except RuntimeError as error:
            raise MetricUnavailable(f"CheXbert-F1 skipped: {weights} does not fit the CheXbert network ({str(error).splitlines()[0]})") from None
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        # 512 for the published model; a smaller position table (a test model) caps it too.
        self.max_tokens = min(MAX_TOKENS, model.bert.config.max_position_embeddings)

    @staticmethod
    def clean(report: str) -> str:
        """Whitespace-normalised text, as CheXbert's own pre-processing does before tokenising."""
        return re.sub(r"\s+", " ", report.replace("\n", " ")).strip()

    @torch.no_grad()
    def classes(self, reports: Sequence[str]) -> list[list[int]]:
        """The predicted class of each of the 14 heads for each report (0 blank, 1 pos, 2 neg, 3 uncertain).

        An empty report is encoded as ``[CLS] [SEP]``, as in CheXbert's labeller.
        """
        out: list[list[int]] = []
        texts = [self.clean(r) for r in reports]
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start:start + self.batch_size]
            encoded = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
            logits = self.model(encoded["input_ids"].to(self.device), encoded["attention_mask"].to(self.device))
            out.extend(torch.stack([head.argmax(dim=1) for head in logits], dim=1).tolist())
        return out

    def labels(self, reports: Sequence[str]) -> list[list[int]]:
        """Binary label vectors (1 = positive or uncertain mention) over the 14 observations."""
        return [[1 if c in POSITIVE_CLASSES else 0 for c in row] for row in self.classes(reports)]

