#!/usr/bin/env bash
# Reproduces the bundled VQA model, captioner/assets/scenes-vqa (what `captioner ask` uses without --model):
# generates the synthetic scenes, trains the stacked-attention model with the recipe of scripts/bench_vqa_scenes.py
# (its DEFAULTS: 6000 scenes at 64x64, small_cnn from scratch, 2 hops, 20 epochs), scores it on the held-out test
# and novel splits and copies the model folder into the package. CPU only is fine (about 15 minutes on 2 cores).
# Afterwards `scripts/bench_vqa_scenes.py --out runs/bundled-vqa --reuse` adds the baselines to the same table.
# Extra arguments go to bench_vqa_scenes.py, e.g. scripts/train_bundled_vqa.sh --epochs 30 --seed 1
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
WORK="${WORK:-runs/bundled-vqa}"
DEST=captioner/assets/scenes-vqa

"$PY" scripts/bench_vqa_scenes.py --modes attention --out "$WORK" "$@"

"$PY" scripts/_install_model.py "$WORK/attention" "$DEST" \
  --note "synthetic scenes (scripts/train_bundled_vqa.sh; scripts/bench_vqa_scenes.py defaults)"
du -sh "$DEST"
