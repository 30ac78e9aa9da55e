#!/usr/bin/env bash
# Sets up .venv (if needed), installs the project and runs the main job offline on the bundled models:
# captions + answers + attention pictures for fresh synthetic scenes, then the bundled language model.
set -euo pipefail
source "$(dirname "$0")/_venv.sh"
OUT="${1:-demo-output}"
if [ -f "$ROOT/captioner/assets/scenes-captioner/config.json" ]; then
  echo "== captioner demo (bundled scene captioner and VQA model)"
  captioner demo --out "$OUT"
else
  echo "== captioner demo skipped: this checkout has no bundled captioner yet (scripts/train_bundled_captioner.sh makes it)"
fi
echo
echo "== language model demo (bundled LSTM trained on the King James Bible)"
lm generate --prompt "in the beginning" --temperature 0.8 --top-k 40 --max-tokens 25 --seed 1 --num 2
lm perplexity "$ROOT/lm/assets/kjv/test.txt"
