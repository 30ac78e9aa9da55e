"""Fits the modified Kneser-Ney n-gram baseline on CORPUS_DIR/train.txt and reports perplexity on the test split.

Usage:
    .venv/bin/python scripts/kn_reference.py /work/shared/data/kjv --order 5
    .venv/bin/python scripts/kn_reference.py /work/shared/data/kjv --order 2 3 4 5

Each line is one sentence, scored from <bos>, with every word and the final <eos> counted. The reference numbers
this should reproduce come from KenLM `lmplz -o N` (default modified KN) on the same split.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lm.ngram import KneserNeyLM  # noqa: E402
from lm.text import read_lines  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", help="folder with train.txt and test.txt (PTB style: one sentence a line)")
    parser.add_argument("--order", type=int, nargs="+", default=[5], help="n-gram order(s), 2..5 (default 5)")
    parser.add_argument("--split", default="test", help="split to score: test (default) or valid")
    args = parser.parse_args(argv)

    train = read_lines(os.path.join(args.corpus, "train.txt"))
    heldout = read_lines(os.path.join(args.corpus, f"{args.split}.txt"))
    for order in args.order:
        t0 = time.perf_counter()
        model = KneserNeyLM(order=order).fit(train)
        t1 = time.perf_counter()
        ppl, tokens = model.perplexity(heldout)
        t2 = time.perf_counter()
        d = ", ".join(f"{k}:" + "/".join(f"{x:.3f}" for x in model.discounts[k]) for k in range(1, order + 1))
        print(f"KN-{order}: {args.split} perplexity {ppl:.2f} over {tokens} tokens | fit {t1 - t0:.2f}s on "
              f"{sum(len(s) + 1 for s in train)} tokens, score {t2 - t1:.2f}s ({tokens / max(t2 - t1, 1e-9):,.0f} tokens/s)"
              f" | vocab {len(model.vocab)} | discounts D1/D2/D3+ {d}", flush=True)


if __name__ == "__main__":
    main()
