"""Shared test helpers."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session", autouse=True)
def _private_captioner_cache(tmp_path_factory):
    """Feature caches and converted weights of the tests go to a temporary folder, never to ~/.cache/captioner
    (child processes inherit it)."""
    saved = os.environ.get("CAPTIONER_CACHE")
    os.environ["CAPTIONER_CACHE"] = str(tmp_path_factory.mktemp("captioner-cache"))
    yield
    if saved is None:
        os.environ.pop("CAPTIONER_CACHE", None)
    else:
        os.environ["CAPTIONER_CACHE"] = saved


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
