"""Published language-model figures to print beside ours, and how a corpus is recognised as the one they were
measured on.

The Penn Treebank (Mikolov's 10k-word split) is recognised by content, not by name: a corpus folder is PTB when its
train.txt, valid.txt and test.txt have the MD5s of the canonical ptb.*.txt (what scripts/get_ptb.py writes). A folder
merely called "ptb", or a re-tokenised or truncated copy, is not: the published perplexities would not be comparable.

Example:
    >>> is_ptb("data/ptb")          # after `python scripts/get_ptb.py data/ptb`
    True
    >>> PUBLISHED["ptb"][0]
    {'model': 'KN-5 (Mikolov 2012)', 'test_perplexity': 141.2}
"""

from __future__ import annotations

import hashlib
import os

# MD5s of the canonical files (simple-examples/data/ptb.*.txt, as distributed by Mikolov).
PTB_MD5 = {
    "train": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
    "valid": "aa0affc06ff7c36e977d7cd49e3839bf",
    "test": "8b80168b89c18661a38ef683c0dc3721",
}

# Test perplexities as reported in the papers (PTB protocol: <eos> counted, 10k vocabulary).
PUBLISHED = {
    "ptb": [
        {"model": "KN-5 (Mikolov 2012)", "test_perplexity": 141.2},
        {"model": "LSTM small 2x200 (Zaremba et al. 2014)", "test_perplexity": 114.5},
        {"model": "LSTM medium 2x650 (Zaremba et al. 2014)", "test_perplexity": 82.7},
        {"model": "LSTM large 2x1500 (Zaremba et al. 2014)", "test_perplexity": 78.4},
        {"model": "AWD-LSTM 24M (Merity et al. 2017)", "test_perplexity": 57.3},
        {"model": "AWD-LSTM + neural cache (Merity et al. 2017)", "test_perplexity": 52.8},
    ],
}


def file_md5(path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_ptb(corpus) -> bool:
    """True when `corpus` is a folder whose train/valid/test.txt are byte for byte the canonical PTB files."""
    corpus = os.fspath(corpus)
    if not os.path.isdir(corpus):
        return False
    for split, md5 in PTB_MD5.items():
        path = os.path.join(corpus, f"{split}.txt")
        if not os.path.isfile(path) or file_md5(path) != md5:
            return False
    return True


def published_rows(corpus, which: str = "auto") -> tuple[str | None, list[dict], bool]:
    """(benchmark name or None, its published rows, whether `corpus` is that benchmark) for `lm compare --published
    WHICH`: "auto" (the rows of the benchmark `corpus` is, recognised by MD5), "none", or a benchmark name ("ptb")
    to print its rows regardless."""
    if which == "none":
        return None, [], False
    same = is_ptb(corpus)
    if which == "auto":
        if not same:
            return None, [], False
        which = "ptb"
    return which, [dict(row) for row in PUBLISHED[which]], same
