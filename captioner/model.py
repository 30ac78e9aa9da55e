"""ImageCaptioner = backbone CNN (captioner.backbones) + CaptionDecoder, its model folder, and captioning files.

A model folder holds config.json (`{"task": "caption", "model": constructor kwargs, "max_length": ...}`),
vocab.json and model.weights.h5 (backbone and decoder together, so a folder needs nothing else to run).
Omitting `--model` means the bundled captioner trained on synthetic scenes (scripts/train_bundled_captioner.sh).
"""

from __future__ import annotations

import contextlib
import json
import os

import keras
import numpy as np
from keras import ops

from captioner.backbones import backbone_spec, build_backbone, grid_shape
from captioner.decoder import CaptionDecoder
from lm.checkpoint import load_weights_file, read_model_folder
from lm.errors import UserError
from lm.vocab import Vocabulary

ASSETS = os.path.join(os.path.dirname(__file__), "assets")
BUNDLED = {"caption": os.path.join(ASSETS, "scenes-captioner"), "vqa": os.path.join(ASSETS, "scenes-vqa")}


@keras.saving.register_keras_serializable(package="captioner")
class ImageCaptioner(keras.Model):
    """Images (batch, h, w, 3) RGB 0..255 + caption prefix -> next-word logits; `generate` writes captions.

    Args:
        vocab_size: caption vocabulary size.
        backbone: a name from captioner.backbones.BACKBONES.
        image_size: backbone input (height, width); default the backbone's.
        trainable_blocks: backbone blocks to fine-tune (0 = frozen; small_cnn always trains).
        decoder: CaptionDecoder keyword arguments (embed_dim, units, attention_dim, cell_type, dropout, attention,
            alpha_c, scheduled_sampling).
        backbone_weights: "imagenet", a weights file or None, used when the model is first built; not part of the
            config, since a saved model carries its backbone's weights in its own weights file.

    Example:
        >>> model = ImageCaptioner(vocab_size=40, backbone="small_cnn", image_size=(64, 64), decoder={"units": 64})
        >>> words, scores, alphas = model.generate(np.zeros((1, 64, 64, 3), "float32"), beam_width=3)
    """

    def __init__(self, vocab_size, backbone="small_cnn", image_size=None, trainable_blocks=0, decoder=None,
                 backbone_weights=None, **kwargs):
        super().__init__(**kwargs)
        spec = backbone_spec(backbone)
        self.vocab_size = int(vocab_size)
        self.backbone_name = backbone
        self.image_size = tuple(image_size or spec.image_size)
        self.trainable_blocks = int(trainable_blocks)
        self.decoder_config = dict(decoder or {})
        self.grid = grid_shape(backbone, self.image_size)  # (h', w', C)
        self.backbone = build_backbone(backbone, weights=backbone_weights, image_size=self.image_size,
                                       trainable_blocks=self.trainable_blocks)
        self.decoder = CaptionDecoder(vocab_size=self.vocab_size, feature_dim=self.grid[2], name="decoder",
                                      **self.decoder_config)

    def build(self, input_shape):
        images_shape, tokens_shape = input_shape
        batch = images_shape[0]
        self.decoder.build(((batch, self.grid[0] * self.grid[1], self.grid[2]), tokens_shape))
        self.built = True

    def encode(self, images, training=False):
        """(batch, h, w, 3) 0..255 -> grid (batch, pixels, C)."""
        return self.backbone(images, training=training)

    def call(self, inputs, training=None, return_attention=False):
        images, tokens = inputs
        return self.decoder((self.encode(images, training=training), tokens), training=training,
                            return_attention=return_attention)

    def generate(self, images, **search):
        """Images -> (words (batch, max_length), scores (batch,), alphas (batch, max_length, pixels)); see
        CaptionDecoder.generate for the search arguments."""
        return self.decoder.generate(self.encode(ops.convert_to_tensor(images, "float32")), **search)

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, backbone=self.backbone_name, image_size=list(self.image_size),
                      trainable_blocks=self.trainable_blocks, decoder=self.decoder_config)
        return config


def build_captioner(config: dict) -> ImageCaptioner:
    """Constructs and builds an ImageCaptioner from its config (weights random until loaded)."""
    model = ImageCaptioner(**config)
    model.build(((None, *model.image_size, 3), (None, None)))
    return model


# ---- model folders -----------------------------------------------------------------------------------------------
def save_model_dir(directory, task: str, model, vocab: Vocabulary, extra: dict | None = None,
                   answers: list[str] | None = None) -> None:
    """Writes config.json, vocab.json (and answers.json for VQA) and model.weights.h5, each via a temporary
    name so an interrupted save never leaves a folder whose weights and config disagree."""
    os.makedirs(directory, exist_ok=True)
    config = model.get_config()
    for key in ("name", "trainable", "dtype"):
        config.pop(key, None)
    payload = {"task": task, "model": config, **(extra or {})}

    def write(name, writer):
        tmp = os.path.join(directory, f".tmp-{name}")
        writer(tmp)
        os.replace(tmp, os.path.join(directory, name))

    def write_json(value):
        def writer(path):
            with open(path, "w") as f:
                json.dump(value, f, indent=2)
        return writer

    def write_weights(path):
        # Keras insists on the ".weights.h5" suffix, so the temporary name keeps it.
        with _without_optimizers(model):
            model.save_weights(path + ".weights.h5")
        os.replace(path + ".weights.h5", path)

    write("model.weights.h5", write_weights)
    write("vocab.json", vocab.save)
    if answers is not None:
        write("answers.json", write_json(answers))
    write("config.json", write_json(payload))


@contextlib.contextmanager
def _without_optimizers(model):
    """Hides the optimizer of the model and of its sub-models (the decoder trains alone on cached features) while
    the weights are saved: a model folder is for inference, and Adam's two moments would triple its size."""
    owners = [m for m in [model, *getattr(model, "layers", [])] if getattr(m, "optimizer", None) is not None]
    saved = [m.optimizer for m in owners]
    try:
        for m in owners:
            m.optimizer = None
        yield
    finally:
        for m, optimizer in zip(owners, saved):
            m.optimizer = optimizer


class LoadedCaptioner:
    """A model folder in memory: `.task`, `.model`, `.vocab`, `.config` (and `.answers` for VQA)."""

    def __init__(self, task, model, vocab, config, answers=None, directory=None):
        self.task, self.model, self.vocab, self.config = task, model, vocab, config
        self.answers, self.directory = answers, directory

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.model.image_size)

    @property
    def resize_policy(self) -> str:
        return self.config.get("resize_policy") or backbone_spec(self.model.backbone_name).policy


def load_model_dir(directory=None, task: str | None = None) -> LoadedCaptioner:
    """Reads a captioner or VQA model folder; None means the bundled one for `task` (default caption)."""
    if directory is None:
        directory = BUNDLED[task or "caption"]
        if not os.path.isfile(os.path.join(directory, "config.json")):
            raise UserError(f"the bundled {task or 'caption'} model is missing ({directory}); "
                            "pass --model DIR or reinstall the package")
    directory = os.fspath(directory)
    config, vocab = read_model_folder(directory, required=("config.json", "vocab.json", "model.weights.h5"),
                                      how_to_make="captioner train DATA --out DIR")
    found = config.get("task")
    if task is not None and found != task:
        raise UserError(f"{directory}: this is a {found} model, not a {task} model")
    answers = None
    try:
        if found == "vqa":
            from captioner.vqa import build_vqa_model
            with open(os.path.join(directory, "answers.json")) as f:
                answers = json.load(f)
            model = build_vqa_model(config["model"])
        elif found == "caption":
            model = build_captioner(config["model"])
        else:
            raise UserError(f"{directory}: unknown task {found!r} in config.json")
    except (OSError, ValueError, KeyError, TypeError) as e:  # answers.json missing, config.json edited by hand
        raise UserError(f"{directory}: unreadable {found} model folder ({e})") from None
    load_weights_file(model, directory)
    return LoadedCaptioner(found, model, vocab, config, answers, directory)


# ---- captioning files ----------------------------------------------------------------------------------------------
def caption_files(loaded: LoadedCaptioner, sources, beam_width: int = 3, max_length: int | None = None,
                  batch_size: int = 16, length_penalty: float = 1.0, min_length: int = 0, block_repeats: int = 0,
                  num_captions: int = 1) -> list[dict]:
    """Captions images given as paths or bytes. Returns one dict per image: `image`, `caption`, `score`, `words`,
    `attention` (len(words), h', w') -- or `image` and `error` for one that cannot be read. With num_captions
    n > 1 (beam search, n <= beam_width) each also has `captions`: the n best as [{"caption", "score"}], best first
    (the first is `caption`). min_length, block_repeats: see lm.sampling.beam_search."""
    if not 1 <= int(num_captions) <= max(1, int(beam_width)):
        raise UserError(f"--num-captions must be between 1 and the beam width ({beam_width})")
    from captioner.images import load_images
    max_length = int(max_length or loaded.config.get("max_length", 20))
    results = []
    grid_h, grid_w, _ = loaded.model.grid
    for start in range(0, len(sources), batch_size):
        chunk = list(sources[start: start + batch_size])
        images, errors = load_images(chunk, loaded.image_size, loaded.resize_policy)
        words, scores, alphas = loaded.model.generate(images, beam_width=beam_width, max_length=max_length,
                                                      length_penalty=length_penalty, min_length=min_length,
                                                      block_repeats=block_repeats, num_captions=num_captions)
        # convert_to_numpy, not np.asarray: on PyTorch the outputs carry autograd history (requires_grad)
        words, scores, alphas = (ops.convert_to_numpy(x) for x in (words, scores, alphas))
        all_words, all_scores = words, scores
        if num_captions > 1:  # (batch, n, ...): the best first
            words, scores, alphas = words[:, 0], scores[:, 0], alphas[:, 0]
        for i, source in enumerate(chunk):
            name = source if isinstance(source, str) else f"<bytes {start + i}>"
            if errors[i]:
                results.append({"image": name, "error": errors[i]})
                continue
            tokens = loaded.vocab.decode(words[i])
            # One attention row per kept word, then the <eos> step if the caption ended before max_length. Rows of
            # ids that decode() drops (<pad>, <bos>, which an undertrained model can emit) go with them, so the
            # maps stay aligned with the words.
            ids = [int(w) for w in words[i]]
            end = ids.index(3) if 3 in ids else len(ids)
            rows = [t for t in range(end) if ids[t] not in (0, 2)] + ([end] if end < len(ids) else [])
            attention = alphas[i, rows].reshape(len(rows), grid_h, grid_w)
            results.append({"image": name, "caption": " ".join(tokens), "score": float(scores[i]),
                            "words": tokens, "attention": attention})
            if num_captions > 1:
                results[-1]["captions"] = [{"caption": loaded.vocab.decode_text(all_words[i, j]),
                                            "score": float(all_scores[i, j])} for j in range(num_captions)]
    return results
