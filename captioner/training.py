"""`captioner train` for captions: data -> vocabulary -> images or cached grid features -> Keras `fit`.

Two paths to the same model folder:
  * end-to-end: the CNN is in the graph (small_cnn from scratch, or a pretrained CNN with `trainable_blocks`);
  * cached features (default for a frozen pretrained CNN): grids are extracted once into a memory-mapped file
    (captioner.features) and only the decoder trains, which is many times faster.
Batches are bucketed by caption length (padded to the longest in the batch, lengths rounded up to a multiple of 4
so compiled graphs are reused). The best epoch by validation loss is written to the folder as soon as it is found.
"""

from __future__ import annotations

import math
import os
import time

import keras
import numpy as np

from captioner.datasets import load_caption_dataset, split_examples
from captioner.folders import model_files
from captioner.model import ImageCaptioner
from lm.accel import accelerated, cluster, jit_option, worker_dataset
from lm.checkpoint import BestEpoch, check_out_dir, write_model_folder
from lm.data import EpochOrder
from lm.errors import UserError
from lm.vocab import Vocabulary


#: With at least this many training captions, min_count defaults to 5 (Karpathy's COCO/Flickr recipe), else to 1.
MIN_COUNT_5_CAPTIONS = 10_000


class CaptionBatches(keras.utils.PyDataset):
    """(inputs (batch, ...) indexed by `image_index`, caption ids) -> ((inputs, tokens_in), tokens_out) batches.

    Pairs are grouped into batches of similar caption length, and the batch order is shuffled every epoch. The
    order of an epoch depends only on (seed, epoch) (lm.data.EpochOrder calls `set_epoch`), so a resumed run sees
    the batches the uninterrupted run would have seen.
    """

    def __init__(self, inputs, image_index, captions, batch_size, shuffle=True, seed=0, fixed_width=None,
                 drop_remainder=False, **kwargs):
        super().__init__(**kwargs)
        self.fixed_width = fixed_width
        self.drop_remainder = drop_remainder  # only full batches (--distribute: equal shards on every device)
        self.inputs, self.image_index, self.captions = inputs, np.asarray(image_index), captions
        self.batch_size, self.shuffle = batch_size, shuffle
        self.seed = int(seed)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Makes the batches of `epoch` (a new shuffled order per epoch, the same for the same seed and epoch)."""
        self.rng = np.random.default_rng([self.seed, int(epoch)])
        self._make_batches()

    def _make_batches(self):
        lengths = np.array([len(c) for c in self.captions])
        noise = self.rng.random(len(lengths)) if self.shuffle else np.zeros(len(lengths))
        order = np.lexsort((noise, lengths))  # by length, ties in random order
        extra = len(order) % self.batch_size if self.drop_remainder and len(order) > self.batch_size else 0
        if extra:  # leave out `extra` pairs: random ones this epoch, or the last ones when not shuffling
            order = np.delete(order, self.rng.choice(len(order), extra, replace=False)) if self.shuffle \
                else order[: len(order) - extra]
        self.batches = [order[i: i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.shuffle:
            self.rng.shuffle(self.batches)

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        rows = self.batches[index]
        longest = max(len(self.captions[r]) for r in rows) + 1
        width = self.fixed_width or int(math.ceil(longest / 4) * 4)
        tokens_in = np.zeros((len(rows), width), "int32")
        tokens_out = np.zeros((len(rows), width), "int32")
        for i, r in enumerate(rows):
            ids = self.captions[r]
            tokens_in[i, : len(ids) + 1] = [2] + ids  # <bos> w1 .. wn
            tokens_out[i, : len(ids) + 1] = ids + [3]  # w1 .. wn <eos>
        index = self.image_index[rows]
        order = np.argsort(index)  # memory-mapped arrays read fastest in ascending order
        inputs = np.empty((len(rows),) + tuple(self.inputs.shape[1:]), "float32")
        inputs[order] = self.inputs[index[order]]
        return (inputs, tokens_in), tokens_out


def _pairs(examples, vocab: Vocabulary, max_length: int):
    """Every (image, caption) pair as (image index, caption ids cut to max_length - 1 words)."""
    index, captions = [], []
    for i, example in enumerate(examples):
        for tokens in example.captions:
            if tokens:
                index.append(i)
                captions.append(vocab.encode(tokens[: max_length - 1]))
    return np.asarray(index, "int64"), captions


def _host_shard(examples, vocab: Vocabulary, max_length: int, hosts: int, rank: int):
    """This process's share of a multi-host run: every `hosts`-th image from `rank` on (the process decodes and
    extracts only these) and its (image, caption) pairs, cut to the count of the smallest shard so every process
    runs the same number of steps. One host: everything. Returns (examples, image_index, captions)."""
    shards = [examples[r::hosts] for r in range(hosts)]
    smallest = min(sum(1 for e in shard for tokens in e.captions if tokens) for shard in shards)
    index, captions = _pairs(shards[rank], vocab, max_length)
    return shards[rank], index[:smallest], captions[:smallest]


@accelerated  # mixed_precision and distribute: the models below are built, compiled and fitted under them
def train_captioner(data, out_dir, image_root=None, backbone="small_cnn", weights=None, image_size=None,
                    trainable_blocks=0, epochs=10, batch_size=32, lr=1e-3, embed=256, units=512, attention_dim=256,
                    cell="lstm", dropout=0.3, attention=True, alpha_c=1.0, scheduled_sampling=0.0, min_count=None,
                    max_length=24, cache_features=None, cache_dir=None, init_from_lm=None, train_split="train",
                    val_split="val", seed=0, verbose=1, time_budget=None, max_images=None, steps_per_epoch=None,
                    patience=3, lr_decay=1.0, mixed_precision=False, jit="auto", distribute=False, resume=False,
                    overwrite=False, init_embeddings="random", schedule=None, warmup=0.0, label_smoothing=0.0,
                    clipnorm=5.0, monitor="loss") -> dict:
    """Trains a captioner and writes a model folder. Returns a summary (losses per epoch, time, sizes).
    `min_count` None: 5 with at least MIN_COUNT_5_CAPTIONS training captions (Karpathy's recipe), else 1.
    A frozen pretrained backbone (the default for one) runs once per image into a feature cache under `cache_dir`
    (default captioner.features.default_cache_root()); epochs read it. End to end, batches decode their images.
    `lr_decay` > 1 divides the learning rate by it after every epoch without validation gain (1: constant).
    `schedule` "cosine" / "step" decays the learning rate over the run (lm.schedules.WarmupDecay) after `warmup`
    epochs of linear warmup (fractions allowed); `label_smoothing` smooths the targets; `clipnorm` clips the global
    gradient norm (0 = off). `monitor` "loss" keeps the epoch with the best validation loss, "cider" the one with
    the best validation CIDEr-D of greedy captions (captioner.cider), for the checkpoint and for early stopping.
    `mixed_precision` (bf16 compute), `jit` (jit_compile: "auto", True, False) and `distribute` (data parallel over
    all local devices) are lm.accel's. An `out_dir` that holds a model is refused unless `overwrite` (train anew)
    or `resume` (continue the killed run from its last finished epoch; lm.checkpoint.check_out_dir).
    `init_embeddings="glove"` starts the word embedding from GloVe (lm.vectors; before `init_from_lm`, whose words
    then win)."""
    from captioner.backbones import backbone_spec
    resuming = check_out_dir(out_dir, resume, overwrite)
    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    examples = load_caption_dataset(data, image_root)
    train = split_examples(examples, train_split)
    val = split_examples(examples, val_split, required=False)
    if max_images:
        train, val = train[:max_images], val[: max(1, max_images // 10)] if val else val
    if min_count is None:  # Karpathy's 5 on real datasets; on a few thousand captions 5 would drop most words
        min_count = 5 if sum(len(e.captions) for e in train) >= MIN_COUNT_5_CAPTIONS else 1
    vocab = Vocabulary.build((t for e in train for t in e.captions), min_count=min_count)
    if len(vocab) <= 4:
        raise UserError(f"{data}: the training captions have no words")
    spec = backbone_spec(backbone)
    if isinstance(image_size, (int, np.integer)):  # `--image-size N` (an int) means N x N
        size = (int(image_size), int(image_size))
    else:
        size = tuple(image_size) if image_size else spec.image_size
    if cache_features is None:  # cache when the CNN does not train
        cache_features = spec.family != "scratch" and trainable_blocks == 0
    if cache_features and (spec.family == "scratch" or trainable_blocks != 0):
        raise UserError("cached features need a frozen pretrained backbone (not small_cnn, no --trainable-blocks)")
    missing = sorted({e.image for e in train + (val or []) if not os.path.isfile(e.image)})
    if missing:  # before anything is built: a wrong --image-root is the usual cause
        raise UserError(f"{len(missing)} image(s) not found, e.g. {missing[0]}; check the paths or --image-root")
    decoder_config = dict(embed_dim=embed, units=units, attention_dim=attention_dim, cell_type=cell,
                          dropout=dropout, attention=attention, alpha_c=alpha_c,
                          scheduled_sampling=scheduled_sampling)
    model = ImageCaptioner(vocab_size=len(vocab), backbone=backbone, image_size=size,
                           trainable_blocks=trainable_blocks, decoder=decoder_config, backbone_weights=weights)
    model.build(((None, *size, 3), (None, None)))
    if init_embeddings == "glove":
        from lm.vectors import init_embedding_from_glove
        report = init_embedding_from_glove(model.decoder.embedding, vocab.itos, seed=seed)
        if verbose:
            print(report)
    elif init_embeddings != "random":
        raise UserError(f"unknown --init-embeddings {init_embeddings!r}: choose random or glove")
    if init_from_lm:
        report = init_decoder_from_lm(model.decoder, vocab, init_from_lm)
        if verbose:
            print(report)

    hosts, rank = cluster() if distribute else (1, 0)
    train, train_index, train_caps = _host_shard(train, vocab, max_length, hosts, rank)
    val, val_index, val_caps = _host_shard(val, vocab, max_length, hosts, rank) if val else (val, None, None)
    # --batch-size is global; each process feeds its share of every step. JAX takes that share as the batch;
    # TensorFlow's strategy cuts it from a global-size batch of the worker's own shard (lm.accel.worker_dataset).
    tf_workers = hosts > 1 and keras.backend.backend() == "tensorflow"
    local_batch = batch_size if tf_workers else batch_size // hosts
    # Streaming: a frozen CNN runs once per image into a keyed feature cache (captioner.features) and batches read
    # its shards; end to end, batches decode their images when asked. Nothing holds the whole dataset in memory.
    from captioner.streaming import CachedGrids, DecodedImages, StreamBatches

    cache = None
    if cache_features:  # one cache for every image of the run (train and val), shared with any other run on them
        from captioner.features import build_feature_cache
        cache = build_feature_cache(model.backbone, [e.image for e in train + (val or [])], backbone_name=backbone,
                                    image_size=size, policy=spec.policy, cache_root=cache_dir, verbose=verbose)

    # TensorFlow retraces with the time axis relaxed to None, which the attention loop cannot unroll: there every
    # batch is padded to one width. JAX and PyTorch get length buckets (a compiled graph per bucket width).
    # The width is the data's longest caption (+ <bos>), not --max-length: captions of 4-14 words padded to 24
    # would spend 40% of every step on padding. Several hosts need one width too (every process's batch is one
    # slice of the same global array), and there the shards differ: --max-length it is.
    longest = max(len(c) for c in train_caps + (val_caps or [])) + 1 if hosts == 1 else max_length
    fixed = (int(math.ceil(min(longest, max_length) / 4) * 4)
             if keras.backend.backend() == "tensorflow" or hosts > 1 else None)

    def batches(examples, index, caps, shuffle):
        """StreamBatches over cached grids (rows: the cache's) or over decoded images (rows: example indices)."""
        paths = [e.image for e in examples]
        if cache is not None:
            rows_source, rows = CachedGrids(cache), cache.rows([paths[i] for i in index])
        else:
            rows_source, rows = DecodedImages(paths, size, spec.policy), np.asarray(index, "int64")
        return StreamBatches(rows_source, rows, caps, local_batch, shuffle=shuffle, seed=seed, fixed_width=fixed,
                             drop_remainder=distribute)

    train_batches = batches(train, train_index, train_caps, True)
    val_batches = batches(val, val_index, val_caps, False) if val else None
    steps = steps_per_epoch or len(train_batches)  # per epoch, for the learning-rate schedule
    if tf_workers:
        train_batches = worker_dataset(train_batches)
        val_batches = worker_dataset(val_batches) if val_batches is not None else None
    trainee = model.decoder if cache_features else model
    from captioner.xe import compile_for_xe, monitor_callbacks
    compile_for_xe(trainee, lr, schedule, warmup, epochs, steps, label_smoothing, clipnorm, lr_decay,
                   jit_option(jit))
    # "data" records the dataset as the user named it (a note for people and for domain.npz's "trained on"; nothing
    # reads files through it), not as an absolute path that would name this machine's folders wherever the model goes.
    extra = {"max_length": max_length, "resize_policy": spec.policy, "data": os.fspath(data)}
    by_cider = monitor == "cider"
    checkpoint = BestEpoch(out_dir, lambda: model_files("caption", model, vocab, extra),
                           monitor="val_cider" if by_cider else "val_loss", mode="max" if by_cider else "min",
                           patience=patience, lr_decay=lr_decay, time_budget=time_budget, start=start,
                           resume_model=model, resume_optimizer=trainee.optimizer, verbose=verbose)
    # Validation CIDEr-D captions every validation image (not pair): its grids (cache) or pixels (end to end).
    val_inputs = None
    if by_cider and val:
        val_paths = [e.image for e in val]
        val_inputs = (_Rows(CachedGrids(cache), cache.rows(val_paths)) if cache is not None
                      else _Rows(DecodedImages(val_paths, size, spec.policy), np.arange(len(val))))
    callbacks = monitor_callbacks(checkpoint, monitor, model, vocab, val, val_inputs, cache_features, max_length,
                                  train, verbose)
    done = checkpoint.resume() if resuming else 0
    timer = EpochTimer()
    if done < epochs and not checkpoint.stopped:
        trainee.fit(train_batches, validation_data=val_batches, epochs=epochs, initial_epoch=done, verbose=verbose,
                    callbacks=[EpochOrder(*([] if tf_workers else [train_batches])), *callbacks, timer],
                    steps_per_epoch=steps_per_epoch)
    if not checkpoint.saved:  # e.g. a diverged run: keep the last epoch
        write_model_folder(out_dir, model_files("caption", model, vocab, extra))
    checkpoint.finish()
    # domain.npz: what out-of-domain images are measured by (a bounded sample of the images, decoded afresh)
    from captioner.domain import calibrate_from_data
    calibrate_from_data(out_dir, data, image_root, train_split=train_split, heldout_split=val_split,
                        max_train=1000, max_heldout=300)
    history = checkpoint.history
    return {"train_seconds": round(time.perf_counter() - start, 1), "epochs": len(history),
            "loss": [h.get("loss") for h in history],
            "val_loss": [h.get("val_loss") for h in history] if val and not by_cider else None,
            "val_cider": [h.get("val_cider") for h in history] if by_cider else None,
            "best_epoch": checkpoint.best_epoch, "vocab_size": len(vocab), "min_count": min_count,
            "train_images": len(train),
            "train_pairs": len(train_caps), "cached_features": bool(cache_features),
            "feature_cache": cache.folder if cache is not None else None, "epoch_seconds": timer.seconds,
            "hosts": hosts}


class EpochTimer(keras.callbacks.Callback):
    """Wall seconds of each epoch this run trained (training and validation), for the summary and benchmarks."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(round(time.perf_counter() - self._start, 2))


class _Rows:
    """A rows source (streaming.CachedGrids / DecodedImages) seen as a sequence: view[a:b] reads rows[a:b]."""

    def __init__(self, source, rows):
        self.source, self.rows = source, np.asarray(rows, "int64")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> np.ndarray:
        return self.source.read(self.rows[index])


def init_decoder_from_lm(decoder, vocab: Vocabulary, lm_dir) -> str:
    """Starts the decoder's embedding and recurrent weights from a trained `lm` model folder.

    Words are mapped through both vocabularies (a caption word the LM lacks keeps its random embedding). The
    caption's `<bos>` row gets the LM's line-start token: `<eos>` for a stream-trained LM (its lines follow an
    `<eos>`; its `<bos>` row never trained), `<bos>` for a sentence-trained one. The decoder's cell input is
    [word embedding; context], so the LM kernel fills the word rows and the context rows stay random. The decoder
    has one recurrent layer: the LM's layer 0 is copied and every further LM layer is named as not copied. Any
    shape that differs is reported and left as it was, never silently skipped.
    """
    from lm.checkpoint import load_model_dir
    lm = load_model_dir(lm_dir)
    if lm.arch not in ("rnn", "gru", "lstm"):
        raise UserError(f"{lm_dir}: --init-from-lm needs a recurrent LM (rnn, gru or lstm), not {lm.arch}")
    source, lines = lm.model, []
    if lm.arch != decoder.cell_type:
        raise UserError(f"{lm_dir}: the LM is {lm.arch} but the decoder cell is {decoder.cell_type} (use --cell)")
    lm_emb = np.asarray(source.embedding.embeddings)
    emb = np.asarray(decoder.embedding.embeddings).copy()
    if lm_emb.shape[1] != emb.shape[1]:
        lines.append(f"embedding: LM {lm_emb.shape[1]} vs decoder {emb.shape[1]} dims: not copied")
    else:
        from lm.vocab import BOS, EOS
        line_start = EOS if lm.mode == "stream" else BOS
        source_of = {w: w for w in vocab.itos if w in lm.vocab.stoi}
        source_of[BOS] = line_start  # the caption's <bos> plays the LM's line start
        shared = [(i, lm.vocab.stoi[source_of[w]]) for i, w in enumerate(vocab.itos) if w in source_of]
        for i, j in shared:
            emb[i] = lm_emb[j]
        decoder.embedding.embeddings.assign(emb)
        lines.append(f"embedding: {len(shared)} of {len(vocab)} caption words copied from the LM "
                     f"(<bos> from the LM's {line_start}, its {lm.mode} line start)")
    src_cell, dst_cell = source.stack.cells[0], decoder.stack.cells[0]
    for name in ("kernel", "recurrent_kernel", "bias"):
        a, b = getattr(src_cell, name), getattr(dst_cell, name)
        a_val, b_val = np.asarray(a), np.asarray(b).copy()
        if a_val.shape == b_val.shape:
            b.assign(a_val)
            lines.append(f"{name}: copied {a_val.shape}")
        elif (name == "kernel" and a_val.shape[1] == b_val.shape[1] and a_val.shape[0] == decoder.embed_dim
              and a_val.shape[0] < b_val.shape[0]):  # only LM rows in the decoder's word space fit the word rows
            b_val[: a_val.shape[0]] = a_val  # word rows; the context rows stay as initialised
            b.assign(b_val)
            lines.append(f"kernel: copied the {a_val.shape[0]} word-input rows of {b_val.shape[0]}")
        else:
            lines.append(f"{name}: LM {a_val.shape} vs decoder {b_val.shape}: not copied")
    lines[-3:] = ["layer 0 " + line for line in lines[-3:]]
    for layer in range(1, len(source.stack.cells)):
        lines.append(f"layer {layer}: not copied (the caption decoder has one recurrent layer)")
    return "init from LM: " + "; ".join(lines)
