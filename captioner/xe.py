"""Cross-entropy (XE) training pieces for captions: optimiser and loss set-up, validation CIDEr-D, loss breakdown.

captioner.training calls these two functions, so the schedule and the monitoring live in one place:
  * `compile_for_xe`: Adam with lm.schedules' warmup + decay, global-norm clipping, label smoothing; the plain
    token cross-entropy is a metric ("xent") so the progress bar shows it apart from the attention penalty;
  * `monitor_callbacks`: the loss breakdown ("penalty" = loss - xent) and, with monitor "cider", a validation
    CIDEr-D of greedy captions every epoch ("val_cider"), which the best-epoch checkpoint then follows.
"""

from __future__ import annotations

import keras
import numpy as np

from lm.errors import UserError
from lm.schedules import DECAYS, SmoothedCrossEntropy, make_learning_rate, token_cross_entropy


def compile_for_xe(trainee, lr, schedule, warmup_epochs, epochs, steps_per_epoch, label_smoothing, clipnorm,
                   lr_decay, jit_compile):
    """Compiles the model (or decoder) that `fit` trains with XE. `warmup_epochs` may be a fraction."""
    if schedule not in (None, "none", *DECAYS):
        raise UserError(f"unknown --schedule {schedule!r}; choose none, {', '.join(DECAYS)}")
    if not 0 <= float(label_smoothing) < 1:
        raise UserError("--label-smoothing must be in [0, 1)")
    if float(warmup_epochs) < 0:
        raise UserError("--warmup must be >= 0 (epochs)")
    warmup_steps = int(round(float(warmup_epochs) * steps_per_epoch))
    rate = make_learning_rate(lr, schedule, max(1, epochs * steps_per_epoch), warmup_steps)
    if not isinstance(rate, float) and float(lr_decay) > 1:
        raise UserError("--lr-decay divides a constant learning rate; it cannot be combined with --schedule/--warmup")
    loss = (SmoothedCrossEntropy(label_smoothing) if label_smoothing
            else keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0))
    trainee.compile(optimizer=keras.optimizers.Adam(rate, global_clipnorm=float(clipnorm) or None), loss=loss,
                    metrics=[keras.metrics.MeanMetricWrapper(token_cross_entropy, name="xent")],
                    jit_compile=jit_compile)


class LossBreakdown(keras.callbacks.Callback):
    """Adds "penalty" = loss - xent (the attention regulariser and label smoothing's extra) to the logs, so the
    progress bar shows the cross-entropy and what the regulariser adds apart."""

    def _split(self, logs, prefix=""):
        if logs is not None and f"{prefix}loss" in logs and f"{prefix}xent" in logs:
            logs[f"{prefix}penalty"] = float(logs[f"{prefix}loss"]) - float(logs[f"{prefix}xent"])

    def on_train_batch_end(self, batch, logs=None):
        self._split(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._split(logs)
        self._split(logs, "val_")


class ValidationCider(keras.callbacks.Callback):
    """Greedy-captions the validation images at the end of every epoch and puts their CIDEr-D (document
    frequencies from the validation references, as `captioner evaluate` computes it) in logs["val_cider"]."""

    def __init__(self, captioner, vocab, examples, inputs, features: bool, max_length: int, batch_size=64,
                 verbose=1):
        super().__init__()
        from captioner.cider import CiderD
        self.captioner, self.vocab, self.inputs, self.features = captioner, vocab, inputs, features
        self.max_length, self.batch_size, self.verbose = int(max_length), int(batch_size), verbose
        self.scorer = CiderD([[list(c) for c in e.captions if c] for e in examples])

    def captions(self) -> list[list[str]]:
        out = []
        for start in range(0, len(self.inputs), self.batch_size):
            batch = np.asarray(self.inputs[start: start + self.batch_size], "float32")
            grid = batch if self.features else self.captioner.encode(batch)
            words, _, _ = self.captioner.decoder.generate(grid, beam_width=1, max_length=self.max_length)
            out += [self.vocab.decode(row) for row in keras.ops.convert_to_numpy(words)]
        return out

    def value(self) -> float:
        """The validation CIDEr-D of the model as it is now."""
        return float(self.scorer.score(self.captions(), np.arange(len(self.inputs))).mean())

    def on_epoch_end(self, epoch, logs=None):
        value = self.value()
        if logs is not None:
            logs["val_cider"] = value
        if self.verbose:
            print(f"epoch {epoch + 1}: validation CIDEr-D (greedy) {value:.4f}")


def monitor_callbacks(checkpoint, monitor, captioner, vocab, val_examples, val_inputs, features, max_length,
                      train_examples, verbose):
    """[LossBreakdown, (ValidationCider,) checkpoint]: the order matters, the checkpoint reads what they log."""
    if monitor not in ("loss", "cider"):
        raise UserError(f"unknown --monitor {monitor!r}; choose loss or cider")
    callbacks = [LossBreakdown()]
    if monitor == "cider":
        if not val_examples:
            raise UserError("--monitor cider needs a validation split (--split-val)")
        callbacks.append(ValidationCider(captioner, vocab, val_examples, val_inputs, features, max_length,
                                         verbose=verbose))  # logs val_cider, which the checkpoint then follows
    return callbacks + [checkpoint]
