"""Pictures of where the model looked: one PNG per image with a panel per word (Pillow only)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_PANEL = 160  # pixels per panel side


def _heat(alpha: np.ndarray, size: int) -> Image.Image:
    """(h', w') attention -> a red heat layer (size x size) with alpha channel, smooth-upsampled."""
    a = alpha.astype("float64")
    a = (a - a.min()) / max(a.max() - a.min(), 1e-12)
    small = Image.fromarray((a * 255).astype("uint8"), mode="L")
    up = np.asarray(small.resize((size, size), Image.BICUBIC)).astype("float64") / 255.0
    layer = np.zeros((size, size, 4), "uint8")
    layer[..., 0] = 255
    layer[..., 1] = (80 * (1 - up)).astype("uint8")
    layer[..., 3] = (up * 170).astype("uint8")
    return Image.fromarray(layer, mode="RGBA")


def attention_grid(image: np.ndarray, words: list[str], attention: np.ndarray, title: str | None = None,
                   columns: int = 5) -> Image.Image:
    """The image, then one panel per word with its attention map over the image.

    Args:
        image: (H, W, 3) uint8 RGB.
        words: the caption's words; an `<eos>` panel is added when attention has one more step.
        attention: (steps, h', w') weights per word.
        title: text above the grid (the caption by default).
    """
    font = ImageFont.load_default()
    labels = list(words) + (["<eos>"] if len(attention) > len(words) else [])
    panels = [("image", None)] + [(w, attention[i]) for i, w in enumerate(labels[: len(attention)])]
    rows = (len(panels) + columns - 1) // columns
    label_h, title_h = 16, 22
    sheet = Image.new("RGB", (columns * _PANEL, title_h + rows * (_PANEL + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 5), title if title is not None else " ".join(words), fill="black", font=font)
    base = Image.fromarray(np.asarray(image, "uint8")).convert("RGBA").resize((_PANEL, _PANEL), Image.BICUBIC)
    for i, (label, alpha) in enumerate(panels):
        x, y = (i % columns) * _PANEL, title_h + (i // columns) * (_PANEL + label_h)
        panel = base if alpha is None else Image.alpha_composite(base, _heat(np.asarray(alpha), _PANEL))
        sheet.paste(panel.convert("RGB"), (x, y))
        draw.text((x + 4, y + _PANEL + 2), label, fill="black", font=font)
    return sheet


def attention_overlay(image: np.ndarray, attention: np.ndarray, label: str = "",
                      panel_label: str = "attention") -> Image.Image:
    """The image beside one attention map (h', w') over it; `label` above (the question and answer, for VQA),
    `panel_label` under the map."""
    return attention_grid(image, [panel_label], np.asarray(attention)[None], title=label, columns=2)
