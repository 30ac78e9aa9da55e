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


def beam_search(step_fn, states, static, batch_size, beam_width, max_length, start_id, end_id,
                length_penalty=1.0, early_exit=True):
    """Batched beam search.

    Beams are ranked by their summed log probability while searching; the returned caption is the finished beam
    with the best *length-normalised* score, `sum log p / length ** length_penalty`, where length counts the words
    and the final `<eos>` (length_penalty 0 = raw sum, 1 = mean log probability per token). When no beam reaches
    `<eos>` within `max_length`, the best unfinished beam is returned, normalised the same way with length
    `max_length`. Width 1 is exactly greedy decoding.

    Args:
        step_fn: see the module comment.
        states: list of (batch, ...) decoder states at the start.
        static: list of (batch, ...) tensors every step needs (e.g. image features).
        batch_size, beam_width, max_length: static ints.
        start_id, end_id: `<bos>` and `<eos>` ids.
    Returns:
        tokens (batch, max_length) int32 (after `<eos>` only `<eos>`), scores (batch,) float32,
        extras (batch, max_length, pixels) float32 (per-step attention) or None.
    """
    b, k = int(batch_size), int(beam_width)
    states = [ops.repeat(s, k, axis=0) for s in states]  # (b * k, ...)
    static = [ops.repeat(s, k, axis=0) for s in static]
    tokens = ops.full((b * k,), start_id, dtype="int32")
    # Only beam 0 is alive at the start, so the first expansion does not pick k copies of the same word.
    scores = ops.concatenate([ops.zeros((b, 1)), ops.full((b, k - 1), -1e9)], axis=1)  # (b, k)
    finished = ops.zeros((b, k), dtype="bool")
    lengths = ops.zeros((b, k))
    history, extras = [], []
    for _ in range(int(max_length)):
        log_probs, states, extra = step_fn(tokens, states, static)
        vocab = log_probs.shape[-1]
        log_probs = _rows(ops.cast(log_probs, "float32"), b, k)  # (b, k, vocab)
        # A finished beam can only be extended by <eos>, at no cost, so its score stays as it was.
        eos_only = ops.where(ops.arange(vocab) == end_id, 0.0, -1e9)  # (vocab,)
        log_probs = ops.where(ops.expand_dims(finished, -1), eos_only, log_probs)
        candidates = ops.reshape(ops.expand_dims(scores, -1) + log_probs, (b, k * vocab))
        scores, flat_index = ops.top_k(candidates, k)  # (b, k)
        beam_index = flat_index // vocab
        word = ops.cast(flat_index % vocab, "int32")
        was_finished = _gather_beams(finished, beam_index)
        lengths = _gather_beams(lengths, beam_index) + ops.cast(ops.logical_not(was_finished), "float32")
        finished = ops.logical_or(was_finished, word == end_id)
        history = [_gather_beams(h, beam_index) for h in history] + [word]
        if extra is not None:
            extra = _rows(ops.cast(extra, "float32"), b, k)
            extras = [_gather_beams(e, beam_index) for e in extras] + [_gather_beams(extra, beam_index)]
        states = [ops.reshape(_gather_beams(_rows(s, b, k), beam_index), (b * k,) + tuple(s.shape[1:]))
                  for s in states]
        tokens = ops.reshape(word, (b * k,))
        if early_exit and _all_done(finished):
            break
    steps = len(history)
    normalised = scores / ops.power(ops.maximum(lengths, 1.0), float(length_penalty))
    any_finished = ops.any(finished, axis=1, keepdims=True)  # (b, 1)
    eligible = ops.logical_or(finished, ops.logical_not(any_finished))
    best = ops.argmax(ops.where(eligible, normalised, -1e30), axis=1)  # (b,)
    best_index = ops.expand_dims(best, 1)
    words = ops.stack(history, axis=2)  # (b, k, steps)
    words = ops.squeeze(_gather_beams(words, best_index), 1)  # (b, steps)
    score = ops.squeeze(ops.take_along_axis(normalised, best_index, axis=1), 1)
    attention = None
    if extras:
        attention = ops.squeeze(_gather_beams(ops.stack(extras, axis=2), best_index), 1)  # (b, steps, pixels)
    if steps < max_length:  # early exit: pad to the promised length
        pad = int(max_length) - steps
        words = ops.concatenate([words, ops.full((b, pad), end_id, dtype="int32")], axis=1)
        if attention is not None:
            attention = ops.concatenate([attention, ops.zeros((b, pad, attention.shape[-1]))], axis=1)
    return words, score, attention


def greedy_search(step_fn, states, static, batch_size, max_length, start_id, end_id, early_exit=True):
    """Picks the most likely word at every step. Same outputs as `beam_search`; the score is the mean log
    probability per token (length_penalty 1), counting `<eos>`."""
    tokens = ops.full((batch_size,), start_id, dtype="int32")
    total = ops.zeros((batch_size,))
    lengths = ops.zeros((batch_size,))
    finished = ops.zeros((batch_size,), dtype="bool")
    words, extras = [], []
    for _ in range(int(max_length)):
        log_probs, states, extra = step_fn(tokens, states, static)
        log_probs = ops.cast(log_probs, "float32")
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
    return words, total / ops.maximum(lengths, 1.0), attention


def sample_search(step_fn, states, static, batch_size, max_length, start_id, end_id, temperature=1.0, seed=None):
    """Samples each next word from softmax(logits / temperature). Returns what `greedy_search` returns."""
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
    return ops.stack(words, axis=1), total / ops.maximum(lengths, 1.0), attention
