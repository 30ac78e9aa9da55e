"""The 21 real photos a new user tries first: scikit-image's, scikit-learn's and matplotlib's sample images.

Everything is read from the installed packages (no download): scikit-image and scikit-learn are in the test extra,
matplotlib in the bench extra
(or on PYTHONPATH: `pip install --no-deps --target DIR matplotlib`; 20 photos without it). `python scripts/sample_photos.py OUT_DIR` writes them as PNG/JPEG files.

Example:
    >>> from scripts.sample_photos import sample_photos
    >>> photos = sample_photos()          # {"astronaut": uint8 (512, 512, 3), ...}
"""

from __future__ import annotations

import os
import sys

import numpy as np

SKIMAGE = ["astronaut", "brick", "camera", "cat", "clock", "coffee", "coins", "grass", "gravel", "hubble_deep_field",
           "immunohistochemistry", "moon", "page", "retina", "rocket", "text"]
SKIMAGE_STEREO = ["motorcycle_left", "motorcycle_right"]  # skimage.data.stereo_motorcycle()
SKLEARN = ["china", "flower"]
MATPLOTLIB = ["grace_hopper"]


def sample_photos() -> dict[str, np.ndarray]:
    """name -> uint8 (H, W, 3) or (H, W) pixels of the 21 photos (fewer when matplotlib is not installed)."""
    import skimage.data
    photos = {name: getattr(skimage.data, name)() for name in SKIMAGE}
    left, right, _ = skimage.data.stereo_motorcycle()
    photos.update(motorcycle_left=left, motorcycle_right=right)
    from sklearn.datasets import load_sample_images
    loaded = load_sample_images()
    for path, image in zip(loaded.filenames, loaded.images):
        photos[os.path.splitext(os.path.basename(path))[0]] = image
    photo = _matplotlib_sample("grace_hopper.jpg")
    if photo is not None:
        photos["grace_hopper"] = photo
    return {k: np.asarray(v)[..., :3] if np.asarray(v).ndim == 3 else np.asarray(v) for k, v in photos.items()}


def _matplotlib_sample(name: str):
    """A file of matplotlib's sample data, found without importing matplotlib (Keras imports it at start-up when it
    is installed, which slows every process; keep it out of the environment and pass its folder on PYTHONPATH, or
    pip install it: the bench extra). None when it is not there."""
    import importlib.util
    from PIL import Image
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, "mpl-data", "sample_data", name)
        if os.path.isfile(path):
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
    return None


def write_photos(out_dir: str) -> list[str]:
    """Writes every sample photo as OUT_DIR/NAME.png and returns the paths."""
    from PIL import Image
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, pixels in sample_photos().items():
        path = os.path.join(out_dir, f"{name}.png")
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_photos(sys.argv[1] if len(sys.argv) > 1 else "sample-photos"):
        print(p)
