"""Writes the out-of-domain statistics (domain.npz) of the bundled captioner and VQA model.

Each model's training scenes are generated again with its training seed (images are identical per index; see
scripts/train_bundled_*.sh): the train split fits the statistics, the val split calibrates the threshold. Run it
after retraining a bundled model:

    python scripts/calibrate_bundled.py                 # both; or --only caption / --only vqa

For any other model folder: `captioner calibrate MODEL_DIR DATA`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TRAINED_ON = "synthetic scenes of coloured shapes on plain backgrounds (`captioner scenes`)"
# task: (model folder, scene seed used to train it, scenes to generate)
BUNDLED = {"caption": ("captioner/assets/scenes-captioner", 7, 2000), "vqa": ("captioner/assets/scenes-vqa", 0, 2000)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=sorted(BUNDLED), default=None, help="one model only (default: both)")
    args = p.parse_args()
    from captioner.domain import calibrate_from_data
    from captioner.scenes import generate_scenes
    for task, (folder, seed, n) in BUNDLED.items():
        if args.only and task != args.only:
            continue
        with tempfile.TemporaryDirectory(prefix="calibrate-") as work:
            s = generate_scenes(work, n, seed=seed)
            data = s["dataset"] if task == "caption" else s["vqa"]
            stats = calibrate_from_data(os.path.join(ROOT, folder), data, trained_on=TRAINED_ON)
        print(f"{folder}: domain.npz from {stats.train_images} training scenes (seed {seed}), threshold "
              f"{stats.threshold:.3f} from {stats.heldout_images} held-out scenes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
