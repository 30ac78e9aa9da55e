"""AWD-LSTM's regularisers (Merity, Keskar and Socher, 2017, "Regularizing and Optimizing LSTM Language Models").

Every piece acts in training only: at inference the model computes exactly what the plain model with the same weights
computes (tests/test_lm_regularizers.py checks it per piece). All of them are off by default.

  * `LockedDropout` (variational dropout): one mask per sequence, the same at every time step (on the embedded inputs,
    between layers, on the last layer's output). A few elementwise ops: ~1.02x a training step.
  * `EmbeddingDropout`: drops whole words (rows of the embedding matrix) for a batch, scaling the others by 1/(1-p).
    One gather per batch: ~1.03x a training step.
  * weight drop (`weight_dropped_sequence`): DropConnect on the recurrent (hidden-to-hidden) kernel, one mask per
    forward pass. Keras' fused LSTM/GRU/RNN layers cannot take a masked kernel, so in training the stack runs its own
    scan over the very same cell variables (the fused layer serves inference). This loses the fused kernel (cuDNN on
    a GPU; on a CPU Keras' LSTM is a loop over time anyway): see the measured cost in `RecurrentStack`'s docstring.

  * AR / TAR (activation and temporal activation regularisation): losses added by `LanguageModel` (its `ar`, `tar`).
  * `WeightAverage`: the weights used for validation and saved in the model folder are an average of the training
    iterates (an EMA, or NT-ASGD's uniform average started when validation stops improving); training goes on with
    the raw weights.

Measured wall time per training step relative to the plain model (scripts/bench_awd.py; 2x200 LSTM, 10k vocabulary,
batch 20 x 35, TensorFlow on this 2-core CPU, 15 steps): locked dropout 1.02x, embedding dropout 1.03x, weight drop
1.18x, AR/TAR 1.01x, the EMA 1.06x, all together 1.04x (the last ones within the noise); the 10k-word softmax
dominates the step.

Model code here uses keras.layers / keras.ops / keras.random only (TensorFlow, JAX and PyTorch alike).
"""

from __future__ import annotations

import keras
from keras import layers, ops


def _keep_mask(shape, rate, seed_generator, dtype):
    """A {0, 1/(1-rate)} mask of `shape`: each entry kept with probability 1 - rate."""
    keep = keras.random.uniform(shape, seed=seed_generator) >= rate
    return ops.cast(keep, dtype) / ops.cast(1.0 - rate, dtype)


@keras.saving.register_keras_serializable(package="lm")
class LockedDropout(layers.Layer):
    """Variational ("locked") dropout: one mask per sequence, shared over time.

    (batch, time, features) -> same shape; the mask is (batch, 1, features). A (batch, features) input (one step)
    gets a (batch, features) mask. Identity outside training and at rate 0.

    Args:
        rate: probability of dropping a unit.
        seed: seed of its keras.random.SeedGenerator (None: random).

    Example:
        >>> y = LockedDropout(0.3)(ops.ones((2, 5, 4)), training=True)  # y[:, t] equal for every t
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"LockedDropout rate must be in [0, 1), got {rate}")
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if self.rate > 0 else None

    def call(self, inputs, training=None):
        if not training or self.rate == 0:
            return inputs
        shape = ops.shape(inputs)
        mask_shape = (shape[0], 1, shape[-1]) if len(inputs.shape) == 3 else (shape[0], shape[-1])
        return inputs * _keep_mask(mask_shape, self.rate, self.seed_generator, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package="lm")
class EmbeddingDropout(layers.Layer):
    """Word-level dropout on an embedding lookup: for each batch, every row of the embedding matrix (every word type)
    is dropped with probability `rate` and the kept ones are scaled by 1/(1-rate). Equivalent to looking up in the
    masked matrix, done as a gather of the (vocab,) mask (no copy of the matrix).

    Args:
        vocab_size: rows of the embedding matrix.
        rate: probability of dropping a word type.
        seed: seed of its SeedGenerator.

    Example:
        >>> drop = EmbeddingDropout(100, 0.1)
        >>> x = drop(embedding(tokens), tokens, training=True)  # (batch, time, embed), whole words zeroed
    """

    def __init__(self, vocab_size, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = int(vocab_size)
        self.rate = float(rate)
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"EmbeddingDropout rate must be in [0, 1), got {rate}")
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if self.rate > 0 else None

    def call(self, embedded, tokens, training=None):
        """embedded (..., embed) looked up from `tokens` (...) int -> (..., embed)."""
        if not training or self.rate == 0:
            return embedded
        keep = _keep_mask((self.vocab_size,), self.rate, self.seed_generator, embedded.dtype)  # (vocab,)
        return embedded * ops.expand_dims(ops.take(keep, ops.cast(tokens, "int32"), axis=0), -1)

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, rate=self.rate, seed=self.seed)
        return config


def recurrent_kernel_mask(cell, rate, seed_generator, dtype="float32"):
    """A DropConnect mask for `cell.recurrent_kernel` (units, gates * units): {0, 1/(1-rate)}, one per call."""
    return _keep_mask(tuple(cell.recurrent_kernel.shape), rate, seed_generator, dtype)


def weight_dropped_sequence(cell_type, cell, inputs, initial_state, kernel_mask):
    """Runs a Keras SimpleRNN/GRU/LSTM cell over a whole sequence with its recurrent kernel multiplied by
    `kernel_mask` (weight drop), as a keras.ops.scan over time with the cell's own variables.

    With a mask of ones this computes what the fused layer computes (same gate order and activations: LSTM i, f, c, o;
    GRU z, r, h with reset_after; tests/test_lm_regularizers.py checks it).

    Args:
        cell_type: "rnn", "gru" or "lstm".
        cell: the Keras cell (`layer.cell` of the fused layer).
        inputs: (batch, time, features).
        initial_state: list of (batch, units) tensors ([h, c] for LSTM, [h] otherwise).
        kernel_mask: same shape as cell.recurrent_kernel.

    Returns:
        (outputs (batch, time, units), final states list).
    """
    dtype = inputs.dtype
    kernel = ops.cast(cell.kernel, dtype)  # (features, gates * units)
    recurrent = ops.cast(cell.recurrent_kernel, dtype) * ops.cast(kernel_mask, dtype)  # (units, gates * units)
    units = cell.units
    recurrent_bias = None
    projected = ops.matmul(inputs, kernel)  # (batch, time, gates * units), all input projections at once
    if cell.use_bias:
        bias = ops.cast(cell.bias, dtype)
        if cell_type == "gru" and cell.reset_after:
            projected = projected + bias[0]
            recurrent_bias = bias[1]
        else:
            projected = projected + bias
    activation, recurrent_activation = cell.activation, getattr(cell, "recurrent_activation", None)
    xs = ops.transpose(projected, (1, 0, 2))  # (time, batch, gates * units)

    if cell_type == "lstm":
        def step(carry, x_t):
            h, c = carry
            z = x_t + ops.matmul(h, recurrent)  # (batch, 4 * units)
            i = recurrent_activation(z[:, :units])
            f = recurrent_activation(z[:, units:2 * units])
            c = f * c + i * activation(z[:, 2 * units:3 * units])
            o = recurrent_activation(z[:, 3 * units:])
            h = o * activation(c)
            return (h, c), (h, c)  # Keras' TensorFlow scan wants ys shaped like the carry
        init = (ops.cast(initial_state[0], dtype), ops.cast(initial_state[1], dtype))
    elif cell_type == "gru":
        if not cell.reset_after:
            raise ValueError("weight drop supports GRU cells with reset_after=True (Keras' default) only")

        def step(carry, x_t):
            (h,) = carry
            inner = ops.matmul(h, recurrent)  # (batch, 3 * units)
            if recurrent_bias is not None:
                inner = inner + recurrent_bias
            z = recurrent_activation(x_t[:, :units] + inner[:, :units])
            r = recurrent_activation(x_t[:, units:2 * units] + inner[:, units:2 * units])
            hh = activation(x_t[:, 2 * units:] + r * inner[:, 2 * units:])
            h = z * h + (1.0 - z) * hh
            return (h,), (h,)
        init = (ops.cast(initial_state[0], dtype),)
    else:
        def step(carry, x_t):
            (h,) = carry
            h = activation(x_t + ops.matmul(h, recurrent))
            return (h,), (h,)
        init = (ops.cast(initial_state[0], dtype),)
    final, ys = ops.scan(step, init, xs)  # ys[0]: (time, batch, units)
    return ops.transpose(ys[0], (1, 0, 2)), list(final)


class WeightAverage(keras.callbacks.Callback):
    """Averages the training model's trainable weights over training steps, for evaluation and saving.

    `mode="ema"`: after every step, avg <- decay * avg + (1 - decay) * w (avg starts at the first step's weights).
    `mode="asgd"` (NT-ASGD, Merity et al. 2017): nothing is averaged until validation has not improved on the best
    score older than `nonmono` epochs (`observe(score)` after each validation); from then on avg is the uniform mean
    of the weights after every step.

    The raw weights train on; `apply(target)` writes the average into another model (the evaluation twin whose
    weights the best-epoch callback saves), by the same weight paths as lm.checkpoint.copy_weights. Cost: one
    multiply-add per weight per step outside the compiled step (on JAX also a state sync per step); 1.06x the wall
    time of a step on the PTB-sized model of scripts/bench_awd.py (TensorFlow, CPU).
    The average is not part of `--resume` state: a resumed run starts averaging afresh.

    Example:
        >>> average = WeightAverage("ema", decay=0.999)
        >>> model.fit(x, y, callbacks=[average, best_epoch])  # score(): copy_weights(model, twin); average.apply(twin)
    """

    def __init__(self, mode="ema", decay=0.999, nonmono=5):
        super().__init__()
        if mode not in ("ema", "asgd"):
            raise ValueError(f"mode must be ema or asgd, got {mode!r}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.mode, self.decay, self.nonmono = mode, float(decay), int(nonmono)
        self.active = mode == "ema"
        self.scores = []
        self.average = None  # {weight path: tensor}
        self.count = 0

    @staticmethod
    def _key(variable) -> str:
        return variable.path.split("/", 1)[-1]

    def observe(self, score: float) -> None:
        """A validation score (lower is better) of the raw weights; starts NT-ASGD's averaging when it is worse than
        the best one older than `nonmono` epochs."""
        self.scores.append(float(score))
        if (self.mode == "asgd" and not self.active and len(self.scores) > self.nonmono
                and score > min(self.scores[:-self.nonmono])):
            self.active = True

    def on_train_batch_end(self, batch, logs=None):
        if not self.active:
            return
        if keras.backend.backend() == "jax" and hasattr(self.model, "jax_state_sync"):
            self.model.jax_state_sync()  # the variables hold the step's values only after a sync on JAX
        weights = {self._key(v): v.value for v in self.model.trainable_variables}
        self.count += 1
        if self.average is None:
            self.average = {k: ops.copy(w) for k, w in weights.items()}
            return
        keep = self.decay if self.mode == "ema" else (self.count - 1) / self.count
        self.average = {k: keep * self.average[k] + (1.0 - keep) * weights[k] for k, w in weights.items()}

    def apply(self, target) -> bool:
        """Assigns the average to `target`'s weights of the same paths. False (nothing done) before averaging began."""
        if self.average is None:
            return False
        for w in target.trainable_variables:
            key = self._key(w)
            if key in self.average:
                w.assign(ops.cast(self.average[key], w.dtype))
        return True
