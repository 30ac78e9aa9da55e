"""Data-parallel training (`--distribute`, lm.accel) on two virtual CPU devices, each backend in its own process:
JAX with XLA_FLAGS=--xla_force_host_platform_device_count=2 (keras.distribution.DataParallel), TensorFlow with two
logical CPU devices (tf.distribute.MirroredStrategy).

Each child checks that
  * both devices hold data: the batch layout splits the batch in two, and the stateful LM's carried state is split
    along the batch (JAX: one (batch/2, units) shard per device; TensorFlow: one per-replica copy), every half
    non-zero after training, i.e. computed from that device's rows;
  * distributed training is the same computation: the losses of a stateful LM (truncated BPTT across batches) and
    of the caption decoder match single-device training step for step, and go down;
  * `lm train --distribute --mixed-precision` and `captioner train --distribute` run end to end.
PyTorch has no --distribute: a one-line error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLICKR = os.path.join(ROOT, "tests", "fixtures", "flickr8k", "Flickr8k.token.txt")
SKIP = 77

CHILD = r"""
import contextlib, importlib, io, json, os, sys, time
backend, folder, flickr = sys.argv[1:4]
try:
    importlib.import_module(backend)
except ModuleNotFoundError as e:  # not installed: skip; installed but broken: fail (the traceback shows why)
    if e.name != backend:
        raise
    print(f"cannot import {backend}: {e}")
    sys.exit(77)
if backend == "tensorflow":  # two logical CPUs, before anything initialises TensorFlow
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np
import keras
from keras import ops
assert keras.backend.backend() == backend
from lm import accel
from lm.data import stream_batches
from lm.model import LanguageModel
from captioner.decoder import CaptionDecoder
from captioner.training import CaptionBatches

out = {"backend": backend}
BATCH, BPTT, UNITS, VOCAB = 4, 5, 16, 12
rng = np.random.default_rng(0)
pattern = np.array([4, 5, 6, 7, 8, 9, 10, 11] * 40, "int32")  # a learnable stream
x, y = stream_batches(pattern, BATCH, BPTT)

def lm_losses(initial=None, distribute=False):
    with accel.distribution(distribute, BATCH) as replicas:
        model = LanguageModel(vocab_size=VOCAB, units=UNITS, num_layers=2, stateful=True, batch_size=BATCH)
        model(np.zeros((BATCH, BPTT), "int32"))
        model.reset_states()
        if initial is not None:  # the same starting point (trainable weights: the carried state differs in shape)
            for variable, value in zip(model.trainable_variables, initial):
                variable.assign(value)
        weights = [ops.convert_to_numpy(v.value) for v in model.trainable_variables]
        model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile="auto",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0)
    return model, weights, history.history["loss"], replicas

single, initial, single_losses, _ = lm_losses()
model, _, losses, replicas = lm_losses(initial, distribute=True)
out["replicas"] = replicas
out["lm_losses"], out["lm_single_losses"] = losses, single_losses
carried = model.carried[0][0]
if backend == "jax":
    value = carried.value
    out["state_devices"] = len(value.sharding.device_set)
    out["state_shards"] = [list(s.data.shape) for s in value.addressable_shards]
    out["state_shard_norms"] = [float(np.abs(np.asarray(s.data)).sum()) for s in value.addressable_shards]
    out["weight_devices"] = len(model.trainable_variables[0].value.sharding.device_set)
    dist = accel._jax_data_parallel_class()(devices=keras.distribution.list_devices())
    batch = keras.distribution.distribute_tensor(np.asarray(x[:BATCH]), dist.get_data_layout((BATCH, BPTT)))
    out["batch_shards"] = [list(s.data.shape) for s in batch.addressable_shards]
    out["batch_devices"] = len(batch.sharding.device_set)
    # The same rows as single-device training: shards concatenated = the single model's state.
    out["state_matches_single"] = bool(np.allclose(np.asarray(value), np.asarray(single.carried[0][0].value),
                                                   atol=1e-4))
else:
    import tensorflow as tf
    strategy = model.distribute_strategy
    out["num_replicas_in_sync"] = strategy.num_replicas_in_sync
    local = strategy.experimental_local_results(carried.value)
    out["state_shards"] = [list(v.shape) for v in local]
    out["state_devices"] = len({v.device for v in local})
    out["state_shard_norms"] = [float(np.abs(v.numpy()).sum()) for v in local]
    out["state_matches_single"] = bool(np.allclose(np.concatenate([v.numpy() for v in local]),
                                                   np.asarray(single.carried[0][0].value), atol=1e-4))
    # Per-replica batches as fit sees them: the distributed dataset hands each replica half of a global batch.
    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH))
    first = next(iter(dataset))
    out["batch_shards"] = [list(v.shape) for v in strategy.experimental_local_results(first[0])]

# The caption decoder: per-batch loss of distributed vs single-device training.
features = rng.random((12, 9, 6), dtype="float32")
# Captions of one length (7 words + <bos> = the fixed width 8): with padding, each TensorFlow replica would average
# its loss over its own unpadded tokens, which differs from the global average (JAX's global computation does not).
captions = [list(rng.integers(4, 20, size=7)) for _ in range(12)]
def decoder_losses(initial=None, distribute=False):
    keras.utils.set_random_seed(0)
    with accel.distribution(distribute, BATCH):
        decoder = CaptionDecoder(vocab_size=20, feature_dim=6, embed_dim=8, units=16, attention_dim=8, dropout=0.0)
        decoder.build(((None, 9, 6), (None, None)))
        if initial is not None:
            decoder.set_weights(initial)
        weights = decoder.get_weights()
        decoder.compile(optimizer=keras.optimizers.Adam(1e-2),
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0))
        # Arrays, not the CaptionBatches PyDataset: under MirroredStrategy Keras draws from a PyDataset before the
        # first step (its symbolic build), so the first epoch does not start at batch 0 and losses cannot be paired.
        batches = CaptionBatches(features, np.arange(12), captions, BATCH, shuffle=False, fixed_width=8,
                                 drop_remainder=distribute)
        (grids, tokens_in), tokens_out = [np.concatenate(a) for a in zip(*[batches[i][0] for i in range(3)])], \
            np.concatenate([batches[i][1] for i in range(3)])
        history = decoder.fit((grids, tokens_in), tokens_out, batch_size=BATCH, epochs=3, shuffle=False, verbose=0)
    return weights, history.history["loss"]

initial, out["decoder_single_losses"] = decoder_losses()
_, out["decoder_losses"] = decoder_losses(initial, distribute=True)

# The command lines, end to end.
from lm.cli import main as lm_main
corpus = os.path.join(folder, "corpus")
os.makedirs(corpus)
words = "the cat dog bird sat ran on a red mat".split()
for name, n in (("train", 60), ("valid", 8)):
    with open(os.path.join(corpus, name + ".txt"), "w") as f:
        f.write("".join(" ".join(words[(i * 7 + j) % 10] for j in range(2 + i % 4)) + "\n" for i in range(n)))
buf = io.StringIO()
start = time.perf_counter()
with contextlib.redirect_stdout(buf):
    rc = lm_main(["train", corpus, "--out", os.path.join(folder, "lm"), "--units", "8", "--layers", "2",
                  "--batch-size", "4", "--bptt", "5", "--epochs", "1", "--distribute", "--mixed-precision", "--json"])
assert rc == 0, rc
out["lm_cli"] = json.loads(buf.getvalue())
from captioner.cli import main as cap_main
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    rc = cap_main(["train", flickr, "--out", os.path.join(folder, "cap"), "--image-size", "32", "--epochs", "1",
                   "--units", "8", "--embed", "8", "--attention-dim", "8", "--batch-size", "4", "--max-length", "8",
                   "--distribute", "--json"])
assert rc == 0, rc
out["captioner_cli"] = json.loads(buf.getvalue())
print("RESULT " + json.dumps(out))
"""


def _env(backend):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu",
           "CUDA_VISIBLE_DEVICES": ""}
    if backend == "jax":
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    return env


@pytest.fixture(scope="module")
def children(tmp_path_factory):
    """Both children start at once; each test waits for its own."""
    procs = {}
    for backend in ("jax", "tensorflow"):
        folder = tmp_path_factory.mktemp(f"distribute-{backend}")
        procs[backend] = (time.perf_counter(), subprocess.Popen(
            [sys.executable, "-c", CHILD, backend, str(folder), FLICKR], cwd=ROOT, env=_env(backend),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    yield procs
    for _, p in procs.values():
        if p.poll() is None:
            p.kill()


def _result(children, backend):
    started, proc = children[backend]
    stdout, stderr = proc.communicate(timeout=900)
    if proc.returncode == SKIP:
        pytest.skip(stdout.strip())
    assert proc.returncode == 0, f"{stdout[-2000:]}\n{stderr[-4000:]}"
    result = json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[7:])
    result["seconds"] = time.perf_counter() - started
    return result


def _check_common(r):
    # The loss went down, and distributed training computed what one device computes.
    assert r["lm_losses"][-1] < r["lm_losses"][0] * 0.9, r["lm_losses"]
    assert r["lm_losses"] == pytest.approx(r["lm_single_losses"], rel=1e-3)
    assert r["decoder_losses"][-1] < r["decoder_losses"][0], r["decoder_losses"]
    assert r["decoder_losses"] == pytest.approx(r["decoder_single_losses"], rel=1e-3)
    # Both devices hold half of the carried state, computed from their own rows.
    assert r["state_devices"] == 2 and r["state_shards"] == [[2, 16], [2, 16]]
    assert all(n > 0 for n in r["state_shard_norms"]) and r["state_matches_single"]
    assert r["batch_shards"] == [[2, 5], [2, 5]]
    # Better than a model that learned nothing (uniform over the 14 ids) after one epoch of a repeating text.
    assert r["lm_cli"]["epochs"] >= 1 and 1.0 < r["lm_cli"]["valid_perplexity"] < 14
    assert r["captioner_cli"]["epochs"] == 1


def test_jax_data_parallel(children):
    r = _result(children, "jax")
    assert r["replicas"] == 2 and r["batch_devices"] == 2
    assert r["weight_devices"] == 2  # weights replicated on both
    _check_common(r)


def test_tensorflow_mirrored_strategy(children):
    r = _result(children, "tensorflow")
    assert r["replicas"] == 2 and r["num_replicas_in_sync"] == 2
    _check_common(r)


def test_torch_distribute_is_a_one_line_error(run_python):
    code = ("import sys\nfrom lm.accel import distribution\nfrom lm.errors import UserError\n"
            "try:\n    with distribution(True):\n        pass\nexcept UserError as e:\n    print(e); sys.exit(0)\n"
            "sys.exit(1)")
    proc = run_python(code, "torch", CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "JAX or TensorFlow" in proc.stdout
