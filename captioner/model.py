"""ImageCaptioner = backbone CNN (captioner.backbones) + CaptionDecoder. Captioning images: captioner.api.Captioner.

Model folders (reading and writing, captions and VQA alike) live in captioner.folders; `save_model_dir`,
`load_model_dir`, `LoadedCaptioner` and `BUNDLED` are still importable from here.
"""

from __future__ import annotations

import keras
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


