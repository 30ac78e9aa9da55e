"""Interpolated modified Kneser-Ney n-gram language model (orders 2..5), in numpy.

This is the count-based baseline that the recurrent models are compared with. It follows Chen & Goodman (1998),
"An empirical study of smoothing techniques for language modeling", section 3.4 / equation (26), and reproduces
what KenLM's `lmplz` (its default settings) builds:

* Every sentence is scored from its start: the context begins with `<bos>` and every word *and* the final `<eos>`
  are predicted. `<bos>` is a context-only token: it is never predicted and gets no probability of its own.
* Highest order: raw counts. Lower orders: *continuation* counts N1+(. w_i..w_j), the number of distinct words
  seen to the left, except for n-grams that begin with `<bos>` (nothing can precede `<bos>`, so they keep their
  raw counts, as in KenLM and SRILM).
* Three discounts per order, D1, D2, D3+, from the count-of-counts n1..n4 of that order's (adjusted) counts:
  Y = n1 / (n1 + 2 n2),  D_c = c - (c + 1) Y n_{c+1} / n_c  for c = 1, 2, 3.
* Interpolation all the way down: p_k(w|h) = (c(hw) - D(c(hw))) / c(h.) + gamma(h) p_{k-1}(w|h'),
  gamma(h) = (D1 N1(h.) + D2 N2(h.) + D3 N3+(h.)) / c(h.); the unigram level is interpolated with a uniform
  distribution over every word that can be predicted (the vocabulary minus `<pad>` and `<bos>`).
* No pruning of rare n-grams. `<unk>` is an ordinary word (PTB-style corpora contain it literally); words that are
  not in the vocabulary map to it. (Stock lmplz refuses a literal `<unk>` in its input; treating it as a word is
  what makes the numbers match on PTB-style text: KN-5 on the KJV split gives 130.52, the reference is 130.5,
  whereas SRILM-style pruning of singleton 3+-grams gives 134.3.)

How it is fast: n-grams are never stored as tuples. An order-k n-gram is the integer key
`index_of_its_(k-1)-gram_prefix * V + last_word`, so each order is one sorted int64 array (a trie laid flat);
counting is `np.unique`, and scoring looks up every position of a corpus at once with `np.searchsorted`.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np

from lm.errors import UserError
from lm.vocab import Vocabulary

MIN_ORDER, MAX_ORDER = 2, 5
MODEL_FILE = "ngram.npz"
# KenLM's --discount_fallback values, used when a tiny corpus lacks some count-of-counts (n1..n4 = 0) and the
# Chen & Goodman estimate is undefined or out of range.
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)


def estimate_discounts(adjusted_counts: np.ndarray) -> tuple[np.ndarray, bool]:
    """Modified Kneser-Ney discounts (D1, D2, D3+) from the count-of-counts of one order.

    Args:
        adjusted_counts: the (adjusted) count of every n-gram type of one order; zeros are ignored.

    Returns:
        (discounts as a length-3 float array, whether the fallback values had to be used).

    Example:
        >>> d, fell_back = estimate_discounts(np.array([1, 1, 1, 1, 2, 2, 3, 4]))   # n1..n4 = 4, 2, 1, 1
        >>> np.round(d, 4).tolist(), fell_back
        ([0.5, 1.25, 1.0], False)
    """
    n = np.bincount(np.minimum(adjusted_counts, 5), minlength=6)[1:5].astype(np.float64)  # n1, n2, n3, n4
    if np.any(n == 0):
        return np.array(FALLBACK_DISCOUNTS), True
    y = n[0] / (n[0] + 2.0 * n[1])
    c = np.arange(1, 4, dtype=np.float64)
    d = c - (c + 1.0) * y * n[1:4] / n[0:3]  # Chen & Goodman eq. (26)
    if np.any(d < 0) or np.any(d > c):
        return np.array(FALLBACK_DISCOUNTS), True
    return d, False


def _lookup(sorted_keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Index of each query in `sorted_keys`, or -1 where absent (queries < 0 mean 'no n-gram' and stay -1)."""
    idx = np.searchsorted(sorted_keys, queries)
    idx_clipped = np.minimum(idx, len(sorted_keys) - 1)
    found = (queries >= 0) & (idx < len(sorted_keys)) & (sorted_keys[idx_clipped] == queries)
    return np.where(found, idx_clipped, -1)


class KneserNeyLM:
    """Interpolated modified Kneser-Ney language model.

    Args:
        order: n-gram order, 2..5 (5 is the usual baseline).
        vocab: a closed vocabulary; tokens outside it score as `<unk>`. If None, `fit` builds one from the
            training sentences (every word, min count 1).

    Example:
        >>> lm = KneserNeyLM(order=3).fit([["the", "cat", "sat"], ["the", "dog", "sat"]])
        >>> logp, n = lm.logprob_sentence(["the", "cat", "sat"])   # n = 4: three words and <eos>
        >>> ppl, tokens = lm.perplexity([["the", "dog", "sat"]])
        >>> probs = lm.next_distribution(["the"])                  # over vocab ids; sums to 1
    """

    def __init__(self, order: int = 5, vocab: Vocabulary | None = None):
        if not isinstance(order, (int, np.integer)) or isinstance(order, bool) or not MIN_ORDER <= order <= MAX_ORDER:
            raise ValueError(f"n-gram order must be an integer from {MIN_ORDER} to {MAX_ORDER}, got {order!r}")
        self.order = int(order)
        self.vocab = vocab
        # Filled by fit()/load(); index k holds order k (0 and 1 unused where not meaningful).
        self.keys: list[np.ndarray | None] = []  # sorted int64 keys of the k-grams (k >= 2)
        self.counts: list[np.ndarray | None] = []  # adjusted count of each k-gram (k >= 1; order 1 is by word id)
        self.discounts: np.ndarray | None = None  # (order + 1, 3): D1, D2, D3+ of each order
        self.fit_seconds = 0.0

    # ---- training -------------------------------------------------------------------------------------------
    def fit(self, sentences: Sequence[Sequence[str]]) -> "KneserNeyLM":
        """Counts n-grams, computes adjusted counts and discounts, and prepares the probability tables.

        Args:
            sentences: token lists without specials (one sentence per list).

        Returns:
            self, so that `KneserNeyLM(5).fit(train)` reads well.
        """
        start = time.perf_counter()
        # Empty sentences are kept: like KenLM, an empty line still contributes "<bos> <eos>".
        sentences = [list(s) for s in sentences]
        if not any(sentences):
            raise UserError("cannot fit an n-gram model on empty text: give it at least one non-empty sentence")
        if self.vocab is None:
            self.vocab = Vocabulary.build(sentences, min_count=1)
        words, offsets = self._encode(sentences)
        V, N = len(self.vocab), self.order

        # grams[k][i] = index of the k-gram that ends at position i (-1 if it would reach before the sentence start).
        # Order 1 needs no table: a unigram's index is its word id.
        grams: list[np.ndarray | None] = [None, words]
        keys: list[np.ndarray | None] = [None, None]
        raw: list[np.ndarray | None] = [None, None]
        first: list[np.ndarray | None] = [None, None]  # position of one occurrence of each k-gram type
        for k in range(2, N + 1):
            prev = np.empty_like(words)
            prev[0], prev[1:] = -1, grams[k - 1][:-1]
            valid = np.flatnonzero(offsets >= k - 1)  # the k-gram fits inside the sentence (may start with <bos>)
            uniq, first_idx, inverse, cnt = np.unique(
                prev[valid] * V + words[valid], return_index=True, return_inverse=True, return_counts=True
            )
            g = np.full_like(words, -1)
            g[valid] = inverse.reshape(-1)
            grams.append(g)
            keys.append(uniq)
            raw.append(cnt.astype(np.int64))
            first.append(valid[first_idx])

        # Adjusted counts (Chen & Goodman's N1+(. w)): the highest order keeps raw counts; a lower-order k-gram
        # counts the distinct (k+1)-gram types that end with it, i.e. how many different words preceded it.
        # k-grams that begin with <bos> cannot be extended to the left, so they keep their raw counts.
        counts: list[np.ndarray | None] = [None] * (N + 1)
        counts[N] = raw[N]
        for k in range(N - 1, 0, -1):
            n_types = V if k == 1 else len(keys[k])
            suffix = grams[k][first[k + 1]]  # the k-gram that each (k+1)-gram type ends with
            continuation = np.bincount(suffix, minlength=n_types).astype(np.int64)
            if k == 1:
                counts[k] = continuation  # <bos> is never preceded by anything: count 0, never predicted
            else:
                starts_with_bos = offsets[first[k]] == k - 1
                counts[k] = np.where(starts_with_bos, raw[k], continuation)

        self.keys, self.counts = keys, counts
        self.discounts = np.zeros((N + 1, 3))
        for k in range(1, N + 1):
            self.discounts[k], _ = estimate_discounts(counts[k])
        self._prepare()
        self.fit_seconds = time.perf_counter() - start
        return self

    def _encode(self, sentences: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Sentences -> one stream `<bos> w1 .. wn <eos> <bos> ...` of ids, and each position's offset in its
        sentence (0 at `<bos>`). n-grams never cross sentence boundaries: they are cut by the offsets."""
        stoi, unk, bos, eos = self.vocab.stoi, self.vocab.unk_id, self.vocab.bos_id, self.vocab.eos_id
        ids: list[int] = []
        lengths = np.empty(len(sentences), dtype=np.int64)
        for j, s in enumerate(sentences):
            ids.append(bos)
            ids.extend([stoi.get(t, unk) for t in s])
            ids.append(eos)
            lengths[j] = len(s) + 2
        words = np.asarray(ids, dtype=np.int64)
        starts = np.cumsum(lengths) - lengths
        offsets = np.arange(len(words), dtype=np.int64) - np.repeat(starts, lengths)
        return words, offsets

    def _prepare(self) -> None:
        """Adjusted counts + discounts -> the arrays that scoring uses (also run by `load`).

        prob_uni[w]   interpolated unigram probability (with the uniform floor)
        dprob[k][j]   discounted share of k-gram j: (c - D(c)) / c(context .)
        gamma[k][h]   interpolation weight of context h (a (k-1)-gram index) at order k; has_ctx[k][h] whether
                      h was seen as a context at all (if not, order k is skipped and the lower order is used).
        """
        V, N = len(self.vocab), self.order
        disc = np.zeros((N + 1, 4))
        disc[:, 1:] = self.discounts  # disc[k][min(c, 3)] is the discount of count c (0 for c = 0)

        # Unigrams, interpolated with a uniform distribution over the predictable words.
        c1 = self.counts[1].astype(np.float64)
        total = c1.sum()
        d1 = disc[1][np.minimum(self.counts[1], 3)]
        n123 = np.bincount(np.minimum(self.counts[1], 3), minlength=4)[1:]
        gamma0 = float(disc[1][1:] @ n123) / total
        predictable = np.ones(V, dtype=bool)
        predictable[[self.vocab.pad_id, self.vocab.bos_id]] = False
        self.prob_uni = np.where(predictable, (c1 - d1) / total + gamma0 / predictable.sum(), 0.0)

        self.dprob: list[np.ndarray | None] = [None, None]
        self.gamma: list[np.ndarray | None] = [None, None]
        self.has_ctx: list[np.ndarray | None] = [None, None]
        for k in range(2, N + 1):
            n_ctx = V if k == 2 else len(self.keys[k - 1])
            ctx = self.keys[k] // V  # index of each k-gram's (k-1)-gram prefix
            c = self.counts[k]
            c3 = np.minimum(c, 3)
            denom = np.bincount(ctx, weights=c, minlength=n_ctx)
            n_by_count = [np.bincount(ctx, weights=(c3 == j), minlength=n_ctx) for j in (1, 2, 3)]
            mass = sum(disc[k][j] * n_by_count[j - 1] for j in (1, 2, 3))
            has = denom > 0
            safe = np.where(has, denom, 1.0)
            self.gamma.append(np.where(has, mass / safe, 0.0))
            self.has_ctx.append(has)
            self.dprob.append((c - disc[k][c3]) / safe[ctx])

    # ---- scoring --------------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if self.discounts is None:
            raise RuntimeError("KneserNeyLM is not fitted: call fit(sentences) or KneserNeyLM.load(directory) first")

    def token_logprobs(self, sentences: Sequence[Sequence[str]]) -> np.ndarray:
        """Natural-log probability of every predicted token (each word, then `<eos>`), all sentences at once.

        Args:
            sentences: token lists without specials; unknown words score as `<unk>`.

        Returns:
            float64 array of length sum(len(s) + 1), in reading order.
        """
        self._check_fitted()
        if len(sentences) == 0:
            return np.zeros(0)
        words, offsets = self._encode(sentences)
        V = len(self.vocab)

        def shifted(a: np.ndarray) -> np.ndarray:  # a[i-1] at position i (the context ends one token earlier)
            out = np.empty_like(a)
            out[0], out[1:] = -1, a[:-1]
            return out

        target = offsets >= 1  # every position except <bos> is predicted
        p = self.prob_uni[words]
        prev = words  # index of the (k-1)-gram ending at each position
        for k in range(2, self.order + 1):
            ctx = np.where(offsets >= k - 1, shifted(prev), -1)  # the context of order k ends at i-1
            cur = _lookup(self.keys[k], np.where(ctx >= 0, ctx * V + words, -1))
            safe_ctx = np.maximum(ctx, 0)
            use = (ctx >= 0) & self.has_ctx[k][safe_ctx]
            seen = np.where(cur >= 0, self.dprob[k][np.maximum(cur, 0)], 0.0)
            p = np.where(use, seen + self.gamma[k][safe_ctx] * p, p)
            prev = cur
        return np.log(p[target])

    def logprob_sentence(self, tokens: Sequence[str]) -> tuple[float, int]:
        """Natural-log probability of `tokens` followed by `<eos>`, from a `<bos>` context.

        Returns:
            (sum of log probabilities, number of predicted tokens = len(tokens) + 1).

        Example:
            >>> logp, n = lm.logprob_sentence(["the", "cat"])   # n == 3
        """
        lp = self.token_logprobs([list(tokens)])
        return float(lp.sum()), len(lp)

    def perplexity(self, sentences: Sequence[Sequence[str]]) -> tuple[float, int]:
        """Per-token perplexity over sentences, each scored from its start, `<eos>` included.

        Returns:
            (perplexity, number of predicted tokens). Empty sentences still predict their `<eos>`.
        """
        lp = self.token_logprobs([list(s) for s in sentences])
        if len(lp) == 0:
            raise UserError("cannot compute perplexity of no sentences")
        return float(np.exp(-lp.mean())), len(lp)

    def next_distribution(self, context: Sequence[str]) -> np.ndarray:
        """Probability of every vocabulary id as the next token after `context`, for sampling.

        Args:
            context: the sentence so far, without specials (`<bos>` is prepended; a leading "<bos>" is accepted).
                Only the last order-1 tokens matter.

        Returns:
            float64 array of length len(vocab) summing to 1; `<pad>` and `<bos>` get 0, `<eos>` and `<unk>` are
            ordinary outcomes.

        Example:
            >>> probs = lm.next_distribution(["in", "the"])
            >>> next_id = np.random.default_rng(0).choice(len(probs), p=probs)
        """
        self._check_fitted()
        V = len(self.vocab)
        ids = [self.vocab.token_to_id(t) for t in context]
        if not ids or ids[0] != self.vocab.bos_id:
            ids = [self.vocab.bos_id] + ids
        p = self.prob_uni.copy()
        for k in range(2, self.order + 1):
            if k - 1 > len(ids):
                break  # the sentence is shorter than this order's context (it starts at <bos>)
            ctx = self._gram_index(ids[-(k - 1):])  # the last k-1 tokens
            if ctx < 0 or not self.has_ctx[k][ctx]:
                break  # an unseen context of order k means every longer one is unseen too
            # Keys are prefix * V + word, so the followers of `ctx` are one contiguous run of the sorted keys.
            lo, hi = np.searchsorted(self.keys[k], [ctx * V, (ctx + 1) * V])
            followers = self.keys[k][lo:hi] - ctx * V
            p *= self.gamma[k][ctx]
            p[followers] += self.dprob[k][lo:hi]
        return p

    def _gram_index(self, ids: Sequence[int]) -> int:
        """Index of the n-gram `ids` in its order's table (a word id for unigrams), or -1 if never seen."""
        V = len(self.vocab)
        index = ids[0]
        for k in range(2, len(ids) + 1):
            key = index * V + ids[k - 1]
            j = int(np.searchsorted(self.keys[k], key))
            if j >= len(self.keys[k]) or self.keys[k][j] != key:
                return -1
            index = j
        return index

    # ---- persistence ----------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> str:
        """Writes `ngram.npz` (keys, adjusted counts, discounts, vocabulary) into `directory`.

        Only counts are stored; probabilities are recomputed on load (deterministically, so scores are identical).
        Returns the file path.
        """
        self._check_fitted()
        os.makedirs(directory, exist_ok=True)
        arrays = {
            "order": np.array(self.order),
            "vocab": np.array(self.vocab.itos, dtype=str),
            "discounts": self.discounts,
            "counts_1": self.counts[1].astype(np.int32),
        }
        for k in range(2, self.order + 1):
            arrays[f"keys_{k}"] = self.keys[k]
            arrays[f"counts_{k}"] = self.counts[k].astype(np.int32)
        path = os.path.join(directory, MODEL_FILE)
        np.savez_compressed(path, **arrays)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "KneserNeyLM":
        """Reads a model written by `save`.

        Example:
            >>> lm.save("runs/kn5"); same = KneserNeyLM.load("runs/kn5")
        """
        path = os.path.join(directory, MODEL_FILE)
        if not os.path.isfile(path):
            raise UserError(f"{directory}: not an n-gram model folder ({MODEL_FILE} is missing)")
        with np.load(path, allow_pickle=False) as data:
            model = cls(int(data["order"]), Vocabulary([str(t) for t in data["vocab"]]))
            model.discounts = data["discounts"]
            model.keys = [None, None] + [data[f"keys_{k}"] for k in range(2, model.order + 1)]
            model.counts = [None] + [data[f"counts_{k}"].astype(np.int64) for k in range(1, model.order + 1)]
        model._prepare()
        return model
