#!/usr/bin/env python
"""Show, Attend and Tell vs Show and Tell on synthetic scenes, with one training budget for both.

Generates scenes (captioner.scenes), trains the soft-attention captioner and the no-attention baseline (the mean
image feature is the first input of the LSTM) with the same recipe, the same epochs and the same time budget, then
scores both on the held-out "test" split and on the "novel" split (colour-shape pairs never seen in training) with
captioner.evaluate.evaluate_captioner. Scores are pycocoevalcap fractions (BLEU-4 0.243 = "24.3" in papers; CIDEr-D
on its 0..10 scale).

Scene captions name two objects *and* how they are placed ("a large red circle above a small blue square"): a mean-
pooled image vector has to squeeze colour, shape and position of every object into one vector, while attention can
look at each object in turn. The acceptance check printed at the end: attention beats the baseline by >= 0.10 BLEU-4
and on CIDEr (test split).

Usage:
    .venv/bin/python scripts/bench_captioner_scenes.py                  # the default recipe (~15-20 min on 2 CPUs)
    .venv/bin/python scripts/bench_captioner_scenes.py --images 600 --epochs 1 --json    # a quick smoke run
    .venv/bin/python scripts/bench_captioner_scenes.py --meteor        # METEOR too (Java; slower)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

METRICS = [("Bleu_1", "BLEU-1"), ("Bleu_2", "BLEU-2"), ("Bleu_3", "BLEU-3"), ("Bleu_4", "BLEU-4"),
           ("METEOR", "METEOR"), ("ROUGE_L", "ROUGE-L"), ("CIDEr", "CIDEr"), ("exact_match", "exact")]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=4000, help="scenes to generate, all splits (default 4000)")
    p.add_argument("--image-size", type=int, default=64, help="scene side in pixels (default 64)")
    p.add_argument("--seed", type=int, default=1, help="scene and training seed (default 1)")
    p.add_argument("--data", default=None, help="reuse (or write) the scenes in this folder")
    p.add_argument("--out", default=None, help="folder for the two model folders (default: a temporary one)")
    p.add_argument("--epochs", type=int, default=8, help="epochs per model (default 8)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds per model (training stops after the epoch past it; same for both)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--units", type=int, default=256, help="LSTM units (default 256)")
    p.add_argument("--embed", type=int, default=128, help="word embedding size (default 128)")
    p.add_argument("--attention-dim", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--alpha-c", type=float, default=0.0,
                   help="doubly stochastic weight for the attention model (default 0: with 64 grid cells and ~11 "
                        "words its floor is 64 (1 - 11/64)^2 = 44, and 0.1 already cost 0.13 BLEU-4 at 6 epochs)")
    p.add_argument("--max-length", type=int, default=16, help="longest caption in words + <eos> (scenes: <= 14)")
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--lr-decay", type=float, default=1.0,
                   help="divide the learning rate by this after an epoch without validation gain (default 1: off)")
    p.add_argument("--schedule", choices=["none", "cosine", "step"], default="none",
                   help="learning-rate decay over the run (default none: constant)")
    p.add_argument("--warmup", type=float, default=0.0, help="epochs of linear learning-rate warmup (default 0)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing (default 0)")
    p.add_argument("--monitor", choices=["loss", "cider"], default="loss",
                   help="best epoch by validation loss or by validation CIDEr-D (default loss)")
    p.add_argument("--beam", type=int, default=3, help="beam width for evaluation (default 3)")
    p.add_argument("--meteor", action="store_true", help="also compute METEOR (Java; adds a few seconds a split)")
    p.add_argument("--only", choices=["attention", "no-attention"], default=None, help="train just one of the two")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object (nothing else)")
    return p.parse_args(argv)


def log(args, *parts) -> None:
    if not args.json:
        print(*parts, flush=True)


def ensure_scenes(args) -> str:
    """Generates the scenes (or reuses an identical earlier run in --data) -> path of dataset_scenes.json."""
    from captioner.scenes import generate_scenes
    folder = args.data or tempfile.mkdtemp(prefix="bench-scenes-")
    dataset = os.path.join(folder, "dataset_scenes.json")
    stamp = os.path.join(folder, "bench-stamp.json")
    key = {"images": args.images, "seed": args.seed, "image_size": args.image_size}
    if os.path.isfile(dataset) and os.path.isfile(stamp):
        with open(stamp) as f:
            if json.load(f) == key:
                log(args, f"== reusing scenes in {folder}")
                return dataset
    summary = generate_scenes(folder, args.images, seed=args.seed, image_size=args.image_size)
    with open(stamp, "w") as f:
        json.dump(key, f)
    log(args, f"== {summary['images']} scenes in {folder} ({summary['splits']}, {summary['seconds']:.0f} s)")
    return dataset


def train_and_score(args, dataset: str, out_dir: str, attention: bool) -> dict:
    from captioner.evaluate import evaluate_captioner
    from captioner.model import load_model_dir
    from captioner.training import train_captioner
    quiet = io.StringIO()
    cpu = time.process_time()
    with contextlib.redirect_stdout(quiet) if args.json else contextlib.nullcontext():
        summary = train_captioner(
            dataset, out_dir, backbone="small_cnn", image_size=args.image_size, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, embed=args.embed, units=args.units,
            attention_dim=args.attention_dim, dropout=args.dropout, attention=attention,
            alpha_c=args.alpha_c if attention else 0.0, max_length=args.max_length, seed=args.seed,
            verbose=0 if args.json else 2, time_budget=args.time_budget, patience=args.patience,
            lr_decay=args.lr_decay, schedule=args.schedule, warmup=args.warmup,
            label_smoothing=args.label_smoothing, monitor=args.monitor)
    cpu = time.process_time() - cpu
    loaded = load_model_dir(out_dir, task="caption")
    result = {"train_seconds": summary["train_seconds"], "train_cpu_seconds": round(cpu, 1),
              "epochs": summary["epochs"],
              "val_loss": summary["val_loss"], "weights_mb": round(
                  os.path.getsize(os.path.join(out_dir, "model.weights.h5")) / 2**20, 2)}
    for split in ("test", "novel"):
        start = time.perf_counter()
        scores = evaluate_captioner(loaded, dataset, split=split, beam_width=args.beam, meteor=args.meteor)
        scores["eval_seconds"] = round(time.perf_counter() - start, 1)
        result[split] = scores
    return result


def format_table(results: dict) -> str:
    head = f"{'model':14} {'split':6} " + " ".join(f"{label:>7}" for _, label in METRICS) + f" {'epochs':>6} {'train s':>8} {'cpu s':>7}"
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        for split in ("test", "novel"):
            cells = []
            for key, _ in METRICS:
                v = r[split].get(key)
                cells.append(f"{'-':>7}" if v is None else f"{v:7.3f}")
            lines.append(f"{name:14} {split:6} " + " ".join(cells) + f" {r['epochs']:>6} {r['train_seconds']:>8.0f}"
                         f" {r['train_cpu_seconds']:>7.0f}")
    return "\n".join(lines)


def acceptance(results: dict) -> dict | None:
    if set(results) != {"attention", "no-attention"}:
        return None
    a, b = results["attention"]["test"], results["no-attention"]["test"]
    gain_b4 = a["Bleu_4"] - b["Bleu_4"]
    gain_cider = a["CIDEr"] - b["CIDEr"]
    return {"bleu4_gain": round(gain_b4, 4), "cider_gain": round(gain_cider, 4),
            "passed": bool(gain_b4 >= 0.10 and gain_cider > 0)}


def main(argv=None) -> int:
    args = parse_args(argv)
    import keras
    start = time.perf_counter()
    dataset = ensure_scenes(args)
    out = args.out or tempfile.mkdtemp(prefix="bench-captioner-")
    budget = f"{args.epochs} epochs" + (f", {args.time_budget:.0f} s" if args.time_budget else "")
    log(args, f"== backend {keras.backend.backend()}; budget per model: {budget}; models in {out}")
    results = {}
    for name, attention in (("attention", True), ("no-attention", False)):
        if args.only and args.only != name:
            continue
        log(args, f"== training {name}")
        results[name] = train_and_score(args, dataset, os.path.join(out, name), attention)
        log(args, f"   {name}: {results[name]['epochs']} epochs in {results[name]['train_seconds']:.0f} s; "
                  f"test BLEU-4 {results[name]['test']['Bleu_4']:.3f} CIDEr {results[name]['test']['CIDEr']:.3f} "
                  f"exact {results[name]['test']['exact_match']:.3f}")
    check = acceptance(results)
    payload = {"config": {k: v for k, v in vars(args).items() if k not in ("json",)},
               "backend": keras.backend.backend(), "results": results, "acceptance": check,
               "total_seconds": round(time.perf_counter() - start, 1)}
    if args.json:
        print(json.dumps(payload))
    else:
        print()
        print(format_table(results))
        if check:
            verdict = "PASS" if check["passed"] else "FAIL"
            print(f"\nattention - no attention (test): BLEU-4 {check['bleu4_gain']:+.3f}, "
                  f"CIDEr {check['cider_gain']:+.3f} -> {verdict} (needs BLEU-4 >= +0.10 and CIDEr > 0)")
        print(f"total {payload['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
