"""Training batches that stream: nothing holds the whole dataset in memory.

Two row sources feed the same batcher:
  * ``CachedGrids``: rows of a ``captioner.features.FeatureCache`` (memory-mapped float16 shards, read and unmapped
    batch by batch);
  * ``DecodedImages``: image files decoded by ``captioner.images.load_image`` in threads when a batch asks for them
    (end-to-end training, CNN in the graph).

``StreamBatches`` orders an epoch like a shuffle buffer over shards: the shards are shuffled, taken a window of
``window_shards`` at a time, the (image, caption) pairs of a window are sorted by caption length with random ties
and cut into batches of similar length (padded to a multiple of 4 words), and the batches of a window are shuffled.
So reads stay within a few shards at a time, batches carry little padding, and the number of batches per epoch is
fixed (Keras needs that).

Example:
    >>> cache = build_feature_cache(backbone, paths, ...)                  # captioner.features
    >>> batches = StreamBatches(CachedGrids(cache), cache.rows(pair_paths), caption_ids, batch_size=32)
    >>> (grids, tokens_in), tokens_out = batches[0]                         # (32, 49, 1280), (32, w), (32, w)
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np

from lm.vocab import Vocabulary

__all__ = ["CachedGrids", "DecodedImages", "StreamBatches"]

_IDS = Vocabulary(())  # only for its special ids (<bos>, <eos>; <pad> is 0)


class CachedGrids:
    """Rows of a FeatureCache as float32 grids (n, pixels, C)."""

    def __init__(self, cache):
        self.cache = cache
        self.shard_bounds = cache.shard_bounds
        self.row_shape = cache.grid

    def read(self, rows: np.ndarray) -> np.ndarray:
        return self.cache.read(rows)  # (n, pixels, C) float32

    def __getitem__(self, rows) -> np.ndarray:  # grids[rows], as if it were an in-memory array
        return self.read(np.atleast_1d(rows))

    def __len__(self) -> int:
        return len(self.cache)


class DecodedImages:
    """Image files as float32 pixels (n, h, w, 3) in 0..255, decoded in threads when read.

    Args:
        paths: the images, one per row.
        image_size: (height, width).
        policy: resize policy.
        shard_size: rows per "shard" (a unit of the shuffle order, as for a feature cache).
        workers: decoding threads.
    """

    def __init__(self, paths, image_size, policy: str, shard_size: int = 1024, workers: int | None = None):
        self.paths = list(paths)
        self.size = tuple(int(s) for s in image_size)
        self.policy = policy
        self.row_shape = (*self.size, 3)
        self.shard_bounds = [(s, min(s + shard_size, len(self.paths))) for s in range(0, len(self.paths), shard_size)]
        from captioner.features import default_workers
        self.workers = workers or default_workers()
        self._pool = None

    def read(self, rows: np.ndarray) -> np.ndarray:
        from captioner.images import load_image
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="decode")
        unique, inverse = np.unique(np.asarray(rows, "int64"), return_inverse=True)
        decoded = list(self._pool.map(lambda r: load_image(self.paths[r], self.size, self.policy), unique))
        return np.stack(decoded).astype("float32")[inverse]  # (n, h, w, 3)

    def __getstate__(self):  # picklable (no thread pool) for multiprocessing workers
        return {**self.__dict__, "_pool": None}


class StreamBatches(keras.utils.PyDataset):
    """(rows source, image row per pair, caption ids) -> ((inputs, tokens_in), tokens_out) batches, streaming.

    Args:
        source: ``CachedGrids`` or ``DecodedImages`` (anything with ``shard_bounds``, ``row_shape``, ``read(rows)``).
        image_rows: int (pairs,): the source row of each pair's image.
        captions: list of caption id lists (without <bos>/<eos>), one per pair.
        batch_size: pairs per batch.
        shuffle: shuffle shards, pairs (within a window) and batches every epoch; False gives a fixed order.
        seed: shuffling seed; an epoch's order depends only on (seed, epoch) (see ``set_epoch``).
        window_shards: shards mixed together (the shuffle buffer), default 8.
        fixed_width: pad every batch to this many tokens (TensorFlow: one graph); None pads to the batch's longest
            (+ <eos>) rounded up to a multiple of 4.
        drop_remainder: only full batches (data-parallel training: equal shards on every device).
        **kwargs: ``keras.utils.PyDataset`` options (workers, use_multiprocessing, max_queue_size).
    """

    def __init__(self, source, image_rows, captions, batch_size, shuffle=True, seed=0, window_shards=8,
                 fixed_width=None, drop_remainder=False, **kwargs):
        super().__init__(**kwargs)
        self.source = source
        self.image_rows = np.asarray(image_rows, "int64")
        self.captions = captions
        self.lengths = np.array([len(c) for c in captions], "int64")
        self.batch_size, self.shuffle, self.window_shards = int(batch_size), bool(shuffle), max(1, int(window_shards))
        self.fixed_width, self.drop_remainder = fixed_width, bool(drop_remainder)
        self.seed, self.epoch = int(seed), None
        bounds = np.array([start for start, _ in source.shard_bounds], "int64")
        self.shard_of_pair = np.searchsorted(bounds, self.image_rows, side="right") - 1  # (pairs,)
        self.pairs_of_shard = [np.nonzero(self.shard_of_pair == s)[0] for s in range(len(bounds))]
        total = len(self.image_rows)
        full = total // self.batch_size
        self.batch_count = full if (drop_remainder and full > 0) else int(math.ceil(total / self.batch_size))
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Plans the batches of `epoch`: the order depends only on (seed, epoch), so a resumed run sees the batches
        the uninterrupted run would have seen (lm.data.EpochOrder calls this at each epoch's start)."""
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self.rng = np.random.default_rng([self.seed, self.epoch])
            self._plan()

    def _plan(self):
        """This epoch's batches: a list of pair-index arrays, in the order they are served."""
        shards = self.rng.permutation(len(self.pairs_of_shard)) if self.shuffle else np.arange(len(self.pairs_of_shard))
        order, window_of = [], []
        for w, first in enumerate(range(0, len(shards), self.window_shards)):
            pairs = np.concatenate([self.pairs_of_shard[s] for s in shards[first: first + self.window_shards]])
            noise = self.rng.random(len(pairs)) if self.shuffle else np.zeros(len(pairs))
            order.append(pairs[np.lexsort((noise, self.lengths[pairs]))])  # by length, ties random
            window_of.append(np.full(len(pairs), w))
        order = np.concatenate(order) if order else np.zeros(0, "int64")
        window_of = np.concatenate(window_of) if window_of else np.zeros(0, "int64")
        if self.drop_remainder and len(order) > self.batch_count * self.batch_size:  # leave out random pairs
            extra = len(order) - self.batch_count * self.batch_size
            keep = np.ones(len(order), bool)
            keep[self.rng.choice(len(order), extra, replace=False) if self.shuffle else np.arange(len(order))[-extra:]] = False
            order, window_of = order[keep], window_of[keep]
        batches = [order[i: i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.shuffle:  # shuffle batch order within each window (a batch belongs to the window of its first pair)
            firsts = np.array([window_of[i] for i in range(0, len(order), self.batch_size)])
            keys = np.lexsort((self.rng.random(len(batches)), firsts))
            batches = [batches[k] for k in keys]
        self.batches = batches

    def __len__(self):
        return self.batch_count

    def __getitem__(self, index):
        pairs = self.batches[index]
        longest = int(self.lengths[pairs].max()) + 1
        width = self.fixed_width or int(math.ceil(longest / 4) * 4)
        tokens_in = np.full((len(pairs), width), _IDS.pad_id, "int32")  # (batch, width): <bos> w1 .. wn <pad>..
        tokens_out = np.full((len(pairs), width), _IDS.pad_id, "int32")  # (batch, width): w1 .. wn <eos> <pad>..
        for i, p in enumerate(pairs):
            ids = self.captions[p][: width - 1]
            tokens_in[i, : len(ids) + 1] = [_IDS.bos_id, *ids]
            tokens_out[i, : len(ids) + 1] = [*ids, _IDS.eos_id]
        inputs = self.source.read(self.image_rows[pairs])  # (batch, pixels, C) grids or (batch, h, w, 3) pixels
        return (inputs, tokens_in), tokens_out

    def on_epoch_end(self):
        if self.shuffle:
            self.set_epoch(self.epoch + 1)
