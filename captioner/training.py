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
from captioner.model import ImageCaptioner, build_captioner, save_model_dir
from lm.accel import accelerated, jit_option
from lm.errors import UserError
from lm.vocab import Vocabulary


class CaptionBatches(keras.utils.PyDataset):
    """(inputs (batch, ...) indexed by `image_index`, caption ids) -> ((inputs, tokens_in), tokens_out) batches.

    Pairs are grouped into batches of similar caption length, and the batch order is shuffled every epoch.
    """

    def __init__(self, inputs, image_index, captions, batch_size, shuffle=True, seed=0, fixed_width=None,
                 drop_remainder=False, **kwargs):
        super().__init__(**kwargs)
        self.fixed_width = fixed_width
        self.drop_remainder = drop_remainder  # only full batches (--distribute: equal shards on every device)
        self.inputs, self.image_index, self.captions = inputs, np.asarray(image_index), captions
        self.batch_size, self.shuffle = batch_size, shuffle
        self.rng = np.random.default_rng(seed)
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

    def on_epoch_end(self):
        if self.shuffle:
            self._make_batches()


def _pairs(examples, vocab: Vocabulary, max_length: int):
    """Every (image, caption) pair as (image index, caption ids cut to max_length - 1 words)."""
    index, captions = [], []
    for i, example in enumerate(examples):
        for tokens in example.captions:
            if tokens:
                index.append(i)
                captions.append(vocab.encode(tokens[: max_length - 1]))
    return np.asarray(index, "int64"), captions


def decode_all(examples, image_size, policy, verbose=1) -> np.ndarray:
    """Decodes every example's image once into a uint8 array (N, h, w, 3), with a progress bar."""
    from captioner.images import load_images
    from tqdm import tqdm
    out = np.zeros((len(examples), *image_size, 3), "uint8")
    bad = []
    for start in tqdm(range(0, len(examples), 64), desc="decoding images", unit="batch", disable=not verbose):
        chunk = examples[start: start + 64]
        images, errors = load_images([e.image for e in chunk], image_size, policy)
        out[start: start + len(chunk)] = images.astype("uint8")
        bad += [e for e in errors if e]
    if bad:
        raise UserError(f"{len(bad)} training image(s) cannot be read; first: {bad[0]}")
    return out


@accelerated  # mixed_precision and distribute: the models below are built, compiled and fitted under them
def train_captioner(data, out_dir, image_root=None, backbone="small_cnn", weights=None, image_size=None,
                    trainable_blocks=0, epochs=10, batch_size=32, lr=1e-3, embed=256, units=512, attention_dim=256,
                    cell="lstm", dropout=0.3, attention=True, alpha_c=1.0, scheduled_sampling=0.0, min_count=1,
                    max_length=24, cache_features=None, cache_dir=None, init_from_lm=None, train_split="train",
                    val_split="val", seed=0, verbose=1, time_budget=None, max_images=None, steps_per_epoch=None,
                    patience=3, lr_decay=1.0, mixed_precision=False, jit="auto", distribute=False,
                    schedule=None, warmup=0.0, label_smoothing=0.0, clipnorm=5.0, monitor="loss") -> dict:
    """Trains a captioner and writes a model folder. Returns a summary (losses per epoch, time, sizes).
    `lr_decay` > 1 divides the learning rate by it after every epoch without validation gain (1: constant).
    `schedule` "cosine" / "step" decays the learning rate over the run (lm.schedules.WarmupDecay) after `warmup`
    epochs of linear warmup (fractions allowed); `label_smoothing` smooths the targets; `clipnorm` clips the global
    gradient norm (0 = off). `monitor` "loss" keeps the epoch with the best validation loss, "cider" the one with
    the best validation CIDEr-D of greedy captions (captioner.cider), for the checkpoint and for early stopping.
    `mixed_precision` (bf16 compute), `jit` (jit_compile: "auto", True, False) and `distribute` (data parallel over
    all local devices) are lm.accel's."""
    from captioner.backbones import backbone_spec
    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    examples = load_caption_dataset(data, image_root)
    train = split_examples(examples, train_split)
    val = split_examples(examples, val_split, required=False)
    if max_images:
        train, val = train[:max_images], val[: max(1, max_images // 10)] if val else val
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
    decoder_config = dict(embed_dim=embed, units=units, attention_dim=attention_dim, cell_type=cell,
                          dropout=dropout, attention=attention, alpha_c=alpha_c,
                          scheduled_sampling=scheduled_sampling)
    model = ImageCaptioner(vocab_size=len(vocab), backbone=backbone, image_size=size,
                           trainable_blocks=trainable_blocks, decoder=decoder_config, backbone_weights=weights)
    model.build(((None, *size, 3), (None, None)))
    if init_from_lm:
        report = init_decoder_from_lm(model.decoder, vocab, init_from_lm)
        if verbose:
            print(report)

    train_index, train_caps = _pairs(train, vocab, max_length)
    val_index, val_caps = _pairs(val, vocab, max_length) if val else (None, None)
    train_images = decode_all(train, size, spec.policy, verbose)
    val_images = decode_all(val, size, spec.policy, verbose) if val else None
    if cache_features:
        from captioner.features import extract_features
        cache_dir = cache_dir or os.path.join(out_dir, "features")
        train_inputs = extract_features(model.backbone, train_images, os.path.join(cache_dir, "train.npy"), verbose)
        val_inputs = (extract_features(model.backbone, val_images, os.path.join(cache_dir, "val.npy"), verbose)
                      if val else None)
        trainee = model.decoder
    else:
        train_inputs, val_inputs, trainee = train_images, val_images, model

    # TensorFlow retraces with the time axis relaxed to None, which the attention loop cannot unroll: there every
    # batch is padded to one width. JAX and PyTorch get length buckets (a compiled graph per bucket width).
    fixed = int(math.ceil(max_length / 4) * 4) if keras.backend.backend() == "tensorflow" else None
    train_batches = CaptionBatches(train_inputs, train_index, train_caps, batch_size, seed=seed, fixed_width=fixed,
                                   drop_remainder=distribute)
    val_batches = (CaptionBatches(val_inputs, val_index, val_caps, batch_size, shuffle=False, fixed_width=fixed,
                                  drop_remainder=distribute)
                   if val else None)
    from captioner.xe import compile_for_xe, monitor_callbacks
    compile_for_xe(trainee, lr, schedule, warmup, epochs, steps_per_epoch or len(train_batches), label_smoothing,
                   clipnorm, lr_decay, jit_option(jit))
    extra = {"max_length": max_length, "resize_policy": spec.policy, "data": os.path.abspath(os.fspath(data))}
    checkpoint = BestCheckpoint(model, vocab, out_dir, extra, patience, time_budget, start, verbose, lr_decay)
    callbacks = monitor_callbacks(checkpoint, monitor, model, vocab, val, val_inputs, cache_features, max_length,
                                  train, verbose)
    history = trainee.fit(train_batches, validation_data=val_batches, epochs=epochs, verbose=verbose,
                          callbacks=callbacks, steps_per_epoch=steps_per_epoch)
    if not checkpoint.saved:  # e.g. no validation split: keep the last epoch
        save_model_dir(out_dir, "caption", model, vocab, extra)
    return {"train_seconds": round(time.perf_counter() - start, 1), "epochs": len(history.history.get("loss", [])),
            "loss": history.history.get("loss"), "val_loss": history.history.get("val_loss"),
            "val_cider": history.history.get("val_cider"), "best_epoch": checkpoint.best_epoch,
            "vocab_size": len(vocab), "train_images": len(train), "train_pairs": len(train_caps),
            "cached_features": bool(cache_features)}


class BestCheckpoint(keras.callbacks.Callback):
    """Writes the whole captioner (CNN + decoder) whenever validation loss improves; divides the learning rate by
    `lr_decay` after an epoch without gain; stops after `patience` such epochs or when the time budget is spent."""

    def __init__(self, captioner, vocab, out_dir, extra, patience, time_budget, start, verbose, lr_decay=1.0):
        super().__init__()
        self.captioner, self.vocab, self.out_dir, self.extra = captioner, vocab, out_dir, extra
        self.patience, self.time_budget, self.start, self.verbose = patience, time_budget, start, verbose
        self.lr_decay = float(lr_decay)
        self.best, self.bad, self.saved = math.inf, 0, False
        self.monitor, self.best_epoch = "loss", None  # "cider": higher val_cider is better

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = logs.get("val_loss", logs.get("loss"))
        if self.monitor == "cider" and logs.get("val_cider") is not None:
            value = -logs["val_cider"]
        if value is not None and value < self.best:
            self.best, self.bad, self.saved, self.best_epoch = value, 0, True, epoch + 1
            save_model_dir(self.out_dir, "caption", self.captioner, self.vocab, self.extra)
        else:
            self.bad += 1
            if self.lr_decay > 1:
                lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
                self.model.optimizer.learning_rate.assign(lr / self.lr_decay)
                if self.verbose:
                    print(f"epoch {epoch + 1}: no validation gain, learning rate -> {lr / self.lr_decay:.2e}")
            if self.bad >= self.patience:
                self.model.stop_training = True
        if self.time_budget and time.perf_counter() - self.start > self.time_budget:
            self.model.stop_training = True


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
