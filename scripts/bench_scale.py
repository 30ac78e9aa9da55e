#!/usr/bin/env python
"""Scale benchmark: COCO-like data (640x480 JPEGs, 5 captions each, Karpathy JSON) -> streaming feature extraction
with the bundled EfficientNet-Lite0 -> one caption-training epoch from the cache. Prints images/s, captions/s, the
peak RSS of each stage (each runs in its own process) and the cache size.

Stages, for each --images N:
  reference  the backbone alone on pre-decoded arrays (the same predict call, batch and image size): images/s,
             measured before and after the extraction (the ratio uses their mean: the load of a shared machine varies)
  extract    build_feature_cache over all N files (decoding threads + backbone + shard writes): images/s, RSS
  train      `train_captioner` for one epoch from that cache (default decoder sizes): captions/s, RSS

With several sizes (--images 1000,10000) it also prints each stage's peak RSS relative to the first size: memory
must not grow with the dataset. Figures are measured here and now; on a shared machine, compare the ratios.

Usage:
    python scripts/bench_scale.py --images 1000
    python scripts/bench_scale.py --images 1000,10000 --out /tmp/bench_scale     # then delete /tmp/bench_scale
    KERAS_BACKEND=jax python scripts/bench_scale.py --images 1000                # any Keras backend
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

COLORS = ["red", "blue", "green", "yellow", "white", "black", "brown", "orange", "purple", "gray"]
THINGS = ["dog", "cat", "man", "woman", "car", "bus", "bicycle", "horse", "bird", "boat", "train", "child",
          "table", "pizza", "clock", "umbrella", "kite", "skateboard", "bench", "cow"]
PLACES = ["on the street", "in a field", "near the water", "in a kitchen", "on a beach", "in the snow",
          "next to a building", "under a tree", "in a park", "at night"]
VERBS = ["sitting", "standing", "walking", "parked", "lying", "running", "waiting", "playing"]


def _caption(rng) -> str:
    n, c, t, v, p = (rng.integers(len(x)) for x in (["a", "two", "three"], COLORS, THINGS, VERBS, PLACES))
    extra = f" with a {COLORS[rng.integers(10)]} {THINGS[rng.integers(20)]}" if rng.random() < 0.5 else ""
    return f"{['a', 'two', 'three'][n]} {COLORS[c]} {THINGS[t]} {VERBS[v]} {PLACES[p]}{extra}"


def _write_image(args) -> None:
    """One 640x480 JPEG: a smooth colour field with a few shapes and noise (about 60-100 KB, like a photo)."""
    import numpy as np
    from PIL import Image, ImageDraw
    path, seed = args
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    im = Image.fromarray(small).resize((640, 480), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 6))):
        x, y = int(rng.integers(0, 560)), int(rng.integers(0, 400))
        w, h = int(rng.integers(30, 200)), int(rng.integers(30, 200))
        color = tuple(int(v) for v in rng.integers(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x, y, x + w, y + h], fill=color)
    pixels = np.asarray(im).astype(np.int16) + rng.integers(-12, 12, (480, 640, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)


def write_dataset(folder: str, n: int) -> str:
    """N JPEGs under folder/images and folder/dataset_coco.json (Karpathy format, 5 captions each, 5% val)."""
    import numpy as np
    from concurrent.futures import ProcessPoolExecutor
    from tqdm import tqdm
    json_path = os.path.join(folder, "dataset_coco.json")
    if os.path.isfile(json_path):
        with open(json_path) as f:
            if len(json.load(f)["images"]) == n:
                return json_path
    images_dir = os.path.join(folder, "images")
    os.makedirs(images_dir, exist_ok=True)
    jobs = [(os.path.join(images_dir, f"{i:06d}.jpg"), i) for i in range(n)]
    with ProcessPoolExecutor(os.cpu_count() or 2) as pool:
        list(tqdm(pool.map(_write_image, jobs, chunksize=32), total=n, desc="writing JPEGs", unit="img"))
    rng = np.random.default_rng(0)
    entries = []
    for i in range(n):
        sentences = [_caption(rng) for _ in range(5)]
        entries.append({"filepath": "images", "filename": f"{i:06d}.jpg", "imgid": i,
                        "split": "val" if i % 20 == 0 else "train",
                        "sentences": [{"raw": s, "tokens": s.split()} for s in sentences]})
    with open(json_path, "w") as f:
        json.dump({"dataset": "coco", "images": entries}, f)
    return json_path


# ------------------------------------------------------------------------------------------------ stages (children)


def stage_reference(json_path: str, cache_root: str, batch: int, decoder: dict) -> dict:
    """The backbone's own speed: predict on arrays decoded beforehand (up to 320 images, all in memory)."""
    import numpy as np
    from captioner.backbones import build_backbone
    from captioner.images import load_images
    with open(json_path) as f:
        entries = json.load(f)["images"]
    folder = os.path.dirname(json_path)
    paths = [os.path.join(folder, e["filepath"], e["filename"]) for e in entries[:320]]
    backbone = build_backbone("efficientnet_lite0", weights="imagenet")
    pixels = load_images(paths, 224)[0]  # (n, 224, 224, 3) float32
    backbone.predict_on_batch(pixels[:batch])  # compile
    start = time.perf_counter()
    for i in range(0, len(pixels) - len(pixels) % batch, batch):
        np.asarray(backbone.predict_on_batch(pixels[i: i + batch]))
    seconds = time.perf_counter() - start
    return {"images_per_s": (len(pixels) - len(pixels) % batch) / seconds}


def stage_extract(json_path: str, cache_root: str, batch: int, decoder: dict) -> dict:
    import numpy as np
    from captioner.backbones import build_backbone
    from captioner.features import build_feature_cache
    with open(json_path) as f:
        entries = json.load(f)["images"]
    folder = os.path.dirname(json_path)
    paths = [os.path.join(folder, e["filepath"], e["filename"]) for e in entries]
    backbone = build_backbone("efficientnet_lite0", weights="imagenet")
    backbone.predict_on_batch(np.zeros((batch, 224, 224, 3), "float32"))  # compile, as the reference does
    start = time.perf_counter()
    cache = build_feature_cache(backbone, paths, backbone_name="efficientnet_lite0", image_size=(224, 224),
                                policy="stretch", cache_root=cache_root, batch_size=batch, verbose=1)
    seconds = time.perf_counter() - start
    return {"images_per_s": len(paths) / seconds, "seconds": seconds, "cache_bytes": cache.nbytes,
            "cache_folder": cache.folder}


def stage_train(json_path: str, cache_root: str, batch: int, decoder: dict) -> dict:
    from captioner.training import train_captioner
    out = os.path.join(os.path.dirname(json_path), "model")
    summary = train_captioner(json_path, out, backbone="efficientnet_lite0", weights="imagenet", epochs=1,
                              batch_size=batch, cache_dir=cache_root, min_count=5, verbose=2, **decoder)
    seconds = summary["epoch_seconds"][0]
    return {"captions_per_s": summary["train_pairs"] / seconds, "epoch_seconds": seconds,
            "train_pairs": summary["train_pairs"], "vocab_size": summary["vocab_size"]}


STAGES = {"reference": stage_reference, "extract": stage_extract, "train": stage_train}


def run_stage(stage: str, json_path: str, cache_root: str, batch: int, decoder: dict) -> dict:
    """Runs one stage in a child process; adds its peak RSS (from wait4, this child only) in MB."""
    result_path = os.path.join(os.path.dirname(json_path), f"{stage}.result.json")
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--stage", stage, "--data", json_path,
                             "--cache-root", cache_root, "--batch-size", str(batch), "--result", result_path,
                             "--units", str(decoder["units"]), "--embed", str(decoder["embed"]),
                             "--attention-dim", str(decoder["attention_dim"])])
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"bench_scale: stage {stage} failed (exit {proc.returncode})")
    with open(result_path) as f:
        result = json.load(f)
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux: kilobytes
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", default="1000", help="dataset size(s), comma-separated, e.g. 1000,10000")
    parser.add_argument("--out", default="/tmp/bench_scale", help="work folder (JPEGs, caches, models)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per backbone call and captions per step")
    parser.add_argument("--units", type=int, default=512, help="decoder recurrent units (train_captioner's default)")
    parser.add_argument("--embed", type=int, default=256, help="decoder word embedding size (train_captioner's)")
    parser.add_argument("--attention-dim", type=int, default=256, help="decoder attention size (train_captioner's)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (default: delete it at the end)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)  # internal: one child stage
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--cache-root", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    decoder = {"units": args.units, "embed": args.embed, "attention_dim": args.attention_dim}

    if args.stage:
        result = STAGES[args.stage](args.data, args.cache_root, args.batch_size, decoder)
        with open(args.result, "w") as f:
            json.dump(result, f)
        return 0

    import keras
    sizes = [int(s) for s in args.images.split(",")]
    results = {}
    try:
        for n in sizes:
            folder = os.path.join(args.out, f"n{n}")
            start = time.perf_counter()
            json_path = write_dataset(folder, n)
            print(f"== N={n}: dataset ready in {time.perf_counter() - start:.0f} s", flush=True)
            cache_root = os.path.join(folder, "cache")
            shutil.rmtree(cache_root, ignore_errors=True)  # measure a cold extraction
            # The reference runs before and after the extraction: on a shared machine the load changes, and the
            # ratio compares extraction with the mean of the two.
            before = run_stage("reference", json_path, cache_root, args.batch_size, decoder)
            extract = run_stage("extract", json_path, cache_root, args.batch_size, decoder)
            after = run_stage("reference", json_path, cache_root, args.batch_size, decoder)
            reference = {"images_per_s": (before["images_per_s"] + after["images_per_s"]) / 2,
                         "images_per_s_before_after": [before["images_per_s"], after["images_per_s"]],
                         "peak_rss_mb": max(before["peak_rss_mb"], after["peak_rss_mb"])}
            results[n] = {"reference": reference, "extract": extract,
                          "train": run_stage("train", json_path, cache_root, args.batch_size, decoder)}
            results[n]["jpeg_mb"] = sum(e.stat().st_size for e in os.scandir(os.path.join(folder, "images"))) / 2**20
    finally:
        if not args.keep:
            shutil.rmtree(args.out, ignore_errors=True)

    print(f"\nbench_scale ({keras.backend.backend()} backend, {os.cpu_count()} CPUs, EfficientNet-Lite0 224x224, "
          f"batch {args.batch_size}; decoder units {args.units}, embed {args.embed}, attention {args.attention_dim})")
    print(f"{'N':>7} {'backbone img/s':>14} {'extract img/s':>13} {'ratio':>6} {'train capt/s':>12} "
          f"{'epoch s':>8} {'cache MB':>9} {'RSS MB: ref':>11} {'extract':>8} {'train':>7}")
    first = sizes[0]
    for n in sizes:
        r = results[n]
        ratio = r["extract"]["images_per_s"] / r["reference"]["images_per_s"]
        print(f"{n:>7} {r['reference']['images_per_s']:>14.1f} {r['extract']['images_per_s']:>13.1f} {ratio:>6.2f} "
              f"{r['train']['captions_per_s']:>12.0f} {r['train']['epoch_seconds']:>8.0f} "
              f"{r['extract']['cache_bytes'] / 2**20:>9.0f} {r['reference']['peak_rss_mb']:>11.0f} "
              f"{r['extract']['peak_rss_mb']:>8.0f} {r['train']['peak_rss_mb']:>7.0f}")
    for n in sizes[1:]:
        growth = {s: results[n][s]["peak_rss_mb"] / results[first][s]["peak_rss_mb"] for s in ("extract", "train")}
        print(f"peak RSS at N={n} / N={first}: extract {growth['extract']:.2f}x, train {growth['train']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": keras.backend.backend(), "decoder": decoder, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
