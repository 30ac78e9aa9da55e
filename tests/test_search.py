"""Search over captions (lm.sampling.beam_search / greedy_search through CaptionDecoder.generate).

* beam width 1 is exactly greedy decoding (words and scores), on TensorFlow here and on JAX in a child process;
* a step function that never ends still gives max_length words;
* the returned score is the documented length-normalised one, sum log p / length ** length_penalty, and the
  penalty decides between a short and a long finished beam as it should;
* attention comes back as (batch, max_length, pixels) with rows that sum to 1 on the real steps.

The checks are plain functions so the JAX child can run the very same code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

EOS, BOS = 3, 2

# Toy vocabulary: 0 <pad>, 1 <unk>, 2 <bos>, 3 <eos>, 4 a, 5 b, 6 c, 7 d.
# Next-word probabilities depend on the previous word only. From <bos>, "a <eos>" has the higher *sum* of log
# probabilities (0.6 * 0.6 = 0.36) but "b c d <eos>" the higher *mean* (0.35 * 0.98^3 = 0.329 over 4 tokens).
_TABLE = {
    BOS: {4: 0.6, 5: 0.35, 6: 0.05},
    4: {EOS: 0.6, 6: 0.4},
    5: {6: 0.98, EOS: 0.02},
    6: {7: 0.98, EOS: 0.02},
    7: {EOS: 0.98, 7: 0.02},
    EOS: {EOS: 1.0},
}
VOCAB = 8


def toy_log_probs(table=_TABLE) -> np.ndarray:
    """(vocab, vocab) log p(next | previous): the table's probabilities, 1e-9 elsewhere, rows renormalised."""
    probs = np.full((VOCAB, VOCAB), 1e-9)
    for prev, row in table.items():
        for word, p in row.items():
            probs[prev, word] = p
    probs /= probs.sum(axis=1, keepdims=True)
    return np.log(probs).astype("float32")


def toy_step(log_table, pixels=5):
    """A step function for lm.sampling: log p(. | previous token) from a fixed table; the state counts steps and
    the 'attention' is a one-hot on pixel (step mod pixels), so real steps sum to 1."""
    from keras import ops
    table = ops.convert_to_tensor(log_table)

    def step(tokens, states, static):
        log_probs = ops.take(table, tokens, axis=0)  # (rows, vocab)
        count = states[0] + 1.0  # (rows, 1)
        position = ops.cast(ops.squeeze(count, -1), "int32") % pixels
        alpha = ops.one_hot(position, pixels)  # (rows, pixels)
        return log_probs, [count], alpha
    return step


def run_search(step, batch, method, beam_width=1, max_length=6, length_penalty=1.0, early_exit=True):
    from keras import ops
    from lm.sampling import beam_search, greedy_search
    states = [ops.zeros((batch, 1))]
    static = [ops.zeros((batch, 2))]
    if method == "beam":
        out = beam_search(step, states, static, batch, beam_width, max_length, BOS, EOS, length_penalty,
                          early_exit=early_exit)
    else:
        out = greedy_search(step, states, static, batch, max_length, BOS, EOS, early_exit=early_exit)
    return tuple(None if x is None else np.asarray(x) for x in out)


def sequence_log_prob(log_table, words) -> tuple[float, int]:
    """(sum of log p over the words up to and including the first <eos>, that length)."""
    total, prev, length = 0.0, BOS, 0
    for w in words:
        total += float(log_table[prev, w])
        length += 1
        if w == EOS:
            break
        prev = w
    return total, length


def tiny_decoder(attention=True, eos_bias=0.0, seed=0):
    import keras
    from keras import ops
    from captioner.decoder import CaptionDecoder
    keras.utils.set_random_seed(seed)
    decoder = CaptionDecoder(vocab_size=12, feature_dim=6, embed_dim=8, units=16, attention_dim=8, dropout=0.0,
                             attention=attention, alpha_c=0.0)
    decoder((ops.zeros((1, 9, 6)), ops.ones((1, 3), "int32")))
    if eos_bias:
        bias = np.asarray(decoder.head.bias).copy()
        bias[EOS] += eos_bias
        decoder.head.bias.assign(bias)
    return decoder


def features(batch=3, pixels=9, channels=6, seed=1):
    return np.random.default_rng(seed).normal(size=(batch, pixels, channels)).astype("float32")


# ---- checks (run in this process and, for JAX, in a child) --------------------------------------------------------
def check_beam_width_one_is_greedy(quick=False):
    """Greedy vs beam width 1 on a random decoder; eos_bias 2.5 makes most rows end early (early exit, padding)."""
    configs = [(True, 2.5, True)] if quick else \
        [(True, 0.0, True), (True, 2.5, True), (True, 2.5, False), (False, 0.0, True), (False, 2.5, False)]
    for attention, eos_bias, early_exit in configs:
        decoder = tiny_decoder(attention, eos_bias)
        feats = features()
        gw, gs, ga = (np.asarray(x) for x in decoder.generate(feats, method="greedy", max_length=7,
                                                              early_exit=early_exit))
        bw, bs, ba = (np.asarray(x) for x in decoder.generate(feats, method="beam", beam_width=1, max_length=7,
                                                              early_exit=early_exit))
        np.testing.assert_array_equal(bw, gw)
        np.testing.assert_allclose(bs, gs, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ba, ga, atol=1e-6)
        assert gw.shape == (3, 7) and gs.shape == (3,) and ga.shape == (3, 7, 9)
        if eos_bias:
            assert (gw == EOS).any()  # the early-ending path is exercised


def check_never_ending_search_gives_max_length_words():
    # <eos> only ever gets 1e-9. Three words, so a beam of 3 has three real extensions at the first step (with two,
    # the third best extension would be the 1e-9 <eos>, which plain beam search keeps too).
    never = {prev: {4: 0.6, 5: 0.25, 6: 0.15} for prev in (BOS, 4, 5, 6)}
    log_table = toy_log_probs(never)
    step = toy_step(log_table)
    for method, width in (("greedy", 1), ("beam", 1), ("beam", 3)):
        words, scores, alphas = run_search(step, batch=2, method=method, beam_width=width, max_length=6)
        assert words.shape == (2, 6), (method, width)
        assert not (words == EOS).any(), (method, width)
        total, length = sequence_log_prob(log_table, words[0])
        assert length == 6
        np.testing.assert_allclose(scores[0], total / 6, rtol=1e-5)  # normalised with length max_length
        np.testing.assert_allclose(alphas.sum(-1), 1.0, atol=1e-6)  # every step is real
    from lm.vocab import Vocabulary
    vocab = Vocabulary(["a", "b", "c", "d"])
    assert vocab.decode(words[0]) == ["a"] * 6  # 0.6 > 0.25 at every step: six words, no <eos>


def check_length_normalisation():
    log_table = toy_log_probs()
    step = toy_step(log_table)
    short, long = [4, EOS], [5, 6, 7, EOS]
    s_sum, s_len = sequence_log_prob(log_table, short)
    l_sum, l_len = sequence_log_prob(log_table, long)
    assert s_sum > l_sum and s_sum / s_len < l_sum / l_len  # the premise of the table
    for penalty, expected, (total, length) in ((1.0, long, (l_sum, l_len)), (0.0, short, (s_sum, s_len)),
                                                (0.5, long, (l_sum, l_len))):
        for early_exit in (True, False):
            words, scores, alphas = run_search(step, batch=2, method="beam", beam_width=2, max_length=6,
                                               length_penalty=penalty, early_exit=early_exit)
            assert words.shape == (2, 6) and alphas.shape == (2, 6, 5)
            for row in range(2):
                assert list(words[row, : len(expected)]) == expected, (penalty, words[row])
                assert (words[row, len(expected):] == EOS).all()  # after <eos> only <eos>
                np.testing.assert_allclose(scores[row], total / length ** penalty, rtol=1e-5)
                # the attention of the chosen beam's real steps: the one-hot of each step's count
                for t in range(length):
                    np.testing.assert_allclose(alphas[row, t], np.eye(5)[(t + 1) % 5], atol=1e-6)
    assert math.isclose(l_sum / l_len ** 0.5, max(l_sum / l_len ** 0.5, s_sum / s_len ** 0.5))
    # Greedy takes "a" first and then ends: score = mean log p per token (its documented length_penalty 1).
    words, scores, _ = run_search(step, batch=1, method="greedy", max_length=6)
    assert list(words[0, :2]) == short
    np.testing.assert_allclose(scores[0], s_sum / s_len, rtol=1e-5)


def check_attention_shape_and_rows():
    for eos_bias in (0.0, 2.5):
        decoder = tiny_decoder(True, eos_bias)
        feats = features(batch=4)
        for kwargs in ({"method": "greedy"}, {"method": "beam", "beam_width": 3},
                       {"method": "beam", "beam_width": 3, "early_exit": False}):
            words, scores, alphas = (np.asarray(x) for x in decoder.generate(feats, max_length=8, **kwargs))
            assert words.shape == (4, 8) and scores.shape == (4,) and alphas.shape == (4, 8, 9), kwargs
            assert np.isfinite(scores).all() and (scores <= 0).all()
            for row in range(4):
                ends = np.flatnonzero(words[row] == EOS)
                real = ends[0] + 1 if len(ends) else 8  # the words and the <eos> step
                np.testing.assert_allclose(alphas[row, :real].sum(-1), 1.0, atol=1e-5)
                assert (alphas[row, :real] >= 0).all()
                assert (words[row, real:] == EOS).all()


# ---- tests --------------------------------------------------------------------------------------------------------
def test_beam_width_one_is_greedy():
    check_beam_width_one_is_greedy()


def test_never_ending_search_gives_max_length_words():
    check_never_ending_search_gives_max_length_words()


def test_length_normalisation():
    check_length_normalisation()


def test_attention_shape_and_rows():
    check_attention_shape_and_rows()


def test_no_attention_decoder_returns_zero_attention():
    decoder = tiny_decoder(attention=False)
    words, scores, alphas = (np.asarray(x) for x in decoder.generate(features(), beam_width=3, max_length=5))
    assert alphas.shape == (3, 5, 9) and not alphas.any()


def test_search_checks_on_jax(run_python):
    """Width 1 = greedy and the length normalisation under KERAS_BACKEND=jax, in a child process (the backend is
    chosen at import). Eager JAX dispatches op by op, so the child runs the quick variants only."""
    import jax  # noqa: F401  (an install dependency: a broken JAX fails here, it is not skipped)
    code = ("import sys; sys.path.insert(0, 'tests'); import keras; assert keras.backend.backend() == 'jax'; "
            "import test_search as t; t.check_beam_width_one_is_greedy(quick=True); t.check_length_normalisation(); "
            "print('OK')")
    proc = run_python(code, "jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


# ---- the pool of finished hypotheses, n-best, repeats, minimum length (lm.sampling.beam_search) -------------------
# A larger toy vocabulary: 4 a, 5 b, 6 c, 7 d, 8 e, 9 f, 10 g.
_POOL_TABLE = {
    BOS: {4: 0.5, 5: 0.3, 6: 0.2},
    4: {EOS: 0.5, 6: 0.5 - 1e-3, 10: 1e-3},  # "a <eos>" .25 and "a c ..." .25 - beam 2 keeps "a c", drops "b"
    6: {EOS: 0.99, 10: 0.01},  # "a c <eos>" .247
    5: {7: 0.55, 10: 0.45},  # "b d" .165
    7: {8: 0.99, EOS: 0.01},
    8: {9: 0.99, EOS: 0.01},
    9: {EOS: 0.99, 10: 0.01},  # "b d e f <eos>" .160: the worst raw sum, the best mean
    10: {EOS: 1.0},
}


def table_log_probs(table, vocab=11) -> np.ndarray:
    probs = np.full((vocab, vocab), 1e-9)
    for prev, row in table.items():
        for word, p in row.items():
            probs[prev, word] = p
    probs /= probs.sum(axis=1, keepdims=True)
    return np.log(probs).astype("float32")


def search(step, method="beam", batch=2, **kwargs):
    from keras import ops
    from lm.sampling import beam_search, greedy_search
    states, static = [ops.zeros((batch, 1))], [ops.zeros((batch, 2))]
    max_length = kwargs.pop("max_length", 8)
    if method == "beam":
        width = kwargs.pop("beam_width")
        out = beam_search(step, states, static, batch, width, max_length, BOS, EOS, **kwargs)
    else:
        out = greedy_search(step, states, static, batch, max_length, BOS, EOS, **kwargs)
    return tuple(None if x is None else np.asarray(x) for x in out)


def _ngrams(words, n):
    words = list(words[: list(words).index(EOS)] if EOS in list(words) else words)
    return [tuple(words[i: i + n]) for i in range(len(words) - n + 1)]


def test_pool_keeps_the_longer_hypothesis_with_the_better_normalised_score():
    """"b d e f <eos>" has the worst raw sum of the finished captions but the best mean log p. Beam 2 with finished
    beams in their slots would end with "a <eos>" and "a c <eos>" (both finished by step 3, "b d" pruned at step 2);
    the pool keeps "b d" live and returns it, with its exact score. Also in a traced graph (no early exit)."""
    log_table = table_log_probs(_POOL_TABLE)
    step = toy_step(log_table)
    sums = {name: sequence_log_prob(log_table, words) for name, words in
            (("short", [4, EOS]), ("mid", [4, 6, EOS]), ("long", [5, 7, 8, 9, EOS]))}
    assert sums["long"][0] < min(sums["short"][0], sums["mid"][0])  # the premise: worst raw sum ...
    assert sums["long"][0] / 5 > max(sums["short"][0] / 2, sums["mid"][0] / 3)  # ... best mean
    total, length = sums["long"]
    words, scores, alphas = search(step, beam_width=2, length_penalty=1.0)
    for row in range(2):
        assert list(words[row, :5]) == [5, 7, 8, 9, EOS] and (words[row, 5:] == EOS).all()
        np.testing.assert_allclose(scores[row], total / length, rtol=1e-5)
        for t in range(5):
            np.testing.assert_allclose(alphas[row, t], np.eye(5)[(t + 1) % 5], atol=1e-6)
    import keras
    if keras.backend.backend() == "tensorflow":  # the exported graph's way: traced, run to max_length
        import tensorflow as tf
        from keras import ops
        from lm.sampling import beam_search
        graph = tf.function(lambda: beam_search(step, [ops.zeros((2, 1))], [ops.zeros((2, 2))], 2, 2, 8, BOS, EOS,
                                                1.0, early_exit=False))
        traced = [np.asarray(x) for x in graph()]
        np.testing.assert_array_equal(traced[0], words)
        np.testing.assert_allclose(traced[1], scores, rtol=1e-6)
    # length_penalty 0 ranks by the raw sum: "a <eos>" (.25 > .247)
    words, scores, _ = search(step, beam_width=2, length_penalty=0.0)
    assert list(words[0, :2]) == [4, EOS]


def test_num_captions_returns_the_n_best_finished_captions_in_order():
    log_table = table_log_probs(_POOL_TABLE)
    words, scores, alphas = search(toy_step(log_table), beam_width=3, num_captions=3)
    assert words.shape == (2, 3, 8) and scores.shape == (2, 3) and alphas.shape == (2, 3, 8, 5)
    assert (np.diff(scores[0]) <= 0).all()  # best first
    seen = set()
    for n in range(3):
        total, length = sequence_log_prob(log_table, words[0, n])
        assert words[0, n, length - 1] == EOS  # all three finished
        np.testing.assert_allclose(scores[0, n], total / length, rtol=1e-5)
        seen.add(tuple(words[0, n, :length]))
    assert len(seen) == 3 and (5, 7, 8, 9, EOS) in seen
    np.testing.assert_array_equal(words[1], words[0])
    with pytest.raises(ValueError, match="num_captions"):
        search(toy_step(log_table), beam_width=2, num_captions=3)


def test_block_repeats_never_emits_a_repeated_ngram():
    loop = {BOS: {4: 0.6, 5: 0.4}, 4: {5: 0.8, 6: 0.1, EOS: 0.1}, 5: {4: 0.8, 7: 0.1, EOS: 0.1},
            6: {7: 0.5, EOS: 0.5}, 7: {6: 0.5, EOS: 0.5}}  # loves "a b a b a b ..."
    step = toy_step(table_log_probs(loop))
    for method, kwargs in (("greedy", {}), ("beam", {"beam_width": 3})):
        free, _, _ = search(step, method, max_length=10, **kwargs)
        assert len(set(_ngrams(free[0], 3))) < len(_ngrams(free[0], 3)), free[0]  # without blocking it loops
        for n in (3, 2, 1):
            words, scores, _ = search(step, method, max_length=10, block_repeats=n, **kwargs)
            for row in words:
                grams = _ngrams(row, n)
                assert len(grams) == len(set(grams)), (method, n, row)
            assert np.isfinite(scores).all() and (scores > -1e3).all()


def test_min_length_holds_back_eos():
    early = {BOS: {4: 0.9, 5: 0.1}, 4: {EOS: 0.9, 5: 0.1}, 5: {EOS: 0.6, 4: 0.4}}
    log_table = table_log_probs(early)
    step = toy_step(log_table)
    for method, kwargs in (("greedy", {}), ("beam", {"beam_width": 3})):
        words, _, _ = search(step, method, **kwargs)
        assert list(words[0]).index(EOS) == 1  # "a <eos>" without the constraint
        words, scores, _ = search(step, method, min_length=3, **kwargs)
        for row in range(2):
            ends = list(words[row]).index(EOS)
            assert ends >= 3, (method, words[row])
            total, length = sequence_log_prob(log_table, words[row])
            np.testing.assert_allclose(scores[row], total / length, rtol=1e-5)
