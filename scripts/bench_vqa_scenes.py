#!/usr/bin/env python
"""VQA on synthetic scenes: stacked attention against the blind and no-attention baselines, one budget for all.

Generates a scenes dataset (captioner.scenes), trains the "attention" (SAN), "blind" (question only) and "mean"
(mean-pooled image, no attention) models with the same recipe, epochs and time budget, and prints VQA accuracy on
the held-out test split and on the "novel" split (colour-shape pairs never seen in training), overall and per
answer / question type.

Usage:
    .venv/bin/python scripts/bench_vqa_scenes.py                       # the acceptance run (see DEFAULTS)
    .venv/bin/python scripts/bench_vqa_scenes.py --images 600 --epochs 3 --modes attention blind --json

Each mode's results are also written to OUT/MODE/bench.json; --reuse takes them from there when the recipe is the
same (e.g. after scripts/train_bundled_vqa.sh, whose attention model is the one this trains).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The recipe of the bundled model (scripts/train_bundled_vqa.sh uses the same numbers).
DEFAULTS = dict(images=6000, epochs=20, seed=0, image_size=64, embed=64, units=128, hops=2, batch_size=128, lr=2e-3,
                dropout=0.1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=DEFAULTS["images"], help="scenes to generate (all splits)")
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--image-size", type=int, default=DEFAULTS["image_size"])
    parser.add_argument("--units", type=int, default=DEFAULTS["units"])
    parser.add_argument("--embed", type=int, default=DEFAULTS["embed"])
    parser.add_argument("--hops", type=int, default=DEFAULTS["hops"])
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    parser.add_argument("--dropout", type=float, default=DEFAULTS["dropout"])
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds of training per model (the same for every mode); default: none")
    parser.add_argument("--modes", nargs="+", default=["attention", "blind", "mean"],
                        choices=["attention", "blind", "mean"])
    parser.add_argument("--out", default="runs/bench_vqa_scenes", help="working folder (scenes and models)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--reuse", action="store_true",
                        help="take a mode's results from OUT/MODE/bench.json when it was trained with the same recipe")
    parser.add_argument("--verbose", type=int, default=1)
    args = parser.parse_args(argv)

    from captioner.model import load_model_dir
    from captioner.scenes import generate_scenes
    from captioner.vqa import evaluate_vqa, train_vqa
    from lm.errors import UserError

    try:
        scenes_dir = os.path.join(args.out, f"scenes-{args.images}-{args.seed}-{args.image_size}")
        data = os.path.join(scenes_dir, "vqa.jsonl")
        if not os.path.isfile(data):
            summary = generate_scenes(scenes_dir, args.images, seed=args.seed, image_size=args.image_size)
            if args.verbose:
                print(f"generated {summary['images']} scenes, {summary['questions']} questions "
                      f"({summary['splits']}) in {summary['seconds']:.0f}s", file=sys.stderr)
        recipe = {k: getattr(args, k) for k in ("images", "seed", "image_size", "epochs", "units", "embed", "hops",
                                                 "batch_size", "lr", "dropout", "time_budget")}
        results = {}
        for mode in args.modes:
            folder = os.path.join(args.out, mode)
            saved = os.path.join(folder, "bench.json")
            if args.reuse and os.path.isfile(saved):
                with open(saved) as f:
                    previous = json.load(f)
                if previous.get("recipe") == recipe:
                    results[mode] = previous["result"]
                    if args.verbose:
                        print(f"== {mode}: reusing {saved}", file=sys.stderr)
                    continue
            if args.verbose:
                print(f"== training {mode}", file=sys.stderr)
            summary = train_vqa(data, folder, image_size=args.image_size, epochs=args.epochs,
                                batch_size=args.batch_size, lr=args.lr, embed=args.embed, units=args.units,
                                hops=args.hops, dropout=args.dropout, mode=mode, seed=args.seed,
                                verbose=args.verbose,
                                time_budget=args.time_budget, overwrite=True)
            loaded = load_model_dir(folder, task="vqa")
            test = evaluate_vqa(loaded, data, split="test")
            novel = evaluate_vqa(loaded, data, split="novel")
            results[mode] = {"test": test, "novel": novel, "train_seconds": summary["train_seconds"],
                             "epochs": summary["epochs"], "best_epoch": summary["best_epoch"],
                             "val_accuracy": summary["val_accuracy"], "parameters": summary["parameters"],
                             "questions_per_second": summary["questions_per_second"]}
            with open(saved, "w") as f:
                json.dump({"recipe": recipe, "result": results[mode]}, f, indent=1)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    report = {"images": args.images, "seed": args.seed, "epochs": args.epochs, "image_size": args.image_size,
              "units": args.units, "hops": args.hops, "time_budget": args.time_budget, "results": results}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    qtypes = sorted({t for r in results.values() for t in r["test"]["per_type"]["question_type"]})
    header = f"{'mode':<10} {'test':>7} {'novel':>7} {'yes/no':>7} {'number':>7} {'other':>7} " + \
        " ".join(f"{t:>8}" for t in qtypes) + f" {'epochs':>6} {'train s':>8}"
    print(f"VQA accuracy on held-out scenes ({args.images} images, seed {args.seed}, {args.image_size}x"
          f"{args.image_size}; test {results[args.modes[0]]['test']['count']} questions, novel "
          f"{results[args.modes[0]]['novel']['count']})")
    print(header)
    for mode, r in results.items():
        by_answer = r["test"]["per_type"]["answer_type"]
        by_question = r["test"]["per_type"]["question_type"]
        cells = [f"{100 * r['test']['accuracy']:6.2f}%", f"{100 * r['novel']['accuracy']:6.2f}%"]
        cells += [f"{100 * by_answer.get(t, float('nan')):6.2f}%" for t in ("yes/no", "number", "other")]
        cells += [f"{100 * by_question.get(t, float('nan')):7.2f}%" for t in qtypes]
        print(f"{mode:<10} " + " ".join(cells) + f" {r['epochs']:>6} {r['train_seconds']:>8.0f}")
    return 0


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"(total {time.perf_counter() - started:.0f}s)", file=sys.stderr)
    sys.exit(code)
