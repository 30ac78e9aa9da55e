"""`captioner`: caption or question images, train, evaluate, export, and make synthetic scenes.

  captioner caption IMAGE... [--model DIR] [--beam K] [--attention-out DIR] [--json]
  captioner ask IMAGE "QUESTION" [--model DIR] [--attention-out DIR] [--json]
  captioner classify IMAGE... [--top 5] [--json]
  captioner train DATA --out DIR [--task caption|vqa] [--backbone NAME] [--weights W] [--epochs N] ...
  captioner evaluate DATA [--model DIR] [--split test] [--json]
  captioner calibrate MODEL_DIR DATA
  captioner export OUT_DIR [--model DIR] [--beam K]
  captioner serve [--model DIR] [--vqa-model DIR] [--host 127.0.0.1] [--port 8501] [--max-batch N] ...
  captioner scenes OUT_DIR [--images N] [--seed S]
  captioner demo [--out DIR]

Without --model the bundled models are used (trained on synthetic scenes; see scripts/train_bundled_*.sh). Every
answer says whether the image looks like the model's training images (domain_score, out_of_domain; a warning on
stderr for each image that does not).

DATA formats (auto-detected): Karpathy JSON (dataset_coco/flickr8k/flickr30k.json), Flickr8k token file with its
split lists, COCO captions_*.json, JSONL {"image", "caption"|"captions"}; for VQA: VQA v2 questions+annotations
JSON, JSONL {"image", "question", "answer"|"answers"}, and the scenes generator's vqa.jsonl.

Exit status (every command): 0 done; 2 bad input (a wrong flag or value, an unreadable image or file, a model
folder of the wrong kind; with several images, the readable ones are still answered); 1 an internal failure (out
of memory...); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from lm.cli import HelpFormatter, OneLineParser, add_accel_flags, add_out_flags, run_cli
from lm.errors import UserError


#: Which `captioner train` flags apply to which task; the others are refused with one line, not silently dropped.
#: A new flag that applies to one task only is registered here in one line (flags not listed apply to both).
TRAIN_FLAG_TASKS = {
    "no_attention": ("caption",), "alpha_c": ("caption",), "scheduled_sampling": ("caption",),
    "min_count": ("caption",), "max_length": ("caption",), "cache_features": ("caption",),
    "init_from_lm": ("caption",), "init_embeddings": ("caption",), "patience": ("caption",), "lr_decay": ("caption",),
    "mixed_precision": ("caption",), "jit": ("caption",), "distribute": ("caption",), "schedule": ("caption",),
    "warmup": ("caption",), "label_smoothing": ("caption",), "clipnorm": ("caption",), "monitor": ("caption",),
    "scst": ("caption",), "init": ("caption",), "samples": ("caption",), "temperature": ("caption",),
    "hops": ("vqa",), "vqa_mode": ("vqa",), "annotations": ("vqa",),
}


def _given_flags(parser: argparse.ArgumentParser, argv: list[str]) -> dict[str, str]:
    """dest -> the option string for every option of `parser` that appears in `argv` (abbreviations are off)."""
    given = {}
    for action in parser._actions:
        for option in action.option_strings:
            if any(token == option or token.startswith(option + "=") for token in argv):
                given[action.dest] = option
    return given


def _parser(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    return sub.add_parser(name, formatter_class=HelpFormatter, allow_abbrev=False, **kwargs)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_image_flags(p: argparse.ArgumentParser) -> None:
    """--max-pixels and --attention-out, shared by `caption` and `ask`."""
    from captioner.images import MAX_PIXELS
    p.add_argument("--max-pixels", type=_positive_int, default=MAX_PIXELS,
                   help="refuse images with more pixels (width x height) than this, before decoding them; raise it "
                        "for big phone or camera photos")
    p.add_argument("--attention-out", default=None, metavar="DIR",
                   help="folder for the attention pictures: one IMAGE_NAME.attention.png per image, made if missing "
                        "(default: none written)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="captioner", description=__doc__, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _parser(sub, "caption", help="caption images (one line per image, or --json)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, GIF, BMP, WebP, TIFF)")
    p.add_argument("--model", default=None, help="captioner folder (default: the bundled scenes captioner)")
    p.add_argument("--beam", type=_positive_int, default=3, help="beam width (1 = greedy; default 3)")
    p.add_argument("--max-length", type=_positive_int, default=None,
                   help="maximum words (default: the model's, 16 for the bundled captioner)")
    _add_image_flags(p)
    add_search_flags(p)
    p.add_argument("--json", action="store_true",
                   help="print a JSON list: one object per image with image, caption, score, domain_score, "
                        "out_of_domain (or image and error)")

    p = _parser(sub, "ask", help="answer a question about an image",
                       description="Answers one question about one image with a VQA model (stacked attention). "
                                   "Words the model never saw are read as <unk> and named in a note on stderr.")
    p.add_argument("image", help="image file (JPEG, PNG, GIF, BMP, WebP, TIFF)")
    p.add_argument("question", help='the question, e.g. "how many circles are there"')
    p.add_argument("--model", default=None, help="VQA model folder (default: the bundled scenes VQA model)")
    _add_image_flags(p)
    p.add_argument("--json", action="store_true",
                   help='print {"answer", "score", "unknown_words", "domain_score", "out_of_domain"} as JSON')

    p = _parser(sub, "train", help="train a captioner (or a VQA model when the data has questions)",
                description="Trains a captioner or a VQA model and writes a model folder (with its out-of-domain "
                            "statistics, domain.npz). Flags that do not apply to the task are refused.")
    p.add_argument("data", help="dataset file or folder (see `captioner --help` for the formats)")
    p.add_argument("--out", required=True, help="model folder to write")
    add_out_flags(p)
    p.add_argument("--task", choices=["caption", "vqa"], default=None, help="caption or vqa (default: detected from "
                                                                           "the data)")
    p.add_argument("--image-root", default=None, help="folder the image paths are relative to (default: the data's)")
    p.add_argument("--annotations", default=None, help="VQA v2 annotations file (default: found beside questions)")
    p.add_argument("--split-train", default="train", help="split to train on")
    p.add_argument("--split-val", default="val", help="split for validation")
    p.add_argument("--backbone", default="small_cnn",
                   help="small_cnn, mobilenet_v2, mobilenet_v3_small, mobilenet_v3_large, efficientnet_b0, "
                        "efficientnet_lite0, resnet50, inception_v3 (default small_cnn)")
    p.add_argument("--weights", default=None,
                   help="backbone weights: imagenet, a weights file, or none for random ones (default: imagenet for "
                        "every pretrained backbone, none for small_cnn; efficientnet_lite0's ImageNet weights ship "
                        "with the package, the keras.applications ones download once into $KERAS_HOME/models)")
    p.add_argument("--image-size", type=int, default=None, help="square input size (default: the backbone's)")
    p.add_argument("--trainable-blocks", type=int, default=0, help="fine-tune the top N backbone blocks (-1 = all)")
    # Defaults that differ by task are None here and filled by the training function of the task, so each task
    # gets sizes that fit it (the VQA recipe is a model a sixteenth the size of the caption decoder).
    p.add_argument("--epochs", type=int, default=None, help="maximum epochs (default: captions 10, VQA 20, SCST 5)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="batch size; VQA counts questions, SCST images (each with --samples captions) (default: "
                        "captions 32, VQA 128, SCST 16)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak Adam learning rate (default: captions 1e-3, VQA 2e-3, SCST 5e-5)")
    p.add_argument("--patience", type=int, default=None,
                   help="caption training: stop after this many epochs without validation gain (default 3)")
    p.add_argument("--lr-decay", type=float, default=None,
                   help="caption training: divide the learning rate by this after an epoch without validation gain "
                        "(default 1: constant)")
    p.add_argument("--embed", type=int, default=None, help="word embedding size (default: captions 256, VQA 64)")
    p.add_argument("--units", type=int, default=None,
                   help="recurrent units (default: captions 512, VQA 128 per direction)")
    p.add_argument("--attention-dim", type=int, default=None,
                   help="attention layer size (default 256 for captions, --units for VQA)")
    p.add_argument("--cell", choices=["lstm", "gru", "rnn"], default=None, help="recurrent cell (default lstm)")
    p.add_argument("--dropout", type=float, default=None, help="dropout rate (default 0.3 for captions, 0.1 for VQA)")
    p.add_argument("--no-attention", action="store_true", help="captions: Show and Tell baseline (image vector first)")
    p.add_argument("--alpha-c", type=float, default=1.0, help="captions: doubly stochastic attention weight (0 = off)")
    p.add_argument("--scheduled-sampling", type=float, default=0.0,
                   help="captions: probability of feeding the model its own predictions")
    p.add_argument("--min-count", type=int, default=None,
                   help="captions: drop caption words seen fewer times (default: 5, Karpathy's recipe for COCO and "
                        "Flickr, when the training split has at least 10,000 captions; 1 on smaller data, where 5 "
                        "would drop most words)")
    p.add_argument("--max-length", type=int, default=None,
                   help="captions: longest caption in words (+ <eos>) (default 24; SCST: the --init model's)")
    p.add_argument("--cache-features", dest="cache_features", action="store_true", default=None,
                   help="captions: extract grids once and train the decoder only (default for frozen pretrained CNNs)")
    p.add_argument("--no-cache-features", dest="cache_features", action="store_false",
                   help="captions: run the CNN in every step even when it is frozen")
    p.add_argument("--cache-dir", default=None,
                   help="folder of feature caches (default $CAPTIONER_CACHE/features, else ~/.cache/captioner/features);"
                        " a cache is reused only when backbone, weights, image size, resize policy and image files all "
                        "match, so captions and VQA on one image set share it")
    p.add_argument("--init-from-lm", default=None, metavar="MODEL_DIR",
                   help="captions: start the decoder from an lm model folder (default: random)")
    p.add_argument("--init-embeddings", default=None, choices=["random", "glove"],
                   help="captions: start the word embedding at random or from GloVe 6B 50d (words GloVe lacks start "
                        "random; a projection when --embed is not 50; the [glove] extra) (default random)")
    p.add_argument("--schedule", choices=["none", "cosine", "step"], default=None,
                   help="caption training: learning-rate decay over the run after --warmup (default none: constant)")
    p.add_argument("--warmup", type=float, default=None,
                   help="caption training: epochs of linear learning-rate warmup, fractions allowed (default 0)")
    p.add_argument("--label-smoothing", type=float, default=None, help="caption training: label smoothing (default 0)")
    p.add_argument("--clipnorm", type=float, default=None,
                   help="caption training: clip the global gradient norm to this (0 = off; default 5)")
    p.add_argument("--monitor", choices=["loss", "cider"], default=None,
                   help="caption training: keep the epoch with the best validation loss or validation CIDEr-D of "
                        "greedy captions, and stop early on it (default loss)")
    p.add_argument("--scst", action="store_true",
                   help="self-critical training (CIDEr-D reward) of the caption model given by --init; writes --out")
    p.add_argument("--init", default=None, metavar="MODEL_DIR", help="SCST: the XE-trained caption model to start from (default: none; needed with --scst)")
    p.add_argument("--samples", type=int, default=5, help="SCST: captions sampled per image (default 5)")
    p.add_argument("--temperature", type=float, default=1.0, help="SCST: sampling temperature (default 1.0)")
    p.add_argument("--hops", type=int, default=2, help="VQA: stacked attention hops")
    p.add_argument("--vqa-mode", choices=["attention", "blind", "mean"], default="attention",
                   help="VQA: stacked attention, question only, or mean-pooled image")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--time-budget", type=float, default=None,
                   help="stop after the epoch during which this many seconds have passed (default: no limit)")
    add_accel_flags(p)  # --mixed-precision, --jit/--no-jit, --distribute (captions only)
    p.add_argument("--json", action="store_true", help="print the training summary as JSON")
    parser.train_parser = p  # cmd_train checks the given flags against TRAIN_FLAG_TASKS

    p = _parser(sub, "evaluate", help="score a model on a split (captions: BLEU, METEOR, ROUGE-L, CIDEr; VQA: accuracy)",
                description="Scores a model on one split of a dataset and reports how many of its images are out of "
                            "the model's domain. Without --model, only synthetic scenes data (`captioner scenes`) is "
                            "accepted: the bundled models know nothing else.")
    p.add_argument("data", help="dataset file or folder (see `captioner --help` for the formats)")
    p.add_argument("--model", default=None, help="model folder (default: the bundled scenes model for the data's task)")
    p.add_argument("--task", choices=["caption", "vqa"], default=None,
                   help="caption or vqa (default: the model folder's task; without --model: detected from the data)")
    p.add_argument("--split", default="test", help="split to score (all = every example)")
    p.add_argument("--image-root", default=None, help="folder the image paths are relative to (default: the data's)")
    p.add_argument("--annotations", default=None, help="VQA v2 annotations file (default: found beside questions)")
    p.add_argument("--beam", type=_positive_int, default=3, help="captions: beam width")
    p.add_argument("--max-images", type=_positive_int, default=None,
                   help="evaluate on the first N only (default: all)")
    p.add_argument("--no-meteor", action="store_true",
                   help="skip METEOR (it starts a Java process; reported as null)")
    p.add_argument("--json", action="store_true", help="print the scores as one JSON object")

    p = _parser(sub, "export", help="write a TensorFlow SavedModel that takes image bytes and returns strings")
    p.add_argument("out_dir", help="folder to write the SavedModel to")
    p.add_argument("--model", default=None, help="model folder (default: the bundled model of --task)")
    p.add_argument("--task", choices=["caption", "vqa"], default="caption",
                   help="which bundled model when --model is omitted")
    p.add_argument("--beam", type=_positive_int, default=3, help="beam width fixed in the exported graph")
    add_search_flags(p, fixed=True)

    p = _parser(sub, "serve", help="web page and HTTP API (TF Serving's REST format) for captions and answers",
                description="Serves a web page at / (drop an image: caption, per-word attention, questions) "
                            "and TF Serving's REST API: POST /v1/models/captioner:predict and "
                            "/v1/models/vqa:predict with {\"instances\": [{\"b64\": ...}]}, GET "
                            "/v1/models/NAME for the status. Concurrent requests are batched into one model "
                            "call. Needs the [serve] extra.")
    p.add_argument("--model", default=None, metavar="DIR",
                   help="captioner folder (default: the bundled scenes captioner)")
    p.add_argument("--vqa-model", default=None, metavar="DIR",
                   help="VQA model folder, or none to serve captions only (default: the bundled scenes VQA model)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8501, metavar="N",
                   help="port (default 8501, TF Serving's REST port; 0 = any free)")
    p.add_argument("--max-batch", type=int, default=16, metavar="N",
                   help="most images per model call (default 16; 1 = no batching)")
    p.add_argument("--batch-timeout-ms", type=float, default=10.0, metavar="MS",
                   help="longest wait for more requests before a partial batch runs (default 10)")
    p.add_argument("--beam", type=int, default=3, metavar="K",
                   help="beam width for captions (default 3, as captioner caption)")
    p.add_argument("--max-body", type=float, default=20.0, metavar="MB",
                   help="largest request body in megabytes; larger ones get HTTP 413 (default 20)")
    p.add_argument("--access-log", action="store_true", help="log every request on stderr (default off)")
    p.add_argument("--json", action="store_true",
                   help='print one JSON line {"url", "host", "port", "models", ...} when ready, instead of text')

    p = _parser(sub, "scenes", help="generate synthetic scenes (images, captions, questions)")
    p.add_argument("out_dir", help="folder to write images/, dataset_scenes.json and vqa.jsonl to")
    p.add_argument("--images", type=int, default=2000, help="number of scenes (all splits together)")
    p.add_argument("--seed", type=int, default=0, help="random seed (the same seed gives the same files)")
    p.add_argument("--image-size", type=int, default=64, help="side of the square images in pixels (>= 32)")

    p = _parser(sub, "demo", help="fresh scenes -> captions, answers, attention pictures (what scripts/demo.sh runs)")
    p.add_argument("--out", default="demo-output", help="folder for the scenes and the pictures")
    p.add_argument("--images", type=int, default=4, help="number of fresh scenes")
    p.add_argument("--seed", type=int, default=20261122, help="scene seed (never used in training)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = _parser(sub, "classify", help="ImageNet labels from the pretrained EfficientNet-Lite0 (what a CNN sees)",
                description="What a pretrained CNN sees in each image: the top ImageNet labels of EfficientNet-Lite0 "
                            "(its converted weights: scripts/convert_efficientnet_lite0.py). Useful beside a scenes "
                            "model's out-of-domain warning.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, GIF, BMP, WebP, TIFF)")
    p.add_argument("--top", type=_positive_int, default=5, help="labels per image")
    from captioner.images import MAX_PIXELS
    p.add_argument("--max-pixels", type=_positive_int, default=MAX_PIXELS,
                   help="refuse images with more pixels (width x height) than this, before decoding them")
    p.add_argument("--json", action="store_true",
                   help='print a JSON list: {"image", "labels": [{"class", "label", "probability"}]} per image')

    p = _parser(sub, "calibrate", help="write a model folder's out-of-domain statistics (domain.npz) from its data",
                description="Fits the distribution of the model's image features on the data's training split and "
                            "calibrates the out-of-domain threshold on its validation split (training does this "
                            "itself; use this for older model folders, or after retraining a bundled model).")
    p.add_argument("model_dir", help="captioner or VQA model folder")
    p.add_argument("data", help="the data the model was trained on (any format `captioner train` reads)")
    p.add_argument("--image-root", default=None, help="folder the image paths are relative to (default: the data's)")
    p.add_argument("--annotations", default=None, help="VQA v2 annotations file (default: found beside questions)")
    p.add_argument("--split-train", default="train", help="split that fits the statistics")
    p.add_argument("--split-val", default="val",
                   help="held-out split that calibrates the threshold (missing: a fifth of the training images)")
    p.add_argument("--trained-on", default="",
                   help='what the images are, for the warning users see (default: the data\'s name)')
    return parser


def add_search_flags(p, fixed: bool = False) -> None:
    """--length-penalty, --min-length, --block-repeats, --num-captions (caption and export share them)."""
    where = " (fixed in the exported graph)" if fixed else ""
    p.add_argument("--length-penalty", type=float, default=1.0,
                   help="rank captions by sum log p / length ** this: 0 = raw sum (short captions win), 1 = mean "
                        f"log p per word{where} (default 1.0)")
    p.add_argument("--min-length", type=int, default=0, help=f"no <eos> before this many words{where} (default 0)")
    p.add_argument("--block-repeats", type=int, default=0, metavar="N",
                   help="never repeat an N-word sequence: 3 = trigram blocking, 1 = no word twice, 0 = off"
                        f"{where} (default 0)")
    p.add_argument("--num-captions", type=int, default=1,
                   help=f"return the N best captions per image (needs --beam >= N){where} (default 1)")


def check_search_flags(a) -> dict:
    """The search flags as keyword arguments, after checking them (one-line errors)."""
    if a.beam < 1:
        raise UserError("--beam must be >= 1")
    if a.min_length < 0 or a.block_repeats < 0:
        raise UserError("--min-length and --block-repeats must be >= 0")
    if not 1 <= a.num_captions <= a.beam:
        raise UserError(f"--num-captions must be between 1 and --beam ({a.beam}); raise --beam for more captions")
    if getattr(a, "max_length", None) is not None and a.min_length >= a.max_length:
        raise UserError("--min-length must be smaller than --max-length")
    return {"length_penalty": a.length_penalty, "min_length": a.min_length, "block_repeats": a.block_repeats,
            "num_captions": a.num_captions}


def _attention_png_names(images) -> list[str]:
    """One PNG name per image: `STEM.attention.png`, or `STEM-N.attention.png` for the second and later images
    whose stem is taken (a/x.jpg and b/x.jpg, or x.jpg and x.png), so no picture overwrites another."""
    names, taken = [], set()
    for image in images:
        stem = os.path.splitext(os.path.basename(image))[0] or "image"
        name, n = stem, 1
        while name in taken:
            n += 1
            name = f"{stem}-{n}"
        taken.add(name)
        names.append(f"{name}.attention.png")
    return names


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")


def _attention_dir(path: str) -> str:
    """Checks --attention-out before any work (so no answer is lost to a bad path) and makes the folder."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"--attention-out {path}: exists and is not a folder; give a folder (the pictures are named "
                        "IMAGE_NAME.attention.png)")
    if not os.path.exists(path) and path.lower().endswith(_IMAGE_SUFFIXES):
        raise UserError(f"--attention-out {path}: looks like a file name; give a folder (the pictures are named "
                        "IMAGE_NAME.attention.png)")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"--attention-out {path}: cannot create the folder ({e.strerror})") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"--attention-out {path}: the folder is not writable")
    return path


def _picture(image_source, max_pixels: int):
    from captioner.images import decode_image
    return decode_image(image_source, max_pixels=max_pixels)


def _write_attention_png(result, image_source, out_dir: str, name: str, max_pixels: int) -> str:
    from captioner.visualize import attention_grid
    path = os.path.join(out_dir, name)
    attention_grid(_picture(image_source, max_pixels), result.words, result.attention,
                   title=result.caption).save(path)
    return path


def _domain_warning(model, result, name: str, task: str) -> None:
    if result.out_of_domain:
        from captioner.domain import warning_line
        print(f"captioner: warning: {warning_line(name, model.domain, result.domain_score, task)}", file=sys.stderr)


def cmd_caption(a) -> int:
    out_dir = _attention_dir(a.attention_out) if a.attention_out else None
    search = check_search_flags(a)
    from captioner.api import Captioner
    model = Captioner.load(a.model)
    results = model.caption(list(a.images), beam=a.beam, max_length=a.max_length, errors="return",
                            max_pixels=a.max_pixels, **search)
    failures, rows = 0, []
    for r, png_name in zip(results, _attention_png_names(a.images)):
        if r.error:
            failures += 1
            rows.append({"image": r.image, "error": r.error})
            if not a.json:
                print(f"captioner: error: {r.error}", file=sys.stderr)
            continue
        row = {"image": r.image, "caption": r.caption, "score": r.score, "domain_score": r.domain_score,
               "out_of_domain": r.out_of_domain}
        if out_dir:
            row["attention_png"] = _write_attention_png(r, r.image, out_dir, png_name, a.max_pixels)
        rows.append(row)
        if not a.json:
            for c in r.captions or [{"caption": r.caption}]:  # the n best with --num-captions, best first
                print(f"{r.image}\t{c['caption']}", flush=True)
        _domain_warning(model, r, r.image, "caption")
    if a.json:
        print(json.dumps(rows))
    return 2 if failures else 0


def cmd_ask(a) -> int:
    from lm.text import tokenize
    words = tokenize(a.question)
    if not words:
        raise UserError('the question has no words; ask something, e.g. captioner ask IMAGE "what color is the circle"')
    out_dir = _attention_dir(a.attention_out) if a.attention_out else None
    from captioner.api import VQA
    model = VQA.load(a.model)
    result = model.ask(a.image, a.question, max_pixels=a.max_pixels)
    unknown = result.unknown_words
    if unknown:  # answered all the same (as <unk>), but the user should know the model guessed around them
        which = "some words are not" if any(w in model.vocab for w in words) else "no word is"
        listed = ", ".join(unknown[:8]) + (", ..." if len(unknown) > 8 else "")
        print(f"captioner: note: {which} in the model's vocabulary ({listed}); the answer is a guess", file=sys.stderr)
    _domain_warning(model, result, a.image, "vqa")
    png = None
    if out_dir:
        from captioner.visualize import attention_overlay
        png = os.path.join(out_dir, _attention_png_names([a.image])[0])
        attention_overlay(_picture(a.image, a.max_pixels), result.attention,
                          f"Q: {a.question}  A: {result.answer}").save(png)
    if a.json:
        row = {"answer": result.answer, "score": result.score, "unknown_words": unknown,
               "domain_score": result.domain_score, "out_of_domain": result.out_of_domain}
        if png:
            row["attention_png"] = png
        print(json.dumps(row))
    else:
        print(result.answer)
    return 0


def _check_train_flags(a, task: str) -> None:
    """Refuses flags given on the command line that do not apply to `task` (TRAIN_FLAG_TASKS)."""
    given = _given_flags(a._parser, a._argv) if getattr(a, "_parser", None) is not None else {}
    wrong = [option for dest, option in given.items() if task not in TRAIN_FLAG_TASKS.get(dest, (task,))]
    if wrong:
        other = "VQA" if task == "caption" else "caption"
        raise UserError(f"{', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply to {task} training "
                        f"({other} only); leave {'it' if len(wrong) == 1 else 'them'} out")


def cmd_train(a) -> int:
    from captioner.datasets import detect_task
    if (a.scst or a.init) and not (a.scst and a.init):
        raise UserError("self-critical training needs both --scst and --init MODEL_DIR (an XE-trained captioner)")
    task = a.task or detect_task(a.data)
    _check_train_flags(a, task)
    verbose = 0 if a.json else (1 if sys.stdout.isatty() else 2)
    if a.weights is None:  # the default: ImageNet weights for a pretrained backbone, random ones for small_cnn
        from captioner.backbones import backbone_spec
        weights = "imagenet" if backbone_spec(a.backbone).pretrained else None
    else:
        weights = None if a.weights in ("none", "None") else a.weights
    common = dict(image_root=a.image_root, backbone=a.backbone, weights=weights, image_size=a.image_size,
                  trainable_blocks=a.trainable_blocks, train_split=a.split_train, val_split=a.split_val, seed=a.seed,
                  verbose=verbose, time_budget=a.time_budget, resume=a.resume, overwrite=a.overwrite)
    # Flags whose default differs by task are passed only when given; left out, the task's training function picks
    # the defaults that fit it (the VQA recipe is a model a sixteenth the size of the caption decoder).
    given = lambda *pairs: {k: v for k, v in pairs if v is not None}  # noqa: E731
    common.update(given(("epochs", a.epochs), ("batch_size", a.batch_size), ("lr", a.lr), ("embed", a.embed),
                        ("units", a.units), ("dropout", a.dropout), ("attention_dim", a.attention_dim)))
    if a.scst:
        return _train_scst(a, task, verbose, given)
    if task == "vqa":
        from captioner.vqa import train_vqa
        summary = train_vqa(a.data, a.out, annotations=a.annotations, hops=a.hops, mode=a.vqa_mode,
                            cache_dir=a.cache_dir, **given(("cell_type", a.cell)), **common)
    else:
        from captioner.training import train_captioner
        summary = train_captioner(a.data, a.out, attention=not a.no_attention, alpha_c=a.alpha_c,
                                  scheduled_sampling=a.scheduled_sampling, min_count=a.min_count,
                                  cache_features=a.cache_features, cache_dir=a.cache_dir,
                                  init_from_lm=a.init_from_lm, mixed_precision=a.mixed_precision, jit=a.jit,
                                  distribute=a.distribute, init_embeddings=a.init_embeddings or "random",
                                  **given(("patience", a.patience), ("lr_decay", a.lr_decay), ("cell", a.cell),
                                          ("max_length", a.max_length), ("schedule", a.schedule),
                                          ("warmup", a.warmup), ("label_smoothing", a.label_smoothing),
                                          ("clipnorm", a.clipnorm), ("monitor", a.monitor)),
                                  **common)
    print(json.dumps(summary) if a.json else f"wrote {a.out} ({task} model, {summary.get('train_seconds')} s)")
    return 0


def _is_scenes_data(data: str) -> bool:
    """Whether DATA is what `captioner scenes` writes (its folder, dataset_scenes.json, or the vqa.jsonl beside it)."""
    path = os.path.abspath(data)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    return os.path.isfile(os.path.join(folder, "dataset_scenes.json"))


def _train_scst(a, task, verbose, given) -> int:
    """`captioner train DATA --scst --init XE_DIR --out DIR`: the SCST flags only (captioner.scst)."""
    if task == "vqa":
        raise UserError("--scst trains caption models, but the data has questions (VQA)")
    from captioner.scst import train_scst
    summary = train_scst(a.data, a.init, a.out, image_root=a.image_root, samples=a.samples,
                         temperature=a.temperature, max_length=a.max_length, train_split=a.split_train,
                         val_split=a.split_val, seed=a.seed, verbose=verbose, time_budget=a.time_budget,
                         patience=a.patience or 3, clipnorm=5.0 if a.clipnorm is None else a.clipnorm, jit=a.jit,
                         **given(("epochs", a.epochs), ("batch_size", a.batch_size), ("lr", a.lr)))
    kept = (f"best epoch {summary['best_epoch']}" if summary["best_epoch"]
            else "no epoch beat the initial model's validation CIDEr-D, so the folder holds that model unchanged")
    print(json.dumps(summary) if a.json else f"wrote {a.out} (SCST from {a.init}, {summary['train_seconds']} s, {kept})")
    return 0


def cmd_evaluate(a) -> int:
    from captioner.model import load_model_dir
    task = a.task
    if a.model is None:
        if os.path.exists(a.data) and not _is_scenes_data(a.data):
            raise UserError(f"{a.data}: not synthetic scenes data, and without --model the bundled scenes model would "
                            "be scored on it; pass --model DIR (a model trained on such data)")
        if task is None:  # the bundled model that fits the data: captioner or VQA
            from captioner.datasets import detect_task
            task = detect_task(a.data)
    loaded = load_model_dir(a.model, task=task)
    if loaded.task == "vqa":
        from captioner.datasets import load_vqa_dataset, split_examples
        from captioner.vqa import evaluate_vqa
        scores = evaluate_vqa(loaded, a.data, split=a.split, image_root=a.image_root, annotations=a.annotations)
        images = [e.image for e in split_examples(load_vqa_dataset(a.data, a.image_root, a.annotations), a.split)]
    else:
        from captioner.datasets import load_caption_dataset, split_examples
        from captioner.evaluate import evaluate_captioner
        scores = evaluate_captioner(loaded, a.data, split=a.split, image_root=a.image_root, beam_width=a.beam,
                                    max_images=a.max_images, meteor=not a.no_meteor)
        images = [e.image for e in split_examples(load_caption_dataset(a.data, a.image_root), a.split)]
        images = images[: a.max_images] if a.max_images else images
    from captioner.domain import evaluate_domain
    scores["domain"] = evaluate_domain(loaded, list(dict.fromkeys(images)))
    if a.json:
        print(json.dumps(scores))
    else:
        for key, value in _flatten(scores):
            print(f"{key:32} {value:.4f}" if isinstance(value, float) else f"{key:32} {value}")
    domain = scores["domain"]
    if domain and domain["out_of_domain"]:
        print(f"captioner: warning: {domain['out_of_domain']} of {domain['images']} images are out of the model's "
              f"domain (trained on {domain['trained_on']}); its scores on them say little", file=sys.stderr)
    return 0


def cmd_classify(a) -> int:
    from captioner.classify import classify
    results = classify(list(a.images), top=a.top, max_pixels=a.max_pixels)
    failures = 0
    for r in results:
        if "error" in r:
            failures += 1
            if not a.json:
                print(f"captioner: error: {r['error']}", file=sys.stderr)
        elif not a.json:
            labels = ", ".join(f"{x['label']} ({x['probability']:.2f})" for x in r["labels"])
            print(f"{r['image']}\t{labels}")
    if a.json:
        print(json.dumps(results))
    return 2 if failures else 0


def cmd_calibrate(a) -> int:
    from captioner.domain import calibrate_from_data
    stats = calibrate_from_data(a.model_dir, a.data, image_root=a.image_root, annotations=a.annotations,
                                train_split=a.split_train, heldout_split=a.split_val, trained_on=a.trained_on)
    print(f"wrote {os.path.join(a.model_dir, 'domain.npz')}: fitted on {stats.train_images} training images, "
          f"threshold calibrated on {stats.heldout_images} held-out images (trained on: {stats.trained_on})")
    return 0


def _flatten(scores: dict, prefix: str = ""):
    """{"per_type": {"answer_type": {"number": 0.9}}} -> ("per_type/answer_type/number", 0.9), in order."""
    for key, value in scores.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", value


def cmd_export(a) -> int:
    from captioner.model import load_model_dir
    loaded = load_model_dir(a.model, task=None if a.model else a.task)
    from captioner import export
    if loaded.task == "vqa":
        export.export_vqa(a.out_dir, loaded.directory)
    else:
        export.export_captioner(a.out_dir, loaded.directory, beam_width=a.beam, **check_search_flags(a))
    print(f"wrote SavedModel {a.out_dir} ({loaded.task}; signature serving_default)")
    return 0


def cmd_serve(a) -> int:
    from captioner.serve.server import serve_command
    return serve_command(a)


def cmd_scenes(a) -> int:
    from captioner.scenes import scenes_command
    if a.images < 1:
        raise UserError("--images must be >= 1")
    scenes_command(a.out_dir, a.images, a.seed, a.image_size)
    return 0


def cmd_demo(a) -> int:
    from captioner.demo import run_demo
    return run_demo(a.out, a.images, a.seed, as_json=a.json)


COMMANDS = {"caption": cmd_caption, "ask": cmd_ask, "train": cmd_train, "evaluate": cmd_evaluate,
            "export": cmd_export, "serve": cmd_serve, "scenes": cmd_scenes, "demo": cmd_demo,
            "calibrate": cmd_calibrate, "classify": cmd_classify}


FAST_COMMANDS = ("caption", "ask", "classify")  # inference only: Keras' NumPy backend (lm.startup)


def main(argv=None) -> int:
    parser = build_parser()
    # cmd_train compares the flags given with TRAIN_FLAG_TASKS, so it needs the command line as typed.
    parser.train_parser.set_defaults(_argv=list(sys.argv[1:] if argv is None else argv), _parser=parser.train_parser)
    return run_cli("captioner", parser, COMMANDS, argv, fast_commands=FAST_COMMANDS)


if __name__ == "__main__":
    sys.exit(main())
