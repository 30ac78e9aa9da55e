"""Corpus -> arrays for `fit`, in the two ways language models are trained.

* Stream batching (PTB protocol, stateful truncated BPTT): all lines joined into one token stream, each line ending
  with `<eos>`, the stream starting with `<eos>` so that the first word is predicted too. The stream is cut into
  `batch_size` contiguous rows; batch i holds columns [i*bptt, (i+1)*bptt) of every row. With `shuffle=False` the
  b-th sequence of batch i+1 continues the b-th sequence of batch i, so a stateful model carries its state across.
* Sentence batching: every line on its own, `<bos> w1 .. wn` -> `w1 .. wn <eos>`, padded with `<pad>` (id 0, which
  the loss ignores).
"""

from __future__ import annotations

import keras
import numpy as np

from lm.vocab import Vocabulary


def stream_ids(sentences, vocab: Vocabulary) -> np.ndarray:
    """All sentences as one id stream: `<eos> s1 <eos> s2 <eos> ...` (the leading `<eos>` is context only)."""
    ids = [vocab.eos_id]
    for s in sentences:
        ids.extend(vocab.encode(s, add_eos=True))
    return np.asarray(ids, dtype="int32")


def stream_batches(ids: np.ndarray, batch_size: int, bptt: int) -> tuple[np.ndarray, np.ndarray]:
    """Stream -> (x, y), each (num_batches * batch_size, bptt), ordered for stateful `fit(shuffle=False)`.

    Example:
        >>> x, y = stream_batches(np.arange(21), batch_size=2, bptt=3)  # rows 0..9 and 10..19
        >>> x[0].tolist(), x[1].tolist(), x[2].tolist()
        ([0, 1, 2], [10, 11, 12], [3, 4, 5])
    """
    row_len = (len(ids) - 1) // batch_size
    num_batches = row_len // bptt
    if num_batches == 0:
        raise ValueError(f"text too short: {len(ids)} tokens for batch size {batch_size} x bptt {bptt}")
    usable = num_batches * bptt
    rows_x = np.stack([ids[b * row_len: b * row_len + usable] for b in range(batch_size)])  # (batch, usable)
    rows_y = np.stack([ids[b * row_len + 1: b * row_len + usable + 1] for b in range(batch_size)])
    # (batch, num_batches, bptt) -> (num_batches, batch, bptt) -> (num_batches * batch, bptt)
    x = rows_x.reshape(batch_size, num_batches, bptt).transpose(1, 0, 2).reshape(-1, bptt)
    y = rows_y.reshape(batch_size, num_batches, bptt).transpose(1, 0, 2).reshape(-1, bptt)
    return x, y


def sentence_batches(sentences, vocab: Vocabulary, max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sentences -> (x, y) padded to the longest (or `max_len`, cutting longer ones), `<pad>` = 0 in both."""
    encoded = [vocab.encode(s) for s in sentences]
    longest = max((len(e) for e in encoded), default=0) + 1
    length = min(longest, max_len) if max_len else longest
    x = np.zeros((len(encoded), length), dtype="int32")
    y = np.zeros((len(encoded), length), dtype="int32")
    for i, e in enumerate(encoded):
        seq_in = [vocab.bos_id] + e
        seq_out = e + [vocab.eos_id]
        n = min(len(seq_in), length)
        x[i, :n] = seq_in[:n]
        y[i, :n] = seq_out[:n]
    return x, y


def evaluation_rows(sentences, vocab: Vocabulary, num_rows: int) -> np.ndarray:
    """Cuts a text into `num_rows` contiguous pieces at line boundaries for fast stateful-protocol evaluation.

    Each piece is `<eos> line line ...` (the `<eos>` is context, as after the previous line) and the pieces are
    padded with `<pad>`; the caller predicts every non-pad token after the first. Only the state carried across
    the `num_rows - 1` cut points is lost, which is why cuts are made where lines begin.
    """
    lines = [vocab.encode(s, add_eos=True) for s in sentences]
    total = sum(len(l) for l in lines)
    target = total / max(1, num_rows)
    pieces, current, size = [], [vocab.eos_id], 0
    for line in lines:
        if size >= target and len(pieces) < num_rows - 1:
            pieces.append(current)
            current, size = [vocab.eos_id], 0
        current.extend(line)
        size += len(line)
    pieces.append(current)
    width = max(len(p) for p in pieces)
    rows = np.zeros((len(pieces), width), dtype="int32")
    for i, p in enumerate(pieces):
        rows[i, : len(p)] = p
    return rows


class EpochOrder(keras.callbacks.Callback):
    """Tells batch sources which epoch is starting (`set_epoch(epoch)`), so a shuffled order depends only on
    (seed, epoch): a run resumed at epoch k (fit's `initial_epoch`) sees the batches the uninterrupted run saw.

    Example:
        >>> model.fit(batches, epochs=4, initial_epoch=2, callbacks=[EpochOrder(batches)])
    """

    def __init__(self, *sources):
        super().__init__()
        self.sources = [s for s in sources if s is not None]

    def on_epoch_begin(self, epoch, logs=None):
        for source in self.sources:
            source.set_epoch(epoch)
