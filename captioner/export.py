"""TensorFlow SavedModels that need no Python project code: image bytes -> captions, image + question -> answer.

Everything a client would otherwise have to re-implement runs inside the graph: image decoding, EXIF orientation,
the resize policy, the backbone's normalisation (it lives in the Keras model), beam search, and the vocabulary.
The exported graph reproduces `captioner.images.load_images` pixel for pixel (see "Pixel parity" below), so a
SavedModel's captions are the captions `captioner caption` prints for the same files and beam width.

Signature `serving_default` of a captioner export (`export_captioner`):
    inputs:  images     tf.string [batch]   file bytes (JPEG, PNG, GIF or BMP)
    outputs: captions   tf.string [batch]   words joined by spaces, "" for an image that could not be read
             scores     float32  [batch]    the beam's length-normalised log-probability (Captioner.caption's "score"),
                                            -inf for a bad image
             attention  float32  [batch, T, H, W]  attention over the feature grid, T = max_length, as
                                            Captioner.caption's "attention": row t for word t, row lengths[i] for the
                                            `<eos>` step (when the caption ended before max_length), zeros after
             lengths    int32    [batch]    number of words in each caption
             errors     tf.string [batch]   "" or one line: "image 2: corrupt or truncated JPEG data (...)"
             domain_scores float32 [batch]  as the Python API (captioner.domain; > 1: out of domain; NaN for a
                                            bad image), and out_of_domain bool [batch]; only when the model folder
                                            has domain.npz (every folder training writes does)
A VQA export (`export_vqa`) takes `images` and `questions` and returns `answers`, `scores`, `attention`, `errors`.
Copies of the model folder's config.json and vocab.json (answers.json) and an export.json describing the export
are in the SavedModel's assets.extra/.

Bad input, by design: a bad image never fails the request and never stops the server. Its row gets caption "",
score -inf and an `errors` message; the other rows are captioned as usual. (Decoding runs in a tf.data pipeline
with `ignore_errors()`, so even an error raised inside libjpeg/libpng only drops that one image; the message then
names the format it looked like.) An empty batch returns empty outputs.

Pixel parity with `captioner.images` (Pillow):
  * JPEG: decoded with the same IDCT (`dct_method="INTEGER_ACCURATE"`, i.e. libjpeg's ISLOW, which Pillow uses) and
    the same DCT-domain downscaling Pillow's `draft()` picks (ratio 1/2/4/8 from the target size); EXIF orientation
    is read from the APP1 segment and applied like `ImageOps.exif_transpose`.
  * PNG: transparency (alpha channel or tRNS) composited on white with Pillow's integer `alpha_composite`
    arithmetic; 16-bit grey scaled by 1/257 and rounded, 16-bit colour reduced to its high byte (as Pillow does).
  * GIF: first frame; BMP: 24/32-bit, and 8-bit through its palette.
  * Resize: Pillow's bicubic resampling re-implemented exactly (same coefficients, the same 22-bit fixed-point
    rounding, the same clipping after each pass, the same order of the two passes), for the three policies
    "stretch", "center_crop" (`ImageOps.fit`) and "pad" (`ImageOps.contain` + paste on black).
  Verified bit-exact against load_images for all of the above (tests/test_export.py). Known differences (Python
  reads them, the graph refuses them or differs): TIFF, WebP and other formats; BMP with 1/4/16 bits or RLE;
  CMYK JPEG colours; transparent GIF pixels (black here, white in Python); an EXIF orientation stored in a PNG
  eXIf chunk or only in XMP; a file missing its last few bytes (PNG IEND, GIF trailer, BMP row padding), which
  Pillow tolerates and TensorFlow's decoders do not. The pass order of Pillow's resize changed between Pillow
  versions; the graph follows Pillow 13 (see pillow_resize_graph).

Example:
    >>> from captioner.export import export_captioner
    >>> export_captioner("/tmp/captioner_savedmodel", "runs/scenes", beam_width=3)
    >>> import tensorflow as tf
    >>> serve = tf.saved_model.load("/tmp/captioner_savedmodel").signatures["serving_default"]
    >>> serve(images=tf.constant([open("cat.jpg", "rb").read()]))["captions"]
"""

from __future__ import annotations

import json
import os

from captioner.images import MAX_PIXELS
from lm.errors import UserError
from lm.export import (ids_to_text_graph, import_tensorflow as _tf, run_with_tensorflow_backend, save_module,
                       tokenize_graph)

__all__ = ["export_captioner", "export_vqa", "decode_and_resize_graph", "pillow_resize_graph", "CHUNK_SIZE"]

#: Rows searched together inside the graph. Beam search needs a static batch size, so a request is cut into
#: chunks of this many images (the last one padded with blank images).
CHUNK_SIZE = 8

# Per-image status codes inside the graph, and their messages.
_OK, _EMPTY, _UNKNOWN, _ZERO, _TOO_LARGE, _CORRUPT, _UNSUPPORTED = range(7)
_FORMATS = ("unknown", "JPEG", "PNG", "GIF", "BMP")


def _messages(max_pixels: int) -> list[str]:
    return [
        "",
        "empty input (0 bytes); send the image file's bytes",
        "not a JPEG, PNG, GIF or BMP file; convert the image to JPEG or PNG",
        "image has zero width or height; it contains no pixels",
        f"image is larger than {max_pixels / 1e6:.0f} megapixels (possible decompression bomb); resize it first",
        "",  # _CORRUPT: built per row with the format's name
        "unsupported BMP variant (only uncompressed 8-, 24- and 32-bit BMP); convert it to PNG or JPEG",
    ]


# ================================================================================================ bytes in the graph


def _byte_reader(tf, data):
    """data: scalar tf.string -> (u8, u16, u32) readers at int64 offsets; reads past the end give 0, never fail."""
    raw = tf.concat([tf.io.decode_raw(data, tf.uint8), tf.zeros([8], tf.uint8)], 0)  # (n + 8,), never empty
    last = tf.cast(tf.size(raw), tf.int64) - 1

    def u8(i):
        i = tf.cast(i, tf.int64)
        value = tf.cast(tf.gather(raw, tf.clip_by_value(i, 0, last)), tf.int64)
        return tf.where((i >= 0) & (i <= last), value, tf.zeros_like(i))

    def u16(i, little):
        a, b = u8(i), u8(i + 1)
        return tf.where(little, b * 256 + a, a * 256 + b)

    def u32(i, little):
        a, b = u16(i, little), u16(i + 2, little)
        return tf.where(little, b * 65536 + a, a * 65536 + b)

    return u8, u16, u32


def _sniff(tf, data):
    """tf.string (any shape) -> int32 format code (0 unknown, 1 JPEG, 2 PNG, 3 GIF, 4 BMP), by magic bytes."""
    head = tf.strings.substr(data, 0, 8)
    codes = tf.zeros(tf.shape(data), tf.int32)
    for code, magics in ((1, [b"\xff\xd8\xff"]), (2, [b"\x89PNG\r\n\x1a\n"]), (3, [b"GIF87a", b"GIF89a"]),
                         (4, [b"BM"])):
        hit = tf.zeros(tf.shape(data), tf.bool)
        for magic in magics:
            hit = hit | tf.equal(tf.strings.substr(head, 0, len(magic)), magic)
        codes = tf.where(hit & tf.equal(codes, 0), code, codes)
    return codes


def _jpeg_orientation(tf, data):
    """EXIF orientation (1..8, 1 when absent or unreadable) from a JPEG's first APP1 "Exif" segment."""
    u8, u16, u32 = _byte_reader(tf, data)
    n = tf.cast(tf.strings.length(data), tf.int64)
    big = tf.constant(False)

    def cond(pos, found, done):
        return tf.logical_not(done) & (pos + 4 <= n)

    def body(pos, found, done):
        marker = u8(pos + 1)
        bad = tf.not_equal(u8(pos), 0xFF)
        end = tf.equal(marker, 0xDA) | tf.equal(marker, 0xD9)  # start of scan / end of image: no EXIF before
        fill = tf.equal(marker, 0xFF)
        standalone = tf.equal(marker, 0x01) | ((marker >= 0xD0) & (marker <= 0xD8))
        length = u16(pos + 2, big)
        exif = (tf.equal(marker, 0xE1) & tf.equal(tf.strings.substr(data, tf.minimum(pos + 4, n), 6, unit="BYTE"),
                                                   b"Exif\x00\x00"))
        next_pos = tf.where(fill, pos + 1, tf.where(standalone, pos + 2, pos + 2 + length))
        found = tf.where(exif & ~bad, pos + 10, found)
        done = bad | end | exif | (length < 2) & ~fill & ~standalone
        return next_pos, found, done

    _, tiff, _ = tf.while_loop(cond, body, (tf.constant(2, tf.int64), tf.constant(-1, tf.int64), tf.constant(False)),
                               maximum_iterations=4096)
    little = tf.equal(tf.strings.substr(data, tf.clip_by_value(tiff, 0, n), 2, unit="BYTE"), b"II")
    ifd = tiff + u32(tiff + 4, little)
    count = tf.minimum(u16(ifd, little), 1024)
    entries = ifd + 2 + 12 * tf.range(count, dtype=tf.int64)  # (count,)
    tags = u16(entries, little)
    kinds = u16(entries + 2, little)
    values = tf.where(tf.equal(kinds, 4), u32(entries + 8, little), u16(entries + 8, little))
    hits = tf.where(tf.equal(tags, 0x0112))[:, 0]
    value = tf.cond(tf.size(hits) > 0, lambda: tf.gather(values, hits[0]), lambda: tf.constant(1, tf.int64))
    valid = (tiff >= 0) & (value >= 1) & (value <= 8)
    return tf.cast(tf.where(valid, value, 1), tf.int32)


def _apply_orientation(tf, pixels, orientation):
    """(H, W, 3) -> the image as ImageOps.exif_transpose shows it (orientation 1..8).

    Each orientation is a flip top-bottom and/or left-right, then maybe a transpose:
    2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 anticlockwise.
    """
    index = orientation - 1
    flip_ud = tf.gather([False, False, True, True, False, True, True, False], index)
    flip_lr = tf.gather([False, True, True, False, False, False, True, True], index)
    transpose = orientation >= 5
    axes = tf.boolean_mask(tf.constant([0, 1]), tf.stack([flip_ud, flip_lr]))
    flipped = tf.reverse(pixels, axes)
    return tf.transpose(flipped, tf.where(transpose, tf.constant([1, 0, 2]), tf.constant([0, 1, 2])))


def _alpha_composite_on_white(tf, rgba):
    """uint8 (H, W, 4) -> uint8 (H, W, 3): Pillow's Image.alpha_composite(white, rgba) integer arithmetic."""
    x = tf.cast(rgba, tf.int32)
    color, alpha = x[..., :3], x[..., 3:]
    tmp = 128 * (color * alpha + 255 * (255 - alpha)) + (0x80 << 7)
    shift = tf.bitwise.right_shift
    return tf.cast(shift(shift(shift(tmp, 8) + tmp, 8), 7), tf.uint8)  # SHIFTFORDIV255, then >> PRECISION_BITS


# ================================================================================================ Pillow's resize


_PRECISION_BITS = 22  # Pillow: 32 - 8 - 2


def _bicubic(tf, x):
    """Pillow's bicubic_filter (a = -0.5), elementwise on float64."""
    x = tf.abs(x)
    a = -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return tf.where(x < 1.0, near, tf.where(x < 2.0, far, tf.zeros_like(x)))


def _coefficients(tf, in_size, in0, in1, out_size):
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc as a dense (out_size, in_size) float64 matrix of the
    integer fixed-point weights. in0/in1: the box edges, float32 like the C floats Pillow passes them as."""
    scale = tf.cast(in1 - in0, tf.float64) / tf.cast(out_size, tf.float64)  # (in1 - in0) is computed in float
    filterscale = tf.maximum(scale, 1.0)
    support = 2.0 * filterscale
    inv_filterscale = 1.0 / filterscale
    center = tf.cast(in0, tf.float64) + (tf.cast(tf.range(out_size), tf.float64) + 0.5) * scale  # (out,)
    xmin = tf.maximum(tf.floor(center - support + 0.5), 0.0)  # (int)(...) then clamped at 0
    xmax = tf.minimum(tf.floor(center + support + 0.5), tf.cast(in_size, tf.float64))
    x = tf.cast(tf.range(in_size), tf.float64)[None, :]  # (1, in)
    inside = (x >= xmin[:, None]) & (x < xmax[:, None])  # (out, in)
    weights = _bicubic(tf, (x - center[:, None] + 0.5) * inv_filterscale)  # (out, in)
    weights = tf.where(inside, weights, tf.zeros_like(weights))
    total = tf.cumsum(weights, axis=1)[:, -1:]  # left-to-right sum, like the C loop
    safe_total = tf.where(tf.equal(total, 0.0), tf.ones_like(total), total)
    weights = tf.where(tf.not_equal(total, 0.0), weights / safe_total, weights)
    scaled = weights * float(1 << _PRECISION_BITS)
    return tf.where(weights < 0, tf.math.ceil(scaled - 0.5), tf.floor(scaled + 0.5))  # (int)(x -/+ 0.5)


def _resample_rows(tf, pixels, kk):
    """pixels float64 (H, W, 3) of 0..255 integers, kk (out, W) -> (H, out, 3): one horizontal pass with Pillow's
    rounding (+ 2^21, >> 22, clip to 0..255). Exact: every partial sum is an integer below 2^53."""
    sums = tf.einsum("hwc,ow->hoc", pixels, kk) + float(1 << (_PRECISION_BITS - 1))
    return tf.clip_by_value(tf.floor(sums / float(1 << _PRECISION_BITS)), 0.0, 255.0)


def pillow_resize_graph(pixels, out_h, out_w, box=None):
    """Pillow's `Image.resize(size, BICUBIC, box)` for RGB uint8, bit for bit, as TensorFlow ops.

    Args:
        pixels: uint8 (H, W, 3) tensor.
        out_h, out_w: output size (ints or scalar int32 tensors).
        box: (left, top, right, bottom) source box in float32, default the whole image.
    Returns:
        uint8 (out_h, out_w, 3).
    """
    tf = _tf()
    h, w = tf.shape(pixels)[0], tf.shape(pixels)[1]
    if box is None:
        box = (tf.constant(0.0), tf.constant(0.0), tf.cast(w, tf.float32), tf.cast(h, tf.float32))
    left, top, right, bottom = (tf.cast(b, tf.float32) for b in box)
    kx = _coefficients(tf, w, left, right, out_w)  # (out_w, W)
    ky = _coefficients(tf, h, top, bottom, out_h)  # (out_h, H)
    out_w_t, out_h_t = tf.cast(out_w, tf.int32), tf.cast(out_h, tf.int32)
    need_x = tf.not_equal(out_w_t, w) | tf.not_equal(left, 0.0) | tf.not_equal(right, tf.cast(out_w_t, tf.float32))
    need_y = tf.not_equal(out_h_t, h) | tf.not_equal(top, 0.0) | tf.not_equal(bottom, tf.cast(out_h_t, tf.float32))
    # Pass order, measured on Pillow 13 (older Pillow always ran the horizontal pass first, so this is
    # version-dependent; tests/test_export.py checks it against the installed Pillow): vertical first when the
    # height shrinks, and by more than twice as much as the width.
    vertical_first = (h > out_h_t) & ((h - out_h_t) > (w - out_w_t) * 2)
    swap, keep = tf.constant([1, 0, 2]), tf.constant([0, 1, 2])

    def one_pass(image, vertical):  # a horizontal pass on the image, or on its transpose for a vertical one
        perm = tf.where(vertical, swap, keep)
        rows = tf.transpose(image, perm)
        kk = tf.cond(vertical, lambda: ky, lambda: kx)
        need = tf.where(vertical, need_y, need_x)
        return tf.transpose(tf.cond(need, lambda: _resample_rows(tf, rows, kk), lambda: rows), perm)

    x = tf.cast(pixels, tf.float64)
    x = one_pass(one_pass(x, vertical_first), tf.logical_not(vertical_first))
    return tf.cast(x, tf.uint8)


def _resize_policy(tf, pixels, height: int, width: int, policy: str):
    """uint8 (H, W, 3) -> uint8 (height, width, 3) like captioner.images.resize_image(pixels, size, policy)."""
    h = tf.cast(tf.shape(pixels)[0], tf.float64)
    w = tf.cast(tf.shape(pixels)[1], tf.float64)
    if policy == "stretch":
        out = pillow_resize_graph(pixels, height, width)
    elif policy == "center_crop":  # ImageOps.fit(centering=(0.5, 0.5), bleed=0)
        live_ratio = w / h
        output_ratio = width / height
        crop_w = tf.where(tf.equal(live_ratio, output_ratio), w, tf.where(live_ratio >= output_ratio,
                                                                         output_ratio * h, w))
        crop_h = tf.where(tf.equal(live_ratio, output_ratio), h, tf.where(live_ratio >= output_ratio,
                                                                         h, w / output_ratio))
        left = (w - crop_w) * 0.5
        top = (h - crop_h) * 0.5
        box = (left, top, left + crop_w, top + crop_h)
        out = pillow_resize_graph(pixels, height, width, box=tuple(tf.cast(b, tf.float32) for b in box))
    elif policy == "pad":  # ImageOps.contain, then pasted centred on black
        im_ratio = w / h
        dest_ratio = width / height
        new_h = tf.where(tf.equal(im_ratio, dest_ratio) | (im_ratio <= dest_ratio), tf.constant(height, tf.float64),
                         tf.round(h / w * width))  # Python's round() = half to even = tf.round
        new_w = tf.where(tf.equal(im_ratio, dest_ratio) | (im_ratio > dest_ratio), tf.constant(width, tf.float64),
                         tf.round(w / h * height))
        new_h, new_w = tf.cast(new_h, tf.int32), tf.cast(new_w, tf.int32)
        inner = tf.cond((new_h > 0) & (new_w > 0),
                        lambda: pillow_resize_graph(pixels, new_h, new_w),
                        lambda: tf.zeros([new_h, new_w, 3], tf.uint8))
        x = tf.cast(tf.round(tf.cast(width - new_w, tf.float64) * 0.5), tf.int32)
        y = tf.cast(tf.round(tf.cast(height - new_h, tf.float64) * 0.5), tf.int32)
        x = tf.where(tf.equal(new_w, width), 0, x)
        y = tf.where(tf.equal(new_w, width), y, 0)
        out = tf.pad(inner, [[y, height - new_h - y], [x, width - new_w - x], [0, 0]])
    else:
        raise UserError(f"unknown resize policy {policy!r}")
    out = tf.cond(tf.equal(tf.shape(pixels)[0], height) & tf.equal(tf.shape(pixels)[1], width),
                  lambda: pixels, lambda: out)  # resize_image returns same-size pixels untouched
    return tf.ensure_shape(out, [height, width, 3])


# ================================================================================================ decoding


def _decode_pixels(tf, data, fmt, u8, u16, u32, min_size: int):
    """Decodes one image of a known format to uint8 (H, W, 3) the way captioner.images.decode_image does."""
    little, big = tf.constant(True), tf.constant(False)

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
        scale = tf.minimum(shape[1] // min_size, shape[0] // min_size)  # Pillow's draft((min_size, min_size))
        index = tf.where(scale >= 8, 3, tf.where(scale >= 4, 2, tf.where(scale >= 2, 1, 0)))
        decoders = [lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r, dct_method="INTEGER_ACCURATE")
                    for r in (1, 2, 4, 8)]
        pixels = tf.switch_case(tf.cast(index, tf.int32), decoders)
        return _apply_orientation(tf, pixels, _jpeg_orientation(tf, data))

    def png():
        depth, color_type = u8(24), u8(25)
        head = tf.strings.split(data, b"IDAT", maxsplit=1)[0]
        has_trns = tf.size(tf.strings.split(head, b"tRNS")) > 1
        alpha = tf.equal(color_type, 4) | tf.equal(color_type, 6) | has_trns

        def deep_grey():  # Pillow mode I;16: value / 257, rounded
            v = tf.cast(tf.io.decode_png(data, channels=1, dtype=tf.uint16), tf.float64)
            return tf.tile(tf.cast(tf.round(v / 257.0), tf.uint8), [1, 1, 3])

        def high_byte(channels):  # Pillow reads 16-bit colour as its high byte
            return tf.cast(tf.bitwise.right_shift(tf.io.decode_png(data, channels=channels, dtype=tf.uint16),
                                                  tf.constant(8, tf.uint16)), tf.uint8)

        def with_alpha():
            rgba = tf.cond(tf.equal(depth, 16), lambda: high_byte(4), lambda: tf.io.decode_png(data, channels=4))
            return _alpha_composite_on_white(tf, rgba)

        def opaque():
            return tf.cond(tf.equal(depth, 16), lambda: high_byte(3), lambda: tf.io.decode_png(data, channels=3))

        return tf.cond(tf.equal(depth, 16) & tf.equal(color_type, 0) & ~has_trns, deep_grey,
                       lambda: tf.cond(alpha, with_alpha, opaque))

    def gif():
        return tf.io.decode_gif(data)[0]

    def bmp():
        header = u32(14, little)
        bpp = tf.where(tf.equal(header, 12), u16(24, little), u16(28, little))

        def palette():  # TF decodes an 8-bit BMP as its palette indices
            index = tf.cast(tf.io.decode_bmp(data, channels=0)[..., 0], tf.int64)  # (H, W)
            table = 14 + header + 4 * tf.range(256, dtype=tf.int64)  # BGRX entries
            colors = tf.cast(tf.stack([u8(table + 2), u8(table + 1), u8(table)], axis=-1), tf.uint8)  # (256, 3)
            return tf.gather(colors, index)

        return tf.cond(tf.equal(bpp, 8), palette, lambda: tf.io.decode_bmp(data, channels=3))

    pixels = tf.switch_case(fmt - 1, [jpeg, png, gif, bmp])
    return tf.ensure_shape(pixels, [None, None, 3])


def _header_check(tf, fmt, u8, u16, u32, max_pixels: int):
    """-> status (int32) from the header alone: _OK, _ZERO, _TOO_LARGE or _UNSUPPORTED (JPEG's size is checked by
    the caller from extract_jpeg_shape, which raises for a corrupt header)."""
    little, big = tf.constant(True), tf.constant(False)
    header = u32(14, little)
    os2 = tf.equal(header, 12)
    bmp_w = tf.where(os2, u16(18, little), u32(18, little))
    bmp_h = tf.where(os2, u16(20, little), u32(22, little))
    bmp_h = tf.where(bmp_h >= 2 ** 31, 2 ** 32 - bmp_h, bmp_h)  # negative height: top-down rows
    bpp = tf.where(os2, u16(24, little), u16(28, little))
    compression = tf.where(os2, tf.constant(0, tf.int64), u32(30, little))
    width = tf.switch_case(fmt - 2, [lambda: u32(16, big), lambda: u16(6, little), lambda: bmp_w])
    height = tf.switch_case(fmt - 2, [lambda: u32(20, big), lambda: u16(8, little), lambda: bmp_h])
    bmp_ok = ((tf.equal(bpp, 24) | tf.equal(bpp, 32)) & (tf.equal(compression, 0) | tf.equal(compression, 3))) | (
        tf.equal(bpp, 8) & tf.equal(compression, 0))
    status = tf.where(tf.equal(fmt, 4) & ~bmp_ok, _UNSUPPORTED, _OK)
    status = tf.where(width * height > max_pixels, _TOO_LARGE, status)
    return tf.where(tf.equal(width * height, 0), _ZERO, status), width, height


def decode_and_resize_graph(images, size, policy: str = "stretch", max_pixels: int = MAX_PIXELS):
    """tf.string [n] -> (pixels uint8 [n, height, width, 3], status int32 [n], errors tf.string [n]).

    The graph version of `captioner.images.load_images`: pixels of a bad image are zeros and its `errors` entry
    says why. Never raises for bad image bytes.
    """
    tf = _tf()
    height, width = (int(s) for s in size)
    min_size = max(height, width)
    n = tf.shape(images)[0]
    formats = _sniff(tf, images)  # (n,)

    def one(index, data, fmt):
        u8, u16, u32 = _byte_reader(tf, data)

        def known():
            def header_dims():
                status, w, h = _header_check(tf, fmt, u8, u16, u32, max_pixels)
                return status

            def jpeg_dims():
                shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
                pixels = shape[0] * shape[1]
                return tf.where(tf.equal(pixels, 0), _ZERO, tf.where(pixels > max_pixels, _TOO_LARGE, _OK))

            status = tf.cond(tf.equal(fmt, 1), jpeg_dims, header_dims)
            pixels = tf.cond(
                tf.equal(status, _OK),
                lambda: _resize_policy(tf, _decode_pixels(tf, data, fmt, u8, u16, u32, min_size), height, width,
                                       policy),
                lambda: tf.zeros([height, width, 3], tf.uint8))
            return tf.cast(status, tf.int32), pixels

        empty = tf.equal(tf.strings.length(data), 0)
        status, pixels = tf.cond(
            empty | tf.equal(fmt, 0),
            lambda: (tf.where(empty, _EMPTY, _UNKNOWN), tf.zeros([height, width, 3], tf.uint8)),
            known)
        return index, status, pixels

    dataset = tf.data.Dataset.from_tensor_slices((tf.range(n), images, formats)).map(
        tf.autograph.experimental.do_not_convert(one)).ignore_errors()
    sentinel = tf.data.Dataset.from_tensors((tf.constant(-1), tf.constant(_OK), tf.zeros([height, width, 3],
                                                                                        tf.uint8)))
    index, status, pixels = dataset.concatenate(sentinel).batch(tf.cast(n, tf.int64) + 1).get_single_element()
    keep = index >= 0
    index, status, pixels = index[keep], status[keep], pixels[keep]
    all_status = tf.tensor_scatter_nd_update(tf.fill([n], _CORRUPT), index[:, None], status)
    all_pixels = tf.scatter_nd(index[:, None], pixels, tf.stack([n, height, width, 3]))

    text = tf.gather(tf.constant(_messages(max_pixels)), all_status)
    fmt_names = tf.gather(tf.constant(list(_FORMATS)), formats)
    text = tf.where(tf.equal(all_status, _CORRUPT),
                    tf.strings.join(["corrupt or truncated ", fmt_names,
                                     " data (it could not be decoded); re-download or re-export the image"]), text)
    prefix = tf.strings.join(["image ", tf.strings.as_string(tf.range(n)), ": "])
    errors = tf.where(tf.equal(all_status, _OK), tf.constant(""), tf.strings.join([prefix, text]))
    return all_pixels, all_status, errors


# ================================================================================================ captioner


def export_captioner(out_dir, model_dir=None, beam_width: int = 3, max_length: int | None = None,
                     length_penalty: float = 1.0, chunk_size: int = CHUNK_SIZE, min_length: int = 0,
                     block_repeats: int = 0, num_captions: int = 1) -> str:
    """Writes a SavedModel: image bytes -> captions, scores, attention (see the module docstring).

    Runs in a TensorFlow-backend subprocess when Keras runs on another backend (weights come from the folder's
    model.weights.h5, which every backend reads).

    Args:
        out_dir: folder to write (created; an existing SavedModel there is replaced, any other non-empty folder
            is refused).
        model_dir: a captioner model folder (captioner.model.save_model_dir); None = the bundled one.
        beam_width: beam width of the search inside the graph (1 = greedy).
        max_length: longest caption in steps (words + `<eos>`); default the folder's config "max_length", else 20
            (what Captioner.caption uses).
        length_penalty, min_length, block_repeats: as in captioner.api.Captioner.caption.
        chunk_size: images searched together (beam search needs a static batch inside the graph).
        num_captions: n > 1 adds outputs `all_captions` tf.string [batch, n] and `all_scores` float32 [batch, n],
            the n best captions best first (Captioner.caption's "captions"); `captions` etc. stay the best one's.

    Returns:
        out_dir as an absolute path.

    Example:
        >>> export_captioner("exported/captioner", "runs/scenes", beam_width=3)
        '/.../exported/captioner'
    """
    if int(beam_width) < 1 or (max_length is not None and int(max_length) < 1) or int(chunk_size) < 1:
        raise UserError("need beam_width >= 1, max_length >= 1 and chunk_size >= 1")
    if not 1 <= int(num_captions) <= int(beam_width) or int(min_length) < 0 or int(block_repeats) < 0:
        raise UserError("need 1 <= num_captions <= beam_width, min_length >= 0 and block_repeats >= 0")
    search_flags = dict(min_length=int(min_length), block_repeats=int(block_repeats), num_captions=int(num_captions))
    kwargs = dict(out_dir=os.fspath(out_dir), model_dir=None if model_dir is None else os.fspath(model_dir),
                  beam_width=int(beam_width), max_length=None if max_length is None else int(max_length),
                  length_penalty=float(length_penalty), chunk_size=int(chunk_size), **search_flags)
    if run_with_tensorflow_backend(__name__, "export_captioner", kwargs):
        return os.path.abspath(os.fspath(out_dir))
    tf = _tf()
    from captioner.model import load_model_dir
    loaded = load_model_dir(model_dir, task="caption")
    model = loaded.model
    height, width = loaded.image_size
    policy = loaded.resize_policy
    steps = int(max_length or loaded.config.get("max_length", 20))
    grid_h, grid_w, _ = model.grid
    tokens = list(loaded.vocab.itos)
    chunk = int(chunk_size)
    from captioner.domain import load_domain
    domain = load_domain(loaded.directory)

    n_best = int(num_captions)

    def search(pixels):  # (chunk, h, w, 3) uint8 -> words (chunk, n, T), scores (chunk, n), alphas (chunk, T, pixels)
        words, scores, alphas = model.generate(tf.cast(pixels, tf.float32), beam_width=int(beam_width),
                                               max_length=steps, length_penalty=float(length_penalty),
                                               early_exit=False, **search_flags)
        if n_best == 1:
            words, scores, alphas = words[:, None], scores[:, None], alphas[:, None]
        return tf.cast(words, tf.int32), tf.cast(scores, tf.float32), tf.cast(alphas[:, 0], tf.float32)

    def serve(images):
        pixels, status, errors = decode_and_resize_graph(images, (height, width), policy)
        n = tf.shape(images)[0]
        padded = (n + chunk - 1) // chunk * chunk
        pixels = tf.concat([pixels, tf.zeros(tf.stack([padded - n, height, width, 3]), tf.uint8)], 0)
        chunks = tf.reshape(pixels, [-1, chunk, height, width, 3])  # (chunks, chunk, h, w, 3)
        all_words, all_scores, alphas = tf.map_fn(
            search, chunks, fn_output_signature=(tf.TensorSpec([chunk, n_best, steps], tf.int32),
                                                 tf.TensorSpec([chunk, n_best], tf.float32),
                                                 tf.TensorSpec([chunk, steps, grid_h * grid_w], tf.float32)))
        all_words = tf.reshape(all_words, [-1, n_best, steps])[:n]  # (n, n_best, T)
        all_scores = tf.reshape(all_scores, [-1, n_best])[:n]  # (n, n_best)
        words, scores = all_words[:, 0], all_scores[:, 0]  # the best: (n, T), (n,)
        alphas = tf.reshape(alphas, [-1, steps, grid_h, grid_w])[:n]  # (n, T, h', w')
        captions, lengths, _ = ids_to_text_graph(words, tokens)
        ok = tf.equal(status, _OK)
        # As Captioner.caption: one row per word shown, then the <eos> step if the caption ended before max_length
        # (rows of <pad>/<bos> ids, which the text drops, are dropped too); zeros after that.
        t = tf.range(steps)[None, :]  # (1, T)
        end = tf.reduce_sum(tf.cast(tf.equal(tf.cumsum(tf.cast(tf.equal(words, 3), tf.int32), axis=1), 0),
                                    tf.int32), axis=1)[:, None]  # (n, 1): position of the first <eos> (T if none)
        kept = ((t < end) & tf.not_equal(words, 0) & tf.not_equal(words, 2)) | tf.equal(t, end)  # (n, T)
        kept = kept & ok[:, None]
        alphas = tf.ragged.boolean_mask(alphas, kept).to_tensor(shape=[None, steps, grid_h, grid_w])
        outputs = {
            "captions": tf.where(ok, captions, tf.constant("")),
            "scores": tf.where(ok, scores, tf.fill(tf.shape(scores), float("-inf"))),
            "attention": alphas,
            "lengths": tf.where(ok, lengths, tf.zeros_like(lengths)),
            "errors": errors,
        }
        if domain is not None:  # as the Python API: domain_score (NaN for a bad image) and out_of_domain
            # one zero image more, so an empty batch still runs the backbone (batch norm refuses 0 rows)
            extra = tf.concat([pixels[:n], tf.zeros([1, height, width, 3], tf.uint8)], 0)
            grid = tf.cast(model.encode(tf.cast(extra, tf.float32)), tf.float32)
            score = _domain_graph(tf, domain, extra, grid)[:n]
            outputs["domain_scores"] = tf.where(ok, score, tf.fill(tf.shape(score), float("nan")))
            outputs["out_of_domain"] = ok & (score > 1.0)
        if n_best > 1:
            texts, _, _ = ids_to_text_graph(tf.reshape(all_words, [-1, steps]), tokens)
            texts = tf.reshape(texts, [-1, n_best])  # (n, n_best)
            outputs["all_captions"] = tf.where(ok[:, None], texts, tf.constant(""))
            outputs["all_scores"] = tf.where(ok[:, None], all_scores, tf.fill(tf.shape(all_scores), float("-inf")))
        return outputs

    module = tf.Module()
    module.model_variables = list(model.variables)
    module.serve = tf.function(serve, input_signature=[tf.TensorSpec([None], tf.string, name="images")],
                               autograph=False)
    info = {"task": "caption", "image_size": [height, width], "resize_policy": policy,
            "beam_width": int(beam_width), "max_length": steps, "length_penalty": float(length_penalty), **search_flags,
            "grid": [grid_h, grid_w], "backbone": model.backbone_name}
    return _without_local_paths(save_module(module, module.serve, out_dir, info, _folder_files(loaded.directory)))


def _domain_graph(tf, stats, pixels, grid):
    """captioner.domain in the graph: pixels (n, h, w, 3) uint8 and the backbone grid (n, P, C) -> domain scores
    (n,) float32, as DomainStats.score computes them (pixel_statistics: colour histogram with 4 bins a channel,
    gradient-magnitude histogram; pool_grid: mean and deviation over cells; each block's Mahalanobis distance in
    its unit, the largest over the threshold)."""
    from captioner.domain import _EDGES
    x = tf.cast(pixels, tf.float32)  # (n, h, w, 3)
    bins = 4
    q = tf.clip_by_value(tf.cast(x * (bins / 256.0), tf.int32), 0, bins - 1)
    index = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]  # (n, h, w)
    count = tf.cast(tf.shape(index)[1] * tf.shape(index)[2], tf.float32)
    colour = tf.reduce_sum(tf.one_hot(index, bins ** 3, dtype=tf.float32), axis=[1, 2]) / count  # (n, 64)
    grey = tf.reduce_mean(x, axis=-1)  # (n, h, w)
    gx = grey[:, :-1, 1:] - grey[:, :-1, :-1]
    gy = grey[:, 1:, :-1] - grey[:, :-1, :-1]
    magnitude = tf.sqrt(gx * gx + gy * gy)  # (n, h-1, w-1)
    bucket = tf.raw_ops.Bucketize(input=magnitude, boundaries=[float(e) for e in _EDGES[1:-1]])
    edges = tf.reduce_sum(tf.one_hot(bucket, len(_EDGES) - 1, dtype=tf.float32), axis=[1, 2])
    edges = edges / tf.maximum(tf.reduce_sum(edges, axis=1, keepdims=True), 1.0)
    features = {"pixels": tf.sqrt(tf.concat([colour, edges], axis=1)),
                "backbone": tf.concat([tf.reduce_mean(grid, axis=1), tf.math.reduce_std(grid, axis=1)], axis=-1)}
    distances = []
    for name, g in stats.blocks.items():
        centred = tf.cast(features[name], tf.float32) - tf.constant(g.mean, tf.float32)
        projected = tf.matmul(centred, tf.constant(g.whiten.T, tf.float32))
        distances.append(tf.sqrt(tf.reduce_sum(projected * projected, axis=-1)) / float(g.scale))
    return tf.reduce_max(tf.stack(distances, axis=0), axis=0) / float(stats.threshold)  # (n,)


def _folder_files(directory) -> dict[str, str]:
    """The model folder's small files, copied into the SavedModel's assets.extra/ for reference."""
    if not directory:
        return {}
    return {name: os.path.join(directory, name) for name in ("config.json", "vocab.json", "answers.json")}


def _without_local_paths(saved_dir: str) -> str:
    """The copied config.json names the training data by its full local path ("data"); an exported model travels,
    so only the file or folder name is kept."""
    path = os.path.join(saved_dir, "assets.extra", "config.json")
    if os.path.isfile(path):
        with open(path) as f:
            config = json.load(f)
        if isinstance(config.get("data"), str) and os.path.isabs(config["data"]):
            config["data"] = os.path.basename(os.path.normpath(config["data"]))
            with open(path, "w") as f:
                json.dump(config, f, indent=2)
    return saved_dir


# ================================================================================================ VQA


def export_vqa(out_dir, model_dir) -> str:
    """Writes a SavedModel: (image bytes, question text) -> answers, as `captioner ask` / vqa.answer_questions.

    Signature `serving_default`:
        inputs:  images     tf.string [batch]   file bytes, one image per question (repeat the bytes for several
                                                questions about one image)
                 questions  tf.string [batch]   raw text, tokenized in the graph like lm.text.tokenize, cut to the
                                                folder's max_question_length; an empty question is one `<unk>`
        outputs: answers    tf.string [batch]   "" for an image that could not be read
                 scores     float32  [batch]    softmax probability of the answer, 0 for a bad image
                 attention  float32  [batch, H, W]  the last hop's attention over the grid
                 errors     tf.string [batch]   "" or a one-line reason
                 domain_scores float32 [batch], out_of_domain bool [batch]: as the Python API (captioner.domain);
                            only when the folder has domain.npz

    Args:
        out_dir: folder to write (created; an existing SavedModel there is replaced).
        model_dir: a VQA model folder (captioner.vqa.train_vqa); None = the bundled one.

    Returns:
        out_dir as an absolute path.

    Example:
        >>> export_vqa("exported/vqa", "runs/vqa")
        '/.../exported/vqa'
    """
    kwargs = dict(out_dir=os.fspath(out_dir), model_dir=None if model_dir is None else os.fspath(model_dir))
    if run_with_tensorflow_backend(__name__, "export_vqa", kwargs):
        return os.path.abspath(os.fspath(out_dir))
    tf = _tf()
    from captioner.model import load_model_dir
    from captioner.vqa import MAX_QUESTION_LENGTH
    loaded = load_model_dir(model_dir, task="vqa")
    if not loaded.answers:
        raise UserError(f"{loaded.directory}: answers.json is missing or empty")
    model, vocab = loaded.model, loaded.vocab
    height, width = loaded.image_size
    policy = loaded.resize_policy
    grid_h, grid_w, _ = model.grid
    max_words = int(loaded.config.get("max_question_length", MAX_QUESTION_LENGTH))
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(vocab.itos), tf.range(len(vocab), dtype=tf.int32)),
        default_value=vocab.unk_id)
    answers = tf.constant(list(loaded.answers))
    from captioner.domain import load_domain
    domain = load_domain(loaded.directory) if model.backbone is not None else None

    def serve(images, questions):
        tf.debugging.assert_equal(tf.shape(images), tf.shape(questions),
                                  message="images and questions must have the same length (one image per question)")
        pixels, status, errors = decode_and_resize_graph(images, (height, width), policy)
        ids = table.lookup(tokenize_graph(questions)[:, :max_words])  # ragged (batch, None)
        lengths = ids.row_lengths()
        dense = ids.to_tensor(default_value=0, shape=tf.stack([tf.size(lengths, out_type=tf.int64),
                                                               tf.maximum(tf.reduce_max(tf.concat(
                                                                   [lengths, tf.zeros([1], tf.int64)], 0)), 1)]))
        first = tf.where(tf.equal(lengths, 0), tf.fill(tf.shape(lengths), vocab.unk_id), dense[:, 0])
        dense = tf.concat([first[:, None], dense[:, 1:]], 1)  # (batch, T): an empty question is one <unk>
        def run():
            logits, alpha = model((tf.cast(pixels, tf.float32), dense), training=False, return_attention=True)
            return tf.cast(logits, tf.float32), tf.reshape(tf.cast(alpha, tf.float32), [-1, grid_h * grid_w])

        def nothing():
            return tf.zeros([0, len(loaded.answers)], tf.float32), tf.zeros([0, grid_h * grid_w], tf.float32)

        # An empty batch gives empty outputs: the backbone's batch norm refuses 0 rows, so the model is not called.
        logits, alpha = tf.cond(tf.size(images) > 0, run, nothing)  # (batch, K), (batch, pixels)
        probs = tf.nn.softmax(logits, axis=-1)  # (batch, K)
        best = tf.argmax(probs, axis=-1, output_type=tf.int32)
        ok = tf.equal(status, _OK)
        out = {
            "answers": tf.where(ok, tf.gather(answers, best), tf.constant("")),
            "scores": tf.where(ok, tf.reduce_max(probs, axis=-1), tf.zeros_like(probs[:, 0])),
            "attention": tf.reshape(alpha, [-1, grid_h, grid_w])
            * tf.cast(ok, tf.float32)[:, None, None],
            "errors": errors,
        }
        if domain is not None:  # as the Python API: domain_score (NaN for a bad image) and out_of_domain
            n = tf.shape(pixels)[0]  # one zero image more: an empty batch still runs the backbone
            extra = tf.concat([pixels, tf.zeros([1, height, width, 3], tf.uint8)], 0)
            grid = tf.cast(model.backbone(tf.cast(extra, tf.float32), training=False), tf.float32)
            score = _domain_graph(tf, domain, extra, grid)[:n]
            out["domain_scores"] = tf.where(ok, score, tf.fill(tf.shape(score), float("nan")))
            out["out_of_domain"] = ok & (score > 1.0)
        return out

    module = tf.Module()
    module.model_variables = list(model.variables)
    module.vocab_table = table
    module.serve = tf.function(serve, input_signature=[tf.TensorSpec([None], tf.string, name="images"),
                                                       tf.TensorSpec([None], tf.string, name="questions")],
                               autograph=False)
    info = {"task": "vqa", "image_size": [height, width], "resize_policy": policy, "grid": [grid_h, grid_w],
            "max_question_length": max_words, "answers": len(loaded.answers), "mode": model.mode}
    return _without_local_paths(save_module(module, module.serve, out_dir, info, _folder_files(loaded.directory)))
