"""Neural language models: the recurrent `LanguageModel` and the fixed-window baseline (Bengio et al., 2003)."""

from __future__ import annotations

import keras
from keras import layers, ops

from lm.accel import carried_state_variable, read_state, write_state, zero_state
from lm.recurrent import RecurrentStack


@keras.saving.register_keras_serializable(package="lm")
class LanguageModel(keras.Model):
    """Embedding -> RecurrentStack -> softmax over the vocabulary, optionally tied to the embedding.

    Args:
        vocab_size: number of tokens, specials included.
        cell_type: "rnn", "gru" or "lstm".
        units: hidden size of each recurrent layer.
        num_layers: stacked recurrent layers.
        embed_dim: embedding size (defaults to `units`).
        dropout: dropout on the embeddings, between layers and before the softmax.
        tie_weights: share the embedding matrix with the output layer (a projection units -> embed_dim is added
            when they differ).
        links: links across recurrent layers: "none", "residual", "dense" or "highway" (lm.recurrent).
        residual: the switch `links` replaced (model folders written before it): True means links="residual".
        gate_init: how the gate biases start: "keras" (Keras' defaults) or "chrono" (Tallec & Ollivier, 2018;
            lm.recurrent.ChronoBias). Only the start: a model folder's weights replace it when it loads.
        chrono_max: T_max of the chrono initialisation (`lm train` passes --bptt).
        stateful: carry the final states of each batch into the next (stream training with truncated BPTT);
            needs `batch_size`. The states live in non-trainable variables that the model assigns itself, which
            works under `fit` on TensorFlow, JAX and PyTorch alike. Reset them with `reset_states()`.
        batch_size: the fixed batch size of a stateful model.

    Example:
        >>> model = LanguageModel(vocab_size=100, units=32, num_layers=2, tie_weights=True)
        >>> logits = model(ops.zeros((4, 10), "int32"))  # (4, 10, 100)
    """

    def __init__(self, vocab_size, cell_type="lstm", units=256, num_layers=1, embed_dim=None, dropout=0.0,
                 tie_weights=False, links=None, stateful=False, batch_size=None, residual=None, gate_init="keras",
                 chrono_max=35.0, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = int(vocab_size)
        self.cell_type = cell_type
        self.units = int(units)
        self.num_layers = int(num_layers)
        self.embed_dim = int(embed_dim or units)
        self.dropout = float(dropout)
        self.tie_weights = bool(tie_weights)
        self.stateful = bool(stateful)
        self.batch_size = None if batch_size is None else int(batch_size)
        if self.stateful and not self.batch_size:
            raise ValueError("a stateful LanguageModel needs batch_size")
        self.embedding = layers.Embedding(self.vocab_size, self.embed_dim, name="embedding")
        self.input_dropout = layers.Dropout(self.dropout)
        self.stack = RecurrentStack(cell_type, self.units, self.num_layers, dropout=self.dropout, links=links,
                                    residual=residual, gate_init=gate_init, chrono_max=chrono_max, name="stack")
        self.links = self.stack.links
        self.gate_init, self.chrono_max = self.stack.gate_init, self.stack.chrono_max
        self.output_dropout = layers.Dropout(self.dropout)
        if self.tie_weights:
            self.projection = (layers.Dense(self.embed_dim, name="projection")
                               if self.units != self.embed_dim else None)
            self.head = None
        else:
            self.projection = None
            self.head = layers.Dense(self.vocab_size, name="head")

    def build(self, input_shape):
        batch, time = tuple(input_shape)[:2]
        self.embedding.build((batch, time))
        self.stack.build((batch, time, self.embed_dim))
        if self.projection is not None:
            self.projection.build((batch, time, self.units))
        if self.tie_weights:
            self.output_bias = self.add_weight(shape=(self.vocab_size,), initializer="zeros", name="output_bias")
        else:
            self.head.build((batch, time, self.units))
        if self.stateful:
            n = 2 if self.stack.cell_type == "lstm" else 1
            # Float32 (batch, units) variables; batch-sharded / per-replica under --distribute (lm.accel).
            self.carried = [[carried_state_variable(self, self.batch_size, self.units, f"carried_{i}_{j}")
                             for j in range(n)] for i in range(self.num_layers)]
        self.built = True

    def logits_from_hidden(self, hidden):
        """(..., units) -> (..., vocab): the output layer, tied to the embedding or not."""
        if not self.tie_weights:
            return ops.cast(self.head(hidden), "float32")  # float32 logits under mixed precision too
        if self.projection is not None:
            hidden = self.projection(hidden)
        # The projection runs in the compute dtype (bfloat16 under mixed precision); logits come out float32.
        weights = ops.cast(self.embedding.embeddings, hidden.dtype)  # (vocab, embed)
        logits = ops.matmul(hidden, ops.transpose(weights)) + ops.cast(self.output_bias, hidden.dtype)
        return ops.cast(logits, "float32")

    def logits_and_states(self, tokens, states=None, training=False):
        """tokens (batch, time) int, states or None -> (logits (batch, time, vocab), new states per layer)."""
        x = self.input_dropout(self.embedding(tokens), training=training)  # (batch, time, embed)
        hidden, new_states = self.stack(x, initial_states=states, training=training, return_states=True)
        hidden = self.output_dropout(hidden, training=training)  # (batch, time, units)
        return self.logits_from_hidden(hidden), new_states

    def step(self, tokens, states, training=False):
        """One time step, for decoding: tokens (batch,) int and states per layer ([h, c] for LSTM, as returned by
        `logits_and_states` or `initial_states`) -> (logits (batch, vocab), new states).

        Runs the recurrent cells directly (no scan over time), so it is cheap to call once per generated token in
        eager mode on every backend; looping it gives the numbers of `logits_and_states`.
        """
        x = self.embedding(tokens)  # (batch, embed)
        hidden, new_states = self.stack.step(x, states, training=training)  # (batch, units)
        return self.logits_from_hidden(hidden), new_states  # (batch, vocab)

    def initial_states(self, batch_size):
        """Zero states for `step` / `logits_and_states`: a list over layers of [h, c] (LSTM) or [h]."""
        return self.stack.initial_states(batch_size)

    def call(self, tokens, training=None):
        if not self.stateful:
            return self.logits_and_states(tokens, training=training)[0]
        # A copy, because the variables are overwritten below (PyTorch's autograd rejects in-place changes).
        rows = tokens.shape[0]
        states = [[ops.cast(ops.copy(read_state(v, rows)), self.compute_dtype) for v in layer]
                  for layer in self.carried]
        logits, new_states = self.logits_and_states(tokens, states, training=training)
        for variables, values in zip(self.carried, new_states):
            for variable, value in zip(variables, values):
                # Truncated BPTT: the next batch starts from these values, but no gradient flows back into them.
                write_state(variable, ops.cast(ops.stop_gradient(value), variable.dtype))
        return logits

    def reset_states(self):
        """Zeroes the carried states (start of every epoch, and before a new text)."""
        for layer in getattr(self, "carried", []):
            for variable in layer:
                zero_state(variable)

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, cell_type=self.cell_type, units=self.units,
                      num_layers=self.num_layers, embed_dim=self.embed_dim, dropout=self.dropout,
                      tie_weights=self.tie_weights, links=self.links, stateful=self.stateful,
                      batch_size=self.batch_size, gate_init=self.gate_init, chrono_max=self.chrono_max)
        return config


@keras.saving.register_keras_serializable(package="lm")
class FixedWindowLM(keras.Model):
    """The fixed-window neural LM baseline: the previous `context` tokens -> concatenated embeddings -> tanh -> softmax.

    Args:
        vocab_size: number of tokens.
        context: how many previous tokens it sees (an n-gram model of order context + 1).
        embed_dim: embedding size per token.
        hidden: size of the tanh layer.
        dropout: dropout on the concatenated embeddings and the hidden layer.

    Example:
        >>> model = FixedWindowLM(vocab_size=100, context=4)
        >>> logits = model(ops.zeros((8, 4), "int32"))  # (8, 100)
    """

    def __init__(self, vocab_size, context=4, embed_dim=128, hidden=512, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.context = int(vocab_size), int(context)
        self.embed_dim, self.hidden, self.dropout = int(embed_dim), int(hidden), float(dropout)
        self.embedding = layers.Embedding(self.vocab_size, self.embed_dim, name="embedding")
        self.flatten = layers.Reshape((self.context * self.embed_dim,))
        self.drop = layers.Dropout(self.dropout)
        self.hidden_layer = layers.Dense(self.hidden, activation="tanh", name="hidden")
        self.head = layers.Dense(self.vocab_size, name="head")

    def call(self, context_ids, training=None):
        x = self.flatten(self.embedding(context_ids))  # (batch, context * embed)
        x = self.drop(self.hidden_layer(self.drop(x, training=training)), training=training)  # (batch, hidden)
        return self.head(x)  # (batch, vocab)

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, context=self.context, embed_dim=self.embed_dim,
                      hidden=self.hidden, dropout=self.dropout)
        return config
