#!/usr/bin/env bash
# Sets up .venv (if needed), installs the project with its test extras, and runs the test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k vocab
set -euo pipefail
source "$(dirname "$0")/_venv.sh" test
# PyTorch is optional (one backend smoke test uses it). Take a local wheel if this machine has one; never download
# several GB of CUDA packages just for a smoke test.
if ! "$VPY" -c "import torch" 2>/dev/null; then
  "$VPY" -m pip install -q --disable-pip-version-check --no-index torch 2>/dev/null \
    && echo "== installed PyTorch from a local wheel" \
    || echo "== PyTorch not available offline: the torch-backend smoke tests will be skipped"
fi
exec "$VPY" -m pytest -q -p no:cacheprovider "$@"
