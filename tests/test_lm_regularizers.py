"""AWD-LSTM's regularisers (lm.regularizers): each changes training-mode outputs (or the loss) and leaves inference
equal to the plain model's with the same weights; weight averaging is what the model folder holds; the flags train
end to end and the folder loads."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
from keras import ops

from lm import cli
from lm.checkpoint import load_model_dir
from lm.data import VariableLengthStream
from lm.model import REGULARIZER_ARGS, LanguageModel
from lm.recurrent import RecurrentStack
from lm.regularizers import (EmbeddingDropout, LockedDropout, WeightAverage, recurrent_kernel_mask,
                             weight_dropped_sequence)
from tests.test_lm import run_main, write_corpus

VOCAB_SIZE = 30
TOKENS = np.random.RandomState(0).randint(4, VOCAB_SIZE, size=(3, 9)).astype("int32")


def np_(x):
    return ops.convert_to_numpy(x)


def twins(**regularizers):
    """(regularised model, plain model) of the same shape, holding the same weights."""
    shape = dict(vocab_size=VOCAB_SIZE, units=8, num_layers=2, embed_dim=6)
    keras.utils.set_random_seed(1)
    model = LanguageModel(**shape, **regularizers)
    plain = LanguageModel(**shape)
    model(TOKENS), plain(TOKENS)
    plain.set_weights(model.get_weights())
    return model, plain


@pytest.mark.parametrize("regularizer", ["dropout_input", "dropout_hidden", "dropout_output", "dropout_embedding",
                                         "weight_drop"])
def test_regularizer_changes_training_outputs_only(regularizer):
    model, plain = twins(**{regularizer: 0.5})
    assert model.get_config()[regularizer] == 0.5
    np.testing.assert_allclose(np_(model(TOKENS)), np_(plain(TOKENS)), rtol=1e-6, atol=1e-6)  # inference: equal
    trained, reference = np_(model(TOKENS, training=True)), np_(plain(TOKENS, training=True))
    assert np.abs(trained - reference).max() > 1e-3  # training: the regulariser acts
    # The weights are those of the plain model: same paths, same shapes (a folder loads into either).
    def paths(m):
        return [w.path.split("/", 1)[-1] for w in m.weights]
    assert paths(model) == paths(plain)


def test_locked_dropout_shares_one_mask_over_time():
    x = ops.ones((4, 7, 5))
    y = np_(LockedDropout(0.5, seed=3)(x, training=True))
    assert np.all(y == y[:, :1, :])  # the same mask at every step
    assert set(np.unique(y)) == {0.0, 2.0}  # dropped, or kept and scaled by 1 / (1 - p)
    assert 0 < (y == 0).mean() < 1
    np.testing.assert_array_equal(np_(LockedDropout(0.5)(x)), np_(x))


def test_embedding_dropout_drops_whole_words():
    tokens = np.array([[1, 2, 3, 1, 2, 3, 1, 2, 3]] * 8, dtype="int32")  # every word many times in every row
    embedded = ops.ones((8, 9, 4))
    y = np_(EmbeddingDropout(5, 0.5, seed=0)(embedded, tokens, training=True))
    for word in (1, 2, 3):
        values = y[tokens == word]  # every occurrence of the word, all features, in the whole batch
        assert np.all(values == values[0, 0]) and values[0, 0] in (0.0, 2.0)


@pytest.mark.parametrize("cell_type", ["lstm", "gru", "rnn"])
def test_weight_drop_scan_is_the_fused_layer_with_a_mask_of_ones(cell_type):
    stack = RecurrentStack(cell_type, units=6, num_layers=1, weight_drop=0.5)
    x = np.random.RandomState(2).randn(3, 7, 4).astype("float32")
    fused, states = stack(x, return_states=True)
    cell = stack.rnn_layers[0].cell
    scanned, scanned_states = weight_dropped_sequence(cell_type, cell, ops.convert_to_tensor(x),
                                                      stack.initial_states(3)[0],
                                                      ops.ones(cell.recurrent_kernel.shape))
    np.testing.assert_allclose(np_(scanned), np_(fused), atol=1e-5)
    for a, b in zip(scanned_states, states[0]):
        np.testing.assert_allclose(np_(a), np_(b), atol=1e-5)
    mask = np_(recurrent_kernel_mask(cell, 0.5, keras.random.SeedGenerator(0)))
    assert mask.shape == tuple(cell.recurrent_kernel.shape) and set(np.unique(mask)) == {0.0, 2.0}


def test_ar_tar_are_training_losses_and_leave_outputs_alone():
    model, plain = twins(ar=2.0, tar=1.0)
    logits = np_(model(TOKENS, training=True))
    np.testing.assert_allclose(logits, np_(plain(TOKENS, training=True)), rtol=1e-6, atol=1e-6)
    ar, tar = (float(np_(v)) for v in model.losses)
    hidden = np_(plain.stack(plain.embedding(TOKENS)))  # (batch, time, units): the last layer's outputs
    assert ar == pytest.approx(2.0 * np.mean(hidden ** 2), rel=1e-5) and ar > 0
    assert tar == pytest.approx(1.0 * np.mean((hidden[:, 1:] - hidden[:, :-1]) ** 2), rel=1e-5) and tar > 0
    model(TOKENS)  # inference: no regularisation loss
    assert not model.losses


def test_config_round_trips_and_plain_config_is_unchanged():
    model, plain = twins(dropout_input=0.1, dropout_hidden=0.2, dropout_output=0.3, dropout_embedding=0.05,
                         weight_drop=0.4, ar=2.0, tar=1.0)
    config = model.get_config()
    again = LanguageModel.from_config(config).get_config()
    assert all(again[k] == config[k] for k in REGULARIZER_ARGS)
    assert not set(REGULARIZER_ARGS) & set(plain.get_config())  # folders of plain models read as before
    assert not {"dropout_hidden", "weight_drop"} & set(plain.stack.get_config())
    assert model.stack.get_config()["weight_drop"] == 0.4


def test_variable_length_stream_continues_every_row():
    ids = np.arange(1, 402, dtype="int32")  # 401 ids: 4 rows of 100 (+1 for the last target)
    batches = VariableLengthStream(ids, batch_size=4, bptt=20, seed=0)
    assert len(batches) == 100 // 20
    lengths = [int(n) for n in batches.lengths]
    assert all(5 <= n <= 60 for n in lengths) and len(set(lengths)) > 1
    previous = None
    for i in range(len(batches)):
        x, y = batches[i]
        assert x.shape == (4, lengths[i]) and np.array_equal(y, ids[x])  # y is x's next id (ids[k] == k + 1)
        if previous is not None:  # batch i continues batch i-1 in every row (a ring of 100 ids per row)
            assert np.array_equal((x[:, 0] - 1) % 100, previous[:, -1] % 100)
        previous = x
    batches.set_epoch(1)  # epoch 1 starts where epoch 0 ended; lengths depend on (seed, epoch) only
    assert batches.starts[0] == sum(lengths) % 100
    assert np.array_equal(VariableLengthStream(ids, 4, 20, seed=0).draw_lengths(1), batches.lengths)
    awd = VariableLengthStream(np.arange(1, 402, dtype="int32"), batch_size=4, bptt=70)  # AWD-LSTM's bptt
    draws = np.concatenate([awd.draw_lengths(e) for e in range(2000)])
    assert 0.03 < np.mean(draws < 52) < 0.07  # ~5% of the batches are about half length (N(35, 5))
    assert abs(np.mean(draws[draws >= 52]) - 70) < 0.5 and abs(np.std(draws[draws >= 52]) - 5) < 0.5


def test_variable_bptt_scales_each_batch_learning_rate():
    from lm.training import SequenceLengthLR, _fit_input
    ids = np.random.RandomState(0).randint(4, VOCAB_SIZE, 401).astype("int32")
    batches = VariableLengthStream(ids, batch_size=4, bptt=20, seed=3)
    model = LanguageModel(VOCAB_SIZE, units=4, stateful=True, batch_size=4)
    model(ops.zeros((4, 2), "int32"))
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(float(np_(self.model.optimizer.learning_rate)))

    model.fit(_fit_input(batches), epochs=1, shuffle=False, callbacks=[SequenceLengthLR(batches), Record()],
              verbose=0)
    assert seen == pytest.approx([0.1 * n / 20 for n in batches.lengths])  # lr x length / bptt, batch by batch
    assert float(np_(model.optimizer.learning_rate)) == pytest.approx(0.1)  # the epoch's lr is put back


def test_weight_average_ema_and_asgd():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="d")])
    steps = [np.full((2, 1), v, "float32") for v in (1.0, 3.0, 7.0)]

    def run(average):
        average.set_model(model)
        for value in steps:
            model.layers[0].kernel.assign(value)
            average.on_train_batch_end(0)
        target = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="d")])
        assert average.apply(target)
        return float(np_(target.layers[0].kernel)[0, 0])

    assert run(WeightAverage("ema", decay=0.5)) == pytest.approx(0.5 * (0.5 * 1 + 0.5 * 3) + 0.5 * 7)
    asgd = WeightAverage("asgd", nonmono=1)
    for score in (10.0, 9.0):  # still improving: no averaging
        asgd.observe(score)
    assert not asgd.active and not asgd.apply(model)
    asgd.observe(9.5)  # worse than the best before the last epoch: averaging starts
    assert asgd.active and run(asgd) == pytest.approx((1 + 3 + 7) / 3)


def test_saved_weights_are_the_average(tmp_path, monkeypatch):
    """lm train --average ema: the folder holds the EMA of the raw weights after every step up to the best epoch,
    computed here independently from the raw weights recorded at each step (not the raw weights themselves)."""
    import lm.training
    raw = []  # per step: {path: raw weights}
    ends = []  # steps done at each epoch's end

    class Recording(WeightAverage):
        def on_train_batch_end(self, batch, logs=None):
            raw.append({self._key(v): np_(v.value).copy() for v in self.model.trainable_variables})
            super().on_train_batch_end(batch, logs)

        def on_epoch_end(self, epoch, logs=None):
            ends.append(len(raw))

    monkeypatch.setattr(lm.training, "WeightAverage", Recording)
    corpus = write_corpus(tmp_path / "corpus")
    out = tmp_path / "model"
    decay = 0.7
    from lm.text import load_corpus
    splits = load_corpus(corpus)
    summary = lm.training.train_language_model(
        {"train": splits["train"], "valid": splits["valid"]}, str(out), arch="lstm", units=8, embed=6, batch_size=4,
        bptt=5, epochs=2, lr=0.01, verbose=0, average="ema", ema_decay=decay, patience=5)
    scores = [h["val_perplexity"] for h in summary["history"]]
    best = [e for e, s in enumerate(scores) if s == min(scores)][-1]
    ema = None
    for step in raw[: ends[best]]:
        ema = step if ema is None else {k: decay * ema[k] + (1 - decay) * step[k] for k in step}
    saved = {w.path.split("/", 1)[-1]: np_(w.value) for w in load_model_dir(out).model.trainable_variables}
    assert saved.keys() == ema.keys()
    for key in saved:
        np.testing.assert_allclose(saved[key], ema[key], rtol=1e-4, atol=1e-6)
    last_raw = raw[ends[best] - 1]
    assert max(np.abs(saved[k] - last_raw[k]).max() for k in saved) > 1e-4  # not the raw weights


def test_lm_train_with_every_flag_then_load(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus")
    out = tmp_path / "model"
    rc, stdout, _ = run_main(["train", corpus, "--out", out, "--json", "--epochs", "2", "--units", "8", "--embed", "6",
                              "--layers", "2", "--batch-size", "4", "--bptt", "8", "--lr", "0.01",
                              "--dropout-input", "0.2", "--dropout-hidden", "0.2", "--dropout-output", "0.3",
                              "--dropout-embedding", "0.1", "--weight-drop", "0.3", "--ar", "2", "--tar", "1",
                              "--variable-bptt", "--average", "asgd", "--nonmono", "1", "--patience", "3"], capsys)
    assert rc == 0
    summary = json.loads(stdout)
    assert summary["history"][0]["lr"] == pytest.approx(0.01)  # variable BPTT's per-batch lr does not leak out
    config = json.loads((out / "config.json").read_text())["model"]
    assert config["weight_drop"] == 0.3 and config["ar"] == 2.0 and config["dropout_embedding"] == 0.1
    rc, stdout, _ = run_main(["perplexity", os.path.join(corpus, "test.txt"), "--model", out, "--json"], capsys)
    assert rc == 0 and json.loads(stdout)["perplexity"] == pytest.approx(summary["test_perplexity"], rel=1e-4)
    from lm.api import LanguageModel as Api
    assert Api.load(str(out)).score_sentences([["the", "cat"]]).perplexity > 1


def test_bad_awd_flags_are_one_line_errors(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus")
    for flags, words in ((["--weight-drop", "1.5"], "--weight-drop"), (["--arch", "ngram", "--ar", "1"], "--ar"),
                         (["--variable-bptt", "--mode", "sentence"], "--variable-bptt"),
                         (["--average", "asgd"], "--patience"),
                         (["--arch", "window", "--average", "ema"], "--average")):
        rc, _, err = run_main(["train", corpus, "--out", tmp_path / "m", *flags], capsys)
        assert rc == 2 and words in err and len(err.strip().splitlines()) == 1


def test_help_shows_the_flags_with_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--dropout-input", "--dropout-hidden", "--dropout-output", "--dropout-embedding", "--weight-drop",
                 "--ar ALPHA", "--tar BETA", "--variable-bptt", "--average", "--ema-decay", "--nonmono"):
        assert flag in text
    assert "(default 0.999)" in text and "(default none)" in text


JAX_CHECK = r"""
import keras, numpy as np
from keras import ops
assert keras.backend.backend() == "jax"
from lm.model import LanguageModel
from lm.regularizers import LockedDropout
x = ops.ones((2, 5, 3))
y = ops.convert_to_numpy(LockedDropout(0.5, seed=1)(x, training=True))
assert np.all(y == y[:, :1]) and (y == 0).any()
keras.utils.set_random_seed(0)
tokens = np.random.RandomState(0).randint(4, 20, (4, 6)).astype("int32")
model = LanguageModel(20, units=8, num_layers=2, dropout_input=0.3, dropout_hidden=0.3, weight_drop=0.5, ar=1.0,
                      tar=1.0)
plain = LanguageModel(20, units=8, num_layers=2)
model(tokens), plain(tokens)
plain.set_weights(model.get_weights())
assert np.allclose(ops.convert_to_numpy(model(tokens)), ops.convert_to_numpy(plain(tokens)), atol=1e-6)
assert not np.allclose(ops.convert_to_numpy(model(tokens, training=True)), ops.convert_to_numpy(plain(tokens)))
model.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
before = ops.convert_to_numpy(model.stack.rnn_layers[0].cell.recurrent_kernel).copy()
history = model.fit(tokens, tokens, epochs=1, batch_size=4, verbose=0).history
after = ops.convert_to_numpy(model.stack.rnn_layers[0].cell.recurrent_kernel)
assert np.all(np.isfinite(history["loss"])) and np.abs(after - before).max() > 0
print("ok")
"""


@pytest.mark.slow  # a fresh JAX process: ~15 s of CPU, more wall time on a busy machine
def test_locked_dropout_and_weight_drop_train_on_jax(run_python):
    proc = run_python(JAX_CHECK, "jax", JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]
