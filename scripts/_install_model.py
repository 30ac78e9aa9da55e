#!/usr/bin/env python
"""Copies a trained model folder into the package (what scripts/train_bundled_*.sh do last), atomically.

Usage: scripts/_install_model.py SRC DEST [--note TEXT]

Copies config.json, vocab.json, model.weights.h5 (and answers.json / ngram.npz when present) into DEST.tmp, records
--note as config["data"] (so no temporary training path ships), swaps DEST.tmp into place, loads DEST back with
the loader the CLIs use, and prints its size. The old DEST stays until the new one is complete.
"""

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = ("config.json", "vocab.json", "answers.json", "model.weights.h5", "ngram.npz")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src")
    parser.add_argument("dest")
    parser.add_argument("--note", default=None, help='stored as config["data"]')
    a = parser.parse_args(argv)
    tmp = a.dest.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name in FILES:
        if os.path.isfile(os.path.join(a.src, name)):
            shutil.copy2(os.path.join(a.src, name), tmp)
    config_path = os.path.join(tmp, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    if a.note:
        config["data"] = a.note
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2)
    shutil.rmtree(a.dest, ignore_errors=True)
    os.replace(tmp, a.dest)

    if "task" in config:
        from captioner.model import load_model_dir
        loaded = load_model_dir(a.dest)
        what = f"{loaded.task} model"
    else:
        from lm.checkpoint import load_model_dir
        loaded = load_model_dir(a.dest)
        what = f"{loaded.arch} language model"
    size = sum(os.path.getsize(os.path.join(a.dest, n)) for n in os.listdir(a.dest)) / 2 ** 20
    params = loaded.model.count_params() if hasattr(loaded.model, "count_params") else "n/a"
    print(f"installed {what} in {a.dest}: {params} parameters, {len(loaded.vocab)} words, {size:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
