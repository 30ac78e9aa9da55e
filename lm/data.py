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


class VariableLengthStream(keras.utils.PyDataset):
    """Stream batches whose length varies per batch, as AWD-LSTM draws it (Merity et al. 2017, "variable BPTT"):
    `bptt` with probability 0.95, else `bptt / 2`; then N(that, 5), rounded, clipped to >= 5 (and to
    <= bptt + 40, AWD-LSTM's max_seq_len_delta). The trainer scales the learning rate of each batch by
    `length / bptt` (lm.training.SequenceLengthLR), as AWD-LSTM does.

    The stream is cut into `batch_size` contiguous rows as in `stream_batches`, and batch i+1 continues batch i along
    every row, so a stateful model carries its (batch, units) state across batches of any length. What differs from
    AWD-LSTM: Keras `fit` needs the same number of steps every epoch, so an epoch is always `row_len // bptt` batches
    (the count of fixed-length batching); the lengths drawn then rarely sum to exactly one pass, so each row is read
    as a ring: epoch e starts where epoch e-1 ended, and a batch that runs past the row's end continues at its start
    (the carried state is then wrong for one cut, as at the cuts between rows). Over epochs every token is read
    equally often. Lengths depend only on (seed, epoch) (`set_epoch`, for --resume).

    Cost: the batches are cut in NumPy (negligible). TensorFlow without XLA (its default on a CPU) traces the train
    step once with an open time axis; JAX (and XLA) compile it once per distinct length, about 30 of them for
    bptt 35, so the first epoch takes longer there.

    Example:
        >>> batches = VariableLengthStream(ids, batch_size=20, bptt=70)
        >>> x, y = batches[0]  # (20, length of batch 0); batches.lengths[0] that length
    """

    P_FULL, STD, MIN_LEN, MAX_DELTA = 0.95, 5.0, 5, 40

    def __init__(self, ids: np.ndarray, batch_size: int, bptt: int, seed: int = 0):
        super().__init__()
        self.row_len = (len(ids) - 1) // batch_size
        if self.row_len < bptt:
            raise ValueError(f"text too short: {len(ids)} tokens for batch size {batch_size} x bptt {bptt}")
        self.batch_size, self.bptt, self.seed = int(batch_size), int(bptt), int(seed)
        self.rows_x = np.stack([ids[b * self.row_len: (b + 1) * self.row_len] for b in range(batch_size)])
        self.rows_y = np.stack([ids[b * self.row_len + 1: (b + 1) * self.row_len + 1] for b in range(batch_size)])
        self.steps = self.row_len // self.bptt
        self.set_epoch(0)

    def draw_lengths(self, epoch: int) -> np.ndarray:
        """The `steps` sequence lengths of an epoch (AWD-LSTM's rule)."""
        rng = np.random.default_rng([self.seed, epoch])
        base = np.where(rng.random(self.steps) < self.P_FULL, self.bptt, self.bptt / 2)
        lengths = np.rint(rng.normal(base, self.STD)).astype("int64")
        return np.clip(lengths, self.MIN_LEN, min(self.bptt + self.MAX_DELTA, self.row_len))

    def set_epoch(self, epoch: int) -> None:
        start = sum(int(self.draw_lengths(e).sum()) for e in range(epoch)) % self.row_len
        self.lengths = self.draw_lengths(epoch)
        self.starts = (start + np.cumsum(self.lengths) - self.lengths) % self.row_len

    def __len__(self):
        return self.steps

    def __getitem__(self, i):
        columns = (self.starts[i] + np.arange(self.lengths[i])) % self.row_len
        return self.rows_x[:, columns], self.rows_y[:, columns]  # (batch, length) each
