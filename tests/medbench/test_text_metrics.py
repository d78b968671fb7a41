"""Golden tests for the long-form text metrics (coco-caption BLEU/CIDEr/METEOR, ROUGE-L, BERTScore)."""

from __future__ import annotations

import math

import pytest

from medbench.metrics import text
from medbench.metrics.text import (
    BertScoreSettings,
    MetricUnavailable,
    corpus_bleu,
    rouge_l,
    sentence_bleu4,
    tokenize,
)


def test_tokenize():
    assert tokenize("No pneumothorax. Heart size: NORMAL; patient's x-ray") == [
        "no", "pneumothorax", "heart", "size", "normal", "patient's", "x", "ray"]


class TestCorpusBleu:
    def test_identical_corpus_is_one(self):
        refs = ["The heart is enlarged.", "There is a small left pleural effusion and no pneumothorax."]
        assert corpus_bleu(refs, refs) == pytest.approx({"bleu1": 1.0, "bleu2": 1.0, "bleu3": 1.0, "bleu4": 1.0})

    def test_hand_computed(self):
        # unigrams: the×2, cat, on, mat match; "sat" does not -> 5/6. Bigrams: "the cat", "on the", "the mat"
        # of 5 -> 3/5. Same length, so no brevity penalty: BLEU-2 = sqrt(5/6 * 3/5) = sqrt(1/2).
        scores = corpus_bleu(["The cat sat on the mat."], ["the cat is on the mat"])
        assert scores["bleu1"] == pytest.approx(5 / 6, abs=1e-6)
        assert scores["bleu2"] == pytest.approx(math.sqrt(0.5), abs=1e-6)

    def test_pooled_over_the_corpus_not_averaged(self):
        preds, refs = ["a b c d", "x"], ["a b c d", "y z w v"]
        pooled = corpus_bleu(preds, refs)["bleu1"]
        # 4 of 5 unigrams match overall; the brevity penalty is exp(1 - 8/5).
        assert pooled == pytest.approx(4 / 5 * math.exp(1 - 8 / 5), abs=1e-6)

    def test_empty_prediction_and_empty_corpus(self):
        assert corpus_bleu([""], ["the heart is enlarged"])["bleu1"] == pytest.approx(0.0, abs=1e-6)
        assert corpus_bleu([], []) == {"bleu1": 0.0, "bleu2": 0.0, "bleu3": 0.0, "bleu4": 0.0}
        with pytest.raises(ValueError):
            corpus_bleu(["a"], [])


class TestCider:
    def test_identical_distinct_documents_score_ten(self):
        refs = ["the heart is enlarged", "there is a left pleural effusion"]
        score, per_sample = text.cider(refs, refs)
        assert score == pytest.approx(10.0) and per_sample == pytest.approx([10.0, 10.0])

    def test_unrelated_is_zero_and_mean_of_samples(self):
        score, per_sample = text.cider(["lungs clear", "heart enlarged"], ["heart enlarged", "lungs clear"])
        assert score == pytest.approx(0.0) and score == pytest.approx(sum(per_sample) / 2)


class TestSentenceMetrics:
    def test_rouge_l(self):
        assert rouge_l("the heart is enlarged", "the heart is enlarged") == 1.0
        # LCS "the heart is" = 3 of 4 tokens each way -> F = 0.75
        assert rouge_l("the heart is normal", "the heart is enlarged") == pytest.approx(0.75)
        assert rouge_l("", "the heart") == 0.0

    def test_sentence_bleu4(self):
        assert sentence_bleu4("the heart is enlarged", "the heart is enlarged") == pytest.approx(1.0)
        assert sentence_bleu4(" ", "x") == 0.0


@pytest.mark.skipif(not text.java_available(), reason="METEOR needs java")
def test_meteor_golden():
    # Reference value from coco-caption's METEOR 1.5 jar on these inputs.
    score, per_sample = text.meteor(["the heart is big", "lungs are clear"], ["the heart is enlarged", "a left effusion"])
    assert score == pytest.approx(0.172785, abs=1e-4)
    assert per_sample[1] == 0.0 and per_sample[0] > 0.3
    same, _ = text.meteor(["there is a left pleural effusion"], ["there is a left pleural effusion"])
    assert same > 0.9


def test_meteor_without_java_says_what_to_install(monkeypatch):
    monkeypatch.setattr(text.shutil, "which", lambda name: None)
    with pytest.raises(MetricUnavailable, match="install a Java runtime"):
        text.meteor(["a"], ["b"])


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    """A 2-layer BERT with a word-level vocabulary, saved like a downloaded checkpoint."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_bert")
    words = [
        "the", "heart", "is", "enlarged", "there", "a", "right", "left", "pleural", "effusion", "no",
        "pneumothorax", "lungs", "are", "clear",
    ]
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]))
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)  # no model_max_length on purpose
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    return folder


class TestBertScore:
    def test_local_model(self, tiny_bert_dir):
        settings = BertScoreSettings.from_env({"MEDBENCH_BERTSCORE_MODEL": str(tiny_bert_dir), "MEDBENCH_BERTSCORE_LAYERS": "2",
                                               "MEDBENCH_BERTSCORE_DEVICE": "cpu"})
        scores = text.bertscore_f1(
            ["the heart is enlarged", "", "lungs are clear " * 40],
            ["the heart is enlarged", "no effusion", "the heart is enlarged"],
            settings,
        )
        assert scores[0] == pytest.approx(1.0, abs=1e-5)
        assert scores[1] == 0.0  # empty output scores 0 (bert-score itself cannot embed it)
        assert -1.0 <= scores[2] <= 1.0  # longer than the position table: truncated, not a crash

    @pytest.mark.parametrize(
        "env, message",
        [
            ({}, "MEDBENCH_BERTSCORE_MODEL is not set; download roberta-large"),
            ({"MEDBENCH_BERTSCORE_MODEL": "/nonexistent/model"}, "has no config.json"),
        ],
    )
    def test_unconfigured_says_what_to_download(self, env, message):
        with pytest.raises(MetricUnavailable, match=message) as error:
            BertScoreSettings.from_env(env)
        assert "\n" not in str(error.value)

    def test_layer_needed_for_unknown_models(self, tiny_bert_dir):
        with pytest.raises(MetricUnavailable, match="set MEDBENCH_BERTSCORE_LAYERS"):
            BertScoreSettings.from_env({"MEDBENCH_BERTSCORE_MODEL": str(tiny_bert_dir)})

    def test_known_model_names_get_their_layer(self, tmp_path):
        folder = tmp_path / "roberta-large"
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        assert BertScoreSettings.from_env({"MEDBENCH_BERTSCORE_MODEL": str(folder)}).num_layers == 17


def test_rouge_l_equals_stock_rouge_score_with_stemming():
    import random

    from rouge_score import rouge_scorer

    from medbench.metrics.text import rouge_l

    stock = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    words = [
        "The", "lungs", "are", "clear;", "no", "focal", "consolidations,", "effusions", "or", "pneumothoraces.",
        "Stable", "running", "changes!",
    ]
    rng = random.Random(7)
    for _ in range(300):
        prediction = " ".join(rng.choices(words, k=rng.randint(1, 25)))
        reference = " ".join(rng.choices(words, k=rng.randint(1, 25)))
        assert rouge_l(prediction, reference) == stock.score(reference, prediction)["rougeL"].fmeasure


def test_rouge_l_equals_rouge_score_on_long_texts_up_to_the_token_cap():
    import random

    from rouge_score import rouge_scorer

    from medbench.metrics.text import ROUGE_MAX_TOKENS

    stock = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    words = [
        "Heart", "size", "normal;", "lungs", "clear.", "Ünusual", "É-mark", "12mm", "opacities", "running", "ran",
        "isn't",
    ]
    rng = random.Random(3)
    for length in (300, 1500, ROUGE_MAX_TOKENS // 2):
        prediction = " ".join(rng.choices(words, k=length))
        reference = " ".join(rng.choices(words, k=length + 7))
        assert rouge_l(prediction, reference) == stock.score(reference, prediction)["rougeL"].fmeasure


def test_rouge_l_scores_texts_beyond_the_cap_on_their_first_tokens():
    from medbench.metrics.text import ROUGE_MAX_TOKENS, rouge_tokens

    head = " ".join(f"w{i}" for i in range(ROUGE_MAX_TOKENS))
    assert len(rouge_tokens(head + " tail" * 50_000)) == ROUGE_MAX_TOKENS
    assert rouge_l(head + " extra" * 50_000, head) == rouge_l(head, head) == 1.0


def test_bit_parallel_lcs_matches_the_dynamic_programme():
    import random

    from medbench.metrics.text import lcs_length

    def table(a, b):
        previous = [0] * (len(b) + 1)
        for x in a:
            current = [0]
            for j, y in enumerate(b, start=1):
                current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
            previous = current
        return previous[-1]

    rng = random.Random(11)
    for _ in range(400):
        a = rng.choices("abcde", k=rng.randint(0, 70))
        b = rng.choices("abcdef", k=rng.randint(0, 90))
        assert lcs_length(a, b) == lcs_length(b, a) == table(a, b)


def test_meteor_can_be_switched_off_for_quick_runs(monkeypatch):
    from medbench.lmms import report

    doc = {"id": "r1", "reference": "The heart is normal.", "facts": [], "source": "demo"}
    monkeypatch.setenv("MEDBENCH_METEOR", "off")
    assert "meteor" not in report.process_results(doc, ["The heart is normal."])
    monkeypatch.delenv("MEDBENCH_METEOR")
    assert ("meteor" in report.process_results(doc, ["The heart is normal."])) == text.java_available()
