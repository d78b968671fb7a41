"""CheXbert-F1 and RadGraph-F1 (medbench[clinical]): F1 arithmetic, settings, tiny checkpoints, lmms-eval.

The real checkpoints cannot be fetched here, so the models are tiny random-weight networks saved in the
published file formats (tests/medbench/_clinical_tiny.py); their labels are meaningless, the code paths
(loading, tokenisation, inference, scoring, lmms-eval wiring) are the real ones. The F1 definitions are
checked against values computed by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medbench.metrics import clinical
from medbench.metrics.clinical import (
    CHEXBERT_METRICS,
    RADGRAPH_METRICS,
    CheXbertSettings,
    RadGraphSettings,
    chexbert_f1,
    chexbert_f1_from_labels,
    radgraph_f1,
)
from medbench.metrics.clinical.f1 import CONDITIONS, TOP5, TOP5_INDEX, multilabel_f1, radgraph_rewards
from medbench.metrics.text import MetricUnavailable

REFERENCES = [
    "No pleural effusion. Heart size is normal.",
    "Moderate cardiomegaly with mild edema.",
    "Left lower lobe opacity, possibly consolidation.",
    "The lungs are clear. No pneumothorax.",
]
PREDICTIONS = ["Small left pleural effusion.", "Moderate cardiomegaly with mild edema.", "", "The lungs are clear."]


# ------------------------------------------------------------------------------------ F1 arithmetic


def test_multilabel_f1_by_hand():
    references = [[1, 0, 1], [0, 1, 0]]
    predictions = [[1, 1, 0], [0, 1, 0]]
    result = multilabel_f1(references, predictions)
    # label 0: TP 1 -> F1 1; label 1: TP 1, FP 1 -> 2/3; label 2: FN 1 -> 0
    assert result.per_label == pytest.approx((1.0, 2 / 3, 0.0))
    assert result.micro == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # pooled TP 2, FP 1, FN 1
    assert result.macro == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert result.support == (1, 1, 1)
    # Only the listed labels count.
    assert multilabel_f1(references, predictions, labels=[0, 2]).micro == pytest.approx(2 / 3)


def test_an_observation_absent_on_both_sides_scores_zero_in_the_macro_mean():
    # scikit-learn's convention (zero_division -> 0), which the published CheXbert-F1 numbers use.
    result = multilabel_f1([[0, 1], [0, 1]], [[0, 1], [0, 0]])
    assert result.per_label == pytest.approx((0.0, 2 / 3))
    assert result.macro == pytest.approx(1 / 3)
    assert result.micro == pytest.approx(2 / 3)
    assert multilabel_f1([], []).micro == 0.0
    with pytest.raises(ValueError):
        multilabel_f1([[1, 0]], [[1, 0], [0, 0]])


def test_chexbert_f1_over_14_and_5_observations_by_hand():
    def vector(*names):
        return [1 if name in names else 0 for name in CONDITIONS]

    references = [vector("Cardiomegaly", "Edema"), vector("No Finding"), vector("Pleural Effusion", "Support Devices")]
    predictions = [vector("Cardiomegaly"), vector("No Finding", "Fracture"), vector("Pleural Effusion", "Edema")]
    scores = chexbert_f1_from_labels(references, predictions)
    # 14: TP = cardiomegaly, no finding, effusion = 3; FP = fracture, edema (3rd) = 2; FN = edema (1st),
    # support devices = 2 -> 6 / 10. Per observation: cardiomegaly 1, no finding 1, effusion 1, edema 0
    # (TP 0, FP 1, FN 1), fracture 0, support devices 0, the other 8 absent -> 0: macro 3/14.
    assert scores["chexbert_f1_micro_14"] == pytest.approx(6 / 10)
    assert scores["chexbert_f1_macro_14"] == pytest.approx(3 / 14)
    # 5 (cardiomegaly, edema, consolidation, atelectasis, effusion): TP 2, FP 1, FN 1 -> 4/6; per label
    # cardiomegaly 1, edema 0, effusion 1, consolidation 0, atelectasis 0 -> 2/5.
    assert scores["chexbert_f1_micro_5"] == pytest.approx(4 / 6)
    assert scores["chexbert_f1_macro_5"] == pytest.approx(2 / 5)
    assert [CONDITIONS[i] for i in TOP5_INDEX] == list(TOP5)


def test_chexbert_f1_matches_scikit_learns_classification_report():
    metrics = pytest.importorskip("sklearn.metrics")
    import random

    rng = random.Random(7)
    references = [[rng.random() < 0.3 for _ in range(14)] for _ in range(40)]
    predictions = [[rng.random() < 0.3 for _ in range(14)] for _ in range(40)]
    references = [[int(v) for v in row] for row in references]
    predictions = [[int(v) for v in row] for row in predictions]
    ours = chexbert_f1_from_labels(references, predictions)
    report = metrics.classification_report(references, predictions, output_dict=True, zero_division=0)
    five = metrics.classification_report([[r[i] for i in TOP5_INDEX] for r in references],
                                         [[p[i] for i in TOP5_INDEX] for p in predictions], output_dict=True, zero_division=0)
    assert ours["chexbert_f1_micro_14"] == pytest.approx(report["micro avg"]["f1-score"])
    assert ours["chexbert_f1_macro_14"] == pytest.approx(report["macro avg"]["f1-score"])
    assert ours["chexbert_f1_micro_5"] == pytest.approx(five["micro avg"]["f1-score"])
    assert ours["chexbert_f1_macro_5"] == pytest.approx(five["macro avg"]["f1-score"])


def _entity(tokens, label, *relations):
    return {"tokens": tokens, "label": label, "relations": [list(r) for r in relations]}


def test_radgraph_rewards_by_hand():
    hypothesis = {"entities": {
        "1": _entity("Effusion", "OBS-DP", ("located_at", "2")),
        "2": _entity("pleural", "ANAT-DP"),
        "3": _entity("heart", "ANAT-DP"),
        "4": _entity("Edema", "OBS-DP"),
    }}
    reference = {"entities": {
        "1": _entity("effusion", "OBS-DP", ("located_at", "2"), ("modify", "3")),
        "2": _entity("pleural", "ANAT-DP", ("modify", "1")),
        "3": _entity("edema", "OBS-DP"),
    }}
    rewards = radgraph_rewards(hypothesis, reference)
    # simple: spans are case-sensitive, only (pleural, ANAT-DP) matches: P 1/4, R 1/3 -> 2/7
    assert rewards["simple"] == pytest.approx(2 / 7)
    # partial: (Effusion, OBS-DP, has-relation) vs (effusion, ...), and pleural is related in the
    # reference only: nothing matches
    assert rewards["partial"] == 0.0
    # complete: relation items are lower-cased (the reference tooling's rule), so
    # (effusion, OBS-DP, located_at, pleural) matches: P 1/4 (4 items), R 1/4 (4 items) -> 1/4
    assert rewards["complete"] == pytest.approx(1 / 4)


def test_radgraph_rewards_edge_cases():
    graph = {"entities": {"1": _entity("effusion", "OBS-DP", ("located_at", "2")), "2": _entity("pleural", "ANAT-DP")}}
    assert radgraph_rewards(graph, graph) == {"simple": 1.0, "partial": 1.0, "complete": 1.0}
    zero = {"simple": 0.0, "partial": 0.0, "complete": 0.0}
    assert radgraph_rewards(None, graph) == zero  # empty report
    assert radgraph_rewards(graph, {"entities": {}}) == zero  # no entity
    assert radgraph_rewards({"entities": {"1": _entity("heart", "ANAT-DP")}}, graph) == zero


# ----------------------------------------------------------------------------------------- settings


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("MEDBENCH_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(clinical, "_models", {})
    return monkeypatch


def test_missing_chexbert_weights_say_what_to_download_and_where(tmp_path):
    with pytest.raises(MetricUnavailable) as error:
        CheXbertSettings.from_env({})
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("CheXbert-F1 skipped: MEDBENCH_CHEXBERT_WEIGHTS is not set")
    for part in ("chexbert.pth", "StanfordAIMI/RRG_scorers", "bert-base-uncased", "MEDBENCH_CHEXBERT_TOKENIZER"):
        assert part in message
    with pytest.raises(MetricUnavailable, match="is not a file"):
        CheXbertSettings.from_env({"MEDBENCH_CHEXBERT_WEIGHTS": str(tmp_path / "nope.pth")})
    (tmp_path / "chexbert.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(MetricUnavailable, match="no vocab.txt in"):
        CheXbertSettings.from_env({"MEDBENCH_CHEXBERT_WEIGHTS": str(tmp_path / "chexbert.pth")})
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    settings = CheXbertSettings.from_env({"MEDBENCH_CHEXBERT_WEIGHTS": str(tmp_path / "chexbert.pth")})
    assert settings.tokenizer_dir == tmp_path  # vocab.txt beside the checkpoint
    with pytest.raises(MetricUnavailable, match="cannot read .* as a torch checkpoint"):
        chexbert_f1(["a"], ["b"], settings)


def test_missing_radgraph_weights_say_what_to_download_and_where(tmp_path):
    with pytest.raises(MetricUnavailable) as error:
        RadGraphSettings.from_env({})
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("RadGraph-F1 skipped: MEDBENCH_RADGRAPH_WEIGHTS is not set")
    for part in ("radgraph.tar.gz", "StanfordAIMI/RRG_scorers", "tar -xzf", "MEDBENCH_RADGRAPH_TOKENIZER"):
        assert part in message
    archive = tmp_path / "radgraph.tar.gz"
    archive.write_bytes(b"")
    with pytest.raises(MetricUnavailable, match="is a .tar.gz file, extract it first"):
        RadGraphSettings.from_env({"MEDBENCH_RADGRAPH_WEIGHTS": str(archive)})
    with pytest.raises(MetricUnavailable, match="no config.json, weights.th, vocabulary there"):
        RadGraphSettings.from_env({"MEDBENCH_RADGRAPH_WEIGHTS": str(tmp_path)})


def test_the_clinical_package_imports_nothing_heavy():
    code = (
        "import sys\nimport medbench.metrics.clinical, medbench.metrics.clinical.f1, medbench.lmms.report\n"
        "print([m for m in ('torch', 'transformers', 'lmms_eval') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# ------------------------------------------------------------------------------- tiny checkpoints


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    from _clinical_tiny import build_tiny_chexbert, build_tiny_radgraph

    root = tmp_path_factory.mktemp("clinical")
    return {
        "chexbert": build_tiny_chexbert(root / "chexbert"),
        "radgraph": build_tiny_radgraph(root / "radgraph"),
        "radgraph-xl": build_tiny_radgraph(root / "radgraph-xl", dataset="radgraph-xl", seed=1),
        "radgraph-fold": build_tiny_radgraph(root / "radgraph-fold", max_length=12, seed=2),
    }


def test_chexbert_from_a_checkpoint_in_the_published_format(tiny_weights, clean_env):
    from medbench.metrics.clinical.chexbert import CheXbert

    path = tiny_weights["chexbert"]
    settings = CheXbertSettings(path, path.parent, device="cpu", batch_size=3)
    result = chexbert_f1(PREDICTIONS, REFERENCES, settings)
    assert set(result.scores) == set(CHEXBERT_METRICS)
    assert result.scores == chexbert_f1_from_labels(result.reference_labels, result.prediction_labels)
    assert all(len(row) == 14 and set(row) <= {0, 1} for row in result.reference_labels + result.prediction_labels)
    # Identical texts get identical labels; padding in a batch does not change a report's labels.
    assert result.prediction_labels[1] == result.reference_labels[1]
    labeller = CheXbert(path, path.parent, device="cpu", batch_size=1)
    assert labeller.labels(REFERENCES) == result.reference_labels
    assert len({tuple(row) for row in result.reference_labels + result.prediction_labels}) > 1  # not constant
    # "Uncertain" (class 3) counts as positive, "negative" (2) and "blank" (0) do not.
    labeller.classes = lambda reports: [[0, 1, 2, 3] * 3 + [0, 1]]
    assert labeller.labels(["x"]) == [[0, 1, 0, 1] * 3 + [0, 1]]


def test_a_checkpoint_that_does_not_fit_is_refused_in_one_line(tiny_weights, tmp_path, clean_env):
    import torch

    state = torch.load(tiny_weights["chexbert"], weights_only=True)["model_state_dict"]
    del state["module.linear_heads.3.bias"]
    bad = tmp_path / "chexbert.pth"
    torch.save({"model_state_dict": state}, bad)
    (tmp_path / "vocab.txt").write_text((tiny_weights["chexbert"].parent / "vocab.txt").read_text())
    with pytest.raises(MetricUnavailable, match=r"does not fit the CheXbert network \(missing \['linear_heads.3.bias'\]"):
        chexbert_f1(["a"], ["b"], CheXbertSettings(bad, tmp_path, device="cpu"))
    torch.save({"model_state_dict": {"module.linear.weight": torch.zeros(1)}}, bad)
    with pytest.raises(MetricUnavailable, match="is not the CheXbert checkpoint"):
        chexbert_f1(["a"], ["b"], CheXbertSettings(bad, tmp_path, device="cpu"))


@pytest.mark.parametrize("name", ["radgraph", "radgraph-xl", "radgraph-fold"])
def test_radgraph_from_an_archive_in_the_published_format(tiny_weights, clean_env, name):
    from medbench.metrics.clinical.radgraph import RadGraph

    folder = tiny_weights[name]
    long_report = " ".join(REFERENCES * 6)  # > 12 word pieces: folded into segments by "radgraph-fold"
    settings = RadGraphSettings(folder, folder, device="cpu")
    result = radgraph_f1(PREDICTIONS + [long_report], REFERENCES + [long_report], settings)
    assert set(result.scores) == set(RADGRAPH_METRICS)
    annotator = RadGraph(folder, folder, device="cpu")
    annotations = [annotator.annotate(text) for text in PREDICTIONS + REFERENCES + [long_report]]
    assert annotations[2] is None  # the empty prediction
    for annotation in filter(None, annotations):
        words = annotation["text"].split()
        for entity in annotation["entities"].values():
            assert entity["tokens"] == " ".join(words[entity["start_ix"]: entity["end_ix"] + 1])
            assert entity["end_ix"] - entity["start_ix"] < 4  # the archive's max_span_width
            assert all(target in annotation["entities"] for _, target in entity["relations"])
    assert sum(len(a["entities"]) for a in filter(None, annotations)) > 0
    # Per sample: the rewards of the two annotations; the corpus value: their mean.
    n = len(PREDICTIONS) + 1
    for i, per_sample in enumerate(result.per_sample):
        assert per_sample == radgraph_rewards(annotations[i] if i < n - 1 else annotations[-1],
                                              annotations[n - 1 + i] if i < n - 1 else annotations[-1])
    for level in ("simple", "partial", "complete"):
        assert result.scores[f"radgraph_f1_{level}"] == pytest.approx(sum(s[level] for s in result.per_sample) / n)
    assert result.per_sample[2] == {"simple": 0.0, "partial": 0.0, "complete": 0.0}  # empty prediction
    if annotations[-1]["entities"]:
        assert result.per_sample[-1]["simple"] == 1.0  # a report against itself


def test_pretokenisation_follows_each_models_rules():
    from medbench.metrics.clinical.radgraph import pretokenize

    text = "ET tube 2.5 cm above carina (stable)/unchanged, 50%."
    assert pretokenize(text, "radgraph") == ["ET", "tube", "2", ".", "5", "cm", "above", "carina", "(", "stable", ")",
                                             "/", "unchanged", ",", "50%", "."]
    assert pretokenize(text, "radgraph-xl") == ["ET", "tube", "2", ".", "5", "cm", "above", "carina", "(", "stable",
                                                ")/", "unchanged", ",", "50", "%", "."]


def test_an_archive_with_another_inference_path_is_refused(tiny_weights, tmp_path, clean_env):
    import shutil

    folder = tmp_path / "radgraph"
    shutil.copytree(tiny_weights["radgraph"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["model"]["modules"]["coref"]["coref_prop"] = 1
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(MetricUnavailable, match=r"unsupported checkpoint .* \(coreference propagation\)"):
        radgraph_f1(["a"], ["b"], RadGraphSettings(folder, folder, device="cpu"))


# ------------------------------------------------------------------------------------- lmms-eval


def _run_mimic(tmp_path: Path, in_process: bool = False, **env_overrides: str):
    from medbench.commands.demo import demo_environment
    from medbench.commands.eval import run_lmms_eval
    from medbench.results import find_runs

    env = demo_environment()
    for name in list(env):
        if name.startswith(("MEDBENCH_CHEXBERT", "MEDBENCH_RADGRAPH", "MEDBENCH_JUDGE")):
            del env[name]
    env.update(env_overrides)
    args = ["--model", "medbench_baseline", "--tasks", "medbench_mimic_cxr", "--output_path", str(tmp_path),
            "--log_samples", "--verbosity", "WARNING"]
    if in_process:
        from lmms_here import lmms_eval_in_process

        with lmms_eval_in_process():
            run_lmms_eval(args, env)
    else:
        run_lmms_eval(args, env)
    return find_runs(tmp_path)[-1]


def test_without_weights_the_other_metrics_run_and_one_line_says_what_to_download(tmp_path, capfd):
    run = _run_mimic(tmp_path)
    metrics = run.metrics("medbench_mimic_cxr")
    assert {"bleu1", "bleu4", "rouge_l", "cider"} <= set(metrics)
    assert not set(metrics) & set(CHEXBERT_METRICS + RADGRAPH_METRICS)
    log = capfd.readouterr()
    text = log.out + log.err
    assert text.count("CheXbert-F1 skipped: MEDBENCH_CHEXBERT_WEIGHTS is not set") == 1
    assert text.count("RadGraph-F1 skipped: MEDBENCH_RADGRAPH_WEIGHTS is not set") == 1


def test_with_weights_the_clinical_metrics_are_reported(tmp_path, tiny_weights):
    chexbert = tiny_weights["chexbert"]
    # In this process (lmms_here); the test above runs lmms-eval as a child, whose log says once what is missing.
    run = _run_mimic(tmp_path, in_process=True, MEDBENCH_CHEXBERT_WEIGHTS=str(chexbert), MEDBENCH_CHEXBERT_TOKENIZER=str(chexbert.parent),
                     MEDBENCH_RADGRAPH_WEIGHTS=str(tiny_weights["radgraph"]), MEDBENCH_CLINICAL_DEVICE="cpu")
    task = "medbench_mimic_cxr"
    metrics = run.metrics(task)
    assert set(CHEXBERT_METRICS + RADGRAPH_METRICS) <= set(metrics)
    assert {"bleu1", "rouge_l", "cider"} <= set(metrics)
    assert all(0.0 <= metrics[name][0] <= 1.0 for name in CHEXBERT_METRICS + RADGRAPH_METRICS)
    assert run.raw["higher_is_better"][task]["radgraph_f1_partial"] is True
    # RadGraph-F1 is a mean of per-report values: lmms-eval's CLT standard error applies.
    assert isinstance(run.raw["results"][task]["radgraph_f1_partial_stderr_clt,none"], float)
    rows = [json.loads(line) for line in run.samples[task].read_text().splitlines()]
    assert len(rows) == 6
    first = rows[0]
    assert set(first["chexbert_f1_micro_14"]) >= {"id", "reference_positive", "prediction_positive"}
    assert set(first["chexbert_f1_micro_14"]["reference_positive"]) <= set(CONDITIONS)
    assert set(first["radgraph_f1_partial"]) >= {"id", "score", "entities"}
    mean = sum(row["radgraph_f1_partial"]["score"] for row in rows) / len(rows)
    assert metrics["radgraph_f1_partial"][0] == pytest.approx(mean)


# ------------------------------------------------------------------ parity with the reference packages

REFERENCE_PATH = "MEDBENCH_CLINICAL_REFERENCE_PATH"
_REFERENCE = os.environ.get(REFERENCE_PATH)  # read at import: fixtures clear MEDBENCH_* variables
PARITY_TEXTS = REFERENCES + PREDICTIONS + [
    "The lungs are clear. No pneumothorax/effusion (stable) - 3 cm; ET tube 2.5 cm above carina?!",
    'Right-sided PICC terminates in the mid SVC. 50% collapse, "stable".',
    "small left effusion /. unchanged",
    "Heart size is top normal, unchanged. " * 12,
    "x",
]

# Runs under PYTHONPATH=$MEDBENCH_CLINICAL_REFERENCE_PATH: the reference packages' own model classes,
# tokenisation and post-processing, fed our checkpoints (loaded from local folders, no download).
_REFERENCE_SCRIPT = r'''
import json, shutil, sys, torch
from collections import OrderedDict
from pathlib import Path
job = json.loads(Path(sys.argv[1]).read_text())
texts = job["texts"]
out = {"radgraph": {}, "chexbert": {}}
import radgraph.radgraph as R
for name, spec in job["radgraph"].items():
    cache = Path(spec["cache"]); model_dir = cache / spec["dataset"]
    rg = R.RadGraph(model_type=spec["dataset"], model_cache_dir=str(cache), cuda=-1)
    out["radgraph"][name] = [rg([t])["0"] if t.strip() else None for t in texts]
torch.nn.Module.load_state_dict = globals().get("_orig", torch.nn.Module.load_state_dict)
import f1chexbert.f1chexbert as F
from transformers import BertTokenizer
for name, spec in job["chexbert"].items():
    scorer = F.F1CheXbert.__new__(F.F1CheXbert); torch.nn.Module.__init__(scorer)
    scorer.device = torch.device("cpu")
    scorer.tokenizer = BertTokenizer(vocab_file=spec["vocab"])
    model = F.bert_labeler(pretrain_path=spec["encoder"])
    state = torch.load(spec["weights"], map_location="cpu")["model_state_dict"]
    missing = model.load_state_dict(OrderedDict((k.replace("module.", ""), v) for k, v in state.items()), strict=False).missing_keys
    assert not missing, missing
    scorer.model = model.eval()
    out["chexbert"][name] = [scorer.get_label(t.strip()) for t in texts]
print(json.dumps(out))
'''


def _reference_encoder(folder: Path, vocab: Path, max_positions: int) -> Path:
    """A Hugging Face BERT folder (random weights, overwritten by the checkpoint) the packages can load."""
    import shutil

    from _clinical_tiny import _tiny_bert_config
    from transformers import BertModel

    BertModel(_tiny_bert_config(max_position_embeddings=max_positions)).save_pretrained(folder)
    shutil.copy(vocab, folder / "vocab.txt")
    (folder / "tokenizer_config.json").write_text('{"do_lower_case": true, "tokenizer_class": "BertTokenizer"}')
    return folder


@pytest.mark.slow
@pytest.mark.skipif(not _REFERENCE, reason=f"set {REFERENCE_PATH} to run")
def test_parity_with_the_reference_packages(tmp_path):
    """Our CheXbert labels and RadGraph annotations equal f1chexbert 0.0.2's and radgraph 0.1.18's.

    Opt-in: ``MEDBENCH_CLINICAL_REFERENCE_PATH`` is a PYTHONPATH holding ``radgraph==0.1.18``,
    ``f1chexbert==0.0.2``, their small dependencies and ``transformers<5`` (both packages call tokenizer
    methods transformers 5 removed), e.g. ``pip install --target DIR "transformers==4.46.3" "tokenizers<0.21"
    "huggingface_hub<1" radgraph==0.1.18 f1chexbert==0.0.2 appdirs dotmap jsonpickle h5py nltk --no-deps``
    plus their other requirements. torch comes from this environment.
    """
    import shutil

    from _clinical_tiny import build_tiny_chexbert, build_tiny_radgraph

    from medbench.metrics.clinical.chexbert import CheXbert
    from medbench.metrics.clinical.radgraph import RadGraph

    job: dict = {"texts": PARITY_TEXTS, "radgraph": {}, "chexbert": {}}
    ours: dict = {"radgraph": {}, "chexbert": {}}
    for name, dataset, max_length in (("rg", "radgraph", 512), ("xl", "radgraph-xl", 512), ("fold", "radgraph", 12)):
        folder = build_tiny_radgraph(tmp_path / name, dataset=dataset, max_length=max_length, seed=3)
        encoder = _reference_encoder(tmp_path / f"{name}-encoder", folder / "vocab.txt", max(max_length, 16))
        # The package's layout: <cache>/<model type>/{config.json, vocabulary, weights.th}; it loads
        # strictly, coreference and event modules included, so those come from its own (random) init.
        cache = tmp_path / f"{name}-cache"
        model_dir = cache / dataset
        shutil.copytree(folder / "vocabulary", model_dir / "vocabulary")
        config = json.loads((folder / "config.json").read_text())
        config["dataset_reader"]["token_indexers"]["bert"]["model_name"] = str(encoder)
        config["model"]["embedder"]["token_embedders"]["bert"]["model_name"] = str(encoder)
        (model_dir / "config.json").write_text(json.dumps(config))
        shutil.copy(folder / "weights.th", model_dir / "weights.th")
        job["radgraph"][name] = {"cache": str(cache), "dataset": dataset}
        annotator = RadGraph(folder, folder, device="cpu")
        ours["radgraph"][name] = [annotator.annotate(t) for t in PARITY_TEXTS]
    for seed in range(3):
        weights = build_tiny_chexbert(tmp_path / f"chexbert{seed}", seed=seed, max_positions=512)
        encoder = _reference_encoder(tmp_path / f"chexbert{seed}-encoder", weights.parent / "vocab.txt", 512)
        job["chexbert"][str(seed)] = {"weights": str(weights), "vocab": str(weights.parent / "vocab.txt"), "encoder": str(encoder)}
        ours["chexbert"][str(seed)] = CheXbert(weights, weights.parent, device="cpu").labels(PARITY_TEXTS)
    (tmp_path / "job.json").write_text(json.dumps(job))
    # The package's strict load needs its coref/event parameters: complete our state dicts from its init.
    patch = (
        "import torch\n_orig = torch.nn.Module.load_state_dict\n"
        "def _complete(self, state, strict=True):\n"
        "    own = self.state_dict(); extra = set(state) - set(own)\n"
        "    assert not extra, sorted(extra)[:5]\n"
        "    own.update(state); return _orig(self, own, strict=True)\n"
        "torch.nn.Module.load_state_dict = _complete\n"
    )
    script = tmp_path / "reference.py"
    script.write_text(_REFERENCE_SCRIPT.replace("import radgraph.radgraph as R", patch + "import radgraph.radgraph as R"))
    env = dict(os.environ, PYTHONPATH=_REFERENCE)
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "job.json")], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    theirs = json.loads(result.stdout.strip().splitlines()[-1])
    for name, graphs in ours["radgraph"].items():
        # (the package adds two constant bookkeeping keys, data_source and data_split)
        reference = [{"text": g["text"], "entities": g["entities"]} if g else None for g in theirs["radgraph"][name]]
        assert graphs == reference, name
        assert sum(len(a["entities"]) for a in graphs if a) > 10
    for name, labels in ours["chexbert"].items():
        assert labels == theirs["chexbert"][name], name
        assert len({tuple(row) for row in labels}) > 1
