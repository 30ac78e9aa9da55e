"""LM benchmark: our LSTM recipe against KN-5 (quality), and our LanguageModel against a plain Keras LSTM (speed).

1. Quality: trains the LSTM recipe with `lm.training.train_language_model` (stream mode: stateful truncated BPTT)
   and fits the project's modified Kneser-Ney 5-gram (`lm.ngram.KneserNeyLM`) on the same train split with the same
   vocabulary; prints both test perplexities (PTB protocol: every word and `<eos>` counted, same token count) and
   their ratio (< 1 means the LSTM is better).
2. Speed: training throughput (tokens/s) of our `LanguageModel` (stateful, as trained above) beside a plain
   `keras.Sequential([Embedding, LSTM(return_sequences=True), Dense(vocab)])` of the same size, on the same batches,
   in the same process: each gets a warm-up fit (tracing/compilation), then timed fits of `--steps` steps,
   interleaved; the best of `--repeats` rounds counts. Process CPU time is reported too: on a shared CPU machine it
   is the steadier figure (wall time there depends on the neighbours).

Usage:
    .venv/bin/python scripts/bench_lm.py /work/shared/data/kjv --units 128 --epochs 1
    KERAS_BACKEND=jax .venv/bin/python scripts/bench_lm.py CORPUS --units 512 --tie --dropout 0.3 --epochs 10 --json

CORPUS is what `lm train` takes: a folder with train.txt / valid.txt (/ test.txt), or one raw text file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("corpus")
    recipe = p.add_argument_group("LSTM recipe (lm train flags)")
    recipe.add_argument("--units", type=int, default=256)
    recipe.add_argument("--layers", type=int, default=1)
    recipe.add_argument("--embed", type=int, default=None, help="embedding size (default: --units)")
    recipe.add_argument("--tie", action="store_true", help="tie embedding and output weights")
    recipe.add_argument("--dropout", type=float, default=0.0)
    recipe.add_argument("--epochs", type=int, default=3)
    recipe.add_argument("--batch-size", type=int, default=32)
    recipe.add_argument("--bptt", type=int, default=35)
    recipe.add_argument("--lr", type=float, default=2e-3)
    recipe.add_argument("--clip", type=float, default=1.0)
    recipe.add_argument("--min-count", type=int, default=1)
    recipe.add_argument("--max-vocab", type=int, default=None)
    recipe.add_argument("--patience", type=int, default=3)
    recipe.add_argument("--time-budget", type=float, default=None,
                        help="seconds of LSTM training (stops after the epoch in which it runs out)")
    recipe.add_argument("--seed", type=int, default=0)
    recipe.add_argument("--gate-init", default="keras", choices=["keras", "chrono"],
                        help="gate biases' start (default keras: how the README's recipe row was measured; "
                             "`lm train` defaults to chrono)")
    recipe.add_argument("--out", default=None, help="model folder for the LSTM (default: a temporary folder)")
    speed = p.add_argument_group("throughput")
    speed.add_argument("--steps", type=int, default=30, help="timed training steps per model (default 30)")
    speed.add_argument("--warmup", type=int, default=5, help="untimed steps first (tracing / compilation)")
    speed.add_argument("--repeats", type=int, default=2, help="timed rounds per model, best counts (default 2)")
    speed.add_argument("--skip-train", action="store_true", help="throughput only (no LSTM training, no KN-5)")
    speed.add_argument("--skip-speed", action="store_true", help="perplexities only")
    p.add_argument("--backend-note", default="", help="free text recorded with the results (machine, GPU...)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--save", default=None, help="also write the JSON object to this file")
    p.add_argument("--verbose", type=int, default=0, help="Keras verbosity while training the recipe (default 0)")
    return p.parse_args(argv)


# ---- quality -------------------------------------------------------------------------------------------------
def quality(a, splits) -> dict:
    from lm.checkpoint import load_model_dir
    from lm.ngram import KneserNeyLM
    from lm.training import train_language_model

    split = "test" if splits.get("test") else "valid"
    out = a.out or tempfile.mkdtemp(prefix="bench-lm-")
    summary = train_language_model(
        splits, out, arch="lstm", layers=a.layers, units=a.units, embed=a.embed, dropout=a.dropout, tie=a.tie,
        epochs=a.epochs, batch_size=a.batch_size, bptt=a.bptt, lr=a.lr, clip=a.clip, mode="stream",
        min_count=a.min_count, max_vocab=a.max_vocab, patience=a.patience, seed=a.seed, verbose=a.verbose,
        time_budget=a.time_budget, gate_init=a.gate_init, overwrite=True)
    vocab = load_model_dir(out).vocab  # the very vocabulary the LSTM used, so both models predict the same tokens

    start = time.perf_counter()
    kn = KneserNeyLM(order=5, vocab=vocab).fit(splits["train"])
    kn_seconds = time.perf_counter() - start
    kn_ppl, kn_tokens = kn.perplexity([s for s in splits[split] if s])

    lstm_ppl, lstm_tokens = summary[f"{split}_perplexity"], summary[f"{split}_tokens"]
    return {
        "split": split, "model_dir": out, "vocab_size": len(vocab), "train_tokens": summary["train_tokens"],
        "lstm": {"perplexity": lstm_ppl, "tokens": lstm_tokens, "valid_perplexity": summary["valid_perplexity"],
                 "epochs": summary["epochs"], "train_seconds": summary["train_seconds"],
                 "history": summary["history"]},
        "kn5": {"perplexity": kn_ppl, "tokens": kn_tokens, "train_seconds": round(kn_seconds, 1)},
        "ratio": lstm_ppl / kn_ppl,
    }


# ---- speed ---------------------------------------------------------------------------------------------------
def plain_lstm(vocab_size, a):
    """The baseline: stock Keras layers, the same sizes (untied: Sequential cannot share the embedding)."""
    import keras
    from keras import layers
    embed = a.embed or a.units
    stack = [keras.Input(shape=(a.bptt,), batch_size=a.batch_size, dtype="int32"),
             layers.Embedding(vocab_size, embed)]
    if a.dropout:
        stack.append(layers.Dropout(a.dropout))
    for i in range(a.layers):
        stack.append(layers.LSTM(a.units, return_sequences=True))
        if a.dropout:
            stack.append(layers.Dropout(a.dropout))
    stack.append(layers.Dense(vocab_size))
    return keras.Sequential(stack, name="plain_lstm")


def _timed_fit(model, x, y, batch_size, steps) -> tuple[float, float]:
    """-> (wall seconds, CPU seconds of this process). On a shared CPU machine the wall time depends on what else
    runs; the CPU time does not, so both are kept."""
    n = steps * batch_size
    start, cpu = time.perf_counter(), time.process_time()
    model.fit(x[:n], y[:n], batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    return time.perf_counter() - start, time.process_time() - cpu


def speed(a, splits) -> dict:
    import keras
    import numpy as np
    from lm.checkpoint import build_model
    from lm.data import stream_batches, stream_ids
    from lm.vocab import Vocabulary

    vocab = Vocabulary.build(splits["train"], min_count=a.min_count, max_size=a.max_vocab)
    x, y = stream_batches(stream_ids(splits["train"], vocab), a.batch_size, a.bptt)
    need = (a.warmup + a.steps) * a.batch_size
    if len(x) < need:  # a small corpus: repeat its batches (the timing does not care what the words are)
        reps = -(-need // len(x))
        x, y = np.concatenate([x] * reps), np.concatenate([y] * reps)
    warm_x, warm_y = x[: a.warmup * a.batch_size], y[: a.warmup * a.batch_size]
    x, y = x[a.warmup * a.batch_size:], y[a.warmup * a.batch_size:]

    keras.utils.set_random_seed(a.seed)
    ours = build_model("lstm", dict(vocab_size=len(vocab), cell_type="lstm", units=a.units, num_layers=a.layers,
                                    embed_dim=a.embed or a.units, dropout=a.dropout, tie_weights=a.tie,
                                    stateful=True, batch_size=a.batch_size))
    plain = plain_lstm(len(vocab), a)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)
    for model in (ours, plain):
        model.compile(optimizer=keras.optimizers.Adam(a.lr, global_clipnorm=a.clip or None), loss=loss)
        _timed_fit(model, warm_x, warm_y, a.batch_size, max(1, a.warmup))
    times = {"ours": [], "plain": []}  # (wall, cpu) per round
    for _ in range(max(1, a.repeats)):  # interleaved, so that a busy moment on the machine hits both alike
        ours.reset_states()
        times["ours"].append(_timed_fit(ours, x, y, a.batch_size, a.steps))
        times["plain"].append(_timed_fit(plain, x, y, a.batch_size, a.steps))
    tokens = a.steps * a.batch_size * a.bptt

    def params(m):
        return int(sum(np.prod(w.shape) for w in m.trainable_weights))

    result = {"steps": a.steps, "repeats": max(1, a.repeats), "tokens_per_step": a.batch_size * a.bptt,
              "vocab_size": len(vocab)}
    for name, model in (("ours", ours), ("plain", plain)):
        wall = min(t[0] for t in times[name])
        cpu = min(t[1] for t in times[name])
        result[name] = {"tokens_per_second": tokens / wall, "seconds": wall, "tokens_per_cpu_second": tokens / cpu,
                        "cpu_seconds": cpu, "rounds": [{"wall": w, "cpu": c} for w, c in times[name]],
                        "parameters": params(model)}
    result["ratio"] = result["ours"]["tokens_per_second"] / result["plain"]["tokens_per_second"]
    result["cpu_ratio"] = result["ours"]["tokens_per_cpu_second"] / result["plain"]["tokens_per_cpu_second"]
    return result


def environment(a) -> dict:
    import keras
    env = {"backend": keras.backend.backend(), "keras": keras.__version__, "python": platform.python_version(),
           "cpus": os.cpu_count(), "note": a.backend_note}
    try:
        devices = []
        if env["backend"] == "jax":
            import jax
            devices = [str(d) for d in jax.devices()]
        elif env["backend"] == "torch":
            import torch
            devices = [torch.cuda.get_device_name(0)] if torch.cuda.is_available() else ["cpu"]
        elif env["backend"] == "tensorflow":
            import tensorflow as tf
            devices = [d.name for d in tf.config.list_logical_devices()]
        env["devices"] = devices
    except Exception as e:  # informational only
        env["devices"] = [f"unknown ({e})"]
    return env


def print_tables(a, result) -> None:
    env = result["environment"]
    print(f"backend {env['backend']} (keras {env['keras']}), devices: {', '.join(env['devices'])}"
          + (f" — {env['note']}" if env["note"] else ""))
    print(f"recipe: LSTM {a.layers} x {a.units} units, embed {a.embed or a.units}{', tied' if a.tie else ''}, "
          f"dropout {a.dropout}, batch {a.batch_size} x bptt {a.bptt}, Adam lr {a.lr}, clip {a.clip}")
    if "quality" in result:
        q = result["quality"]
        print(f"\nperplexity on {q['split']} ({q['lstm']['tokens']} tokens, vocabulary {q['vocab_size']}, "
              f"{q['train_tokens']} training tokens)")
        print(f"{'model':34} {'perplexity':>11} {'train s':>9} {'epochs':>7}")
        label = f"LSTM {a.layers}x{a.units}{' tied' if a.tie else ''} (lm.training)"
        print(f"{label:34} {q['lstm']['perplexity']:11.2f} {q['lstm']['train_seconds']:9.1f} "
              f"{q['lstm']['epochs']:>7}")
        print(f"{'KN-5 (lm.ngram)':34} {q['kn5']['perplexity']:11.2f} {q['kn5']['train_seconds']:9.1f} {'-':>7}")
        print(f"{'ratio LSTM / KN-5':34} {q['ratio']:11.3f}")
    if "speed" in result:
        s = result["speed"]
        print(f"\ntraining throughput, {s['steps']} steps of {s['tokens_per_step']} tokens, best of {s['repeats']}")
        print(f"{'model':34} {'tokens/s':>11} {'s/step':>9} {'tokens/cpu-s':>13} {'params':>11}")
        for name, label in (("ours", "LanguageModel (stateful)"), ("plain", "Sequential Embedding-LSTM-Dense")):
            r = s[name]
            print(f"{label:34} {r['tokens_per_second']:11.0f} {r['seconds'] / s['steps']:9.4f} "
                  f"{r['tokens_per_cpu_second']:13.0f} {r['parameters']:11d}")
        print(f"{'ratio ours / plain':34} {s['ratio']:11.3f} {'':9} {s['cpu_ratio']:13.3f}")
        print("(tokens/cpu-s: per second of this process's CPU time; steadier than wall time on a shared CPU, "
              "meaningless on a GPU)")


def main(argv=None) -> int:
    a = parse_args(argv)
    from lm.errors import UserError
    from lm.text import load_corpus
    try:
        splits = load_corpus(a.corpus)
        result = {"corpus": a.corpus, "recipe": {k: getattr(a, k) for k in (
            "units", "layers", "embed", "tie", "dropout", "epochs", "batch_size", "bptt", "lr", "clip", "min_count",
            "max_vocab", "time_budget", "seed")}}
        result["environment"] = environment(a)
        if not a.skip_train:
            result["quality"] = quality(a, splits)
        if not a.skip_speed:
            result["speed"] = speed(a, splits)
    except UserError as e:
        print(f"bench_lm: error: {e}", file=sys.stderr)
        return 2
    if a.save:
        with open(a.save, "w") as f:
            json.dump(result, f, indent=2)
    if a.json:
        print(json.dumps(result))
    else:
        print_tables(a, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
