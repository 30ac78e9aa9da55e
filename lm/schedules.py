"""Training schedules and losses shared by `lm` and `captioner`: learning-rate warmup + decay, label smoothing.

* `WarmupDecay`: linear warmup from ~0 to the peak rate over `warmup_steps`, then "cosine" decay to
  `final_fraction * peak` at `total_steps`, "step" decay (times `step_factor` every `step_every` steps after the
  warmup), or "constant". A `keras.optimizers.schedules.LearningRateSchedule`, written in keras.ops, serialisable.
* `SmoothedCrossEntropy`: token cross-entropy from logits with label smoothing, `<pad>` targets ignored, the mean
  taken over real tokens only (what SparseCategoricalCrossentropy(ignore_class=0) gives when smoothing is 0).

Example:
    >>> schedule = WarmupDecay(2e-3, total_steps=1000, warmup_steps=100, decay="cosine")
    >>> optimizer = keras.optimizers.Adam(schedule, global_clipnorm=5.0)
    >>> loss = SmoothedCrossEntropy(0.1)
"""

from __future__ import annotations

import math

import keras
from keras import ops

from lm.vocab import PAD_ID

DECAYS = ("cosine", "step", "constant")


@keras.saving.register_keras_serializable(package="lm")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate at optimizer step `step` (0-based): warmup, then decay.

    Args:
        peak: the learning rate reached at the end of the warmup.
        total_steps: steps of the whole run (cosine reaches its floor here; later steps stay at the floor).
        warmup_steps: linear warmup length; rate at step s < warmup is peak * (s + 1) / warmup_steps.
        decay: "cosine", "step" or "constant".
        final_fraction: cosine floor as a fraction of the peak.
        step_every, step_factor: step decay multiplies the rate by `step_factor` every `step_every` steps after
            the warmup.
    """

    def __init__(self, peak, total_steps, warmup_steps=0, decay="cosine", final_fraction=0.0, step_every=None,
                 step_factor=0.5):
        if decay not in DECAYS:
            raise ValueError(f"unknown decay {decay!r}; choose one of {', '.join(DECAYS)}")
        self.peak, self.total_steps, self.warmup_steps = float(peak), int(total_steps), int(warmup_steps)
        self.decay, self.final_fraction = decay, float(final_fraction)
        self.step_every = int(step_every) if step_every else max(1, (self.total_steps - self.warmup_steps) // 3)
        self.step_factor = float(step_factor)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = float(max(self.warmup_steps, 1))
        warmup = self.peak * ops.minimum((step + 1.0) / warm, 1.0)
        after = ops.maximum(step - float(self.warmup_steps), 0.0)  # steps since the warmup ended
        span = float(max(self.total_steps - self.warmup_steps, 1))
        if self.decay == "cosine":
            progress = ops.minimum(after / span, 1.0)
            floor = self.final_fraction
            factor = floor + (1.0 - floor) * 0.5 * (1.0 + ops.cos(math.pi * progress))
        elif self.decay == "step":
            factor = ops.power(self.step_factor, ops.floor(after / float(self.step_every)))
        else:
            factor = ops.ones_like(step)
        rate = self.peak * factor
        return ops.where(step < float(self.warmup_steps), warmup, rate)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "decay": self.decay, "final_fraction": self.final_fraction, "step_every": self.step_every,
                "step_factor": self.step_factor}


def make_learning_rate(lr: float, schedule: str | None, total_steps: int, warmup_steps: int = 0):
    """`lr` itself for schedule None/"none" without warmup, else a WarmupDecay ("constant" keeps just the warmup)."""
    if (schedule in (None, "none")) and not warmup_steps:
        return float(lr)
    return WarmupDecay(lr, total_steps, warmup_steps, decay="constant" if schedule in (None, "none") else schedule)


@keras.saving.register_keras_serializable(package="lm")
class SmoothedCrossEntropy(keras.losses.Loss):
    """Mean token cross-entropy over non-`<pad>` targets, with label smoothing.

    loss_t = (1 - eps) * (-log p(y_t)) + eps * mean_v(-log p(v)), averaged over the tokens whose target is not
    `<pad>`. y_true (batch, T) int ids, y_pred (batch, T, vocab) logits.

    Args:
        label_smoothing: eps in [0, 1).
    """

    def __init__(self, label_smoothing=0.1, name="smoothed_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "int32")  # (batch, T)
        log_probs = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)  # (batch, T, vocab)
        nll = -ops.squeeze(ops.take_along_axis(log_probs, ops.expand_dims(y_true, -1), axis=-1), -1)  # (batch, T)
        uniform = -ops.mean(log_probs, axis=-1)  # (batch, T)
        eps = self.label_smoothing
        per_token = (1.0 - eps) * nll + eps * uniform
        mask = ops.cast(ops.not_equal(y_true, PAD_ID), "float32")  # (batch, T)
        return ops.sum(per_token * mask) / ops.maximum(ops.sum(mask), 1.0)  # scalar: mean over real tokens

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def token_cross_entropy(y_true, y_pred):
    """Plain cross-entropy over non-`<pad>` targets, as a metric shown apart from regularisers in the loss.

    Returns (batch,) values whose mean is the batch's mean over real tokens, so a Mean metric weighs batches by
    their size as Keras' loss tracker does (then loss - metric is exactly what the regularisers add).
    """
    y_true = ops.cast(y_true, "int32")  # (batch, T)
    log_probs = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)  # (batch, T, vocab)
    nll = -ops.squeeze(ops.take_along_axis(log_probs, ops.expand_dims(y_true, -1), axis=-1), -1)  # (batch, T)
    mask = ops.cast(ops.not_equal(y_true, PAD_ID), "float32")
    rows = ops.cast(ops.shape(y_true)[0], "float32")
    return ops.sum(nll * mask, axis=1) * rows / ops.maximum(ops.sum(mask), 1.0)  # (batch,)
