"""Multi-host training for real: two `captioner train --distribute` processes on 127.0.0.1 form one cluster (JAX:
jax.distributed via the KERAS_DISTRIBUTION_* variables; TensorFlow: MultiWorkerMirroredStrategy via TF_CONFIG),
each reads its own shard of the images, and both end with the same weights while the loss falls."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLICKR = os.path.join(ROOT, "tests", "fixtures", "flickr8k")  # 2 training images, 5 captions each
FLAGS = ["--image-size", "32", "--epochs", "2", "--units", "16", "--embed", "8", "--attention-dim", "8",
         "--batch-size", "4", "--max-length", "4", "--lr", "0.01", "--distribute", "--json"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_env(backend: str, rank: int, ports: list[int]) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if backend == "jax":
        env.update(KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{ports[0]}", KERAS_DISTRIBUTION_NUM_PROCESSES="2",
                   KERAS_DISTRIBUTION_PROCESS_ID=str(rank))
    else:
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                       "task": {"type": "worker", "index": rank}})
    return env


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_two_processes_train_one_model(tmp_path, backend):
    pytest.importorskip(backend)
    ports = [_free_port(), _free_port()]
    procs = [subprocess.Popen([sys.executable, "-m", "captioner.cli", "train", FLICKR, "--out",
                               str(tmp_path / f"host{rank}"), *FLAGS], cwd=ROOT, env=_cluster_env(backend, rank, ports),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    try:
        outputs = [p.communicate(timeout=500) for p in procs]
    finally:
        for p in procs:
            p.kill()
    summaries = []
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    for s in summaries:
        assert s["hosts"] == 2 and s["train_images"] == 1  # each process decoded its own one of the two images
        assert s["loss"][-1] < s["loss"][0], s["loss"]
    assert summaries[0]["loss"] == summaries[1]["loss"]  # one global loss per step
    from captioner.folders import load_model_dir
    a, b = (load_model_dir(tmp_path / f"host{rank}", task="caption").model.get_weights() for rank in (0, 1))
    assert len(a) == len(b) > 10
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
