"""Tests for lm.ngram.KneserNeyLM: normalization, modified-KN specifics, persistence, input checks. Seconds."""

from __future__ import annotations

import collections
import math
import random

import numpy as np
import pytest

from lm.errors import UserError
from lm.ngram import KneserNeyLM, estimate_discounts
from lm.vocab import BOS, EOS, Vocabulary

# A corpus whose bigram count-of-counts are easy to do by hand (see test_discounts_match_hand_computed_values).
HAND = [["a", "b"]] * 4 + [["c"]] * 3 + [["d", "e"]] * 2 + [["f", "g"], ["h"]]


def toy_corpus(n: int = 300, seed: int = 0) -> list[list[str]]:
    """Sentences from a tiny grammar: enough repetition that every order has n1..n4 > 0."""
    rng = random.Random(seed)
    subjects, verbs, objects = ["the cat", "a dog", "the red bird", "my friend"], ["sees", "likes", "eats"], [
        "the fish", "a ball", "some bread", "the small mouse", "it"]
    out = []
    for _ in range(n):
        s = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}"
        if rng.random() < 0.3:
            s += f" and {rng.choice(verbs)} {rng.choice(objects)}"
        out.append(s.split())
    return out


def gram_count(model: KneserNeyLM, tokens: list[str]) -> int:
    """Adjusted count stored for an n-gram given as tokens."""
    index = model._gram_index([model.vocab.token_to_id(t) for t in tokens])
    assert index >= 0, tokens
    return int(model.counts[len(tokens)][index])


def reference_logprob(train: list[list[str]], order: int, sentence: list[str]) -> float:
    """Straightforward dict-based interpolated modified KN, written from Chen & Goodman independently of the
    vectorized implementation: raw counts at the top order, continuation counts below (raw for <bos>-initial
    n-grams), per-order D1/D2/D3+, unigrams interpolated with a uniform over the predictable words."""
    vocab = Vocabulary.build(train)
    raw = collections.Counter()
    for s in train:
        seq = [BOS] + s + [EOS]
        for i in range(1, len(seq)):
            for k in range(1, order + 1):
                if i - k + 1 >= 0:
                    raw[tuple(seq[i - k + 1 : i + 1])] += 1
    lefts = collections.defaultdict(set)  # n-gram -> the distinct words seen just before it
    for gram in raw:
        if len(gram) >= 2:
            lefts[gram[1:]].add(gram[0])
    adjusted = {g: c if len(g) == order or g[0] == BOS else len(lefts[g]) for g, c in raw.items()}
    discounts = {}
    for k in range(1, order + 1):
        counts = np.array([c for g, c in adjusted.items() if len(g) == k and c > 0])
        discounts[k] = estimate_discounts(counts)[0]  # the formula itself is checked by hand in another test

    def d(k, c):
        return 0.0 if c == 0 else discounts[k][min(c, 3) - 1]

    by_context = collections.defaultdict(list)
    for g, c in adjusted.items():
        if c > 0:
            by_context[g[:-1]].append(c)
    n_predictable = len(vocab) - 2  # all but <pad> and <bos>

    def prob(history: tuple, word: str) -> float:
        if not history:
            cs = by_context[()]
            total = sum(cs)
            gamma = sum(d(1, c) for c in cs) / total
            c = adjusted.get((word,), 0)
            return (c - d(1, c)) / total + gamma / n_predictable
        lower = prob(history[1:], word)
        cs = by_context.get(history)
        if not cs:
            return lower
        k = len(history) + 1
        total = sum(cs)
        gamma = sum(d(k, c) for c in cs) / total
        c = adjusted.get(history + (word,), 0)
        return (c - d(k, c)) / total + gamma * lower

    seq = [BOS] + [w if w in vocab else "<unk>" for w in sentence] + [EOS]
    return sum(math.log(prob(tuple(seq[max(0, i - order + 1) : i]), seq[i])) for i in range(1, len(seq)))


# ---- modified Kneser-Ney specifics ------------------------------------------------------------------------------
def test_discounts_match_hand_computed_values():
    # Bigram counts of HAND: 4 x3 (<s> a, a b, b </s>), 3 x2 (<s> c, c </s>), 2 x3 (<s> d, d e, e </s>),
    # 1 x5 (<s> f, f g, g </s>, <s> h, h </s>)  ->  n1..n4 = 5, 3, 2, 3;  Y = 5 / (5 + 2*3) = 5/11;
    # D1 = 1 - 2Y*3/5 = 5/11,  D2 = 2 - 3Y*2/3 = 12/11,  D3+ = 3 - 4Y*3/2 = 3/11.
    model = KneserNeyLM(order=2).fit(HAND)
    np.testing.assert_allclose(model.discounts[2], [5 / 11, 12 / 11, 3 / 11], rtol=1e-12)
    # Unigram continuation counts: </s> follows b, c, e, g, h -> 5; every word has one left neighbour -> 1.
    assert model.counts[1][model.vocab.eos_id] == 5
    assert all(model.counts[1][model.vocab.token_to_id(w)] == 1 for w in "abcdefgh")
    assert model.counts[1][model.vocab.bos_id] == 0  # <bos> is context only
    # No unigram has count 2, so the C&G estimate is undefined there and KenLM's fallback discounts apply.
    np.testing.assert_allclose(model.discounts[1], [0.5, 1.0, 1.5])


def test_lower_orders_use_continuation_counts_except_after_bos():
    model = KneserNeyLM(order=3).fit(HAND)
    assert gram_count(model, ["a", "b", EOS]) == 4  # highest order: raw count
    assert gram_count(model, [BOS, "a"]) == 4  # lower order starting with <bos>: raw count (no left context)
    assert gram_count(model, ["a", "b"]) == 1  # lower order otherwise: distinct left neighbours (<bos> only)
    assert gram_count(model, ["b", EOS]) == 1


def test_estimate_discounts_formula_and_fallback():
    d, fell_back = estimate_discounts(np.array([1, 1, 1, 1, 2, 2, 3, 4, 7]))  # n1..n4 = 4, 2, 1, 1
    assert not fell_back
    np.testing.assert_allclose(d, [1 - 2 * 0.5 * 2 / 4, 2 - 3 * 0.5 * 1 / 2, 3 - 4 * 0.5 * 1 / 1])
    assert estimate_discounts(np.array([1, 1, 2]))[1]  # n3 = n4 = 0 -> fallback


@pytest.mark.parametrize("order", [2, 3, 4])
def test_matches_straightforward_reference_implementation(order):
    train = toy_corpus(120, seed=1)
    model = KneserNeyLM(order=order).fit(train)
    for sentence in [["the", "cat", "eats", "a", "ball"], ["a", "dog", "likes", "zebras"], ["it"], []]:
        logp, n = model.logprob_sentence(sentence)
        assert n == len(sentence) + 1
        assert logp == pytest.approx(reference_logprob(train, order, sentence), rel=1e-9)


# ---- normalization and sanity -----------------------------------------------------------------------------------
@pytest.mark.parametrize("order", [2, 3, 5])
def test_next_distribution_sums_to_one_and_agrees_with_scoring(order):
    model = KneserNeyLM(order=order).fit(toy_corpus())
    vocab = model.vocab
    for context in [[], ["the"], ["the", "cat"], ["the", "cat", "sees", "the"], ["never", "seen"], ["<bos>", "a"]]:
        p = model.next_distribution(context)
        assert p.shape == (len(vocab),)
        assert p.sum() == pytest.approx(1.0, abs=1e-12)
        assert p[vocab.pad_id] == 0 and p[vocab.bos_id] == 0 and p.min() >= 0
    # The sampling path and the scoring path give the same probabilities.
    sentence = ["the", "cat", "sees", "the", "small", "mouse"]
    logp, _ = model.logprob_sentence(sentence)
    expected = sum(
        math.log(model.next_distribution(sentence[:i])[vocab.token_to_id(w)])
        for i, w in enumerate(sentence + [EOS])
    )
    assert logp == pytest.approx(expected, rel=1e-10)


def test_training_text_scores_better_than_shuffled_text():
    train = toy_corpus()
    model = KneserNeyLM(order=3).fit(train)
    rng = random.Random(0)
    shuffled = [rng.sample(s, len(s)) for s in train]
    ppl_train, n_train = model.perplexity(train)
    ppl_shuffled, n_shuffled = model.perplexity(shuffled)
    assert n_train == n_shuffled == sum(len(s) + 1 for s in train)
    assert ppl_train < ppl_shuffled


def test_unknown_words_score_as_unk_and_given_vocab_is_kept():
    vocab = Vocabulary(["the", "cat", "<unk>"])
    model = KneserNeyLM(order=2, vocab=vocab).fit([["the", "cat", "purrs"], ["the", "<unk>"]])
    assert model.vocab is vocab
    assert model.logprob_sentence(["the", "dragon"]) == model.logprob_sentence(["the", "<unk>"])


# ---- persistence and input checks -------------------------------------------------------------------------------
def test_save_load_gives_identical_scores(tmp_path):
    train = toy_corpus()
    model = KneserNeyLM(order=4).fit(train)
    model.save(tmp_path)
    loaded = KneserNeyLM.load(tmp_path)
    assert loaded.order == 4 and loaded.vocab == model.vocab
    assert loaded.perplexity(train[:50]) == model.perplexity(train[:50])
    np.testing.assert_array_equal(loaded.next_distribution(["the"]), model.next_distribution(["the"]))


@pytest.mark.parametrize("order", [1, 6, 0, 2.5, True])
def test_order_outside_2_to_5_is_rejected(order):
    with pytest.raises(ValueError):
        KneserNeyLM(order=order)


def test_bad_input_gives_user_errors(tmp_path):
    with pytest.raises(UserError):
        KneserNeyLM(order=3).fit([[], []])
    with pytest.raises(UserError):
        KneserNeyLM.load(tmp_path)
    with pytest.raises(RuntimeError):
        KneserNeyLM(order=3).perplexity([["a"]])
