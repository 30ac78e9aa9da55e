"""Visual question answering: image grid + question encoder + stacked attention (SAN) + answer classifier.

The model (`VQAModel`), after Yang et al., "Stacked Attention Networks for Image Question Answering" (CVPR 2016):

    v_I = tanh(W_v [grid; x; y])                  image grid from captioner.backbones -> (batch, pixels, units)
    q   = tanh(W_q [h_fw; h_bw])                  final states of a bidirectional lm.recurrent stack, (batch, units)
    u_0 = q;  for k = 1..hops:
        h_a = tanh(W_I v_I + W_Q u_{k-1} [+ W_R r_k])  captioner.attention.SoftAttention, one per hop
        p_k = softmax(W_P h_a)                    (batch, pixels)
        u_k = sum_p p_k v_I + u_{k-1}
    logits = W_2 dropout(relu(W_1 u_K))           (batch, num_answers)

Three additions to the paper, each a config switch: every grid cell knows its position (`positions`: its (x, y)
appended to its features), hops after the first also see each cell relative to the previous glimpse (`offsets`:
r_k = [xy_p - sum_p' p_{k-1} xy_p'; P p_{k-1}], so "the object above the blue square" takes one hop: look at the
square, then above it), and the answer classifier has one hidden layer (`classifier_units`; 0 gives the paper's
single softmax layer). On the synthetic scenes (6000 images, 24 epochs) the offsets lift relation questions from
80% to 87% (offset alone) and 94% (offset and "seen"), and overall test accuracy from 91.5% to 95.0% and 98.0%.
Baselines behind `mode`: "blind" (the question alone, no backbone at all) and "mean" (u = q + mean_p v_I: the image
without attention). Training feeds several questions per image so the backbone runs once per image (see `call`).

Answers: the top-K normalised answers (captioner.metrics.normalize_answer) of the training split. Targets are the
soft scores of the VQA literature, min(#annotators who gave the answer / 3, 1) per candidate when a question has 10
or more reference answers (VQA v1/v2), and 1 for every reference answer otherwise (scenes, your own JSONL); the
scores are normalised to sum to 1 and trained with softmax cross-entropy. Questions none of whose answers is among
the top K are left out of training (they are still scored, as wrong, in evaluation).

Example:
    >>> summary = train_vqa("scenes/vqa.jsonl", "runs/vqa", epochs=20)
    >>> loaded = captioner.model.load_model_dir("runs/vqa")
    >>> answer_questions(loaded, "scenes/images/00001.png", ["what color is the circle"])[0]["answer"]
    'red'
"""

from __future__ import annotations

import collections
import math
import os
import time
import warnings

import keras
import numpy as np
from keras import layers, ops

from captioner.attention import SoftAttention
from captioner.backbones import backbone_spec, build_backbone, grid_shape
from lm.errors import UserError
from lm.recurrent import RecurrentStack, check_cell_type
from lm.text import tokenize
from lm.vocab import Vocabulary

MODES = ("attention", "blind", "mean")
POSITIONS = ("coords", "learned", "none")
MAX_QUESTION_LENGTH = 40  # tokens; longer questions are cut (VQA v2's longest is 23 words)

__all__ = [
    "MODES",
    "VQAModel",
    "build_vqa_model",
    "answer_list",
    "answer_targets",
    "encode_questions",
    "train_vqa",
    "answer_questions",
    "evaluate_vqa",
]


# ================================================================================================= the model


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
        """(batch, h, w, 3) RGB 0..255 -> v_I (batch, pixels, units)."""
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


# ================================================================================================= answers and data


def answer_list(examples, k: int = 1000) -> list[str]:
    """The k most frequent normalised answers of the examples (each question votes once per distinct answer),
    most frequent first, ties alphabetical; all of them when there are fewer.

    Example:
        >>> answer_list([VQAExample("a.png", "q", ["Two", "2", "yes"], "train")], k=5)
        ['2', 'yes']
    """
    from captioner.metrics import normalize_answer

    counts: collections.Counter = collections.Counter()
    for e in examples:
        counts.update({normalize_answer(a) for a in e.answers} - {""})
    ranked = sorted(counts, key=lambda a: (-counts[a], a))
    return ranked[: max(1, int(k))] if k else ranked


def answer_targets(answers: list[str], index: dict[str, int]) -> dict[int, float]:
    """Soft target {answer id: score} of one question, normalised to sum to 1 (empty when no answer is known).

    With >= 10 references (VQA v1/v2) score = min(count / 3, 1) per distinct normalised answer; with fewer (one
    answer, or a few acceptable ones) every reference scores 1.

    Example:
        >>> answer_targets(["2"] * 2 + ["3"] * 8, {"2": 0, "3": 1})
        {0: 0.4, 1: 0.6}
    """
    from captioner.metrics import normalize_answer

    normalized = [normalize_answer(a) for a in answers]
    counts = collections.Counter(normalized)
    official = len(normalized) >= 10
    scores = {index[a]: (min(c / 3.0, 1.0) if official else 1.0) for a, c in counts.items() if a in index}
    total = sum(scores.values())
    return {i: s / total for i, s in sorted(scores.items())} if total > 0 else {}


def encode_questions(questions, vocab: Vocabulary, max_length: int) -> np.ndarray:
    """Question strings -> int32 (N, T) ids, T = min(longest, max_length) (at least 1), <pad>=0 on the right.

    An empty question becomes one <unk> so the encoder always sees a word; unseen words are <unk> too.

    Example:
        >>> encode_questions(["what color is it", ""], vocab, 10).shape
        (2, 4)
    """
    encoded = [vocab.encode(tokenize(str(q))[:max_length]) or [vocab.unk_id] for q in questions]
    width = max([1] + [len(ids) for ids in encoded])
    out = np.zeros((len(encoded), width), np.int32)  # (N, T)
    for i, ids in enumerate(encoded):
        out[i, : len(ids)] = ids
    return out


class _Batches(keras.utils.PyDataset):
    """Batches grouped by image, so the backbone runs once per image and not once per question.

    A batch holds `images_per_batch` units; a unit is one image and `questions_per_image` of its questions (an image
    with more questions makes several units, a short last group is padded with weight-0 slots). Each batch is
    ((images (M, h, w, 3) float 0..255, questions (M * Q, T), image_index (M * Q,)), targets (M * Q, K),
    sample weights (M * Q,)), or just ((images, questions, image_index),) without targets (for predict). Every
    question appears exactly once per epoch; shapes are fixed but for the last batch.

    Args:
        images: uint8 (N_images, h, w, 3), decoded once.
        image_index: (N,) which image each question is about.
        questions: int32 (N, T).
        targets: None (inputs only) or one {answer id: score} per question.
        num_answers: K, the width of the dense targets.
        images_per_batch, questions_per_image: M and Q.
        shuffle: new units and a new order every epoch.
        seed: of the shuffling.
    """

    def __init__(self, images, image_index, questions, targets=None, num_answers=0, images_per_batch=16,
                 questions_per_image=4, shuffle=False, seed=0):
        super().__init__()
        self.images, self.image_index, self.questions = images, np.asarray(image_index), questions
        self.targets, self.num_answers = targets, num_answers
        self.m, self.q = max(1, int(images_per_batch)), max(1, int(questions_per_image))
        self.shuffle = shuffle
        self.rng = np.random.default_rng(seed)
        self.by_image: dict[int, list[int]] = {}
        for row, image in enumerate(self.image_index):
            self.by_image.setdefault(int(image), []).append(row)
        self._make_units()

    def _make_units(self):
        units, slots = [], []
        for image, rows in self.by_image.items():
            rows = list(self.rng.permutation(rows)) if self.shuffle else rows
            for start in range(0, len(rows), self.q):
                group = rows[start: start + self.q]
                units.append(image)
                slots.append(group + [-1] * (self.q - len(group)))
        order = self.rng.permutation(len(units)) if self.shuffle else np.arange(len(units))
        self.units = np.asarray(units, np.int64)[order]  # (U,) image row per unit
        self.slots = np.asarray(slots, np.int64).reshape(-1, self.q)[order]  # (U, Q) question rows, -1 = padding

    def __len__(self):
        return math.ceil(len(self.units) / self.m)

    def __getitem__(self, i):
        units = self.units[i * self.m: (i + 1) * self.m]  # (M,)
        slots = self.slots[i * self.m: (i + 1) * self.m].reshape(-1)  # (M * Q,)
        images = self.images[units].astype(np.float32)  # (M, h, w, 3) 0..255
        questions = self.questions[np.maximum(slots, 0)]  # (M * Q, T)
        index = np.repeat(np.arange(len(units), dtype=np.int32), self.q)  # (M * Q,)
        if self.targets is None:
            return ((images, questions, index),)
        y = np.zeros((len(slots), self.num_answers), np.float32)  # (M * Q, K)
        for r, row in enumerate(slots):
            if row >= 0:
                for a, score in self.targets[row].items():
                    y[r, a] = score
        weights = (slots >= 0).astype(np.float32)  # (M * Q,)
        return (images, questions, index), y, weights

    def on_epoch_end(self):
        if self.shuffle:
            self._make_units()


def _decode_images(paths: list[str], size, policy: str, verbose: int, what: str):
    """Decodes each distinct image once (tqdm bar) -> (uint8 (N, h, w, 3), {path: row}, {path: error})."""
    from tqdm import tqdm

    from captioner.images import load_images

    unique = list(dict.fromkeys(paths))
    out = np.zeros((len(unique), *size, 3), np.uint8)  # (N, h, w, 3)
    errors = {}
    chunk = 64
    with tqdm(total=len(unique), desc=f"decoding {what} images", unit="img", disable=not verbose) as bar:
        for start in range(0, len(unique), chunk):
            part = unique[start: start + chunk]
            images, errs = load_images(part, size, policy)  # (n, h, w, 3) float 0..255
            out[start: start + len(part)] = np.clip(np.rint(images), 0, 255).astype(np.uint8)
            for path, e in zip(part, errs):
                if e:
                    errors[path] = e
            bar.update(len(part))
    return out, {p: i for i, p in enumerate(unique)}, errors


def _prepare(examples, vocab, max_length, size, policy, verbose, what):
    """Examples -> (uint8 images, image_index, questions (N, T), kept examples); drops unreadable images."""
    images, row_of, errors = _decode_images([e.image for e in examples], size, policy, verbose, what)
    if errors and verbose:
        first = next(iter(errors.values()))
        print(f"warning: {len(errors)} {what} image(s) could not be read and their questions are skipped "
              f"(first: {first})", flush=True)
    kept = [e for e in examples if e.image not in errors]
    if not kept:
        raise UserError(f"none of the {what} images could be read (first error: {next(iter(errors.values()))})")
    index = np.array([row_of[e.image] for e in kept], np.int64)
    questions = encode_questions([e.question for e in kept], vocab, max_length)
    return images, index, questions, kept, len(errors)


def _predict(model, images, index, questions, batch_size=64, return_attention=False):
    """Eager forward passes (batch_size questions at a time) -> logits (N, K) [and attention (N, P)]."""
    logits, alphas = [], []
    for start in range(0, len(questions), batch_size):
        rows = np.arange(start, min(start + batch_size, len(questions)))
        used, local = np.unique(index[rows], return_inverse=True)
        x = (images[used].astype(np.float32), questions[rows], local.astype(np.int32))  # (M, h, w, 3), (B, T), (B,)
        if return_attention:
            out, alpha = model(x, training=False, return_attention=True)
            alphas.append(ops.convert_to_numpy(alpha))
        else:
            out = model(x, training=False)
        logits.append(ops.convert_to_numpy(out))
    logits = np.concatenate(logits) if logits else np.zeros((0, model.num_answers), np.float32)
    return (logits, np.concatenate(alphas)) if return_attention else logits


def _score(predictions, examples) -> dict:
    """vqa_accuracy by answer type, plus accuracy by question type."""
    from captioner.metrics import vqa_accuracy

    result = vqa_accuracy(predictions, [e.answers for e in examples], [e.answer_type for e in examples])
    by_qtype = vqa_accuracy(predictions, [e.answers for e in examples], [e.question_type for e in examples])
    return {"accuracy": result["accuracy"], "per_type": {"answer_type": result["per_type"],
                                                         "question_type": by_qtype["per_type"]},
            "count": result["count"]}


def _predict_logits(model, images, index, questions, images_per_batch=16, questions_per_image=4) -> np.ndarray:
    """Keras' compiled predict over in-memory images (grouped by image), no progress bar -> logits (N, K)."""
    data = _Batches(images, index, questions, images_per_batch=images_per_batch,
                    questions_per_image=questions_per_image)
    out = model.predict(data, verbose=0)  # (slots, K)
    slots = data.slots.reshape(-1)  # (slots,)
    logits = np.zeros((len(questions), out.shape[-1]), np.float32)  # (N, K)
    logits[slots[slots >= 0]] = out[slots >= 0]
    return logits


class _BestEpoch(keras.callbacks.Callback):
    """Every epoch: validation VQA accuracy; saves the model folder when it improves and keeps those weights."""

    def __init__(self, val, answers, save, verbose, images_per_batch, questions_per_image):
        super().__init__()
        self.val, self.answers, self.save, self.verbose = val, answers, save, verbose
        self.grouping = (images_per_batch, questions_per_image)
        self.best, self.best_epoch, self.best_weights, self.history = -math.inf, 0, None, []

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        entry = {"epoch": epoch + 1, "loss": float(logs.get("loss", float("nan")))}
        if self.val is not None:
            images, index, questions, examples = self.val
            logits = _predict_logits(self.model, images, index, questions, *self.grouping)
            accuracy = _score([self.answers[i] for i in np.argmax(logits, -1)], examples)["accuracy"]
            entry["val_accuracy"] = accuracy
            logs["val_accuracy"] = accuracy
        else:
            accuracy = -float(entry["loss"])  # no validation split: keep the lowest training loss
        self.history.append(entry)
        improved = accuracy > self.best
        if improved:
            self.best, self.best_epoch = accuracy, epoch + 1
            self.best_weights = self.model.get_weights()
            self.save()
        if self.verbose and self.val is not None:
            print(f"epoch {epoch + 1}: val VQA accuracy {100 * entry['val_accuracy']:.2f}%"
                  f"{' (saved)' if improved else ''}", flush=True)


# ================================================================================================= training


def _save(out_dir, model, export, vocab, extra, answers):
    """Writes the model folder from an uncompiled twin (a weights file without Adam's moments, a third the size)."""
    from captioner.model import save_model_dir

    export.set_weights(model.get_weights())
    save_model_dir(out_dir, "vqa", export, vocab, extra=extra, answers=answers)


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UserError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def train_vqa(data_path, out_dir, image_root=None, annotations=None, backbone: str = "small_cnn", weights=None,
              image_size=None, trainable_blocks: int = 0, epochs: int = 20, batch_size: int = 128, lr: float = 2e-3,
              embed: int = 64, units: int = 128, attention_dim: int | None = None, hops: int = 2,
              cell_type: str = "lstm", dropout: float = 0.1, mode: str = "attention", top_answers: int = 1000,
              train_split: str = "train", val_split: str = "val", seed: int = 0, verbose: int = 1,
              time_budget: float | None = None, max_steps: int | None = None,
              classifier_units: int | None = None, questions_per_image: int | None = None,
              offsets: bool = True) -> dict:
    """Trains a VQA model with Keras `fit` and writes a model folder (captioner.model.save_model_dir).

    Images are decoded once into memory (uint8). Each epoch ends with VQA accuracy on `val_split`; the best epoch's
    weights are the ones written (without a validation split: the epoch of lowest training loss). The learning
    rate warms up linearly over the first tenth of the steps (at most an epoch), then follows a cosine decay to
    lr / 20 over the planned epochs; gradients are clipped to norm 5.

    Args:
        data_path: VQA v2 questions JSON, a VQA JSONL file, or a folder holding them (captioner.datasets).
        out_dir: model folder to write.
        image_root, annotations: see captioner.datasets.load_vqa_dataset.
        backbone, weights, image_size, trainable_blocks: the image encoder (captioner.backbones.build_backbone).
        epochs, batch_size, lr: optimisation (Adam); batch_size counts questions. The defaults are the scenes
            recipe (scripts/bench_vqa_scenes.py); for VQA v2 a larger model (units 512, embed 300) suits better.
        questions_per_image: a batch is batch_size // questions_per_image images with up to this many questions
            each, so the backbone runs once per image (an epoch still sees every question once); default: the
            median number of questions per training image, at most 8.
        embed, units, attention_dim, hops, cell_type, dropout, mode, classifier_units, offsets: VQAModel
            arguments (attention_dim defaults to units).
        top_answers: K, the answer list size (all answers when there are fewer).
        train_split, val_split: split names in the data; a missing validation split is allowed.
        seed: seeds Keras, NumPy and the batch order.
        verbose: 0 silent, 1 progress bars and one line per epoch.
        time_budget: seconds; training stops after the epoch in which they run out.
        max_steps: stop after this many batches in all (smoke tests); None = whole epochs.

    Returns:
        A summary dict: out_dir, mode, train/val questions, answers (K), answer_coverage (share of training
        questions with an answer in the list), vocab_size, epochs, best_epoch, val_accuracy, history,
        train_seconds, questions_per_second, skipped_images.

    Example:
        >>> s = train_vqa("scenes/vqa.jsonl", "runs/vqa", epochs=20, batch_size=64)
        >>> s["val_accuracy"]
        0.97
    """
    from captioner.datasets import load_vqa_dataset, split_examples
    from lm.training import TimeBudgetCallback

    if mode not in MODES:
        raise UserError(f"unknown VQA mode {mode!r}; choose one of: {', '.join(MODES)}")
    epochs = _check_int("epochs", epochs, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    hops = _check_int("hops", hops, 1)
    top_answers = _check_int("top_answers", top_answers, 1)
    if not lr or lr <= 0:
        raise UserError(f"lr must be positive, got {lr!r}")
    start = time.perf_counter()
    keras.utils.set_random_seed(int(seed))

    examples = load_vqa_dataset(data_path, image_root, annotations)
    train = [e for e in split_examples(examples, train_split) if e.answers]
    if not train:
        raise UserError(f"{data_path}: the '{train_split}' split has no answered questions to train on")
    val = [e for e in split_examples(examples, val_split, required=False) if e.answers] if val_split else []

    answers = answer_list(train, top_answers)
    index = {a: i for i, a in enumerate(answers)}
    targets = [answer_targets(e.answers, index) for e in train]
    coverage = sum(1 for t in targets if t) / len(train)
    keep = [i for i, t in enumerate(targets) if t]
    train, targets = [train[i] for i in keep], [targets[i] for i in keep]

    tokenized = [tokenize(e.question) for e in train]
    vocab = Vocabulary.build(tokenized)
    max_length = min(MAX_QUESTION_LENGTH, max(1, max(len(t) for t in tokenized)))
    spec = backbone_spec(backbone)
    model_config = dict(num_answers=len(answers), vocab_size=len(vocab), backbone=backbone, image_size=image_size,
                        trainable_blocks=trainable_blocks, embed_dim=embed, units=units,
                        attention_dim=attention_dim or units, hops=hops, cell_type=cell_type, dropout=dropout,
                        mode=mode, classifier_units=classifier_units, offsets=offsets)
    model = build_vqa_model(model_config, backbone_weights=weights)
    export = build_vqa_model(model_config)  # never compiled: its weights file holds no optimizer state
    size = model.image_size
    extra = {"max_question_length": max_length, "resize_policy": spec.policy}

    tr_images, tr_index, tr_questions, train, skipped = _prepare(train, vocab, max_length, size, spec.policy,
                                                                  verbose, "training")
    if skipped:
        targets = [answer_targets(e.answers, index) for e in train]
    val_data = None
    if val:
        v_images, v_index, v_questions, val, v_skipped = _prepare(val, vocab, max_length, size, spec.policy,
                                                                   verbose, "validation")
        skipped += v_skipped
        val_data = (v_images, v_index, v_questions, val)

    if questions_per_image is None:
        per_image = collections.Counter(tr_index.tolist()).values()
        questions_per_image = int(min(8, max(1, np.median(list(per_image)))))
    questions_per_image = _check_int("questions_per_image", questions_per_image, 1)
    per_batch = max(1, batch_size // questions_per_image)
    data = _Batches(tr_images, tr_index, tr_questions, targets, len(answers), per_batch, questions_per_image,
                    shuffle=True, seed=seed)
    steps = len(data) * epochs if max_steps is None else min(len(data) * epochs, int(max_steps))
    warmup = min(len(data), max(0, steps // 10))  # about one epoch of linear warm-up, then cosine decay
    schedule = keras.optimizers.schedules.CosineDecay(0.0 if warmup else float(lr), decay_steps=max(1, steps - warmup),
                                                      alpha=0.05, warmup_target=float(lr) if warmup else None,
                                                      warmup_steps=warmup)
    model.compile(optimizer=keras.optimizers.Adam(schedule, clipnorm=5.0),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True))

    os.makedirs(out_dir, exist_ok=True)
    best = _BestEpoch(val_data, answers,
                      lambda: _save(out_dir, model, export, vocab, extra, answers),
                      verbose, max(per_batch, 16), questions_per_image)
    callbacks = [best]
    if time_budget:
        callbacks.append(TimeBudgetCallback(float(time_budget), start))
    fit_kwargs = {}
    fit_epochs = epochs
    if max_steps is not None:  # a few batches only: one short "epoch"
        fit_kwargs["steps_per_epoch"] = min(len(data), int(max_steps))
        fit_epochs = max(1, math.ceil(int(max_steps) / fit_kwargs["steps_per_epoch"]))
    fit_start = time.perf_counter()
    model.fit(data, epochs=fit_epochs, verbose=verbose, callbacks=callbacks, **fit_kwargs)
    fit_seconds = time.perf_counter() - fit_start
    if best.best_weights is not None:
        model.set_weights(best.best_weights)
    from captioner.domain import _data_name, calibrate_model_dir
    if model.backbone is not None:  # domain.npz: what out-of-domain images are measured by (blind: no image)
        calibrate_model_dir(out_dir, tr_images, val_data[0] if val_data is not None else None,
                            trained_on=_data_name(data_path))
    seen = len(best.history) * len(train) if max_steps is None else min(len(train), int(max_steps) * batch_size)
    return {
        "out_dir": os.path.abspath(out_dir),
        "mode": mode,
        "backbone": backbone,
        "image_size": list(size),
        "train_questions": len(train),
        "val_questions": len(val),
        "answers": len(answers),
        "answer_coverage": round(coverage, 4),
        "vocab_size": len(vocab),
        "max_question_length": max_length,
        "parameters": int(model.count_params()),
        "epochs": len(best.history),
        "best_epoch": best.best_epoch,
        "val_accuracy": best.best if val_data is not None else None,
        "history": best.history,
        "train_seconds": round(time.perf_counter() - start, 1),
        "fit_seconds": round(fit_seconds, 1),
        "questions_per_second": round(seen / max(fit_seconds, 1e-9), 1),
        "questions_per_image": questions_per_image,
        "skipped_images": skipped,
    }


# ================================================================================================= answering


def _loaded_vqa(loaded):
    if getattr(loaded, "task", None) != "vqa" or not isinstance(loaded.model, VQAModel):
        raise UserError("this is not a VQA model folder; train one with `captioner train VQA_DATA --out DIR`")
    if not loaded.answers:
        raise UserError(f"{loaded.directory}: answers.json is missing or empty")
    return loaded


def answer_questions(loaded, image_source, questions: list[str]) -> list[dict]:
    """Answers questions about one image.

    Args:
        loaded: a VQA model folder from captioner.model.load_model_dir(..., task="vqa").
        image_source: path, bytes, or an (H, W, 3) array.
        questions: question strings; an empty one or one of unseen words still gets an answer (from <unk>).

    Returns:
        One dict per question: answer (str), score (softmax probability), attention (h', w') float array (the
        last hop's; uniform for the blind / mean baselines), unknown_words (the question's words the model never
        saw in training, read as <unk>).

    Raises:
        captioner.images.ImageError: the image cannot be read.

    Example:
        >>> loaded = load_model_dir(None, task="vqa")
        >>> answer_questions(loaded, "scene.png", ["what color is the circle"])[0]["answer"]
        'red'
    """
    from captioner.images import ImageError, load_images

    loaded = _loaded_vqa(loaded)
    if isinstance(questions, str):
        questions = [questions]
    questions = list(questions)
    if not questions:
        return []
    images, errors = load_images([image_source], loaded.image_size, loaded.resize_policy)  # (1, h, w, 3)
    if errors[0]:
        raise ImageError(errors[0])
    max_length = int(loaded.config.get("max_question_length", MAX_QUESTION_LENGTH))
    ids = encode_questions(questions, loaded.vocab, max_length)  # (Q, T)
    logits, alpha = _predict(loaded.model, images.astype(np.uint8), np.zeros(len(questions), np.int64), ids,
                             batch_size=64, return_attention=True)  # (Q, K), (Q, P)
    probs = _softmax(logits)
    gh, gw, _ = loaded.model.grid
    out = []
    for i in range(len(questions)):
        k = int(np.argmax(probs[i]))
        unknown = [w for w in tokenize(str(questions[i]))[:max_length] if w not in loaded.vocab]
        out.append({"answer": loaded.answers[k], "score": float(probs[i, k]),
                    "attention": alpha[i].reshape(gh, gw), "unknown_words": unknown})
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def evaluate_vqa(loaded, data_path, split: str = "test", image_root=None, annotations=None, batch_size: int = 64,
                 verbose: int = 0) -> dict:
    """VQA accuracy of a model on one split of a dataset (captioner.metrics.vqa_accuracy).

    Args:
        loaded: a VQA model folder (captioner.model.load_model_dir).
        data_path, image_root, annotations: the dataset (captioner.datasets.load_vqa_dataset).
        split: the split to score ("test", "val", "novel", "all", ...).
        batch_size: questions per forward pass.
        verbose: 1 shows a progress bar while decoding images.

    Returns:
        {"accuracy": 0..1, "per_type": {"answer_type": {...}, "question_type": {...}}, "count": questions scored,
        "skipped": questions whose image could not be read, "split": split}.

    Example:
        >>> evaluate_vqa(load_model_dir("runs/vqa"), "scenes/vqa.jsonl", split="test")["accuracy"]
        0.97
    """
    from captioner.datasets import load_vqa_dataset, split_examples

    loaded = _loaded_vqa(loaded)
    batch_size = _check_int("batch_size", batch_size, 1)
    examples = [e for e in split_examples(load_vqa_dataset(data_path, image_root, annotations), split) if e.answers]
    if not examples:
        raise UserError(f"{data_path}: no answered questions in split '{split}' to score")
    max_length = int(loaded.config.get("max_question_length", MAX_QUESTION_LENGTH))
    images, index, questions, kept, _ = _prepare(examples, loaded.vocab, max_length, loaded.image_size,
                                                 loaded.resize_policy, verbose, split)
    logits = _predict_logits(loaded.model, images, index, questions, max(1, batch_size // 4), 4)  # (N, K)
    predictions = [loaded.answers[i] for i in np.argmax(logits, -1)]
    result = _score(predictions, kept)
    result.update(skipped=len(examples) - len(kept), split=split)
    return result
