"""The caption decoder: Show, Attend and Tell on `lm.recurrent` (or Show and Tell behind `attention=False`).

Per step t (attention):
    alpha_t, z_t = SoftAttention(features, h_{t-1});  z_t *= sigmoid(W_g h_{t-1})       (gated context)
    h_t = cell([E y_{t-1}; z_t], h_{t-1})                                              (lm.recurrent cell)
    logits_t = W_o dropout(E y_{t-1} + L_h h_t + L_z z_t)                              (deep output)
h_0, c_0 = tanh(W mean_p(features)). The vocabulary projection W_o runs once, after the loop, on all steps.
Under teacher forcing (LSTM) the loop is fused (`_fused_loop`): the three products of h_{t-1} (attention query, gate,
recurrent term) are one matmul and the deep output runs for all steps after the loop; search uses the per-step path.
Logits are float32 even under mixed precision (bfloat16 compute).
Loss: masked cross-entropy + alpha_c * sum_p (1 - sum_t alpha_tp)^2 (doubly stochastic attention).

Without attention (Show and Tell), the projected mean feature is the first input of the sequence and the words
follow; the whole sequence then runs on the fused Keras layer.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from captioner.attention import SoftAttention, doubly_stochastic_penalty
from lm.recurrent import RecurrentStack, state_count
from lm.sampling import beam_search, greedy_search, sample_search
from lm.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID


@keras.saving.register_keras_serializable(package="captioner")
class CaptionDecoder(keras.Model):
    """Image grid + previous words -> next-word logits, and search over captions.

    Args:
        vocab_size: caption vocabulary size (lm.vocab specials at 0..3).
        feature_dim: channels C of the grid (batch, pixels, C).
        embed_dim: word embedding size.
        units: recurrent units.
        attention_dim: hidden size of the attention MLP.
        cell_type: "lstm" or "gru" (or "rnn"), from lm.recurrent.
        dropout: dropout on embeddings and on the deep output.
        attention: False gives the Show and Tell baseline (no attention).
        alpha_c: weight of the doubly stochastic attention regulariser (0 = off).
        scheduled_sampling: probability of feeding a word sampled from the model's own previous prediction (never
            a special token) instead of the true word while training (Bengio et al., 2015); 0 = teacher forcing.

    Example:
        >>> decoder = CaptionDecoder(vocab_size=50, feature_dim=32, units=64)
        >>> logits = decoder((ops.zeros((2, 49, 32)), ops.ones((2, 7), "int32")))  # (2, 7, 50)
        >>> words, scores, alphas = decoder.generate(ops.zeros((2, 49, 32)), beam_width=3, max_length=10)
    """

    def __init__(self, vocab_size, feature_dim, embed_dim=256, units=512, attention_dim=256, cell_type="lstm",
                 dropout=0.3, attention=True, alpha_c=1.0, scheduled_sampling=0.0, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.feature_dim = int(vocab_size), int(feature_dim)
        self.embed_dim, self.units, self.attention_dim = int(embed_dim), int(units), int(attention_dim)
        self.cell_type, self.dropout = cell_type, float(dropout)
        self.use_attention, self.alpha_c = bool(attention), float(alpha_c)
        self.scheduled_sampling = float(scheduled_sampling)
        self.embedding = layers.Embedding(self.vocab_size, self.embed_dim, name="embedding")
        self.stack = RecurrentStack(cell_type, self.units, 1, name="stack")
        self.drop = layers.Dropout(self.dropout)
        self.out_hidden = layers.Dense(self.embed_dim, name="out_hidden")
        self.head = layers.Dense(self.vocab_size, name="head")
        if self.use_attention:
            self.attention = SoftAttention(self.attention_dim, name="attention")
            self.gate = layers.Dense(self.feature_dim, activation="sigmoid", name="gate")
            self.out_context = layers.Dense(self.embed_dim, use_bias=False, name="out_context")
            self.init_states = [layers.Dense(self.units, activation="tanh", name=f"init_{i}")
                                for i in range(state_count(cell_type))]
        else:
            self.image_embedding = layers.Dense(self.embed_dim, name="image_embedding")
        self._sampling_seed = keras.random.SeedGenerator(0)
        no_specials = np.zeros((self.vocab_size,), "float32")
        no_specials[[PAD_ID, UNK_ID, BOS_ID, EOS_ID]] = -1e9  # scheduled sampling feeds words only
        self._no_specials = no_specials

    def build(self, input_shape):
        features_shape, tokens_shape = input_shape
        batch, pixels = features_shape[0], features_shape[1]
        self.embedding.build(tokens_shape)
        self.out_hidden.build((batch, self.units))
        self.head.build((batch, self.embed_dim))
        if self.use_attention:
            self.attention.build(features_shape, None, (batch, self.units))
            self.gate.build((batch, self.units))
            self.out_context.build((batch, self.feature_dim))
            for dense in self.init_states:
                dense.build((batch, self.feature_dim))
            self.stack.build((batch, None, self.embed_dim + self.feature_dim))
        else:
            self.image_embedding.build((batch, self.feature_dim))
            self.stack.build((batch, None, self.embed_dim))
        self.built = True

    # ---- one step (shared by teacher forcing and search) -----------------------------------------------------
    def initial_states(self, features):
        """features (batch, pixels, C) -> states for lm.recurrent's step ([[h, c]] for LSTM)."""
        if self.use_attention:
            mean = ops.mean(features, axis=1)  # (batch, C)
            return [[dense(mean) for dense in self.init_states]]
        image = self.image_embedding(ops.mean(features, axis=1))  # (batch, embed)
        _, states = self.stack.step(image, self.stack.initial_states(ops.shape(features)[0], features.dtype))
        return states

    def _attend_step(self, word_embedding, states, features, keys, training=False):
        """-> deep output (batch, embed), new states, alpha (batch, pixels)."""
        hidden = states[0][0]
        context, alpha = self.attention(features, keys, hidden)  # (batch, C), (batch, pixels)
        context = context * self.gate(hidden)
        output, states = self.stack.step(ops.concatenate([word_embedding, context], axis=-1), states, training)
        deep = word_embedding + self.out_hidden(output) + self.out_context(context)
        return deep, states, alpha

    # ---- teacher forcing -------------------------------------------------------------------------------------
    def call(self, inputs, training=None, return_attention=False):
        """(features (batch, pixels, C), tokens_in (batch, T)) -> logits (batch, T, vocab) [, alphas]."""
        features, tokens = inputs
        mask = ops.cast(ops.not_equal(tokens, 0), "float32")  # (batch, T); <pad> = 0
        embedded = self.drop(self.embedding(tokens), training=training)  # (batch, T, embed)
        if not self.use_attention:
            image = self.image_embedding(ops.mean(features, axis=1))  # (batch, embed)
            sequence = ops.concatenate([ops.expand_dims(image, 1), embedded], axis=1)  # (batch, T + 1, embed)
            outputs = self.stack(sequence, training=training)[:, 1:]  # (batch, T, units)
            logits = self.head(self.drop(embedded + self.out_hidden(outputs), training=training))
            logits = ops.cast(logits, "float32")  # softmax and loss in float32 under mixed precision
            if return_attention:
                pixels = features.shape[1]
                return logits, ops.zeros((ops.shape(tokens)[0], tokens.shape[1], pixels))
            return logits
        keys = self.attention.project_features(features)  # (batch, pixels, attention_dim), once
        states = self.initial_states(features)
        use_own = training and self.scheduled_sampling > 0
        if not use_own and self._can_fuse():
            deep, alphas = self._fused_loop(embedded, features, keys, states)
            return self._finish(deep, alphas, mask, training, return_attention)
        deeps, alphas = [], []
        for t in range(tokens.shape[1]):
            word = embedded[:, t]
            if use_own and t > 0:
                # A word *sampled* from the model's previous prediction (not its argmax), never a special token.
                logits = ops.cast(self.head(deeps[-1]), "float32") + self._no_specials  # (batch, vocab)
                previous = ops.cast(ops.squeeze(keras.random.categorical(logits, 1, seed=self._sampling_seed), -1),
                                    "int32")  # (batch,)
                coin = keras.random.uniform((ops.shape(tokens)[0], 1), seed=self._sampling_seed)
                feed = ops.logical_and(coin < self.scheduled_sampling,
                                       ops.expand_dims(ops.not_equal(tokens[:, t], PAD_ID), -1))  # (batch, 1)
                word = ops.where(feed, self.embedding(previous), word)
            deep, states, alpha = self._attend_step(word, states, features, keys, training)
            deeps.append(deep)
            alphas.append(alpha)
        deep = ops.stack(deeps, axis=1)  # (batch, T, embed)
        alphas = ops.stack(alphas, axis=1)  # (batch, T, pixels)
        return self._finish(deep, alphas, mask, training, return_attention)

    def _finish(self, deep, alphas, mask, training, return_attention):
        """Deep output (batch, T, embed) -> float32 logits (batch, T, vocab), the attention regulariser."""
        logits = self.head(self.drop(deep, training=training))  # one vocabulary projection for all steps
        logits = ops.cast(logits, "float32")  # softmax and loss in float32 under mixed precision
        alphas = ops.cast(alphas, "float32")
        if self.alpha_c > 0:
            self.add_loss(self.alpha_c * doubly_stochastic_penalty(alphas, mask))
        return (logits, alphas) if return_attention else logits

    # ---- the teacher-forced loop with time-invariant work hoisted out (speed; same numbers) -------------------
    # Switches for benchmarks and tests, not part of the config. Precomputing the word part of the cell input for all
    # steps is exact too, but measured slower on CPU (XLA, batch 32: 0.6-0.7x) together with the other two hoists,
    # so it is off until a GPU measurement says otherwise (scripts/bench_gpu.py --hoist-words).
    fused_loop = True
    hoist_word_projection = False

    def _can_fuse(self) -> bool:
        cell = self.stack.cells[0]
        return (self.fused_loop and self.cell_type == "lstm" and self.stack.num_layers == 1 and cell.use_bias
                and cell.dropout == 0 and cell.recurrent_dropout == 0 and self.gate.use_bias)

    def _fused_loop(self, embedded, features, keys, states):
        """The attention LSTM over all T steps, as looping `_attend_step` computes it (same weights, equal up to float
        rounding; tests check it), with the work that does not need step t's hidden state moved out of the loop:
          * one matmul per step for everything h_{t-1} feeds: [attention query | gate | recurrent term];
          * the deep output's L_h h_t + L_z z_t for all steps in two matmuls after the loop;
          * with `hoist_word_projection`, also the word rows of the cell kernel, E y_{t-1} @ W_x[:embed] + b, for all
            steps in one matmul (x_t @ W_x = word_t @ W_x[:embed] + context_t @ W_x[embed:]).
        embedded (batch, T, embed), features (batch, pixels, C), keys (batch, pixels, A) -> deep (batch, T, embed),
        alphas (batch, T, pixels).
        """
        cell = self.stack.cells[0]
        embed, att, channels = self.embed_dim, self.attention_dim, self.feature_dim
        kernel = cell.kernel  # (embed + C, 4 units): rows for [word; context]
        hoist = self.hoist_word_projection
        if hoist:
            words = ops.matmul(embedded, kernel[:embed]) + cell.bias  # (batch, T, 4 units)
            words = ops.unstack(words, axis=1)  # T x (batch, 4 units): one split; its gradient is one concatenation
        context_kernel = kernel[embed:]  # (C, 4 units)
        fused = ops.concatenate([self.attention.hidden_proj.kernel, self.gate.kernel, cell.recurrent_kernel],
                                axis=1)  # (units, A + C + 4 units)
        h, c = states[0]  # (batch, units) each
        hs, contexts, alphas = [], [], []
        for t in range(embedded.shape[1]):
            projected = ops.matmul(h, fused)  # (batch, A + C + 4 units)
            query, gate, recurrent = projected[:, :att], projected[:, att: att + channels], projected[:, att + channels:]
            context, alpha = self.attention.attend(features, keys, query)  # (batch, C), (batch, pixels)
            context = context * self.gate.activation(gate + self.gate.bias)
            if hoist:
                z = words[t] + ops.matmul(context, context_kernel) + recurrent  # (batch, 4 units): gates i f c o
            else:
                x = ops.concatenate([embedded[:, t], context], axis=-1)  # (batch, embed + C), as the cell sees it
                z = ops.matmul(x, kernel) + cell.bias + recurrent
            z_i, z_f, z_c, z_o = ops.split(z, 4, axis=-1)
            c = cell.recurrent_activation(z_f) * c + cell.recurrent_activation(z_i) * cell.activation(z_c)
            h = cell.recurrent_activation(z_o) * cell.activation(c)
            hs.append(h)
            contexts.append(context)
            alphas.append(alpha)
        hs, contexts = ops.stack(hs, axis=1), ops.stack(contexts, axis=1)  # (batch, T, units), (batch, T, C)
        deep = embedded + self.out_hidden(hs) + self.out_context(contexts)  # (batch, T, embed)
        return deep, ops.stack(alphas, axis=1)

    # ---- search ----------------------------------------------------------------------------------------------
    def _step_fn(self):
        n = state_count(self.cell_type)
        banned = np.zeros((self.vocab_size,), "float32")
        banned[[PAD_ID, BOS_ID]] = -1e9
        banned = ops.convert_to_tensor(banned)

        def step(tokens, flat_states, static):
            states = [list(flat_states[:n])]
            word = self.embedding(tokens)  # (rows, embed)
            if self.use_attention:
                features, keys = static
                deep, states, alpha = self._attend_step(word, states, features, keys)
            else:
                output, states = self.stack.step(word, states)
                deep = word + self.out_hidden(output)
                alpha = ops.zeros((ops.shape(tokens)[0], static[0].shape[1]))
            logits = ops.cast(self.head(deep), "float32")  # (rows, vocab)
            # <pad> (0) and <bos> (2) are never words of a caption: search must not pick them.
            logits = logits + banned
            log_probs = ops.log_softmax(logits, axis=-1)  # (rows, vocab)
            return log_probs, list(states[0]), alpha
        return step

    def generate(self, features, beam_width=1, max_length=20, method=None, temperature=1.0, length_penalty=1.0,
                 seed=None, start_id=BOS_ID, end_id=EOS_ID, early_exit=True, min_length=0, block_repeats=0,
                 num_captions=1):
        """Captions for a batch of grids -> (words (batch, max_length), scores (batch,), alphas (batch, T, pixels)).

        method: "beam" (default when beam_width > 1), "greedy" (default for width 1) or "sample".
        min_length, block_repeats, num_captions: see lm.sampling.beam_search (num_captions > 1: beam only, and
        the outputs get an axis of num_captions after the batch).
        """
        method = method or ("beam" if beam_width > 1 else "greedy")
        batch = features.shape[0] if features.shape[0] is not None else ops.shape(features)[0]
        states = self.initial_states(features)[0]
        static = [features, self.attention.project_features(features)] if self.use_attention else [features]
        step = self._step_fn()
        if method == "beam":
            return beam_search(step, states, static, batch, beam_width, max_length, start_id, end_id,
                               length_penalty, early_exit=early_exit, min_length=min_length,
                               block_repeats=block_repeats, num_captions=num_captions)
        if num_captions != 1:
            raise ValueError("num_captions > 1 needs beam search (beam_width >= num_captions)")
        if method == "greedy":
            return greedy_search(step, states, static, batch, max_length, start_id, end_id, early_exit=early_exit,
                                 length_penalty=length_penalty, min_length=min_length, block_repeats=block_repeats)
        if method == "sample":
            return sample_search(step, states, static, batch, max_length, start_id, end_id, temperature, seed,
                                 length_penalty=length_penalty)
        raise ValueError(f"unknown search method {method!r}")

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, feature_dim=self.feature_dim, embed_dim=self.embed_dim,
                      units=self.units, attention_dim=self.attention_dim, cell_type=self.cell_type,
                      dropout=self.dropout, attention=self.use_attention, alpha_c=self.alpha_c,
                      scheduled_sampling=self.scheduled_sampling)
        return config
