"""The Penn Treebank recipes of the README, run stage by stage with the `lm` command, timed, scored four ways.

    python scripts/get_ptb.py data/ptb                     # once ([ptb] extra)
    python scripts/bench_ptb.py data/ptb --recipe 15min    # the whole run within 15 minutes on a 2-core CPU
    python scripts/bench_ptb.py data/ptb --recipe 1hour --plot docs/ptb-valid.png

Stages: `lm train` (the LSTM), `lm train --arch ngram --order 5` (KN-5), `lm tune-cache --mix` on the validation
split (one grid: mix weight x cache size x theta x lambda, cache size 0 = none), then `lm perplexity` on the test
split with the tuned flags. The recipe's figure is the last stage's; the whole run is the sum of the four stages.
Afterwards (not part of the timed run) the test split is also scored with the LSTM alone, with the cache only and
with KN-5 only, each as tuned on valid. Prints a table; `--json` prints one object; `--plot` draws the validation
curve (needs matplotlib, the [plots] extra).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

RECIPES = {
    # 1 x 512 LSTM, 256-d tied embedding (4.1M parameters), two epochs on a cosine schedule: about 11 minutes of
    # training on the 2-core CPU, leaving room for KN-5 (15 s), the grid (45 s) and the test pass (35 s).
    "15min": ["--units", "512", "--embed", "256", "--tie", "--dropout", "0.2", "--batch-size", "64", "--lr", "3e-3",
              "--schedule", "cosine", "--epochs", "2", "--patience", "10", "--no-jit"],
    # 1 x 768 LSTM, 256-d tied embedding (5.9M parameters), eight cosine epochs, dropout 0.4, stopped after the
    # epoch that ends past 70 minutes of training.
    "1hour": ["--units", "768", "--embed", "256", "--tie", "--dropout", "0.4", "--batch-size", "64", "--lr", "3e-3",
              "--schedule", "cosine", "--epochs", "8", "--patience", "20", "--time-budget", "4200", "--no-jit"],
}
CACHE_SIZES = {"15min": "0,500,2000", "1hour": "0,500,1000,2000"}  # tune-cache's grid, as measured in the README
PUBLISHED = {"KN-5 (Mikolov 2012)": 141.2, "Zaremba et al. small": 114.5, "Zaremba et al. medium": 82.7}


def lm(*args, log=None) -> dict:
    """Runs `lm ARGS --json` and returns its JSON; a failure prints the command's stderr and exits."""
    cmd = [sys.executable, "-c", "import sys; from lm.cli import main; sys.exit(main())", *map(str, args), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if log:
        with open(log, "w") as f:
            f.write(proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"bench_ptb: lm {' '.join(cmd[3:])} failed:\n{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def flags(row: dict | None, kn: str) -> list:
    """`lm perplexity` flags of one tune-cache grid row (None: the LSTM alone)."""
    out = []
    if row and row.get("mix_weight"):
        out += ["--mix", kn, "--mix-weight", row["mix_weight"]]
    if row and row["size"]:
        out += ["--cache-size", row["size"], "--cache-theta", row["theta"], "--cache-lambda", row["lambda"]]
    return out


def plot(history: list, scores: dict, path: str, title: str) -> None:
    from lm.diagnostics import pyplot
    plt = pyplot()  # Agg, or a one-line error naming the [plots] extra
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["val_perplexity"] for h in history], "o-", linewidth=2, label="LSTM, PTB valid")
    for (name, r), marker in zip(list(scores.items())[1:], ("s", "^", "*")):  # the tuned mixes, on valid
        ax.plot([epochs[-1]], [r["valid"]], marker, markersize=9, linestyle="none", label=f"{name}, valid")
    for (name, value), style in zip(PUBLISHED.items(), (":", "--", "-.")):
        ax.axhline(value, color="grey", linestyle=style, linewidth=1)
        ax.text(epochs[0], value, f"{name} (test) {value}", va="bottom", ha="left", fontsize=8, color="dimgrey")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation perplexity")
    ax.set_xticks(epochs)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data", help="PTB folder written by scripts/get_ptb.py (train/valid/test.txt)")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="15min", help="which recipe")
    p.add_argument("--out", default=None, help="run folder (default: runs/ptb-RECIPE); replaced")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (a quick smoke run)")
    p.add_argument("--plot", default=None, metavar="PNG", help="draw the validation curve here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    for split in ("train", "valid", "test"):
        if not os.path.isfile(os.path.join(a.data, f"{split}.txt")):
            p.error(f"{a.data}: no {split}.txt (write the split with scripts/get_ptb.py {a.data})")
    out = a.out or os.path.join("runs", f"ptb-{a.recipe}")
    recipe = list(RECIPES[a.recipe])
    if a.epochs:
        recipe[recipe.index("--epochs") + 1] = str(a.epochs)
    lstm_dir, kn_dir = os.path.join(out, "lstm"), os.path.join(out, "kn5")
    os.makedirs(out, exist_ok=True)
    valid, test = os.path.join(a.data, "valid.txt"), os.path.join(a.data, "test.txt")

    seconds = {}
    t = time.time()
    trained = lm("train", a.data, "--out", lstm_dir, "--overwrite", *recipe, log=os.path.join(out, "train.log"))
    seconds["train LSTM"] = time.time() - t
    t = time.time()
    lm("train", a.data, "--arch", "ngram", "--order", "5", "--out", kn_dir, "--overwrite")
    seconds["train KN-5"] = time.time() - t
    t = time.time()
    grid = lm("tune-cache", valid, "--model", lstm_dir, "--mix", kn_dir, "--cache-size", CACHE_SIZES[a.recipe])
    seconds["tune on valid"] = time.time() - t
    best = grid["best"]
    t = time.time()
    final = lm("perplexity", test, "--model", lstm_dir, *flags(best, kn_dir))["perplexity"]
    seconds["score test"] = time.time() - t
    whole = sum(seconds.values())

    rows = grid["grid"]
    tuned = {"LSTM alone": None,
             "+ neural cache": min((r for r in rows if not r["mix_weight"] and r["size"]), key=lambda r: r["perplexity"]),
             "+ KN-5": min((r for r in rows if not r["size"]), key=lambda r: r["perplexity"]),
             "+ KN-5 + neural cache (the recipe)": best}
    scores = {}
    for name, row in tuned.items():
        if row is best:
            scores[name] = {"test": final, "valid": best["perplexity"], "flags": flags(best, kn_dir)}
            continue
        test_ppl = trained["test_perplexity"] if row is None else lm("perplexity", test, "--model", lstm_dir,
                                                                      *flags(row, kn_dir))["perplexity"]
        scores[name] = {"test": test_ppl, "valid": trained["valid_perplexity"] if row is None else row["perplexity"],
                        "flags": flags(row, kn_dir)}
    result = {"recipe": a.recipe, "lm_train_flags": recipe, "seconds": seconds, "whole_run_seconds": whole,
              "tokens_per_second": trained["tokens_per_second"],
              "valid_curve": [h["val_perplexity"] for h in trained["history"]], "scores": scores, "out": out}
    if a.plot:
        plot(trained["history"], scores, a.plot, f"PTB, recipe {a.recipe}: lm train {' '.join(recipe[:6])} ...")
    if a.json:
        print(json.dumps(result, default=str))
        return 0
    print(f"recipe {a.recipe}: lm train DATA {' '.join(recipe)}")
    for stage, s in seconds.items():
        print(f"  {stage:<16} {s:7.1f} s")
    print(f"  {'whole run':<16} {whole:7.1f} s ({whole / 60:.1f} min); {trained['tokens_per_second']:.0f} tokens/s")
    print("validation curve: " + ", ".join(f"{v:.1f}" for v in result["valid_curve"]))
    print(f"{'PTB':<36} {'valid':>8} {'test':>8}")
    for name, r in scores.items():
        print(f"{name:<36} {r['valid']:8.2f} {r['test']:8.2f}")
    for name, value in PUBLISHED.items():
        print(f"{name + ' (published)':<36} {'':>8} {value:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
