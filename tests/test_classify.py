"""`captioner classify`: ImageNet labels from EfficientNet-Lite0, its class names shipped, its weights found by
captioner.backbones."""

import json
import os

import numpy as np
import pytest


def run(argv, capsys):
    from captioner.cli import main
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_class_names_are_the_imagenet_order():
    from captioner.classify import imagenet_classes
    names = imagenet_classes()
    assert len(names) == 1000 and len(set(names)) >= 998  # two ImageNet names repeat ("crane", "maillot")
    assert names[0] == "tench" and names[1] == "goldfish" and names[967] == "espresso" and names[999] == "toilet tissue"


def test_classify_reads_the_weights_where_backbones_keeps_them(tmp_path, monkeypatch, capsys):
    """With our own file where captioner.backbones keeps the ImageNet weights (random weights: only the plumbing is
    checked), the top labels are the most probable classes, named, in order; a bad image is one line and exit 2."""
    import captioner.backbones as backbones
    import captioner.classify as classify
    monkeypatch.setattr(classify, "_MODEL", None)
    model = backbones.build_efficientnet_lite0_classifier(None)
    weights = tmp_path / "lite0-random.weights.h5"
    model.save_weights(str(weights))
    monkeypatch.setattr(backbones, "efficientnet_lite0_imagenet_path", lambda: weights)
    import skimage.data
    from PIL import Image
    Image.fromarray(skimage.data.coffee()).save(tmp_path / "coffee.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 nope")
    rc, out, err = run(["classify", tmp_path / "coffee.png", bad, "--top", "3", "--json"], capsys)
    assert rc == 2
    good, failed = json.loads(out)
    assert "error" in failed and str(bad) in failed["error"]
    labels = good["labels"]
    probs = [x["probability"] for x in labels]
    assert len(labels) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    names = classify.imagenet_classes()
    assert all(names[x["class"]] == x["label"] for x in labels)
    from captioner.images import load_images
    pixels, _ = load_images([str(tmp_path / "coffee.png")], (224, 224), "stretch")
    expected = np.argsort(-np.asarray(model(pixels))[0])[:3]
    assert [x["class"] for x in labels] == [int(k) for k in expected]
    monkeypatch.setattr(classify, "_MODEL", None)


def test_classify_names_the_espresso_with_the_real_weights(capsys):
    import captioner.classify as classify  # the ImageNet weights ship with the package: no skip
    classify._MODEL = None
    import skimage.data
    top = classify.classify([skimage.data.coffee()], top=3)[0]["labels"]
    assert top[0]["label"] == "espresso" and top[0]["probability"] > 0.8  # README: espresso, p = 0.900
