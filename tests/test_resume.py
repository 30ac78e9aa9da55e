"""Model folders survive kills: `--resume` after a real SIGKILL (captions and `lm`), atomic folder writes, and
`--out` refusing to replace a model unless told to. The killed runs are real child processes of the CLIs."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from lm import cli as lm_cli
from lm.checkpoint import PENDING, RESUME_DIR, load_model_dir, settle_model_folder, write_model_folder
from lm.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _corpus(folder, seed=0):
    """A small corpus of generated sentences (train.txt, valid.txt)."""
    r = random.Random(seed)
    subj, verb, obj = (s.split("|") for s in ("the cat|a dog|my friend|the old man|a bird|the child",
                                              "sees|likes|eats|finds|wants|chases",
                                              "the ball|a fish|the red apple|some bread|the mouse|a small box"))
    os.makedirs(folder, exist_ok=True)
    for name, n in (("train", 500), ("valid", 60)):
        with open(os.path.join(folder, f"{name}.txt"), "w") as f:
            f.writelines(f"{r.choice(subj)} {r.choice(verb)} {r.choice(obj)} .\n" for _ in range(n))
    return str(folder)


def _kill_in_third_epoch(cmd, out_dir):
    """Runs `cmd`, SIGKILLs it as soon as it prints `Epoch 3/4`; returns the output it printed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV, cwd=ROOT)
    printed = []
    for line in proc.stdout:
        printed.append(line)
        if line.startswith("Epoch 3/4"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, "".join(printed)
    with open(os.path.join(out_dir, RESUME_DIR, "state.json")) as f:
        assert json.load(f)["epochs_done"] == 2  # killed during the third epoch, after the second was saved
    return "".join(printed)


def _resume(cmd):
    proc = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    epochs = re.findall(r"^Epoch (\d)/4$", proc.stdout, re.M)
    assert epochs == ["3", "4"], proc.stdout  # starts at the third epoch, not the first
    return proc.stdout


def test_lm_train_resumes_after_sigkill(tmp_path):
    from lm.inference import perplexity
    from lm.text import load_corpus
    from lm.training import train_language_model
    corpus = _corpus(tmp_path / "corpus")
    flags = ["--units", "16", "--batch-size", "4", "--bptt", "5", "--epochs", "4", "--lr", "0.01"]
    reference = train_language_model(load_corpus(corpus), str(tmp_path / "whole"), units=16, batch_size=4, bptt=5,
                                     epochs=4, lr=0.01, verbose=0)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "lm.cli", "train", corpus, "--out", str(out), *flags]
    _kill_in_third_epoch(cmd, out)
    assert load_model_dir(out).arch == "lstm"  # what the kill left is a complete, loadable folder
    _resume(cmd)
    assert not os.path.exists(out / RESUME_DIR)  # a finished run leaves a plain inference folder
    resumed, _ = perplexity(load_model_dir(out), load_corpus(corpus)["valid"])
    assert resumed == pytest.approx(reference["valid_perplexity"], rel=0.02)


def test_captioner_train_resumes_after_sigkill(tmp_path):
    from captioner.scenes import generate_scenes
    from captioner.training import train_captioner
    data = generate_scenes(tmp_path / "scenes", 40, seed=0, image_size=64)["dataset"]
    args = dict(image_size=32, embed=8, units=16, attention_dim=8, batch_size=2, epochs=4, max_length=6)
    reference = train_captioner(data, str(tmp_path / "whole"), verbose=0, **args)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "captioner.cli", "train", data, "--out", str(out)]
    for key, value in args.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    _kill_in_third_epoch(cmd, out)
    stdout = _resume(cmd)
    final = float(re.findall(r"^epoch 4: val loss ([0-9.]+)", stdout, re.M)[0])
    assert final == pytest.approx(reference["val_loss"][-1], rel=0.02)
    from captioner.folders import load_model_dir as load_captioner
    assert load_captioner(out, task="caption").model.backbone_name == "small_cnn"


# ---- --out, --resume, --overwrite (an n-gram model: no training loop needed) ------------------------------------
def _lm_main(argv, capsys):
    rc = lm_cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_out_refuses_an_existing_model_without_resume_or_overwrite(tmp_path, capsys):
    corpus = _corpus(tmp_path / "corpus")
    out = tmp_path / "model"
    assert _lm_main(["train", corpus, "--out", out, "--arch", "ngram", "--order", "2"], capsys)[0] == 0
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    for extra, message in (([], "already holds a model; pass --overwrite"),
                           (["--resume"], "nothing to resume"),
                           (["--resume", "--overwrite"], "give one of them")):
        rc, _, err = _lm_main(["train", corpus, "--out", out, "--arch", "ngram", "--order", "3", *extra], capsys)
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before  # nothing lost
    assert _lm_main(["train", corpus, "--out", out, "--arch", "ngram", "--order", "3", "--overwrite"], capsys)[0] == 0
    assert load_model_dir(out).model.order == 3


# ---- atomic folder writes ----------------------------------------------------------------------------------------
def _text_writer(text):
    def write(path):
        with open(path, "w") as f:
            f.write(text)
    return write


def _read(folder):
    return {name: (folder / name).read_text() for name in sorted(os.listdir(folder))}


def test_a_write_that_dies_before_its_commit_leaves_the_old_folder(tmp_path):
    folder = tmp_path / "m"
    write_model_folder(folder, {"a.json": _text_writer("old a"), "b.json": _text_writer("old b")})

    def dies(path):
        raise KeyboardInterrupt  # the process is stopped while the second file is being written
    with pytest.raises(KeyboardInterrupt):
        write_model_folder(folder, {"a.json": _text_writer("new a"), "b.json": dies})
    settle_model_folder(folder)
    assert _read(folder) == {"a.json": "old a", "b.json": "old b"}  # the staged "new a" never shows


def test_a_write_that_dies_after_its_commit_is_rolled_forward(tmp_path):
    folder = tmp_path / "m"
    write_model_folder(folder, {"a.json": _text_writer("old a"), "b.json": _text_writer("old b")})
    # The state a kill leaves between the commit record and the renames: staged files and the record.
    (folder / ".tmp-a.json").write_text("new a")
    (folder / ".tmp-b.json").write_text("new b")
    (folder / PENDING).write_text(json.dumps({"replace": ["a.json", "b.json"], "remove": []}))
    os.replace(folder / ".tmp-a.json", folder / "a.json")  # killed after the first rename
    settle_model_folder(folder)
    assert _read(folder) == {"a.json": "new a", "b.json": "new b"}


_SAVER = r"""
import sys, numpy as np
from lm.checkpoint import build_model, save_model_dir
from lm.vocab import Vocabulary
vocab = Vocabulary(["<pad>", "<unk>", "<bos>", "<eos>", "a", "b"])
models = [build_model("lstm", {"vocab_size": 6, "units": u, "embed_dim": 4}) for u in (4, 8)]
for i, model in enumerate(models):
    model.set_weights([np.full(w.shape, i + 1, "float32") for w in model.get_weights()])
save_model_dir(sys.argv[1], "lstm", models[0], vocab, {"saved": 0})
print("ready", flush=True)  # one complete save is there
i = 1
while True:  # two different models (other sizes, other values) saved in turn into one folder, until killed
    save_model_dir(sys.argv[1], "lstm", models[i % 2], vocab, {"saved": i})
    i += 1
"""


def test_sigkill_during_saves_leaves_a_loadable_folder(tmp_path):
    """A real SIGKILL at an arbitrary moment of a stream of saves: the folder loads, and is one save, not a mix."""
    import time
    folder = tmp_path / "m"
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(folder)], stdout=subprocess.PIPE, text=True, env=ENV,
                            cwd=ROOT)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(random.uniform(0.5, 1.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    loaded = load_model_dir(folder)
    units = loaded.model.get_config()["units"]
    assert units == (4 if loaded.config["saved"] % 2 == 0 else 8)  # config.json and the weights of one save
    values = {float(np.unique(w)[0]) for w in loaded.model.get_weights()}
    assert values == {1.0 if units == 4 else 2.0}


def test_resume_with_other_flags_is_one_line(tmp_path):
    from lm.checkpoint import TrainingState
    from lm.checkpoint import build_model as build
    import keras
    model = build("lstm", {"vocab_size": 6, "units": 4, "embed_dim": 4})
    model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    write_model_folder(tmp_path, TrainingState.files(model, model.optimizer, {"epochs_done": 1}))
    other = build("lstm", {"vocab_size": 6, "units": 8, "embed_dim": 4})
    other.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    with pytest.raises(UserError, match="another model"):
        TrainingState.restore(tmp_path, other, other.optimizer)
    same = build("lstm", {"vocab_size": 6, "units": 4, "embed_dim": 4})
    same.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    assert TrainingState.restore(tmp_path, same, same.optimizer) == {"epochs_done": 1}
    for a, b in zip(model.get_weights(), same.get_weights()):
        np.testing.assert_array_equal(a, b)

