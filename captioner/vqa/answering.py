"""Answering questions about an image, and VQA accuracy of a model on a dataset split."""

from __future__ import annotations

import numpy as np
from keras import ops

from captioner.vqa.data import _Batches, _check_int, _prepare, encode_questions
from captioner.vqa.model import MAX_QUESTION_LENGTH, VQAModel
from lm.errors import UserError
from lm.text import tokenize


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
