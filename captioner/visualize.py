"""Pictures of where the model looked: the image, then one panel per word with its attention map (Pillow only).

What makes them readable (the lessons of sgrvinod's tutorial and of a first try on real photos):
- the image keeps its aspect ratio (panels are as wide as `_PANEL`, as tall as the image's shape asks);
- the coarse grid (e.g. 8x8) is upsampled smoothly (bicubic, then a Gaussian blur of about half a cell), so the map
  reads as a region, not as blocks;
- under the map the image is desaturated and dimmed, and the map uses a blue-to-yellow colour scale (viridis), so
  it stays visible on red, orange and yellow content; a colour bar on the right says which end is "looked here";
- the words are written large (a scalable font, 18-22 px), each under its panel.

Example:
    >>> attention_grid(pixels, ["a", "red", "circle"], attention).save("caption.png")   # attention (4, 8, 8)
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

_PANEL = 240  # panel width in pixels
_MAX_ASPECT = 2.5  # panels stay between 1:2.5 and 2.5:1 even for panoramas
# viridis at 9 points (matplotlib's values), interpolated: dark blue (low) .. green .. yellow (high)
_VIRIDIS = np.array([[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141], [39, 173, 129],
                     [92, 200, 99], [170, 220, 50], [253, 231, 37]], dtype=np.float64)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except TypeError:  # older Pillow: the small bitmap font
        return ImageFont.load_default()


def _colormap(values: np.ndarray) -> np.ndarray:
    """values in 0..1 (any shape) -> RGB floats 0..255 (shape + (3,)) on the viridis scale."""
    x = np.clip(values, 0.0, 1.0) * (len(_VIRIDIS) - 1)
    low = np.floor(x).astype(int)
    high = np.minimum(low + 1, len(_VIRIDIS) - 1)
    t = (x - low)[..., None]
    return _VIRIDIS[low] * (1 - t) + _VIRIDIS[high] * t


def _panel_size(image: np.ndarray) -> tuple[int, int]:
    h, w = image.shape[:2]
    aspect = min(max(h / max(w, 1), 1 / _MAX_ASPECT), _MAX_ASPECT)
    return _PANEL, int(round(_PANEL * aspect))


def _smooth(alpha: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h', w') attention -> (height, width) in 0..1: normalised to its own maximum, bicubic, then blurred."""
    a = np.asarray(alpha, dtype=np.float64)
    a = a / max(float(a.max()), 1e-12)
    small = Image.fromarray((a * 255).astype(np.uint8), mode="L")
    width, height = size
    up = small.resize((width, height), Image.BICUBIC)
    radius = 0.5 * min(width / a.shape[1], height / a.shape[0])  # about half a grid cell
    up = up.filter(ImageFilter.GaussianBlur(radius))
    out = np.asarray(up, dtype=np.float64) / 255.0
    return out / max(float(out.max()), 1e-12)


def _overlay(base: np.ndarray, alpha: np.ndarray) -> Image.Image:
    """base (H, W, 3) uint8 at panel size, attention (h', w') -> the panel: dimmed grey image under the heat map."""
    height, width = base.shape[:2]
    heat = _smooth(alpha, (width, height))  # (H, W) 0..1
    grey = base.astype(np.float64).mean(axis=-1, keepdims=True)
    backdrop = (0.35 * base + 0.65 * grey) * 0.7  # desaturated and dimmed, so the colours of the map stand out
    weight = (0.2 + 0.65 * heat)[..., None]  # the map everywhere (its low end is dark blue), strongest where looked
    mixed = backdrop * (1 - weight) + _colormap(heat) * weight
    return Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8), mode="RGB")


def _colour_bar(height: int, font) -> Image.Image:
    bar = Image.new("RGB", (70, height), "white")
    ramp = _colormap(np.linspace(1, 0, height - 40))[:, None, :].repeat(16, axis=1)  # top = high
    bar.paste(Image.fromarray(ramp.astype(np.uint8), mode="RGB"), (8, 20))
    draw = ImageDraw.Draw(bar)
    draw.text((28, 14), "most", fill="black", font=font)
    draw.text((28, height - 34), "least", fill="black", font=font)
    return bar


def attention_grid(image: np.ndarray, words: list[str], attention: np.ndarray, title: str | None = None,
                   columns: int = 5) -> Image.Image:
    """The image, then one panel per word with its attention map over the image, a title and a colour bar.

    Args:
        image: (H, W, 3) uint8 RGB, any size (the panels keep its aspect ratio).
        words: the caption's words; an `<eos>` panel is added when attention has one more step.
        attention: (steps, h', w') weights per word.
        title: text above the grid (the caption by default).
        columns: panels per row.
    """
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    attention = np.asarray(attention)
    panel_w, panel_h = _panel_size(image)
    title_font, label_font, small_font = _font(22), _font(18), _font(14)
    labels = list(words) + (["<eos>"] if len(attention) > len(words) else [])
    panels = [("image", None)] + [(w, attention[i]) for i, w in enumerate(labels[: len(attention)])]
    columns = max(1, min(columns, len(panels)))
    rows = (len(panels) + columns - 1) // columns
    label_h, title_h, gap = 28, 40, 6
    grid_h = rows * (panel_h + label_h + gap)
    sheet = Image.new("RGB", (columns * (panel_w + gap) + 70, title_h + grid_h), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((8, 8), title if title is not None else " ".join(words), fill="black", font=title_font)
    base = np.asarray(Image.fromarray(image).resize((panel_w, panel_h), Image.BICUBIC))
    for i, (label, alpha) in enumerate(panels):
        x, y = (i % columns) * (panel_w + gap), title_h + (i // columns) * (panel_h + label_h + gap)
        panel = Image.fromarray(base) if alpha is None else _overlay(base, alpha)
        sheet.paste(panel, (x, y))
        draw.text((x + 4, y + panel_h + 3), label, fill="black", font=label_font)
    sheet.paste(_colour_bar(min(grid_h, max(panel_h, 160)), small_font), (columns * (panel_w + gap), title_h))
    return sheet


def attention_overlay(image: np.ndarray, attention: np.ndarray, label: str = "",
                      panel_label: str = "attention") -> Image.Image:
    """The image beside one attention map (h', w') over it; `label` above (the question and answer, for VQA),
    `panel_label` under the map."""
    return attention_grid(image, [panel_label], np.asarray(attention)[None], title=label, columns=2)
