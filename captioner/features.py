"""Grid-feature cache: a frozen CNN runs once over a set of images, streaming, into sharded float16 files that are
keyed by what made them.

Extraction streams: images are decoded and resized by ``captioner.images.load_image`` in a pool of threads (Pillow
releases the GIL), and each finished batch of grids is appended to the current shard file. With the backbone on an
accelerator, decoding runs a few batches ahead of it; on a CPU-only machine the two take turns, each batch decoded
by every core between two backbone calls (see ``build_feature_cache``'s ``overlap``). Memory holds a few batches
of pixels and grids, whatever the size of the dataset. A shard is written under a temporary name and renamed when
complete, so an interrupted extraction resumes from its finished shards.

A cache folder (one per backbone, image size, resize policy and image set, under the cache root) holds:

    manifest.json    the key, the shard table, grid shape and dtype, and "complete" once every shard is written
    images.txt       the images, one absolute path a line, in row order (sorted, each image once)
    shard-00000.npy  float16 (rows, pixels, C): the grids of rows [0, 1024), then shard-00001.npy, ...

The key is everything that changes the numbers: the backbone name, a fingerprint of the backbone's weight values
(so ImageNet vs random vs a fine-tuned file, and two networks with the same grid shape, never share a cache), the
image size, the resize policy, and the sorted image list with each file's size and modification time. Same key:
the cache is reused without a single backbone call. Different key: the folder is rebuilt, and the reason is
printed. Rows are sorted paths, so caption training and VQA training on one image set share one cache.

Example:
    >>> from captioner.backbones import build_backbone
    >>> from captioner.features import build_feature_cache
    >>> backbone = build_backbone("efficientnet_lite0", weights="imagenet")
    >>> cache = build_feature_cache(backbone, ["a.jpg", "b.jpg"], backbone_name="efficientnet_lite0",
    ...                             image_size=(224, 224), policy="stretch", cache_root="/tmp/features")
    >>> cache.read(cache.rows(["b.jpg"])).shape
    (1, 49, 1280)
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from lm.errors import UserError

__all__ = [
    "FeatureCache",
    "build_feature_cache",
    "open_feature_cache",
    "cache_key",
    "default_cache_root",
    "weights_fingerprint",
    "image_list",
    "stream_images",
]

FORMAT = 1  # bump when the layout or the meaning of the stored numbers changes
SHARD_SIZE = 1024  # images per shard: 128 MB of float16 7x7x1280 grids
MANIFEST = "manifest.json"
IMAGES = "images.txt"


def default_cache_root() -> str:
    """Where feature caches go unless told otherwise: $CAPTIONER_CACHE/features (default ~/.cache/captioner/features).

    Outside any model folder, so retraining, --overwrite and the VQA and caption trainers all find the same cache.
    """
    from captioner.backbones import cache_dir
    return str(cache_dir() / "features")


# ------------------------------------------------------------------------------------------------ the key


def weights_fingerprint(model) -> str:
    """sha256 over the shapes and values of every weight of a model: the identity of "the weights that made it"
    (ImageNet from keras.applications or the bundled file, a weights file, or a seeded random init alike)."""
    from keras import ops
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(ops.convert_to_numpy(weight))
        digest.update(f"{value.dtype.str}{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def image_list(paths) -> list[str]:
    """The cache's row order for some image paths: each image once, as an absolute path, sorted."""
    return sorted({os.path.abspath(os.fspath(p)) for p in paths})


def _images_fingerprint(images: list[str]) -> dict:
    """{"count", "sha256"} over "path size mtime" lines; a missing image is a one-line UserError."""
    digest, missing = hashlib.sha256(), []
    for path in images:
        try:
            stat = os.stat(path)
        except OSError:
            missing.append(path)
            continue
        digest.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    if missing:
        raise UserError(f"{len(missing)} image(s) not found, e.g. {missing[0]}; check the paths or --image-root")
    return {"count": len(images), "sha256": digest.hexdigest()}


def cache_key(backbone, backbone_name: str, image_size, policy: str, images: list[str]) -> dict:
    """What made a cache: backbone name, weights fingerprint, image size, resize policy, image list fingerprint.

    Args:
        backbone: the built backbone model (its weight values are fingerprinted, never called).
        backbone_name: a ``captioner.backbones.BACKBONES`` name.
        image_size: (height, width) the images are resized to.
        policy: the resize policy.
        images: the rows, as ``image_list`` returns them.
    """
    height, width = (int(s) for s in image_size)
    return {"format": FORMAT, "backbone": backbone_name, "weights": weights_fingerprint(backbone),
            "image_size": [height, width], "policy": policy, "images": _images_fingerprint(images),
            "dtype": "float16"}


def _folder_name(key: dict) -> str:
    """One folder per backbone, size, policy and image set; a change of weights rebuilds that folder in place."""
    which = hashlib.sha256(f"{key['policy']}\n{key['images']['sha256']}".encode()).hexdigest()[:12]
    height, width = key["image_size"]
    return f"{key['backbone']}-{height}x{width}-{which}"


def _differences(old: dict, new: dict) -> str:
    names = {"weights": "weights", "images": "image files", "image_size": "image size", "policy": "resize policy",
             "backbone": "backbone", "format": "cache format", "dtype": "dtype"}
    changed = [names.get(k, k) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(changed) or "nothing"


# ------------------------------------------------------------------------------------------------ the cache


@dataclass
class FeatureCache:
    """A finished cache folder: grids (rows, pixels, C) float16 in shards, read through short-lived memory maps.

    Reading copies the requested rows out and drops the map, so the process keeps no dataset-sized mapping
    resident; the operating system's page cache does the caching.

    Attributes:
        folder: the cache folder.
        manifest: manifest.json's content (``manifest["key"]`` is the key).
        images: absolute image paths in row order.
    """

    folder: str
    manifest: dict
    images: list[str]

    def __post_init__(self):
        self._row_of = {path: i for i, path in enumerate(self.images)}
        self._starts = np.array([s["start"] for s in self.manifest["shards"]], "int64")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def grid(self) -> tuple[int, int]:
        """(pixels, C) of one image's grid."""
        return int(self.manifest["pixels"]), int(self.manifest["channels"])

    @property
    def shard_bounds(self) -> list[tuple[int, int]]:
        """[(first row, end row)] of each shard, in order."""
        return [(s["start"], s["start"] + s["count"]) for s in self.manifest["shards"]]

    @property
    def nbytes(self) -> int:
        """Size of the shard files on disk."""
        return sum(os.path.getsize(os.path.join(self.folder, s["file"])) for s in self.manifest["shards"])

    def rows(self, paths) -> np.ndarray:
        """Row of each path (any form of the path that ``os.path.abspath`` maps to a cached image): int64 (n,)."""
        try:
            return np.array([self._row_of[os.path.abspath(os.fspath(p))] for p in paths], "int64")
        except KeyError as e:
            raise UserError(f"{e.args[0]}: not in the feature cache {self.folder}") from None

    def read(self, rows) -> np.ndarray:
        """Grids of some rows, in the order given: float32 (len(rows), pixels, C)."""
        rows = np.asarray(rows, "int64")
        out = np.empty((len(rows), *self.grid), "float32")  # (n, pixels, C)
        shard_of = np.searchsorted(self._starts, rows, side="right") - 1  # (n,)
        for shard in np.unique(shard_of):
            take = np.nonzero(shard_of == shard)[0]
            local = rows[take] - self._starts[shard]
            order = np.argsort(local)  # ascending offsets read the file front to back
            data = np.load(os.path.join(self.folder, self.manifest["shards"][shard]["file"]), mmap_mode="r")
            out[take[order]] = data[local[order]]
            del data  # unmap: the pages go back to the page cache, not this process
        return out

    def iter_shards(self):
        """Yields (first row, float32 grids (rows, pixels, C)) shard by shard: one shard in memory at a time."""
        for start, stop in self.shard_bounds:
            yield start, self.read(np.arange(start, stop))

    def pooled(self) -> np.ndarray:
        """Mean-pooled features of every row, float32 (rows, C): e.g. statistics of the training images."""
        return np.concatenate([grids.mean(axis=1) for _, grids in self.iter_shards()]) if len(self) else \
            np.zeros((0, self.grid[1]), "float32")


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path, value) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)


def open_feature_cache(folder) -> FeatureCache:
    """Opens a finished cache folder (written by ``build_feature_cache``); UserError if it is not one."""
    folder = os.fspath(folder)
    manifest = _read_json(os.path.join(folder, MANIFEST))
    if not manifest or not manifest.get("complete"):
        raise UserError(f"{folder}: not a finished feature cache (no complete {MANIFEST})")
    with open(os.path.join(folder, IMAGES)) as f:
        images = f.read().splitlines()
    return FeatureCache(folder, manifest, images)


def _shard_ok(path: str, count: int, grid: tuple[int, int]) -> bool:
    try:
        data = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return data.shape == (count, *grid) and data.dtype == np.float16


def _clear(folder: str) -> None:
    """Removes what a cache folder holds (only our own files; anything else stays)."""
    for name in os.listdir(folder):
        if name in (MANIFEST, IMAGES) or name.startswith("shard-") or ".tmp" in name:
            path = os.path.join(folder, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


# ------------------------------------------------------------------------------------------------ streaming


def default_workers() -> int:
    """Decoding threads that run while a model computes: half the CPUs (1 to 8). Decoding a JPEG costs about a
    tenth of a CNN forward pass on a CPU, and more threads than that only take cores from the model's thread pool."""
    return min(8, max(1, (os.cpu_count() or 2) // 2))


def stream_images(paths, image_size, policy: str, batch_size: int = 32, workers: int | None = None,
                  ahead: int = 3, batch_sizes=None):
    """Yields uint8 batches (n, h, w, 3) of decoded, resized images in order; decoding runs in `workers` threads,
    at most `ahead` batches ahead of the consumer (so memory is a few batches, whatever len(paths)).

    Args:
        paths: image paths.
        image_size: (height, width).
        policy: resize policy.
        batch_size: images per batch.
        workers: decoding threads (default ``default_workers()``).
        ahead: batches decoded ahead of the consumer; 0 decodes a batch only when the consumer asks for it (all
            workers on that batch; nothing decodes while the consumer works on it).
        batch_sizes: explicit sizes of the successive batches (summing to len(paths)) instead of batch_size.

    A bad image stops the stream with its one-line ``ImageError``.
    """
    from captioner.images import load_image
    workers = workers or default_workers()
    size = tuple(int(s) for s in image_size)
    paths = list(paths)
    if batch_sizes is None:
        batch_sizes = [min(batch_size, len(paths) - start) for start in range(0, len(paths), batch_size)]
    limit = ahead * max(batch_sizes, default=1)
    pending = collections.deque()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="decode")
    try:
        submitted = consumed = 0
        for count in batch_sizes:
            while submitted < min(len(paths), consumed + count + limit):
                pending.append(pool.submit(load_image, paths[submitted], size, policy))
                submitted += 1
            consumed += count
            yield np.stack([pending.popleft().result() for _ in range(count)])  # (count, h, w, 3) uint8
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _predict(backbone, batch_size: int | None = None):
    """A compiled forward pass (predict_on_batch: tf.function on TensorFlow, jit on JAX) as numpy. A short batch is
    padded to `batch_size` so the last one does not trace a second graph."""
    def run(batch):
        n = len(batch)
        if batch_size and n < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - n, *batch.shape[1:]), batch.dtype)])
        return np.asarray(backbone.predict_on_batch(batch))[:n]  # (n, pixels, C)
    return run


def _write_shard(path: str, batches, count: int, grid, dtype) -> None:
    """Writes an .npy of shape (count, *grid) by appending batches to a plain file (no memory map: nothing of the
    shard stays in this process), under a temporary name renamed when complete."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                    "shape": (count, *grid)})
            written = 0
            for grids in batches:
                f.write(np.ascontiguousarray(grids, dtype=dtype).tobytes())
                written += len(grids)
    except BaseException:
        os.remove(tmp)  # an unfinished shard never stays behind
        raise
    if written != count:
        os.remove(tmp)
        raise UserError(f"internal error: shard {path} got {written} rows, expected {count}")
    os.replace(tmp, path)


def build_feature_cache(backbone, paths, *, backbone_name: str, image_size, policy: str, cache_root=None,
                        batch_size: int = 32, shard_size: int = SHARD_SIZE, workers: int | None = None,
                        overlap: bool | None = None, verbose: int = 1) -> FeatureCache:
    """Returns the finished feature cache of some images: reused when its key matches, else (re)built, streaming.

    Args:
        backbone: a frozen backbone model, images (B, h, w, 3) 0..255 -> grids (B, pixels, C).
        paths: image paths (any order, repeats allowed); the cache holds each image once, rows = ``image_list``.
        backbone_name: its ``captioner.backbones.BACKBONES`` name (part of the key).
        image_size: (height, width) the images are resized to.
        policy: resize policy (``captioner.images.RESIZE_POLICIES``).
        cache_root: the folder holding cache folders (default ``default_cache_root()``).
        batch_size: images per backbone call.
        shard_size: images per shard file.
        workers: decoding threads (default: ``default_workers()`` when overlapping, else every CPU).
        overlap: decode the next batches while the backbone runs (True), or decode each batch with every CPU
            between two backbone calls (False). Default: overlap when the backbone runs on an accelerator
            (``lm.accel.on_accelerator``). On a CPU-only machine the backbone's thread pool already uses every core;
            decoding threads running beside it stall its parallel operations (and take the GIL from the thread that
            drives it), which costs more than the decoding itself (scripts/bench_scale.py measures the ratio).
        verbose: 0 silent; else a progress bar (images/s, time left) and a line when reusing or rebuilding.

    Returns:
        A ``FeatureCache``.

    Raises:
        UserError: a missing or unreadable image (one line; finished shards are kept and a rerun resumes).
    """
    from tqdm import tqdm
    images = image_list(paths)
    if not images:
        raise UserError("no images to extract features from")
    size = tuple(int(s) for s in image_size)
    key = cache_key(backbone, backbone_name, size, policy, images)
    root = os.fspath(cache_root) if cache_root is not None else default_cache_root()
    folder = os.path.join(root, _folder_name(key))
    grid = tuple(int(d) for d in backbone.output_shape[1:])  # (pixels, C)
    say = (lambda text: print(text, file=sys.stderr)) if verbose else (lambda text: None)

    manifest = _read_json(os.path.join(folder, MANIFEST))
    if manifest is not None and manifest.get("key") != key:
        say(f"feature cache {folder}: made with other {_differences(manifest.get('key') or {}, key)}; rebuilding")
        _clear(folder)
        manifest = None
    if manifest is not None and manifest.get("complete"):
        say(f"feature cache {folder}: reused ({len(images)} images)")
        return open_feature_cache(folder)
    if manifest is None:
        os.makedirs(folder, exist_ok=True)
        shards = [{"file": f"shard-{i:05d}.npy", "start": start, "count": min(shard_size, len(images) - start)}
                  for i, start in enumerate(range(0, len(images), shard_size))]
        manifest = {"key": key, "pixels": grid[0], "channels": grid[1], "dtype": "float16", "shards": shards,
                    "complete": False}
        with open(os.path.join(folder, IMAGES + ".tmp"), "w") as f:
            f.write("".join(p + "\n" for p in images))
        os.replace(os.path.join(folder, IMAGES + ".tmp"), os.path.join(folder, IMAGES))
        _write_json(os.path.join(folder, MANIFEST), manifest)

    todo = [s for s in manifest["shards"] if not _shard_ok(os.path.join(folder, s["file"]), s["count"], grid)]
    if len(todo) < len(manifest["shards"]):
        say(f"feature cache {folder}: resuming, {len(manifest['shards']) - len(todo)} of "
            f"{len(manifest['shards'])} shards already done")
    predict = _predict(backbone, batch_size)
    todo_paths = [images[s["start"] + i] for s in todo for i in range(s["count"])]
    sizes = [min(batch_size, s["count"] - i) for s in todo for i in range(0, s["count"], batch_size)]
    bar = tqdm(total=len(todo_paths), desc="extracting features", unit="img", disable=not verbose, smoothing=0.1)
    if overlap is None:
        from lm.accel import on_accelerator
        overlap = on_accelerator()
    workers = workers or (default_workers() if overlap else os.cpu_count() or 1)
    stream = stream_images(todo_paths, size, policy, workers=workers, ahead=3 if overlap else 0, batch_sizes=sizes)

    def shard_batches(count):
        while count > 0:
            pixels = next(stream)  # (n, h, w, 3) uint8, never across a shard boundary
            count -= len(pixels)
            grids = predict(pixels.astype("float32"))  # (n, pixels, C)
            bar.update(len(pixels))
            yield grids

    try:
        for shard in todo:
            _write_shard(os.path.join(folder, shard["file"]), shard_batches(shard["count"]), shard["count"], grid,
                         "float16")
    except UserError as e:  # e.g. an ImageError: one line naming the image
        raise UserError(f"{e} (feature extraction stopped; finished shards are kept and a rerun resumes)") from None
    finally:
        stream.close()
        bar.close()
    manifest["complete"] = True
    _write_json(os.path.join(folder, MANIFEST), manifest)
    return open_feature_cache(folder)
