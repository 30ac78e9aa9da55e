#!/usr/bin/env bash
# Reproduces the bundled language model lm/assets/kjv-lstm: a 1 x 512 LSTM whose output goes through a 512 -> 256
# projection into the tied 256-wide embedding (17 MB of weights), dropout 0.5, trained on the King James Bible copy
# in lm/assets/kjv (stream mode: stateful truncated BPTT over 35 steps, batch 64, Adam 3e-3 divided by 4 whenever
# validation perplexity stalls). On an idle 2-core CPU an epoch takes about 3 minutes; the 5,400 s budget gives
# about 25 epochs. The best epoch by validation perplexity is installed, then scored on the test split.
# --gate-init keras: the bundled model was trained with Keras' gate biases, before `lm train` defaulted to chrono.
# Usage: scripts/train_bundled_lm.sh [WORK_DIR] [extra lm train flags, e.g. --time-budget 9000 --epochs 60]
set -euo pipefail
source "$(dirname "$0")/_venv.sh"
WORK="${1:-$ROOT/runs/bundled-lm}"
shift || true
DEST="$ROOT/lm/assets/kjv-lstm"
lm train "$ROOT/lm/assets/kjv" --out "$WORK" --overwrite --arch lstm --units 512 --embed 256 --tie --dropout 0.5 \
  --epochs 40 --batch-size 64 --bptt 35 --lr 3e-3 --patience 3 --time-budget 5400 --gate-init keras "$@"
python "$ROOT/scripts/_install_model.py" "$WORK" "$DEST" --note "lm/assets/kjv (scripts/train_bundled_lm.sh)"
lm perplexity "$ROOT/lm/assets/kjv/test.txt" --model "$DEST"
