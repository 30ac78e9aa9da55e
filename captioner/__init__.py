"""Image captioning and visual question answering with soft attention (Keras 3).

    >>> from captioner import Captioner, VQA      # see captioner.api

The names are imported on first use, so `import captioner` stays cheap (no Keras until a model is needed).
"""

__all__ = ["Captioner", "VQA"]


def __getattr__(name):
    if name in __all__:
        from captioner import api
        return getattr(api, name)
    raise AttributeError(f"module 'captioner' has no attribute {name!r}")
