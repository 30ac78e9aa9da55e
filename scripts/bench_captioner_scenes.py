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

With --scst it compares XE alone against XE + self-critical training (captioner.scst) started from that very XE
checkpoint (the XE model is trained first, or reused with --xe-model DIR), both scored on test and novel with
BLEU-4, CIDEr-D, exact match, the invented-object rate on single-object scenes and the relation-error rate
(captioner.scene_errors). The SCST budget (epochs, seconds) is printed with the table; the check printed at the
end: SCST raises test CIDEr-D by >= 5% relative and raises test exact match.

Every row also reports the invented-object and relation-error rates.

Usage:
    .venv/bin/python scripts/bench_captioner_scenes.py                  # the default recipe (~15-20 min on 2 CPUs)
    .venv/bin/python scripts/bench_captioner_scenes.py --scst --seed 7 --epochs 12 --schedule cosine --warmup 1 \
        --monitor cider --patience 20                                   # XE vs XE + SCST (the bundled recipe)
    .venv/bin/python scripts/bench_captioner_scenes.py --scst --xe-model runs/xe12/attention --data runs/scenes-7 \
        --seed 7                                                        # SCST from an existing XE model
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

METRICS = [("Bleu_1", "BLEU-1"), ("Bleu_4", "BLEU-4"), ("METEOR", "METEOR"), ("ROUGE_L", "ROUGE-L"),
           ("CIDEr", "CIDEr"), ("exact_match", "exact"), ("invented_rate", "invent"),
           ("relation_error_rate", "rel.err")]


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
    p.add_argument("--scst", action="store_true",
                   help="compare XE alone with XE + SCST from the same XE checkpoint (attention model only)")
    p.add_argument("--xe-model", default=None, help="with --scst: reuse this XE model folder instead of training one")
    p.add_argument("--scst-epochs", type=int, default=4, help="SCST epochs (default 4)")
    p.add_argument("--scst-lr", type=float, default=1e-4, help="SCST learning rate (default 1e-4)")
    p.add_argument("--scst-batch", type=int, default=16, help="SCST images per step (default 16)")
    p.add_argument("--samples", type=int, default=5, help="SCST samples per image (default 5)")
    p.add_argument("--scst-budget", type=float, default=1200, help="SCST seconds (default 1200)")
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
            label_smoothing=args.label_smoothing, monitor=args.monitor, overwrite=True)
    cpu = time.process_time() - cpu
    result = {"train_seconds": summary["train_seconds"], "train_cpu_seconds": round(cpu, 1),
              "epochs": summary["epochs"], "best_epoch": summary.get("best_epoch"),
              "val_loss": summary["val_loss"], "val_cider": summary.get("val_cider")}
    result.update(score_model(args, dataset, out_dir))
    return result


def score_model(args, dataset: str, model_dir: str) -> dict:
    """Captions test and novel with beam search and scores them: pycocoevalcap metrics, exact match, the invented-
    object rate on single-object scenes, the relation-error rate (captioner.scene_errors)."""
    from captioner.datasets import load_caption_dataset, split_examples
    from captioner.metrics import caption_scores
    from captioner.api import Captioner
    from captioner.model import load_model_dir
    from captioner.scene_errors import caption_errors
    loaded = load_model_dir(model_dir, task="caption")
    with open(dataset) as f:
        objects = {im["filename"]: im["objects"] for im in json.load(f)["images"]}
    result = {"weights_mb": round(os.path.getsize(os.path.join(model_dir, "model.weights.h5")) / 2**20, 2)}
    examples = load_caption_dataset(dataset)
    for split in ("test", "novel"):
        start = time.perf_counter()
        chosen = split_examples(examples, split)
        captions = Captioner(loaded).caption([e.image for e in chosen], beam=args.beam, batch_size=128,
                                             errors="return")
        references = {e.image_id: [" ".join(c) for c in e.captions] for e in chosen}
        hypotheses = {e.image_id: r.caption for e, r in zip(chosen, captions)}
        with contextlib.redirect_stdout(io.StringIO()):
            scores = caption_scores(references, hypotheses, meteor=args.meteor)
        errors = [caption_errors(r.caption, objects[os.path.basename(e.image)])
                  for e, r in zip(chosen, captions)]
        single = [x["invented"] for x in errors if x["invented"] is not None]
        related = [x["relation_error"] for x in errors if x["relation_error"] is not None]
        scores["invented_rate"] = sum(single) / len(single) if single else None
        scores["single_object_scenes"] = len(single)
        scores["relation_error_rate"] = sum(related) / len(related) if related else None
        scores["captions_with_relation"] = len(related)
        scores["images"] = len(chosen)
        scores["eval_seconds"] = round(time.perf_counter() - start, 1)
        result[split] = scores
    return result


def run_scst(args, dataset: str, out: str) -> dict:
    """XE (trained, or --xe-model) and XE + SCST from it, both scored."""
    from captioner.scst import train_scst
    results = {}
    if args.xe_model:
        xe_dir = args.xe_model
        log(args, f"== scoring the XE model {xe_dir}")
        results["XE"] = {"train_seconds": None, "train_cpu_seconds": None, "epochs": None,
                         **score_model(args, dataset, xe_dir)}
    else:
        xe_dir = os.path.join(out, "attention")
        log(args, "== training XE")
        results["XE"] = train_and_score(args, dataset, xe_dir, True)
    scst_dir = os.path.join(out, "scst")
    log(args, f"== SCST from {xe_dir}: {args.scst_epochs} epochs or {args.scst_budget:.0f} s, lr {args.scst_lr}, "
              f"{args.scst_batch} images x {args.samples} samples per step")
    quiet = io.StringIO()
    cpu = time.process_time()
    with contextlib.redirect_stdout(quiet) if args.json else contextlib.nullcontext():
        summary = train_scst(dataset, xe_dir, scst_dir, samples=args.samples, epochs=args.scst_epochs,
                             batch_size=args.scst_batch, lr=args.scst_lr, seed=args.seed,
                             verbose=0 if args.json else 1, time_budget=args.scst_budget, patience=args.scst_epochs)
    results["XE+SCST"] = {"train_seconds": summary["train_seconds"],
                          "train_cpu_seconds": round(time.process_time() - cpu, 1), "epochs": summary["epochs"],
                          "best_epoch": summary["best_epoch"], "reward": summary["reward"],
                          "epoch_seconds": summary["epoch_seconds"],
                          "val_cider": summary["val_cider"], "val_cider_xe": summary.get("val_cider_init"),
                          **score_model(args, dataset, scst_dir)}
    return results


def scst_acceptance(results: dict) -> dict:
    xe, rl = results["XE"]["test"], results["XE+SCST"]["test"]
    gain = rl["CIDEr"] / xe["CIDEr"] - 1
    return {"cider_relative_gain": round(gain, 4), "exact_gain": round(rl["exact_match"] - xe["exact_match"], 4),
            "passed": bool(gain >= 0.05 and rl["exact_match"] > xe["exact_match"])}


def format_table(results: dict) -> str:
    head = f"{'model':14} {'split':6} " + " ".join(f"{label:>7}" for _, label in METRICS) + f" {'epochs':>6} {'train s':>8} {'cpu s':>7}"
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        for split in ("test", "novel"):
            cells = []
            for key, _ in METRICS:
                v = r[split].get(key)
                cells.append(f"{'-':>7}" if v is None else f"{v:7.3f}")
            epochs, seconds, cpu = (r.get(k) for k in ("epochs", "train_seconds", "train_cpu_seconds"))
            lines.append(f"{name:14} {split:6} " + " ".join(cells) + f" {epochs if epochs is not None else '-':>6}"
                         f" {seconds if seconds is not None else '-':>8} {cpu if cpu is not None else '-':>7}")
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
    if args.scst and args.xe_model:
        budget = f"XE model given ({args.xe_model})"
    log(args, f"== backend {keras.backend.backend()}; budget per XE model: {budget}; models in {out}")
    results = {}

    def report(check) -> dict:  # what --json prints, for the XE/SCST comparison and the attention ablation alike
        return {"config": {k: v for k, v in vars(args).items() if k not in ("json",)},
                "backend": keras.backend.backend(), "results": results, "acceptance": check,
                "total_seconds": round(time.perf_counter() - start, 1)}

    if args.scst:
        results = run_scst(args, dataset, out)
        check = scst_acceptance(results)
        payload = report(check)
        if args.json:
            print(json.dumps(payload))
            return 0
        print()
        print(format_table(results))
        r = results["XE+SCST"]
        print(f"\nSCST budget: {r['epochs']} epochs (best {r['best_epoch']}), {r['train_seconds']:.0f} s, "
              f"{args.scst_batch} images x {args.samples} samples per step, lr {args.scst_lr}; seconds per epoch "
              f"(training + validation) {', '.join(f'{s:.0f}' for s in r['epoch_seconds'])}")
        print(f"XE + SCST vs XE (test): CIDEr-D {check['cider_relative_gain']:+.1%}, exact match "
              f"{check['exact_gain']:+.3f} -> {'PASS' if check['passed'] else 'FAIL'} (needs CIDEr-D >= +5% and "
              f"a higher exact match)")
        print(f"total {payload['total_seconds']:.0f} s")
        return 0
    for name, attention in (("attention", True), ("no-attention", False)):
        if args.only and args.only != name:
            continue
        log(args, f"== training {name}")
        results[name] = train_and_score(args, dataset, os.path.join(out, name), attention)
        log(args, f"   {name}: {results[name]['epochs']} epochs in {results[name]['train_seconds']:.0f} s; "
                  f"test BLEU-4 {results[name]['test']['Bleu_4']:.3f} CIDEr {results[name]['test']['CIDEr']:.3f} "
                  f"exact {results[name]['test']['exact_match']:.3f}")
    check = acceptance(results)
    payload = report(check)
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
