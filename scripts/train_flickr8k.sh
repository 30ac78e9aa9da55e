#!/usr/bin/env bash
# Flickr8k recipe (Karpathy split): the bundled EfficientNet-Lite0 ImageNet weights (offline, frozen: each image
# goes through the CNN once, into the shared feature cache), soft-attention LSTM decoder, words seen at least 5
# times, early stopping on validation CIDEr-D, then beam-3 scores on the test split.
#
# Usage: scripts/train_flickr8k.sh DATASET_JSON IMAGE_DIR [OUT] [extra `captioner train` flags...]
#   DATASET_JSON  Karpathy's dataset_flickr8k.json (from https://cs.stanford.edu/people/karpathy/deepimagesent/)
#   IMAGE_DIR     the folder with the 8,091 JPEGs (Flicker8k_Dataset/)
#   OUT           model folder (default runs/flickr8k); run again after a kill and it resumes (--resume)
# Example: scripts/train_flickr8k.sh data/dataset_flickr8k.json data/Flicker8k_Dataset runs/flickr8k --epochs 30
# Expected time: see "Real datasets" in the README (estimates from scripts/bench_scale.py throughput).
set -euo pipefail
if [ $# -lt 2 ]; then grep '^#' "$0" | sed 1d | sed 's/^# \{0,1\}//'; exit 2; fi
DATA="$1"; IMAGES="$2"; OUT="${3:-runs/flickr8k}"; shift $(( $# < 3 ? $# : 3 ))
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}" PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
RESUME=()
[ -f "$OUT/config.json" ] && RESUME=(--resume)  # a second run continues the first from its last finished epoch

"$PY" -m captioner.cli train "$DATA" --image-root "$IMAGES" --out "$OUT" "${RESUME[@]}" \
  --backbone efficientnet_lite0 --weights imagenet --min-count 5 --max-length 20 \
  --epochs 20 --monitor cider --patience 4 "$@"
"$PY" -m captioner.cli evaluate "$DATA" --image-root "$IMAGES" --model "$OUT" --split test --beam 3 --json \
  | tee "$OUT/test-scores.json"
