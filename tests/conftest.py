"""Shared test helpers."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def run_python():
    """Runs `code` in a fresh Python under KERAS_BACKEND=`backend` (chosen at import, hence the child process), in
    the project root; skips the test when that backend's package is not installed. Returns the CompletedProcess."""
    def run(code: str, backend: str, **env) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "KERAS_BACKEND": backend, **env}
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full_env, capture_output=True, text=True,
                              timeout=300)
        if f"No module named '{backend}'" in proc.stderr:
            pytest.skip(f"{backend} is not installed")
        return proc
    return run
