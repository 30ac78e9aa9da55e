#!/usr/bin/env bash
# COCO recipe (Karpathy split: 113,287 train+restval / 5,000 val / 5,000 test images, 5 captions each): the bundled
# EfficientNet-Lite0 ImageNet weights (offline, frozen: each image goes through the CNN once, into the shared
# feature cache, about 15 GB of float16 grids), soft-attention LSTM decoder, words seen at least 5 times, early
# stopping on validation CIDEr-D, then beam-3 scores on the 5,000 test images. Nothing loads the whole dataset: memory stays flat (scripts/bench_scale.py).
#
# Usage: scripts/train_coco.sh DATASET_JSON COCO_ROOT [OUT] [extra `captioner train` flags...]
#   DATASET_JSON  Karpathy's dataset_coco.json (from https://cs.stanford.edu/people/karpathy/deepimagesent/)
#   COCO_ROOT     the folder holding train2014/ and val2014/
#   OUT           model folder (default runs/coco); run again after a kill and it resumes (--resume)
# Example: scripts/train_coco.sh data/dataset_coco.json data/coco runs/coco --batch-size 64
# Expected time: see "Real datasets" in the README (estimates from scripts/bench_scale.py throughput).
set -euo pipefail
if [ $# -lt 2 ]; then grep '^#' "$0" | sed 1d | sed 's/^# \{0,1\}//'; exit 2; fi
DATA="$1"; IMAGES="$2"; OUT="${3:-runs/coco}"; shift $(( $# < 3 ? $# : 3 ))
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}" PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
RESUME=()
[ -f "$OUT/config.json" ] && RESUME=(--resume)  # a second run continues the first from its last finished epoch

"$PY" -m captioner.cli train "$DATA" --image-root "$IMAGES" --out "$OUT" "${RESUME[@]}" \
  --backbone efficientnet_lite0 --weights imagenet --min-count 5 --max-length 20 \
  --epochs 15 --monitor cider --patience 3 "$@"
"$PY" -m captioner.cli evaluate "$DATA" --image-root "$IMAGES" --model "$OUT" --split test --beam 3 --json \
  | tee "$OUT/test-scores.json"
