"""Tokenizer and corpus readers. Nothing here needs downloaded data (no nltk.download).

Two corpus formats:
  * PTB style: a folder with train.txt, valid.txt (and optionally test.txt); one tokenized sentence a line.
  * raw text: one file of ordinary prose; split into sentences, tokenized PTB-like, then cut 90/5/5 into splits.
"""

from __future__ import annotations

import os
import re

from lm.errors import UserError

# Words are runs of Unicode letters and digits ("qué", "naïve", "東京"), with inner apostrophes ("don't").
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*|<unk>")
_WORD_OR_PUNCT = re.compile(r"[^\W_]+(?:['’][^\W_]+)*|<unk>|[^\w\s]|_")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")


def tokenize(text: str, lower: bool = True, keep_punct: bool = False) -> list[str]:
    """Splits text into word tokens the way the PTB-style corpora are written: lower case, no punctuation.

    Example:
        >>> tokenize("A small red circle, above the square.")
        ['a', 'small', 'red', 'circle', 'above', 'the', 'square']
        >>> tokenize("¿Qué es esto? これは何ですか")
        ['qué', 'es', 'esto', 'これは何ですか']
    """
    if lower:
        text = text.lower()
    pattern = _WORD_OR_PUNCT if keep_punct else _WORD
    return pattern.findall(text)


def split_sentences(text: str) -> list[str]:
    """Cuts prose at sentence-final punctuation and blank lines (good enough for LM training text)."""
    out = []
    for paragraph in re.split(r"\n\s*\n", text):
        out.extend(s for s in _SENTENCE_END.split(paragraph.replace("\n", " ")) if s.strip())
    return out


def read_lines(path: str | os.PathLike) -> list[list[str]]:
    """Reads a PTB-style file: one already tokenized sentence a line; blank lines are skipped."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.split() for line in f]
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    return [line for line in lines if line]


def read_raw_text(path: str | os.PathLike) -> list[list[str]]:
    """Reads prose: sentence split, then tokenize(); empty sentences are dropped."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    sentences = [tokenize(s) for s in split_sentences(text)]
    return [s for s in sentences if s]


def load_corpus(path: str | os.PathLike) -> dict[str, list[list[str]]]:
    """CORPUS argument of `lm train|compare` -> {"train": [...], "valid": [...], maybe "test": [...]}.

    A folder must hold train.txt and valid.txt (test.txt optional). A file is raw text, split 90/5/5 in order.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        splits = {}
        for name in ("train", "valid", "test"):
            file = os.path.join(path, f"{name}.txt")
            if os.path.isfile(file):
                splits[name] = read_lines(file)
            elif name != "test":
                raise UserError(f"{path}: a corpus folder needs train.txt and valid.txt ({name}.txt is missing)")
    elif os.path.isfile(path):
        sentences = read_raw_text(path)
        if len(sentences) < 3:
            raise UserError(f"{path}: too little text to split into train/valid/test (found {len(sentences)} sentences)")
        n = len(sentences)
        a, b = int(n * 0.9), int(n * 0.95)
        splits = {"train": sentences[:a], "valid": sentences[a:b], "test": sentences[b:]}
    else:
        raise UserError(f"{path}: no such file or folder")
    if not splits["train"]:
        raise UserError(f"{path}: the training text is empty")
    if not splits["valid"]:
        raise UserError(f"{path}: the validation text is empty")
    return splits
