"""VQA data: the answer list, soft targets, question ids, images decoded once, and batches grouped by image."""

from __future__ import annotations

import collections
import math

import keras
import numpy as np

from lm.errors import UserError
from lm.text import tokenize
from lm.vocab import Vocabulary


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
        shuffle: new units and a new order every epoch (set_epoch).
        seed: of the shuffling.
    """

    def __init__(self, images, image_index, questions, targets=None, num_answers=0, images_per_batch=16,
                 questions_per_image=4, shuffle=False, seed=0):
        super().__init__()
        self.images, self.image_index, self.questions = images, np.asarray(image_index), questions
        self.targets, self.num_answers = targets, num_answers
        self.m, self.q = max(1, int(images_per_batch)), max(1, int(questions_per_image))
        self.shuffle, self.seed = shuffle, int(seed)
        self.by_image: dict[int, list[int]] = {}
        for row, image in enumerate(self.image_index):
            self.by_image.setdefault(int(image), []).append(row)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Makes the units and order of `epoch`: they depend only on (seed, epoch) (lm.data.EpochOrder), so a
        resumed run sees the batches the uninterrupted run would have seen."""
        self.rng = np.random.default_rng([self.seed, int(epoch)])
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


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UserError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def _prepare_cached(examples, vocab, max_length, cache):
    """Like ``_prepare`` over a feature cache (captioner.features) instead of decoded images: (grid rows
    (captioner.streaming.CachedGrids), image_index, questions (N, T), examples, 0)."""
    from captioner.streaming import CachedGrids

    index = cache.rows([e.image for e in examples])  # (N,) cache rows
    questions = encode_questions([e.question for e in examples], vocab, max_length)
    return CachedGrids(cache), index, questions, examples, 0
