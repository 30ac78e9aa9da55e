"""Recurrent layers shared by the language model, the caption decoder and the VQA question encoder.

Two ways through the same weights:
  * `RecurrentStack.__call__` runs whole sequences on Keras' fused `SimpleRNN` / `GRU` / `LSTM` layers
    (cuDNN-eligible on TensorFlow GPU, `lax.scan` on JAX), for language-model training and encoders;
  * `RecurrentStack.step(x_t, states)` advances one time step with the very same cells (`layer.cell`), for decoding
    and for the caption decoder, whose input at each step depends on attention over the image.
Both give the same numbers (tests/test_recurrent.py checks it per cell type).

State carried across batches (stateful truncated BPTT) is kept by the language model in tracked variables, not by
Keras' `stateful=True`, whose untracked state variables fail under `fit` on JAX and PyTorch.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from lm.regularizers import LockedDropout, recurrent_kernel_mask, weight_dropped_sequence

CELL_TYPES = ("rnn", "gru", "lstm")
LINKS = ("none", "residual", "dense", "highway")
GATE_INITS = ("keras", "chrono", "chrono-forget")
_SEQUENCE_LAYERS = {"rnn": layers.SimpleRNN, "gru": layers.GRU, "lstm": layers.LSTM}
_CELLS = {"rnn": layers.SimpleRNNCell, "gru": layers.GRUCell, "lstm": layers.LSTMCell}


def check_cell_type(cell_type: str) -> str:
    cell_type = cell_type.lower()
    if cell_type not in CELL_TYPES:
        raise ValueError(f"cell_type must be one of {', '.join(CELL_TYPES)}, got {cell_type!r}")
    return cell_type


def make_cell(cell_type: str, units: int, name: str | None = None) -> layers.Layer:
    """A single Keras cell (`SimpleRNNCell`, `GRUCell` or `LSTMCell`) with the defaults the stacks use."""
    return _CELLS[check_cell_type(cell_type)](units, name=name)


def check_links(links: str) -> str:
    links = str(links).lower()
    if links not in LINKS:
        raise ValueError(f"links must be one of {', '.join(LINKS)}, got {links!r}")
    return links


def check_gate_init(gate_init: str, chrono_max: float = 35.0) -> str:
    gate_init = str(gate_init).lower()
    if gate_init not in GATE_INITS:
        raise ValueError(f"gate_init must be one of {', '.join(GATE_INITS)}, got {gate_init!r}")
    if gate_init.startswith("chrono") and not float(chrono_max) > 2.0:
        raise ValueError(f"chrono_max must be > 2 (the biases are log U(1, chrono_max - 1)), got {chrono_max}")
    return gate_init


@keras.saving.register_keras_serializable(package="lm")
class ChronoBias(keras.initializers.Initializer):
    """Chrono initialisation of a gated cell's bias (Tallec & Ollivier, 2018, "Can recurrent neural networks warp
    time?"): each unit's gates start tuned to a time scale drawn uniformly in [1, chrono_max - 1] steps.

      * LSTM (Keras' gate order i, f, c, o): b_f = log(u), u ~ U(1, chrono_max - 1), b_i = -b_f, the rest 0; the
        forget gate starts at u / (1 + u), the input gate at 1 / (1 + u): a leaky average over about u steps.
      * GRU (Keras' h = z * h_prev + (1 - z) * candidate, gate order z, r, h): b_z = log(u), the rest 0. The
        update gate is the LSTM's forget gate and 1 - z its input gate, so this is the same start.
      * `close_input=False` ("chrono-forget"): an LSTM's input-gate bias stays 0 (the gate half open) and only the
        forget gate gets log(u). Every path from an earlier hidden state into the cell runs through the input gate;
        chrono's 1 / (1 + u) narrows it, so a fresh chrono LSTM's gradient to h_(T-t) falls 730x over 50 steps of
        KJV (`lm gradients`), this one 3.9x. A GRU couples the two gates: it gets chrono's start either way.

    A plain initializer, so Keras' fused LSTM/GRU layers (cuDNN, lax.scan) stay as they are.

    Args:
        cell_type: "gru" or "lstm".
        chrono_max: T_max, the longest dependency (in steps) the gates start tuned to; > 2.
        seed: an int for the same biases every call, or None (drawn from Keras' global seed).
        close_input: an LSTM's input-gate bias is -log(u) (chrono, True) or 0 (chrono-forget, False).

    Example:
        >>> layer = keras.layers.LSTM(8, bias_initializer=ChronoBias("lstm", 50), unit_forget_bias=False)
        >>> # or RecurrentStack("lstm", 8, gate_init="chrono", chrono_max=50)
    """

    def __init__(self, cell_type="lstm", chrono_max=35.0, seed=None, close_input=True):
        self.cell_type = check_cell_type(cell_type)
        if self.cell_type == "rnn":
            raise ValueError("a plain RNN has no gates to initialise")
        self.chrono_max = float(chrono_max)
        check_gate_init("chrono", self.chrono_max)
        self.seed = seed
        self.close_input = bool(close_input)
        self._uniform = keras.initializers.RandomUniform(1.0, self.chrono_max - 1.0, seed=seed)

    def __call__(self, shape, dtype=None):
        shape = tuple(shape)  # LSTM (4u,); GRU (2, 3u) with reset_after (input and recurrent bias) or (3u,)
        gates = 4 if self.cell_type == "lstm" else 3
        units = shape[-1] // gates
        slow = ops.log(self._uniform((units,), dtype="float32"))  # (units,) log u, in [0, log(chrono_max - 1)]
        zeros = ops.zeros((units,), "float32")
        if self.cell_type == "lstm":
            bias = ops.concatenate([-slow if self.close_input else zeros, slow, zeros, zeros])  # i, f, c, o
        else:
            bias = ops.concatenate([slow, zeros, zeros])  # z, r, h
            if len(shape) == 2:  # the recurrent bias adds to the input bias: it starts at zero
                bias = ops.stack([bias] + [ops.zeros_like(bias)] * (shape[0] - 1))
        return ops.cast(ops.reshape(bias, shape), dtype or "float32")

    def get_config(self):
        return {"cell_type": self.cell_type, "chrono_max": self.chrono_max, "seed": self.seed,
                "close_input": self.close_input}


def gate_init_kwargs(cell_type: str, gate_init: str = "keras", chrono_max: float = 35.0) -> dict:
    """Constructor kwargs of a Keras LSTM/GRU layer (or cell) for `gate_init`: {} for "keras" (Keras' own start:
    zero biases, the LSTM's forget-gate bias 1) and for a plain RNN, which has no gates; for "chrono" and
    "chrono-forget" the ChronoBias initializer (and, for an LSTM, no unit forget bias on top of it)."""
    cell_type = check_cell_type(cell_type)
    gate_init = check_gate_init(gate_init, chrono_max)
    if gate_init == "keras" or cell_type == "rnn":
        return {}
    kwargs = {"bias_initializer": ChronoBias(cell_type, chrono_max, close_input=gate_init == "chrono")}
    if cell_type == "lstm":
        kwargs["unit_forget_bias"] = False
    return kwargs


def state_count(cell_type: str) -> int:
    """How many state tensors a cell carries: 2 for LSTM (h, c), 1 otherwise."""
    return 2 if check_cell_type(cell_type) == "lstm" else 1


@keras.saving.register_keras_serializable(package="lm")
class RecurrentStack(layers.Layer):
    """N stacked recurrent layers with dropout between them and optional links across layers.

    Links (what reaches layer i+1 besides layer i's output; `x` is layer i's input, `y` its output):
      * "none": y only;
      * "residual": y + x, where the sizes agree (layer 2 and up);
      * "dense": DenseNet-style, layer i+1 reads the concatenation of the stack input and the outputs of all
        layers below it [x_0; y_1; ..; y_i] (its kernel grows accordingly); the stack's output is the last layer's;
      * "highway": g * y + (1 - g) * x with a gate g = sigmoid(W_g x + b_g) per layer (layer 2 and up, where the
        sizes agree); b_g starts at -2 (as in Kim et al., 2016), so a fresh stack mostly carries its input up
        (Srivastava et al., 2015).

    Args:
        cell_type: "rnn", "gru" or "lstm".
        units: hidden size of every layer.
        num_layers: how many layers are stacked.
        dropout: dropout rate on the output of every layer but the last (between layers).
        links: "none", "residual", "dense" or "highway" (see above).
        bidirectional: run every layer both ways and concatenate (encoders; `step()` is then unavailable).
        residual: the switch `links` replaced, still read from model folders written before it: True means
            links="residual", False links="none" (ignored when `links` is given).
        dropout_hidden: locked (variational) dropout between layers, one mask per sequence (AWD-LSTM's dropouth;
            lm.regularizers.LockedDropout), on top of `dropout`. About 1.02x a training step.
        weight_drop: DropConnect rate on every layer's recurrent kernel, one mask per forward pass, in training only
            (AWD-LSTM's weight drop). Training then runs a keras.ops.scan over the same cell variables instead of
            the fused layer, which still serves inference (so the weights load into and equal a plain stack's).
            Cost (scripts/bench_awd.py: 2x200 LSTM, 10k vocabulary, batch 20 x bptt 35, TensorFlow on a 2-core
            CPU): about 1.2x the wall time of a training step (1.1x its CPU time); little, because Keras' LSTM on
            a CPU is itself a loop over time and the softmax dominates. On a GPU it gives up cuDNN's fused kernel,
            which costs more (not measured here). Not for bidirectional stacks.
        gate_init: how gate biases start: "keras" (Keras' defaults: zero, the LSTM's forget gate at 1), "chrono"
            (ChronoBias: time scales up to `chrono_max` steps) or "chrono-forget" (chrono's forget gate, the LSTM's
            input gate left at 0; ChronoBias(close_input=False)). A plain RNN has no gates and is unchanged.
        chrono_max: T_max of the chrono initialisations (read only when gate_init is "chrono" or "chrono-forget").

    Example:
        >>> stack = RecurrentStack("lstm", units=8, num_layers=2, links="highway")
        >>> outputs, states = stack(ops.zeros((2, 5, 4)), return_states=True)  # (2, 5, 8), [[h, c], [h, c]]
        >>> y, states = stack.step(ops.zeros((2, 4)), stack.initial_states(2))  # (2, 8)
    """

    def __init__(self, cell_type="lstm", units=256, num_layers=1, dropout=0.0, links=None, bidirectional=False,
                 residual=None, dropout_hidden=0.0, weight_drop=0.0, gate_init="keras", chrono_max=35.0, **kwargs):
        super().__init__(**kwargs)
        if links is None:
            links = "residual" if residual else "none"
        elif residual and check_links(links) != "residual":
            raise ValueError(f"residual=True contradicts links={links!r}; give links only")
        self.cell_type = check_cell_type(cell_type)
        self.units = int(units)
        self.num_layers = int(num_layers)
        self.dropout = float(dropout)
        self.links = check_links(links)
        self.bidirectional = bool(bidirectional)
        self.gate_init = check_gate_init(gate_init, chrono_max)
        self.chrono_max = float(chrono_max)
        if self.num_layers < 1:
            raise ValueError("num_layers must be >= 1")
        self.rnn_layers = []
        for i in range(self.num_layers):
            rnn = _SEQUENCE_LAYERS[self.cell_type](
                self.units, return_sequences=True, return_state=True, name=f"{self.cell_type}_{i}",
                **gate_init_kwargs(self.cell_type, self.gate_init, self.chrono_max))
            if self.bidirectional:
                rnn = layers.Bidirectional(rnn, name=f"bi_{self.cell_type}_{i}")
            self.rnn_layers.append(rnn)
        self.between = layers.Dropout(self.dropout)
        self.dropout_hidden = float(dropout_hidden)
        self.weight_drop = float(weight_drop)
        if not 0.0 <= self.weight_drop < 1.0:
            raise ValueError(f"weight_drop must be in [0, 1), got {weight_drop}")
        if self.weight_drop and self.bidirectional:
            raise ValueError("weight_drop is for unidirectional stacks")
        self.locked_between = LockedDropout(self.dropout_hidden, name="locked_between") if self.dropout_hidden else None
        self.weight_drop_seed = keras.random.SeedGenerator() if self.weight_drop else None
        self.output_dim = self.units * (2 if self.bidirectional else 1)
        # Highway gates of layers 2 and up (layer 1's input may differ in size; it never gets a link).
        self.gates = [layers.Dense(self.output_dim, activation="sigmoid", name=f"highway_{i}",
                                   bias_initializer=keras.initializers.Constant(-2.0))
                      for i in range(1, self.num_layers)] if self.links == "highway" else []

    @property
    def residual(self) -> bool:
        """The old switch, for code that reads it: True when links == "residual"."""
        return self.links == "residual"

    def build(self, input_shape):
        shape = tuple(input_shape)
        for i, rnn in enumerate(self.rnn_layers):
            rnn.build(shape)
            if self.links == "highway" and i > 0:
                self.gates[i - 1].build(shape)
            width = shape[-1] + self.output_dim if self.links == "dense" else self.output_dim
            shape = shape[:-1] + (width,)
        self.built = True

    @property
    def cells(self) -> list:
        """The per-layer Keras cells (shared by the whole-sequence path and `step`)."""
        if self.bidirectional:
            raise ValueError("a bidirectional stack has two cells per layer and no step()")
        return [rnn.cell for rnn in self.rnn_layers]

    def initial_states(self, batch_size, dtype="float32"):
        """Zero states: a list over layers, each a list of (batch, units) tensors ([h, c] for LSTM)."""
        n = state_count(self.cell_type)
        return [[ops.zeros((batch_size, self.units), dtype=dtype) for _ in range(n)] for _ in range(self.num_layers)]

    def link(self, index, x, y, training=False):
        """Layer `index`'s input x and output y -> what the next layer reads (and, for the last layer, the output).

        Works on (batch, time, features) and (batch, features) alike. Dense links also return the output alone,
        which is the stack's output when this is the last layer.
        """
        same_size = index > 0 and x.shape[-1] == self.output_dim
        if self.links == "residual" and same_size:
            y = y + x
        elif self.links == "highway" and same_size:
            gate = ops.cast(self.gates[index - 1](x), y.dtype)  # (..., output_dim) in (0, 1)
            y = gate * y + (1.0 - gate) * x
        if index < self.num_layers - 1:
            y = self.between(y, training=training)
            if self.locked_between is not None:
                y = self.locked_between(y, training=training)
            if self.links == "dense":
                return ops.concatenate([x, y], axis=-1)  # (..., input + (index + 1) * output_dim)
        return y

    def call(self, inputs, initial_states=None, mask=None, training=None, return_states=False):
        """Whole sequences: inputs (batch, time, features) -> (batch, time, units) [, states per layer]."""
        x = inputs
        final_states = []
        for i, rnn in enumerate(self.rnn_layers):
            init = None if initial_states is None else initial_states[i]
            if self.bidirectional and init is not None:
                init = list(init)
            if training and self.weight_drop:
                y, states = self._weight_dropped(rnn, x, init, mask)
            else:
                result = rnn(x, initial_state=init, mask=mask, training=training)
                y, states = result[0], list(result[1:])  # y: (batch, time, output_dim)
            final_states.append(states)
            x = self.link(i, x, y, training)
        return (x, final_states) if return_states else x

    def _weight_dropped(self, rnn, x, init, mask):
        """Training with weight drop: layer `rnn`'s cell scanned over x with a DropConnect-masked recurrent kernel."""
        if mask is not None:
            raise ValueError("weight_drop does not take a mask (stream or padded-sentence language-model batches)")
        cell = rnn.cell
        if init is None:
            init = self.initial_states(ops.shape(x)[0], dtype=x.dtype)[0]
        kernel_mask = recurrent_kernel_mask(cell, self.weight_drop, self.weight_drop_seed)
        return weight_dropped_sequence(self.cell_type, cell, x, list(init), kernel_mask)

    def step(self, inputs, states, training=False):
        """One time step: inputs (batch, features), states as from `initial_states` -> (output, new_states).

        Uses the same cells as `call`, so looping `step` over time gives the whole-sequence outputs.
        """
        x = inputs
        new_states = []
        for i, cell in enumerate(self.cells):
            h, s = cell(x, list(states[i]), training=training)  # h: (batch, units)
            s = list(s) if isinstance(s, (list, tuple)) else [s]
            new_states.append(s)
            x = self.link(i, x, h, training)
        return x, new_states

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(cell_type=self.cell_type, units=self.units, num_layers=self.num_layers, dropout=self.dropout,
                      links=self.links, bidirectional=self.bidirectional, gate_init=self.gate_init,
                      chrono_max=self.chrono_max)
        # Only when set: the config of a stack without them reads as it did before they existed.
        config.update({k: getattr(self, k) for k in ("dropout_hidden", "weight_drop") if getattr(self, k)})
        return config
