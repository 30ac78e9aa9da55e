"""Search and sampling: the one module that picks next tokens, for the LM and the caption decoder alike.

* `sample_next` / `filter_logits_np`: host-side choice of one next token (greedy, temperature, top-k, top-p) for
  interactive generation.
* `filter_logits`, `beam_search`, `greedy_search`, `sample_search` (keras.ops, batched): search over any step
  function, written with `keras.ops` only so it runs on every backend and inside an exported graph.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


def filter_logits_np(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """One row of logits -> probabilities after temperature, top-k and nucleus (top-p) filtering."""
    logits = np.asarray(logits, dtype="float64")
    if temperature <= 0:
        probs = np.zeros_like(logits)
        probs[int(np.argmax(logits))] = 1.0
        return probs
    logits = logits / temperature
    if top_k and 0 < top_k < logits.size:
        kth = np.partition(logits, -top_k)[-top_k]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs)
        cumulative = np.cumsum(probs[order])
        keep = cumulative - probs[order] < top_p  # the smallest set whose mass reaches top_p
        mask = np.zeros_like(probs, dtype=bool)
        mask[order[keep]] = True
        probs = np.where(mask, probs, 0.0)
        probs /= probs.sum()
    return probs


def sample_next(logits, rng: np.random.Generator, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                banned: tuple[int, ...] = ()) -> int:
    """Picks one token id from a row of logits. temperature 0 means greedy. `banned` ids are never picked."""
    logits = np.array(logits, dtype="float64")
    for b in banned:
        logits[b] = -np.inf
    probs = filter_logits_np(logits, temperature, top_k, top_p)
    if temperature <= 0:
        return int(np.argmax(probs))
    return int(rng.choice(probs.size, p=probs))


# ---- batched search in keras.ops (runs on every backend and inside an exported graph) --------------------------
# A step function maps (tokens (rows,), states: list of (rows, ...) tensors, static: list of (rows, ...) tensors)
# -> (log_probs (rows, vocab), new states, extra (rows, pixels) or None). `static` holds what does not change
# during search (image features): beams of one image share it, so it is repeated once and never reordered.

def _rows(x, batch, beam):
    """(batch * beam, ...) -> (batch, beam, ...)"""
    return ops.reshape(x, (batch, beam) + tuple(x.shape[1:]))


def _gather_beams(x, beam_index):
    """x (batch, beam, ...) reordered along beams by beam_index (batch, beam)."""
    index = beam_index
    while len(index.shape) < len(x.shape):
        index = ops.expand_dims(index, -1)
    index = ops.broadcast_to(index, tuple(beam_index.shape) + tuple(x.shape[2:]))
    return ops.take_along_axis(x, index, axis=1)


def _all_done(finished) -> bool:
    """True when every beam has ended, in eager mode; False when tracing a graph (run to max_length there)."""
    try:
        return bool(ops.all(finished))
    except Exception:  # symbolic tensor (tf.function / jax.jit): no early exit
        return False


NEG = -1e9  # the score of an impossible hypothesis (a banned word, an empty pool slot)


def repeat_mask(history, n: int, vocab: int):
    """Words that would repeat an n-gram: history, a list of t tensors (..., ) of ids (the hypothesis so far) ->
    bool (..., vocab), True for word w when (last n - 1 words, w) already occurs in the history; None when the
    history is too short to hold a whole n-gram. n = 1 bans every word used so far."""
    t, n = len(history), int(n)
    m = t - n + 1  # n-grams in the history (start positions 0..m-1)
    if n <= 0 or m <= 0:
        return None
    words = ops.stack(history, axis=-1)  # (..., t)
    match = None
    for i in range(n - 1):  # the n-gram's i-th word equals the i-th of the last n - 1 words
        same = ops.equal(words[..., i: i + m], words[..., t - n + 1 + i: t - n + 2 + i])  # (..., m)
        match = same if match is None else ops.logical_and(match, same)
    hits = ops.one_hot(words[..., n - 1: n - 1 + m], vocab)  # (..., m, vocab): the word each n-gram ends with
    if match is not None:
        hits = hits * ops.expand_dims(ops.cast(match, hits.dtype), -1)
    return ops.max(hits, axis=-2) > 0  # (..., vocab)


def _constrain(log_probs, history, step, end_id, min_length, block_repeats):
    """log_probs (..., vocab) with <eos> banned before `min_length` words and repeated n-grams banned."""
    vocab = log_probs.shape[-1]
    is_end = ops.arange(vocab) == end_id  # (vocab,)
    if step < int(min_length):
        log_probs = ops.where(is_end, NEG, log_probs)
    if block_repeats:
        banned = repeat_mask(history, block_repeats, vocab)
        if banned is not None:  # <eos> is never a repeat
            log_probs = ops.where(ops.logical_and(banned, ops.logical_not(is_end)), NEG, log_probs)
    return log_probs


def _pad_steps(x, length, value, axis=2):
    """x (..., t, ...) padded along `axis` with `value` to `length` steps."""
    missing = int(length) - x.shape[axis]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[axis] = missing
    return ops.concatenate([x, ops.full(tuple(shape), value, dtype=x.dtype)], axis=axis)


def beam_search(step_fn, states, static, batch_size, beam_width, max_length, start_id, end_id,
                length_penalty=1.0, early_exit=True, min_length=0, block_repeats=0, num_captions=1):
    """Batched beam search with a pool of finished hypotheses, ranked by the length-normalised score.

    The normalised score of a hypothesis is `sum log p / length ** length_penalty`, where length counts the words
    and the final `<eos>` (length_penalty 0 = raw sum, 1 = mean log probability per token). At every step the k
    live hypotheses are extended by every word: the `<eos>` extensions that rank among the k best extensions of
    their row go to a pool of finished hypotheses (the best k by normalised score are kept), and the k best
    extensions by another word stay live. So a finished
    hypothesis never takes a live slot, and a longer one is not pruned for ending later. Search stops at
    `max_length` or, in eager mode, as soon as no live hypothesis can still beat the worst pooled one (with
    length_penalty >= 0 and log p <= 0, the best a live one can reach is its sum now / max_length ** penalty).
    When nothing finishes within `max_length`, the best unfinished hypotheses fill in, normalised with length
    `max_length`.

    Width 1 is greedy decoding (`greedy_search`): one hypothesis, the most likely word at every step, `<eos>`
    included, so a pool would have nothing to choose from.

    Args:
        step_fn: see the module comment.
        states: list of (batch, ...) decoder states at the start.
        static: list of (batch, ...) tensors every step needs (e.g. image features).
        batch_size, beam_width, max_length: static ints.
        start_id, end_id: `<bos>` and `<eos>` ids.
        min_length: `<eos>` is not allowed before this many words.
        block_repeats: n > 0 never repeats an n-gram of n words (3 = trigram blocking; 1 = no word twice).
        num_captions: how many captions to return per row (<= beam_width), best first.
    Returns:
        tokens (batch, max_length) int32 (after `<eos>` only `<eos>`), scores (batch,) float32,
        extras (batch, max_length, pixels) float32 (per-step attention) or None. With num_captions n > 1 each
        gets an axis of n after the batch: (batch, n, max_length), (batch, n), (batch, n, max_length, pixels).
    """
    b, k, steps, n = int(batch_size), int(beam_width), int(max_length), int(num_captions)
    if not 1 <= n <= k:
        raise ValueError(f"num_captions must be between 1 and the beam width {k} (got {n})")
    if k == 1:
        return greedy_search(step_fn, states, static, b, steps, start_id, end_id, early_exit=early_exit,
                             length_penalty=length_penalty, min_length=min_length, block_repeats=block_repeats)
    penalty = float(length_penalty)
    states = [ops.repeat(s, k, axis=0) for s in states]  # (b * k, ...)
    static = [ops.repeat(s, k, axis=0) for s in static]
    tokens = ops.full((b * k,), start_id, dtype="int32")
    # Only beam 0 is alive at the start, so the first expansion does not pick k copies of the same word.
    live = ops.concatenate([ops.zeros((b, 1)), ops.full((b, k - 1), NEG)], axis=1)  # (b, k) summed log p
    history, attention = [], []  # per step: (b, k) words, (b, k, pixels) attention of the live hypotheses
    pool_score = ops.full((b, k), NEG)  # (b, k) normalised scores of the finished pool, best first
    pool_words = ops.full((b, k, steps), end_id, dtype="int32")  # (b, k, max_length)
    pool_attention = None  # (b, k, max_length, pixels) once the step function gives attention
    for t in range(steps):
        log_probs, states, extra = step_fn(tokens, states, static)
        vocab = log_probs.shape[-1]
        log_probs = _constrain(_rows(ops.cast(log_probs, "float32"), b, k), history, t, end_id, min_length,
                               block_repeats)  # (b, k, vocab)
        total = ops.expand_dims(live, -1) + log_probs  # (b, k, vocab)
        if extra is not None:
            extra = _rows(ops.cast(extra, "float32"), b, k)  # (b, k, pixels)
            if pool_attention is None:
                pool_attention = ops.zeros((b, k, steps, extra.shape[-1]))

        # 1. A live hypothesis + <eos> is a finished candidate when it ranks among the row's k best extensions (as
        # plain beam search would keep it; an ending the model finds unlikely is no candidate). The pool keeps the
        # k best candidates by normalised score.
        kth = ops.top_k(ops.reshape(total, (b, k * vocab)), k)[0][:, -1:]  # (b, 1)
        ended = total[:, :, end_id]  # (b, k)
        ended = ops.where(ops.logical_and(ended > NEG / 2, ended >= kth), ended / float(t + 1) ** penalty, NEG)
        words_so_far = ops.stack(history + [ops.full((b, k), end_id, dtype="int32")], axis=2)  # (b, k, t + 1)
        merged_score = ops.concatenate([pool_score, ended], axis=1)  # (b, 2k)
        pool_score, keep = ops.top_k(merged_score, k)  # (b, k)
        pool_words = _gather_beams(ops.concatenate([pool_words, _pad_steps(words_so_far, steps, end_id)], 1), keep)
        if extra is not None:
            att_so_far = ops.stack(attention + [extra], axis=2)  # (b, k, t + 1, pixels)
            pool_attention = _gather_beams(ops.concatenate([pool_attention, _pad_steps(att_so_far, steps, 0.0)], 1),
                                           keep)

        # 2. The k best extensions by a word stay live.
        total = ops.where(ops.arange(vocab) == end_id, NEG, total)
        live, flat_index = ops.top_k(ops.reshape(total, (b, k * vocab)), k)  # (b, k)
        beam_index = flat_index // vocab
        word = ops.cast(flat_index % vocab, "int32")
        history = [_gather_beams(h, beam_index) for h in history] + [word]
        if extra is not None:
            attention = [_gather_beams(a, beam_index) for a in attention + [extra]]
        states = [ops.reshape(_gather_beams(_rows(s, b, k), beam_index), (b * k,) + tuple(s.shape[1:]))
                  for s in states]
        tokens = ops.reshape(word, (b * k,))
        if early_exit and penalty >= 0 and t + 1 < steps:
            # The best a live hypothesis can still reach vs the worst pooled one, for every row.
            reachable = ops.max(live, axis=1) / float(steps) ** penalty  # (b,)
            if _all_done(pool_score[:, -1] > ops.maximum(reachable, NEG / 2)):
                break

    # Unfinished hypotheses (normalised with length max_length) only fill pool slots nothing finished took.
    unfinished = live / float(steps) ** penalty  # (b, k)
    live_words = _pad_steps(ops.stack(history, axis=2), steps, end_id)  # (b, k, max_length)
    rank = ops.concatenate([pool_score, ops.where(live > NEG / 2, unfinished - 1e6, 2 * NEG)], axis=1)  # (b, 2k)
    _, best = ops.top_k(rank, n)  # (b, n)
    score = ops.take_along_axis(ops.concatenate([pool_score, unfinished], axis=1), best, axis=1)  # (b, n)
    words = _gather_beams(ops.concatenate([pool_words, live_words], axis=1), best)  # (b, n, max_length)
    att = None
    if pool_attention is not None:
        live_att = _pad_steps(ops.stack(attention, axis=2), steps, 0.0)  # (b, k, max_length, pixels)
        att = _gather_beams(ops.concatenate([pool_attention, live_att], axis=1), best)  # (b, n, max_length, pixels)
    if n == 1:
        words, score = words[:, 0], score[:, 0]
        att = None if att is None else att[:, 0]
    return words, score, att


def greedy_search(step_fn, states, static, batch_size, max_length, start_id, end_id, early_exit=True,
                  length_penalty=1.0, min_length=0, block_repeats=0):
    """Picks the most likely word at every step. Same outputs as `beam_search`; the score is
    `sum log p / length ** length_penalty` (default: the mean log probability per token), counting `<eos>`.
    `min_length` and `block_repeats` constrain the choice as in `beam_search`."""
    tokens = ops.full((batch_size,), start_id, dtype="int32")
    total = ops.zeros((batch_size,))
    lengths = ops.zeros((batch_size,))
    finished = ops.zeros((batch_size,), dtype="bool")
    words, extras = [], []
    for t in range(int(max_length)):
        log_probs, states, extra = step_fn(tokens, states, static)
        log_probs = _constrain(ops.cast(log_probs, "float32"), words, t, end_id, min_length, block_repeats)
        word = ops.cast(ops.argmax(log_probs, axis=-1), "int32")
        word = ops.where(finished, end_id, word)
        picked = ops.squeeze(ops.take_along_axis(log_probs, ops.expand_dims(word, -1), axis=1), 1)
        alive = ops.cast(ops.logical_not(finished), "float32")
        total = total + picked * alive
        lengths = lengths + alive
        finished = ops.logical_or(finished, word == end_id)
        words.append(word)
        if extra is not None:
            extras.append(ops.cast(extra, "float32"))
        tokens = word
        if early_exit and _all_done(finished):
            break
    pad = int(max_length) - len(words)
    words = ops.stack(words + [ops.full((batch_size,), end_id, dtype="int32")] * pad, axis=1)
    attention = None
    if extras:
        attention = ops.stack(extras + [ops.zeros_like(extras[0])] * pad, axis=1)
    return words, total / ops.power(ops.maximum(lengths, 1.0), float(length_penalty)), attention


def sample_search(step_fn, states, static, batch_size, max_length, start_id, end_id, temperature=1.0, seed=None,
                  length_penalty=1.0):
    """Samples each next word from softmax(logits / temperature). Returns what `greedy_search` returns; the score
    is the samples' `sum log p / length ** length_penalty` under the model itself (temperature 1), counting `<eos>`
    (length_penalty 0: the summed log probability, differentiable, which self-critical training uses)."""
    generator = keras.random.SeedGenerator(seed) if not isinstance(seed, keras.random.SeedGenerator) else seed
    tokens = ops.full((batch_size,), start_id, dtype="int32")
    total, lengths = ops.zeros((batch_size,)), ops.zeros((batch_size,))
    finished = ops.zeros((batch_size,), dtype="bool")
    words, extras = [], []
    for _ in range(int(max_length)):
        log_probs, states, extra = step_fn(tokens, states, static)
        log_probs = ops.cast(log_probs, "float32")
        word = ops.cast(ops.squeeze(keras.random.categorical(log_probs / max(float(temperature), 1e-6), 1,
                                                             seed=generator), -1), "int32")
        word = ops.where(finished, end_id, word)
        picked = ops.squeeze(ops.take_along_axis(log_probs, ops.expand_dims(word, -1), axis=1), 1)
        alive = ops.cast(ops.logical_not(finished), "float32")
        total, lengths = total + picked * alive, lengths + alive
        finished = ops.logical_or(finished, word == end_id)
        words.append(word)
        if extra is not None:
            extras.append(ops.cast(extra, "float32"))
        tokens = word
    attention = ops.stack(extras, axis=1) if extras else None
    return ops.stack(words, axis=1), total / ops.power(ops.maximum(lengths, 1.0), float(length_penalty)), attention
