"""Self-critical sequence training (SCST; Rennie et al., 2017) with a CIDEr-D reward, from an XE-trained captioner.

`captioner train DATA --scst --init MODEL_DIR --out DIR` (or `train_scst`):
  1. The backbone is frozen: every training image's grid is computed once (into OUT/features, memory-mapped).
  2. Each step takes a batch of images, samples K captions per image from the current decoder (softmax with a
     temperature, up to max_length tokens), and scores every sample with CIDEr-D against the image's reference
     captions, document frequencies from the whole training split (captioner.cider). `<eos>` is a token of the
     samples and the references, so ending at the right place earns n-grams too.
  3. The baseline of a sample is the mean reward of the *other* K - 1 samples of the same image ("new SCST" in
     ruotianluo/ImageCaptioning.pytorch), so no greedy decode is needed and the advantage sums to 0 per image.
  4. The loss is REINFORCE with that baseline: -(reward - baseline) * log p(sample), summed over the sample's tokens
     and divided by the batch's number of tokens. It is a token cross-entropy on the sampled captions weighted by
     the advantage, so the decoder's own compiled Keras train step runs it on every backend.
  5. After every epoch the validation images are captioned greedily; the epoch with the best validation CIDEr-D
     is written to OUT (a complete model folder: the XE model's backbone, the new decoder).

Why `train_on_batch` and not `fit`: the samples must come from the current weights. Inside `fit`, TensorFlow's
input pipeline prefetches batches (samples from older weights) and JAX's trainer keeps the weights out of the
model's variables during an epoch, so sampling inside the data pipeline is off-policy or impossible.
`train_on_batch` runs the same compiled train step and leaves the variables current after each call, on
TensorFlow, JAX and PyTorch alike.

Dropout is switched off in the decoder during SCST, so the log probabilities that get the gradient are those of
the policy that drew the samples.
"""

from __future__ import annotations

import math
import os
import time

import keras
import numpy as np

from captioner.cider import CiderD
from lm.accel import jit_option
from lm.errors import UserError
from lm.vocab import BOS_ID, EOS_ID, PAD_ID


def cut_at_eos(row) -> list[int]:
    """A sampled id row -> its ids up to and including the first `<eos>` (all of them when there is none)."""
    row = [int(w) for w in row]
    return row[: row.index(EOS_ID) + 1] if EOS_ID in row else row


def self_critical_advantages(rewards: np.ndarray, samples: int) -> np.ndarray:
    """rewards (images * samples,), grouped by image -> reward minus the mean reward of the image's other samples."""
    grouped = np.asarray(rewards, "float64").reshape(-1, samples)  # (images, K)
    others = (grouped.sum(axis=1, keepdims=True) - grouped) / (samples - 1)  # (images, K)
    return (grouped - others).reshape(-1)


def scst_batch(sequences: list[list[int]], advantages: np.ndarray, width: int):
    """Sampled id sequences (each ending in `<eos>` unless cut at max_length) and their advantages ->
    tokens_in (n, width) `<bos>` w1..; tokens_out (n, width) w1 .. `<eos>`; weights (n, width): the advantage on
    real tokens, scaled so that Keras' mean over all (n * width) cells equals the sum over real tokens divided by
    their number."""
    n = len(sequences)
    tokens_in = np.full((n, width), PAD_ID, "int32")
    tokens_out = np.full((n, width), PAD_ID, "int32")
    for i, seq in enumerate(sequences):
        seq = seq[:width]
        tokens_out[i, : len(seq)] = seq
        tokens_in[i, : len(seq)] = [BOS_ID] + seq[:-1]
    mask = (tokens_out != PAD_ID).astype("float32")
    weights = mask * np.asarray(advantages, "float32")[:, None] * (mask.size / max(mask.sum(), 1.0))
    return tokens_in, tokens_out, weights.astype("float32")


def encode_grids(model, examples, image_size, policy, path, batch_size=64, verbose=1) -> np.ndarray:
    """Every example's image through the (frozen) backbone, once -> grids (N, pixels, C) in a .npy memmap."""
    from tqdm import tqdm

    from captioner.images import load_images
    pixels = model.grid[0] * model.grid[1]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    grids = np.lib.format.open_memmap(path, mode="w+", dtype="float32", shape=(len(examples), pixels, model.grid[2]))
    for start in tqdm(range(0, len(examples), batch_size), desc="image grids", unit="batch", disable=not verbose):
        chunk = examples[start: start + batch_size]
        images, errors = load_images([e.image for e in chunk], image_size, policy)
        bad = [e for e in errors if e]
        if bad:
            raise UserError(f"a training image cannot be read: {bad[0]}")
        grid = keras.ops.convert_to_numpy(model.encode(images))  # (b, pixels, C)
        grids[start: start + len(chunk)] = grid.reshape(len(chunk), pixels, -1)
    grids.flush()
    return grids


def compiled(function):
    """`function` traced into one graph on TensorFlow (a search is many small ops: eager TensorFlow runs the
    sampler ~100x slower); as it is on the other backends."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        return tf.function(function, reduce_retracing=True)
    return function


def greedy_cider(search, grids, scorer: CiderD, batch_size=128) -> float:
    """Mean CIDEr-D of greedy captions (ids up to `<eos>`) of `grids` against the scorer's corpus, image i <-> grid
    i. `search` maps grids (b, pixels, C) -> words (b, T)."""
    sequences = []
    for start in range(0, len(grids), batch_size):
        words = search(np.asarray(grids[start: start + batch_size]))
        sequences += [cut_at_eos(r) for r in keras.ops.convert_to_numpy(words)]
    return float(scorer.score(sequences, np.arange(len(sequences))).mean())


def train_scst(data, init_dir, out_dir, image_root=None, samples=5, epochs=5, batch_size=16, lr=5e-5,
               temperature=1.0, max_length=None, train_split="train", val_split="val", seed=0, verbose=1,
               time_budget=None, max_images=None, patience=3, clipnorm=5.0, steps_per_epoch=None,
               jit="auto") -> dict:
    """Fine-tunes the decoder of the captioner in `init_dir` with SCST and writes the best epoch to `out_dir`.

    Args:
        data, image_root, train_split, val_split, max_images: the dataset, as for `captioner train`.
        init_dir: an XE-trained caption model folder (the starting point; left as it is).
        samples: K captions sampled per image (>= 2: the baseline is the mean of the other samples).
        epochs, batch_size (images per step; the decoder sees batch_size * samples captions), lr, clipnorm.
        temperature: sampling temperature (1 = the model's own distribution).
        max_length: longest sample in tokens (words + `<eos>`); default the model folder's.
        patience: stop after this many epochs without a better validation CIDEr-D.
        time_budget: stop after the step past this many seconds.
        steps_per_epoch: steps per epoch (default: one pass over the training images).
        jit: the train step's jit_compile ("auto", True, False), as lm.accel's.
    Returns:
        a summary: per-epoch mean sample reward and validation CIDEr-D (greedy), the best epoch, time.
    """
    from tqdm import tqdm

    from captioner.datasets import load_caption_dataset, split_examples
    from captioner.model import load_model_dir, save_model_dir
    if samples < 2:
        raise UserError("--samples must be >= 2 (the baseline is the mean reward of the other samples)")
    if temperature <= 0:
        raise UserError("--temperature must be > 0")
    if epochs < 1 or batch_size < 1:
        raise UserError("--epochs and --batch-size must be >= 1")
    if os.path.abspath(os.fspath(init_dir)) == os.path.abspath(os.fspath(out_dir)):
        raise UserError("--out must differ from --init (the XE model is the starting point and stays as it is)")
    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    loaded = load_model_dir(init_dir, task="caption")
    model, vocab, decoder = loaded.model, loaded.vocab, loaded.model.decoder
    max_length = int(max_length or loaded.config.get("max_length", 20))
    examples = load_caption_dataset(data, image_root)
    train = [e for e in split_examples(examples, train_split) if any(e.captions)]
    val = [e for e in split_examples(examples, val_split, required=False) if any(e.captions)]
    if max_images:
        train, val = train[:max_images], val[: max(1, max_images // 10)] if val else val
    if len(train) < 2:
        raise UserError(f"{data}: SCST needs at least 2 training images with captions")

    def references(split):  # ids with <eos>, cut like XE training cuts them
        return [[vocab.encode(c[: max_length - 1], add_eos=True) for c in e.captions if c] for e in split]

    train_scorer = CiderD(references(train))  # document frequencies from the training split
    val_scorer = CiderD(references(val)) if val else None
    feature_dir = os.path.join(out_dir, "features")
    grids = encode_grids(model, train, loaded.image_size, loaded.resize_policy,
                         os.path.join(feature_dir, "scst-train.npy"), verbose=verbose)
    val_grids = (encode_grids(model, val, loaded.image_size, loaded.resize_policy,
                              os.path.join(feature_dir, "scst-val.npy"), verbose=verbose) if val else None)

    # On-policy: no dropout while sampling or training; no attention penalty (the reward is the objective).
    saved_dropout, saved_alpha = decoder.drop.rate, decoder.alpha_c
    decoder.drop.rate, decoder.alpha_c = 0.0, 0.0
    decoder.compile(optimizer=keras.optimizers.Adam(lr, global_clipnorm=float(clipnorm) or None),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit_option(jit))
    width = int(math.ceil(max_length / 4) * 4)  # one padded width: one compiled graph
    rng = np.random.default_rng(seed)
    sampler = keras.random.SeedGenerator(seed)
    steps = steps_per_epoch or math.ceil(len(train) / batch_size)
    extra = {k: v for k, v in loaded.config.items() if k not in ("task", "model")}
    extra.update(max_length=max_length, scst={"init": os.path.abspath(os.fspath(init_dir)), "samples": samples,
                                               "temperature": temperature, "lr": lr})
    sample = compiled(lambda feats: decoder.generate(feats, method="sample", max_length=max_length,
                                                     temperature=temperature, seed=sampler)[0])  # (B * K, T)
    greedy = compiled(lambda feats: decoder.generate(feats, beam_width=1, max_length=max_length,
                                                     early_exit=False)[0])  # (b, T)
    history = {"reward": [], "val_cider": [], "loss": []}
    best, best_epoch, bad = -math.inf, None, 0
    if val_scorer is not None:
        best = greedy_cider(greedy, val_grids, val_scorer)  # the XE model itself is the bar to beat
        history["val_cider_init"] = best
        if verbose:
            print(f"XE model: validation CIDEr-D (greedy) {best:.4f}")
    stopped = False
    try:
        for epoch in range(epochs):
            order = rng.permutation(len(train))
            rewards, losses = [], []
            bar = tqdm(range(steps), desc=f"SCST epoch {epoch + 1}/{epochs}", unit="step", disable=not verbose)
            for step in bar:
                rows = order[(step * batch_size) % len(train):][:batch_size]
                if len(rows) < batch_size:  # wrap around: every batch has the same shape
                    rows = np.concatenate([rows, order[: batch_size - len(rows)]])
                image_index = np.repeat(rows, samples)  # (B * K,)
                feats = np.asarray(grids[np.sort(rows)])[np.argsort(np.argsort(rows))]  # (B, pixels, C)
                feats = np.repeat(feats, samples, axis=0)  # (B * K, pixels, C)
                words = sample(feats)  # (B * K, T)
                sequences = [cut_at_eos(r) for r in keras.ops.convert_to_numpy(words)]
                reward = train_scorer.score(sequences, image_index)  # (B * K,)
                advantage = self_critical_advantages(reward, samples)
                tokens_in, tokens_out, weights = scst_batch(sequences, advantage, width)
                loss = decoder.train_on_batch((feats, tokens_in), tokens_out, sample_weight=weights)
                loss = float(loss[0] if isinstance(loss, (list, tuple)) else loss)
                rewards.append(float(reward.mean()))
                losses.append(loss)
                bar.set_postfix(reward=f"{np.mean(rewards[-20:]):.3f}", loss=f"{loss:.4f}")
                if time_budget and time.perf_counter() - start > time_budget:
                    stopped = True
                    break
            bar.close()
            history["reward"].append(round(float(np.mean(rewards)), 4))
            history["loss"].append(round(float(np.mean(losses)), 5))
            value = greedy_cider(greedy, val_grids, val_scorer) if val_scorer is not None else None
            history["val_cider"].append(None if value is None else round(value, 4))
            if verbose:
                shown = "-" if value is None else f"{value:.4f}"
                print(f"SCST epoch {epoch + 1}: mean sample reward {history['reward'][-1]:.4f}, validation "
                      f"CIDEr-D (greedy) {shown}")
            if value is None or value > best:
                best, best_epoch, bad = (best if value is None else value), epoch + 1, 0
                decoder.drop.rate, decoder.alpha_c = saved_dropout, saved_alpha  # the folder keeps the config
                save_model_dir(out_dir, "caption", model, vocab, extra)
                decoder.drop.rate, decoder.alpha_c = 0.0, 0.0
            else:
                bad += 1
                if bad >= patience:
                    break
            if stopped:
                break
    finally:
        decoder.drop.rate, decoder.alpha_c = saved_dropout, saved_alpha
    if best_epoch is None:  # no epoch beat the XE model on validation: the folder holds the XE model unchanged
        save_model_dir(out_dir, "caption", load_model_dir(init_dir, task="caption").model, vocab, extra)
    return {"train_seconds": round(time.perf_counter() - start, 1), "epochs": len(history["reward"]),
            "best_epoch": best_epoch, "samples": samples, "train_images": len(train), **history}
