"""Out-of-domain detection: does an image look like the images a model was trained on?

A model trained on synthetic scenes answers a photo of a cat with the same confidence as a scene; it cannot know
better. So every model folder stores the distribution of its training images' features, and every answer carries
two fields:

- ``domain_score``: how far the image lies from the training images, in units of a threshold calibrated on held-out
  in-domain images: typical in-domain images score about 0.3-0.6, **above 1 means out of domain**. Two feature
  blocks are compared, each with a Gaussian (mean, shrunk covariance) fitted on training images: the backbone's
  pooled grid (mean and deviation over cells) and pixel statistics (colour and edge histograms); the score takes
  the block that is further out.
- ``out_of_domain``: ``domain_score > 1``.

The statistics live in ``domain.npz`` in the model folder (per block a mean and a whitening matrix, the threshold,
what the model was trained on). Training writes it (``captioner train``); for an older folder:

    captioner calibrate MODEL_DIR DATA          # DATA: the data it was trained on (train split fits, val calibrates)

The threshold is the ``quantile`` (default 0.995) of the held-out images' scores times ``margin`` (default 1.25),
so well under one percent of in-domain images are flagged, and images unlike the training images (photos, for a
scenes model) are above it.

Example:
    >>> stats = fit_domain(image_features(train_images, train_grid), image_features(val_images, val_grid),
    ...                    trained_on="synthetic scenes")
    >>> stats.save("runs/captioner")
    >>> load_domain("runs/captioner").score(images, grid)    # (N,) domain scores; > 1 = out of domain
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from lm.errors import UserError

FILENAME = "domain.npz"
DEFAULT_QUANTILE = 0.995
DEFAULT_MARGIN = 1.25
SHRINKAGE = 0.01  # covariance shrinkage towards its mean eigenvalue: keeps the inverse stable with few images


def pool_grid(grid) -> np.ndarray:
    """Backbone grid (N, pixels, C) -> pooled features (N, 2C): the mean and the standard deviation over the grid.

    The mean says what is in the image, the deviation how it varies across the image."""
    grid = np.asarray(grid, dtype=np.float64)
    if grid.ndim == 4:  # (N, h, w, C)
        grid = grid.reshape(grid.shape[0], -1, grid.shape[-1])
    return np.concatenate([grid.mean(axis=1), grid.std(axis=1)], axis=-1)


_EDGES = np.asarray([0, 2, 4, 8, 16, 32, 64, 128, np.inf])


def pixel_statistics(images, bins: int = 4) -> np.ndarray:
    """Images (N, h, w, 3) 0..255 -> (N, bins**3 + 8): square roots of the colour histogram (bins per channel) and
    of the histogram of gradient magnitudes (flat areas .. sharp edges).

    A CNN trained on one kind of picture can map very different ones to ordinary-looking features (a scenes model
    sees a photo as "a dark background"); colours and textures it never saw still show here."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    q = np.clip((x * (bins / 256.0)).astype(np.int64), 0, bins - 1)  # (N, h, w, 3)
    index = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]  # (N, h, w)
    colour = np.stack([np.bincount(i.ravel(), minlength=bins ** 3) for i in index]).astype(np.float64)
    colour /= colour.sum(axis=1, keepdims=True)
    grey = x.mean(axis=-1)  # (N, h, w)
    gx = np.diff(grey, axis=2)[:, :-1, :]  # (N, h-1, w-1)
    gy = np.diff(grey, axis=1)[:, :, :-1]
    magnitude = np.sqrt(gx ** 2 + gy ** 2).reshape(len(x), -1)
    edges = np.stack([np.histogram(m, bins=_EDGES)[0] for m in magnitude]).astype(np.float64)
    edges /= np.maximum(edges.sum(axis=1, keepdims=True), 1)
    return np.sqrt(np.concatenate([colour, edges], axis=1))


BLOCKS = ("backbone", "pixels")


def image_features(images, grid) -> dict[str, np.ndarray]:
    """The feature blocks the domain score compares: {"backbone": pool_grid(grid), "pixels": pixel_statistics}."""
    return {"backbone": pool_grid(grid), "pixels": pixel_statistics(images)}


@dataclass
class _Gaussian:
    """Mean and whitening matrix of one feature block; `scale` is the held-out median distance (its unit)."""
    mean: np.ndarray
    whiten: np.ndarray
    scale: float = 1.0

    def distance(self, features) -> np.ndarray:
        x = np.asarray(features, dtype=np.float64) - self.mean  # (N, D)
        return np.sqrt(np.sum((x @ self.whiten.T) ** 2, axis=-1))

    @classmethod
    def fit(cls, x, shrinkage: float) -> "_Gaussian":
        mean = x.mean(axis=0)
        cov = np.atleast_2d(np.cov(x - mean, rowvar=False))
        d = cov.shape[0]
        unit = max(float(np.trace(cov)) / d, 1e-12)
        cov = (1 - shrinkage) * cov + shrinkage * unit * np.eye(d)
        values, vectors = np.linalg.eigh(cov)
        values = np.maximum(values, unit * 1e-6)
        return cls(mean, (vectors / np.sqrt(values)).T)  # W^T W = cov^-1


@dataclass
class DomainStats:
    """The training distribution of a model's image features, and the calibrated threshold.

    Each block (``BLOCKS``: pooled backbone grid, pixel statistics) has a Gaussian fitted on training images; an
    image's raw score is its largest block distance, each in units of that block's median held-out distance;
    domain_score = raw score / threshold.

    Attributes:
        blocks: name -> fitted Gaussian (mean, whitening matrix, unit).
        threshold: raw score above which an image is out of domain.
        trained_on: a few words saying what the training images were (for the user-facing warning).
        train_images, heldout_images: how many images fitted the statistics and calibrated the threshold.
        quantile, margin: how the threshold was set (threshold = quantile of held-out raw scores * margin).
    """

    blocks: dict
    threshold: float
    trained_on: str = ""
    train_images: int = 0
    heldout_images: int = 0
    quantile: float = DEFAULT_QUANTILE
    margin: float = DEFAULT_MARGIN

    def raw(self, features: dict) -> np.ndarray:
        """Feature blocks (image_features) -> raw scores (N,): the largest block distance in block units."""
        return np.max([self.blocks[b].distance(features[b]) / self.blocks[b].scale for b in self.blocks], axis=0)

    def score(self, images, grid) -> np.ndarray:
        """Images (N, h, w, 3) 0..255 as the model sees them and their backbone grid (N, pixels, C) -> domain
        scores (N,); above 1 = out of domain."""
        return self.raw(image_features(images, grid)) / self.threshold

    def save(self, directory) -> str:
        """Writes `directory/domain.npz` (atomically: a temporary name, then a rename)."""
        path = os.path.join(os.fspath(directory), FILENAME)
        tmp = path + ".tmp.npz"
        meta = {"trained_on": self.trained_on, "train_images": int(self.train_images),
                "heldout_images": int(self.heldout_images), "quantile": float(self.quantile),
                "margin": float(self.margin), "blocks": list(self.blocks), "version": 1,
                "scales": {b: float(g.scale) for b, g in self.blocks.items()}}
        arrays = {}
        for b, g in self.blocks.items():
            arrays[f"{b}_mean"] = g.mean.astype(np.float32)
            arrays[f"{b}_whiten"] = g.whiten.astype(np.float32)
        np.savez(tmp, threshold=np.float64(self.threshold), meta=np.asarray(json.dumps(meta)), **arrays)
        os.replace(tmp, path)
        return path


def load_domain(directory) -> DomainStats | None:
    """Reads `directory/domain.npz`; None when the folder has none (a folder from before this existed)."""
    path = os.path.join(os.fspath(directory), FILENAME)
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            blocks = {b: _Gaussian(z[f"{b}_mean"].astype(np.float64), z[f"{b}_whiten"].astype(np.float64),
                                   float(meta["scales"][b])) for b in meta["blocks"]}
            return DomainStats(blocks=blocks, threshold=float(z["threshold"]), trained_on=meta.get("trained_on", ""),
                               train_images=meta.get("train_images", 0), heldout_images=meta.get("heldout_images", 0),
                               quantile=meta.get("quantile", DEFAULT_QUANTILE), margin=meta.get("margin", DEFAULT_MARGIN))
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{path}: unreadable domain statistics ({e}); rewrite them with "
                        f"`captioner calibrate {directory} DATA`") from None


def fit_domain(train: dict, heldout: dict, trained_on: str = "", quantile: float = DEFAULT_QUANTILE,
               margin: float = DEFAULT_MARGIN, shrinkage: float = SHRINKAGE) -> DomainStats:
    """Fits each feature block on training images and calibrates the threshold on held-out ones.

    Args:
        train: image_features of the training images (N >= 2).
        heldout: image_features of in-domain images the statistics did not see (M >= 1).
        trained_on: what the training images were, for the warning users read.
        quantile, margin: threshold = quantile of held-out raw scores * margin.
        shrinkage: weight of the mean-eigenvalue identity in each covariance (0..1).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> stats = fit_domain({"backbone": rng.normal(size=(300, 8))}, {"backbone": rng.normal(size=(100, 8))})
        >>> float(np.mean(stats.raw({"backbone": rng.normal(size=(500, 8))}) / stats.threshold > 1)) < 0.02
        True
    """
    n = len(next(iter(train.values())))
    m = len(next(iter(heldout.values())))
    if n < 2:
        raise UserError(f"domain statistics need at least 2 training images (got {n})")
    if m < 1:
        raise UserError("domain statistics need at least 1 held-out image to calibrate the threshold")
    blocks = {}
    for name, x in train.items():
        g = _Gaussian.fit(np.asarray(x, dtype=np.float64), shrinkage)
        g.scale = max(float(np.median(g.distance(heldout[name]))), 1e-9)
        blocks[name] = g
    stats = DomainStats(blocks=blocks, threshold=1.0, trained_on=trained_on, train_images=n, heldout_images=m,
                        quantile=quantile, margin=margin)
    stats.threshold = float(np.quantile(stats.raw(heldout), quantile) * margin)
    return stats


def _data_name(data) -> str:
    """What `trained_on` says for a dataset path: "the images of NAME" (its file or folder name, never the full
    path, which would end up in exported models)."""
    path = os.path.normpath(os.fspath(data))
    name = os.path.basename(path)
    if name.startswith(("dataset_", "vqa", "captions", "questions")) or "." in name:  # a file: name its folder too
        name = f"{os.path.basename(os.path.dirname(path))}/{name}"
    return f"the images of {name}"


def backbone_grid(model, images, batch_size: int = 64) -> np.ndarray:
    """The backbone grid (N, pixels, C) of a captioner or VQA model for images (N, h, w, 3) 0..255, in batches.

    Through the compiled forward pass extraction uses (captioner.features): calling the model eagerly batch after
    batch left TensorFlow's CPU allocations behind, 6.6 GB of peak RSS for 1,300 images at 224x224 against 2.1."""
    from captioner.features import _predict
    predict = _predict(model.backbone, batch_size)
    out = [predict(np.asarray(images[start: start + batch_size], np.float32))
           for start in range(0, len(images), batch_size)]
    return np.concatenate(out, axis=0)


def _model_features(model, images, batch_size: int = 64) -> dict[str, np.ndarray]:
    """image_features of many images, batch by batch: the float temporaries (grids, pixel histograms) of a few
    thousand images at once would take gigabytes."""
    parts = [image_features(images[start: start + batch_size], backbone_grid(model, images[start: start + batch_size]))
             for start in range(0, len(images), batch_size)]
    if not parts:
        return image_features(images, backbone_grid(model, images))
    return {block: np.concatenate([p[block] for p in parts]) for block in parts[0]}


def calibrate_model_dir(directory, train_images, heldout_images, trained_on: str = "", max_train: int = 3000,
                        seed: int = 0, **fit_kwargs) -> DomainStats:
    """Fits the domain statistics of a captioner or VQA model folder and writes its domain.npz.

    Args:
        directory: the model folder (its own weights compute the features).
        train_images: (N, h, w, 3) 0..255 images of the training split, already resized for the model.
        heldout_images: (M, h, w, 3) in-domain images not used for fitting (the validation split); None: a fifth
            of the training images is held out.
        trained_on: what the images are; default: the folder's config "data" (its base name).
        max_train: at most this many training images are used (a random subset).

    Example:
        >>> calibrate_model_dir("runs/captioner", train_images, val_images, trained_on="Flickr8k photos")
    """
    from captioner.model import load_model_dir
    loaded = load_model_dir(directory)
    train_images = np.asarray(train_images)
    if heldout_images is None or len(heldout_images) == 0:  # no validation split: hold out a fifth of training
        cut = max(1, len(train_images) // 5)
        order = np.random.default_rng(seed).permutation(len(train_images))
        train_images, heldout_images = train_images[order[cut:]], train_images[order[:cut]]
    if len(train_images) > max_train:
        pick = np.sort(np.random.default_rng(seed).choice(len(train_images), max_train, replace=False))
        train_images = train_images[pick]
    if not trained_on:
        data = loaded.config.get("data") or ""
        trained_on = data if " " in data else (_data_name(data) if data else "its training data")
    heldout_images = np.asarray(heldout_images)
    stats = fit_domain(_model_features(loaded.model, train_images), _model_features(loaded.model, heldout_images),
                       trained_on=trained_on, **fit_kwargs)
    stats.save(directory)
    return stats


def calibrate_from_data(directory, data, image_root=None, annotations=None, train_split: str = "train",
                        heldout_split: str = "val", trained_on: str = "", verbose: int = 0,
                        max_train: int = 3000, max_heldout: int = 1000) -> DomainStats:
    """`captioner calibrate MODEL_DIR DATA`: decodes the data's training and held-out images and writes domain.npz.

    DATA is any caption or VQA dataset captioner.datasets reads (the model's own task decides which reader)."""
    from captioner.images import load_images
    from captioner.model import load_model_dir
    loaded = load_model_dir(directory)
    if loaded.task == "vqa":
        from captioner.datasets import load_vqa_dataset, split_examples
        examples = load_vqa_dataset(data, image_root, annotations)
    else:
        from captioner.datasets import load_caption_dataset, split_examples
        examples = load_caption_dataset(data, image_root)

    def paths(split, cap):
        seen, out = set(), []
        for e in split_examples(examples, split, required=False):
            if e.image not in seen:
                seen.add(e.image)
                out.append(e.image)
        if len(out) > cap:
            out = [out[i] for i in np.sort(np.random.default_rng(0).choice(len(out), cap, replace=False))]
        return out

    train_paths, heldout_paths = paths(train_split, max_train), paths(heldout_split, max_heldout)
    if not train_paths:
        raise UserError(f"{data}: no images in split '{train_split}' to fit the domain statistics on")
    if not heldout_paths:  # no validation split: hold out a fifth of the training images
        cut = max(1, len(train_paths) // 5)
        train_paths, heldout_paths = train_paths[cut:], train_paths[:cut]

    def decode(sources, chunk: int = 256):  # uint8, chunk by chunk: memory stays a quarter of float32's
        kept = []
        for start in range(0, len(sources), chunk):
            images, errors = load_images(sources[start: start + chunk], loaded.image_size, loaded.resize_policy)
            kept.append(images[[e is None for e in errors]].astype(np.uint8))
        return np.concatenate(kept) if kept else np.zeros((0, *loaded.image_size, 3), np.uint8)

    train_images, heldout_images = decode(train_paths), decode(heldout_paths)
    if not trained_on:
        trained_on = _data_name(data)
    stats = calibrate_model_dir(directory, train_images, heldout_images, trained_on=trained_on, max_train=max_train)
    if verbose:
        print(f"wrote {os.path.join(os.fspath(directory), FILENAME)}: {stats.train_images} training images, "
              f"threshold from {stats.heldout_images} held-out images")
    return stats


def evaluate_domain(loaded, sources, batch_size: int = 64) -> dict | None:
    """How many of a dataset's images lie out of a loaded model's domain (what `captioner evaluate` reports):
    {"images", "out_of_domain", "out_of_domain_rate", "mean_domain_score", "trained_on"}; None without statistics.
    Unreadable images are left out."""
    from captioner.images import load_images
    stats = load_domain(loaded.directory) if loaded.directory else None
    if stats is None or getattr(loaded.model, "backbone", None) is None:
        return None
    scores = []
    for start in range(0, len(sources), batch_size):
        images, errors = load_images(sources[start: start + batch_size], loaded.image_size, loaded.resize_policy)
        images = images[[e is None for e in errors]]
        if len(images):
            scores.extend(stats.score(images, backbone_grid(loaded.model, images)).tolist())
    if not scores:
        return None
    outside = int(sum(s > 1.0 for s in scores))
    return {"images": len(scores), "out_of_domain": outside, "out_of_domain_rate": outside / len(scores),
            "mean_domain_score": float(np.mean(scores)), "trained_on": stats.trained_on}


def warning_line(name: str, stats: DomainStats | None, score: float, task: str = "caption") -> str:
    """The one stderr line for an out-of-domain image: what the model knows, and how to get one that knows more.

    Example:
        >>> warning_line("cat.jpg", stats, 4.1)
        'cat.jpg is out of the model's domain (domain_score 4.1 > 1): it was trained on synthetic scenes ..., so
        its caption is probably wrong; to caption such images, train a model on them: captioner train DATA --out DIR'
    """
    what = stats.trained_on if stats is not None and stats.trained_on else "other images"
    noun, verb = ("caption", "caption") if task == "caption" else ("answer", "ask about")
    return (f"{name} is out of the model's domain (domain_score {score:.1f} > 1): it was trained on {what}, so its "
            f"{noun} is probably wrong; to {verb} such images, train a model on them: captioner train DATA --out DIR")
