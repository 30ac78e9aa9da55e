"""Tests for lm.recurrent.RecurrentStack: step() == whole sequence, bidirectional sizes, config round trip. Seconds."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from lm.recurrent import RecurrentStack, check_cell_type, make_cell, state_count

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


def test_bad_arguments():
    with pytest.raises(ValueError, match="cell_type"):
        check_cell_type("transformer")
    with pytest.raises(ValueError, match="num_layers"):
        RecurrentStack("lstm", units=4, num_layers=0)
    assert type(make_cell("lstm", 3)).__name__ == "LSTMCell"
    assert (state_count("lstm"), state_count("gru"), state_count("rnn")) == (2, 1, 1)
