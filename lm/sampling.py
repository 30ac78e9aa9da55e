"""Search and sampling: the one module that picks next tokens, for the LM and the caption decoder alike.

* `sample_next` / `filter_logits_np`: host-side choice of one next token (greedy, temperature, top-k, top-p) for
  interactive generation.
* `filter_logits`, `beam_search`, `greedy_search`, `sample_search` (keras.ops, batched): search over any step
  function, written with `keras.ops` only so it runs on every backend and inside an exported graph.
"""

from __future__ import annotations

import numpy as np


def filter_logits_np(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """One row of logits -> probabilities after temperature, top-k and nucleus (top-p) filtering."""
    logits = np.asarray(logits, dtype="float64")
    if temperature <= 0:
        probs = np.zeros_like(logits)
        probs[int(np.argmax(logits))] = 1.0
        return probs
    logits = logits / temperature
    if top_k and 0 < top_k < logits.size:
        kth = np.partition(logits, -top_k)[-top_k]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs)
        cumulative = np.cumsum(probs[order])
        keep = cumulative - probs[order] < top_p  # the smallest set whose mass reaches top_p
        mask = np.zeros_like(probs, dtype=bool)
        mask[order[keep]] = True
        probs = np.where(mask, probs, 0.0)
        probs /= probs.sum()
    return probs


def sample_next(logits, rng: np.random.Generator, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                banned: tuple[int, ...] = ()) -> int:
    """Picks one token id from a row of logits. temperature 0 means greedy. `banned` ids are never picked."""
    logits = np.array(logits, dtype="float64")
    for b in banned:
        logits[b] = -np.inf
    probs = filter_logits_np(logits, temperature, top_k, top_p)
    if temperature <= 0:
        return int(np.argmax(probs))
    return int(rng.choice(probs.size, p=probs))
