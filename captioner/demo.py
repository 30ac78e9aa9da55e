"""`captioner demo`: fresh synthetic scenes (a seed never used in training) -> captions, answers, attention pictures.

Prints each prediction beside the truth and writes `OUT/index.html` with one PNG per scene (the image, its caption
and the attention map of every word) and the questions with their answers and attention.
"""

from __future__ import annotations

import html
import json
import os

import numpy as np

from captioner.images import decode_image, resize_image
from captioner.metrics import normalize_answer
from captioner.visualize import attention_grid, attention_overlay


def run_demo(out_dir: str, images: int = 4, seed: int = 20261122, as_json: bool = False,
             questions_per_image: int = 3) -> int:
    from captioner.api import Captioner
    from captioner.model import load_model_dir
    from captioner.scenes import generate_scenes
    out_dir = os.path.abspath(out_dir)
    scenes_dir = os.path.join(out_dir, "scenes")
    generate_scenes(scenes_dir, images, seed=seed, novel_fraction=0.0)
    with open(os.path.join(scenes_dir, "dataset_scenes.json")) as f:
        scene_images = json.load(f)["images"]
    with open(os.path.join(scenes_dir, "vqa.jsonl")) as f:
        qa_rows = [json.loads(line) for line in f if line.strip()]
    captioner = load_model_dir(None, task="caption")
    paths = [os.path.join(scenes_dir, im["filepath"], im["filename"]) for im in scene_images]
    captions = Captioner(captioner).caption(paths, beam=3)

    vqa = None
    try:
        vqa = load_model_dir(None, task="vqa")
    except Exception as e:  # the demo still shows captions if the VQA model is missing
        print(f"note: no bundled VQA model ({e})")
    report, sections = [], []
    caption_hits = answer_hits = answers_total = 0
    for i, (im, path, cap) in enumerate(zip(scene_images, paths, captions)):
        truths = [s["raw"] for s in im["sentences"]]
        exact = cap.get("caption") in truths
        caption_hits += exact
        name = os.path.splitext(im["filename"])[0]
        picture = resize_image(decode_image(path), (224, 224), "stretch")
        grid_png = os.path.join(out_dir, f"{name}.caption.png")
        attention_grid(picture, cap["words"], cap["attention"], title=cap["caption"]).save(grid_png)
        # The scenes give several reference captions: show the one the caption equals, else the first.
        shown = cap["caption"] if exact else truths[0]
        verdict = (f"equals one of the {len(truths)} references" if exact
                   else f"matches none of the {len(truths)} references")
        entry = {"image": path, "caption": cap["caption"], "truth": shown, "references": truths, "exact": exact,
                 "qa": []}
        rel = "images/" + im["filename"]
        rows = [r for r in qa_rows if r["image"] == rel][:questions_per_image]
        if vqa is not None and rows:
            from captioner.vqa import answer_questions
            answers = answer_questions(vqa, path, [r["question"] for r in rows])
            for j, (r, a) in enumerate(zip(rows, answers)):
                ok = normalize_answer(a["answer"]) == normalize_answer(r["answer"])
                answer_hits += ok
                answers_total += 1
                png = os.path.join(out_dir, f"{name}.q{j + 1}.png")
                attention_overlay(picture, a["attention"], f"Q: {r['question']}  A: {a['answer']}").save(png)
                entry["qa"].append({"question": r["question"], "answer": a["answer"], "truth": r["answer"],
                                    "correct": ok, "png": os.path.basename(png)})
        report.append(entry)
        if not as_json:
            print(f"\n{name}: {cap['caption']}\n{'':{len(name)}}  truth: {shown}  ({verdict})")
            for q in entry["qa"]:
                print(f"  Q: {q['question']:36} A: {q['answer']:8} truth: {q['truth']:8} {'ok' if q['correct'] else 'WRONG'}")
        qa_html = "".join(
            f"<figure><img src='{q['png']}'><figcaption>{html.escape(q['question'])} &rarr; <b>{html.escape(q['answer'])}</b>"
            f" (truth: {html.escape(q['truth'])})</figcaption></figure>" for q in entry["qa"])
        sections.append(f"<section><h2>{html.escape(name)}: {html.escape(cap['caption'])}</h2>"
                        f"<p>truth: {html.escape(shown)} ({verdict})</p><img src='{os.path.basename(grid_png)}'>"
                        f"<div class='qa'>{qa_html}</div></section>")
    page = os.path.join(out_dir, "index.html")
    with open(page, "w") as f:
        f.write("<!doctype html><meta charset='utf-8'><title>captioner demo</title><style>body{font-family:sans-serif;"
                "max-width:1000px;margin:auto} figure{display:inline-block;margin:4px} .qa img{width:320px}</style>"
                f"<h1>Captions, answers and attention on fresh scenes (seed {seed})</h1>" + "".join(sections))
    summary = {"page": page, "images": len(report), "caption_exact": caption_hits / max(1, len(report)),
               "answers_correct": answer_hits / max(1, answers_total) if answers_total else None, "scenes": report}
    if as_json:
        print(json.dumps(summary))
    else:
        print(f"\ncaptions exactly right: {caption_hits}/{len(report)}"
              + (f"; answers right: {answer_hits}/{answers_total}" if answers_total else ""))
        print(f"picture: {page} (one PNG per scene beside it)")
    return 0
