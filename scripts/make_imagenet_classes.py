"""Writes captioner/assets/imagenet_classes.txt: the 1000 ImageNet class names in class-id order, one a line.

Their source is torchvision's `_IMAGENET_CATEGORIES` (torchvision/models/_meta.py), read from an installed
torchvision or from a torchvision wheel (`pip download --no-deps torchvision`) without importing it. The file is
shipped, so `captioner classify` needs neither torchvision nor a download.

    python scripts/make_imagenet_classes.py [torchvision-*.whl]
"""

import ast
import importlib.util
import os
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    if len(sys.argv) > 1:
        with zipfile.ZipFile(sys.argv[1]) as z:
            source = z.read("torchvision/models/_meta.py").decode()
    else:
        spec = importlib.util.find_spec("torchvision")
        if spec is None:
            sys.exit("torchvision is not installed; pass a torchvision wheel")
        with open(os.path.join(spec.submodule_search_locations[0], "models", "_meta.py")) as f:
            source = f.read()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_IMAGENET_CATEGORIES":
            names = ast.literal_eval(node.value)
            break
    else:
        sys.exit("no _IMAGENET_CATEGORIES in torchvision/models/_meta.py")
    assert len(names) == 1000, len(names)
    out = os.path.join(ROOT, "captioner", "assets", "imagenet_classes.txt")
    with open(out, "w") as f:
        f.write("\n".join(names) + "\n")
    print(f"wrote {out} ({len(names)} names)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
