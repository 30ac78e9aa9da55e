"""ImageCaptioner = backbone CNN (captioner.backbones) + CaptionDecoder, and captioning files.

Model folders (reading and writing, captions and VQA alike) live in captioner.folders; `save_model_dir`,
`load_model_dir`, `LoadedCaptioner` and `BUNDLED` are still importable from here.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from captioner.backbones import backbone_spec, build_backbone, grid_shape
from captioner.decoder import CaptionDecoder

_FOLDER_NAMES = ("ASSETS", "BUNDLED", "LoadedCaptioner", "load_model_dir", "save_model_dir")


def __getattr__(name):
    """The model-folder names, from captioner.folders (imported on first use: folders imports this module)."""
    if name in _FOLDER_NAMES:
        from captioner import folders
        return getattr(folders, name)
    raise AttributeError(f"module 'captioner.model' has no attribute {name!r}")


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
            vocab = loaded.vocab
            end = ids.index(vocab.eos_id) if vocab.eos_id in ids else len(ids)
            rows = [t for t in range(end) if ids[t] not in (vocab.pad_id, vocab.bos_id)]
            rows += [end] if end < len(ids) else []
            attention = alphas[i, rows].reshape(len(rows), grid_h, grid_w)
            results.append({"image": name, "caption": " ".join(tokens), "score": float(scores[i]),
                            "words": tokens, "attention": attention})
            if num_captions > 1:
                results[-1]["captions"] = [{"caption": loaded.vocab.decode_text(all_words[i, j]),
                                            "score": float(all_scores[i, j])} for j in range(num_captions)]
    return results
