"""Recurrent language models (Keras 3): train, score, sample.

    >>> from lm import LanguageModel              # see lm.api; the Keras model class is lm.model.LanguageModel

The name is imported on first use, so `import lm` stays cheap (no Keras until a model is needed).
"""

__all__ = ["LanguageModel"]


def __getattr__(name):
    if name in __all__:
        from lm import api
        return getattr(api, name)
    raise AttributeError(f"module 'lm' has no attribute {name!r}")
