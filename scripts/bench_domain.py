"""Out-of-domain detection of the bundled models: the 21 sample photos, and fresh synthetic scenes.

Must hold (issue 11): every photo out_of_domain; at most 2% of 500 fresh scenes (seed 424242, never used in
training: the captioner trained on seed 7, the VQA model on seed 0, the demo uses 20261122) out_of_domain.

    python scripts/bench_domain.py [--scenes 500] [--seed 424242] [--json]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=int, default=500, help="fresh scenes to generate (default 500)")
    p.add_argument("--seed", type=int, default=424242, help="scene seed, never used in training (default 424242)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    from captioner import VQA, Captioner
    from captioner.scenes import generate_scenes
    from scripts.sample_photos import sample_photos

    start = time.perf_counter()
    photos = sample_photos()
    report = {"photos": len(photos), "scenes": args.scenes, "seed": args.seed, "models": {}}
    with tempfile.TemporaryDirectory(prefix="bench-domain-") as work:
        generate_scenes(work, args.scenes, seed=args.seed)
        scenes = sorted(glob.glob(os.path.join(work, "images", "*.png")))
        for name, model in (("captioner", Captioner.load()), ("vqa", VQA.load())):
            if name == "captioner":
                photo_results = model.caption(list(photos.values()), beam=1)
                scene_results = model.caption(scenes, beam=1, batch_size=64)
            else:
                photo_results = model.ask_batch(list(photos.values()), ["what is this"] * len(photos))
                scene_results = model.ask_batch(scenes, ["what color is the circle"] * len(scenes))
            photo_scores = [r.domain_score for r in photo_results]
            scene_scores = sorted(r.domain_score for r in scene_results)
            report["models"][name] = {
                "photos_out_of_domain": sum(r.out_of_domain for r in photo_results),
                "photo_min_score": round(min(photo_scores), 3),
                "photo_lowest": min(zip(photo_scores, photos))[1],
                "scenes_out_of_domain": sum(r.out_of_domain for r in scene_results),
                "scenes_out_of_domain_rate": round(sum(r.out_of_domain for r in scene_results) / len(scenes), 4),
                "scene_median_score": round(scene_scores[len(scene_scores) // 2], 3),
                "scene_max_score": round(scene_scores[-1], 3),
                "per_photo": {k: round(s, 2) for k, s in zip(photos, photo_scores)},
            }
    report["seconds"] = round(time.perf_counter() - start, 1)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{report['photos']} sample photos, {args.scenes} fresh scenes (seed {args.seed}); out_of_domain when "
          "domain_score > 1")
    print(f"{'model':10} {'photos OOD':>11} {'min photo score':>16} {'scenes OOD':>11} {'median scene':>13} "
          f"{'max scene':>10}")
    for name, m in report["models"].items():
        print(f"{name:10} {m['photos_out_of_domain']:>5}/{report['photos']:<5} {m['photo_min_score']:>10.2f} "
              f"({m['photo_lowest']}) {m['scenes_out_of_domain']:>5} ({m['scenes_out_of_domain_rate']:.1%}) "
              f"{m['scene_median_score']:>9.2f} {m['scene_max_score']:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
