#!/usr/bin/env bash
# Reproduces the bundled language model lm/assets/kjv-lstm: a 1 x 256 LSTM with tied embeddings trained on the
# King James Bible copy in lm/assets/kjv (stream mode, stateful truncated BPTT, 35 steps). About 9 minutes an epoch
# on a busy 2-core CPU; the best epoch by validation perplexity is what lands in the folder.
# Usage: scripts/train_bundled_lm.sh [OUT_DIR] [extra lm train flags, e.g. --epochs 12]
set -euo pipefail
source "$(dirname "$0")/_venv.sh"
OUT="${1:-$ROOT/lm/assets/kjv-lstm}"
shift || true
lm train "$ROOT/lm/assets/kjv" --out "$OUT" --arch lstm --units 256 --tie --dropout 0.2 --epochs 8 \
  --batch-size 64 --bptt 35 --lr 3e-3 --patience 2 "$@"
lm perplexity "$ROOT/lm/assets/kjv/test.txt" --model "$OUT"
