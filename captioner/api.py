"""The Python API: caption images and answer questions about them in a notebook or a program.

    >>> from captioner import Captioner, VQA
    >>> captioner = Captioner.load()                    # no path: the bundled synthetic-scenes captioner
    >>> result = captioner.caption("scene.png")         # one image -> one result; a list -> a list
    >>> result.caption, result.score, result.out_of_domain
    ('a large red circle above a small blue square', -0.05, False)
    >>> VQA.load().ask("scene.png", "what color is the circle").answer
    'red'

Images may be paths, bytes, PIL images or arrays ((H, W, 3) RGB, 0..255). A list of images is captioned in batches
(one model call per batch). Every result says whether the image looks like the model's training images
(``domain_score``, ``out_of_domain``; see captioner.domain): a model trained on synthetic scenes captions a photo
with confident nonsense, and ``out_of_domain`` is how a program can tell.

Results are dataclasses with attribute access, ``result["caption"]`` item access and ``to_dict()`` (arrays as
nested lists with ``to_dict(json=True)``, for JSON).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np

from lm.errors import UserError


class _Result:
    """Attribute access, item access and to_dict() for the result dataclasses."""

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self)]

    def get(self, key: str, default=None):
        return getattr(self, key, default) if key in self.keys() else default

    def to_dict(self, json: bool = False) -> dict:
        """The fields as a dict; json=True turns arrays into nested lists and numpy numbers into Python ones."""
        out = {k: getattr(self, k) for k in self.keys()}
        if json:
            out = {k: _jsonable(v) for k, v in out.items()}
        return out


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return np.round(value.astype(np.float64), 5).tolist()
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


@dataclasses.dataclass
class CaptionResult(_Result):
    """One image's caption.

    Attributes:
        caption: the words joined by spaces ("" when the image could not be read).
        words: the caption's words.
        score: mean log probability per token of the chosen caption (0 is certain; lower is less sure).
        attention: (steps, h', w') where the model looked for each word, then for the end of the caption.
        domain_score: distance from the training images in units of the calibrated threshold (> 1: out of domain);
            None when the model folder has no domain statistics (see captioner.domain).
        out_of_domain: domain_score > 1 (None without domain statistics).
        image: the path, or "<image N>" for bytes, PIL images and arrays.
        error: the one-line reason when the image could not be read (with errors="return"), else None.
        captions: with num_captions n > 1, the n best as [{"caption", "score"}], best first (the first is
            `caption`); else empty.
    """

    caption: str
    words: list
    score: float
    attention: np.ndarray
    domain_score: float | None
    out_of_domain: bool | None
    image: str = ""
    error: str | None = None
    captions: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class AnswerResult(_Result):
    """One answer to one question about one image.

    Attributes:
        answer: the most likely answer.
        score: its probability (softmax over the model's answer list).
        attention: (h', w') where the model looked (the last attention hop).
        unknown_words: the question's words the model never saw in training (read as <unk>; the answer is then
            a guess).
        domain_score, out_of_domain: as for CaptionResult.
        question: the question as asked.
        top: the five most likely answers with their probabilities, best first.
    """

    answer: str
    score: float
    attention: np.ndarray
    unknown_words: list
    domain_score: float | None
    out_of_domain: bool | None
    question: str = ""
    top: list = dataclasses.field(default_factory=list)


def _single(images) -> bool:
    """One image (path, bytes, PIL image, (H, W[, 3]) array) rather than a sequence of them."""
    if isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike)):
        return True
    if isinstance(images, np.ndarray):
        return images.ndim in (2, 3) and not (images.ndim == 3 and images.dtype == object)
    return type(images).__module__.startswith("PIL.")


def _name(source, i: int) -> str:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else f"<image {i}>"


def _load(sources: Sequence, size, policy: str, max_pixels: int | None):
    from captioner.images import MAX_PIXELS, load_images
    return load_images(list(sources), size, policy, max_pixels=max_pixels or MAX_PIXELS)


class _Model:
    """What Captioner and VQA share: a loaded model folder, its domain statistics and the image pipeline."""

    task = "caption"

    def __init__(self, loaded):
        from captioner.domain import load_domain
        self.loaded = loaded
        self.domain = load_domain(loaded.directory) if loaded.directory else None

    @classmethod
    def load(cls, path=None):
        """Reads a model folder (`captioner train ... --out DIR`); None: the bundled scenes model.

        Raises lm.errors.UserError (one line) for a missing folder or one of another kind."""
        from captioner.model import load_model_dir
        return cls(load_model_dir(None if path is None else os.fspath(path), task=cls.task))

    @property
    def directory(self) -> str:
        return self.loaded.directory

    @property
    def vocab(self):
        return self.loaded.vocab

    @property
    def config(self) -> dict:
        return self.loaded.config

    @property
    def image_size(self) -> tuple[int, int]:
        return self.loaded.image_size

    @property
    def trained_on(self) -> str:
        """What the model's training images were ("" when unknown)."""
        return (self.domain.trained_on if self.domain else "") or str(self.config.get("data", ""))

    def _grid(self, images):
        from keras import ops
        if self.loaded.model.backbone is None:  # the question-only VQA baseline looks at no image
            return None
        return self.loaded.model.backbone(ops.convert_to_tensor(images, "float32"), training=False)

    def _domain(self, images: np.ndarray, grid) -> tuple[list, list]:
        """-> (domain scores, out_of_domain flags), None each without domain statistics."""
        if self.domain is None or grid is None:
            return [None] * len(images), [None] * len(images)
        from keras import ops
        scores = self.domain.score(images, ops.convert_to_numpy(grid))
        return [float(s) for s in scores], [bool(s > 1.0) for s in scores]


class Captioner(_Model):
    """An image captioner (soft attention over a CNN grid, LSTM decoder).

    Example:
        >>> captioner = Captioner.load()                      # or Captioner.load("runs/flickr8k")
        >>> [r.caption for r in captioner.caption(["a.png", "b.png"], beam=3)]
        ['a small red circle', 'two shapes: a blue square left of a green cross']
    """

    task = "caption"

    def caption(self, images, beam: int = 3, max_length: int | None = None, length_penalty: float = 1.0,
                batch_size: int = 16, errors: str = "raise", max_pixels: int | None = None, min_length: int = 0,
                block_repeats: int = 0, num_captions: int = 1):
        """Captions one image (-> a CaptionResult) or a sequence of images (-> a list, in order).

        Args:
            images: a path, bytes, a PIL image or an (H, W, 3) array; or a list of them (a 4-D array is a batch).
            beam: beam width (1 = greedy).
            max_length: longest caption in words (default: the model's).
            length_penalty: beams are ranked by sum log p / length ** length_penalty.
            batch_size: images per model call.
            errors: "raise" (an unreadable image raises captioner.images.ImageError) or "return" (its result has
                `error` set and an empty caption).
            max_pixels: refuse bigger images (default captioner.images.MAX_PIXELS, 64 megapixels).
            min_length: no end of caption before this many words.
            block_repeats: never repeat an N-word sequence (3: trigram blocking, 1: no word twice, 0: off).
            num_captions: the n best captions per image in `captions` (beam search, n <= beam).
        """
        single = _single(images)
        sources = [images] if single else list(images)
        if isinstance(beam, bool) or not isinstance(beam, (int, np.integer)) or beam < 1:
            raise UserError(f"beam must be a whole number >= 1 (got {beam!r})")
        default_length = int(self.config.get("max_length", 20))
        if max_length is None:
            max_length = default_length
        if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1:
            raise UserError(f"max_length must be a whole number >= 1 (got {max_length!r})")
        if not 1 <= int(num_captions) <= int(beam):
            raise UserError(f"num_captions must be between 1 and the beam width ({beam})")
        if errors not in ("raise", "return"):
            raise UserError(f"errors must be 'raise' or 'return' (got {errors!r})")
        from keras import ops
        from captioner.images import ImageError
        loaded, vocab = self.loaded, self.loaded.vocab
        grid_h, grid_w, _ = loaded.model.grid
        results: list[CaptionResult] = []
        for start in range(0, len(sources), batch_size):
            chunk = sources[start: start + batch_size]
            images_np, problems = _load(chunk, loaded.image_size, loaded.resize_policy, max_pixels)
            if errors == "raise" and any(problems):
                raise ImageError(next(p for p in problems if p))
            grid = self._grid(images_np)  # (batch, pixels, C)
            words, scores, alphas = loaded.model.decoder.generate(
                grid, beam_width=int(beam), max_length=int(max_length), length_penalty=length_penalty,
                start_id=vocab.bos_id, end_id=vocab.eos_id, min_length=int(min_length),
                block_repeats=int(block_repeats), num_captions=int(num_captions))
            words, scores, alphas = (ops.convert_to_numpy(x) for x in (words, scores, alphas))
            all_words, all_scores = words, scores
            if num_captions > 1:  # (batch, n, ...): the best first
                words, scores, alphas = words[:, 0], scores[:, 0], alphas[:, 0]
            domain_scores, outside = self._domain(images_np, grid)
            for i, source in enumerate(chunk):
                name = _name(source, start + i)
                if problems[i]:
                    results.append(CaptionResult("", [], float("nan"), np.zeros((0, grid_h, grid_w), np.float32),
                                                 None, None, image=name, error=problems[i]))
                    continue
                ids = [int(w) for w in words[i]]
                tokens = vocab.decode(ids)
                # One attention row per kept word, then the <eos> step when the caption ended before max_length;
                # rows of ids decode() drops (<pad>, <bos>) go with them, so maps and words stay aligned.
                end = ids.index(vocab.eos_id) if vocab.eos_id in ids else len(ids)
                rows = [t for t in range(end) if ids[t] not in (vocab.pad_id, vocab.bos_id)]
                rows += [end] if end < len(ids) else []
                attention = alphas[i, rows].reshape(len(rows), grid_h, grid_w)
                best = ([{"caption": " ".join(vocab.decode(all_words[i, j])), "score": float(all_scores[i, j])}
                         for j in range(num_captions)] if num_captions > 1 else [])
                results.append(CaptionResult(" ".join(tokens), tokens, float(scores[i]), attention,
                                             domain_scores[i], outside[i], image=name, captions=best))
        return results[0] if single else results


class VQA(_Model):
    """A visual question answering model (stacked attention over a CNN grid, bidirectional LSTM question encoder).

    Example:
        >>> vqa = VQA.load()
        >>> r = vqa.ask("scene.png", "how many circles are there")
        >>> r.answer, round(r.score, 2), r.unknown_words
        ('2', 0.98, [])
    """

    task = "vqa"

    @property
    def answers(self) -> list[str]:
        """The answers the model can give."""
        return list(self.loaded.answers)

    def ask(self, image, question, max_pixels: int | None = None):
        """Answers one question (str -> an AnswerResult) or several about the same image (list -> a list).

        An empty question or one of words the model never saw still gets an answer (a guess from <unk>): check
        `unknown_words`. Raises captioner.images.ImageError when the image cannot be read."""
        single = isinstance(question, str)
        questions = [question] if single else [str(q) for q in question]
        results = self.ask_batch([image] * len(questions), questions, max_pixels=max_pixels)
        return results[0] if single else results

    def ask_batch(self, images: Sequence, questions: Sequence[str], max_pixels: int | None = None,
                  errors: str = "raise") -> list:
        """Answers questions[i] about images[i] for every i, in one batch (each distinct image object decoded
        once). With errors="return", an unreadable image gives None in its places instead of raising."""
        from keras import ops
        from captioner.images import ImageError
        from captioner.vqa import MAX_QUESTION_LENGTH, encode_questions
        from captioner.vqa.answering import _softmax
        from lm.text import tokenize
        images, questions = list(images), [str(q) for q in questions]
        if len(images) != len(questions):
            raise UserError(f"ask_batch needs one image per question (got {len(images)} images, "
                            f"{len(questions)} questions)")
        if not questions:
            return []
        loaded = self.loaded
        distinct, slot = [], []
        for image in images:  # the same object asked several questions is decoded and encoded once
            for j, seen in enumerate(distinct):
                if seen is image:
                    slot.append(j)
                    break
            else:
                slot.append(len(distinct))
                distinct.append(image)
        pixels, problems = _load(distinct, loaded.image_size, loaded.resize_policy, max_pixels)
        if errors == "raise" and any(problems):
            raise ImageError(next(p for p in problems if p))
        max_length = int(loaded.config.get("max_question_length", MAX_QUESTION_LENGTH))
        ids = encode_questions(questions, loaded.vocab, max_length)  # (Q, T)
        index = np.asarray(slot, np.int64)
        logits, alpha = loaded.model((ops.convert_to_tensor(pixels, "float32"), ops.convert_to_tensor(ids),
                                      ops.convert_to_tensor(index)), training=False, return_attention=True)
        probs = _softmax(ops.convert_to_numpy(logits).astype(np.float64))  # (Q, K)
        alpha = ops.convert_to_numpy(alpha)  # (Q, pixels)
        domain_scores, outside = self._domain(pixels, self._grid(pixels))
        gh, gw, _ = loaded.model.grid
        out = []
        for i, q in enumerate(questions):
            if problems[slot[i]]:
                out.append(None)
                continue
            order = np.argsort(-probs[i])[:5]
            k = int(order[0])
            unknown = [w for w in tokenize(q)[:max_length] if w not in loaded.vocab]
            out.append(AnswerResult(loaded.answers[k], float(probs[i, k]), alpha[i].reshape(gh, gw), unknown,
                                    domain_scores[slot[i]], outside[slot[i]], question=q,
                                    top=[(loaded.answers[int(j)], float(probs[i, j])) for j in order]))
        return out
