"""`lm`: train, score, sample from and compare language models.

  lm train CORPUS --out DIR [--arch ngram|window|rnn|gru|lstm] ...
  lm perplexity FILE [--model DIR] [--json]
  lm generate [--model DIR] [--prompt TEXT] [--temperature F] [--top-k N] [--top-p F] [--max-tokens N] [--seed N]
  lm compare CORPUS [--json]
  lm export OUT_DIR [--model DIR]

Without --model the bundled model is used: an LSTM trained on the King James Bible (scripts/train_bundled_lm.sh).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from lm.errors import UserError


def _add_training_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="lstm", choices=["ngram", "window", "rnn", "gru", "lstm"],
                   help="model family (default lstm)")
    p.add_argument("--order", type=int, default=5, help="n-gram order; the window model sees order-1 words (default 5)")
    p.add_argument("--layers", type=int, default=1, help="stacked recurrent layers (default 1)")
    p.add_argument("--units", type=int, default=256, help="hidden units per layer (default 256)")
    p.add_argument("--embed", type=int, default=None, help="embedding size (default: --units)")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout rate (default 0)")
    p.add_argument("--tie", action="store_true", help="tie input embedding and output weights")
    p.add_argument("--epochs", type=int, default=10, help="maximum epochs (early stopping may end sooner; default 10)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--bptt", type=int, default=35, help="truncated BPTT length in stream mode (default 35)")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default 2e-3)")
    p.add_argument("--clip", type=float, default=1.0, help="gradient clipping by global norm (default 1.0; 0 = off)")
    p.add_argument("--mode", default="stream", choices=["stream", "sentence"],
                   help="stream: stateful truncated BPTT over the text (PTB batching); sentence: each line alone")
    p.add_argument("--min-count", type=int, default=1, help="drop words seen fewer times (default 1)")
    p.add_argument("--max-vocab", type=int, default=None, help="cap on vocabulary size, specials included")
    p.add_argument("--patience", type=int, default=3, help="epochs without validation gain before stopping")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--time-budget", type=float, default=None,
                   help="stop after the epoch during which this many seconds have passed")
    add_accel_flags(p)


def add_out_flags(p: argparse.ArgumentParser) -> None:
    """--resume / --overwrite: what `--out` may do to a folder that already holds a model (lm.checkpoint)."""
    p.add_argument("--resume", action="store_true",
                   help="continue the run that was training into --out (killed, or out of time) from its last "
                        "finished epoch, with its optimizer state, learning-rate schedule and RNG; give the flags "
                        "it was started with (on an empty --out it just starts; default off)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the model already in --out (default off: an existing model is an error); the old "
                        "one stays until the first epoch's model replaces it")


def add_accel_flags(p: argparse.ArgumentParser) -> None:
    """--mixed-precision, --jit/--no-jit, --distribute (lm.accel), shared by `lm train` and `captioner train`."""
    p.add_argument("--mixed-precision", action="store_true",
                   help="bfloat16 compute with float32 weights and float32 logits (fast on recent GPUs/TPUs)")
    p.add_argument("--jit", dest="jit", action="store_true", default="auto",
                   help="force XLA compilation of the train step (default: Keras decides)")
    p.add_argument("--no-jit", dest="jit", action="store_false", help="never XLA-compile the train step")
    p.add_argument("--distribute", action="store_true",
                   help="data parallel over all local devices: JAX DataParallel or TensorFlow MirroredStrategy; "
                        "--batch-size is the global batch (a multiple of the device count)")


def _training_kwargs(a) -> dict:
    return dict(arch=a.arch, order=a.order, layers=a.layers, units=a.units, embed=a.embed, dropout=a.dropout,
                tie=a.tie, epochs=a.epochs, batch_size=a.batch_size, bptt=a.bptt, lr=a.lr, clip=a.clip, mode=a.mode,
                min_count=a.min_count, max_vocab=a.max_vocab, patience=a.patience, seed=a.seed,
                time_budget=a.time_budget, mixed_precision=a.mixed_precision, jit=a.jit, distribute=a.distribute,
                resume=a.resume, overwrite=a.overwrite)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model on a corpus and write a model folder",
                       description="CORPUS is a folder with train.txt and valid.txt (test.txt optional), one "
                                   "tokenized sentence a line (PTB style), or a single raw text file that is "
                                   "tokenized and split 90/5/5.")
    p.add_argument("corpus")
    p.add_argument("--out", required=True, help="model folder to write (config.json, vocab.json, weights)")
    add_out_flags(p)
    _add_training_flags(p)
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")

    p = sub.add_parser("perplexity", help="perplexity of a text file (PTB protocol: <eos> counted)")
    p.add_argument("file", help="PTB-style text (one sentence a line)")
    p.add_argument("--model", default=None, help="model folder (default: the bundled KJV LSTM)")
    p.add_argument("--raw", action="store_true", help="the file is raw prose: tokenize and split into sentences")
    p.add_argument("--json", action="store_true", help='print {"perplexity": ..., "tokens": ...}')

    p = sub.add_parser("generate", help="sample text from a model")
    p.add_argument("--model", default=None, help="model folder (default: the bundled KJV LSTM)")
    p.add_argument("--prompt", default="", help="text to continue")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely words (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0 = off)")
    p.add_argument("--max-tokens", type=int, default=30, help="maximum new words (default 30)")
    p.add_argument("--num", type=int, default=1, help="how many samples (default 1)")
    p.add_argument("--seed", type=int, default=None, help="random seed for repeatable samples")
    p.add_argument("--json", action="store_true", help="print a JSON list of samples")

    p = sub.add_parser("compare", help="train n-gram, window, RNN, GRU, LSTM with one budget; print a table")
    p.add_argument("corpus")
    p.add_argument("--out", default=None,
                   help="folder for the trained models, one subfolder per model, replaced if there "
                        "(default: a temporary folder)")
    p.add_argument("--units", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3, help="epochs per neural model (default 3)")
    p.add_argument("--time-budget", type=float, default=None, help="seconds per neural model (stops after the epoch)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--archs", default="ngram,window,rnn,gru,lstm", help="comma-separated subset")
    p.add_argument("--json", action="store_true", help="print the table as JSON")

    p = sub.add_parser("export", help="write a TensorFlow SavedModel: prompts (strings) -> generated texts")
    p.add_argument("out_dir")
    p.add_argument("--model", default=None, help="model folder (default: the bundled KJV LSTM)")
    p.add_argument("--max-tokens", type=int, default=30)
    return parser


def cmd_train(a) -> int:
    from lm.text import load_corpus
    from lm.training import train_language_model
    if a.distribute:
        from lm.accel import cluster
        if cluster()[0] > 1:
            raise UserError("--distribute over several hosts is for `captioner train` only for now; unset "
                            "TF_CONFIG / KERAS_DISTRIBUTION_NUM_PROCESSES to use this host's devices")
    splits = load_corpus(a.corpus)
    # Progress bars on a terminal, one line per epoch in logs, nothing but the JSON with --json.
    verbose = 0 if a.json else (1 if sys.stdout.isatty() else 2)
    summary = train_language_model(splits, a.out, verbose=verbose, **_training_kwargs(a))
    if a.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {a.out}: valid perplexity {summary['valid_perplexity']:.2f}"
              + (f", test perplexity {summary['test_perplexity']:.2f}" if "test_perplexity" in summary else "")
              + f" ({summary['train_seconds']:.0f} s)")
    return 0


def cmd_perplexity(a) -> int:
    # Bad input is checked before anything imports Keras (seconds, and TensorFlow's start-up lines on stderr).
    from lm.checkpoint import load_model_dir
    from lm.text import read_lines, read_raw_text
    sentences = read_raw_text(a.file) if a.raw else read_lines(a.file)
    if not sentences:
        raise UserError(f"{a.file}: no text to score")
    loaded = load_model_dir(a.model)
    from lm.inference import perplexity
    ppl, tokens = perplexity(loaded, sentences)
    print(json.dumps({"perplexity": ppl, "tokens": tokens}) if a.json else f"perplexity {ppl:.2f} over {tokens} tokens")
    return 0


def cmd_generate(a) -> int:
    from lm.checkpoint import load_model_dir
    from lm.text import tokenize
    if a.max_tokens < 1 or a.temperature < 0 or not 0 < a.top_p <= 1 or a.top_k < 0 or a.num < 1:
        raise UserError("need --max-tokens >= 1, --temperature >= 0, 0 < --top-p <= 1, --top-k >= 0, --num >= 1")
    loaded = load_model_dir(a.model)
    from lm.inference import generate
    prompt = tokenize(a.prompt)
    samples = []
    for i in range(a.num):
        seed = None if a.seed is None else a.seed + i
        words = generate(loaded, prompt, a.max_tokens, a.temperature, a.top_k, a.top_p, seed)
        samples.append(" ".join(prompt + words))
    print(json.dumps(samples) if a.json else "\n".join(samples))
    return 0


def cmd_compare(a) -> int:
    import tempfile
    from lm.text import load_corpus
    from lm.training import train_language_model
    splits = load_corpus(a.corpus)
    out = a.out or tempfile.mkdtemp(prefix="lm-compare-")
    rows = []
    for arch in [x.strip() for x in a.archs.split(",") if x.strip()]:
        if not a.json:
            print(f"== {arch}", flush=True)
        kwargs = dict(arch=arch, units=a.units, epochs=a.epochs, batch_size=a.batch_size, verbose=0 if a.json else (1 if sys.stdout.isatty() else 2),
                      time_budget=a.time_budget, dropout=0.0 if arch == "ngram" else 0.1)
        if arch == "window":
            kwargs.update(order=5, units=max(a.units, 256), batch_size=max(a.batch_size, 256))
        s = train_language_model(splits, os.path.join(out, arch), overwrite=True, **kwargs)
        rows.append({"model": "KN-5" if arch == "ngram" else arch, "valid_perplexity": s["valid_perplexity"],
                     "test_perplexity": s.get("test_perplexity"), "train_seconds": s["train_seconds"],
                     "epochs": s.get("epochs")})
    if a.json:
        print(json.dumps(rows))
    else:
        print(f"\n{'model':8} {'valid ppl':>10} {'test ppl':>10} {'train s':>9} {'epochs':>7}")
        for r in rows:
            test = f"{r['test_perplexity']:10.2f}" if r["test_perplexity"] is not None else f"{'-':>10}"
            print(f"{r['model']:8} {r['valid_perplexity']:10.2f} {test} {r['train_seconds']:9.1f} "
                  f"{r['epochs'] if r['epochs'] is not None else '-':>7}")
        print(f"models in {out}")
    return 0


def cmd_export(a) -> int:
    from lm.export import export_language_model
    export_language_model(a.out_dir, a.model, max_tokens=a.max_tokens)
    print(f"wrote SavedModel {a.out_dir} (signature serving_default: prompts -> texts)")
    return 0


COMMANDS = {"train": cmd_train, "perplexity": cmd_perplexity, "generate": cmd_generate, "compare": cmd_compare,
            "export": cmd_export}


@contextlib.contextmanager
def native_logs_silenced():
    """Drops what native code writes to file descriptor 2 while keeping Python's sys.stderr (errors, tqdm bars).

    TensorFlow 2.21's C++ runtime prints INFO and ERROR lines at import and first use (oneDNN notice, CUDA probing
    on a machine without a GPU) through absl, whatever TF_CPP_MIN_LOG_LEVEL says; a CLI whose errors are one line
    cannot let those through. Set TF_CPP_MIN_LOG_LEVEL=0 (or 1) to see them again.
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") in ("0", "1"):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (embedded interpreter, closed stderr)
        yield
        return
    python_stderr = sys.stderr
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, errors="backslashreplace")
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr.close()
        sys.stderr = python_stderr
        os.dup2(saved, 2)
        os.close(saved)


def run_cli(prog: str, parser: argparse.ArgumentParser, commands: dict, argv=None) -> int:
    """Parses, runs, and turns user errors into one line on stderr and exit status 2 (no traceback). Run as a
    program (argv None), native library chatter on stderr is dropped (native_logs_silenced)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parser.parse_args(argv)
    with native_logs_silenced() if argv is None else contextlib.nullcontext():
        return _run_command(prog, commands, args)


def _run_command(prog: str, commands: dict, args) -> int:
    try:
        return commands[args.command](args)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"{prog}: error: out of memory; try a smaller --batch-size", file=sys.stderr)
        return 1


def main(argv=None) -> int:
    return run_cli("lm", build_parser(), COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
