"""Self-critical sequence training (SCST; Rennie et al., 2017) with a CIDEr-D reward, from an XE-trained captioner.

`captioner train DATA --scst --init MODEL_DIR --out DIR` (or `train_scst`):
  1. The backbone is frozen: every training image's grid is computed once (into OUT/features, memory-mapped).
  2. Each step takes a batch of images, samples K captions per image from the current decoder (softmax with a
     temperature, up to max_length tokens), and scores every sample with CIDEr-D against the image's reference
     captions, document frequencies from the whole training split (captioner.cider). `<eos>` is a token of the
     samples and the references, so ending at the right place earns n-grams too.
  3. The baseline of a sample is the mean reward of the *other* K - 1 samples of the same image ("new SCST" in
     ruotianluo/ImageCaptioning.pytorch), so no greedy decode is needed and the advantage sums to 0 per image.
  4. The loss is REINFORCE with that baseline: -(reward - baseline) * log p(sample), log p summed over the sample's
     tokens (`<eos>` included), divided by the batch's number of sampled tokens.
  5. After every epoch the validation images are captioned greedily (captioner.xe.ValidationCider, as XE training
     with `--monitor cider` does); lm.checkpoint.BestEpoch writes the epoch with the best validation CIDEr-D to OUT
     (a complete model folder: the XE model's backbone, the new decoder) and stops early; the XE model's own
     validation CIDEr-D is the bar to beat.

How it runs under `fit` on every backend: `SelfCritical` wraps the decoder in a keras.Model whose `call` samples
the K captions in-graph from the current weights (lm.sampling.sample_search with a SeedGenerator the model
tracks) and returns them with their summed log probabilities, and whose `compute_loss` gets the rewards from the
host (lm.accel.host_call: tf.numpy_function / jax.pure_callback / a plain call on PyTorch) and returns the loss
above. Each backend's stock train step runs it: TensorFlow's GradientTape, JAX's stateless value_and_grad (the
sampler's seed state and the reward metric are threaded through it like any variable), PyTorch's backward. So the
samples always come from the weights being trained, and `fit` brings its progress bar, callbacks and history.
(The alternative, a train_step per backend, would repeat the gradient, optimizer and metrics code of Keras'
three trainers; only the reward needs host code, and that is one small function.) TensorFlow and PyTorch compile
without XLA / torch.compile (the host call cannot be compiled); JAX jits the step around the callback.

The samples are drawn without dropout (search runs the decoder's inference path), so the log probabilities that
get the gradient are those of the policy that drew the samples.
"""

from __future__ import annotations

import math
import os
import time

import keras
import numpy as np
from keras import ops

from captioner.cider import CiderD
from lm.accel import host_call, jit_option
from lm.errors import UserError
from lm.vocab import BOS_ID, EOS_ID


def cut_at_eos(row, eos_id: int = EOS_ID) -> list[int]:
    """A sampled id row -> its ids up to and including the first `<eos>` (all of them when there is none)."""
    row = [int(w) for w in row]
    return row[: row.index(eos_id) + 1] if eos_id in row else row


def self_critical_advantages(rewards, samples: int):
    """rewards (images * samples,), grouped by image -> reward minus the mean reward of the image's other samples
    (keras.ops: a tensor in the train step, numpy in, tensor out elsewhere)."""
    grouped = ops.reshape(rewards, (-1, samples))  # (images, K)
    others = (ops.sum(grouped, axis=1, keepdims=True) - grouped) / (samples - 1)  # (images, K)
    return ops.reshape(grouped - others, (-1,))


def sampled_tokens(words, eos_id: int = EOS_ID):
    """words (n, T) as sample_search returns them (`<eos>` repeated after the end) -> (n, T) float mask of the
    sampled tokens: those up to and including the first `<eos>`."""
    ended = ops.cast(ops.equal(words, eos_id), "int32")  # (n, T)
    before = ops.cumsum(ended, axis=1) - ended  # <eos> seen strictly before step t
    return ops.cast(ops.equal(before, 0), "float32")


class SelfCritical(keras.Model):
    """The SCST trainee: a CaptionDecoder whose `fit` samples from itself and follows a host-computed reward.

    x: grids (B, pixels, C) of B images; y: their indices (B,) into the reward's references.
    call(x) -> (words (B * K, T) sampled at `temperature`, log p (B * K,) summed over each sample's tokens under the
    model, differentiable); compute_loss -> -sum((r - baseline) * log p) / sampled tokens, with r from
    `reward(words (n, T) int32 numpy, images (n,) int32 numpy) -> (n,) float` and baseline the mean of the image's
    other K - 1 rewards. Logs "reward" (the mean sample reward) beside "loss".

    Args:
        decoder: a built captioner.decoder.CaptionDecoder (its variables are the ones trained).
        reward: the host function above (e.g. CIDEr-D of each sample against image `images[i]`'s references).
        samples: K >= 2. max_length: tokens per sample (words + `<eos>`). temperature: sampling temperature.
        bos_id, eos_id: the vocabulary's `<bos>` and `<eos>`. seed: the sampler's seed.

    Example:
        >>> trainee = SelfCritical(decoder, reward, samples=5, max_length=16, bos_id=vocab.bos_id,
        ...                        eos_id=vocab.eos_id)
        >>> trainee.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=False)
        >>> trainee.fit(ImageBatches(grids, 16), epochs=2)
    """

    def __init__(self, decoder, reward, samples=5, max_length=16, temperature=1.0, bos_id=BOS_ID, eos_id=EOS_ID,
                 seed=0, **kwargs):
        super().__init__(**kwargs)
        self.decoder, self.reward = decoder, reward
        self.samples, self.max_length, self.temperature = int(samples), int(max_length), float(temperature)
        self.bos_id, self.eos_id = int(bos_id), int(eos_id)
        self.sampler = keras.random.SeedGenerator(seed)
        self.reward_mean = keras.metrics.Mean(name="reward")
        self.built = True  # the decoder is built; nothing of its own to build

    def call(self, features, training=None):
        features = ops.repeat(features, self.samples, axis=0)  # (B * K, pixels, C): image i's rows together
        words, log_p, _ = self.decoder.generate(features, method="sample", max_length=self.max_length,
                                                temperature=self.temperature, seed=self.sampler,
                                                start_id=self.bos_id, end_id=self.eos_id, length_penalty=0.0)
        return words, log_p  # (B * K, T), (B * K,) summed log p

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        words, log_p = y_pred
        images = ops.repeat(ops.cast(y, "int32"), self.samples, axis=0)  # (B * K,)
        rewards = host_call(self.reward, (words.shape[0],), "float32", ops.stop_gradient(words), images)
        self.reward_mean.update_state(rewards)
        advantage = ops.stop_gradient(self_critical_advantages(rewards, self.samples))  # (B * K,)
        tokens = ops.sum(sampled_tokens(words, self.eos_id))
        return -ops.sum(advantage * log_p) / ops.maximum(tokens, 1.0)


class ImageBatches(keras.utils.PyDataset):
    """(grids (N, pixels, C), e.g. a memmap) -> `steps` batches of (grids (B, pixels, C), image indices (B,)), a new
    shuffled order every epoch (depends only on (seed, epoch); lm.data.EpochOrder calls `set_epoch`). Every batch
    has B images: the order wraps around."""

    def __init__(self, grids, batch_size, steps=None, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.grids, self.batch_size, self.seed = grids, int(batch_size), int(seed)
        self.steps = int(steps or math.ceil(len(grids) / self.batch_size))
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.order = np.random.default_rng([self.seed, int(epoch)]).permutation(len(self.grids))

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index):
        n = len(self.order)
        rows = self.order[(np.arange(self.batch_size) + index * self.batch_size) % n]  # (B,)
        sorted_rows = np.sort(rows)  # memory-mapped arrays read fastest in ascending order
        feats = np.asarray(self.grids[sorted_rows], "float32")[np.searchsorted(sorted_rows, rows)]
        return feats, rows.astype("int32")


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


def train_scst(data, init_dir, out_dir, image_root=None, samples=5, epochs=5, batch_size=16, lr=5e-5,
               temperature=1.0, max_length=None, train_split="train", val_split="val", seed=0, verbose=1,
               time_budget=None, max_images=None, patience=3, clipnorm=5.0, steps_per_epoch=None,
               jit="auto") -> dict:
    """Fine-tunes the decoder of the captioner in `init_dir` with SCST under `fit` and writes the best epoch to
    `out_dir`.

    Args:
        data, image_root, train_split, val_split, max_images: the dataset, as for `captioner train`.
        init_dir: an XE-trained caption model folder (the starting point; left as it is).
        samples: K captions sampled per image (>= 2: the baseline is the mean of the other samples).
        epochs, batch_size (images per step; the decoder sees batch_size * samples captions), lr, clipnorm.
        temperature: sampling temperature (1 = the model's own distribution).
        max_length: longest sample in tokens (words + `<eos>`); default the model folder's.
        patience: stop after this many epochs without a better validation CIDEr-D (lm.checkpoint.BestEpoch).
        time_budget: stop after the epoch past this many seconds (as XE training does).
        steps_per_epoch: steps per epoch (default: one pass over the training images).
        jit: the train step's jit_compile on JAX ("auto", True, False), as lm.accel's; TensorFlow and PyTorch
            run without XLA / torch.compile (the reward is a host call).
    Without a validation split the epoch with the best mean sample reward is kept.
    Returns:
        a summary: per-epoch mean sample reward, loss and validation CIDEr-D (greedy), the best epoch, seconds.
    """
    from captioner.datasets import load_caption_dataset, split_examples
    from captioner.folders import model_files, save_model_dir
    from captioner.model import load_model_dir
    from captioner.training import EpochTimer
    from captioner.xe import ValidationCider
    from lm.checkpoint import BestEpoch
    from lm.data import EpochOrder
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
    model, vocab = loaded.model, loaded.vocab
    max_length = int(max_length or loaded.config.get("max_length", 20))
    examples = load_caption_dataset(data, image_root)
    train = [e for e in split_examples(examples, train_split) if any(e.captions)]
    val = [e for e in split_examples(examples, val_split, required=False) if any(e.captions)]
    if max_images:
        train, val = train[:max_images], val[: max(1, max_images // 10)] if val else val
    if len(train) < 2:
        raise UserError(f"{data}: SCST needs at least 2 training images with captions")

    # The reward: CIDEr-D of id sequences with <eos>, references cut like XE training cuts them, document
    # frequencies from the training split.
    scorer = CiderD([[vocab.encode(c[: max_length - 1], add_eos=True) for c in e.captions if c] for e in train])

    def reward(words, images):  # numpy (n, T), (n,) -> (n,)
        return scorer.score([cut_at_eos(row, vocab.eos_id) for row in words], images).astype("float32")

    feature_dir = os.path.join(out_dir, "features")
    grids = encode_grids(model, train, loaded.image_size, loaded.resize_policy,
                         os.path.join(feature_dir, "scst-train.npy"), verbose=verbose)
    val_grids = (encode_grids(model, val, loaded.image_size, loaded.resize_policy,
                              os.path.join(feature_dir, "scst-val.npy"), verbose=verbose) if val else None)

    trainee = SelfCritical(model.decoder, reward, samples=samples, max_length=max_length, temperature=temperature,
                           bos_id=vocab.bos_id, eos_id=vocab.eos_id, seed=seed)
    jit_compile = jit_option(jit) if keras.backend.backend() == "jax" else False
    trainee.compile(optimizer=keras.optimizers.Adam(lr, global_clipnorm=float(clipnorm) or None),
                    jit_compile=jit_compile)
    batches = ImageBatches(grids, batch_size, steps=steps_per_epoch, seed=seed)
    extra = {k: v for k, v in loaded.config.items() if k not in ("task", "model")}
    extra.update(max_length=max_length, scst={"init": os.path.abspath(os.fspath(init_dir)), "samples": samples,
                                               "temperature": temperature, "lr": lr})
    history = {}
    files = lambda: model_files("caption", model, vocab, extra)  # noqa: E731 (the weights when called)
    if val:  # validation CIDEr-D of greedy captions, as XE's --monitor cider; the XE model is the bar to beat
        validation = ValidationCider(model, vocab, val, val_grids, True, max_length, verbose=verbose)
        history["val_cider_init"] = validation.value()
        if verbose:
            print(f"XE model: validation CIDEr-D (greedy) {history['val_cider_init']:.4f}")
        checkpoint = BestEpoch(out_dir, files, monitor="val_cider", mode="max", patience=patience,
                               time_budget=time_budget, start=start, baseline=history["val_cider_init"],
                               verbose=verbose)
        callbacks = [validation, checkpoint]  # the checkpoint reads what the validation logs
    else:  # nothing held out: the epoch with the best mean sample reward
        checkpoint = BestEpoch(out_dir, files, monitor="reward", mode="max", patience=patience,
                               time_budget=time_budget, start=start, verbose=verbose)
        callbacks = [checkpoint]
    timer = EpochTimer()
    fitted = trainee.fit(batches, epochs=epochs, verbose=verbose, callbacks=[EpochOrder(batches), *callbacks, timer])
    logs = fitted.history
    if not checkpoint.saved:  # no epoch beat the XE model on validation: the folder holds the XE model unchanged
        save_model_dir(out_dir, "caption", load_model_dir(init_dir, task="caption").model, vocab, extra)

    def rounded(key, places):
        return [None if v is None else round(float(v), places) for v in logs.get(key, [])]
    history.update(reward=rounded("reward", 4), loss=rounded("loss", 5),
                   val_cider=rounded("val_cider", 4) if val else [None] * len(logs.get("loss", [])))
    return {"train_seconds": round(time.perf_counter() - start, 1), "epochs": len(history["reward"]),
            "best_epoch": checkpoint.best_epoch or None, "samples": samples, "train_images": len(train),
            "epoch_seconds": timer.seconds, **history}
