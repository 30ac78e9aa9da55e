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
from lm.data import sentence_batches, stream_batches, stream_ids
from lm.errors import UserError
from lm.inference import perplexity, window_examples
from lm.vocab import Vocabulary


class ResetStates(keras.callbacks.Callback):
    """Zeroes a stateful model's carried state at the start of every epoch (each epoch reads the stream afresh)."""

    def on_epoch_begin(self, epoch, logs=None):
        if getattr(self.model, "stateful", False):
            self.model.reset_states()


@accelerated  # mixed_precision and distribute: every model below is built, compiled and fitted under them
def train_language_model(splits: dict, out_dir: str, arch: str = "lstm", order: int = 5, layers: int = 1,
                         units: int = 256, embed: int | None = None, dropout: float = 0.0, tie: bool = False,
                         epochs: int = 10, batch_size: int = 32, bptt: int = 35, lr: float = 2e-3,
                         clip: float = 1.0, mode: str = "stream", min_count: int = 1, max_vocab: int | None = None,
                         patience: int = 3, lr_decay: float = 4.0, seed: int = 0, verbose: int = 1,
                         time_budget: float | None = None, mixed_precision: bool = False, jit="auto",
                         distribute: bool = False, resume: bool = False, overwrite: bool = False,
                         links: str = "none", init_embeddings: str = "random", gate_init: str = "chrono",
                         chrono_max: float | None = None) -> dict:
    """Trains one model on {"train", "valid", ["test"]} token lists and writes `out_dir`. Returns a summary dict
    with valid/test perplexity, tokens, training time and tokens/s. `mixed_precision` (bf16 compute), `jit`
    (jit_compile: "auto", True, False) and `distribute` (data parallel over all local devices) are lm.accel's.
    An `out_dir` that holds a model is refused unless `overwrite` (train anew) or `resume` (continue the killed
    run from its last finished epoch, with its optimizer state and RNG; lm.checkpoint.check_out_dir).
    `links` joins stacked recurrent layers (none, residual, dense, highway: lm.recurrent); `init_embeddings="glove"`
    starts the input embedding from GloVe (lm.vectors); `gate_init` starts the gate biases tuned to time scales up
    to `chrono_max` steps ("chrono", default chrono_max: `bptt`; lm.recurrent) or as Keras does ("keras")."""
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
    if gate_init == "chrono" and not chrono_max > 2:
        raise UserError(f"--chrono-max {chrono_max:g}: must be > 2 (the gate biases are log U(1, chrono_max - 1))")
    if mode not in ("stream", "sentence"):
        raise UserError(f"unknown --mode {mode!r}: choose stream or sentence")
    resuming = check_out_dir(out_dir, resume, overwrite)
    if resuming and arch == "ngram":
        raise UserError("--resume is for neural models; an n-gram model trains in one pass (use --overwrite)")
    vocab = Vocabulary.build(splits["train"], min_count=min_count, max_size=max_vocab)
    if len(vocab) <= 4:
        raise UserError("the training text has no words")
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
        optimizer = keras.optimizers.Adam(learning_rate=lr, global_clipnorm=clip or None)
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
                                gate_init=gate_init, chrono_max=chrono_max)
            if mode == "stream":
                ids = stream_ids(splits["train"], vocab)
                if len(ids) - 1 < batch_size * bptt:
                    raise UserError(f"the training text ({len(ids) - 1} tokens) is too short for --batch-size "
                                    f"{batch_size} x --bptt {bptt} in stream mode; lower them or use --mode sentence")
                model = build_model(arch, {**model_config, "stateful": True, "batch_size": batch_size})
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
        model.compile(optimizer=optimizer, loss=loss, jit_compile=jit_option(jit))
        valid = splits["valid"]

        def valid_perplexity(logs):  # by the evaluation protocol (lm.inference), on the stateless twin
            copy_weights(model, eval_model)
            return perplexity(LoadedModel(arch, eval_model, vocab, extra), valid)[0]

        validation = BestEpoch(out_dir, lambda: model_files(arch, eval_model, vocab, extra),
                               score=valid_perplexity, monitor="val_perplexity", min_gain=1e-3, patience=patience,
                               lr_decay=lr_decay, time_budget=time_budget, start=start, resume_model=model,
                               resume_optimizer=model.optimizer, verbose=verbose)
        done = validation.resume() if resuming else 0
        if done < epochs and not validation.stopped:
            model.fit(x, y, batch_size=batch_size, epochs=epochs, initial_epoch=done, verbose=verbose,
                      callbacks=[ResetStates(), validation], **fit_kwargs)
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
