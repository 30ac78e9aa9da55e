"""Perplexity by the PTB protocol, and text generation, for every kind of model folder (see lm.checkpoint).

Protocol: every line ends with `<eos>`, which is predicted and counted; `<unk>` is an ordinary word. A stream
model predicts the first word of a line from the state carried over from the previous line (the text starts after
an `<eos>`); a sentence model and the n-gram model predict it from `<bos>`.
"""

from __future__ import annotations

import math

import numpy as np

from lm.checkpoint import LoadedModel
from lm.data import evaluation_rows, sentence_batches, stream_ids
from lm.sampling import sample_next


def _numpy(x) -> np.ndarray:
    """A backend tensor -> numpy (np.asarray fails on PyTorch tensors that carry a gradient)."""
    if isinstance(x, np.ndarray):
        return x
    from keras import ops
    return ops.convert_to_numpy(x)


def _log_softmax_np(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype("float64")
    logits -= logits.max(axis=-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))


def target_logp(logits, targets) -> np.ndarray:
    """log p(target) (float64, same shape as `targets`) from logits (..., vocab); `<pad>` targets included."""
    logp = _log_softmax_np(_numpy(logits))  # (batch, time, vocab)
    return np.take_along_axis(logp, targets[..., None].astype("int64"), axis=-1)[..., 0]


def _target_nll(logits, targets) -> tuple[float, int]:
    """Sum of -log p(target) over non-pad targets, and how many there were."""
    picked = target_logp(logits, targets)
    mask = targets != 0
    return float(-(picked * mask).sum()), int(mask.sum())


def recurrent_chunks(model, rows: np.ndarray, chunk: int = 64, hidden: bool = False):
    """Rows of ids (batch, width), `<pad>`-padded, run through a recurrent model `chunk` columns at a time, carrying
    state: yields (targets (batch, n) = the next ids, logits (batch, n, vocab), hidden (batch, n, units) or None).
    `hidden=True` also returns the top layer's outputs (LanguageModel.hidden_and_states; the neural cache)."""
    states = None
    for start in range(0, rows.shape[1] - 1, chunk):
        x = rows[:, start: start + chunk]
        y = rows[:, start + 1: start + chunk + 1]
        x = x[:, : y.shape[1]]
        if hidden:
            h, logits, states = model.hidden_and_states(x, states)
        else:
            (logits, states), h = model.logits_and_states(x, states), None
        yield y, logits, h


def recurrent_nll(model, rows: np.ndarray, chunk: int = 64) -> tuple[float, int]:
    """Rows of ids (batch, width), `<pad>`-padded: predicts rows[:, 1:] from rows[:, :-1], carrying state."""
    total, count = 0.0, 0
    for y, logits, _ in recurrent_chunks(model, rows, chunk):
        nll, n = _target_nll(logits, y)
        total, count = total + nll, count + n
    return total, count


EVAL_ROWS = 32  # rows a text is cut into for stream-protocol scoring (lm.data.evaluation_rows)


def perplexity(loaded: LoadedModel, sentences, batch_rows: int = EVAL_ROWS) -> tuple[float, int]:
    """Perplexity of `sentences` (token lists) under a loaded model -> (perplexity, tokens counted)."""
    sentences = [s for s in sentences if s]
    if loaded.arch == "ngram":
        return loaded.model.perplexity(sentences)
    vocab = loaded.vocab
    if loaded.arch == "window":
        x, y = window_examples(stream_ids(sentences, vocab), loaded.model.context, vocab.eos_id)
        total = 0.0
        for i in range(0, len(x), 1024):
            logits = _numpy(loaded.model(x[i: i + 1024]))
            total += _target_nll(logits[:, None, :], y[i: i + 1024, None])[0]
        count = len(y)
    elif loaded.mode == "stream":
        total, count = recurrent_nll(loaded.model, evaluation_rows(sentences, vocab, batch_rows))
    else:
        x, y = sentence_batches(sentences, vocab)
        total, count = 0.0, 0
        for i in range(0, len(x), batch_rows):
            nll, n = _target_nll(loaded.model(x[i: i + batch_rows]), y[i: i + batch_rows])
            total, count = total + nll, count + n
    return math.exp(total / max(count, 1)), count


def window_examples(ids: np.ndarray, context: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """A stream `<eos> w1 w2 ...` -> (contexts (N, context), targets (N,)) for every token after the first.

    The first targets see a context padded on the left with `pad_id` (the `<eos>` that starts every text).
    """
    padded = np.concatenate([np.full(context - 1, pad_id, dtype="int32"), ids])
    n = len(ids) - 1
    index = np.arange(n)[:, None] + np.arange(context)[None, :]  # (N, context)
    return padded[index], ids[1:]


def generate(loaded: LoadedModel, prompt: list[str] | None = None, max_tokens: int = 30, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, seed: int | None = None) -> list[str]:
    """Continues `prompt` (tokens) until `<eos>` or `max_tokens` new tokens. temperature 0 = greedy."""
    vocab, rng = loaded.vocab, np.random.default_rng(seed)
    start = vocab.bos_id if loaded.mode == "sentence" or loaded.arch == "ngram" else vocab.eos_id
    history = [start] + vocab.encode(prompt or [])
    banned = (vocab.pad_id, vocab.bos_id)
    new: list[int] = []
    states = None
    pending = np.asarray([history], dtype="int32")
    for _ in range(max_tokens):
        if loaded.arch == "ngram":
            probs = loaded.model.next_distribution([vocab.id_to_token(i) for i in history + new])
            logits = np.log(np.maximum(probs, 1e-300))
        elif loaded.arch == "window":
            context = ([vocab.eos_id] * loaded.model.context + history + new)[-loaded.model.context:]
            logits = _numpy(loaded.model(np.asarray([context], dtype="int32")))[0]
        elif states is None:  # the prompt, all at once
            out, states = loaded.model.logits_and_states(pending)
            logits = _numpy(out)[0, -1]
        else:  # one token: a cell step (a whole-sequence call would run, and on JAX compile, a scan per token)
            out, states = loaded.model.step(pending[:, 0], states)
            logits = _numpy(out)[0]
        token = sample_next(logits, rng, temperature, top_k, top_p, banned=banned)
        if token == vocab.eos_id:
            break
        new.append(token)
        pending = np.asarray([[token]], dtype="int32")
    return [vocab.id_to_token(i) for i in new]
