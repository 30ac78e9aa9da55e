#!/usr/bin/env python
"""Training throughput of our models on each Keras backend against PyTorch references on the same shapes.

Two workloads, random data, the same step count and the same data placement for ours and the reference:
  lm       2 x 650 LSTM language model, vocab 10k, 35 steps of truncated BPTT (state carried across batches).
           Ours: lm.model.LanguageModel (stateful) under `fit`. Reference: torch.nn.Embedding + torch.nn.LSTM (cuDNN on
           a GPU) + Linear + cross-entropy + Adam, hidden state carried and detached (PyTorch's word_language_model).
  decoder  Show-Attend-Tell decoder on a 196 x 2048 grid, attention 512, embed 512, units 512, vocab 10k, 20 steps.
           Ours: captioner.decoder.CaptionDecoder under `fit` (doubly stochastic loss on). Reference:
           sgrvinod/a-PyTorch-Tutorial-to-Image-Captioning's DecoderWithAttention, eager: attention MLP with ReLU,
           sigmoid gate, h/c initialised from the mean feature, nn.LSTMCell loop, a Linear to the vocabulary at
           every step; with `--ref-variant tutorial` (default) the encoder projection is recomputed every step as the
           tutorial does, with `hoisted` once per batch. The losses printed differ by design: ours sums the doubly
           stochastic penalty over pixels (Xu et al.), the tutorial averages it.
Throughput: tokens/s (lm) and images/s (decoder); ratio = ours / reference (> 1: ours is faster). Warm-up steps
(compilation) are excluded; the device is synchronised before the clock stops (jax block_until_ready,
torch.cuda.synchronize). Each side times `--repeats` windows of `--steps` steps and keeps its best window (robust
to other processes on a shared machine).

Placement: `host` streams every batch from host memory (a pool of 4 distinct batches, cycled), `device` keeps the
pool on the accelerator beforehand. On a CPU-only machine the two are the same thing.

Every Keras backend runs in its own process (KERAS_BACKEND is read once at import), the PyTorch reference in one
more; they run one after another, never side by side.

Usage:
    .venv/bin/python scripts/bench_gpu.py                               # all installed backends, GPU shapes
    .venv/bin/python scripts/bench_gpu.py --backend jax --batch-sizes 64,256 --placement both --json
    .venv/bin/python scripts/bench_gpu.py --small --threads 1           # shrunken shapes: minutes on a CPU
    .venv/bin/python scripts/bench_gpu.py --backend jax --precision both  # also bf16 vs torch autocast bf16

Targets on an H100 (JAX backend, float32 vs float32): lm >= 1.2x at batch 64 and 256; decoder >= 1.5x at 64 and
>= 1.0x at 256. They are printed as a last column on a GPU; on a CPU they are not applicable.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("jax", "tensorflow", "torch")
POOL = 4  # distinct batches, cycled

SHAPES = {
    "full": {
        "lm": dict(vocab=10000, units=650, layers=2, bptt=35, dropout=0.5),
        "decoder": dict(vocab=10000, pixels=196, channels=2048, attention=512, embed=512, units=512, steps=20,
                        dropout=0.5),
    },
    "small": {
        "lm": dict(vocab=2000, units=128, layers=2, bptt=20, dropout=0.5),
        "decoder": dict(vocab=2000, pixels=49, channels=256, attention=128, embed=128, units=128, steps=12,
                        dropout=0.5),
    },
}
TARGETS = {("lm", 64): 1.2, ("lm", 256): 1.2, ("decoder", 64): 1.5, ("decoder", 256): 1.0}


# ---- data (identical for ours and the reference: same seed, same numpy arrays) ------------------------------------
def make_pool(task, shape, batch, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    if task == "lm":
        ids = rng.integers(4, shape["vocab"], size=(POOL, batch, shape["bptt"] + 1), dtype="int64").astype("int32")
        return [(ids[k, :, :-1], ids[k, :, 1:]) for k in range(POOL)]
    t = shape["steps"]
    features = rng.standard_normal((POOL, batch, shape["pixels"], shape["channels"]), dtype="float32")
    features = np.abs(features)  # post-ReLU CNN grids are non-negative
    captions = rng.integers(4, shape["vocab"], size=(POOL, batch, t + 1), dtype="int64").astype("int32")
    captions[:, :, 0] = 2  # <bos>
    return [(features[k], captions[k, :, :-1], captions[k, :, 1:]) for k in range(POOL)]


def units_per_step(task, shape, batch):
    """What one step processes: tokens for the LM, images for the decoder."""
    return batch * shape["bptt"] if task == "lm" else batch


# ---- ours: one Keras backend --------------------------------------------------------------------------------------
def run_keras(args, shape_set):
    sys.path.insert(0, ROOT)
    import keras
    import numpy as np
    from keras import ops

    from lm import accel
    backend = keras.backend.backend()
    results = []

    def device_name():
        if backend == "jax":
            import jax
            d = jax.devices()[0]
            return f"{d.platform}:{getattr(d, 'device_kind', '')}"
        if backend == "torch":
            import torch
            return f"cuda:{torch.cuda.get_device_name()}" if torch.cuda.is_available() else "cpu"
        import tensorflow as tf
        return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"

    def to_device(x):
        if backend == "jax":
            import jax
            return jax.device_put(x)
        return ops.convert_to_tensor(x)  # torch: the Keras device (cuda when present); tensorflow: its default

    def sync(model):
        value = model.trainable_variables[0].value
        if backend == "jax":
            value.block_until_ready()
        elif backend == "torch":
            import torch
            if torch.cuda.is_available():
                torch.cuda.synchronize()
        else:
            value.numpy()

    class Batches(keras.utils.PyDataset):
        def __init__(self, pool, steps):
            super().__init__()
            self.pool, self.steps = pool, steps

        def __len__(self):
            return self.steps

        def __getitem__(self, i):
            return self.pool[i % len(self.pool)]

    for task in args.tasks:
        shape = SHAPES[shape_set][task]
        for batch in args.batch_sizes:
            raw = make_pool(task, shape, batch)
            if task == "lm":
                pool_host = [(x, y) for x, y in raw]
            else:
                pool_host = [((f, ti), to) for f, ti, to in raw]
            for placement in args.placements:
                pool = pool_host
                if placement == "device":
                    pool = [tuple((tuple(to_device(a) for a in p) if isinstance(p, tuple) else to_device(p))
                                  for p in item) for item in pool_host]
                for mixed in args.precisions:
                    keras.utils.set_random_seed(0)
                    with accel.precision(mixed):
                        model = build_ours(task, shape, batch)
                    if task == "decoder":
                        model.fused_loop = not args.no_fused
                        model.hoist_word_projection = args.hoist_words
                    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0),
                                  jit_compile=accel.jit_option(args.jit),
                                  steps_per_execution=args.steps_per_execution)
                    start = time.perf_counter()
                    model.fit(Batches(pool, args.warmup), epochs=1, verbose=0, shuffle=False)
                    sync(model)
                    warmup = time.perf_counter() - start
                    times = []
                    for _ in range(args.repeats):
                        start = time.perf_counter()
                        history = model.fit(Batches(pool, args.steps), epochs=1, verbose=0, shuffle=False)
                        sync(model)
                        times.append(time.perf_counter() - start)
                    seconds = min(times)  # the best window: least disturbed by other processes
                    results.append(dict(
                        side="ours", backend=backend, device=device_name(), task=task, batch=batch,
                        placement=placement, precision="mixed_bfloat16" if mixed else "float32",
                        steps=args.steps, seconds=round(seconds, 4), warmup_seconds=round(warmup, 2),
                        windows=[round(t, 4) for t in times],
                        per_second=units_per_step(task, shape, batch) * args.steps / seconds,
                        loss=float(history.history["loss"][-1]), jit=str(getattr(model, "jit_compile", None)),
                        fused_loop=bool(getattr(model, "fused_loop", False)) if task == "decoder" else None,
                        hoist_words=bool(getattr(model, "hoist_word_projection", False)) if task == "decoder"
                        else None))
                    print("RESULT " + json.dumps(results[-1]), flush=True)
                    del model
                    keras.backend.clear_session()
    return results


def build_ours(task, shape, batch):
    import numpy as np
    if task == "lm":
        from lm.model import LanguageModel
        model = LanguageModel(vocab_size=shape["vocab"], cell_type="lstm", units=shape["units"],
                              num_layers=shape["layers"], dropout=shape["dropout"], stateful=True, batch_size=batch)
        model(np.zeros((batch, shape["bptt"]), "int32"))
        return model
    from captioner.decoder import CaptionDecoder
    model = CaptionDecoder(vocab_size=shape["vocab"], feature_dim=shape["channels"], embed_dim=shape["embed"],
                           units=shape["units"], attention_dim=shape["attention"], dropout=shape["dropout"],
                           alpha_c=1.0)
    model.build(((None, shape["pixels"], shape["channels"]), (None, shape["steps"])))
    return model


# ---- the PyTorch references ---------------------------------------------------------------------------------------
def torch_models():
    import torch
    from torch import nn

    class WordLM(nn.Module):
        """PyTorch's word_language_model (untied): embedding -> dropout -> LSTM (cuDNN) -> dropout -> Linear."""

        def __init__(self, vocab, units, layers, dropout):
            super().__init__()
            self.drop = nn.Dropout(dropout)
            self.encoder = nn.Embedding(vocab, units)
            self.rnn = nn.LSTM(units, units, layers, dropout=dropout, batch_first=True)
            self.decoder = nn.Linear(units, vocab)

        def forward(self, x, hidden):
            output, hidden = self.rnn(self.drop(self.encoder(x)), hidden)
            return self.decoder(self.drop(output)), hidden

    class Attention(nn.Module):
        """sgrvinod's Attention: full_att(relu(encoder_att(enc) + decoder_att(h))) -> softmax -> weighted sum."""

        def __init__(self, encoder_dim, decoder_dim, attention_dim):
            super().__init__()
            self.encoder_att = nn.Linear(encoder_dim, attention_dim)
            self.decoder_att = nn.Linear(decoder_dim, attention_dim)
            self.full_att = nn.Linear(attention_dim, 1)
            self.relu = nn.ReLU()
            self.softmax = nn.Softmax(dim=1)

        def forward(self, encoder_out, decoder_hidden, att1=None):
            if att1 is None:
                att1 = self.encoder_att(encoder_out)  # (batch, pixels, attention_dim): the tutorial, every step
            att2 = self.decoder_att(decoder_hidden)  # (batch, attention_dim)
            att = self.full_att(self.relu(att1 + att2.unsqueeze(1))).squeeze(2)  # (batch, pixels)
            alpha = self.softmax(att)
            return (encoder_out * alpha.unsqueeze(2)).sum(dim=1), alpha

    class DecoderWithAttention(nn.Module):
        """sgrvinod's DecoderWithAttention.forward, captions all of one length (no sort needed)."""

        def __init__(self, attention_dim, embed_dim, decoder_dim, vocab_size, encoder_dim, dropout, hoist):
            super().__init__()
            self.vocab_size, self.hoist = vocab_size, hoist
            self.attention = Attention(encoder_dim, decoder_dim, attention_dim)
            self.embedding = nn.Embedding(vocab_size, embed_dim)
            self.dropout = nn.Dropout(p=dropout)
            self.decode_step = nn.LSTMCell(embed_dim + encoder_dim, decoder_dim, bias=True)
            self.init_h = nn.Linear(encoder_dim, decoder_dim)
            self.init_c = nn.Linear(encoder_dim, decoder_dim)
            self.f_beta = nn.Linear(decoder_dim, encoder_dim)
            self.sigmoid = nn.Sigmoid()
            self.fc = nn.Linear(decoder_dim, vocab_size)
            self.embedding.weight.data.uniform_(-0.1, 0.1)
            self.fc.bias.data.fill_(0)
            self.fc.weight.data.uniform_(-0.1, 0.1)

        def forward(self, encoder_out, captions):
            batch, pixels = encoder_out.size(0), encoder_out.size(1)
            steps = captions.size(1) - 1
            embeddings = self.embedding(captions)
            mean = encoder_out.mean(dim=1)
            h, c = self.init_h(mean), self.init_c(mean)
            predictions = torch.zeros(batch, steps, self.vocab_size, device=encoder_out.device)
            alphas = torch.zeros(batch, steps, pixels, device=encoder_out.device)
            att1 = self.attention.encoder_att(encoder_out) if self.hoist else None
            for t in range(steps):
                context, alpha = self.attention(encoder_out, h, att1)
                gate = self.sigmoid(self.f_beta(h))
                context = gate * context
                h, c = self.decode_step(torch.cat([embeddings[:, t, :], context], dim=1), (h, c))
                predictions[:, t, :] = self.fc(self.dropout(h))  # the vocabulary projection at every step
                alphas[:, t, :] = alpha
            return predictions, alphas

    return WordLM, DecoderWithAttention


def run_reference(args, shape_set):
    import numpy as np
    import torch
    from torch import nn
    WordLM, DecoderWithAttention = torch_models()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    device_label = f"cuda:{torch.cuda.get_device_name()}" if cuda else "cpu"
    results = []

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for task in args.tasks:
        shape = SHAPES[shape_set][task]
        for batch in args.batch_sizes:
            raw = make_pool(task, shape, batch)
            host = [tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in item) for item in raw]
            if cuda:
                host = [tuple(a.pin_memory() for a in item) for item in host]
            for placement in args.placements:
                pool = host if placement == "host" else [tuple(a.to(device) for a in item) for item in host]
                for mixed in args.precisions:
                    torch.manual_seed(0)
                    if task == "lm":
                        model = WordLM(shape["vocab"], shape["units"], shape["layers"], shape["dropout"]).to(device)
                    else:
                        model = DecoderWithAttention(shape["attention"], shape["embed"], shape["units"],
                                                     shape["vocab"], shape["channels"], shape["dropout"],
                                                     hoist=args.ref_variant == "hoisted").to(device)
                    model.train()
                    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
                    criterion = nn.CrossEntropyLoss()
                    state = {"hidden": None}

                    def step(i):
                        item = pool[i % len(pool)]
                        item = [a.to(device, non_blocking=True) for a in item]
                        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed):
                            if task == "lm":
                                x, y = item
                                hidden = state["hidden"]
                                if hidden is not None:  # truncated BPTT: carry the state, not its history
                                    hidden = tuple(h.detach() for h in hidden)
                                logits, state["hidden"] = model(x.long(), hidden)
                                loss = criterion(logits.float().reshape(-1, shape["vocab"]), y.long().reshape(-1))
                            else:
                                features, tokens_in, tokens_out = item
                                captions = torch.cat([tokens_in, tokens_out[:, -1:]], dim=1).long()
                                scores, alphas = model(features, captions)
                                targets = captions[:, 1:]
                                loss = criterion(scores.float().reshape(-1, shape["vocab"]), targets.reshape(-1))
                                loss = loss + 1.0 * ((1.0 - alphas.sum(dim=1)) ** 2).mean()  # alpha_c = 1
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                        return loss

                    for i in range(args.warmup):
                        loss = step(i)
                    sync()
                    times = []
                    for r in range(args.repeats):
                        start = time.perf_counter()
                        for i in range(args.steps):
                            loss = step(args.warmup + r * args.steps + i)
                        sync()
                        times.append(time.perf_counter() - start)
                    seconds = min(times)
                    results.append(dict(
                        side="reference", backend="torch-native", device=device_label, task=task, batch=batch,
                        placement=placement, precision="mixed_bfloat16" if mixed else "float32",
                        steps=args.steps, seconds=round(seconds, 4), windows=[round(t, 4) for t in times],
                        per_second=units_per_step(task, shape, batch) * args.steps / seconds,
                        loss=float(loss.detach()), variant=args.ref_variant if task == "decoder" else "cudnn-lstm"))
                    print("RESULT " + json.dumps(results[-1]), flush=True)
                    del model, optimizer
                    if cuda:
                        torch.cuda.empty_cache()
    return results


def set_threads(threads, reference):
    """In a child, before any model exists: the CPU thread count of the framework(s) this process uses."""
    if not threads:
        return
    backend = None if reference else os.environ.get("KERAS_BACKEND")
    if reference or backend == "torch":
        import torch
        torch.set_num_threads(threads)
        torch.set_num_interop_threads(threads)
    elif backend == "tensorflow":
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


# ---- the parent: one child per backend, then the table --------------------------------------------------------------
def child(worker, backend, argv, timeout, threads=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if backend:
        env["KERAS_BACKEND"] = backend
    if threads:  # CPU thread pools of every framework (XLA's knob exists for one thread only)
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        if threads == 1:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                                "intra_op_parallelism_threads=1").strip()
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker, *argv]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    rows = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    error = None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        error = tail[-1] if tail else f"exit status {proc.returncode}"
    return rows, error


def table(rows, on_gpu):
    refs = {(r["task"], r["batch"], r["placement"], r["precision"]): r for r in rows if r["side"] == "reference"}
    out = []
    for r in rows:
        if r["side"] != "ours":
            continue
        ref = refs.get((r["task"], r["batch"], r["placement"], r["precision"]))
        ratio = r["per_second"] / ref["per_second"] if ref else None
        target = TARGETS.get((r["task"], r["batch"])) if on_gpu and r["backend"] == "jax" else None
        out.append({**{k: r[k] for k in ("task", "batch", "placement", "precision", "backend", "device")},
                    "unit": "tokens/s" if r["task"] == "lm" else "images/s",
                    "ours": round(r["per_second"], 1), "reference": round(ref["per_second"], 1) if ref else None,
                    "ratio": round(ratio, 3) if ratio else None, "target": target,
                    "meets_target": (ratio >= target) if (ratio and target) else None,
                    "warmup_seconds": r["warmup_seconds"], "ours_loss": round(r["loss"], 3),
                    "reference_loss": round(ref["loss"], 3) if ref else None})
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--backend", default="all", help="jax, tensorflow, torch, all, or a comma-separated list")
    parser.add_argument("--tasks", default="lm,decoder", help="lm, decoder or both (default both)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 50; 6 with --small)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed windows of --steps steps each; the best counts (default 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps (default 5; 2 with --small)")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated (default 64,256; 8,32 with --small)")
    parser.add_argument("--placement", choices=["host", "device", "both"], default="device")
    parser.add_argument("--precision", choices=["float32", "mixed", "both"], default="float32",
                        help="float32 vs torch float32, mixed: bf16 (Keras mixed_bfloat16 vs torch.autocast)")
    parser.add_argument("--jit", default="auto", help="jit_compile for ours: auto, true, false (default auto)")
    parser.add_argument("--steps-per-execution", type=int, default=1,
                        help="ours: train steps per compiled call (Keras compile argument; default 1)")
    parser.add_argument("--ref-variant", choices=["tutorial", "hoisted"], default="tutorial",
                        help="decoder reference: encoder projection every step (tutorial) or once (hoisted)")
    parser.add_argument("--no-fused", action="store_true", help="ours: the plain per-step decoder loop (A/B)")
    parser.add_argument("--hoist-words", action="store_true",
                        help="ours: also precompute the word part of the decoder's LSTM input for all steps (A/B)")
    parser.add_argument("--small", action="store_true", help="shrunken shapes for a CPU run (minutes)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per framework (default: the frameworks' own); use 1 on a shared machine")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per child process")
    parser.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    parser.add_argument("--worker", choices=["keras", "reference"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if any(t not in ("lm", "decoder") for t in args.tasks):
        parser.error("--tasks takes lm and/or decoder")
    args.steps = args.steps or (6 if args.small else 50)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.small else 5)
    args.batch_sizes = [int(b) for b in (args.batch_sizes or ("8,32" if args.small else "64,256")).split(",")]
    args.placements = ["host", "device"] if args.placement == "both" else [args.placement]
    args.precisions = {"float32": [False], "mixed": [True], "both": [False, True]}[args.precision]
    shape_set = "small" if args.small else "full"

    if args.worker:
        set_threads(args.threads, args.worker == "reference")
    if args.worker == "keras":
        run_keras(args, shape_set)
        return 0
    if args.worker == "reference":
        run_reference(args, shape_set)
        return 0

    backends = BACKENDS if args.backend == "all" else tuple(b.strip() for b in args.backend.split(","))
    for b in backends:
        if b not in BACKENDS:
            parser.error(f"unknown backend {b!r}")
    if importlib.util.find_spec("torch") is None:
        print("bench_gpu: error: the references need PyTorch (pip install torch)", file=sys.stderr)
        return 2
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    rows, skipped = [], {}
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))
    log(f"== reference (PyTorch), {shape_set} shapes")
    ref_rows, error = child("reference", None, passthrough, args.timeout, args.threads)
    if error:
        log(f"reference failed: {error}")
    rows += ref_rows
    for backend in backends:
        if importlib.util.find_spec(backend) is None:
            skipped[backend] = f"{backend} is not installed"
            log(f"== {backend}: skipped ({skipped[backend]})")
            continue
        log(f"== ours on {backend}")
        ours, error = child("keras", backend, passthrough, args.timeout, args.threads)
        if error:
            skipped[backend] = error
            log(f"{backend} failed: {error}")
        rows += ours
    on_gpu = any(r["device"].startswith(("cuda", "gpu")) for r in rows)
    result = table(rows, on_gpu)
    if args.json:
        print(json.dumps({"shapes": shape_set, "steps": args.steps, "warmup": args.warmup, "rows": result,
                          "skipped": skipped, "ref_variant": args.ref_variant}))
        return 0
    header = f"{'task':8} {'batch':>5} {'place':6} {'precision':14} {'backend':10} {'ours':>11} {'torch ref':>11} " \
             f"{'ratio':>6}  {'unit':9} {'warm-up s':>9}"
    print(f"\n{shape_set} shapes, {args.steps} timed steps after {args.warmup} warm-up, decoder reference: "
          f"{args.ref_variant}")
    print(header + ("  target" if on_gpu else ""))
    for r in result:
        ref = f"{r['reference']:11.1f}" if r["reference"] else f"{'-':>11}"
        ratio = f"{r['ratio']:6.2f}" if r["ratio"] else f"{'-':>6}"
        line = (f"{r['task']:8} {r['batch']:5d} {r['placement']:6} {r['precision']:14} {r['backend']:10} "
                f"{r['ours']:11.1f} {ref} {ratio}  {r['unit']:9} {r['warmup_seconds']:9.1f}")
        if on_gpu and r["target"]:
            line += f"  >= {r['target']:.1f} {'ok' if r['meets_target'] else 'MISSED'}"
        print(line)
    for backend, why in skipped.items():
        print(f"{backend}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
