"""`captioner classify`: what a pretrained CNN sees in an image -- ImageNet labels from EfficientNet-Lite0.

The weights are the bundled backbone's (captioner.backbones.build_efficientnet_lite0_classifier("imagenet") finds
them: the one place that knows where they live); the 1000 class names ship in captioner/assets/imagenet_classes.txt
(scripts/make_imagenet_classes.py). A scenes model cannot say what a photo shows; this can, roughly.

Example:
    >>> classify(["coffee.jpg"], top=3)[0]["labels"][0]
    {'class': 967, 'label': 'espresso', 'probability': 0.9}
"""

from __future__ import annotations

import os

import numpy as np

CLASSES_FILE = os.path.join(os.path.dirname(__file__), "assets", "imagenet_classes.txt")
_SIZE = (224, 224)


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, in class-id order."""
    with open(CLASSES_FILE, encoding="utf-8") as f:
        names = [line.rstrip("\n") for line in f]
    assert len(names) == 1000, f"{CLASSES_FILE}: expected 1000 names, found {len(names)}"
    return names


_MODEL = None


def _classifier():
    global _MODEL
    if _MODEL is None:
        from captioner.backbones import build_efficientnet_lite0_classifier
        _MODEL = build_efficientnet_lite0_classifier("imagenet")
    return _MODEL


def classify(images, top: int = 5, max_pixels: int | None = None, batch_size: int = 16) -> list[dict]:
    """Images (paths, bytes, PIL images or arrays) -> one dict per image: {"image", "labels": [{"class", "label",
    "probability"}, ...] (top `top`, most likely first)} or {"image", "error"} for an unreadable one."""
    from keras import ops
    from captioner.images import MAX_PIXELS, load_images
    names = imagenet_classes()
    model = _classifier()
    out = []
    for start in range(0, len(images), batch_size):
        chunk = list(images[start: start + batch_size])
        pixels, errors = load_images(chunk, _SIZE, "stretch", max_pixels=max_pixels or MAX_PIXELS)
        probs = ops.convert_to_numpy(model(ops.convert_to_tensor(pixels), training=False))  # (B, 1000)
        for i, source in enumerate(chunk):
            name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else f"<image {start + i}>"
            if errors[i]:
                out.append({"image": name, "error": errors[i]})
                continue
            best = np.argsort(-probs[i])[:top]
            out.append({"image": name, "labels": [{"class": int(k), "label": names[k],
                                                   "probability": float(probs[i, k])} for k in best]})
    return out
