"""Test double: tiny random-weight CheXbert and RadGraph checkpoints in the published file formats.

The real checkpoints cannot be fetched on air-gapped machines (and the test suite runs offline), so the
tests build small stand-ins: the same networks at a toy size, saved exactly as the real files are laid out —

* CheXbert: ``chexbert.pth`` = ``torch.save({"model_state_dict": {"module.<param>": tensor}})`` (the
  DataParallel prefix included) next to a WordPiece ``vocab.txt``;
* RadGraph: an extracted AllenNLP archive — ``config.json`` (DyGIE++ config), ``vocabulary/`` (label files)
  and ``weights.th`` (state dict under DyGIE++'s module names) — plus ``vocab.txt``.

Their labels are meaningless; they exercise the loading, inference and scoring code.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

# Special tokens, single characters and their continuation pieces (so every word splits into word pieces
# and the word-piece averaging is exercised), and a few whole words from chest X-ray reports.
_WORDS = ["no", "pleural", "effusion", "pneumothorax", "cardiomegaly", "heart", "size", "normal", "lungs", "are", "clear", "there", "is", "a", "the", "of", "and", "left", "right", "lower", "lobe", "opacity", "consolidation", "edema", "mild", "moderate", "small", "large", "tube", "in", "stable"]
VOCAB = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + list(string.ascii_lowercase) + list(string.digits) + list(".,:;/()-?!%'\"")
    + [f"##{c}" for c in string.ascii_lowercase + string.digits]
    + _WORDS
)

RADGRAPH_NER_LABELS = ("ANAT-DP", "OBS-DP", "OBS-U", "OBS-DA")  # RadGraph's entity types
RADGRAPH_RELATION_LABELS = ("modify", "located_at", "suggestive_of")  # and relation types


_CALIBRATION_REPORTS = (
    "No pleural effusion. Heart size is normal.", "Moderate cardiomegaly with mild edema.",
    "Left lower lobe opacity, possibly consolidation.", "The lungs are clear.", "Small right pneumothorax.",
    "Stable tube in the left lower lobe.", "There is a large left pleural effusion and edema.",
)


def _tiny_bert_config(**overrides):
    from transformers import BertConfig

    # 64-dimensional attention heads, as in every BERT: the loaders infer the head count from the sizes.
    settings = {"vocab_size": len(VOCAB), "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 1,
                    "intermediate_size": 64, "max_position_embeddings": 128, "type_vocab_size": 2}
    settings.update(overrides)
    return BertConfig(**settings)


def write_vocab(folder: Path) -> Path:
    """Write the tiny WordPiece ``vocab.txt`` (lower-casing BERT tokenizer) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return folder


def build_tiny_chexbert(folder: Path, seed: int = 0, max_positions: int = 128) -> Path:
    """Save a random CheXbert labeller as ``folder/chexbert.pth`` with ``vocab.txt`` beside it.

    Args:
        folder: Output folder.
        seed: Random seed.
        max_positions: Size of the position table (512 in the published model).

    Returns:
        The checkpoint path.
    """
    import torch

    from medbench.metrics.clinical.chexbert import CheXbertLabeler

    torch.manual_seed(seed)
    model = CheXbertLabeler(_tiny_bert_config(max_position_embeddings=max_positions)).eval()
    write_vocab(folder)
    with torch.no_grad():
        # A random encoder gives nearly the same [CLS] vector for every text, so random heads would label
        # every report alike. Standardise the heads on a few reports: each class logit then varies from one
        # report to the next and the labels differ between texts.
        from transformers import BertTokenizerFast

        encoded = BertTokenizerFast.from_pretrained(str(folder))(list(_CALIBRATION_REPORTS), padding=True, return_tensors="pt")
        cls = model.bert(**encoded).last_hidden_state[:, 0]
        centre, spread = cls.mean(dim=0), cls.std(dim=0) + 1e-6
        for head in model.linear_heads:
            weight = torch.randn_like(head.weight) / (spread * cls.shape[1] ** 0.5)
            head.weight.copy_(weight)
            head.bias.copy_(-weight @ centre)
    # The published file: a DataParallel state dict (keys "module.bert...") under "model_state_dict",
    # with the position_ids buffer older transformers versions saved.
    state = {f"module.{key}": value for key, value in model.state_dict().items()}
    state["module.bert.embeddings.position_ids"] = torch.arange(max_positions).unsqueeze(0)
    path = folder / "chexbert.pth"
    torch.save({"model_state_dict": state, "epoch": 0}, path)
    return path


def radgraph_config(encoder: str, dataset: str = "radgraph", max_length: int = 512, max_span_width: int = 8,
                    feature_size: int = 20, hidden_dims: int = 150, spans_per_word: float = 0.5) -> dict:
    """A DyGIE++ AllenNLP config with RadGraph's settings (sizes can be shrunk)."""
    bert = {"type": "pretrained_transformer_mismatched", "model_name": encoder, "max_length": max_length}
    return {
        "dataset_reader": {"type": "dygie", "max_span_width": max_span_width, "token_indexers": {"bert": bert}},
        "model": {
            "type": "dygie",
            "embedder": {"token_embedders": {"bert": dict(bert)}},
            "feature_size": feature_size,
            "max_span_width": max_span_width,
            "target_task": "relation",
            "feedforward_params": {"num_layers": 2, "hidden_dims": hidden_dims, "dropout": 0.4},
            "initializer": {"regexes": []},
            "module_initializer": {"regexes": []},
            "loss_weights": {"ner": 0.2, "relation": 1.0, "coref": 0.0, "events": 0.0},
            "modules": {
                "coref": {"spans_per_word": 0.3, "max_antecedents": 100, "coref_prop": 0},
                "ner": {},
                "relation": {"spans_per_word": spans_per_word},
                "events": {"trigger_spans_per_word": 0.3, "argument_spans_per_word": 0.8,
                           "loss_weights": {"trigger": 1.0, "arguments": 1.0}},
            },
        },
    }


def write_radgraph_vocabulary(folder: Path, dataset: str = "radgraph") -> None:
    """The archive's ``vocabulary/`` folder: AllenNLP label files (NER index 0 = the empty label)."""
    vocab = folder / "vocabulary"
    vocab.mkdir(parents=True, exist_ok=True)
    (vocab / "non_padded_namespaces.txt").write_text("*tags\n*labels\n", encoding="utf-8")
    (vocab / f"{dataset}__ner_labels.txt").write_text("\n" + "\n".join(RADGRAPH_NER_LABELS) + "\n", encoding="utf-8")
    (vocab / f"{dataset}__relation_labels.txt").write_text("\n".join(RADGRAPH_RELATION_LABELS) + "\n", encoding="utf-8")


_CALIBRATION = "Moderate cardiomegaly with mild edema. Left lower lobe opacity, possibly consolidation. No pneumothorax."


def build_tiny_radgraph(folder: Path, dataset: str = "radgraph", seed: int = 0, max_length: int = 512,
                        encoder: str = "tiny-bert", entity_share: float = 0.3, relation_share: float = 0.1) -> Path:
    """Save a random RadGraph (DyGIE++) checkpoint as an extracted archive in ``folder``, ``vocab.txt`` in it.

    Args:
        folder: Output folder (``config.json``, ``vocabulary/``, ``weights.th``, ``vocab.txt``).
        dataset: Data set name of the heads (``radgraph`` or ``radgraph-xl``: selects the pre-tokeniser).
        seed: Random seed.
        max_length: Encoder segment length (small values exercise long-report folding).
        encoder: Encoder name written into the config.
        entity_share: Share of a calibration report's spans the random model labels as entities (its output
            biases are set for that), so that it predicts some entities rather than none or all.
        relation_share: Likewise for the pairs of kept spans that get a relation.

    Returns:
        ``folder``.
    """
    import torch

    from medbench.metrics.clinical.radgraph import RadGraphModel, pretokenize

    torch.manual_seed(seed)
    config = radgraph_config(encoder, dataset, max_length=max_length, max_span_width=4, feature_size=8, hidden_dims=16)
    model = RadGraphModel(config, dataset, [""] + list(RADGRAPH_NER_LABELS), list(RADGRAPH_RELATION_LABELS),
                          _tiny_bert_config(max_position_embeddings=max(max_length, 16))).eval()
    folder.mkdir(parents=True, exist_ok=True)
    write_vocab(folder)
    with torch.no_grad():
        # Default initialisation makes every span look alike; wider weights make the scores differ.
        for scorer in (model.ner, model.mention, model.relation):
            for layer in [*scorer.ff.layers, scorer.out]:
                torch.nn.init.normal_(layer.weight, std=2.0 / layer.in_features ** 0.5)
                torch.nn.init.zeros_(layer.bias)
        from transformers import BertTokenizerFast

        words = pretokenize(_CALIBRATION, dataset)
        embeddings = model._word_embeddings(words, BertTokenizerFast.from_pretrained(str(folder)))
        spans = model.spans(len(words))
        starts, ends = torch.tensor([s for s, _ in spans]), torch.tensor([e for _, e in spans])
        span_emb = torch.cat([embeddings[starts], embeddings[ends], model.width_embedding(ends - starts)], dim=-1)
        best = model.ner(span_emb).max(dim=-1).values
        model.ner.out.bias -= torch.quantile(best, 1 - entity_share)
        pair = torch.cat([span_emb[:, None].expand(-1, len(spans), -1), span_emb[None].expand(len(spans), -1, -1),
                          span_emb[:, None] * span_emb[None]], dim=-1)
        mention = model.mention(span_emb)
        scores = (model.relation(pair) + mention[:, None] + mention[None]).max(dim=-1).values
        model.relation.out.bias -= torch.quantile(scores.flatten(), 1 - relation_share)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    write_radgraph_vocabulary(folder, dataset)
    mapping = RadGraphModel.key_map(dataset, len(model.ner.ff.layers))
    state = {}
    for key, value in model.state_dict().items():
        prefix = next(p for p in mapping if key.startswith(p))
        state[mapping[prefix] + key[len(prefix):]] = value
    torch.save(state, folder / "weights.th")
    return folder
