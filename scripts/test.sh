#!/usr/bin/env bash
# Sets up .venv (if needed), installs the project with its test extras, and runs the test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k vocab
set -euo pipefail
source "$(dirname "$0")/_venv.sh" test
# PyTorch is optional (one backend smoke test uses it). Take a local wheel if this machine has one; never download
# several GB of CUDA packages just for a smoke test.
if ! "$VPY" -c "import torch" 2>/dev/null; then
  local_wheel=""
  for dir in $("$VPY" -m pip config get global.find-links 2>/dev/null); do
    local_wheel=$(ls "$dir"/torch-*-cp3*.whl 2>/dev/null | head -n 1) && [ -n "$local_wheel" ] && break
  done
  if [ -n "$local_wheel" ] && "$VPY" -m pip install -q --disable-pip-version-check "$local_wheel" 2>/dev/null; then
    echo "== installed PyTorch from the local wheel $local_wheel"
  else
    echo "== no local PyTorch wheel: the torch-backend smoke tests will be skipped"
  fi
fi
# The web page's browser test drives Debian's headless Chromium; install it when missing and apt-get can (root).
if ! command -v chromedriver >/dev/null 2>&1 || ! { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing chromium and chromium-driver for the browser test (apt-get; log in .venv/apt.log)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver; } >.venv/apt.log 2>&1 ||
      echo "== could not install chromium (see .venv/apt.log): the browser test will be skipped"
  else
    echo "== chromium/chromium-driver missing and apt-get needs root: the browser test will be skipped"
  fi
fi
exec "$VPY" -m pytest -q -p no:cacheprovider "$@"
