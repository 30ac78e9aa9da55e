"""`train_vqa`: VQA data -> answer list, vocabulary, decoded images -> Keras `fit` -> a model folder."""

from __future__ import annotations

import collections
import math
import os
import time

import keras
import numpy as np

from captioner.backbones import backbone_spec
from captioner.folders import model_files
from captioner.vqa.answering import _predict_logits, _score
from captioner.vqa.data import _Batches, _check_int, _prepare, _prepare_cached, answer_list, answer_targets
from captioner.vqa.model import MAX_QUESTION_LENGTH, MODES, build_vqa_model
from lm.checkpoint import BestEpoch, check_out_dir
from lm.data import EpochOrder
from lm.errors import UserError
from lm.text import tokenize
from lm.vocab import Vocabulary


def _questions_per_image(counts, largest: int = 8, waste: float = 0.1) -> int:
    """The largest Q <= `largest` whose groups leave at most `waste` of the slots empty, for images with `counts`
    questions each (else the Q that wastes least).

    Example:
        >>> _questions_per_image([10] * 50), _questions_per_image([8, 8, 7, 6])
        (5, 8)
    """
    counts = np.asarray(counts, np.int64)
    shares = {}
    for q in range(min(largest, max(1, int(counts.max()))), 0, -1):
        slots = int(np.sum(-(-counts // q) * q))  # ceil(n / q) groups of q slots per image
        shares[q] = 1 - counts.sum() / slots
        if shares[q] <= waste:
            return q
    return min(shares, key=lambda q: (shares[q], -q))


def train_vqa(data_path, out_dir, image_root=None, annotations=None, backbone: str = "small_cnn", weights=None,
              image_size=None, trainable_blocks: int = 0, epochs: int = 20, batch_size: int = 128, lr: float = 2e-3,
              embed: int = 64, units: int = 128, attention_dim: int | None = None, hops: int = 2,
              cell_type: str = "lstm", dropout: float = 0.1, mode: str = "attention", top_answers: int = 1000,
              train_split: str = "train", val_split: str = "val", seed: int = 0, verbose: int = 1,
              time_budget: float | None = None, max_steps: int | None = None,
              classifier_units: int | None = None, questions_per_image: int | None = None,
              offsets: bool = True, resume: bool = False, overwrite: bool = False, cache_dir=None) -> dict:
    """Trains a VQA model with Keras `fit` and writes a model folder (captioner.folders).

    A frozen pretrained backbone runs once per image into the feature cache (captioner.features; ``cache_dir``,
    default its shared root), and training reads grids from it; otherwise images are decoded once into memory
    (uint8). Each epoch ends with VQA accuracy on `val_split`; the best epoch's
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
            largest number up to 8 that leaves at most a tenth of the question slots empty (padding, computed and
            thrown away: 10 questions an image in groups of 8 would waste 37% of every step, in groups of 5 none).
        embed, units, attention_dim, hops, cell_type, dropout, mode, classifier_units, offsets: VQAModel
            arguments (attention_dim defaults to units).
        top_answers: K, the answer list size (all answers when there are fewer).
        train_split, val_split: split names in the data; a missing validation split is allowed.
        seed: seeds Keras, NumPy and the batch order.
        verbose: 0 silent, 1 progress bars and one line per epoch.
        time_budget: seconds; training stops after the epoch in which they run out.
        max_steps: stop after this many batches in all (smoke tests); None = whole epochs.
        cache_dir: root of the feature caches (default captioner.features.default_cache_root()).
        resume, overwrite: an `out_dir` holding a model is refused unless `overwrite` (train anew) or `resume`
            (continue a killed run from its last finished epoch; lm.checkpoint.check_out_dir).

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

    if mode not in MODES:
        raise UserError(f"unknown VQA mode {mode!r}; choose one of: {', '.join(MODES)}")
    epochs = _check_int("epochs", epochs, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    hops = _check_int("hops", hops, 1)
    top_answers = _check_int("top_answers", top_answers, 1)
    if not lr or lr <= 0:
        raise UserError(f"lr must be positive, got {lr!r}")
    resuming = check_out_dir(out_dir, resume, overwrite)
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

    feature_cache = None
    if mode != "blind" and spec.family != "scratch" and trainable_blocks == 0:
        # A frozen backbone runs once per image, into the feature cache captions share (captioner.features); the
        # epochs then read grids and never call it.
        from captioner.features import build_feature_cache
        cache = build_feature_cache(model.backbone, [e.image for e in train + val], backbone_name=backbone,
                                    image_size=size, policy=spec.policy, cache_root=cache_dir, verbose=verbose)
        feature_cache = cache.folder

        def prepare(examples, what):
            return _prepare_cached(examples, vocab, max_length, cache)
    else:
        def prepare(examples, what):
            return _prepare(examples, vocab, max_length, size, spec.policy, verbose, what)

    tr_images, tr_index, tr_questions, train, skipped = prepare(train, "training")
    if skipped:
        targets = [answer_targets(e.answers, index) for e in train]
    val_data = None
    if val:
        v_images, v_index, v_questions, val, v_skipped = prepare(val, "validation")
        skipped += v_skipped
        val_data = (v_images, v_index, v_questions, val)

    if questions_per_image is None:
        questions_per_image = _questions_per_image(list(collections.Counter(tr_index.tolist()).values()))
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

    def val_accuracy(logs):
        if val_data is None:
            return None  # no validation split: keep the epoch of lowest training loss
        images, index, questions, examples = val_data
        logits = _predict_logits(model, images, index, questions, max(per_batch, 16), questions_per_image)
        return _score([answers[i] for i in np.argmax(logits, -1)], examples)["accuracy"]

    def folder_files():  # from an uncompiled twin: a weights file without Adam's moments, a third the size
        export.set_weights(model.get_weights())
        return model_files("vqa", export, vocab, extra, answers)

    best = BestEpoch(out_dir, folder_files, score=val_accuracy,
                     monitor="val_accuracy" if val_data is not None else "loss",
                     mode="max" if val_data is not None else "min", time_budget=time_budget, start=start,
                     resume_model=model, resume_optimizer=model.optimizer, verbose=verbose)
    done = best.resume() if resuming else 0
    fit_kwargs = {}
    fit_epochs = epochs
    if max_steps is not None:  # a few batches only: one short "epoch"
        fit_kwargs["steps_per_epoch"] = min(len(data), int(max_steps))
        fit_epochs = max(1, math.ceil(int(max_steps) / fit_kwargs["steps_per_epoch"]))
    fit_start = time.perf_counter()
    if done < fit_epochs and not best.stopped:
        model.fit(data, epochs=fit_epochs, initial_epoch=done, verbose=verbose, callbacks=[EpochOrder(data), best],
                  **fit_kwargs)
    best.finish()
    fit_seconds = time.perf_counter() - fit_start
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
        "feature_cache": feature_cache,
    }
