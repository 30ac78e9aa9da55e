"""`lm train`: fits an n-gram, fixed-window or recurrent language model on a corpus and writes a model folder.

Recurrent models train with Keras `fit` in one of two modes:
  * "stream" (default): stateful truncated BPTT over contiguous streams (PTB batching), state reset every epoch;
  * "sentence": each line alone, from `<bos>`, padded batches.
Every epoch ends with validation perplexity by the evaluation protocol (lm.inference). The best weights are written
to the output folder as soon as they are found (a checkpoint that survives an interrupted run); the learning rate is
divided by `lr_decay` when validation perplexity stops improving, and training stops after `patience` such epochs.
"""

from __future__ import annotations

import math
import time

import keras
import numpy as np

from lm.accel import accelerated, full_precision, jit_option
from lm.checkpoint import (LoadedModel, RECURRENT_ARCHS, BestEpoch, build_model, check_out_dir, copy_weights,
                           model_files, save_model_dir)
from lm.data import EpochOrder, VariableLengthStream, sentence_batches, stream_batches, stream_ids
from lm.errors import UserError
from lm.inference import perplexity, window_examples
from lm.regularizers import WeightAverage
from lm.vocab import Vocabulary


class ResetStates(keras.callbacks.Callback):
    """Zeroes a stateful model's carried state at the start of every epoch (each epoch reads the stream afresh)."""

    def on_epoch_begin(self, epoch, logs=None):
        if getattr(self.model, "stateful", False):
            self.model.reset_states()


def set_learning_rate(model, value: float) -> None:
    """Assigns the optimizer's learning rate between steps, on every backend (on JAX the trainer keeps variables in
    its own state during an epoch: sync it first, so that the next step reads the new value)."""
    if keras.backend.backend() == "jax" and hasattr(model, "jax_state_sync"):
        model.jax_state_sync()
    model.optimizer.learning_rate.assign(value)


class SequenceLengthLR(keras.callbacks.Callback):
    """Variable BPTT's learning rate (AWD-LSTM): batch i trains at lr * lengths[i] / bptt; the epoch's own lr (which
    the best-epoch callback may decay) is put back at the end of every epoch. Reads `batches.lengths` and
    `batches.bptt` (lm.data.VariableLengthStream). Place it before the best-epoch callback."""

    def __init__(self, batches):
        super().__init__()
        self.batches, self.base = batches, None

    def on_epoch_begin(self, epoch, logs=None):
        self.base = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_train_batch_begin(self, batch, logs=None):
        set_learning_rate(self.model, self.base * float(self.batches.lengths[batch]) / self.batches.bptt)

    def on_epoch_end(self, epoch, logs=None):
        set_learning_rate(self.model, self.base)


def _fit_input(batches):
    """A PyDataset of batches whose time length varies, as `fit` input: as is on JAX and PyTorch; on TensorFlow a
    tf.data.Dataset whose signature leaves the time axis open (Keras would fix it from the first two batches)."""
    if keras.backend.backend() != "tensorflow":
        return batches
    import tensorflow as tf
    spec = tf.TensorSpec((batches.batch_size, None), tf.int32)

    def generate():
        for i in range(len(batches)):
            yield batches[i]

    dataset = tf.data.Dataset.from_generator(generate, output_signature=(spec, spec))
    return dataset.apply(tf.data.experimental.assert_cardinality(len(batches)))


def _check_awd_options(arch, mode, regularizers, variable_bptt, average, ema_decay, nonmono, patience, distribute):
    """One-line errors for AWD-LSTM options that do not fit the rest of the command line."""
    names = {"dropout_input": "--dropout-input", "dropout_hidden": "--dropout-hidden",
             "dropout_output": "--dropout-output", "dropout_embedding": "--dropout-embedding",
             "weight_drop": "--weight-drop", "ar": "--ar", "tar": "--tar"}
    for key, value in regularizers.items():
        if value and arch not in RECURRENT_ARCHS:
            raise UserError(f"{names[key]} is for recurrent models (rnn, gru, lstm), not {arch}")
        if key in ("ar", "tar") and value < 0:
            raise UserError(f"{names[key]} must be >= 0")
        if key not in ("ar", "tar") and not 0 <= value < 1:
            raise UserError(f"{names[key]} must be in [0, 1)")
    if variable_bptt and (arch not in RECURRENT_ARCHS or mode != "stream"):
        raise UserError("--variable-bptt is for recurrent models in --mode stream")
    if variable_bptt and distribute:
        raise UserError("--variable-bptt does not work with --distribute yet")
    if average not in ("none", "ema", "asgd"):
        raise UserError(f"unknown --average {average!r}: choose none, ema or asgd")
    if average != "none" and arch not in RECURRENT_ARCHS:  # the window model validates its training weights
        raise UserError(f"--average is for recurrent models (rnn, gru, lstm), not {arch}")
    if average == "ema" and not 0 <= ema_decay < 1:
        raise UserError("--ema-decay must be in [0, 1)")
    if average == "asgd" and (nonmono < 1 or (patience is not None and patience <= nonmono)):
        raise UserError(f"--average asgd starts averaging after --nonmono {nonmono} epochs without gain: needs "
                        f"--nonmono >= 1 and --patience above it (now {patience})")


@accelerated  # mixed_precision and distribute: every model below is built, compiled and fitted under them
def train_language_model(splits: dict, out_dir: str, arch: str = "lstm", order: int = 5, layers: int = 1,
                         units: int = 256, embed: int | None = None, dropout: float = 0.0, tie: bool = False,
                         epochs: int = 10, batch_size: int = 32, bptt: int = 35, lr: float = 2e-3,
                         clip: float = 1.0, mode: str = "stream", min_count: int = 1, max_vocab: int | None = None,
                         patience: int = 3, lr_decay: float = 4.0, seed: int = 0, verbose: int = 1,
                         time_budget: float | None = None, mixed_precision: bool = False, jit="auto",
                         distribute: bool = False, resume: bool = False, overwrite: bool = False,
                         links: str = "none", init_embeddings: str = "random", dropout_input: float = 0.0,
                         dropout_hidden: float = 0.0, dropout_output: float = 0.0, dropout_embedding: float = 0.0,
                         weight_drop: float = 0.0, ar: float = 0.0, tar: float = 0.0, variable_bptt: bool = False,
                         average: str = "none", ema_decay: float = 0.999, nonmono: int = 5, schedule: str = "none",
                         warmup: int = 0, adaptive_softmax: str = "", gate_init: str = "chrono",
                         chrono_max: float | None = None) -> dict:
    """Trains one model on {"train", "valid", ["test"]} token lists and writes `out_dir`. Returns a summary dict
    with valid/test perplexity, tokens, training time and tokens/s. `mixed_precision` (bf16 compute), `jit`
    (jit_compile: "auto", True, False) and `distribute` (data parallel over all local devices) are lm.accel's.
    An `out_dir` that holds a model is refused unless `overwrite` (train anew) or `resume` (continue the killed
    run from its last finished epoch, with its optimizer state and RNG; lm.checkpoint.check_out_dir).
    `links` joins stacked recurrent layers (none, residual, dense, highway: lm.recurrent); `init_embeddings="glove"`
    starts the input embedding from GloVe (lm.vectors); `gate_init` starts the gate biases tuned to time scales up
    to `chrono_max` steps ("chrono", default chrono_max: `bptt`; lm.recurrent) or as Keras does ("keras").
    `schedule` ("cosine", "step") and `warmup` (steps) shape the learning rate over `epochs` (lm.schedules.WarmupDecay)
    in place of the division by `lr_decay` on a plateau. `adaptive_softmax` ("2000" or "2000,6000") gives the
    recurrent model an adaptive softmax with those id cutoffs.

    AWD-LSTM's regularisers (Merity et al. 2017), all off by default: `dropout_input`, `dropout_hidden`,
    `dropout_output` (locked dropout), `dropout_embedding`, `weight_drop`, `ar`, `tar` are LanguageModel's
    (lm.model, lm.regularizers); `variable_bptt` draws each stream batch's length (lm.data.VariableLengthStream)
    and scales its learning rate by length / bptt (SequenceLengthLR); `average` "ema" (decay `ema_decay`) or "asgd"
    (NT-ASGD: from when validation has not improved for `nonmono` epochs) validates and saves averaged weights
    (lm.regularizers.WeightAverage) while training goes on with the raw ones."""
    if arch not in ("ngram", "window") + RECURRENT_ARCHS:
        raise UserError(f"unknown --arch {arch!r}: choose ngram, window, rnn, gru or lstm")
    if init_embeddings not in ("random", "glove"):
        raise UserError(f"unknown --init-embeddings {init_embeddings!r}: choose random or glove")
    if init_embeddings == "glove" and arch == "ngram":
        raise UserError("--init-embeddings glove needs a neural model (window, rnn, gru, lstm), not ngram")
    from lm.recurrent import GATE_INITS, LINKS
    if links not in LINKS:
        raise UserError(f"unknown --links {links!r}: choose {', '.join(LINKS)}")
    if gate_init not in GATE_INITS:
        raise UserError(f"unknown --gate-init {gate_init!r}: choose {', '.join(GATE_INITS)}")
    chrono_max = float(bptt if chrono_max is None else chrono_max)
    if gate_init.startswith("chrono") and not chrono_max > 2:
        raise UserError(f"--chrono-max {chrono_max:g}: must be > 2 (the gate biases are log U(1, chrono_max - 1))")
    from lm.schedules import DECAYS
    if schedule not in ("none",) + DECAYS:
        raise UserError(f"unknown --schedule {schedule!r}: choose none, cosine or step")
    if warmup < 0:
        raise UserError("--warmup must be >= 0")
    if variable_bptt and (schedule != "none" or warmup):
        raise UserError("--variable-bptt scales each batch's learning rate itself: use it without --schedule/--warmup")
    try:
        cutoffs = tuple(int(c) for c in str(adaptive_softmax or "").split(",") if c.strip())
    except ValueError:
        raise UserError(f"--adaptive-softmax takes comma-separated ids such as 2000, got {adaptive_softmax!r}")
    if cutoffs and arch not in RECURRENT_ARCHS:
        raise UserError("--adaptive-softmax is for the recurrent models (rnn, gru, lstm)")
    if mode not in ("stream", "sentence"):
        raise UserError(f"unknown --mode {mode!r}: choose stream or sentence")
    regularizers = dict(dropout_input=dropout_input, dropout_hidden=dropout_hidden, dropout_output=dropout_output,
                        dropout_embedding=dropout_embedding, weight_drop=weight_drop, ar=ar, tar=tar)
    _check_awd_options(arch, mode, regularizers, variable_bptt, average, ema_decay, nonmono, patience, distribute)
    resuming = check_out_dir(out_dir, resume, overwrite)
    if resuming and arch == "ngram":
        raise UserError("--resume is for neural models; an n-gram model trains in one pass (use --overwrite)")
    vocab = Vocabulary.build(splits["train"], min_count=min_count, max_size=max_vocab)
    if len(vocab) <= 4:
        raise UserError("the training text has no words")
    if cutoffs and not all(a < b for a, b in zip((0,) + cutoffs, cutoffs + (len(vocab),))):
        raise UserError(f"--adaptive-softmax cutoffs must rise strictly between 0 and the vocabulary size "
                        f"({len(vocab)}), got {adaptive_softmax}")
    start = time.perf_counter()
    train_tokens = sum(len(s) + 1 for s in splits["train"])
    extra = {"mode": mode} if arch in RECURRENT_ARCHS else {}

    if arch == "ngram":
        from lm.ngram import KneserNeyLM
        if not 2 <= order <= 5:
            raise UserError("--order must be between 2 and 5")
        model = KneserNeyLM(order=order, vocab=vocab).fit(splits["train"])
        extra = {"order": order}
        save_model_dir(out_dir, "ngram", model, vocab, extra)
        loaded = LoadedModel("ngram", model, vocab, extra)
    else:
        keras.utils.set_random_seed(seed)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)
        if arch == "window":
            context = order - 1
            model_config = dict(vocab_size=len(vocab), context=context, embed_dim=embed or 128, hidden=units,
                                dropout=dropout)
            model = build_model("window", model_config)
            eval_model = model
            x, y = window_examples(stream_ids(splits["train"], vocab), context, vocab.eos_id)
            fit_kwargs = dict(shuffle=True)
        else:
            model_config = dict(vocab_size=len(vocab), cell_type=arch, units=units, num_layers=layers,
                                embed_dim=embed or units, dropout=dropout, tie_weights=tie, links=links,
                                **{k: v for k, v in regularizers.items() if v}, gate_init=gate_init,
                                chrono_max=chrono_max)
            if cutoffs:
                model_config["adaptive_cutoffs"] = cutoffs
            if mode == "stream":
                ids = stream_ids(splits["train"], vocab)
                if len(ids) - 1 < batch_size * bptt:
                    raise UserError(f"the training text ({len(ids) - 1} tokens) is too short for --batch-size "
                                    f"{batch_size} x --bptt {bptt} in stream mode; lower them or use --mode sentence")
                model = build_model(arch, {**model_config, "stateful": True, "batch_size": batch_size})
                if variable_bptt:
                    lengths = VariableLengthStream(ids, batch_size, bptt, seed=seed)
                    x, y = _fit_input(lengths), None
                else:
                    x, y = stream_batches(ids, batch_size, bptt)
                fit_kwargs = dict(shuffle=False)
            else:
                model = build_model(arch, model_config)
                x, y = sentence_batches(splits["train"], vocab, max_len=bptt * 4)
                fit_kwargs = dict(shuffle=True)
            with full_precision():  # validation in float32 whatever the training precision
                eval_model = build_model(arch, model_config)
        if init_embeddings == "glove":
            from lm.vectors import init_embedding_from_glove
            report = init_embedding_from_glove(model.embedding, vocab.itos, seed=seed)
            if verbose:
                print(report, flush=True)
        if distribute and len(x) > batch_size:  # equal shards on every device: no ragged last batch
            x, y = x[: len(x) - len(x) % batch_size], y[: len(y) - len(y) % batch_size]
        from lm.schedules import make_learning_rate
        steps_per_epoch = len(lengths) if y is None else math.ceil(len(x) / batch_size)  # what fit runs per epoch
        learning_rate = make_learning_rate(lr, schedule, epochs * steps_per_epoch, warmup)
        optimizer = keras.optimizers.Adam(learning_rate=learning_rate, global_clipnorm=clip or None)
        model.compile(optimizer=optimizer, loss=loss, jit_compile=jit_option(jit))
        valid = splits["valid"]
        averager = WeightAverage(average, ema_decay, nonmono) if average != "none" else None

        def valid_perplexity(logs):  # by the evaluation protocol (lm.inference), on the stateless twin
            copy_weights(model, eval_model)
            if averager is not None:
                averager.apply(eval_model)  # the averaged weights are validated and saved (raw ones train on)
            score = perplexity(LoadedModel(arch, eval_model, vocab, extra), valid)[0]
            if averager is not None:
                averager.observe(score)
            return score

        validation = BestEpoch(out_dir, lambda: model_files(arch, eval_model, vocab, extra),
                               score=valid_perplexity, monitor="val_perplexity", min_gain=1e-3, patience=patience,
                               lr_decay=lr_decay if isinstance(learning_rate, float) else 1.0,  # schedule: no plateau
                               time_budget=time_budget, start=start, resume_model=model,
                               resume_optimizer=model.optimizer, verbose=verbose)
        done = validation.resume() if resuming else 0
        if done < epochs and not validation.stopped:
            callbacks = [ResetStates()]
            if variable_bptt:  # the epoch's lengths, then each batch's learning rate, before the best-epoch callback
                callbacks += [EpochOrder(lengths), SequenceLengthLR(lengths)]
            callbacks += [averager] if averager is not None else []
            if y is None:
                model.fit(x, epochs=epochs, initial_epoch=done, verbose=verbose,
                          callbacks=callbacks + [validation], **fit_kwargs)
            else:
                model.fit(x, y, batch_size=batch_size, epochs=epochs, initial_epoch=done, verbose=verbose,
                          callbacks=callbacks + [validation], **fit_kwargs)
        validation.finish()
        if not math.isfinite(validation.best):
            # Nothing was saved: do not report (or leave the user with) whatever the folder held before.
            raise UserError(f"training diverged (validation perplexity {validation.history[-1]['val_perplexity']}); "
                            "try a lower --lr or --clip 1")
        # Reload the best epoch's weights (what the folder holds) for the final figures.
        from lm.checkpoint import load_model_dir
        with full_precision():
            loaded = load_model_dir(out_dir)
    seconds = time.perf_counter() - start
    summary = {"arch": arch, "train_seconds": round(seconds, 1), "train_tokens": train_tokens,
               "vocab_size": len(vocab)}
    if arch != "ngram":
        summary["epochs"] = len(validation.history)
        summary["history"] = validation.history
        summary["tokens_per_second"] = round(train_tokens * len(validation.history) / seconds, 1)
    summary["valid_perplexity"], summary["valid_tokens"] = perplexity(loaded, splits["valid"])
    if splits.get("test"):
        summary["test_perplexity"], summary["test_tokens"] = perplexity(loaded, splits["test"])
    return summary
