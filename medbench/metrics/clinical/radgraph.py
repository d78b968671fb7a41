"""RadGraph entity and relation extraction (Jain et al., NeurIPS 2021), inference only, offline.

The RadGraph checkpoints (``radgraph.tar.gz``, ``radgraph-xl.tar.gz``) are AllenNLP archives of a DyGIE++
model: ``config.json`` (the AllenNLP config), ``vocabulary/`` (label files) and ``weights.th`` (a state
dict). The ``radgraph`` package runs them through a vendored copy of AllenNLP that fetches the encoder
from the Hugging Face hub and no longer works with transformers 5. This module re-implements the
inference path of that model on plain torch + ``transformers.BertModel``, reading the archive's three
files from a local folder and the encoder's WordPiece vocabulary from another:

1. pre-tokenise the report into words (the RadGraph rules for ``radgraph``, NLTK's word/punctuation split
   for ``radgraph-xl``), split each word into word pieces, encode with BERT (in 512-piece segments for
   long reports) and average each word's pieces;
2. enumerate every span of up to ``max_span_width`` words and represent it as [first word; last word;
   width embedding];
3. NER: a feed-forward scorer per span with a fixed 0 score for "no entity"; the argmax labels entities;
4. relations: a feed-forward mention scorer keeps the top ``ceil(words × spans_per_word)`` spans; every
   ordered pair of kept spans is scored from [a; b; a⊙b] plus both mention scores, again against a fixed
   0 for "no relation";
5. the output is the annotation format of the RadGraph tools (entities with tokens, label and relations
   to other entities).

Every step follows the DyGIE++ code the checkpoints were trained with (span order, top-k pruning and its
tie handling, label offsets), so that the annotations — and the F1 computed from them — are those of the
reference tooling; a test compares both on random-weight models. Coreference and event modules, present
in the archive but switched off in RadGraph's configs, are not built.

Imported only when RadGraph-F1 is computed (it imports torch and transformers).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medbench.metrics.clinical import encoder_name
from medbench.metrics.clinical.chexbert import encoder_config
from medbench.metrics.text import MetricUnavailable

BERT_PREFIX = "_embedder.token_embedder_bert._matched_embedder.transformer_model."

# RadGraph's own pre-tokenisation for the original model: a space around / , : . ! ? ( ) unless one is there.
_RADGRAPH_SPLIT = re.compile(r"(?<! )(?=[/,-,:,.,!?()])|(?<=[/,-,:,.,!?()])(?! )")
# NLTK's WordPunctTokenizer (radgraph-xl pre-tokenisation), without the NLTK dependency.
_WORDPUNCT = re.compile(r"\w+|[^\w\s]+")


def pretokenize(report: str, dataset: str) -> list[str]:
    """Split a report into the words the model was trained on.

    Args:
        report: Free text.
        dataset: The archive's data set name (``radgraph`` selects the original model's rules; any other
            name, e.g. ``radgraph-xl``, the XL rules — as the ``radgraph`` package does).
    """
    if dataset == "radgraph":
        return _RADGRAPH_SPLIT.sub(" ", report).split()
    text = report.replace("\\n", "  ").replace("\\f", "  ").replace("\\u2122", "      ")
    text = text.replace("\n", " ").replace('\\"', "``")
    text = " ".join(_WORDPUNCT.findall(re.sub(r"\s+", " ", text)))
    for before, after in ((").", ") ."), ("%.", "% ."), (".'", ". '"), ("%,", "% ,"), ("%)", "% )")):
        text = text.replace(before, after)
    return text.split()


def _normalize_word(word: str) -> str:
    # DyGIE++'s reader feeds "/." and "/?" to the encoder as "." and "?" (the annotation keeps the original).
    return word[1:] if word in ("/.", "/?") else word


class FeedForward(nn.Module):
    """Linear + ReLU layers (AllenNLP ``FeedForward`` with ReLU; its dropout is inactive at inference)."""

    def __init__(self, input_dim: int, num_layers: int, hidden_dims: int | Sequence[int]) -> None:
        super().__init__()
        dims = [hidden_dims] * num_layers if isinstance(hidden_dims, int) else list(hidden_dims)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip([input_dim] + dims[:-1], dims, strict=True))
        self.output_dim = dims[-1] if dims else input_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


class Scorer(nn.Module):
    """FeedForward followed by a linear output layer."""

    def __init__(self, input_dim: int, outputs: int, ff: dict[str, Any]) -> None:
        super().__init__()
        self.ff = FeedForward(input_dim, ff["num_layers"], ff["hidden_dims"])
        self.out = nn.Linear(self.ff.output_dim, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.ff(x))


def _read_labels(path: Path) -> list[str]:
    # AllenNLP vocabulary file: one label per line, line number = index (label namespaces are unpadded),
    # a trailing empty line ignored; the NER file's first line is the empty "no entity" label.
    lines = re.split(r"\n|\r\n", path.read_text(encoding="utf-8"))
    if lines and lines[-1] == "":
        lines = lines[:-1]
    return [line.replace("@@NEWLINE@@", "\n") for line in lines]


class RadGraphModel(nn.Module):
    """The DyGIE++ inference path for one data set's NER and relation heads.

    Args:
        config: The archive's AllenNLP config (``config.json``).
        dataset: Data set name of the heads to use (``radgraph``, ``radgraph-xl``).
        ner_labels: NER label vocabulary, index 0 = no entity.
        relation_labels: Relation label vocabulary.
        bert_config: ``transformers.BertConfig`` of the encoder.
    """

    def __init__(self, config: dict[str, Any], dataset: str, ner_labels: list[str], relation_labels: list[str], bert_config: Any) -> None:
        super().__init__()
        from transformers import BertModel

        model = config["model"]
        self.dataset = dataset
        self.ner_labels = ner_labels
        self.relation_labels = relation_labels
        self.max_span_width = int(config["dataset_reader"]["max_span_width"])
        self.max_length = model["embedder"]["token_embedders"]["bert"].get("max_length")
        self.spans_per_word = float(model["modules"]["relation"]["spans_per_word"])
        ff = model["feedforward_params"]
        self.encoder = BertModel(bert_config, add_pooling_layer=True)
        hidden = bert_config.hidden_size
        self.width_embedding = nn.Embedding(int(model["max_span_width"]), int(model["feature_size"]))
        span_dim = 2 * hidden + int(model["feature_size"])
        self.ner = Scorer(span_dim, len(ner_labels) - 1, ff)  # no output for "no entity": fixed score 0
        self.mention = Scorer(span_dim, 1, ff)
        self.relation = Scorer(3 * span_dim, len(relation_labels), ff)

    @staticmethod
    def key_map(dataset: str, ff_layers: int) -> dict[str, str]:
        """Our parameter prefixes -> the archive's (DyGIE++ module paths)."""
        mapping = {"encoder.": BERT_PREFIX, "width_embedding.": "_endpoint_span_extractor._span_width_embedding."}
        heads = {
            "ner": (f"_ner._ner_scorers.{dataset}__ner_labels.0._module.", f"_ner._ner_scorers.{dataset}__ner_labels.1._module."),
            "mention": (f"_relation._mention_pruners.{dataset}__relation_labels._scorer.0._module.",
                        f"_relation._mention_pruners.{dataset}__relation_labels._scorer.1._module."),
            "relation": (f"_relation._relation_feedforwards.{dataset}__relation_labels.",
                         f"_relation._relation_scorers.{dataset}__relation_labels."),
        }
        for name, (ff_prefix, out_prefix) in heads.items():
            for i in range(ff_layers):
                mapping[f"{name}.ff.layers.{i}."] = f"{ff_prefix}_linear_layers.{i}."
            mapping[f"{name}.out."] = out_prefix
        return mapping

    # ----------------------------------------------------------------------------------- encoding

    def _word_embeddings(self, words: list[str], tokenizer: Any) -> torch.Tensor:
        """One vector per word: the mean of its word pieces' last-layer BERT states (0 if it has none)."""
        device = self.width_embedding.weight.device
        pieces: list[int] = []
        offsets: list[tuple[int, int] | None] = []
        for word in words:
            ids = tokenizer(word, add_special_tokens=False)["input_ids"]
            offsets.append((len(pieces), len(pieces) + len(ids) - 1) if ids else None)
            pieces.extend(ids)
        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        # AllenNLP's long-sequence handling: segments of max_length - 2 pieces, each wrapped in
        # [CLS] ... [SEP], encoded separately (the last one padded and masked), then concatenated.
        step = (self.max_length - 2) if self.max_length and len(pieces) + 2 > self.max_length else max(len(pieces), 1)
        segments = [pieces[i:i + step] for i in range(0, len(pieces), step)] or [[]]
        width = max(len(s) for s in segments) + 2
        ids = torch.zeros(len(segments), width, dtype=torch.long)
        mask = torch.zeros(len(segments), width, dtype=torch.long)
        for row, segment in enumerate(segments):
            ids[row, : len(segment) + 2] = torch.tensor([cls, *segment, sep])
            mask[row, : len(segment) + 2] = 1
        if len(segments) > 1:
            # AllenNLP pads every folded segment to max_length; padding is masked, so only the shape differs.
            ids = nn.functional.pad(ids, (0, self.max_length - width))
            mask = nn.functional.pad(mask, (0, self.max_length - width))
        states = self.encoder(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        flat = torch.cat([states[row, 1: len(segment) + 1] for row, segment in enumerate(segments)], dim=0)
        out = torch.zeros(len(words), states.shape[-1], device=device)
        for index, offset in enumerate(offsets):
            if offset is not None:  # sum / count, the order of operations of AllenNLP's span averaging
                out[index] = flat[offset[0]: offset[1] + 1].sum(dim=0) / (offset[1] - offset[0] + 1)
        return out

    def spans(self, n_words: int) -> list[tuple[int, int]]:
        """All (start, end) word spans, ends inclusive, up to max_span_width words, by start then end."""
        return [(s, e) for s in range(n_words) for e in range(s, min(s + self.max_span_width, n_words))]

    # --------------------------------------------------------------------------------- prediction

    @torch.no_grad()
    def annotate(self, words: list[str], tokenizer: Any) -> dict[str, Any]:
        """The RadGraph annotation of one pre-tokenised report (as ``radgraph.RadGraph`` returns it)."""
        device = self.width_embedding.weight.device
        embeddings = self._word_embeddings([_normalize_word(w) for w in words], tokenizer)
        spans = self.spans(len(words))
        starts = torch.tensor([s for s, _ in spans], device=device)
        ends = torch.tensor([e for _, e in spans], device=device)
        span_emb = torch.cat([embeddings[starts], embeddings[ends], self.width_embedding(ends - starts)], dim=-1)

        # NER: prepend the fixed 0 score of the null label; argmax over [null, labels...].
        ner_scores = self.ner(span_emb)
        ner_scores = torch.cat([ner_scores.new_zeros(ner_scores.shape[0], 1), ner_scores], dim=-1).cpu()
        _, ner_pred = ner_scores.max(dim=1)
        entities = [(spans[i], self.ner_labels[int(ner_pred[i])]) for i in range(len(spans)) if int(ner_pred[i]) != 0]

        # Relations: keep the top-k spans by mention score, restored to span order.
        keep = math.ceil(len(words) * self.spans_per_word)
        mention = self.mention(span_emb).unsqueeze(0)  # (1, spans, 1), the shape DyGIE++ ranks
        # DyGIE++ keeps at least one span; more spans than exist would make it fail, here they are all kept.
        _, top = mention.topk(min(max(keep, 1), len(spans)), 1)
        top, _ = torch.sort(top.squeeze(-1), 1)
        top = top[0]
        top_emb, top_mention = span_emb[top], mention[0, top]  # (k, d), (k, 1)
        k = top.shape[0]
        pair = torch.cat([top_emb.unsqueeze(1).expand(k, k, -1), top_emb.unsqueeze(0).expand(k, k, -1),
                          top_emb.unsqueeze(1) * top_emb.unsqueeze(0)], dim=-1)
        # Scored on the flattened pairs and summed in DyGIE++'s order (s + (m_i + m_j)): same floats.
        rel_scores = self.relation(pair.reshape(k * k, -1)).reshape(k, k, -1)
        rel_scores = rel_scores + (top_mention.unsqueeze(1) + top_mention.unsqueeze(0))
        rel_scores = torch.cat([rel_scores.new_zeros(k, k, 1), rel_scores], dim=-1).cpu()
        _, rel_pred = rel_scores.max(dim=-1)
        rel_pred -= 1  # -1 = no relation
        # DyGIE++ masks the *second* span of a pair beyond the kept count (a no-op when k == keep).
        column_kept = torch.arange(k) < keep
        top_spans = [spans[int(i)] for i in top]
        relations = [(top_spans[int(i)], top_spans[int(j)], self.relation_labels[int(rel_pred[i, j])])
                     for i, j in ((rel_pred >= 0) & column_kept).nonzero(as_tuple=False)]
        return build_annotation(words, entities, relations)


def build_annotation(words: list[str], entities: list[tuple[tuple[int, int], str]],
                     relations: list[tuple[tuple[int, int], tuple[int, int], str]]) -> dict[str, Any]:
    """The RadGraph annotation dict from predicted entity spans and relations (RadGraph tools' layout).

    Entities get ids "1", "2"... in prediction order; a relation is listed under its first span's entity
    and kept only if its second span is an entity too.
    """
    index = {span: str(i + 1) for i, (span, _) in reversed(list(enumerate(entities)))}  # first occurrence
    out: dict[str, Any] = {}
    for i, ((start, end), label) in enumerate(entities):
        rels = [[rel_label, index[target]] for source, target, rel_label in relations if source == (start, end) and target in index]
        out[str(i + 1)] = {"tokens": " ".join(words[start:end + 1]), "label": label, "start_ix": start, "end_ix": end, "relations": rels}
    return {"text": " ".join(words), "entities": out}


class RadGraph:
    """Annotates reports with a local RadGraph checkpoint.

    Args:
        model_dir: Extracted archive (``config.json``, ``vocabulary/``, ``weights.th``).
        tokenizer_dir: Folder with the encoder's ``vocab.txt`` (``config.json`` optional).
        device: Torch device (default: CUDA when available).

    Raises:
        MetricUnavailable: Missing files, an unsupported configuration, or weights that do not fit.
    """

    def __init__(self, model_dir: Path, tokenizer_dir: Path, device: str | None = None) -> None:
        from transformers import BertTokenizerFast

        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        self.dataset = archive_dataset(model_dir)
        _check_supported(config, model_dir)
        vocab = model_dir / "vocabulary"
        ner_labels = _read_labels(vocab / f"{self.dataset}__ner_labels.txt")
        relation_labels = _read_labels(vocab / f"{self.dataset}__relation_labels.txt")
        if not ner_labels or ner_labels[0] != "":
            raise MetricUnavailable(f"RadGraph-F1 skipped: {vocab} has no empty 'no entity' label at index 0")
        try:
            state = torch.load(str(model_dir / "weights.th"), map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unreadable file gets the same one-line answer
            raise MetricUnavailable(f"RadGraph-F1 skipped: cannot read {model_dir / 'weights.th'} ({type(error).__name__})") from None
        try:
            self.tokenizer = BertTokenizerFast.from_pretrained(str(tokenizer_dir))
        except (OSError, ValueError, TypeError) as error:
            raise MetricUnavailable(
                f"RadGraph-F1 skipped: no tokenizer in {tokenizer_dir} ({type(error).__name__}); it needs the vocab.txt of {encoder_name(model_dir)}"
            ) from None
        bert_config = encoder_config(tokenizer_dir, state, prefix=BERT_PREFIX)
        model = RadGraphModel(config, self.dataset, ner_labels, relation_labels, bert_config)
        mapping = RadGraphModel.key_map(self.dataset, len(model.ner.ff.layers))
        ours = {}
        for key in model.state_dict():
            prefix = next(p for p in mapping if key.startswith(p))
            ours[key] = mapping[prefix] + key[len(prefix):]
        buffers = ("embeddings.position_ids", "embeddings.token_type_ids")
        missing = sorted(theirs for key, theirs in ours.items() if theirs not in state and not key.endswith(buffers))
        if missing:
            raise MetricUnavailable(f"RadGraph-F1 skipped: {model_dir / 'weights.th'} does not fit its config.json (missing {missing[:3]})")
        try:
            model.load_state_dict({key: state[theirs] for key, theirs in ours.items() if theirs in state}, strict=False)
        except RuntimeError as error:
            raise MetricUnavailable(f"RadGraph-F1 skipped: {model_dir / 'weights.th'} does not fit ({str(error).splitlines()[0]})") from None
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()

    def annotate(self, report: str) -> dict[str, Any] | None:
        """The annotation of one report; ``None`` for a report without words."""
        words = pretokenize(report, self.dataset)
        if not words:
            return None
        return self.model.annotate(words, self.tokenizer)


def archive_dataset(model_dir: Path) -> str:
    """The data set name of the archive's NER heads (``radgraph``, ``radgraph-xl``).

    Raises:
        MetricUnavailable: No NER label file, or several (an archive trained on several data sets).
    """
    names = sorted(p.name[: -len("__ner_labels.txt")] for p in (model_dir / "vocabulary").glob("*__ner_labels.txt"))
    if len(names) != 1:
        raise MetricUnavailable(f"RadGraph-F1 skipped: expected one '*__ner_labels.txt' in {model_dir / 'vocabulary'}, found {names}")
    return names[0]


def _check_supported(config: dict[str, Any], model_dir: Path) -> None:
    """Refuse archives whose inference path differs from the one implemented here."""
    try:
        model = config["model"]
        bert = model["embedder"]["token_embedders"]["bert"]
        problems = []
        if bert.get("type") not in (None, "pretrained_transformer_mismatched"):
            problems.append(f"embedder type {bert.get('type')!r}")
        if bert.get("last_layer_only", True) is not True or bert.get("sub_module"):
            problems.append("a scalar mix / sub-module encoder")
        if float(model["modules"].get("coref", {}).get("coref_prop", 0) or 0) > 0:
            problems.append("coreference propagation")
        weights = model["loss_weights"]
        if not (weights.get("ner", 0) > 0 and weights.get("relation", 0) > 0):
            problems.append("NER or relation heads switched off")
        if model["modules"].get("relation", {}).get("spans_per_word") is None:
            problems.append("no relation spans_per_word")
    except (KeyError, TypeError, AttributeError) as error:
        raise MetricUnavailable(f"RadGraph-F1 skipped: {model_dir / 'config.json'} is not a DyGIE++ config (no {error})") from None
    if problems:
        raise MetricUnavailable(f"RadGraph-F1 skipped: unsupported checkpoint {model_dir} ({', '.join(problems)})")
