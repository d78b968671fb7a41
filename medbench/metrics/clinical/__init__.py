"""Clinical-efficacy metrics for chest X-ray reports: CheXbert-F1 and RadGraph-F1 (``medbench[clinical]``).

Both score a generated report against its reference through a trained clinical information extractor
whose weights the user downloads once and points medbench at; nothing is fetched at run time and nothing
heavy is imported until a metric is computed.

==========================  ===========================================================================
metric                      definition
==========================  ===========================================================================
``chexbert_f1_micro_14``    CheXbert labels (Smit et al. 2020) of prediction and reference over the 14
                            CheXpert observations, positive = "present" or "uncertain"; F1 of the counts
                            pooled over all observations and reports (corpus level)
``chexbert_f1_macro_14``    the same labels; mean of the 14 per-observation F1 values
``chexbert_f1_micro_5``     micro F1 over the 5 competition observations (cardiomegaly, edema,
                            consolidation, atelectasis, pleural effusion)
``chexbert_f1_macro_5``     macro F1 over those 5
``radgraph_f1_partial``     RadGraph-F1 (Delbrouck et al. 2022, RG_ER, the usual "RadGraph F1"): per
                            report, F1 of the entities (span, type, has-relation) extracted by RadGraph,
                            averaged over reports
``radgraph_f1_simple``      RG_E: entities (span, type) only
``radgraph_f1_complete``    RG_ER-bar: entities matched through each relation (span, type, relation, target)
==========================  ===========================================================================

All higher-is-better, in [0, 1]. Settings (see :class:`CheXbertSettings`, :class:`RadGraphSettings`)::

    MEDBENCH_CHEXBERT_WEIGHTS=/models/chexbert.pth      MEDBENCH_CHEXBERT_TOKENIZER=/models/bert-base-uncased
    MEDBENCH_RADGRAPH_WEIGHTS=/models/radgraph          MEDBENCH_RADGRAPH_TOKENIZER=/models/<encoder>
    MEDBENCH_CLINICAL_DEVICE=cuda  MEDBENCH_CLINICAL_BATCH_SIZE=32   (optional)

Which implementation backs each: :mod:`medbench.metrics.clinical.chexbert` and
:mod:`medbench.metrics.clinical.radgraph` rebuild the published networks on ``transformers.BertModel`` and
load the published checkpoints from local files (the ``f1chexbert`` and ``radgraph`` packages download
them from the hub at run time, and ``radgraph`` does not run on transformers 5); the F1 arithmetic is in
:mod:`medbench.metrics.clinical.f1`.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbench.metrics.clinical.f1 import CONDITIONS, RADGRAPH_LEVELS, TOP5_INDEX, mean, multilabel_f1, radgraph_rewards
from medbench.metrics.text import MetricUnavailable

ENV_CHEXBERT_WEIGHTS = "MEDBENCH_CHEXBERT_WEIGHTS"
ENV_CHEXBERT_TOKENIZER = "MEDBENCH_CHEXBERT_TOKENIZER"
ENV_RADGRAPH_WEIGHTS = "MEDBENCH_RADGRAPH_WEIGHTS"
ENV_RADGRAPH_TOKENIZER = "MEDBENCH_RADGRAPH_TOKENIZER"
ENV_CLINICAL_DEVICE = "MEDBENCH_CLINICAL_DEVICE"
ENV_CLINICAL_BATCH = "MEDBENCH_CLINICAL_BATCH_SIZE"

CHEXBERT_METRICS = ("chexbert_f1_micro_14", "chexbert_f1_macro_14", "chexbert_f1_micro_5", "chexbert_f1_macro_5")
# RG_ER ("partial") first: it is the paper's reward and what "RadGraph F1" usually means.
RADGRAPH_METRICS = ("radgraph_f1_partial", "radgraph_f1_simple", "radgraph_f1_complete")

# Where the files come from: the Hugging Face repository the `f1chexbert` and `radgraph` packages
# download from (Stanford AIMI), and the tokenizers of the encoders the checkpoints were trained from.
CHEXBERT_HINT = (
    "download chexbert.pth (Hugging Face repo StanfordAIMI/RRG_scorers, or the CheXbert checkpoint linked from "
    "github.com/stanfordmlgroup/CheXbert) and bert-base-uncased's vocab.txt "
    "(`huggingface-cli download bert-base-uncased vocab.txt tokenizer_config.json config.json --local-dir DIR`), "
    f"then set {ENV_CHEXBERT_WEIGHTS}=/path/to/chexbert.pth and {ENV_CHEXBERT_TOKENIZER}=DIR "
    "(or put vocab.txt next to chexbert.pth)"
)
RADGRAPH_HINT = (
    "download radgraph.tar.gz (Hugging Face repo StanfordAIMI/RRG_scorers, the file the `radgraph` package uses; "
    "radgraph-xl.tar.gz works too), extract it (`mkdir DIR && tar -xzf radgraph.tar.gz -C DIR` gives config.json, "
    f"vocabulary/, weights.th) and set {ENV_RADGRAPH_WEIGHTS}=DIR, plus {ENV_RADGRAPH_TOKENIZER}= a folder with the "
    "vocab.txt of the encoder named in DIR/config.json (or put that vocab.txt in DIR)"
)
INSTALL_HINT = "install the clinical extra: pip install 'medbench[clinical]'"


def _has_vocab(folder: Path) -> bool:
    return (folder / "vocab.txt").is_file() or (folder / "tokenizer.json").is_file()


def encoder_name(model_dir: Path) -> str:
    """The Hugging Face name of the encoder a RadGraph archive was trained from (for messages)."""
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        return str(config["model"]["embedder"]["token_embedders"]["bert"]["model_name"])
    except (OSError, ValueError, KeyError, TypeError):
        return "the encoder named in its config.json"


def _device_and_batch(env: Mapping[str, str]) -> tuple[str | None, int]:
    raw = env.get(ENV_CLINICAL_BATCH, "").strip() or "32"
    try:
        batch = int(raw)
    except ValueError:
        raise MetricUnavailable(f"clinical metrics skipped: {ENV_CLINICAL_BATCH}={raw!r} is not an integer") from None
    return env.get(ENV_CLINICAL_DEVICE, "").strip() or None, max(batch, 1)


@dataclass(frozen=True)
class CheXbertSettings:
    """Where CheXbert's files are.

    Attributes:
        weights: The CheXbert checkpoint ``chexbert.pth``.
        tokenizer_dir: Folder with bert-base-uncased's ``vocab.txt``.
        device: ``cpu``, ``cuda``... (default: CUDA when available).
        batch_size: Reports per forward pass.
    """

    weights: Path
    tokenizer_dir: Path
    device: str | None = None
    batch_size: int = 32

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CheXbertSettings:
        """Read ``MEDBENCH_CHEXBERT_WEIGHTS`` and ``MEDBENCH_CHEXBERT_TOKENIZER`` (checks the files exist).

        Raises:
            MetricUnavailable: Not set, or a file is missing; the message says what to download and where.
        """
        env = os.environ if env is None else env
        raw = env.get(ENV_CHEXBERT_WEIGHTS, "").strip()
        if not raw:
            raise MetricUnavailable(f"CheXbert-F1 skipped: {ENV_CHEXBERT_WEIGHTS} is not set; {CHEXBERT_HINT}")
        weights = Path(raw).expanduser()
        if not weights.is_file():
            raise MetricUnavailable(f"CheXbert-F1 skipped: {ENV_CHEXBERT_WEIGHTS}={weights} is not a file; {CHEXBERT_HINT}")
        tokenizer_raw = env.get(ENV_CHEXBERT_TOKENIZER, "").strip()
        tokenizer_dir = Path(tokenizer_raw).expanduser() if tokenizer_raw else weights.parent
        if not _has_vocab(tokenizer_dir):
            raise MetricUnavailable(f"CheXbert-F1 skipped: no vocab.txt in {tokenizer_dir}; {CHEXBERT_HINT}")
        device, batch = _device_and_batch(env)
        return cls(weights=weights, tokenizer_dir=tokenizer_dir, device=device, batch_size=batch)


@dataclass(frozen=True)
class RadGraphSettings:
    """Where RadGraph's files are.

    Attributes:
        model_dir: The extracted checkpoint archive (``config.json``, ``vocabulary/``, ``weights.th``).
        tokenizer_dir: Folder with the ``vocab.txt`` of the encoder named in ``config.json``.
        device: ``cpu``, ``cuda``... (default: CUDA when available).
    """

    model_dir: Path
    tokenizer_dir: Path
    device: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RadGraphSettings:
        """Read ``MEDBENCH_RADGRAPH_WEIGHTS`` and ``MEDBENCH_RADGRAPH_TOKENIZER`` (checks the files exist).

        Raises:
            MetricUnavailable: Not set, or a file is missing; the message says what to download and where.
        """
        env = os.environ if env is None else env
        raw = env.get(ENV_RADGRAPH_WEIGHTS, "").strip()
        if not raw:
            raise MetricUnavailable(f"RadGraph-F1 skipped: {ENV_RADGRAPH_WEIGHTS} is not set; {RADGRAPH_HINT}")
        model_dir = Path(raw).expanduser()
        missing = [name for name in ("config.json", "weights.th", "vocabulary") if not (model_dir / name).exists()]
        if missing:
            what = "a .tar.gz file, extract it first" if model_dir.is_file() else f"no {', '.join(missing)} there"
            raise MetricUnavailable(f"RadGraph-F1 skipped: {ENV_RADGRAPH_WEIGHTS}={model_dir} is {what}; {RADGRAPH_HINT}")
        tokenizer_raw = env.get(ENV_RADGRAPH_TOKENIZER, "").strip()
        tokenizer_dir = Path(tokenizer_raw).expanduser() if tokenizer_raw else model_dir
        if not _has_vocab(tokenizer_dir):
            raise MetricUnavailable(
                f"RadGraph-F1 skipped: no vocab.txt in {tokenizer_dir} (the checkpoint's encoder is {encoder_name(model_dir)}); {RADGRAPH_HINT}"
            )
        device, _ = _device_and_batch(env)
        return cls(model_dir=model_dir, tokenizer_dir=tokenizer_dir, device=device)


@dataclass
class CheXbertScores:
    """CheXbert-F1 of a corpus.

    Attributes:
        scores: ``{metric name: value}`` for :data:`CHEXBERT_METRICS`.
        reference_labels: 14 binary labels per reference (observation order of ``chexbert.CONDITIONS``).
        prediction_labels: 14 binary labels per generated report.
    """

    scores: dict[str, float]
    reference_labels: list[list[int]] = field(default_factory=list)
    prediction_labels: list[list[int]] = field(default_factory=list)


@dataclass
class RadGraphScores:
    """RadGraph-F1 of a corpus.

    Attributes:
        scores: ``{metric name: mean over reports}`` for :data:`RADGRAPH_METRICS`.
        per_sample: ``{level: F1}`` per report pair.
        entities: ``(prediction entities, reference entities)`` counts per report pair.
    """

    scores: dict[str, float]
    per_sample: list[dict[str, float]] = field(default_factory=list)
    entities: list[tuple[int, int]] = field(default_factory=list)


def chexbert_f1_from_labels(reference_labels: Sequence[Sequence[int]], prediction_labels: Sequence[Sequence[int]]) -> dict[str, float]:
    """The four CheXbert-F1 values from 14-wide binary label vectors (the 5 are a subset of the 14)."""
    all14 = multilabel_f1(reference_labels, prediction_labels)
    top5 = multilabel_f1(reference_labels, prediction_labels, labels=TOP5_INDEX)
    return {
        "chexbert_f1_micro_14": all14.micro,
        "chexbert_f1_macro_14": all14.macro,
        "chexbert_f1_micro_5": top5.micro,
        "chexbert_f1_macro_5": top5.macro,
    }


def positive_observations(labels: Sequence[int]) -> list[str]:
    """Names of the positive CheXpert observations of a 14-wide label vector (for the sample logs)."""
    return [name for name, value in zip(CONDITIONS, labels, strict=True) if value == 1]


_models: dict[Any, Any] = {}
_models_lock = threading.Lock()


def _load(settings: Any, build: Any) -> Any:
    # One model per settings and process, built on first use; later calls share it.
    with _models_lock:
        model = _models.get(settings)
        if model is None:
            try:
                model = build()
            except ImportError as error:
                raise MetricUnavailable(f"clinical metrics skipped: {error.name or error} is not installed; {INSTALL_HINT}") from None
            _models[settings] = model
        return model


def chexbert_f1(predictions: Sequence[str], references: Sequence[str], settings: CheXbertSettings | None = None) -> CheXbertScores:
    """CheXbert-F1 (micro/macro over 14 and 5 observations) of generated reports against references.

    Args:
        predictions: Generated reports.
        references: Reference reports, one per prediction.
        settings: Files and device (default: from the environment).

    Raises:
        MetricUnavailable: Files not configured, missing or not a CheXbert checkpoint; torch missing.
        ValueError: Different numbers of predictions and references.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    settings = settings or CheXbertSettings.from_env()

    def build() -> Any:
        from medbench.metrics.clinical.chexbert import CheXbert

        return CheXbert(settings.weights, settings.tokenizer_dir, device=settings.device, batch_size=settings.batch_size)

    labeller = _load(settings, build)
    with _models_lock:  # one forward pass at a time per process (lmms-eval may aggregate from threads)
        reference_labels = labeller.labels(list(references))
        prediction_labels = labeller.labels(list(predictions))
    return CheXbertScores(chexbert_f1_from_labels(reference_labels, prediction_labels), reference_labels, prediction_labels)


def radgraph_f1(predictions: Sequence[str], references: Sequence[str], settings: RadGraphSettings | None = None) -> RadGraphScores:
    """RadGraph-F1 (simple / partial / complete) of generated reports against references.

    Each pair is scored on its own (an empty report, or one without entities, scores 0) and the corpus
    value is the mean over pairs, as in Delbrouck et al. (2022) and the ``radgraph`` package.

    Raises:
        MetricUnavailable: Files not configured, missing or not a supported RadGraph checkpoint.
        ValueError: Different numbers of predictions and references.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    settings = settings or RadGraphSettings.from_env()

    def build() -> Any:
        from medbench.metrics.clinical.radgraph import RadGraph

        return RadGraph(settings.model_dir, settings.tokenizer_dir, device=settings.device)

    annotator = _load(settings, build)
    per_sample, entities = [], []
    cache: dict[str, Any] = {}  # references repeat across samples of a study; annotate each text once
    with _models_lock:
        for prediction, reference in zip(predictions, references, strict=True):
            pair = []
            for text in (prediction, reference):
                if text not in cache:
                    cache[text] = annotator.annotate(text)
                pair.append(cache[text])
            per_sample.append(radgraph_rewards(pair[0], pair[1]))
            entities.append(tuple(len(a["entities"]) if a else 0 for a in pair))
    scores = {f"radgraph_f1_{level}": mean(s[level] for s in per_sample) for level in RADGRAPH_LEVELS}
    return RadGraphScores(scores, per_sample, entities)
