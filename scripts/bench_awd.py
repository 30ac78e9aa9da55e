#!/usr/bin/env python
"""Training-step cost of AWD-LSTM's regularisers (lm.regularizers) on a PTB-sized model.

A 2x200 LSTM language model over a 10,000-word vocabulary (Zaremba et al.'s "small" shape), batch 20 x 35 steps,
Adam, trained with `train_on_batch` on one fixed batch of random ids (speed does not depend on the words). For each
variant: warm-up steps (compilation), then timed steps; prints milliseconds per step (wall and CPU time of this
process) and the ratio to the plain model. "ema" is the plain model plus lm.regularizers.WeightAverage's per-step
update, as `lm train --average ema` runs it.

Usage:
    scripts/bench_awd.py [--steps 15] [--warmup 3] [--json]      # KERAS_BACKEND picks the backend (default TF)

On a shared machine the CPU-time ratio is the steadier figure.
"""

from __future__ import annotations

import argparse
import json
import time

VARIANTS = {
    "plain": {},
    "locked dropout": dict(dropout_input=0.4, dropout_hidden=0.25, dropout_output=0.4),
    "embedding dropout": dict(dropout_embedding=0.1),
    "weight drop": dict(weight_drop=0.5),
    "ar/tar": dict(ar=2.0, tar=1.0),
    "ema": {},
    "all": dict(dropout_input=0.4, dropout_hidden=0.25, dropout_output=0.4, dropout_embedding=0.1, weight_drop=0.5,
                ar=2.0, tar=1.0),
}


def measure(name, config, steps, warmup, vocab=10000, batch=20, bptt=35):
    import keras
    import numpy as np

    from lm.model import LanguageModel
    from lm.regularizers import WeightAverage
    keras.utils.set_random_seed(0)
    model = LanguageModel(vocab, units=200, num_layers=2, **config)
    model.compile(keras.optimizers.Adam(1e-3, global_clipnorm=0.25),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.integers(4, vocab, (batch, bptt)).astype("int32")
    y = rng.integers(4, vocab, (batch, bptt)).astype("int32")
    average = None
    if name == "ema":
        average = WeightAverage("ema", 0.999)
        average.set_model(model)
    for _ in range(warmup):
        model.train_on_batch(x, y)
        if average is not None:
            average.on_train_batch_end(0)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loss = model.train_on_batch(x, y)
        if average is not None:
            average.on_train_batch_end(0)
    float(np.asarray(loss))  # wait for the last step
    return 1000 * (time.perf_counter() - wall) / steps, 1000 * (time.process_time() - cpu) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per variant (default 15)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset (default: all)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    a = parser.parse_args()
    import keras
    rows = []
    for name in [v.strip() for v in a.variants.split(",") if v.strip()]:
        wall, cpu = measure(name, VARIANTS[name], a.steps, a.warmup)
        rows.append({"variant": name, "wall_ms": round(wall, 1), "cpu_ms": round(cpu, 1)})
    base = next((r for r in rows if r["variant"] == "plain"), rows[0])
    for r in rows:
        r["wall_ratio"] = round(r["wall_ms"] / base["wall_ms"], 2)
        r["cpu_ratio"] = round(r["cpu_ms"] / base["cpu_ms"], 2)
    if a.json:
        print(json.dumps({"backend": keras.backend.backend(), "rows": rows}))
        return
    print(f"backend {keras.backend.backend()}: 2x200 LSTM, vocab 10000, batch 20 x bptt 35, {a.steps} steps")
    print(f"{'variant':18} {'wall ms':>8} {'cpu ms':>8} {'wall x':>7} {'cpu x':>7}")
    for r in rows:
        print(f"{r['variant']:18} {r['wall_ms']:8.1f} {r['cpu_ms']:8.1f} {r['wall_ratio']:7.2f} {r['cpu_ratio']:7.2f}")


if __name__ == "__main__":
    main()
