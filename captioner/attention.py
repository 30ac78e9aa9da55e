"""Additive (soft) attention over an image grid, as in Show, Attend and Tell (Xu et al., 2015)."""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="captioner")
class SoftAttention(layers.Layer):
    """score_p = w . tanh(W_f f_p + W_h h); alpha = softmax_p(score); context = sum_p alpha_p f_p.

    The feature projection `W_f f` does not depend on the time step: `project_features` computes it once per image
    and the decoder passes it to every step.

    Args:
        attention_dim: size of the hidden layer of the scoring MLP.

    Example:
        >>> attention = SoftAttention(16)
        >>> feats = ops.ones((2, 49, 32)); keys = attention.project_features(feats)
        >>> context, alpha = attention(feats, keys, ops.zeros((2, 8)))  # (2, 32), (2, 49)
    """

    def __init__(self, attention_dim=256, **kwargs):
        super().__init__(**kwargs)
        self.attention_dim = int(attention_dim)
        self.feature_proj = layers.Dense(self.attention_dim, name="feature_proj")
        self.hidden_proj = layers.Dense(self.attention_dim, use_bias=False, name="hidden_proj")
        self.score = layers.Dense(1, name="score")

    def build(self, features_shape, keys_shape=None, hidden_shape=None):
        # A sublayer may be built already: `project_features` can run before the first call (as in the example).
        if not self.feature_proj.built:
            self.feature_proj.build(features_shape)
        if hidden_shape is not None and not self.hidden_proj.built:
            self.hidden_proj.build(hidden_shape)
        if not self.score.built:
            self.score.build(tuple(features_shape[:-1]) + (self.attention_dim,))
        self.built = True

    def project_features(self, features):
        """(batch, pixels, channels) -> (batch, pixels, attention_dim), once per image."""
        return self.feature_proj(features)

    def call(self, features, keys, hidden):
        return self.attend(features, keys, self.hidden_proj(hidden))

    def attend(self, features, keys, query):
        """`call` with the hidden projection `W_h h` (batch, attention_dim) already computed (the caption decoder
        fuses it with the other matmuls of h) -> context (batch, channels), alpha (batch, pixels)."""
        query = ops.expand_dims(query, 1)  # (batch, 1, attention_dim)
        scores = ops.squeeze(self.score(ops.tanh(keys + query)), -1)  # (batch, pixels)
        alpha = ops.softmax(scores, axis=-1)  # (batch, pixels)
        # A batched matmul, not sum(features * alpha): no (batch, pixels, channels) product to keep for backprop.
        context = ops.squeeze(ops.matmul(ops.expand_dims(alpha, 1), features), 1)  # (batch, channels)
        return context, alpha

    def get_config(self):
        return {**super().get_config(), "attention_dim": self.attention_dim}


def doubly_stochastic_penalty(alphas, mask):
    """Xu et al.'s regulariser: sum_p (1 - sum_t alpha_tp)^2, encouraging every pixel to be looked at once,
    normalised per token like the cross-entropy it is added to.

    Xu et al. add lambda * sum_p (...)^2 to the caption's *summed* negative log-likelihood; our loss is the mean
    over tokens, so each caption's penalty is divided by its number of tokens, and `alpha_c` means Xu's lambda.

    alphas (batch, time, pixels), mask (batch, time) of 0/1 -> scalar: sum over captions of penalty / sum of tokens.
    """
    coverage = ops.sum(alphas * ops.expand_dims(mask, -1), axis=1)  # (batch, pixels)
    per_caption = ops.sum(ops.square(1.0 - coverage), axis=-1)  # (batch,)
    return ops.sum(per_caption) / ops.maximum(ops.sum(mask), 1.0)  # per token, as the mean cross-entropy
