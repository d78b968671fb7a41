"""Golden tests for ``medbench.metrics.facts.fact_scores`` in both modes."""

from __future__ import annotations

import json
import random

import pytest

from medbench.metrics.facts import FactScores, fact_scores, macro_average, parse_labels

AUTHORS = {"case_sensitive": True}

# Taken from the shape of the authors' stored judge outputs: a JSON list of "k. Label" strings.
CLEAN = json.dumps(["1. Entailment", "2. Partial Entailment", "3. Neutral", "4. Contradiction"])


class TestAuthorsMode:
    def test_clean_output(self):
        # E=1, PE=1 -> (1 + 0.5)/4 = 0.375; C=1 -> 0.25
        assert fact_scores(CLEAN, 4, **AUTHORS) == FactScores(0.375, 0.25, True)

    def test_rounds_to_four_decimals(self):
        out = json.dumps(["1. Entailment", "2. Neutral", "3. Contradiction"])
        # 1/3 -> 0.3333 after their round(x, 4)
        assert fact_scores(out, 3, **AUTHORS) == FactScores(0.3333, 0.3333, True)
        out = json.dumps(["1. Partial Entailment"] * 2 + ["2. Neutral"] * 4)
        assert fact_scores(out, 6, **AUTHORS).completeness == 0.1667

    def test_lower_case_labels_silently_count_as_neutral(self):
        out = json.dumps(["1. contradiction", "2. entailment", "3. Partial entailment"])
        assert fact_scores(out, 3, **AUTHORS) == FactScores(0.0, 0.0, True)

    def test_unparseable_is_zero_zero(self):
        assert fact_scores("The labels are: Entailment, Neutral", 2, **AUTHORS) == FactScores(0.0, 0.0, False)
        assert fact_scores(None, 2, **AUTHORS) == FactScores(0.0, 0.0, False)
        # Their own few-shot example has no commas between items, so a judge copying it is unparseable.
        assert fact_scores('[\n"1. Entailment"\n"2. Neutral"\n]', 2, **AUTHORS) == FactScores(0.0, 0.0, False)
        # A code fence is not JSON either.
        fenced = "```json\n" + CLEAN + "\n```"
        assert fact_scores(fenced, 4, **AUTHORS) == FactScores(0.0, 0.0, False)

    def test_missing_labels_count_as_neutral(self):
        out = json.dumps(["1. Entailment", "2. Contradiction"])
        assert fact_scores(out, 4, **AUTHORS) == FactScores(0.25, 0.25, True)

    def test_extra_labels_are_counted_past_one(self):
        out = json.dumps(["1. Entailment", "2. Entailment", "3. Entailment"])
        assert fact_scores(out, 2, **AUTHORS) == FactScores(1.5, 0.0, True)

    def test_zero_facts(self):
        assert fact_scores(CLEAN, 0, **AUTHORS) == FactScores(0.0, 0.0, True)
        assert fact_scores("garbage", 0, **AUTHORS) == FactScores(0.0, 0.0, False)

    def test_prefix_rule_is_exactly_theirs(self):
        # Only a leading "k." is stripped; "k)" and a leading space are not, and non-strings are skipped.
        out = json.dumps(["1) Entailment", " 2. Entailment", "Entailment", "3.Contradiction", 4, None])
        assert fact_scores(out, 4, **AUTHORS) == FactScores(0.25, 0.25, True)
        # Trailing whitespace is stripped (their .strip()), trailing punctuation is not.
        out = json.dumps(["1. Entailment  ", "2. Entailment."])
        assert fact_scores(out, 2, **AUTHORS) == FactScores(0.5, 0.0, True)

    def test_non_list_json(self):
        # json.loads of a dict: their loop walks the keys.
        out = json.dumps({"1. Contradiction": "x", "2. Entailment": "y"})
        assert fact_scores(out, 2, **AUTHORS) == FactScores(0.5, 0.5, False)
        # A JSON string: the loop walks characters, none of which is a label.
        assert fact_scores(json.dumps("Entailment"), 1, **AUTHORS) == FactScores(0.0, 0.0, False)
        # Numbers/null crash their loop; we report unparsed 0/0.
        assert fact_scores("3", 1, **AUTHORS) == FactScores(0.0, 0.0, False)
        assert fact_scores("null", 1, **AUTHORS) == FactScores(0.0, 0.0, False)

    def test_macro_average_keeps_unparsed_zeros(self):
        outs = [CLEAN, "garbage", json.dumps(["1. Entailment"])]
        values = [fact_scores(o, n, **AUTHORS).completeness for o, n in zip(outs, [4, 3, 1], strict=True)]
        assert macro_average(values) == round((0.375 + 0.0 + 1.0) / 3, 4) == 0.4583

    def test_matches_an_independent_restatement_on_random_inputs(self):
        """Randomised cross-check against the published rules restated from the paper's description."""

        def restated(text, n):
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                data = []
            e = pe = c = 0
            for item in data if isinstance(data, list) else []:
                if isinstance(item, str):
                    head, sep, rest = item.partition(".")
                    label = rest.lstrip() if sep and head.isdigit() and head.isascii() else item
                    label = label.strip()
                    e += label == "Entailment"
                    pe += label == "Partial Entailment"
                    c += label == "Contradiction"
            if n == 0:
                return 0.0, 0.0
            return round((e + 0.5 * pe) / n, 4), round(c / n, 4)

        rng = random.Random(7)
        vocab = ["Entailment", "Partial Entailment", "Neutral", "Contradiction", "contradiction", "entailment"]
        for _ in range(2000):
            items = [f"{i + 1}. {rng.choice(vocab)}" if rng.random() < 0.8 else rng.choice(vocab) for i in range(rng.randint(0, 9))]
            text = json.dumps(items) if rng.random() < 0.9 else "not json " + str(items)
            n = rng.randint(0, 9)
            got = fact_scores(text, n, **AUTHORS)
            assert (got.completeness, got.hallucination) == restated(text, n)


class TestTolerantMode:
    def test_clean_output_agrees_with_authors_up_to_rounding(self):
        assert fact_scores(CLEAN, 4) == FactScores(0.375, 0.25, True)
        out = json.dumps(["1. Entailment", "2. Neutral", "3. Contradiction"])
        got = fact_scores(out, 3)
        assert got.parsed and got.completeness == pytest.approx(1 / 3) and got.hallucination == pytest.approx(1 / 3)

    def test_case_insensitive(self):
        out = json.dumps(["1. contradiction", "2. ENTAILMENT", "3. partial entailment"])
        assert fact_scores(out, 3) == FactScores(0.5, pytest.approx(1 / 3), True)

    @pytest.mark.parametrize(
        "text",
        [
            "```json\n" + CLEAN + "\n```",
            "Here are the labels:\n" + CLEAN + "\nLet me know if you need more.",
            '[\n"1. Entailment"\n"2. Partial Entailment"\n"3. Neutral"\n"4. Contradiction"\n]',
            "1. Entailment\n2. Partial Entailment\n3. Neutral\n4. Contradiction",
            "1) **Entailment**\n2) partial-entailment\n3) Neutral.\n4) CONTRADICTION",
            json.dumps(["Entailment", "Partial_Entailment", "neutral", "Contradiction"]),
            json.dumps([{"fact": 1, "label": "Entailment"}, {"fact": 2, "label": "Partial Entailment"},
                        {"fact": 3, "label": "Neutral"}, {"fact": 4, "label": "Contradiction"}]),
        ],
    )
    def test_formatting_drift(self, text):
        assert fact_scores(text, 4) == FactScores(0.375, 0.25, True)

    @pytest.mark.parametrize("text", [None, "", "   ", "I cannot determine this.", "[1, 2, 3, 4]",
                                      json.dumps(["1. Entailment", "2. Maybe", "3. Neutral", "4. Neutral"])])
    def test_unreadable_is_unscored(self, text):
        assert fact_scores(text, 4) == FactScores(0.0, 0.0, False)

    def test_wrong_label_count_is_unscored(self):
        assert not fact_scores(json.dumps(["1. Entailment"] * 3), 4).parsed
        assert not fact_scores(json.dumps(["1. Entailment"] * 5), 4).parsed

    def test_zero_facts_is_unscored(self):
        assert fact_scores("[]", 0) == FactScores(0.0, 0.0, False)

    def test_normal_is_not_neutral_and_prose_is_not_a_label(self):
        assert parse_labels(json.dumps(["1. Normal"])) is None
        assert parse_labels("The answer is entailment because the premise says so.") is None

    def test_parse_labels_canonicalises(self):
        assert parse_labels('["1. partial entailment", "2. neutral"]') == ["Partial Entailment", "Neutral"]
