"""Everything the server needs from the models, behind one small adapter: image bytes in, JSON-ready dicts out.

The HTTP layer (captioner.serve.app) knows nothing about Keras; it calls, per model,

    service.prepare(instance) -> prepared      one request instance (bytes [+ question]) -> decoded input; raises
                                               ImageError / ValueError with a one-line reason (the request gets 400)
    service.predict([prepared, ...]) -> [dict]  one batched model call (run in a worker thread by the batcher)

The fields of each prediction are the outputs of the SavedModel signature that `captioner export` writes for that
model (see captioner.export), so a client written for TF Serving hosting that export reads our answers unchanged:

    captioner: captions (str), scores (float), attention (T x H x W, zero rows after the caption), lengths (int),
               errors ("": a bad image is refused with HTTP 400 before it reaches the model)
    vqa:       answers (str), scores (float), attention (H x W), errors ("")

plus, where the model provides them, `domain_score` and `out_of_domain` (the out-of-domain score of issue 11), and
for VQA `unknown_words` (question words the model never saw, read as <unk>).

Captions and answers come from the Python API (captioner.api: `Captioner.caption`, `VQA.ask_batch`), which the
`caption` and `ask` commands use too, so the server's captions equal `captioner caption`'s for the same images and
beam width, and carry the same out-of-domain score.

Example:
    >>> service = CaptionService.load(None, beam_width=3)
    >>> service.predict([service.prepare({"images": open("cat.jpg", "rb").read()})])[0]["captions"]
    'a red circle above a blue square'
"""

from __future__ import annotations

import numpy as np

from lm.errors import UserError

#: Outputs of the exported captioner signature (captioner.export.export_captioner), in its order.
CAPTION_OUTPUTS = ("captions", "scores", "attention", "lengths", "errors")
#: Outputs of the exported VQA signature (captioner.export.export_vqa), in its order.
VQA_OUTPUTS = ("answers", "scores", "attention", "errors")
#: Optional fields passed through when the model reports them.
DOMAIN_FIELDS = ("domain_score", "out_of_domain")

_DECIMALS = 6  # attention weights are rounded to this many decimals in JSON (they are float32 anyway)


def _decode(service, data: bytes) -> np.ndarray:
    """Image file bytes -> uint8 (h, w, 3) at the model's input size, exactly as captioner.images.load_images does
    (same decoder, same JPEG draft size, same resize), so the model sees the pixels `captioner caption` feeds it."""
    from captioner.images import decode_image, resize_image
    height, width = service.loaded.image_size
    pixels = decode_image(bytes(data), min_size=max(height, width))
    return resize_image(pixels, (height, width), service.loaded.resize_policy)


def _rounded(array) -> list:
    """float32 array -> nested lists of short decimals (rounded in float64, so JSON shows 0.012345, not
    0.012344999704509974)."""
    return np.round(np.asarray(array, np.float64), _DECIMALS).tolist()


def _domain(result: dict) -> dict:
    """The out-of-domain fields of a model result, when it has them (JSON-ready)."""
    out = {}
    if result.get("domain_score") is not None:
        out["domain_score"] = float(result["domain_score"])
    if result.get("out_of_domain") is not None:
        out["out_of_domain"] = bool(result["out_of_domain"])
    return out


class CaptionService:
    """The captioner behind the server: `name`, `inputs`, `outputs`, `prepare`, `predict`, `info`.

    Args:
        loaded: a caption model folder from captioner.model.load_model_dir(..., task="caption").
        beam_width: beam width (as `captioner caption --beam`).
        max_length: longest caption in steps; default the folder's config "max_length" (else 20).
    """

    name = "captioner"
    inputs = ("images",)
    outputs = CAPTION_OUTPUTS

    def __init__(self, loaded, beam_width: int = 3, max_length: int | None = None):
        from captioner.api import Captioner
        self.loaded = loaded
        self.api = Captioner(loaded)
        self.beam_width = int(beam_width)
        self.max_length = int(max_length or loaded.config.get("max_length", 20))

    @classmethod
    def load(cls, directory=None, beam_width: int = 3) -> "CaptionService":
        """Reads a caption model folder (None = the bundled one); raises UserError with one line if it cannot."""
        from captioner.model import load_model_dir
        return cls(load_model_dir(directory, task="caption"), beam_width=beam_width)

    def prepare(self, instance: dict) -> np.ndarray:
        """{"images": bytes} -> uint8 (h, w, 3); raises captioner.images.ImageError for bytes that are no image."""
        return _decode(self, instance["images"])

    def predict(self, batch: list) -> list[dict]:
        """Prepared images -> one prediction per image (fields: see the module docstring). One model call."""
        return [self._row(r) for r in self._caption_rows(batch)]

    def _caption_rows(self, batch: list) -> list[dict]:
        """One captioner.api call for the whole batch: the captions `captioner caption` gives, with the
        out-of-domain score."""
        results = self.api.caption(list(batch), beam=self.beam_width, max_length=self.max_length,
                                   batch_size=max(1, len(batch)))
        return [r.to_dict() for r in results]

    def _row(self, r: dict) -> dict:
        attention = np.asarray(r["attention"], np.float32)  # (rows, h', w'): the words, then the <eos> step
        grid_h, grid_w, _ = self.loaded.model.grid
        padded = np.zeros((self.max_length, grid_h, grid_w), np.float32)  # (T, h', w') as the exported signature
        padded[: len(attention)] = attention[: self.max_length]
        return {"captions": r["caption"], "scores": float(r["score"]),
                "attention": _rounded(padded), "lengths": len(r["words"]), "errors": "",
                **_domain(r)}

    def info(self) -> dict:
        """What the web page and the metadata route show about this model."""
        grid_h, grid_w, _ = self.loaded.model.grid
        return {"task": "caption", "directory": self.loaded.directory, "beam_width": self.beam_width,
                "max_length": self.max_length, "image_size": list(self.loaded.image_size), "grid": [grid_h, grid_w],
                "resize_policy": self.loaded.resize_policy, "backbone": self.loaded.model.backbone_name}


class VQAService:
    """The VQA model behind the server: `prepare` takes {"images": bytes, "questions": str}.

    Args:
        loaded: a VQA model folder from captioner.model.load_model_dir(..., task="vqa").
    """

    name = "vqa"
    inputs = ("images", "questions")
    outputs = VQA_OUTPUTS

    def __init__(self, loaded):
        from captioner.vqa import MAX_QUESTION_LENGTH
        if not loaded.answers:
            raise UserError(f"{loaded.directory}: answers.json is missing or empty")
        from captioner.api import VQA
        self.loaded = loaded
        self.api = VQA(loaded)
        self.max_words = int(loaded.config.get("max_question_length", MAX_QUESTION_LENGTH))

    @classmethod
    def load(cls, directory=None) -> "VQAService":
        """Reads a VQA model folder (None = the bundled one); raises UserError with one line if it cannot."""
        from captioner.model import load_model_dir
        return cls(load_model_dir(directory, task="vqa"))

    def prepare(self, instance: dict) -> tuple[np.ndarray, str]:
        """{"images": bytes, "questions": str} -> (uint8 (h, w, 3), question); raises ValueError for an empty
        question and captioner.images.ImageError for bytes that are no image."""
        from lm.text import tokenize
        question = instance["questions"]
        if not tokenize(question):
            raise ValueError('"questions" has no words (empty, or symbols only); ask something, e.g. '
                             '"what color is the circle"')
        return _decode(self, instance["images"]), question

    def predict(self, batch: list) -> list[dict]:
        """(image, question) pairs -> one prediction per pair. One forward pass for the whole batch."""
        return [self._row(r) for r in self._answer_rows(batch)]

    def _answer_rows(self, batch: list) -> list[dict]:
        """One captioner.api call for many (image, question) pairs: the answers `captioner ask` gives, with the
        out-of-domain score."""
        if not batch:
            return []
        results = self.api.ask_batch([image for image, _ in batch], [q for _, q in batch])
        return [r.to_dict() for r in results]

    def _row(self, r: dict) -> dict:
        return {"answers": r["answer"], "scores": float(r["score"]),
                "attention": _rounded(r["attention"]), "errors": "",
                **_domain(r), "unknown_words": list(r["unknown_words"])}

    def info(self) -> dict:
        grid_h, grid_w, _ = self.loaded.model.grid
        return {"task": "vqa", "directory": self.loaded.directory, "answers": list(self.loaded.answers),
                "max_question_length": self.max_words, "image_size": list(self.loaded.image_size),
                "grid": [grid_h, grid_w], "resize_policy": self.loaded.resize_policy,
                "backbone": self.loaded.model.backbone_name}
