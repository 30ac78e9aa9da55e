"""Vocabulary: the one place that maps words to ids and back.

Specials always come first, in a fixed order, so that `<pad>` is id 0 (Keras masking) in every model:
`<pad>`=0, `<unk>`=1, `<bos>`=2, `<eos>`=3.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Iterable, Sequence

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3  # the ids of SPECIALS, for model code that has no Vocabulary at hand


class Vocabulary:
    """An ordered word list with the four specials at ids 0..3.

    Args:
        tokens: every token in id order. The specials are put first if missing.

    Example:
        >>> vocab = Vocabulary.build([["a", "cat"], ["a", "dog"]], min_count=1)
        >>> vocab.encode(["a", "bird"], add_eos=True)
        [4, 1, 3]
    """

    def __init__(self, tokens: Sequence[str]):
        rest = [t for t in tokens if t not in SPECIALS]
        self.itos: list[str] = list(SPECIALS) + rest
        if len(set(self.itos)) != len(self.itos):
            raise ValueError("vocabulary has duplicate tokens")
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], min_count: int = 1, max_size: int | None = None) -> "Vocabulary":
        """Counts words and keeps those seen at least `min_count` times, most frequent first.

        `max_size` counts the specials too. Ties are broken alphabetically so builds are reproducible.
        A literal `<unk>` in the corpus (PTB style) is treated as the unknown word, not as a new word.
        """
        counts = collections.Counter(t for s in sentences for t in s if t not in SPECIALS)
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max(0, max_size - len(SPECIALS))]
        return cls(words)

    # ---- lookups --------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    pad_id = property(lambda self: 0)
    unk_id = property(lambda self: 1)
    bos_id = property(lambda self: 2)
    eos_id = property(lambda self: 3)

    def token_to_id(self, token: str) -> int:
        return self.stoi.get(token, 1)

    def id_to_token(self, index: int) -> str:
        return self.itos[index] if 0 <= index < len(self.itos) else UNK

    def encode(self, tokens: Sequence[str], add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = [self.stoi.get(t, 1) for t in tokens]
        return ([2] if add_bos else []) + ids + ([3] if add_eos else [])

    def decode(self, ids: Iterable[int], stop_at_eos: bool = True, strip_specials: bool = True) -> list[str]:
        """Ids -> tokens. Stops at the first `<eos>`; drops `<pad>`/`<bos>` (keeps `<unk>`, a real word)."""
        out = []
        for i in ids:
            i = int(i)
            if i == 3 and stop_at_eos:
                break
            if strip_specials and i in (0, 2, 3):
                continue
            out.append(self.id_to_token(i))
        return out

    def decode_text(self, ids: Iterable[int]) -> str:
        return " ".join(self.decode(ids))

    # ---- persistence ----------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"tokens": self.itos}

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f, ensure_ascii=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocabulary":
        """Reads a file written by `save` (or a bare JSON list of tokens). Any malformed content is a ValueError
        (json.JSONDecodeError and UnicodeDecodeError are ValueErrors too)."""
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        tokens = data.get("tokens") if isinstance(data, dict) else data
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ValueError(f"{path}: not a vocabulary file (expected {{\"tokens\": [strings]}})")
        if tokens[: len(SPECIALS)] != list(SPECIALS):
            raise ValueError(f"{path}: not a vocabulary file (specials missing)")
        return cls(tokens)
