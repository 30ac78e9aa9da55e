#!/usr/bin/env bash
# Shared body of scripts/train_flickr8k.sh and scripts/train_coco.sh (Karpathy JSON + image folder -> captioner):
#   _train_karpathy.sh RECIPE_SCRIPT DEFAULT_OUT EPOCHS PATIENCE DATASET_JSON IMAGE_DIR [OUT] [extra flags...]
# The bundled EfficientNet-Lite0 (frozen, features cached once), min count 5, early stopping on validation CIDEr-D,
# then beam-3 scores on the test split. A second run after a kill continues from the last finished epoch.
set -euo pipefail
RECIPE="$1"; DEFAULT_OUT="$2"; EPOCHS="$3"; PATIENCE="$4"; shift 4
if [ $# -lt 2 ]; then grep '^#' "$RECIPE" | sed 1d | sed 's/^# \{0,1\}//'; exit 2; fi
DATA="$1"; IMAGES="$2"; OUT="${3:-$DEFAULT_OUT}"; shift $(( $# < 3 ? $# : 3 ))
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}" PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
RESUME=()
[ -f "$OUT/config.json" ] && RESUME=(--resume)  # a second run continues the first from its last finished epoch

"$PY" -m captioner.cli train "$DATA" --image-root "$IMAGES" --out "$OUT" "${RESUME[@]}" \
  --backbone efficientnet_lite0 --weights imagenet --min-count 5 --max-length 20 \
  --epochs "$EPOCHS" --monitor cider --patience "$PATIENCE" "$@"
"$PY" -m captioner.cli evaluate "$DATA" --image-root "$IMAGES" --model "$OUT" --split test --beam 3 --json \
  | tee "$OUT/test-scores.json"
