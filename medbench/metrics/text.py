"""Reference-based text metrics for the long-form (report / description) tasks.

Every metric compares one generated text with one reference. Which implementation backs each, and why:

================  ==========  ============================================  ====================================
metric            level       implementation                                notes
================  ==========  ============================================  ====================================
``bleu1..bleu4``  corpus      ``pycocoevalcap`` BLEU (coco-caption)          the radiology-report-generation
                                                                            convention (R2Gen and successors);
                                                                            n-gram counts pooled over the corpus
``cider``         corpus      ``pycocoevalcap`` CIDEr (IDF from the refs)    scale 0-10, not 0-1
``meteor``        corpus      ``pycocoevalcap`` METEOR 1.5 (Java)           needs ``java``; skipped otherwise
``rouge_l``       sentence    Google ``rouge-score`` (Porter stemming)      averaged over samples
``bertscore_f1``  sentence    ``bert-score`` with a *local* model           averaged; no baseline rescaling
``bleu4_sentence``sentence    ``sacrebleu`` (13a, lower-cased, exp smooth)  averaged; kept for per-sample logs
================  ==========  ============================================  ====================================

All are higher-is-better. The coco-caption metrics get texts lower-cased and split into word tokens by
:func:`tokenize` (coco's own PTB tokenizer needs Java and Stanford CoreNLP; splitting on non-word characters
is what R2Gen-style pipelines do). ``evaluate`` is not used: ``evaluate.load`` fetches metric scripts from
the Hugging Face hub at run time, which breaks offline runs; the packages above are what its scripts wrap.

Nothing is loaded at import. METEOR starts one Java process on first use and keeps it; BERTScore loads its
model on first use from a local directory (see :class:`BertScoreSettings`).
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from medbench.errors import MedbenchError

_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)?")

ENV_BERTSCORE_MODEL = "MEDBENCH_BERTSCORE_MODEL"
ENV_BERTSCORE_LAYERS = "MEDBENCH_BERTSCORE_LAYERS"
ENV_BERTSCORE_BATCH = "MEDBENCH_BERTSCORE_BATCH_SIZE"
ENV_BERTSCORE_DEVICE = "MEDBENCH_BERTSCORE_DEVICE"
DEFAULT_BERTSCORE_MODEL = "roberta-large"
DEFAULT_BERTSCORE_LAYERS = 17  # bert-score's own default layer for roberta-large (its English default)


class MetricUnavailable(MedbenchError):
    """A metric cannot run here (missing Java, model or weights); the message says what to install or set."""


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens (letters/digits, inner apostrophes kept); punctuation dropped."""
    return _TOKEN.findall(text.lower())


@lru_cache(maxsize=1)
def _bleu4():
    from sacrebleu.metrics import BLEU

    return BLEU(max_ngram_order=4, lowercase=True, smooth_method="exp", effective_order=True)


@lru_cache(maxsize=1)
def _stem():
    from nltk.stem import porter

    stemmer = porter.PorterStemmer()  # rouge-score's stemmer (use_stemmer=True)

    # Porter stemming is most of ROUGE-L's cost and reports reuse a small vocabulary: remember each stem.
    @lru_cache(maxsize=65536)
    def stem(word: str) -> str:
        return stemmer.stem(word)

    return stem


# rouge-score's tokens: lower-case, runs of [a-z0-9], words over 3 characters Porter-stemmed.
_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")
_ROUGE_VALID = re.compile(r"^[a-z0-9]+$")
# A ROUGE-L text is scored on its first ROUGE_MAX_TOKENS tokens: far above a report's length (and the
# tasks' 512 generated tokens), and it bounds the work any text can cause, in evaluation and on the board.
ROUGE_MAX_TOKENS = 4096


def rouge_tokens(text: str, limit: int = ROUGE_MAX_TOKENS) -> list[str]:
    """rouge-score's tokenisation of ``text`` (with stemming), stopped after ``limit`` tokens."""
    stem = _stem()
    tokens: list[str] = []
    for match in _ROUGE_TOKEN.finditer(text.lower()):
        word = match.group()
        if len(word) > 3:
            word = stem(word)
            if not _ROUGE_VALID.match(word):
                continue
        tokens.append(word)
        if len(tokens) >= limit:
            break
    return tokens


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences.

    Bit-parallel (Allison-Dix / Hyyro): the shorter sequence is a bit vector, one big-integer step per token
    of the longer one, so memory is O(min(n, m)) bits and time O(n * m / word size) -- 12k tokens a side
    take milliseconds, where rouge-score's n x m table takes seconds and gigabytes.
    """
    if len(a) > len(b):
        a, b = b, a
    if not a:
        return 0
    masks: dict[str, int] = {}
    for position, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << position)
    full = (1 << len(a)) - 1
    row = full
    for token in b:
        match = masks.get(token)
        if match:
            common = row & match
            row = ((row + common) | (row - common)) & full
    return len(a) - row.bit_count()


def _rouge_l_tokens(prediction: list[str], reference: list[str]) -> float:
    if not prediction or not reference:
        return 0.0
    lcs = lcs_length(reference, prediction)
    precision, recall = lcs / len(prediction), lcs / len(reference)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def sentence_bleu4(prediction: str, reference: str) -> float:
    """Sentence-level BLEU-4 of ``prediction`` against one ``reference``, in [0, 1] (sacrebleu, smoothed)."""
    if not prediction.strip() or not reference.strip():
        return 0.0
    return _bleu4().sentence_score(prediction, [reference]).score / 100.0


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure of ``prediction`` against ``reference``, in [0, 1].

    rouge-score's value (``RougeScorer(["rougeL"], use_stemmer=True)``) for texts of up to
    :data:`ROUGE_MAX_TOKENS` tokens; longer texts are scored on their first :data:`ROUGE_MAX_TOKENS` tokens.
    """
    if not prediction.strip() or not reference.strip():
        return 0.0
    return _rouge_l_tokens(rouge_tokens(prediction), rouge_tokens(reference))


def _coco_inputs(predictions: Sequence[str], references: Sequence[str]) -> tuple[dict, dict]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    # coco scorers choke on empty hypotheses; a lone placeholder token matches nothing in any reference.
    hyps = {i: [" ".join(tokenize(p)) or "<empty>"] for i, p in enumerate(predictions)}
    refs = {i: [" ".join(tokenize(r)) or "<empty>"] for i, r in enumerate(references)}
    return hyps, refs


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus-level BLEU-1..4 (coco-caption), one reference per prediction.

    Returns:
        ``{"bleu1": ..., "bleu2": ..., "bleu3": ..., "bleu4": ...}`` in [0, 1]; zeros for an empty corpus.
    """
    if not predictions:
        return {f"bleu{n}": 0.0 for n in range(1, 5)}
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    hyps, refs = _coco_inputs(predictions, references)
    scorer = BleuScorer(n=4)
    for i in hyps:
        scorer += (hyps[i][0], refs[i])
    scores, _ = scorer.compute_score(option="closest", verbose=0)
    return {f"bleu{n}": float(score) for n, score in enumerate(scores, start=1)}


def cider(predictions: Sequence[str], references: Sequence[str]) -> tuple[float, list[float]]:
    """CIDEr (coco-caption, document frequencies from these references).

    Returns:
        ``(corpus score, per-sample scores)``; the corpus score is the mean of the per-sample ones.
    """
    if not predictions:
        return 0.0, []
    from pycocoevalcap.cider.cider_scorer import CiderScorer

    hyps, refs = _coco_inputs(predictions, references)
    scorer = CiderScorer(n=4, sigma=6.0)
    for i in hyps:
        scorer += (hyps[i][0], refs[i])
    score, per_sample = scorer.compute_score()
    return float(score), [float(s) for s in per_sample]


_meteor_lock = threading.Lock()
_meteor_scorer: Any = None


def java_available() -> bool:
    """Whether a ``java`` executable is on PATH (METEOR needs it)."""
    return shutil.which("java") is not None


def meteor(predictions: Sequence[str], references: Sequence[str]) -> tuple[float, list[float]]:
    """METEOR 1.5 (coco-caption's Java scorer, English, normalised).

    Returns:
        ``(corpus score, per-sample scores)``; the corpus score is METEOR's own aggregate (pooled
        statistics), not the mean of the per-sample scores.

    Raises:
        MetricUnavailable: No Java runtime.
    """
    global _meteor_scorer
    if not predictions:
        return 0.0, []
    if not java_available():
        raise MetricUnavailable(
            "METEOR skipped: no 'java' on PATH; install a Java runtime (e.g. apt-get install default-jre-headless)"
        )
    hyps, refs = _coco_inputs(predictions, references)
    with _meteor_lock:
        if _meteor_scorer is None:
            from pycocoevalcap.meteor.meteor import Meteor

            _meteor_scorer = Meteor()  # one JVM per process: its start-up (paraphrase table) takes seconds
        score, per_sample = _meteor_scorer.compute_score(refs, hyps)
    return float(score), [float(s) for s in per_sample]


@dataclass(frozen=True)
class BertScoreSettings:
    """Where BERTScore's model comes from.

    Attributes:
        model_dir: Local directory of a Hugging Face encoder (config, weights, tokenizer).
        num_layers: Which hidden layer's embeddings to compare (bert-score's per-model choice).
        batch_size: Sentences per forward pass.
        device: ``cpu``, ``cuda``... (default: CUDA when available).
    """

    model_dir: Path
    num_layers: int
    batch_size: int = 16
    device: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BertScoreSettings:
        """Read ``MEDBENCH_BERTSCORE_MODEL`` (+ ``_LAYERS``, ``_BATCH_SIZE``, ``_DEVICE``).

        Raises:
            MetricUnavailable: No model directory configured or it does not exist; or no layer is known.
        """
        env = os.environ if env is None else env
        raw = env.get(ENV_BERTSCORE_MODEL, "").strip()
        hint = (
            f"download {DEFAULT_BERTSCORE_MODEL} (e.g. `huggingface-cli download {DEFAULT_BERTSCORE_MODEL} "
            f"--local-dir DIR`) and set {ENV_BERTSCORE_MODEL}=DIR {ENV_BERTSCORE_LAYERS}={DEFAULT_BERTSCORE_LAYERS}"
        )
        if not raw:
            raise MetricUnavailable(f"BERTScore skipped: {ENV_BERTSCORE_MODEL} is not set; {hint}")
        model_dir = Path(raw).expanduser()
        if not (model_dir / "config.json").is_file():
            raise MetricUnavailable(f"BERTScore skipped: {model_dir} has no config.json; {hint}")
        layers_raw = env.get(ENV_BERTSCORE_LAYERS, "").strip()
        if layers_raw:
            try:
                layers = int(layers_raw)
            except ValueError:
                raise MetricUnavailable(f"BERTScore skipped: {ENV_BERTSCORE_LAYERS}={layers_raw!r} is not an integer") from None
        else:
            layers = _known_layer(model_dir.name)
            if layers is None:
                raise MetricUnavailable(
                    f"BERTScore skipped: no default layer for {model_dir.name}; set {ENV_BERTSCORE_LAYERS} "
                    "(see bert-score's model2layers table)"
                )
        batch = int(env.get(ENV_BERTSCORE_BATCH, "16") or 16)
        return cls(model_dir=model_dir, num_layers=layers, batch_size=batch, device=env.get(ENV_BERTSCORE_DEVICE) or None)


def _known_layer(name: str) -> int | None:
    from bert_score.utils import model2layers

    return model2layers.get(name)


_bertscorers: dict[BertScoreSettings, Any] = {}
_bertscore_lock = threading.Lock()


def _bertscorer(settings: BertScoreSettings) -> Any:
    with _bertscore_lock:
        scorer = _bertscorers.get(settings)
        if scorer is None:
            import torch
            from bert_score import BERTScorer

            device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
            scorer = BERTScorer(
                model_type=str(settings.model_dir),
                num_layers=settings.num_layers,
                batch_size=settings.batch_size,
                device=device,
                rescale_with_baseline=False,  # baselines exist only for hub model names, not local paths
                lang="en",
            )
            tokenizer = scorer._tokenizer
            # A tokenizer saved without model_max_length reports a huge sentinel that the fast tokenizer
            # cannot truncate to; the encoder's position table is the real limit.
            if getattr(tokenizer, "model_max_length", 0) > 100_000:
                positions = getattr(scorer._model.config, "max_position_embeddings", 512)
                tokenizer.model_max_length = positions - 2 if "roberta" in scorer._model.config.model_type else positions
            _bertscorers[settings] = scorer
        return scorer


def bertscore_f1(predictions: Sequence[str], references: Sequence[str], settings: BertScoreSettings) -> list[float]:
    """Per-sample BERTScore F1 (no IDF weighting, no rescaling); 0 when either text is empty.

    Raises:
        MetricUnavailable: The model cannot be loaded from ``settings.model_dir``.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    scores = [0.0] * len(predictions)
    index = [i for i, (p, r) in enumerate(zip(predictions, references, strict=True)) if p.strip() and r.strip()]
    if not index:
        return scores
    try:
        scorer = _bertscorer(settings)
    except (OSError, ValueError) as error:
        raise MetricUnavailable(f"BERTScore skipped: cannot load a model from {settings.model_dir} ({type(error).__name__})") from None
    with _bertscore_lock:  # the scorer is not thread-safe; lmms-eval may aggregate from worker threads
        _, _, f1 = scorer.score([predictions[i] for i in index], [references[i] for i in index])
    for i, value in zip(index, f1.tolist(), strict=True):
        scores[i] = float(value)
    return scores
