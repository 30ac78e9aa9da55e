"""Tests for the language models: perplexity protocol, stateful BPTT, persistence, sampling, generation, and the
`lm` command line (train / perplexity / generate for every architecture, and its one-line errors). Seconds."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

from lm import cli
from lm.checkpoint import LoadedModel, build_model, copy_weights, load_model_dir, save_model_dir
from lm.data import evaluation_rows, sentence_batches, stream_batches, stream_ids
from lm.errors import UserError
from lm.inference import generate, perplexity
from lm.model import LanguageModel
from lm.sampling import filter_logits_np, sample_next
from lm.vocab import Vocabulary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = "the cat dog bird sat ran on a red mat sees eats".split()


def sentences(n: int, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    return [[rng.choice(WORDS) for _ in range(rng.randint(2, 6))] for _ in range(n)]


def write_corpus(folder, n_train=60, n_valid=8, n_test=8) -> str:
    os.makedirs(folder, exist_ok=True)
    for name, n, seed in (("train", n_train, 0), ("valid", n_valid, 1), ("test", n_test, 2)):
        with open(os.path.join(folder, f"{name}.txt"), "w", encoding="utf-8") as f:
            f.write("".join(" ".join(s) + "\n" for s in sentences(n, seed)))
    return str(folder)


VOCAB = Vocabulary.build(sentences(60))
TEXT = sentences(7, seed=5)


def np_(x):
    return ops.convert_to_numpy(x)


def recurrent(**kwargs) -> LanguageModel:
    keras.utils.set_random_seed(0)
    return build_model("lstm", {"vocab_size": len(VOCAB), "units": 8, **kwargs})


# ---- perplexity -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch,mode,tie", [("lstm", "stream", False), ("gru", "sentence", False),
                                           ("rnn", "stream", True), ("window", "stream", False)])
def test_uniform_model_has_perplexity_equal_to_vocabulary_size(arch, mode, tie):
    if arch == "window":
        model = build_model("window", dict(vocab_size=len(VOCAB), context=3, embed_dim=4, hidden=8))
        model.head.kernel.assign(np.zeros(model.head.kernel.shape))
        model.head.bias.assign(np.zeros(model.head.bias.shape))
    else:
        model = recurrent(cell_type=arch, tie_weights=tie, embed_dim=8 if tie else None)
        if tie:  # logits = h @ E^T + b: a zero embedding and bias make every logit 0
            model.embedding.embeddings.assign(np.zeros(model.embedding.embeddings.shape))
        else:
            model.head.kernel.assign(np.zeros(model.head.kernel.shape))
            model.head.bias.assign(np.zeros(model.head.bias.shape))
    ppl, tokens = perplexity(LoadedModel(arch, model, VOCAB, {"mode": mode}), TEXT + [[]])
    assert tokens == sum(len(s) + 1 for s in TEXT)  # every word and every <eos>; empty lines are skipped
    assert abs(ppl - len(VOCAB)) < 1e-4


def test_stream_perplexity_with_row_cuts_is_exactly_the_rows_scored_alone():
    """evaluation_rows only loses state at its cut points; scoring with 1 row or 3 rows counts the same tokens, and
    each is exactly its rows run through the model from a fresh state."""
    model = recurrent()
    loaded = LoadedModel("lstm", model, VOCAB, {"mode": "stream"})
    one, n1 = perplexity(loaded, TEXT, batch_rows=1)
    three, n3 = perplexity(loaded, TEXT, batch_rows=3)
    assert n1 == n3 == sum(len(s) + 1 for s in TEXT)
    # One row is exactly the whole stream run through the model once.
    ids = stream_ids(TEXT, VOCAB)
    logits = np_(model(ids[None, :-1]))[0].astype("float64")
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    expected = np.exp(-logp[np.arange(len(ids) - 1), ids[1:]].mean())
    assert abs(one - expected) < 1e-3 * expected
    # Three rows are three streams, each run through the model once from a fresh state: exactly that, no more loss.
    rows = evaluation_rows(TEXT, VOCAB, 3)
    assert rows.shape[0] == 3 and (rows[:, 0] == VOCAB.eos_id).all()
    assert int((rows[:, 1:] != 0).sum()) == n3
    logits = np_(model(rows[:, :-1])).astype("float64")  # (3, width - 1, vocab)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    targets = rows[:, 1:]
    picked = np.take_along_axis(logp, targets[..., None].astype("int64"), -1)[..., 0]
    expected_three = np.exp(-(picked * (targets != 0)).sum() / (targets != 0).sum())
    assert abs(three - expected_three) < 1e-4 * expected_three


# ---- stateful truncated BPTT ----------------------------------------------------------------------------------
def test_stateful_model_carries_state_across_batches():
    stateful = recurrent(num_layers=2, stateful=True, batch_size=2)
    plain = build_model("lstm", {**stateful.get_config(), "stateful": False, "batch_size": None})
    copy_weights(stateful, plain)
    rng = np.random.default_rng(0)
    b1, b2 = (rng.integers(4, len(VOCAB), size=(2, 5)).astype("int32") for _ in range(2))

    stateful.reset_states()
    assert all(not np.any(np_(v)) for layer in stateful.carried for v in layer)
    l1 = np_(stateful(b1))
    assert all(np.abs(np_(v)).max() > 1e-4 for layer in stateful.carried for v in layer)  # h and c, both layers
    l2 = np_(stateful(b2))

    np.testing.assert_allclose(l1, np_(plain(b1)), atol=1e-5)  # batch 1 starts from zeros
    assert np.abs(l2 - np_(plain(b2))).max() > 1e-3  # batch 2 does not start from zeros...
    both = np_(plain(np.concatenate([b1, b2], axis=1)))  # ...but from where batch 1 ended
    np.testing.assert_allclose(l2, both[:, 5:], atol=1e-5)

    stateful.reset_states()
    np.testing.assert_allclose(np_(stateful(b2)), np_(plain(b2)), atol=1e-5)


def test_stateful_fit_carries_state_in_stream_order():
    """Under fit(shuffle=False), the state after the last batch is the state after reading each row whole."""
    batch, bptt = 2, 4
    ids = stream_ids(sentences(10, seed=3), VOCAB)
    x, y = stream_batches(ids, batch, bptt)
    stateful = recurrent(stateful=True, batch_size=batch)
    plain = build_model("lstm", {**stateful.get_config(), "stateful": False, "batch_size": None})
    copy_weights(stateful, plain)
    stateful.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0),
                     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    stateful.reset_states()
    stateful.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    rows = np.concatenate([x[b::batch] for b in range(batch)], axis=0).reshape(batch, -1)  # (batch, usable)
    _, states = plain.logits_and_states(rows)
    for carried, expected in zip(stateful.carried[0], states[0]):
        np.testing.assert_allclose(np_(carried), np_(expected), atol=1e-5)


@pytest.mark.parametrize("cell_type,tie", [("lstm", True), ("gru", False)])
def test_model_step_loop_equals_whole_sequence(cell_type, tie):
    model = recurrent(cell_type=cell_type, num_layers=2, tie_weights=tie, embed_dim=6 if tie else None,
                      residual=True)
    tokens = np.random.default_rng(2).integers(0, len(VOCAB), size=(2, 6)).astype("int32")
    whole, final = model.logits_and_states(tokens)  # (2, 6, vocab)
    states, steps = model.initial_states(2), []
    for t in range(tokens.shape[1]):
        logits, states = model.step(tokens[:, t], states)  # (2, vocab)
        steps.append(np_(logits))
    np.testing.assert_allclose(np.stack(steps, axis=1), np_(whole), atol=1e-5)
    for a, b in zip(final, states):
        np.testing.assert_allclose(np_(a[0]), np_(b[0]), atol=1e-5)


def test_stream_batches_ordering():
    x, y = stream_batches(np.arange(21), batch_size=2, bptt=3)
    # Rows are 0..9 and 10..19; each batch is the next bptt columns of both rows.
    assert x.tolist() == [[0, 1, 2], [10, 11, 12], [3, 4, 5], [13, 14, 15], [6, 7, 8], [16, 17, 18]]
    np.testing.assert_array_equal(y, x + 1)
    with pytest.raises(ValueError, match="too short"):
        stream_batches(np.arange(6), batch_size=2, bptt=3)


def test_stream_ids_and_sentence_batches():
    ids = stream_ids([["the", "cat"], ["zebra"]], VOCAB)
    assert ids.tolist() == [3, VOCAB.stoi["the"], VOCAB.stoi["cat"], 3, 1, 3]
    x, y = sentence_batches([["the", "cat"], ["a"]], VOCAB)
    assert x.tolist() == [[2, VOCAB.stoi["the"], VOCAB.stoi["cat"]], [2, VOCAB.stoi["a"], 0]]
    assert y.tolist() == [[VOCAB.stoi["the"], VOCAB.stoi["cat"], 3], [VOCAB.stoi["a"], 3, 0]]


# ---- persistence ----------------------------------------------------------------------------------------------
def _window():
    keras.utils.set_random_seed(0)
    return build_model("window", dict(vocab_size=len(VOCAB), context=3, embed_dim=4, hidden=8, dropout=0.1))


MODELS = {
    "lstm-untied": lambda: recurrent(num_layers=2, dropout=0.1),
    "gru-tied-projection": lambda: recurrent(cell_type="gru", tie_weights=True, embed_dim=6, residual=True),
    "lstm-stateful": lambda: recurrent(stateful=True, batch_size=2),
    "lstm-chrono": lambda: recurrent(num_layers=2, gate_init="chrono", chrono_max=12),
    "gru-chrono-stateful": lambda: recurrent(cell_type="gru", gate_init="chrono", stateful=True, batch_size=2),
    "window": _window,
}


@pytest.mark.parametrize("kind", list(MODELS))
def test_keras_file_and_weights_round_trip(tmp_path, kind):
    model = MODELS[kind]()
    width = 3 if kind == "window" else 5
    x = np.random.default_rng(1).integers(0, len(VOCAB), size=(2, width)).astype("int32")
    reset = getattr(model, "reset_states", lambda: None)
    reset()
    expected = np_(model(x))
    reset()

    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded) is type(model) and loaded.get_config() == model.get_config()
    getattr(loaded, "reset_states", lambda: None)()
    np.testing.assert_array_equal(np_(loaded(x)), expected)

    model.save_weights(tmp_path / "m.weights.h5")
    config = {k: v for k, v in model.get_config().items() if k not in ("name", "trainable", "dtype")}
    twin = build_model("window" if kind == "window" else "lstm", config)
    twin.load_weights(tmp_path / "m.weights.h5")
    getattr(twin, "reset_states", lambda: None)()
    np.testing.assert_array_equal(np_(twin(x)), expected)


def test_model_folder_written_before_gate_init_loads_unchanged(tmp_path):
    model = recurrent(num_layers=2)
    save_model_dir(tmp_path, "lstm", model, VOCAB, {"mode": "stream"})
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    assert (config["model"].pop("gate_init"), config["model"].pop("chrono_max")) == ("keras", 35.0)
    path.write_text(json.dumps(config))  # what folders written before gate_init hold
    loaded = load_model_dir(tmp_path)
    assert loaded.model.gate_init == "keras"
    x = np.array([[4, 5, 6]], dtype="int32")
    np.testing.assert_array_equal(np_(loaded.model(x)), np_(model(x)))


def test_model_folder_of_stateful_model_loads_stateless(tmp_path):
    model = recurrent(stateful=True, batch_size=2)
    save_model_dir(tmp_path, "lstm", model, VOCAB, {"mode": "stream"})
    loaded = load_model_dir(tmp_path)
    assert loaded.model.stateful is False and loaded.mode == "stream" and loaded.vocab == VOCAB
    x = np.array([[4, 5, 6]], dtype="int32")
    model.reset_states()
    np.testing.assert_allclose(np_(loaded.model(x)), np_(model(np.repeat(x, 2, axis=0)))[:1], atol=1e-6)


# ---- sampling -------------------------------------------------------------------------------------------------
def test_filter_logits_top_k_top_p_temperature():
    logits = np.log(np.array([0.1, 0.4, 0.2, 0.3]))
    np.testing.assert_allclose(filter_logits_np(logits), [0.1, 0.4, 0.2, 0.3])
    assert filter_logits_np(logits, temperature=0).tolist() == [0, 1, 0, 0]
    np.testing.assert_allclose(filter_logits_np(logits, top_k=2), [0, 4 / 7, 0, 3 / 7])
    np.testing.assert_allclose(filter_logits_np(logits, top_k=1), [0, 1, 0, 0])
    # top-p keeps the smallest most-likely set whose mass reaches p: 0.4 -> {1}; 0.5 -> {1, 3}; 0.75 -> {1, 3, 2}.
    np.testing.assert_allclose(filter_logits_np(logits, top_p=0.4), [0, 1, 0, 0])
    np.testing.assert_allclose(filter_logits_np(logits, top_p=0.5), [0, 4 / 7, 0, 3 / 7])
    np.testing.assert_allclose(filter_logits_np(logits, top_p=0.75), [0, 4 / 9, 2 / 9, 3 / 9])
    np.testing.assert_allclose(filter_logits_np(logits, top_k=3, top_p=0.6), [0, 4 / 7, 0, 3 / 7])
    # Temperature sharpens (< 1) or flattens (> 1) but keeps the order.
    sharp, flat = filter_logits_np(logits, temperature=0.5), filter_logits_np(logits, temperature=2.0)
    assert sharp[1] > 0.4 > flat[1] and np.argsort(sharp).tolist() == np.argsort(flat).tolist()


def test_sample_next_never_picks_banned_ids_and_is_seeded():
    logits = np.array([10.0, 0.0, 0.0, 0.0, 0.0])
    assert sample_next(logits, np.random.default_rng(0), temperature=0, banned=(0,)) != 0
    picks = [sample_next(logits, np.random.default_rng(s), banned=(0, 2)) for s in range(50)]
    assert not {0, 2} & set(picks) and len(set(picks)) > 1
    a = [sample_next(logits, np.random.default_rng(7), top_k=3) for _ in range(3)]
    assert a == [sample_next(logits, np.random.default_rng(7), top_k=3) for _ in range(3)]


# ---- generation -----------------------------------------------------------------------------------------------
def _biased(token_id: int, arch: str = "lstm", mode: str = "stream") -> LoadedModel:
    if arch == "window":
        model = _window()
    else:
        model = recurrent(cell_type=arch)
    bias = np.zeros(len(VOCAB), dtype="float32")
    bias[token_id] = 100.0
    model.head.bias.assign(bias)
    return LoadedModel(arch, model, VOCAB, {"mode": mode})


@pytest.mark.parametrize("arch,mode", [("lstm", "stream"), ("gru", "sentence"), ("window", "stream")])
def test_generation_stops_at_eos(arch, mode):
    assert generate(_biased(VOCAB.eos_id, arch, mode), ["the"], max_tokens=10, seed=0) == []
    # A word that always wins fills max_tokens; banned specials are never produced even when favoured.
    assert generate(_biased(VOCAB.stoi["cat"], arch, mode), max_tokens=4, seed=0) == ["cat"] * 4
    out = generate(_biased(VOCAB.bos_id, arch, mode), max_tokens=6, seed=0)
    assert "<bos>" not in out and "<pad>" not in out


def test_generation_temperature_zero_and_seed():
    loaded = LoadedModel("lstm", recurrent(), VOCAB, {"mode": "stream"})
    greedy = generate(loaded, ["the"], max_tokens=8, temperature=0, seed=1)
    assert greedy == generate(loaded, ["the"], max_tokens=8, temperature=0, seed=2)
    sample = generate(loaded, ["the"], max_tokens=8, seed=3)
    assert sample == generate(loaded, ["the"], max_tokens=8, seed=3)
    others = {tuple(generate(loaded, ["the"], max_tokens=8, seed=s)) for s in range(4, 10)}
    assert len(others | {tuple(sample)}) > 1  # different seeds give different samples
    # Generation with carried states equals scoring the whole text at once (no state is lost between steps).
    ids = [VOCAB.eos_id, VOCAB.stoi["the"]] + VOCAB.encode(greedy)
    logits = np_(loaded.model(np.asarray([ids], dtype="int32")))[0]
    banned = logits.copy()
    banned[:, [0, 2]] = -np.inf
    assert np.argmax(banned[1:-1], axis=-1).tolist() == VOCAB.encode(greedy)[: len(ids) - 2]


# ---- command line ---------------------------------------------------------------------------------------------
TINY = ["--epochs", "1", "--units", "8", "--embed", "6", "--batch-size", "4", "--bptt", "5"]


def run_main(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.mark.parametrize("arch,extra", [("ngram", ["--order", "3"]), ("window", ["--order", "3"]), ("rnn", []),
                                        ("gru", ["--tie"]), ("lstm", []),
                                        ("lstm", ["--mode", "sentence"])])
def test_cli_train_perplexity_generate(tmp_path, capsys, corpus, arch, extra):
    out = tmp_path / "model"
    rc, stdout, _ = run_main(["train", corpus, "--out", out, "--arch", arch, "--json", *TINY, *extra], capsys)
    assert rc == 0
    summary = json.loads(stdout)
    assert summary["arch"] == arch and summary["vocab_size"] == len(VOCAB)
    # Better than a model that learned nothing (uniform over the vocabulary: len(VOCAB)); the n-gram model, which
    # counts exactly, comes near the text's true perplexity (12 equally likely words, then <eos>).
    assert 1 < summary["test_perplexity"] < (13 if arch == "ngram" else len(VOCAB)) and summary["test_tokens"] > 0
    assert {"config.json", "vocab.json"} <= set(os.listdir(out))
    assert json.loads((out / "config.json").read_text())["arch"] == arch

    rc, stdout, _ = run_main(["perplexity", os.path.join(corpus, "test.txt"), "--model", out, "--json"], capsys)
    assert rc == 0
    scored = json.loads(stdout)
    assert set(scored) == {"perplexity", "tokens", "oov_rate"} and scored["oov_rate"] == 0
    assert scored["tokens"] == summary["test_tokens"]
    assert abs(scored["perplexity"] - summary["test_perplexity"]) < 1e-6 * scored["perplexity"]

    rc, stdout, _ = run_main(["generate", "--model", out, "--prompt", "The cat", "--max-tokens", "6", "--num", "2",
                              "--seed", "3", "--json"], capsys)
    assert rc == 0
    samples = json.loads(stdout)
    assert len(samples) == 2 and all(s.startswith("The cat") for s in samples)  # the prompt as given
    assert all(len(s.split()) <= 8 and set(s.split()[2:]) <= set(VOCAB.itos) for s in samples)
    assert run_main(["generate", "--model", out, "--prompt", "The cat", "--max-tokens", "6", "--num", "2",
                     "--seed", "3", "--json"], capsys)[1] == stdout  # --seed repeats
    rc, stdout, _ = run_main(["generate", "--model", out, "--temperature", "0", "--max-tokens", "3"], capsys)
    assert rc == 0 and len(stdout.split()) <= 3


def _assert_one_line_error(rc, err):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lm: error:"), err
    assert "Traceback" not in err


def test_cli_errors_are_one_line(tmp_path, capsys, corpus):
    empty = tmp_path / "empty"
    write_corpus(empty)
    (empty / "train.txt").write_text("")
    not_model = tmp_path / "not_model"
    not_model.mkdir()
    mismatched = tmp_path / "mismatched"
    save_model_dir(mismatched, "lstm", recurrent(), VOCAB, {"mode": "stream"})
    config = json.loads((mismatched / "config.json").read_text())
    config["model"]["units"] = 16
    (mismatched / "config.json").write_text(json.dumps(config))
    nonsense = tmp_path / "nonsense"
    save_model_dir(nonsense, "lstm", recurrent(), VOCAB, {"mode": "stream"})
    (nonsense / "config.json").write_text(json.dumps({"arch": "lstm", "model": {"colour": "blue"}}))
    test_file = os.path.join(corpus, "test.txt")
    cases = [
        ["train", tmp_path / "missing", "--out", tmp_path / "o1"],
        ["train", empty, "--out", tmp_path / "o2"],
        ["train", corpus, "--out", tmp_path / "o3", "--epochs", "1", "--units", "4", "--bptt", "500"],  # too short
        ["perplexity", test_file, "--model", not_model],
        ["perplexity", tmp_path / "missing.txt", "--model", mismatched],
        ["perplexity", test_file, "--model", mismatched],
        ["perplexity", test_file, "--model", nonsense],
        ["generate", "--model", tmp_path / "no_such_folder"],
        ["generate", "--model", not_model, "--top-p", "0"],
    ]
    for argv in cases:
        rc, _, err = run_main(argv, capsys)
        _assert_one_line_error(rc, err)


def test_cli_error_in_a_real_process_has_no_traceback(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the cat sat\n")
    for argv, message in [(["perplexity", text, "--model", tmp_path], "not a language-model folder"),
                          (["perplexity", tmp_path / "missing.txt", "--model", tmp_path], "no such file")]:
        result = subprocess.run([sys.executable, "-m", "lm.cli", *map(str, argv)], capture_output=True, text=True,
                                cwd=ROOT, timeout=120)
        # Exactly one line: bad input is reported before Keras (and TensorFlow's start-up logging) is imported.
        _assert_one_line_error(result.returncode, result.stderr)
        assert message in result.stderr and result.stdout == ""


def test_training_rejects_bad_options(corpus, tmp_path):
    from lm.text import load_corpus
    from lm.training import train_language_model
    splits = load_corpus(corpus)
    with pytest.raises(UserError, match="arch"):
        train_language_model(splits, str(tmp_path / "x"), arch="transformer")
    with pytest.raises(UserError, match="order"):
        train_language_model(splits, str(tmp_path / "x"), arch="ngram", order=7)
    with pytest.raises(UserError, match="--gate-init"):
        train_language_model(splits, str(tmp_path / "x"), gate_init="zero")
    with pytest.raises(UserError, match="--chrono-max"):
        train_language_model(splits, str(tmp_path / "x"), gate_init="chrono", chrono_max=1)


def test_training_that_diverges_is_an_error_not_a_stale_model(corpus, tmp_path, monkeypatch):
    import lm.training
    from lm.text import load_corpus
    monkeypatch.setattr(lm.training, "perplexity", lambda loaded, sentences: (float("nan"), 1))
    with pytest.raises(UserError, match="diverged"):
        lm.training.train_language_model(load_corpus(corpus), str(tmp_path / "x"), arch="rnn", units=4, epochs=2,
                                         batch_size=4, bptt=5, verbose=0)
    assert not (tmp_path / "x" / "config.json").exists()


def test_cli_raw_text_corpus_and_compare(tmp_path, capsys):
    """A single prose file is a corpus too (tokenized, split 90/5/5); `compare` prints one row per model."""
    prose = tmp_path / "story.txt"
    prose.write_text(" ".join(f"The {' '.join(s)}." for s in sentences(80, seed=9)), encoding="utf-8")
    rc, stdout, _ = run_main(["train", prose, "--out", tmp_path / "kn", "--arch", "ngram", "--order", "3", "--json"],
                             capsys)
    assert rc == 0 and json.loads(stdout)["test_tokens"] > 0
    rc, stdout, _ = run_main(["perplexity", prose, "--raw", "--model", tmp_path / "kn", "--json"], capsys)
    assert rc == 0 and json.loads(stdout)["tokens"] == sum(len(s) + 2 for s in sentences(80, seed=9))
    rc, stdout, _ = run_main(["compare", prose, "--archs", "ngram", "--out", tmp_path / "cmp", "--json"], capsys)
    (row,) = json.loads(stdout)
    assert rc == 0 and row["model"] == "KN-5" and row["test_perplexity"] > 1


def test_cosine_schedule_decays_the_rate_over_the_epochs(corpus, tmp_path):
    """`--schedule cosine`: the rate each epoch ends with follows the cosine over all steps of --epochs (reaching 0
    at the last one), in place of the plateau division; `--warmup` must be >= 0."""
    from lm.text import load_corpus
    from lm.training import train_language_model
    splits = load_corpus(corpus)
    summary = train_language_model(splits, str(tmp_path / "m"), arch="lstm", units=8, epochs=3, batch_size=4,
                                   bptt=5, lr=0.01, schedule="cosine", patience=None, verbose=0)
    rates = [h["lr"] for h in summary["history"]]
    assert len(rates) == 3 and rates[0] > rates[1] > rates[2] and rates[2] < 1e-6
    # After one of three epochs the cosine stands at (1 + cos(pi / 3)) / 2 = 0.75 of the peak.
    assert abs(rates[0] - 0.0075) < 2e-4
    with pytest.raises(UserError, match="warmup"):
        train_language_model(splits, str(tmp_path / "x"), arch="lstm", warmup=-1)


@pytest.mark.parametrize("tie", [False, True])
def test_adaptive_softmax_gives_exact_normalised_log_probabilities(tie):
    """Head words, then cluster probability times the word's probability inside its cluster: every row is a
    distribution over the whole vocabulary, and a word's log-probability is assembled as documented."""
    from lm.model import LanguageModel
    model = LanguageModel(40, units=12, embed_dim=8, tie_weights=tie, adaptive_cutoffs=(10, 25))
    tokens = np.array([[3, 11, 30, 5], [1, 2, 39, 26]], dtype="int32")
    log_probs = ops.convert_to_numpy(model(tokens))  # (2, 4, 40)
    np.testing.assert_allclose(np.exp(log_probs).sum(-1), 1.0, rtol=1e-5)
    hidden = ops.convert_to_numpy(model.stack(model.embedding(tokens)))
    if tie:
        hidden = ops.convert_to_numpy(model.projection(hidden))
    head = ops.convert_to_numpy(ops.log_softmax(
        ops.matmul(hidden, ops.transpose(ops.concatenate([model.embedding.embeddings[:10], model.cluster_vectors], 0)))
        + model.output_bias, axis=-1)) if tie else ops.convert_to_numpy(ops.log_softmax(model.head(hidden), axis=-1))
    second = ops.convert_to_numpy(ops.log_softmax(model.tail_heads[1](model.tail_projections[1](hidden)), axis=-1))
    np.testing.assert_allclose(log_probs[..., 3], head[..., 3], rtol=1e-5, atol=1e-6)  # a head word
    np.testing.assert_allclose(log_probs[..., 30], head[..., 11] + second[..., 5], rtol=1e-5, atol=1e-6)
    assert model.tail_projections[0].units == 2 and model.tail_projections[1].units == 1  # 8 // 4, 8 // 16 -> 1
    assert LanguageModel.from_config(model.get_config()).adaptive_cutoffs == (10, 25)
    assert "adaptive_cutoffs" not in LanguageModel(40, units=4).get_config()  # old folders' configs unchanged
    with pytest.raises(ValueError, match="adaptive_cutoffs"):
        LanguageModel(40, units=4, adaptive_cutoffs=(10, 10))


def test_cli_trains_an_adaptive_softmax_model(tmp_path, capsys, corpus):
    out = tmp_path / "model"
    rc, stdout, _ = run_main(["train", corpus, "--out", out, "--json", "--adaptive-softmax", "6", *TINY,
                              "--epochs", "4", "--lr", "0.02"], capsys)
    assert rc == 0
    summary = json.loads(stdout)
    assert 1 < summary["test_perplexity"] < len(VOCAB)
    assert json.loads((out / "config.json").read_text())["model"]["adaptive_cutoffs"] == [6]
    rc, stdout, _ = run_main(["perplexity", os.path.join(corpus, "test.txt"), "--model", out, "--json"], capsys)
    assert rc == 0 and abs(json.loads(stdout)["perplexity"] - summary["test_perplexity"]) < 1e-6 * summary[
        "test_perplexity"]
    for bad in ("x", "0", "99999"):
        rc, _, err = run_main(["train", corpus, "--out", tmp_path / "bad", "--adaptive-softmax", bad, *TINY], capsys)
        assert rc != 0 and "--adaptive-softmax" in err and "Traceback" not in err
