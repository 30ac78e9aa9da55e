"""`captioner`: caption or question images, train, evaluate, export, and make synthetic scenes.

  captioner caption IMAGE... [--model DIR] [--beam K] [--attention-out DIR] [--json]
  captioner ask IMAGE "QUESTION" [--model DIR] [--attention-out PNG] [--json]
  captioner train DATA --out DIR [--task caption|vqa] [--backbone NAME] [--weights W] [--epochs N] ...
  captioner evaluate DATA [--model DIR] [--split test] [--json]
  captioner export OUT_DIR [--model DIR] [--beam K]
  captioner scenes OUT_DIR [--images N] [--seed S]
  captioner demo [--out DIR]

Without --model the bundled models are used (trained on synthetic scenes; see scripts/train_bundled_*.sh).
DATA formats (auto-detected): Karpathy JSON (dataset_coco/flickr8k/flickr30k.json), Flickr8k token file with its
split lists, COCO captions_*.json, JSONL {"image", "caption"|"captions"}; for VQA: VQA v2 questions+annotations
JSON, JSONL {"image", "question", "answer"|"answers"}, and the scenes generator's vqa.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from lm.cli import add_accel_flags, add_out_flags, run_cli
from lm.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captioner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("caption", help="caption images (one line per image, or --json)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, GIF, BMP, WebP, TIFF)")
    p.add_argument("--model", default=None, help="captioner folder (default: the bundled scenes captioner)")
    p.add_argument("--beam", type=int, default=3, help="beam width (1 = greedy; default 3)")
    p.add_argument("--max-length", type=int, default=None, help="maximum words (default: the model's)")
    p.add_argument("--attention-out", default=None, metavar="DIR",
                   help="write one PNG per image with the attention map of every word")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list: one object per image with image, caption, score (or error)")

    p = sub.add_parser("ask", help="answer a question about an image",
                       description="Answers one question about one image with a VQA model (stacked attention). "
                                   "Words the model never saw are read as <unk> and named in a note on stderr.")
    p.add_argument("image", help="image file (JPEG, PNG, GIF, BMP, WebP, TIFF)")
    p.add_argument("question", help='the question, e.g. "how many circles are there"')
    p.add_argument("--model", default=None, help="VQA model folder (default: the bundled scenes VQA model)")
    p.add_argument("--attention-out", default=None, metavar="PNG", help="write the attention map as a PNG")
    p.add_argument("--json", action="store_true", help='print {"answer": ..., "score": ..., "unknown_words": [...]}')

    p = sub.add_parser("train", help="train a captioner (or a VQA model when the data has questions)")
    p.add_argument("data", help="dataset file or folder (see the formats above)")
    p.add_argument("--out", required=True, help="model folder to write")
    add_out_flags(p)
    p.add_argument("--task", choices=["caption", "vqa"], default=None, help="default: detected from the data")
    p.add_argument("--image-root", default=None, help="folder the image paths are relative to")
    p.add_argument("--annotations", default=None, help="VQA v2 annotations file (default: found beside questions)")
    p.add_argument("--split-train", default="train", help="split to train on (default train)")
    p.add_argument("--split-val", default="val", help="split for validation (default val)")
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
    p.add_argument("--epochs", type=int, default=None, help="maximum epochs (default: captions 10, VQA 20)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="batch size; VQA counts questions (default: captions 32, VQA 128)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: captions 1e-3, VQA 2e-3)")
    p.add_argument("--patience", type=int, default=None,
                   help="caption training: stop after this many epochs without validation gain (default 3)")
    p.add_argument("--lr-decay", type=float, default=None,
                   help="caption training: divide the learning rate by this after an epoch without validation gain "
                        "(default 1: constant)")
    p.add_argument("--embed", type=int, default=None, help="word embedding size (default: captions 256, VQA 64)")
    p.add_argument("--units", type=int, default=None,
                   help="recurrent units (default: captions 512, VQA 128 per direction)")
    p.add_argument("--attention-dim", type=int, default=256)
    p.add_argument("--cell", choices=["lstm", "gru", "rnn"], default="lstm")
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--no-attention", action="store_true", help="Show and Tell baseline (image vector first)")
    p.add_argument("--alpha-c", type=float, default=1.0, help="doubly stochastic attention weight (0 = off)")
    p.add_argument("--scheduled-sampling", type=float, default=0.0, help="probability of feeding own predictions")
    p.add_argument("--min-count", type=int, default=None,
                   help="drop caption words seen fewer times (default: 5, Karpathy's recipe for COCO and Flickr, when "
                        "the training split has at least 10,000 captions; 1 on smaller data, where 5 would drop most "
                        "words)")
    p.add_argument("--max-length", type=int, default=24, help="longest caption in words (+ <eos>)")
    p.add_argument("--cache-features", dest="cache_features", action="store_true", default=None,
                   help="extract grids once and train the decoder only (default for frozen pretrained CNNs)")
    p.add_argument("--no-cache-features", dest="cache_features", action="store_false")
    p.add_argument("--cache-dir", default=None,
                   help="folder of feature caches (default $CAPTIONER_CACHE/features, else ~/.cache/captioner/features);"
                        " a cache is reused only when backbone, weights, image size, resize policy and image files all "
                        "match, so captions and VQA on one image set share it")
    p.add_argument("--init-from-lm", default=None, metavar="MODEL_DIR", help="start the decoder from an lm model")
    p.add_argument("--hops", type=int, default=2, help="VQA: stacked attention hops")
    p.add_argument("--vqa-mode", choices=["attention", "blind", "mean"], default="attention",
                   help="VQA: stacked attention, question only, or mean-pooled image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-budget", type=float, default=None, help="stop after the epoch past this many seconds")
    add_accel_flags(p)  # --mixed-precision, --jit/--no-jit, --distribute (captions only)
    p.add_argument("--json", action="store_true", help="print the training summary as JSON")

    p = sub.add_parser("evaluate", help="score a model on a split (captions: BLEU, METEOR, ROUGE-L, CIDEr; VQA: accuracy)")
    p.add_argument("data")
    p.add_argument("--model", default=None)
    p.add_argument("--task", choices=["caption", "vqa"], default=None,
                   help="default: the model folder's task (without --model: detected from the data)")
    p.add_argument("--split", default="test")
    p.add_argument("--image-root", default=None)
    p.add_argument("--annotations", default=None)
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--max-images", type=int, default=None, help="evaluate on the first N only")
    p.add_argument("--no-meteor", action="store_true",
                   help="skip METEOR (it starts a Java process; reported as null)")
    p.add_argument("--json", action="store_true", help="print the scores as one JSON object")

    p = sub.add_parser("export", help="write a TensorFlow SavedModel that takes image bytes and returns strings")
    p.add_argument("out_dir")
    p.add_argument("--model", default=None)
    p.add_argument("--task", choices=["caption", "vqa"], default="caption",
                   help="which bundled model when --model is omitted")
    p.add_argument("--beam", type=int, default=3, help="beam width fixed in the exported graph")

    p = sub.add_parser("scenes", help="generate synthetic scenes (images, captions, questions)")
    p.add_argument("out_dir")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64)

    p = sub.add_parser("demo", help="fresh scenes -> captions, answers, attention pictures (what scripts/demo.sh runs)")
    p.add_argument("--out", default="demo-output", help="folder for the scenes and the picture")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--seed", type=int, default=20261122, help="scene seed (never used in training)")
    p.add_argument("--json", action="store_true")
    return parser


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


def _write_attention_png(result: dict, image_source, out_dir: str, name: str) -> str:
    from captioner.images import decode_image, resize_image
    from captioner.visualize import attention_grid
    os.makedirs(out_dir, exist_ok=True)
    image = resize_image(decode_image(image_source), (224, 224), "stretch")
    path = os.path.join(out_dir, name)
    attention_grid(image, result["words"], result["attention"], title=result["caption"]).save(path)
    return path


def cmd_caption(a) -> int:
    from captioner.model import caption_files, load_model_dir
    if a.beam < 1:
        raise UserError("--beam must be >= 1")
    loaded = load_model_dir(a.model, task="caption")
    results = caption_files(loaded, list(a.images), beam_width=a.beam, max_length=a.max_length)
    failures = 0
    png_names = _attention_png_names(a.images)
    for r, png_name in zip(results, png_names):
        if "error" in r:
            failures += 1
            if not a.json:
                print(f"captioner: error: {r['error']}", file=sys.stderr)
            continue
        if a.attention_out:
            r["attention_png"] = _write_attention_png(r, r["image"], a.attention_out, png_name)
        if not a.json:
            print(f"{r['image']}\t{r['caption']}")
    if a.json:
        keep = ("image", "caption", "score", "error", "attention_png")
        print(json.dumps([{k: r[k] for k in keep if k in r} for r in results]))
    return 1 if failures else 0


def cmd_ask(a) -> int:
    from captioner.model import load_model_dir
    from captioner.vqa import answer_questions
    from lm.text import tokenize
    words = tokenize(a.question)
    if not words:
        raise UserError('the question is empty; ask something, e.g. captioner ask IMAGE "what color is the circle"')
    loaded = load_model_dir(a.model, task="vqa")
    result = answer_questions(loaded, a.image, [a.question])[0]
    unknown = result["unknown_words"]
    if unknown:  # answered all the same (as <unk>), but the user should know the model guessed around them
        which = "some words are not" if any(w in loaded.vocab for w in words) else "no word is"
        listed = ", ".join(unknown[:8]) + (", ..." if len(unknown) > 8 else "")
        print(f"captioner: note: {which} in the model's vocabulary ({listed}); the answer is a guess", file=sys.stderr)
    if a.attention_out:
        from captioner.images import decode_image, resize_image
        from captioner.visualize import attention_overlay
        os.makedirs(os.path.dirname(os.path.abspath(a.attention_out)), exist_ok=True)
        image = resize_image(decode_image(a.image), (224, 224), "stretch")
        attention_overlay(image, result["attention"], f"Q: {a.question}  A: {result['answer']}").save(a.attention_out)
    if a.json:
        print(json.dumps({"answer": result["answer"], "score": float(result["score"]), "unknown_words": unknown}))
    else:
        print(result["answer"])
    return 0


def cmd_train(a) -> int:
    from captioner.datasets import detect_task
    task = a.task or detect_task(a.data)
    verbose = 0 if a.json else (1 if sys.stdout.isatty() else 2)
    if a.weights is None:  # the default: ImageNet weights for a pretrained backbone, random ones for small_cnn
        from captioner.backbones import backbone_spec
        weights = "imagenet" if backbone_spec(a.backbone).pretrained else None
    else:
        weights = None if a.weights in ("none", "None") else a.weights
    common = dict(image_root=a.image_root, backbone=a.backbone, weights=weights, image_size=a.image_size,
                  trainable_blocks=a.trainable_blocks, train_split=a.split_train, val_split=a.split_val, seed=a.seed,
                  verbose=verbose, time_budget=a.time_budget, resume=a.resume, overwrite=a.overwrite)
    # Sizes given on the command line; left out, the task's training function picks the defaults that fit it.
    common.update({k: v for k, v in (("epochs", a.epochs), ("batch_size", a.batch_size), ("lr", a.lr),
                                     ("embed", a.embed), ("units", a.units)) if v is not None})
    # Caption-only flags given on the command line; left out, train_captioner's own defaults hold.
    caption_only = {k: v for k, v in (("patience", a.patience), ("lr_decay", a.lr_decay)) if v is not None}
    if task == "vqa":
        if a.mixed_precision or a.distribute or a.jit != "auto" or caption_only:
            raise UserError("--mixed-precision, --jit/--no-jit, --distribute, --patience and --lr-decay apply to "
                            "caption training only")
        from captioner.vqa import train_vqa
        summary = train_vqa(a.data, a.out, annotations=a.annotations, hops=a.hops, mode=a.vqa_mode,
                            cache_dir=a.cache_dir, **common)
    else:
        from captioner.training import train_captioner
        summary = train_captioner(a.data, a.out, attention_dim=a.attention_dim, cell=a.cell, dropout=a.dropout,
                                  attention=not a.no_attention, alpha_c=a.alpha_c,
                                  scheduled_sampling=a.scheduled_sampling, min_count=a.min_count,
                                  max_length=a.max_length, cache_features=a.cache_features, cache_dir=a.cache_dir,
                                  init_from_lm=a.init_from_lm, mixed_precision=a.mixed_precision, jit=a.jit,
                                  distribute=a.distribute, **caption_only, **common)
    print(json.dumps(summary) if a.json else f"wrote {a.out} ({task} model, {summary.get('train_seconds')} s)")
    return 0


def cmd_evaluate(a) -> int:
    from captioner.model import load_model_dir
    task = a.task
    if task is None and a.model is None:  # the bundled model that fits the data: captioner or VQA
        from captioner.datasets import detect_task
        task = detect_task(a.data)
    loaded = load_model_dir(a.model, task=task)
    if loaded.task == "vqa":
        from captioner.vqa import evaluate_vqa
        scores = evaluate_vqa(loaded, a.data, split=a.split, image_root=a.image_root, annotations=a.annotations)
    else:
        from captioner.evaluate import evaluate_captioner
        scores = evaluate_captioner(loaded, a.data, split=a.split, image_root=a.image_root, beam_width=a.beam,
                                    max_images=a.max_images, meteor=not a.no_meteor)
    if a.json:
        print(json.dumps(scores))
    else:
        for key, value in _flatten(scores):
            print(f"{key:32} {value:.4f}" if isinstance(value, float) else f"{key:32} {value}")
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
        export.export_captioner(a.out_dir, loaded.directory, beam_width=a.beam)
    print(f"wrote SavedModel {a.out_dir} ({loaded.task}; signature serving_default)")
    return 0


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
            "export": cmd_export, "scenes": cmd_scenes, "demo": cmd_demo}


def main(argv=None) -> int:
    return run_cli("captioner", build_parser(), COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
