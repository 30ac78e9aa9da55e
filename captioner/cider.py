"""A vectorised CIDEr-D (Vedantam et al., 2015) for rewards and validation: many candidates scored at once.

The numbers are pycocoevalcap's `Cider` (which is CIDEr-D: clipped tf-idf n-gram counts, a Gaussian length penalty
with sigma 6, the mean over n = 1..4, times 10), checked against it to 1e-6 in tests/test_scst.py. What differs is
the speed and where the document frequencies come from:

* pycocoevalcap computes document frequencies over the references of the images it scores, in pure Python per
  pair. Here they come from a fixed reference corpus given once (for SCST: the training split, as in
  ruotianluo/ImageCaptioning.pytorch's CiderD), and every candidate-reference pair of a batch is scored with a few
  sparse-matrix operations (scipy.sparse): elementwise min, product, per-order sums.
* Tokens are any hashable items: words, or token ids (SCST scores id sequences with `<eos>` appended, so ending the
  caption at the right place earns n-grams too).

With the corpus equal to the scored images' references and one candidate per image, `CiderD(refs).score(cands,
range(len(refs)))` equals pycocoevalcap's per-image scores, and its mean equals the corpus CIDEr.

Example:
    >>> scorer = CiderD([[["a", "red", "circle"]], [["a", "blue", "square"]]])
    >>> scorer.score([["a", "red", "circle"], ["a", "square"]], [0, 1]).round(3)
    array([..., ...])
"""

from __future__ import annotations

from collections import Counter
from typing import Hashable, Sequence

import numpy as np
from scipy import sparse

Tokens = Sequence[Hashable]


def ngram_counts(tokens: Tokens, n: int = 4) -> Counter:
    """All k-grams (k = 1..n) of a token sequence with their counts, keyed by tuples."""
    tokens = tuple(tokens)
    return Counter(tokens[i: i + k] for k in range(1, n + 1) for i in range(len(tokens) - k + 1))


class CiderD:
    """CIDEr-D with document frequencies from a fixed corpus of reference sets.

    Args:
        corpus: one list of reference token sequences per image; the document frequency of an n-gram is the number
            of images with the n-gram in any of their references, and log(len(corpus)) is the idf's numerator.
        n: longest n-gram (4).
        sigma: width of the Gaussian length penalty (6).
    """

    def __init__(self, corpus: Sequence[Sequence[Tokens]], n: int = 4, sigma: float = 6.0):
        if not corpus:
            raise ValueError("CIDEr-D needs a non-empty reference corpus")
        self.n, self.sigma = int(n), float(sigma)
        self.columns: dict[tuple, int] = {}  # n-gram -> column
        df: list[float] = []
        ref_counts = []  # per image: list of Counters
        for refs in corpus:
            counts = [ngram_counts(r, self.n) for r in refs]
            ref_counts.append(counts)
            for gram in set(g for c in counts for g in c):
                column = self.columns.setdefault(gram, len(df))
                if column == len(df):
                    df.append(0.0)
                df[column] += 1.0
        self.df = np.asarray(df, "float64")
        self.log_corpus = float(np.log(len(corpus)))
        self.order = np.asarray([len(g) - 1 for g in self.columns], "int64")  # column -> n - 1
        # References of the corpus, vectorised once: (refs, D) tf-idf, norms (refs, n), lengths (refs,)
        self.ref_image = np.asarray([i for i, counts in enumerate(ref_counts) for _ in counts], "int64")
        self.ref_start = np.concatenate([[0], np.cumsum([len(c) for c in ref_counts])]).astype("int64")
        self.refs = self._vectorise([c for counts in ref_counts for c in counts])

    # ---- vectors -------------------------------------------------------------------------------------------------
    def _column(self, gram) -> int:
        """Column of an n-gram; an n-gram the corpus never saw gets a new column with document frequency 0."""
        column = self.columns.get(gram)
        if column is None:
            column = self.columns[gram] = len(self.columns)
            self.order = np.append(self.order, len(gram) - 1)
        return column

    def _vectorise(self, counts: Sequence[Counter]):
        """n-gram counts -> (csr (rows, D) tf-idf, norms (rows, n), lengths (rows,) = bigram counts, as
        pycocoevalcap's `counts2vec` counts "length")."""
        rows, cols, tfs = [], [], []
        for r, c in enumerate(counts):
            for gram, tf in c.items():
                rows.append(r)
                cols.append(self._column(gram))
                tfs.append(tf)
        rows, cols = np.asarray(rows, "int64"), np.asarray(cols, "int64")
        tfs = np.asarray(tfs, "float64")
        width = len(self.columns)
        df = np.zeros(width)
        df[: len(self.df)] = self.df  # new columns: df 0
        values = tfs * (self.log_corpus - np.log(np.maximum(df[cols], 1.0)))  # tf * idf
        order = self.order[cols] if len(cols) else cols
        norms = np.zeros((len(counts), self.n))
        np.add.at(norms, (rows, order), values ** 2)
        lengths = np.zeros(len(counts))
        np.add.at(lengths, rows[order == 1], tfs[order == 1])
        matrix = sparse.csr_matrix((values, (rows, cols)), shape=(len(counts), width))
        return matrix, np.sqrt(norms), lengths

    # ---- scores --------------------------------------------------------------------------------------------------
    def score(self, candidates: Sequence[Tokens], images: Sequence[int]) -> np.ndarray:
        """CIDEr-D of each candidate against the corpus references of `images[i]` -> (len(candidates),) float64."""
        images = np.asarray(images, "int64")
        cand, cand_norm, cand_len = self._vectorise([ngram_counts(c, self.n) for c in candidates])
        counts = self.ref_start[images + 1] - self.ref_start[images]  # references per candidate
        pair_cand = np.repeat(np.arange(len(candidates)), counts)  # (pairs,)
        pair_ref = np.concatenate([np.arange(self.ref_start[i], self.ref_start[i + 1]) for i in images]) \
            if len(images) else np.zeros(0, "int64")
        return self._pairs(cand, cand_norm, cand_len, self.refs, pair_cand, pair_ref, counts)

    def score_against(self, candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> np.ndarray:
        """CIDEr-D of each candidate against its own reference list (idf still from the corpus)."""
        cand, cand_norm, cand_len = self._vectorise([ngram_counts(c, self.n) for c in candidates])
        refs = self._vectorise([ngram_counts(r, self.n) for rs in references for r in rs])
        counts = np.asarray([len(rs) for rs in references], "int64")
        pair_cand = np.repeat(np.arange(len(candidates)), counts)
        return self._pairs(cand, cand_norm, cand_len, refs, pair_cand, np.arange(int(counts.sum())), counts)

    def _pairs(self, cand, cand_norm, cand_len, refs, pair_cand, pair_ref, counts) -> np.ndarray:
        ref_matrix, ref_norm, ref_len = refs
        width = len(self.columns)
        cand = _widen(cand, width)
        ref_matrix = _widen(ref_matrix, width)
        h, r = cand[pair_cand], ref_matrix[pair_ref]  # (pairs, D) each
        clipped = h.minimum(r).multiply(r).tocsr()  # min(h, r) * r per n-gram: CIDEr-D's clipping
        by_order = sparse.csr_matrix((np.ones(width), (np.arange(width), self.order)), shape=(width, self.n))
        dots = np.asarray((clipped @ by_order).todense())  # (pairs, n)
        denominator = cand_norm[pair_cand] * ref_norm[pair_ref]  # (pairs, n)
        sims = np.where(denominator > 0, dots / np.where(denominator > 0, denominator, 1.0), dots)
        delta = cand_len[pair_cand] - ref_len[pair_ref]
        sims = sims * np.exp(-(delta ** 2) / (2 * self.sigma ** 2))[:, None]
        per_pair = sims.mean(axis=1)  # (pairs,)
        totals = np.bincount(pair_cand, weights=per_pair, minlength=len(counts))
        return 10.0 * totals / np.maximum(counts, 1)


def _widen(matrix, width: int):
    """A csr matrix padded with empty columns to `width` (columns added after it was built)."""
    if matrix.shape[1] == width:
        return matrix
    return sparse.csr_matrix((matrix.data, matrix.indices, matrix.indptr), shape=(matrix.shape[0], width))


def corpus_cider(references: Sequence[Sequence[Tokens]], candidates: Sequence[Tokens]) -> float:
    """Mean CIDEr-D of one candidate per image with document frequencies from these images' references (what
    pycocoevalcap's Cider().compute_score returns for already tokenized text)."""
    scorer = CiderD(references)
    return float(scorer.score(candidates, np.arange(len(candidates))).mean())
