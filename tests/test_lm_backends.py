"""Backend smoke test: on every importable Keras backend, `lm train` an LSTM in stream mode (stateful truncated
BPTT under `fit`) for one epoch and generate 5 tokens, each backend in its own process (KERAS_BACKEND is read once
at import). The processes run side by side to keep the wall time down."""

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
try:
    importlib.import_module(backend)
except Exception as e:
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
               "--epochs", "1", "--units", "8", "--batch-size", "4", "--bptt", "5", "--json"])
assert rc == 0, rc
summary = json.loads(out.getvalue())
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = main(["generate", "--model", os.path.join(folder, "model"), "--max-tokens", "5", "--seed", "0", "--json",
               ])
assert rc == 0, rc
print("RESULT " + json.dumps({"backend": keras.backend.backend(), "summary": summary,
                              "samples": json.loads(out.getvalue())}))
"""


@pytest.fixture(scope="module")
def children(tmp_path_factory):
    """Starts one child per backend at once; each test waits for its own."""
    procs = {}
    for backend in BACKENDS:
        folder = tmp_path_factory.mktemp(f"smoke-{backend}")
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu",
               "CUDA_VISIBLE_DEVICES": ""}
        procs[backend] = subprocess.Popen([sys.executable, "-c", CHILD, backend, str(folder)], cwd=ROOT, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield procs
    for p in procs.values():
        if p.poll() is None:
            p.kill()


@pytest.mark.parametrize("backend", BACKENDS)
def test_stream_lstm_trains_and_generates(children, backend):
    proc = children[backend]
    stdout, stderr = proc.communicate(timeout=300)
    if proc.returncode == SKIP:
        pytest.skip(stdout.strip())
    assert proc.returncode == 0, stderr[-3000:]
    result = json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["backend"] == backend
    summary = result["summary"]
    assert summary["epochs"] == 1 and summary["vocab_size"] == 14
    # One epoch of a tiny model on 13 words: better than nothing, not better than possible.
    assert 1.0 < summary["valid_perplexity"] < 14 * 1.5
    (sample,) = result["samples"]
    assert len(sample.split()) <= 5
