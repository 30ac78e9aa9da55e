"""A fast start for the inference commands (`captioner caption | ask | classify`, `lm generate | perplexity`).

Importing TensorFlow alone takes about 8 s; a one-image caption should take under 3. So, when the user has not
chosen a backend (no KERAS_BACKEND) and JAX is installed, these commands run on Keras' NumPy backend: inference
only, no graph compilation, NumPy for the arithmetic (and JAX for convolutions). Training and export keep
TensorFlow (or whatever KERAS_BACKEND says). Two more costs are cut at start-up:

- Keras imports scikit-learn (its sklearn wrappers) and matplotlib (an image-gallery plot) when they are installed:
  1-2 s that an inference command never uses. `import_keras` hides them while Keras is imported.
- Building a model runs its initializers before load_weights overwrites every weight; the orthogonal initializer
  of recurrent kernels is a QR decomposition (seconds for the bundled language model). `weights_to_be_loaded`
  makes it cheap (zeros) while a model folder is read.

Example:
    >>> from lm.startup import prefer_fast_backend, import_keras
    >>> prefer_fast_backend()          # before anything imports keras
    >>> keras = import_keras()
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

FAST_BACKEND = "numpy"
_OPTIONAL = ("sklearn", "matplotlib")  # imported by Keras at start-up, used by none of our commands


def prefer_fast_backend() -> str | None:
    """Selects Keras' NumPy backend for this process unless KERAS_BACKEND is set or Keras is already imported, and
    hides TensorFlow from it. Returns the backend chosen, or None when nothing was changed. Needs JAX (Keras' NumPy
    backend convolves with it); without JAX the configured backend stays. Call it only in a process that will not
    train or export (the inference commands)."""
    if os.environ.get("KERAS_BACKEND") or "keras" in sys.modules:
        return None
    if importlib.util.find_spec("jax") is None:
        return None
    os.environ["KERAS_BACKEND"] = FAST_BACKEND
    # Keras' serialization probes `tensorflow` whenever it is installed (building a Bidirectional layer imports all
    # of it: 8 s); on the NumPy backend nothing here needs it, so this process treats it as absent.
    if "tensorflow" not in sys.modules:
        sys.modules["tensorflow"] = None
    return FAST_BACKEND


def import_keras():
    """`import keras`, without the optional packages Keras loads at import for features this project never uses
    (scikit-learn wrappers, matplotlib plots). They stay importable afterwards."""
    if "keras" in sys.modules:
        return sys.modules["keras"]
    hidden = [name for name in _OPTIONAL if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # `import name` raises ImportError, which Keras handles as "not installed"
    try:
        import keras
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
    return keras


@contextlib.contextmanager
def weights_to_be_loaded():
    """While a model is built only to have its weights loaded from a file: orthogonal initializers return zeros
    (every weight is overwritten by load_weights, which fails loudly when one is missing)."""
    keras = import_keras()
    cls = keras.initializers.Orthogonal
    original = cls.__call__

    def zeros(self, shape, dtype=None):
        return keras.ops.zeros(shape, dtype=dtype)

    cls.__call__ = zeros
    try:
        yield
    finally:
        cls.__call__ = original
