"""captioner.images: decoding any colour mode to RGB, EXIF orientation, clear one-line errors, resizing, batches."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from captioner.images import ImageError, MAX_PIXELS, decode_image, load_images, resize_image
from lm.errors import UserError


def _encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds no pixel data (enough for Pillow to open lazily)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _assert_one_line(err: pytest.ExceptionInfo, *fragments: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    for fragment in fragments:
        assert fragment in msg, msg
    assert isinstance(err.value, UserError)
    return msg


# ---------------------------------------------------------------------------------------------------- colour modes


def test_rgb_roundtrip_exact():
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = decode_image(_encode(Image.fromarray(pixels, "RGB")))
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, pixels)


def test_grey_modes_L_1_I16_I_F():
    gray = np.array([[0, 64], [128, 255]], np.uint8)
    out = decode_image(_encode(Image.fromarray(gray, "L")))
    np.testing.assert_array_equal(out, np.repeat(gray[:, :, None], 3, axis=2))

    bits = Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("1")
    out = decode_image(_encode(bits))
    np.testing.assert_array_equal(out[:, :, 0], [[0, 255], [255, 0]])

    # 16-bit grey (PNG keeps I;16): scaled by 255/65535, not clipped.
    deep = np.array([[0, 257 * 100], [65535, 257 * 10]], np.uint16)
    im16 = Image.fromarray(deep)
    assert im16.mode == "I;16"
    out = decode_image(_encode(im16))
    np.testing.assert_array_equal(out[:, :, 1], [[0, 100], [255, 10]])

    # 32-bit int grey ("I", via TIFF): values above 255 mean 16-bit data.
    out = decode_image(_encode(Image.fromarray(deep.astype(np.int32), "I"), "TIFF"))
    np.testing.assert_array_equal(out[:, :, 2], [[0, 100], [255, 10]])
    out = decode_image(_encode(Image.fromarray(np.array([[3, 200]], np.int32), "I"), "TIFF"))
    np.testing.assert_array_equal(out[:, :, 0], [[3, 200]])

    # float grey ("F", via TIFF): 0..1 is scaled to 0..255.
    out = decode_image(_encode(Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F"), "TIFF"))
    np.testing.assert_array_equal(out[:, :, 0], [[0, 128, 255]])


def test_alpha_modes_composite_on_white():
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (255, 0, 0, 255))  # opaque red stays red
    rgba.putpixel((1, 0), (0, 0, 255, 0))  # fully transparent -> white
    out = decode_image(_encode(rgba))
    np.testing.assert_array_equal(out[0], [[255, 0, 0], [255, 255, 255]])

    half = Image.new("RGBA", (1, 1), (0, 0, 0, 128))  # half-transparent black -> mid grey
    assert abs(int(decode_image(_encode(half))[0, 0, 0]) - 127) <= 1

    la = Image.new("LA", (1, 1), (0, 0))  # transparent black grey+alpha -> white
    np.testing.assert_array_equal(decode_image(_encode(la))[0, 0], [255, 255, 255])


def test_palette_with_transparency_and_cmyk():
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 1  # index 1 (green) is transparent
    data = _encode(pal, "PNG", transparency=1)
    assert Image.open(io.BytesIO(data)).mode == "P"
    np.testing.assert_array_equal(decode_image(data)[0], [[255, 0, 0], [255, 255, 255]])

    gif = _encode(pal, "GIF", transparency=1)
    np.testing.assert_array_equal(decode_image(gif)[0], [[255, 0, 0], [255, 255, 255]])

    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))  # pure red in CMYK
    np.testing.assert_array_equal(decode_image(_encode(cmyk, "TIFF"))[0, 0], [255, 0, 0])


def test_exif_orientation_is_applied(tmp_path):
    # 4 wide x 2 tall: left half black, right half white. Orientation 6 = "rotate 90 clockwise to display".
    pixels = np.zeros((16, 32, 3), np.uint8)
    pixels[:, 16:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, "JPEG", exif=exif.tobytes(), quality=95)
    out = decode_image(path)
    assert out.shape == (32, 16, 3)  # width and height swapped
    # After a clockwise turn the old left (black) half is on top, the white half at the bottom.
    assert out[:12].mean() < 30 and out[20:].mean() > 225
    # Without the tag nothing turns.
    assert decode_image(_encode(Image.fromarray(pixels), "JPEG")).shape == (16, 32, 3)


# ---------------------------------------------------------------------------------------------------- bad input


def test_missing_empty_text_and_directory(tmp_path):
    with pytest.raises(ImageError) as err:
        decode_image(tmp_path / "nope.jpg")
    assert _assert_one_line(err, "no such file").startswith(str(tmp_path / "nope.jpg"))

    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError) as err:
        decode_image(str(empty))
    assert _assert_one_line(err, "empty").startswith(str(empty))

    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture\n")
    with pytest.raises(ImageError) as err:
        decode_image(text)
    assert _assert_one_line(err, "not an image").startswith(str(text))

    with pytest.raises(ImageError) as err:
        decode_image(tmp_path)
    _assert_one_line(err, "directory")

    with pytest.raises(ImageError) as err:
        decode_image(12345)
    _assert_one_line(err, "int")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_an_error_even_with_load_truncated_images(tmp_path, monkeypatch, fmt):
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(noise), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # someone else's global setting
    with pytest.raises(ImageError) as err:
        decode_image(path)
    assert _assert_one_line(err, "truncated").startswith(str(path))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_zero_size_image():
    with pytest.raises(ImageError) as err:
        decode_image(_png_header_only(0, 5))
    _assert_one_line(err, "zero width or height")
    with pytest.raises(ImageError) as err:
        resize_image(np.zeros((0, 4, 3), np.uint8), 8)
    _assert_one_line(err, "zero width or height")


def test_decompression_bomb():
    # 20000 x 20000 = 400 MP: above our 64 MP limit and above Pillow's own error threshold; our check (one line,
    # naming --max-pixels) speaks, not Pillow's, and a raised max_pixels lets it through to decoding (which then
    # finds only a header).
    with pytest.raises(ImageError) as err:
        decode_image(_png_header_only(20000, 20000))
    _assert_one_line(err, "pixel limit", "--max-pixels")
    with pytest.raises(ImageError) as err:
        decode_image(_png_header_only(20000, 20000), max_pixels=500_000_000)
    assert "limit" not in str(err.value) and ("truncated" in str(err.value) or "corrupt" in str(err.value))
    # 9000 x 9000 = 81 MP: Pillow alone would accept it; our limit refuses it before decoding.
    with pytest.raises(ImageError) as err:
        decode_image(_png_header_only(9000, 9000))
    _assert_one_line(err, "pixel limit", "decompression bomb")
    assert 9000 * 9000 > MAX_PIXELS
    # The limit is adjustable per call.
    with pytest.raises(ImageError):
        decode_image(_encode(Image.new("RGB", (40, 30))), max_pixels=1000)


# ---------------------------------------------------------------------------------------------------- resize + batch


def test_resize_policies():
    wide = np.zeros((40, 80, 3), np.uint8)
    wide[:, :16] = 255  # white strip on the left fifth
    stretched = resize_image(wide, (20, 20), "stretch")
    assert stretched.shape == (20, 20, 3) and stretched.dtype == np.uint8
    assert stretched[:, :2].min() > 200  # the strip survives, squeezed
    cropped = resize_image(wide, (20, 20), "center_crop")
    assert cropped.max() == 0  # the strip is cut away (the crop keeps columns 20..60)
    padded = resize_image(wide, 20, "pad")
    assert padded.shape == (20, 20, 3)
    assert padded[:3].max() == 0 and padded[-3:].max() == 0  # black borders top and bottom
    assert padded[8:12, :2].min() > 200
    np.testing.assert_array_equal(resize_image(wide, (40, 80)), wide)  # no-op at the same size
    with pytest.raises(UserError):
        resize_image(wide, (20, 20), "squash")


def test_load_images_with_one_corrupt_item(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (30, 20), (10, 200, 30)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    images, errors = load_images([good, bad, _encode(Image.new("L", (5, 5), 77)), np.full((3, 3, 3), 9)], (16, 24))
    assert images.shape == (4, 16, 24, 3) and images.dtype == np.float32
    assert errors[0] is None and errors[2] is None and errors[3] is None
    assert errors[1].startswith(str(bad)) and "\n" not in errors[1]
    np.testing.assert_allclose(images[0, 8, 12], [10, 200, 30], atol=1)
    assert images[1].max() == 0  # zero image for the bad one
    np.testing.assert_allclose(images[2], 77, atol=1)
    np.testing.assert_allclose(images[3], 9)
    empty, errs = load_images([], 8)
    assert empty.shape == (0, 8, 8, 3) and errs == []


def test_load_images_fast_jpeg_path_matches_full_decode():
    # load_images lets the JPEG decoder downscale big photos (draft mode); the result stays close to a full decode.
    yy, xx = np.mgrid[0:600, 0:800]
    photo = np.stack([xx * 255 // 800, yy * 255 // 600, (xx + yy) * 255 // 1400], axis=-1).astype(np.uint8)
    data = _encode(Image.fromarray(photo), "JPEG", quality=95)
    fast, errors = load_images([data], (48, 64), "center_crop")
    full = resize_image(decode_image(data), (48, 64), "center_crop").astype(np.float32)
    assert errors == [None]
    assert np.abs(fast[0] - full).mean() < 2.0
