"""The one place that turns image bytes or paths into arrays.

Everything that reads pictures (captioning, VQA, feature extraction, the demo) goes through here so that every code
path sees the same pixels: EXIF orientation applied, any Pillow colour mode turned into 8-bit RGB, transparency
composited on white, and bad input reported as one clear line (``ImageError``) instead of a Pillow traceback.

Normalisation (mean/std) is deliberately NOT done here: it lives inside each backbone model
(``captioner.backbones``), so exported graphs and Python captioning share it.

Example:
    >>> from captioner.images import decode_image, resize_image, load_images
    >>> pixels = decode_image("cat.jpg")                       # uint8 (H, W, 3)
    >>> small = resize_image(pixels, (224, 224), "center_crop")  # uint8 (224, 224, 3)
    >>> batch, errors = load_images(["a.jpg", "broken.jpg"], (224, 224))
    >>> batch.shape, errors                                      # ((2, 224, 224, 3), [None, "broken.jpg: ..."])
"""

from __future__ import annotations

import io
import os
import struct
import threading
import warnings
from typing import Iterable, Sequence, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from lm.errors import UserError

__all__ = [
    "ImageError",
    "MAX_PIXELS",
    "RESIZE_POLICIES",
    "decode_image",
    "resize_image",
    "load_image",
    "load_images",
]

#: Largest image (width * height) that decode_image accepts: 64 megapixels. Bigger ones are refused as possible
#: decompression bombs before any pixel data is decoded.
MAX_PIXELS = 64_000_000

#: How resize_image fits an image into (height, width): "stretch" ignores the aspect ratio, "center_crop" scales to
#: cover the target and cuts the overflow equally from both sides, "pad" scales to fit inside and fills the rest
#: with black.
RESIZE_POLICIES = ("stretch", "center_crop", "pad")

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}

# ImageFile.LOAD_TRUNCATED_IMAGES is a process-wide switch; when some other library turns it on, Pillow silently
# fills the missing part of a truncated file with grey. When it is on, we switch it off around our own decoding
# (under a lock, restoring it afterwards) so a truncated file is always reported.
_TRUNCATION_LOCK = threading.Lock()

Source = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]"]


class ImageError(UserError):
    """An image could not be read: missing, empty, not an image, truncated, too large, zero-size...

    The message is one line; when the image came from a path it starts with that path.
    """


def _describe(source) -> str:
    """The name used at the start of error messages: the path as given, or a generic label for bytes."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "image bytes"
    return os.fspath(source)


def _read_source(source) -> tuple[bytes, str]:
    """Returns (raw bytes, name for messages); raises ImageError for missing/empty/unreadable files."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = "image bytes"
    elif isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        if isinstance(name, bytes):
            name = os.fsdecode(name)
        if not name:
            raise ImageError("empty image path: pass the path of an image file")
        if not os.path.exists(name):
            raise ImageError(f"{name}: no such file; check the path")
        if os.path.isdir(name):
            raise ImageError(f"{name}: is a directory, not an image file")
        try:
            with open(name, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ImageError(f"{name}: cannot read the file ({e.strerror or e}); check its permissions") from None
    else:
        raise ImageError(
            f"cannot read an image from a {type(source).__name__}: pass a file path or the file's bytes"
        )
    if not data:
        raise ImageError(f"{name}: file is empty (0 bytes); re-download or re-export the image")
    return data, name


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or BMP header when it can be read cheaply; Pillow refuses zero-size images with a
    generic "cannot identify" message, this lets us say what is actually wrong."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)
    return None


def _load_all_pixels(im: Image.Image) -> None:
    """im.load(), but a truncated file always raises, whatever ImageFile.LOAD_TRUNCATED_IMAGES says."""
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        im.load()  # the usual case: no lock, so threads decode in parallel
        return
    with _TRUNCATION_LOCK:
        saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            im.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """float (H, W) already in 0..255 -> uint8 (H, W, 3)."""
    gray = np.clip(np.rint(gray), 0, 255).astype(np.uint8)  # (H, W)
    return np.repeat(gray[:, :, None], 3, axis=2)  # (H, W, 3)


def _to_rgb(im: Image.Image, name: str) -> np.ndarray:
    """Any Pillow mode -> uint8 (H, W, 3).

    Rules: 16-bit grey ("I;16*") is scaled by 255/65535; 32-bit integer grey ("I") is read as 8-bit when all values
    fit in 0..255 and as 16-bit otherwise; float grey ("F") is read as 0..1 when its maximum is <= 1 and as 0..255
    otherwise; anything with transparency (RGBA, LA, PA, P or RGB with a transparent colour) is composited on white;
    the rest (1, L, P, CMYK, YCbCr, ...) uses Pillow's conversion.
    """
    mode = im.mode
    if mode.startswith("I;16"):
        values = np.asarray(im).astype(np.float64)  # (H, W) in 0..65535
        return _gray_to_rgb(values / 257.0)
    if mode == "I":
        values = np.asarray(im).astype(np.float64)  # (H, W) int32
        if values.size and values.max() > 255:
            values = np.clip(values, 0, 65535) / 257.0
        return _gray_to_rgb(values)
    if mode == "F":
        values = np.nan_to_num(np.asarray(im).astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)  # (H, W)
        if values.size and values.max() <= 1.0:
            values = values * 255.0
        return _gray_to_rgb(values)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    try:
        if has_alpha:
            if mode == "La":  # premultiplied grey+alpha: Pillow converts it only to LA
                im = im.convert("LA")
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im = Image.alpha_composite(white, rgba)
        rgb = im if im.mode == "RGB" else im.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageError(f"{name}: cannot convert colour mode {mode} to RGB ({e}); save the image as RGB") from None
    return np.asarray(rgb, dtype=np.uint8).copy()  # (H, W, 3)


def _open_unchecked(data: bytes) -> Image.Image:
    """Image.open without Pillow's own decompression-bomb check (a warning printed on stderr above 89 megapixels, an
    error above 179): decode_image checks the size itself against its max_pixels, which a user may raise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with _TRUNCATION_LOCK:  # MAX_IMAGE_PIXELS is process-wide: switch it off only around this open
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                return Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = limit


def decode_image(source: Source, *, max_pixels: int = MAX_PIXELS, min_size: int | None = None) -> np.ndarray:
    """Decodes an image file (path or bytes) into uint8 RGB pixels.

    EXIF orientation is applied, any colour mode becomes RGB (see ``_to_rgb`` for the rules), transparency is
    composited on white, animated images give their first frame.

    Args:
        source: path (str or os.PathLike) of an image file, or the file's bytes.
        max_pixels: refuse images with more than this many pixels (width * height) before decoding them.
        min_size: JPEG only, optional: let the decoder downscale by a power of two (fast "draft" mode) as long as
            both sides stay at least this many pixels. ``load_images`` passes the target size here.

    Returns:
        np.ndarray uint8 of shape (H, W, 3).

    Raises:
        ImageError: missing file, empty file, not an image, truncated or corrupt data, zero width or height,
            more than ``max_pixels`` pixels, or an unconvertible colour mode. One line, starting with the path
            when a path was given.

    Example:
        >>> pixels = decode_image("photo.jpg")
        >>> pixels.dtype, pixels.shape
        (dtype('uint8'), (480, 640, 3))
    """
    data, name = _read_source(source)
    try:
        im = _open_unchecked(data)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name}: image is too large to decode safely ({e}); resize it first") from None
    except UnidentifiedImageError:
        size = _header_size(data)
        if size is not None and 0 in size:
            raise ImageError(
                f"{name}: image has zero width or height ({size[0]}x{size[1]}); it contains no pixels"
            ) from None
        raise ImageError(
            f"{name}: not an image Pillow can read (expected JPEG, PNG, GIF, BMP, TIFF, WebP...); check the file"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise ImageError(f"{name}: corrupt image header ({e}); re-download or re-export the image") from None

    with im:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise ImageError(f"{name}: image has zero width or height ({width}x{height}); it contains no pixels")
        if width * height > max_pixels:
            raise ImageError(
                f"{name}: image is {width}x{height} ({width * height:,} pixels), over the {max_pixels:,}-pixel limit "
                "(possible decompression bomb); resize it first, or allow it with --max-pixels (max_pixels= in Python)"
            )
        if min_size and im.format == "JPEG":
            im.draft("RGB" if im.mode in ("RGB", "YCbCr") else im.mode, (int(min_size), int(min_size)))
        try:
            _load_all_pixels(im)  # force decoding of all pixel data now, so truncation shows up here
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError(f"{name}: image is too large to decode safely ({e}); resize it first") from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as e:
            what = "truncated" if "truncated" in str(e).lower() else "corrupt"
            raise ImageError(f"{name}: image data is {what} ({e}); re-download or re-export the image") from None
        try:
            oriented = ImageOps.exif_transpose(im)
        except Exception:  # a broken EXIF block is no reason to refuse the pixels; keep them as stored
            oriented = im
        return _to_rgb(oriented if oriented is not None else im, name)


def _as_uint8_rgb(array) -> np.ndarray:
    """Checks and converts an array to uint8 (H, W, 3); accepts (H, W), (H, W, 1) and (H, W, 3)."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3):
        raise ImageError(f"expected an image array of shape (H, W, 3), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"image array has zero width or height (shape {array.shape}); it contains no pixels")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.number):
            raise ImageError(f"expected a numeric image array, got dtype {array.dtype}")
        array = np.clip(np.rint(np.nan_to_num(array.astype(np.float64))), 0, 255).astype(np.uint8)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return array  # (H, W, 3) uint8


def _as_size(size) -> tuple[int, int]:
    """int or (height, width) -> (height, width) of positive ints."""
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    try:
        height, width = (int(s) for s in size)
    except (TypeError, ValueError):
        raise UserError(f"image size must be an int or a (height, width) pair, got {size!r}") from None
    if height <= 0 or width <= 0:
        raise UserError(f"image size must be positive, got {height}x{width}")
    return height, width


def resize_image(
    array: np.ndarray,
    size: int | tuple[int, int],
    policy: str = "stretch",
    *,
    resample: str = "bicubic",
) -> np.ndarray:
    """Resizes RGB pixels to (height, width) with Pillow (antialiased when shrinking).

    Args:
        array: uint8 (H, W, 3) pixels, e.g. from ``decode_image``; (H, W) grey and float 0..255 are accepted too.
        size: target (height, width), or an int for a square.
        policy: "stretch" (ignore aspect ratio), "center_crop" (cover, then crop the middle) or "pad" (fit inside,
            black borders). Each backbone names its policy in ``captioner.backbones.BACKBONES``.
        resample: "bicubic" (default) or "bilinear".

    Returns:
        np.ndarray uint8 of shape (height, width, 3).

    Example:
        >>> resize_image(np.zeros((480, 640, 3), np.uint8), (224, 224), "pad").shape
        (224, 224, 3)
    """
    height, width = _as_size(size)
    if policy not in RESIZE_POLICIES:
        raise UserError(f"unknown resize policy {policy!r}; use one of: {', '.join(RESIZE_POLICIES)}")
    if resample not in _RESAMPLE:
        raise UserError(f"unknown resample filter {resample!r}; use one of: {', '.join(_RESAMPLE)}")
    pixels = _as_uint8_rgb(array)  # (H, W, 3)
    if pixels.shape[:2] == (height, width):
        return pixels
    im = Image.fromarray(pixels, "RGB")
    method = _RESAMPLE[resample]
    if policy == "stretch":
        out = im.resize((width, height), method)
    elif policy == "center_crop":
        out = ImageOps.fit(im, (width, height), method=method, centering=(0.5, 0.5))
    else:  # pad
        out = ImageOps.pad(im, (width, height), method=method, color=(0, 0, 0), centering=(0.5, 0.5))
    return np.asarray(out, dtype=np.uint8).copy()  # (height, width, 3)


def load_image(
    source: Source | np.ndarray,
    size: int | tuple[int, int],
    policy: str = "stretch",
    *,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """Decodes (fast JPEG draft mode down to the target size) and resizes one image: uint8 (height, width, 3).

    What ``load_images`` does per item, for callers that decode in parallel threads (Pillow releases the GIL while
    it decodes and resizes). Raises ``ImageError`` for a bad image.

    Example:
        >>> load_image("photo.jpg", 224).shape
        (224, 224, 3)
    """
    height, width = _as_size(size)
    if isinstance(source, np.ndarray):
        pixels = source
    elif isinstance(source, Image.Image):  # a PIL image (the Python API): any mode, like a decoded file
        pixels = _to_rgb(source, "<PIL image>")
    else:
        pixels = decode_image(source, max_pixels=max_pixels, min_size=max(height, width))
    return resize_image(pixels, (height, width), policy)  # (height, width, 3) uint8


def load_images(
    sources: Iterable[Source | np.ndarray],
    size: int | tuple[int, int],
    policy: str = "stretch",
    *,
    max_pixels: int = MAX_PIXELS,
) -> tuple[np.ndarray, list[str | None]]:
    """Decodes and resizes a batch of images; a bad item does not spoil the batch.

    Args:
        sources: paths, bytes, PIL images, or already-decoded (H, W, 3) arrays.
        size: target (height, width), or an int for a square.
        policy: resize policy, see ``resize_image``.
        max_pixels: per-image limit, see ``decode_image``.

    Returns:
        (images, errors): images is float32 (N, height, width, 3) with values 0..255 (not normalised: the backbone
        does that); errors[i] is None for a good item, or the one-line ImageError message for a bad one, whose
        image is all zeros.

    Example:
        >>> images, errors = load_images(["a.jpg", "corrupt.jpg"], 224)
        >>> images.shape, [e is None for e in errors]
        ((2, 224, 224, 3), [True, False])
    """
    height, width = _as_size(size)
    if policy not in RESIZE_POLICIES:
        raise UserError(f"unknown resize policy {policy!r}; use one of: {', '.join(RESIZE_POLICIES)}")
    sources: Sequence = list(sources)
    images = np.zeros((len(sources), height, width, 3), np.float32)  # (N, height, width, 3)
    errors: list[str | None] = [None] * len(sources)
    for i, source in enumerate(sources):
        try:
            images[i] = load_image(source, (height, width), policy, max_pixels=max_pixels)
        except ImageError as e:
            errors[i] = str(e)
    return images, errors
