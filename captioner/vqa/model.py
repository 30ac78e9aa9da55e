"""The VQA model: `VQAModel` (image grid + question encoder + stacked attention + answer classifier) and
`build_vqa_model`. See captioner.vqa for the equations."""

from __future__ import annotations

import warnings

import keras
import numpy as np
from keras import layers, ops

from captioner.attention import SoftAttention
from captioner.backbones import backbone_spec, build_backbone, grid_shape
from lm.errors import UserError
from lm.recurrent import RecurrentStack, check_cell_type

MODES = ("attention", "blind", "mean")
POSITIONS = ("coords", "learned", "none")
MAX_QUESTION_LENGTH = 40  # tokens; longer questions are cut (VQA v2's longest is 23 words)


@keras.saving.register_keras_serializable(package="captioner")
class VQAModel(keras.Model):
    """(images (batch, h, w, 3) RGB 0..255, question ids (batch, Tq) with <pad>=0) -> answer logits (batch, K).

    Args:
        num_answers: K, the size of the answer list.
        vocab_size: question vocabulary size (lm.vocab: <pad>=0, <unk>=1).
        backbone: a name from captioner.backbones.BACKBONES ("small_cnn" trains from scratch with the rest).
        image_size: backbone input (height, width) or an int for a square; default the backbone's.
        trainable_blocks: backbone blocks to fine-tune (0 = frozen; small_cnn always trains).
        embed_dim: word embedding size.
        units: recurrent units per direction, and the size of the joint space of u and v_I.
        attention_dim: hidden size k of each hop's attention MLP.
        hops: attention layers stacked (SAN uses 2); ignored by the baselines.
        cell_type: "lstm" or "gru" (or "rnn") for the bidirectional question encoder.
        dropout: dropout on word embeddings, on the image grid and before the answer layer.
        mode: "attention" (SAN), "blind" (question only) or "mean" (mean-pooled image + question, no attention).
        classifier_units: hidden layer of the answer classifier (0 = a single softmax layer, as in SAN).
        positions: how v_I knows where each cell is: "coords" (its (x, y) in -1..1 appended to the grid features),
            "learned" (a learned embedding per cell added to W_v grid) or "none".
        offsets: hops after the first also score each cell by where it is relative to the previous hop's glimpse:
            h_a = tanh(W_I v_I + W_Q u + W_R [xy_p - sum_p' p'_prev xy_p'; P p_prev]), its offset from the
            glimpse's centre and how much that hop looked at it, so "the object above the blue square" is one step.
        backbone_weights: "imagenet", a weights file or None, used when the model is first built; not part of the
            config, since a saved model carries its backbone's weights in its own weights file.

    Example:
        >>> model = VQAModel(num_answers=10, vocab_size=30, image_size=(64, 64), units=32, attention_dim=32)
        >>> logits, alpha = model((np.zeros((2, 64, 64, 3), "float32"), np.ones((2, 5), "int32")),
        ...                       return_attention=True)                    # (2, 10), (2, 64)
    """

    def __init__(self, num_answers, vocab_size, backbone="small_cnn", image_size=None, trainable_blocks=0,
                 embed_dim=128, units=256, attention_dim=256, hops=2, cell_type="lstm", dropout=0.2,
                 mode="attention", classifier_units=None, positions="coords", offsets=True, backbone_weights=None,
                 **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise UserError(f"unknown VQA mode {mode!r}; choose one of: {', '.join(MODES)}")
        if int(hops) < 1:
            raise UserError(f"hops must be at least 1 (SAN uses 2), got {hops}")
        if int(num_answers) < 1 or int(vocab_size) < 5:
            raise UserError(f"a VQA model needs answers and a question vocabulary (got {num_answers} answers, "
                            f"{vocab_size} words)")
        spec = backbone_spec(backbone)
        self.num_answers, self.vocab_size = int(num_answers), int(vocab_size)
        self.backbone_name = backbone
        if isinstance(image_size, (int, np.integer)):
            image_size = (int(image_size), int(image_size))
        self.image_size = tuple(int(s) for s in (image_size or spec.image_size))
        self.trainable_blocks = int(trainable_blocks)
        self.embed_dim, self.units, self.attention_dim = int(embed_dim), int(units), int(attention_dim)
        self.hops, self.cell_type = int(hops), check_cell_type(cell_type)
        self.dropout, self.mode = float(dropout), mode
        self.classifier_units = self.units if classifier_units is None else int(classifier_units)
        if positions not in POSITIONS:
            raise UserError(f"unknown positions {positions!r}; choose one of: {', '.join(POSITIONS)}")
        self.positions = positions
        self.offsets = bool(offsets)
        self.grid = grid_shape(backbone, self.image_size)  # (h', w', C)
        self.pixels = self.grid[0] * self.grid[1]

        # question encoder
        self.embedding = layers.Embedding(self.vocab_size, self.embed_dim, name="embedding")
        self.encoder = RecurrentStack(self.cell_type, self.units, 1, bidirectional=True, name="question_encoder")
        self.question_proj = layers.Dense(self.units, activation="tanh", name="question_proj")
        self.drop = layers.Dropout(self.dropout)
        # image
        self.backbone = None
        if mode != "blind":
            self.backbone = build_backbone(backbone, weights=backbone_weights, image_size=self.image_size,
                                           trainable_blocks=self.trainable_blocks)
            self.image_proj = layers.Dense(self.units, name="image_proj")
            if positions == "learned":
                self.position_embedding = layers.Embedding(self.pixels, self.units, name="position_embedding")
        self.attentions = []
        self.offset_projs = []
        if mode == "attention":
            self.attentions = [SoftAttention(self.attention_dim, name=f"hop_{k + 1}") for k in range(self.hops)]
            if self.offsets:
                self.offset_projs = [layers.Dense(self.attention_dim, use_bias=False, name=f"hop_{k + 1}_offsets")
                                     for k in range(1, self.hops)]
        # answer classifier
        self.hidden = layers.Dense(self.classifier_units, activation="relu", name="classifier_hidden") \
            if self.classifier_units > 0 else None
        self.classifier = layers.Dense(self.num_answers, name="classifier")

    def build(self, input_shape):
        images_shape, questions_shape = input_shape[0], input_shape[1]
        batch = images_shape[0]
        self.embedding.build(questions_shape)
        self.encoder.build((batch, None, self.embed_dim))
        self.question_proj.build((batch, 2 * self.units))
        if self.backbone is not None:
            extra = 2 if self.positions == "coords" else 0
            self.image_proj.build((batch, self.pixels, self.grid[2] + extra))
            if self.positions == "learned":
                self.position_embedding.build((self.pixels,))
        for attention in self.attentions:
            attention.build((batch, self.pixels, self.units), None, (batch, self.units))
        for proj in self.offset_projs:
            proj.build((batch, self.pixels, 3))
        if self.hidden is not None:
            self.hidden.build((batch, self.units))
        self.classifier.build((batch, self.classifier_units or self.units))
        self.built = True

    # ---- pieces ------------------------------------------------------------------------------------------------
    def encode_question(self, questions, training=None):
        """(batch, Tq) ids -> q (batch, units): final forward and backward states of the masked bidirectional RNN.

        An all-<pad> row (an empty question) gives the states of an empty sequence (zeros), projected.
        """
        mask = ops.not_equal(questions, 0)  # (batch, Tq)
        x = self.drop(self.embedding(questions), training=training)  # (batch, Tq, embed_dim)
        with warnings.catch_warnings():  # keras warns that RecurrentStack does not pass the mask on; it need not
            warnings.filterwarnings("ignore", message=".*does not support masking.*")
            _, states = self.encoder(x, mask=mask, training=training, return_states=True)
        states = states[0]  # lstm: [h_fw, c_fw, h_bw, c_bw]; gru / rnn: [h_fw, h_bw]
        half = len(states) // 2
        final = ops.concatenate([states[0], states[half]], axis=-1)  # (batch, 2 * units)
        return self.question_proj(final)  # (batch, units)

    def _coords(self) -> np.ndarray:
        """(1, pixels, 2): each grid cell's centre (x, y) in -1..1, row-major like the grid."""
        gh, gw = self.grid[0], self.grid[1]
        ys, xs = np.meshgrid((np.arange(gh) + 0.5) / gh * 2 - 1, (np.arange(gw) + 0.5) / gw * 2 - 1, indexing="ij")
        return np.stack([xs, ys], -1).reshape(1, -1, 2).astype(np.float32)

    def encode_image(self, images, training=None):
        """(batch, h, w, 3) RGB 0..255 -> v_I (batch, pixels, units). Grids already made by this frozen backbone
        (batch, pixels, C), e.g. from a feature cache (captioner.features), skip the backbone."""
        if len(images.shape) == 3:  # cached grids: the backbone is not called
            grid = ops.cast(images, self.compute_dtype)  # (batch, pixels, C)
        else:
            grid = self.backbone(images, training=training)  # (batch, pixels, C)
        grid = self.drop(grid, training=training)
        if self.positions == "coords":
            coords = ops.convert_to_tensor(self._coords(), dtype=grid.dtype)  # (1, pixels, 2)
            coords = ops.broadcast_to(coords, (ops.shape(grid)[0], self.pixels, 2))  # (batch, pixels, 2)
            grid = ops.concatenate([grid, coords], axis=-1)  # (batch, pixels, C + 2)
        v = self.image_proj(grid)  # (batch, pixels, units)
        if self.positions == "learned":
            v = v + ops.expand_dims(self.position_embedding(ops.arange(self.pixels)), 0)  # + (1, pixels, units)
        return ops.tanh(v)  # (batch, pixels, units)

    def call(self, inputs, training=None, return_attention=False):
        """inputs = (images (batch, h, w, 3), questions (batch, Tq)) -> logits (batch, K) [, attention (batch, P)].

        Several questions about one image: inputs = (images (M, h, w, 3), questions (B, Tq), image_index (B,)),
        where question b is about images[image_index[b]]; the backbone then runs once per image (training does
        this). The attention returned is the last hop's; the baselines do not attend and return uniform weights.
        """
        images, questions = inputs[0], inputs[1]
        image_index = inputs[2] if len(inputs) > 2 else None
        u = self.encode_question(questions, training=training)  # (batch, units)
        batch = ops.shape(u)[0]
        alpha = ops.full((batch, self.pixels), 1.0 / self.pixels, dtype=u.dtype)  # (batch, pixels)
        if self.mode != "blind":
            v = self.encode_image(images, training=training)  # (M, pixels, units)
            keys = [attention.project_features(v) for attention in self.attentions]  # (M, pixels, attention_dim)
            if image_index is not None:  # per image -> per question, after the per-image work
                index = ops.cast(image_index, "int32")
                v = ops.take(v, index, axis=0)  # (batch, pixels, units)
                keys = [ops.take(k, index, axis=0) for k in keys]  # (batch, pixels, attention_dim)
            if self.mode == "mean":
                u = u + ops.mean(v, axis=1)  # (batch, units)
            else:
                coords = ops.convert_to_tensor(self._coords(), dtype=v.dtype)  # (1, pixels, 2)
                for hop, (attention, k) in enumerate(zip(self.attentions, keys)):
                    if hop > 0 and self.offsets:  # each cell relative to the last glimpse: offset, and was it seen
                        seen = ops.expand_dims(alpha, -1)  # (batch, pixels, 1)
                        centre = ops.sum(seen * coords, axis=1, keepdims=True)  # (batch, 1, 2)
                        where = ops.concatenate([coords - centre, seen * self.pixels], axis=-1)  # (batch, P, 3)
                        k = k + self.offset_projs[hop - 1](where)  # (batch, pixels, attention_dim)
                    context, alpha = attention(v, k, u)  # (batch, units), (batch, pixels)
                    u = u + context  # (batch, units)
        h = self.hidden(u) if self.hidden is not None else u  # (batch, classifier_units)
        logits = self.classifier(self.drop(h, training=training))  # (batch, K)
        return (logits, alpha) if return_attention else logits

    def get_config(self):
        config = super().get_config()
        config.update(num_answers=self.num_answers, vocab_size=self.vocab_size, backbone=self.backbone_name,
                      image_size=list(self.image_size), trainable_blocks=self.trainable_blocks,
                      embed_dim=self.embed_dim, units=self.units, attention_dim=self.attention_dim, hops=self.hops,
                      cell_type=self.cell_type, dropout=self.dropout, mode=self.mode,
                      classifier_units=self.classifier_units, positions=self.positions, offsets=self.offsets)
        return config


def build_vqa_model(config: dict, backbone_weights=None) -> VQAModel:
    """Constructs a VQAModel from its config and builds every weight (`build` on symbolic shapes, no data).

    Args:
        config: constructor kwargs, e.g. `get_config()` or config.json's "model".
        backbone_weights: passed to the backbone when the model is new (not when loading a model folder).

    Example:
        >>> model = build_vqa_model({"num_answers": 5, "vocab_size": 20, "image_size": [64, 64], "units": 16})
        >>> model.load_weights("runs/vqa/model.weights.h5")
    """
    config = {k: v for k, v in dict(config).items() if k not in ("name", "trainable", "dtype")}
    model = VQAModel(**config, backbone_weights=backbone_weights)
    model.build(((None, *model.image_size, 3), (None, None)))
    return model
