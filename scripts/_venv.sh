# Sourced by demo.sh and test.sh: makes .venv if missing and installs the project into it (once per pyproject change).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
VPY="$ROOT/.venv/bin/python"
extras="${1:-}"
stamp=".venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)${extras:+-$extras}"
if [ ! -f "$stamp" ]; then
  log=.venv/install.log
  echo "== installing the project into .venv${extras:+ (with [$extras])}; pip's output goes to $log"
  # pip and setuptools talk a lot (deprecation banners, editable-install notes): show it only when pip fails.
  "$VPY" -m pip install -q --disable-pip-version-check --upgrade pip >"$log" 2>&1 || true  # an old pip still works
  "$VPY" -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}" >>"$log" 2>&1 ||
    { tail -n 30 "$log"; echo "install failed (full log: $log)"; exit 1; }
  # TensorFlow's import chatter is dropped unless the import fails.
  check=$("$VPY" -c "import numpy, PIL, keras" 2>&1) || { echo "$check" | tail -5; echo "install failed"; exit 1; }
  touch "$stamp"
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
export PATH="$ROOT/.venv/bin:$PATH"
