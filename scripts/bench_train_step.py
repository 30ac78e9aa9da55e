#!/usr/bin/env python
"""Training-step speed: our caption and VQA models against plain Keras functional models with the same layers and
sizes, on the same data, in the same run, under TensorFlow and JAX (each backend in its own child process).

The plain models are what a Keras user would write by hand for the same computation: for VQA, small_cnn + a masked
Bidirectional(LSTM) question encoder + two additive-attention hops (the second also scoring each cell's offset from
the first glimpse) + a one-hidden-layer classifier; for captions, small_cnn + the Show-Attend-Tell attention LSTM
unrolled over the caption with keras.layers.LSTMCell and Dense layers (no doubly stochastic penalty, so the plain
step does slightly less work than ours). Sizes are the defaults of `captioner train` for each task. Both models
train with Adam (clipped) through `train_on_batch` on one fixed batch, after warm-up steps that compile.

Usage:
    scripts/bench_train_step.py [--backends tensorflow,jax] [--steps 20] [--tasks vqa,caption]

Prints one line per (backend, task): ours and plain steps per wall second and per CPU second of the benchmark process,
and ours / plain by each (the goal: >= 0.8). On a shared machine the CPU-time ratio is the steadier one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- VQA ---------------------------------------------------------------------------------------------------------
def vqa_models(images_per_batch=16, questions_per_image=8, length=10, vocab=80, answers=60):
    """(ours, plain, x, y, weights) at train_vqa's defaults (units 128, embed 64, 2 hops, small_cnn 64x64)."""
    import keras
    import numpy as np
    from keras import layers, ops

    from captioner.backbones import build_backbone
    from captioner.vqa import build_vqa_model
    units, embed, att = 128, 64, 128
    ours = build_vqa_model(dict(num_answers=answers, vocab_size=vocab, image_size=[64, 64], embed_dim=embed,
                                units=units, attention_dim=att, hops=2, dropout=0.1))

    m, b = images_per_batch, images_per_batch * questions_per_image
    image_in = keras.Input((64, 64, 3), batch_size=m, name="images")
    question_in = keras.Input((length,), batch_size=b, dtype="int32", name="questions")
    index_in = keras.Input((), batch_size=b, dtype="int32", name="image_index")
    grid = build_backbone("small_cnn", image_size=(64, 64))(image_in)  # (M, 8, 8, 128) -> as ours: (M, 64, 128)
    grid = layers.Reshape((64, 128))(grid) if len(grid.shape) == 4 else grid
    grid = layers.Dropout(0.1)(grid)
    ys, xs = np.meshgrid((np.arange(8) + 0.5) / 8 * 2 - 1, (np.arange(8) + 0.5) / 8 * 2 - 1, indexing="ij")
    coords = np.stack([xs, ys], -1).reshape(1, 64, 2).astype("float32")
    grid = ops.concatenate([grid, ops.broadcast_to(coords, (m, 64, 2))], axis=-1)  # (M, 64, 130)
    v = layers.Dense(units, activation="tanh")(grid)  # (M, 64, units)
    words = layers.Dropout(0.1)(layers.Embedding(vocab, embed, mask_zero=True)(question_in))  # (B, T, embed)
    _, h_fw, _, h_bw, _ = layers.Bidirectional(layers.LSTM(units, return_state=True))(words)
    u = layers.Dense(units, activation="tanh")(ops.concatenate([h_fw, h_bw], -1))  # (B, units)
    keys = [layers.Dense(att)(v) for _ in range(2)]  # (M, 64, att) per hop
    v, keys = ops.take(v, index_in, axis=0), [ops.take(k, index_in, axis=0) for k in keys]  # per question
    alpha = None
    for hop in range(2):
        k = keys[hop]
        if hop:
            seen = ops.expand_dims(alpha, -1)  # (B, 64, 1)
            centre = ops.sum(seen * coords, axis=1, keepdims=True)  # (B, 1, 2)
            where = ops.concatenate([ops.subtract(coords, centre), seen * 64], -1)  # (B, 64, 3)
            k = k + layers.Dense(att, use_bias=False)(where)
        scores = ops.squeeze(layers.Dense(1)(ops.tanh(k + ops.expand_dims(layers.Dense(att, use_bias=False)(u), 1))),
                             -1)  # (B, 64)
        alpha = ops.softmax(scores, axis=-1)
        u = u + ops.squeeze(ops.matmul(ops.expand_dims(alpha, 1), v), 1)  # (B, units)
    logits = layers.Dense(answers)(layers.Dropout(0.1)(layers.Dense(units, activation="relu")(u)))
    plain = keras.Model([image_in, question_in, index_in], logits)

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (m, 64, 64, 3)).astype("float32")
    questions = rng.integers(1, vocab, (b, length)).astype("int32")
    questions[:, 7:] = 0  # padded like real questions
    index = np.repeat(np.arange(m, dtype="int32"), questions_per_image)
    y = np.eye(answers, dtype="float32")[rng.integers(0, answers, b)]
    for model in (ours, plain):
        model.compile(optimizer=keras.optimizers.Adam(2e-3, clipnorm=5.0),
                      loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    return ours, plain, (images, questions, index), y


# ---- captions ----------------------------------------------------------------------------------------------------
def caption_models(batch=32, length=24, vocab=500):
    """(ours, plain, x, y) at train_captioner's defaults (embed 256, units 512, attention 256, small_cnn 64x64)."""
    import keras
    import numpy as np
    from keras import layers, ops

    from captioner.backbones import build_backbone
    from captioner.model import build_captioner
    embed, units, att = 256, 512, 256
    ours = build_captioner(dict(vocab_size=vocab, backbone="small_cnn", image_size=(64, 64),
                                decoder=dict(embed_dim=embed, units=units, attention_dim=att, dropout=0.3)))

    image_in = keras.Input((64, 64, 3), name="images")
    tokens_in = keras.Input((length,), dtype="int32", name="tokens")
    grid = build_backbone("small_cnn", image_size=(64, 64))(image_in)
    features = layers.Reshape((64, 128))(grid) if len(grid.shape) == 4 else grid  # (B, 64, 128)
    mean = ops.mean(features, axis=1)
    h, c = layers.Dense(units, activation="tanh")(mean), layers.Dense(units, activation="tanh")(mean)
    embedded = layers.Dropout(0.3)(layers.Embedding(vocab, embed)(tokens_in))  # (B, T, embed)
    keys = layers.Dense(att)(features)  # (B, 64, att)
    query, score, gate = layers.Dense(att, use_bias=False), layers.Dense(1), layers.Dense(128, activation="sigmoid")
    cell, out_hidden, out_context = layers.LSTMCell(units), layers.Dense(embed), layers.Dense(embed, use_bias=False)
    deeps = []
    for t in range(length):
        alpha = ops.softmax(ops.squeeze(score(ops.tanh(keys + ops.expand_dims(query(h), 1))), -1), axis=-1)
        context = ops.squeeze(ops.matmul(ops.expand_dims(alpha, 1), features), 1) * gate(h)  # (B, 128)
        word = embedded[:, t]
        h, (h, c) = cell(ops.concatenate([word, context], -1), [h, c])
        deeps.append(word + out_hidden(h) + out_context(context))
    logits = layers.Dense(vocab)(layers.Dropout(0.3)(ops.stack(deeps, axis=1)))  # (B, T, vocab)
    plain = keras.Model([image_in, tokens_in], logits)

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, 64, 64, 3)).astype("float32")
    tokens = rng.integers(4, vocab, (batch, length)).astype("int32")
    tokens[:, 14:] = 0
    targets = np.roll(tokens, -1, axis=1)
    for model in (ours, plain):
        model.compile(optimizer=keras.optimizers.Adam(1e-3, global_clipnorm=5.0),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0))
    return ours, plain, (images, tokens), targets


def _steps_per_second(model, x, y, steps, warmup=3):
    """-> (steps per wall second, steps per CPU second of this process) over `steps` steps after `warmup`."""
    for _ in range(warmup):  # compiles
        model.train_on_batch(x, y)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return steps / (time.perf_counter() - start), steps / (time.process_time() - cpu)


def child(task: str, steps: int, rounds: int = 3) -> dict:
    """Runs in the child process of one backend: both models of `task`, alternating rounds (fair under load)."""
    import keras
    keras.utils.set_random_seed(0)
    ours, plain, x, y = vqa_models() if task == "vqa" else caption_models()
    rates = {"ours": [], "plain": []}
    for _ in range(rounds):  # rounds interleaved, the best of each kept (less noise from other load)
        rates["ours"].append(_steps_per_second(ours, x, y, steps))
        rates["plain"].append(_steps_per_second(plain, x, y, steps))
    (ours_wall, ours_cpu), (plain_wall, plain_cpu) = (
        (max(r[0] for r in rates[k]), max(r[1] for r in rates[k])) for k in ("ours", "plain"))
    return {"backend": keras.backend.backend(), "task": task, "ours_steps_per_s": round(ours_wall, 2),
            "plain_steps_per_s": round(plain_wall, 2), "ratio": round(ours_wall / plain_wall, 3),
            "ours_steps_per_cpu_s": round(ours_cpu, 2), "plain_steps_per_cpu_s": round(plain_cpu, 2),
            "cpu_ratio": round(ours_cpu / plain_cpu, 3),
            "ours_parameters": int(ours.count_params()), "plain_parameters": int(plain.count_params())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="tensorflow,jax", help="comma-separated (default tensorflow,jax)")
    p.add_argument("--tasks", default="vqa,caption", help="comma-separated (default vqa,caption)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per round (default 20)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per model, best kept (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of the table")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.steps, a.rounds)))
        return 0
    rows = []
    for backend in [b.strip() for b in a.backends.split(",") if b.strip()]:
        for task in [t.strip() for t in a.tasks.split(",") if t.strip()]:
            env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
            proc = subprocess.run([sys.executable, __file__, "--child", task, "--steps", str(a.steps)], env=env,
                                  capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                print(f"{backend} {task}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                return 1
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            if not a.json:
                print(f"{backend:10} {task:8} ours {row['ours_steps_per_s']:6.2f} steps/s "
                      f"({row['ours_steps_per_cpu_s']:.2f}/CPU s)  plain {row['plain_steps_per_s']:6.2f} steps/s "
                      f"({row['plain_steps_per_cpu_s']:.2f}/CPU s)  ours/plain {row['ratio']:.2f} wall, "
                      f"{row['cpu_ratio']:.2f} CPU  (parameters {row['ours_parameters']:,} vs "
                      f"{row['plain_parameters']:,})", flush=True)
    if a.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
