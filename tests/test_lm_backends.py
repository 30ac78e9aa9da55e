"""Backend smoke test: on every importable Keras backend, `lm train` an LSTM in stream mode (stateful truncated
BPTT under `fit`) for one epoch and generate 5 tokens, each backend in its own process (KERAS_BACKEND is read once
at import), with TensorFlow made unimportable for JAX and PyTorch. The processes run side by side to keep the wall
time down."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("tensorflow", "jax", "torch")
SKIP = 77  # the child's exit status when the backend's framework cannot be imported

CHILD = r"""
import contextlib, importlib, io, json, os, random, sys
backend, folder = sys.argv[1], sys.argv[2]
if backend != "tensorflow":
    # A GPU host has JAX / PyTorch but no TensorFlow: prove that lm never needs it (Keras copes with its absence).
    sys.modules["tensorflow"] = None
try:
    importlib.import_module(backend)
except ModuleNotFoundError as e:  # not installed: skip; installed but broken: fail (the traceback shows why)
    if e.name != backend:
        raise
    print(f"cannot import {backend}: {e}")
    sys.exit(77)
import keras
assert keras.backend.backend() == backend, keras.backend.backend()
from lm.cli import main
rng = random.Random(0)
words = "the cat dog bird sat ran on a red mat".split()
corpus = os.path.join(folder, "corpus")
os.makedirs(corpus)
for name, n in (("train", 50), ("valid", 6)):
    with open(os.path.join(corpus, name + ".txt"), "w") as f:
        f.write("".join(" ".join(rng.choice(words) for _ in range(rng.randint(2, 6))) + "\n" for _ in range(n)))
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = main(["train", corpus, "--out", os.path.join(folder, "model"), "--arch", "lstm", "--mode", "stream",
               "--epochs", "1", "--units", "8", "--batch-size", "4", "--bptt", "5", "--lr", "0.01", "--json"])
assert rc == 0, rc
summary = json.loads(out.getvalue())
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = main(["generate", "--model", os.path.join(folder, "model"), "--max-tokens", "5", "--seed", "0", "--json"])
assert rc == 0, rc
samples = json.loads(out.getvalue())

# Under this backend's fit(shuffle=False), the carried state after the last batch (learning rate 0, so the weights
# stay put) must be the state after reading each stream row whole with a stateless twin.
import numpy as np
from keras import ops
from lm.checkpoint import build_model, copy_weights
from lm.data import stream_batches
x, y = stream_batches(np.arange(4, 60) % 14, batch_size=2, bptt=4)
stateful = build_model("lstm", dict(vocab_size=14, units=6, stateful=True, batch_size=2))
plain = build_model("lstm", dict(vocab_size=14, units=6))
copy_weights(stateful, plain)
stateful.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0),
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
stateful.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0)
rows = np.concatenate([x[b::2] for b in range(2)], axis=0).reshape(2, -1)
_, states = plain.logits_and_states(rows)
state_error = max(float(np.abs(ops.convert_to_numpy(v) - ops.convert_to_numpy(e)).max())
                  for v, e in zip(stateful.carried[0], states[0]))
carried_norm = float(np.abs(ops.convert_to_numpy(stateful.carried[0][0])).max())
print("RESULT " + json.dumps({"backend": keras.backend.backend(), "summary": summary, "samples": samples,
                              "state_error": state_error, "carried_norm": carried_norm}))
"""


@pytest.fixture(scope="module")
def children(request, tmp_path_factory):
    """Starts one child per selected backend, all at once; each test waits for its own."""
    selected = {item.callspec.params["backend"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_stream_lstm_trains_and_generates"}
    procs = {}
    for backend in [b for b in BACKENDS if b in selected]:
        folder = tmp_path_factory.mktemp(f"smoke-{backend}")
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu",
               "CUDA_VISIBLE_DEVICES": ""}
        # Output goes to files, not pipes, so that a chatty child never blocks on a full pipe while it waits.
        out, err = open(folder / "stdout.txt", "w+"), open(folder / "stderr.txt", "w+")
        proc = subprocess.Popen([sys.executable, "-c", CHILD, backend, str(folder)], cwd=ROOT, env=env,
                                stdout=out, stderr=err, text=True)
        procs[backend] = (proc, out, err)
    yield procs
    for proc, out, err in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close(), err.close()


def _wait(child) -> tuple[int, str, str]:
    proc, out, err = child
    proc.wait(timeout=300)
    out.seek(0), err.seek(0)
    return proc.returncode, out.read(), err.read()


@pytest.mark.parametrize("backend", BACKENDS)
def test_stream_lstm_trains_and_generates(children, backend):
    returncode, stdout, stderr = _wait(children[backend])
    if returncode == SKIP:
        pytest.skip(stdout.strip())
    assert returncode == 0, stderr[-3000:]
    result = json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["backend"] == backend
    summary = result["summary"]
    assert summary["epochs"] == 1 and summary["vocab_size"] == 14
    # One epoch of a tiny model on 10 random words: better than a model that learned nothing (uniform over the 14
    # ids), not better than possible (each word is 1 of 10: at least 10 ** (4/5) per token with <eos>).
    assert 5.0 < summary["valid_perplexity"] < 14
    (sample,) = result["samples"]
    assert len(sample.split()) <= 5
    assert result["carried_norm"] > 1e-3 and result["state_error"] < 1e-5  # fit carried the state, in order
