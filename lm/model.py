"""Neural language models: the recurrent `LanguageModel` and the fixed-window baseline (Bengio et al., 2003)."""

from __future__ import annotations

import keras
from keras import layers, ops

from lm.accel import carried_state_variable, read_state, write_state, zero_state
from lm.recurrent import RecurrentStack
from lm.regularizers import EmbeddingDropout, LockedDropout

# LanguageModel's AWD-LSTM constructor arguments (lm.regularizers), all 0 = off.
REGULARIZER_ARGS = ("dropout_input", "dropout_hidden", "dropout_output", "dropout_embedding", "weight_drop", "ar",
                    "tar")


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
        dropout_input, dropout_hidden, dropout_output: locked (variational) dropout, one mask per sequence shared
            over time (lm.regularizers.LockedDropout), on the embedded inputs, between recurrent layers and on the
            last layer's output (AWD-LSTM's dropouti, dropouth, dropout); on top of `dropout`. About 1.02x the
            time of a training step (scripts/bench_awd.py).
        dropout_embedding: drops whole words (embedding rows) per batch, scaling the rest by 1/(1-p) (AWD-LSTM's
            dropoute; lm.regularizers.EmbeddingDropout). About 1.03x a training step.
        weight_drop: DropConnect on the recurrent kernels (lm.recurrent.RecurrentStack): loses the fused kernel in
            training, see the cost there.
        ar, tar: activation regularisation alpha * mean(h^2) on the (dropped) last-layer outputs and temporal
            activation regularisation beta * mean((h_t - h_(t-1))^2) on the undropped ones, added as losses in
            training (AWD-LSTM's alpha, beta). About 1.01x a training step.
        All of these act in training only, are 0 (off) by default and change no weights: a model trained with them
        loads into, and scores exactly as, the plain model of the same shape.
        adaptive_cutoffs: () for a full softmax; else the adaptive softmax of Grave et al. (2017, "Efficient
            softmax approximation for GPUs"): ids below the first cutoff (specials and the most frequent words, as
            the vocabulary orders them) and one entry per tail cluster form the head; cluster k (ids from cutoff k
            to the next cutoff or the vocabulary's end) is scored through a projection to
            (embed_dim // tail_factor ** (k + 1)) dims. The output is the exact log-probability of every word,
            log p(head word) or log p(cluster) + log p(word | cluster), so everything that reads logits (loss,
            sampling, perplexity, export) works unchanged. On PTB (10k words, cutoff 2000, 256 dims) it does about
            a third of the full softmax's multiply-adds; measured on the 2-core CPU (TensorFlow, batch 128 x 35,
            1x256 tied LSTM, alternating steps in one process) a training step took 1.68 s against 1.84 s (1.09x),
            as the passes over the (batch, time, vocab) log-probabilities are memory-bound there.
        tail_factor: how much smaller each tail cluster's projection is than the one before.

    Example:
        >>> model = LanguageModel(vocab_size=100, units=32, num_layers=2, tie_weights=True)
        >>> logits = model(ops.zeros((4, 10), "int32"))  # (4, 10, 100)
    """

    def __init__(self, vocab_size, cell_type="lstm", units=256, num_layers=1, embed_dim=None, dropout=0.0,
                 tie_weights=False, links=None, stateful=False, batch_size=None, residual=None, dropout_input=0.0,
                 dropout_hidden=0.0, dropout_output=0.0, dropout_embedding=0.0, weight_drop=0.0, ar=0.0, tar=0.0,
                 adaptive_cutoffs=(), tail_factor=4, gate_init="keras", chrono_max=35.0, **kwargs):
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
        self.dropout_input, self.dropout_hidden = float(dropout_input), float(dropout_hidden)
        self.dropout_output, self.dropout_embedding = float(dropout_output), float(dropout_embedding)
        self.weight_drop, self.ar, self.tar = float(weight_drop), float(ar), float(tar)
        self.adaptive_cutoffs = tuple(int(c) for c in (adaptive_cutoffs or ()))
        self.tail_factor = int(tail_factor)
        bounds = (0,) + self.adaptive_cutoffs + (self.vocab_size,)
        if self.adaptive_cutoffs and (any(b >= e for b, e in zip(bounds, bounds[1:])) or self.tail_factor < 1):
            raise ValueError(f"adaptive_cutoffs must rise strictly inside (0, {self.vocab_size}), got "
                             f"{list(self.adaptive_cutoffs)}; tail_factor must be >= 1")
        self.embedding = layers.Embedding(self.vocab_size, self.embed_dim, name="embedding")
        self.input_dropout = layers.Dropout(self.dropout)
        self.stack = RecurrentStack(cell_type, self.units, self.num_layers, dropout=self.dropout, links=links,
                                    residual=residual, dropout_hidden=self.dropout_hidden,
                                    weight_drop=self.weight_drop, gate_init=gate_init, chrono_max=chrono_max,
                                    name="stack")
        self.links = self.stack.links
        self.gate_init, self.chrono_max = self.stack.gate_init, self.stack.chrono_max
        self.output_dropout = layers.Dropout(self.dropout)
        # AWD-LSTM's pieces exist only when asked for (no extra RNG state in a plain model's variables).
        self.word_dropout = (EmbeddingDropout(self.vocab_size, self.dropout_embedding, name="word_dropout")
                             if self.dropout_embedding else None)
        self.locked_input = LockedDropout(self.dropout_input, name="locked_input") if self.dropout_input else None
        self.locked_output = LockedDropout(self.dropout_output, name="locked_output") if self.dropout_output else None
        # Adaptive softmax tails: cluster k = ids [cutoffs[k], next cutoff): a projection, then its own output layer.
        self.tail_projections, self.tail_heads = [], []
        for k, (begin, end) in enumerate(zip(self.adaptive_cutoffs, self.adaptive_cutoffs[1:] + (self.vocab_size,))):
            dim = max(1, self.embed_dim // self.tail_factor ** (k + 1))
            self.tail_projections.append(layers.Dense(dim, use_bias=False, name=f"tail_projection_{k}"))
            self.tail_heads.append(layers.Dense(end - begin, name=f"tail_head_{k}"))
        if self.tie_weights:
            self.projection = (layers.Dense(self.embed_dim, name="projection")
                               if self.units != self.embed_dim else None)
            self.head = None
        else:
            self.projection = None
            self.head = layers.Dense(self.head_size, name="head")

    @property
    def head_size(self) -> int:
        """Outputs of the (first) softmax: the whole vocabulary, or the adaptive head (words + one per cluster)."""
        if not self.adaptive_cutoffs:
            return self.vocab_size
        return self.adaptive_cutoffs[0] + len(self.adaptive_cutoffs)

    def build(self, input_shape):
        batch, time = tuple(input_shape)[:2]
        self.embedding.build((batch, time))
        self.stack.build((batch, time, self.embed_dim))
        if self.projection is not None:
            self.projection.build((batch, time, self.units))
        if self.tie_weights:
            # Tied: the head's word rows are the embedding's; the cluster entries get their own vectors.
            self.output_bias = self.add_weight(shape=(self.head_size,), initializer="zeros", name="output_bias")
            if self.adaptive_cutoffs:
                self.cluster_vectors = self.add_weight(shape=(len(self.adaptive_cutoffs), self.embed_dim),
                                                       initializer="glorot_uniform", name="cluster_vectors")
        else:
            self.head.build((batch, time, self.units))
        width = self.embed_dim if self.tie_weights else self.units  # what the tail projections read
        for projection, head in zip(self.tail_projections, self.tail_heads):
            projection.build((batch, time, width))
            head.build((batch, time, projection.units))
        if self.stateful:
            n = 2 if self.stack.cell_type == "lstm" else 1
            # Float32 (batch, units) variables; batch-sharded / per-replica under --distribute (lm.accel).
            self.carried = [[carried_state_variable(self, self.batch_size, self.units, f"carried_{i}_{j}")
                             for j in range(n)] for i in range(self.num_layers)]
        self.built = True

    def logits_from_hidden(self, hidden):
        """(..., units) -> (..., vocab): the output layer, tied to the embedding or not (float32 logits under
        mixed precision too). With an adaptive softmax the "logits" are the exact log-probabilities."""
        if not self.tie_weights:
            head = ops.cast(self.head(hidden), "float32")  # (..., head_size)
        else:
            if self.projection is not None:
                hidden = self.projection(hidden)  # (..., embed), in the compute dtype (bfloat16 when mixed)
            weights = ops.cast(self.embedding.embeddings, hidden.dtype)  # (vocab, embed)
            if self.adaptive_cutoffs:
                vectors = ops.cast(self.cluster_vectors, hidden.dtype)  # (clusters, embed)
                weights = ops.concatenate([weights[: self.adaptive_cutoffs[0]], vectors], axis=0)  # (head, embed)
            head = ops.matmul(hidden, ops.transpose(weights)) + ops.cast(self.output_bias, hidden.dtype)
            head = ops.cast(head, "float32")  # (..., head_size)
        if not self.adaptive_cutoffs:
            return head
        head = ops.log_softmax(head, axis=-1)
        first = self.adaptive_cutoffs[0]
        parts = [head[..., :first]]  # (..., first): log p(word) of the head words
        for k, (projection, tail) in enumerate(zip(self.tail_projections, self.tail_heads)):
            words = ops.log_softmax(ops.cast(tail(projection(hidden)), "float32"), axis=-1)  # (..., cluster size)
            parts.append(head[..., first + k: first + k + 1] + words)  # log p(cluster) + log p(word | cluster)
        return ops.concatenate(parts, axis=-1)  # (..., vocab)

    def logits_and_states(self, tokens, states=None, training=False):
        """tokens (batch, time) int, states or None -> (logits (batch, time, vocab), new states per layer)."""
        x = self.embedding(tokens)  # (batch, time, embed)
        if self.word_dropout is not None:
            x = self.word_dropout(x, tokens, training=training)
        x = self.input_dropout(x, training=training)
        if self.locked_input is not None:
            x = self.locked_input(x, training=training)
        raw, new_states = self.stack(x, initial_states=states, training=training, return_states=True)
        hidden = self.output_dropout(raw, training=training)  # (batch, time, units)
        if self.locked_output is not None:
            hidden = self.locked_output(hidden, training=training)
        if training and (self.ar or self.tar):
            self.add_activation_losses(raw, hidden)
        return self.logits_from_hidden(hidden), new_states

    def activation_losses(self, raw, dropped):
        """AR and TAR (AWD-LSTM): alpha * mean(dropped^2) and beta * mean((raw_t - raw_(t-1))^2), float32 scalars.

        raw: the last layer's outputs (batch, time, units); dropped: the same after output dropout.
        """
        ar = self.ar * ops.mean(ops.square(ops.cast(dropped, "float32")))
        raw = ops.cast(raw, "float32")
        tar = self.tar * ops.mean(ops.square(raw[:, 1:] - raw[:, :-1]))
        return ar, tar

    def add_activation_losses(self, raw, dropped):
        ar, tar = self.activation_losses(raw, dropped)
        if self.ar:
            self.add_loss(ar)
        if self.tar:
            self.add_loss(tar)

    def hidden_and_states(self, tokens, states=None):
        """Inference: tokens (batch, time) int, states or None -> (hidden (batch, time, units), logits (batch, time,
        vocab), new states per layer). `hidden` is the top recurrent layer's output, what the output layer reads
        (before any projection); the neural cache (lm.cache) keys on it. Same numbers as `logits_and_states`."""
        hidden, new_states = self.stack(self.embedding(tokens), initial_states=states, training=False,
                                        return_states=True)
        return hidden, self.logits_from_hidden(hidden), new_states

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
        # The regularisers only when set: a plain model's config (and config.json) reads as before they existed.
        config.update({k: getattr(self, k) for k in REGULARIZER_ARGS if getattr(self, k)})
        if self.adaptive_cutoffs:  # only then, so folders without it keep their config
            config.update(adaptive_cutoffs=list(self.adaptive_cutoffs), tail_factor=self.tail_factor)
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
