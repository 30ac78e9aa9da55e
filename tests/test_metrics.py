"""Caption metrics (pycocoevalcap wrapper) and the official VQA normalisation and accuracy."""

import math
import shutil

import pytest

from captioner import metrics
from captioner.metrics import caption_scores, normalize_answer, vqa_accuracy
from lm.errors import UserError

REFS = {
    "1": ["A small red circle above a large blue square.", "a large blue square below a small red circle"],
    "2": ["a large green triangle", "there is a large green triangle"],
    "3": ["two dogs play in the grass", "dogs are playing outside"],
}


def test_identical_captions_score_one():
    hyps = {k: v[0] for k, v in REFS.items()}
    s = caption_scores(REFS, hyps, meteor=False)
    for n in range(1, 5):
        assert s[f"Bleu_{n}"] == pytest.approx(1.0, abs=1e-6)
    assert s["ROUGE_L"] == pytest.approx(1.0)
    assert s["exact_match"] == 1.0 and s["nltk_corpus_bleu4"] == pytest.approx(1.0)
    assert s["CIDEr"] > 1.0 and s["METEOR"] is None and s["count"] == 3


def test_known_small_case():
    # "a cat" against "a cat sits": all unigrams and the bigram match, brevity penalty exp(1 - 3/2).
    s = caption_scores({"x": ["a cat sits"], "y": ["a dog"]}, {"x": "a cat", "y": "a dog"}, meteor=False)
    bp = math.exp(1 - 5 / 4)  # corpus level: hypothesis length 4, closest reference length 5
    assert s["Bleu_1"] == pytest.approx(bp, abs=1e-6)
    assert s["Bleu_2"] == pytest.approx(bp, abs=1e-6)
    assert s["exact_match"] == 0.5
    assert set(s) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "exact_match",
                      "nltk_corpus_bleu4", "count"}


def test_only_hypothesis_ids_are_scored_and_empty_hypothesis_is_fine():
    s = caption_scores(REFS, {"1": "a small red circle", "3": ""}, meteor=False)
    assert s["count"] == 2 and 0 < s["Bleu_1"] < 1 and s["exact_match"] == 0.0


def test_caption_errors():
    with pytest.raises(UserError, match="no reference"):
        caption_scores(REFS, {"9": "a cat"}, meteor=False)
    with pytest.raises(UserError, match="empty"):
        caption_scores(REFS, {}, meteor=False)


def test_without_java_meteor_is_none(monkeypatch):
    monkeypatch.setattr(metrics, "java_available", lambda: False)
    with pytest.warns(UserWarning, match="java not found"):
        s = caption_scores(REFS, {k: v[0] for k, v in REFS.items()})
    assert s["METEOR"] is None and s["Bleu_4"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java")
def test_meteor_with_java():
    s = caption_scores(REFS, {"1": REFS["1"][1], "2": "a large green triangle", "3": "a cat sleeps"})
    assert 0.3 < s["METEOR"] < 1.0


@pytest.mark.parametrize("raw, expected", [
    ("Two", "2"), ("the dog.", "dog"), ("yes!", "yes"), ("Yes", "yes"), ("an apple", "apple"),
    ("  Ten\n", "10"), ("none", "0"), ("2.5", "2.5"), ("1,000", "1000"), ("dont", "don't"), ("t-shirt", "t shirt"),
    ("red, white", "red white"), ("A Red Bus", "red bus"), ("3 dogs.", "3 dogs"),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_official_accuracy_values():
    def acc(k):  # the prediction given by k of the 10 annotators
        return vqa_accuracy(["cat"], [["cat"] * k + ["dog"] * (10 - k)])["accuracy"]

    # leave-one-out mean of min(1, matches among the other 9 / 3):
    # k=2: (8 * 2/3 + 2 * 1/3) / 10 = 0.6;  k=3: (7 * 1 + 3 * 2/3) / 10 = 0.9;  k>=4: 1.0
    assert acc(0) == 0.0
    assert acc(1) == pytest.approx(0.3)
    assert acc(2) == pytest.approx(0.6)
    assert acc(3) == pytest.approx(0.9)
    assert acc(4) == pytest.approx(1.0) and acc(10) == pytest.approx(1.0)


def test_accuracy_normalises_prediction_and_groups_types():
    answers = [["2"] * 10, ["yes"] * 10, ["red"], ["Two", "2"]]
    r = vqa_accuracy(["Two.", "no", "Red!", "two"], answers, ["number", "yes/no", "other", None])
    assert r["count"] == 4
    assert r["accuracy"] == pytest.approx(3 / 4)
    assert r["per_type"] == {"number": 1.0, "other": 1.0, "yes/no": 0.0}


def test_official_reference_quirk_and_full_normalisation():
    refs = [["Two"] * 10]  # official: agreeing references are compared as written
    assert vqa_accuracy(["two"], refs)["accuracy"] == 0.0
    assert vqa_accuracy(["two"], refs, official=False)["accuracy"] == 1.0


def test_accuracy_errors():
    with pytest.raises(ValueError):
        vqa_accuracy(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError):
        vqa_accuracy(["a"], [[]])
    assert vqa_accuracy([], [])["count"] == 0
