"""Tests for lm.recurrent.RecurrentStack: step() == whole sequence, bidirectional sizes, config round trip. Seconds."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from lm.recurrent import ChronoBias, RecurrentStack, check_cell_type, make_cell, state_count

BATCH, TIME, FEATURES, UNITS = 2, 5, 6, 6


def _inputs(seed=0):
    return np.random.default_rng(seed).normal(size=(BATCH, TIME, FEATURES)).astype("float32")


def _loop_steps(stack, x, states):
    outputs = []
    for t in range(x.shape[1]):
        y, states = stack.step(x[:, t], states)  # (batch, units)
        outputs.append(ops.convert_to_numpy(y))
    return np.stack(outputs, axis=1), states


@pytest.mark.parametrize("cell_type", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("num_layers,links", [(1, "none"), (2, "none"), (2, "residual"), (3, "dense"),
                                              (3, "highway")])
def test_step_loop_equals_whole_sequence(cell_type, num_layers, links):
    keras.utils.set_random_seed(1)
    stack = RecurrentStack(cell_type, units=UNITS, num_layers=num_layers, links=links, dropout=0.5)
    x = _inputs()
    whole, final = stack(x, return_states=True)  # (batch, time, units); dropout is off at inference
    assert tuple(whole.shape) == (BATCH, TIME, UNITS)
    looped, looped_final = _loop_steps(stack, x, stack.initial_states(BATCH))
    np.testing.assert_allclose(looped, ops.convert_to_numpy(whole), atol=1e-5)
    assert len(final) == num_layers and all(len(s) == state_count(cell_type) for s in final)
    for layer_whole, layer_loop in zip(final, looped_final):
        for a, b in zip(layer_whole, layer_loop):
            np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b), atol=1e-5)


@pytest.mark.parametrize("cell_type", ["gru", "lstm"])
def test_step_from_given_states_equals_whole_sequence(cell_type):
    keras.utils.set_random_seed(2)
    stack = RecurrentStack(cell_type, units=UNITS, num_layers=2)
    x = _inputs(3)
    rng = np.random.default_rng(4)
    states = [[rng.normal(size=(BATCH, UNITS)).astype("float32") for _ in range(state_count(cell_type))]
              for _ in range(2)]
    whole = ops.convert_to_numpy(stack(x, initial_states=states))
    zero_start = ops.convert_to_numpy(stack(x))
    assert np.abs(whole - zero_start).max() > 1e-3  # the states were really used
    looped, _ = _loop_steps(stack, x, states)
    np.testing.assert_allclose(looped, whole, atol=1e-5)


def test_residual_changes_the_output():
    keras.utils.set_random_seed(3)
    plain = RecurrentStack("gru", units=UNITS, num_layers=2)
    residual = RecurrentStack("gru", units=UNITS, num_layers=2, residual=True)
    x = _inputs()
    plain(x), residual(x)
    residual.set_weights(plain.get_weights())
    difference = ops.convert_to_numpy(residual(x)) - ops.convert_to_numpy(plain(x))
    # The residual stack adds layer 2's input (layer 1's output) to layer 2's output.
    first = RecurrentStack("gru", units=UNITS, num_layers=1)
    first(x)
    first.set_weights(plain.get_weights()[:3])
    np.testing.assert_allclose(difference, ops.convert_to_numpy(first(x)), atol=1e-5)


def test_old_residual_switch_still_builds_residual_links():
    """Configs written before `links` carry `residual`; they must build the same stack as links="residual"."""
    old = RecurrentStack("gru", units=UNITS, num_layers=2, residual=True)
    assert old.links == "residual" and old.residual
    assert RecurrentStack("gru", units=UNITS, num_layers=2, residual=False).links == "none"
    new = RecurrentStack.from_config(old.get_config())
    x = _inputs()
    old(x), new(x)
    new.set_weights(old.get_weights())
    np.testing.assert_array_equal(ops.convert_to_numpy(new(x)), ops.convert_to_numpy(old(x)))
    with pytest.raises(ValueError, match="contradicts"):
        RecurrentStack("gru", units=UNITS, num_layers=2, residual=True, links="dense")
    with pytest.raises(ValueError, match="links must be one of"):
        RecurrentStack("gru", units=UNITS, links="skip")


def test_dense_and_highway_links_wire_the_layers():
    keras.utils.set_random_seed(5)
    x = _inputs()
    dense = RecurrentStack("rnn", units=UNITS, num_layers=3, links="dense")
    dense(x)
    # Layer 3 reads [stack input; layer 1 output; layer 2 output].
    assert [tuple(rnn.cell.kernel.shape) for rnn in dense.rnn_layers] == \
        [(FEATURES, UNITS), (FEATURES + UNITS, UNITS), (FEATURES + 2 * UNITS, UNITS)]
    highway = RecurrentStack("rnn", units=UNITS, num_layers=2, links="highway")
    plain = RecurrentStack("rnn", units=UNITS, num_layers=2)
    highway(x), plain(x)
    plain.set_weights(highway.get_weights()[:6])
    first = RecurrentStack("rnn", units=UNITS, num_layers=1)
    first(x)
    first.set_weights(highway.get_weights()[:3])
    below, top = ops.convert_to_numpy(first(x)), ops.convert_to_numpy(plain(x))  # layer 1, layer 2 outputs
    kernel, bias = (ops.convert_to_numpy(w) for w in highway.gates[0].weights)
    gate = 1 / (1 + np.exp(-(below @ kernel + bias)))
    np.testing.assert_allclose(ops.convert_to_numpy(highway(x)), gate * top + (1 - gate) * below, atol=1e-5)
    assert np.all(bias == -2.0)  # a fresh highway stack mostly carries its input up


@pytest.mark.parametrize("cell_type", ["rnn", "lstm"])
def test_bidirectional_output_size(cell_type):
    stack = RecurrentStack(cell_type, units=4, num_layers=2, bidirectional=True)
    x = _inputs()
    y, states = stack(x, return_states=True)
    assert tuple(y.shape) == (BATCH, TIME, 8) == stack.compute_output_shape(x.shape)
    assert stack.output_dim == 8
    assert len(states) == 2 and len(states[0]) == 2 * state_count(cell_type)  # forward and backward states
    with pytest.raises(ValueError):
        stack.cells


@pytest.mark.parametrize("links", ["residual", "dense", "highway"])
def test_get_config_round_trip(links):
    stack = RecurrentStack("GRU", units=5, num_layers=3, dropout=0.25, links=links, bidirectional=True,
                           name="enc")
    config = stack.get_config()
    assert {k: config[k] for k in ("cell_type", "units", "num_layers", "dropout", "links", "bidirectional")} == \
        dict(cell_type="gru", units=5, num_layers=3, dropout=0.25, links=links, bidirectional=True)
    again = RecurrentStack.from_config(config)
    assert again.get_config() == config
    # Same weights -> same outputs.
    x = _inputs()
    stack(x), again(x)
    again.set_weights(stack.get_weights())
    np.testing.assert_allclose(ops.convert_to_numpy(again(x)), ops.convert_to_numpy(stack(x)), atol=1e-6)


def _biases(stack):
    return [ops.convert_to_numpy(cell.bias) for cell in stack.cells]


@pytest.mark.parametrize("chrono_max", [10.0, 50.0])
def test_chrono_sets_the_gate_biases(chrono_max):
    units, top = 64, np.log(chrono_max - 1)
    keras.utils.set_random_seed(0)
    lstm = RecurrentStack("lstm", units=units, num_layers=2, gate_init="chrono", chrono_max=chrono_max)
    lstm.build((None, None, FEATURES))
    for bias in _biases(lstm):  # gates i, f, c, o
        i, f, c, o = bias.reshape(4, units)
        assert f.min() >= 0 and f.max() <= top + 1e-6 and f.max() > 0.9 * top and f.std() > 0.1  # log U(1, T-1)
        u = np.exp(f)
        assert abs(np.mean(u) - chrono_max / 2) < 0.25 * chrono_max  # uniform on [1, T - 1]: mean T / 2
        np.testing.assert_allclose(i, -f, atol=1e-6)
        assert not c.any() and not o.any()
    first, second = _biases(lstm)
    assert np.abs(first - second).max() > 0.1  # each layer draws its own time scales
    assert type(lstm.rnn_layers[0]) is keras.layers.LSTM  # Keras' fused LSTM layer, not a cell loop
    assert not lstm.rnn_layers[0].cell.unit_forget_bias  # the chrono forget bias is not raised by 1 on top

    gru = RecurrentStack("gru", units=units, gate_init="chrono", chrono_max=chrono_max)
    gru.build((None, None, FEATURES))
    (bias,) = _biases(gru)  # (2, 3 units): input and recurrent biases, gates z, r, h; z keeps the old state
    z, r, h = bias[0].reshape(3, units)
    assert z.min() >= 0 and z.max() <= top + 1e-6 and z.std() > 0.1
    assert not r.any() and not h.any() and not bias[1].any()

    keras_lstm = RecurrentStack("lstm", units=units)
    keras_lstm.build((None, None, FEATURES))
    i, f, c, o = _biases(keras_lstm)[0].reshape(4, units)
    assert (f == 1).all() and not i.any()  # the default is Keras' start, unchanged

    for cell_type in ("rnn",):  # no gates: chrono changes nothing
        keras.utils.set_random_seed(5)
        plain = RecurrentStack(cell_type, units=4, gate_init="chrono")
        plain.build((None, None, FEATURES))
        keras.utils.set_random_seed(5)
        same = RecurrentStack(cell_type, units=4)
        same.build((None, None, FEATURES))
        for a, b in zip(plain.get_weights(), same.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_chrono_forget_opens_only_the_forget_gate():
    units, chrono_max = 64, 30.0
    keras.utils.set_random_seed(0)
    lstm = RecurrentStack("lstm", units=units, gate_init="chrono-forget", chrono_max=chrono_max)
    lstm.build((None, None, FEATURES))
    i, f, c, o = _biases(lstm)[0].reshape(4, units)
    assert f.min() >= 0 and f.max() <= np.log(chrono_max - 1) + 1e-6 and f.std() > 0.1  # chrono's log U(1, T-1)
    assert not i.any() and not c.any() and not o.any()  # the input gate stays at Keras' 0, half open
    assert not lstm.rnn_layers[0].cell.unit_forget_bias and type(lstm.rnn_layers[0]) is keras.layers.LSTM
    assert RecurrentStack.from_config(lstm.get_config()).gate_init == "chrono-forget"
    for close_input in (True, False):  # a GRU couples the gates: the same start either way
        initializer = ChronoBias("gru", chrono_max, seed=1, close_input=close_input)
        assert ChronoBias.from_config(initializer.get_config()).close_input is close_input
        np.testing.assert_array_equal(ops.convert_to_numpy(initializer((2, 9))),
                                      ops.convert_to_numpy(ChronoBias("gru", chrono_max, seed=1)((2, 9))))


def test_chrono_config_round_trip_and_old_configs():
    stack = RecurrentStack("lstm", units=4, num_layers=2, gate_init="chrono", chrono_max=20, bidirectional=True)
    config = stack.get_config()
    assert (config["gate_init"], config["chrono_max"]) == ("chrono", 20.0)
    assert RecurrentStack.from_config(config).get_config() == config
    old = {k: v for k, v in config.items() if k not in ("gate_init", "chrono_max")}  # written before gate_init
    assert RecurrentStack.from_config(old).gate_init == "keras"
    initializer = ChronoBias("gru", 12, seed=3)
    again = ChronoBias.from_config(initializer.get_config())
    np.testing.assert_array_equal(ops.convert_to_numpy(again((2, 9))), ops.convert_to_numpy(initializer((2, 9))))
    with pytest.raises(ValueError, match="gate_init"):
        RecurrentStack("lstm", units=4, gate_init="orthogonal")
    with pytest.raises(ValueError, match="chrono_max"):
        RecurrentStack("lstm", units=4, gate_init="chrono", chrono_max=2)
    with pytest.raises(ValueError, match="no gates"):
        ChronoBias("rnn")


def test_bad_arguments():
    with pytest.raises(ValueError, match="cell_type"):
        check_cell_type("transformer")
    with pytest.raises(ValueError, match="num_layers"):
        RecurrentStack("lstm", units=4, num_layers=0)
    assert type(make_cell("lstm", 3)).__name__ == "LSTMCell"
    assert (state_count("lstm"), state_count("gru"), state_count("rnn")) == (2, 1, 1)
