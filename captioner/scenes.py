"""Synthetic scenes: small procedural images with captions and question/answer pairs that need attention.

Each 64x64 image (any `image_size` >= 32 works; objects scale with it) holds 1-4 non-overlapping objects on a mildly
textured, noisy background. An object is a shape (circle, square, triangle, diamond, cross), a colour (red, green,
blue, yellow, purple, white) and a size (small, large). No two objects in one image share a colour-shape pair, so
"the blue square" always names exactly one object.

Captions describe a *pair* of objects and how they are placed, so a captioner has to look at two places and bind
colour and shape to each:

  * 1 object:    "a large green triangle"
  * 2 objects:   "a large blue square below a small red circle"
                 (the large one first; equal sizes: the one above, or else the one on the left, first)
  * 3-4 objects: exactly two are large and those two are described, upper (or left) one first, plus the rest:
                 "a large red circle above a large blue square and two small shapes"

The relation of the described pair is always clear: the centres are apart along one axis by at least twice their
offset along the other, and the objects do not overlap along that axis. Every image has the canonical caption
first, then three paraphrases (the pair swapped with the inverse relation, "there is/are ...", a count phrasing),
so references say the same thing in different words.

Questions (6-8 an image; answers depend on the image only; yes and no exactly balanced in every image):
  color    "what color is the circle"                  -> "red"
  shape    "what shape is the red object"              -> "circle"
  count    "how many objects are there", "how many squares are there", "how many blue objects are there" -> "2"
           (digits, as VQA normalisation maps "two" to "2")
  relation "what shape is above the blue square", "what color is the object left of the red circle"
           (asked only when exactly one object is in that direction and no other is arguably so)
  exist    "is there a red triangle"                   -> "yes" / "no"
  relation yes/no "is the red circle above the blue square" -> "yes" / "no" (the pair swapped)

Splits: "train", "val", "test" (same distribution, 80/10/10 of what is not novel) and "novel": every novel image
has at least one described object whose colour-shape pair (one of `HELD_OUT`) never appears in any other split,
in an image, a caption or a question. It measures compositional generalisation.

Everything comes from `numpy.random.default_rng([seed, index])` (per image) and a split permutation from the seed,
so the same arguments write byte-identical files.

Writes:
  OUT_DIR/images/00001.png ...
  OUT_DIR/dataset_scenes.json   Karpathy format ({"dataset": "scenes", "images": [...]}), with an extra "objects"
                                list per image (shape, color, size, center, bbox) for checks and debugging
  OUT_DIR/vqa.jsonl             {"image": "images/00001.png", "question", "answer", "answer_type",
                                 "question_type", "split", "question_id"}

Example:
    >>> summary = generate_scenes("/tmp/scenes", n_images=200, seed=0)
    >>> summary["splits"]
    {'train': 144, 'val': 18, 'test': 18, 'novel': 20}
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from lm.errors import UserError

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds",
           "cross": "crosses"}
COLORS = {  # name -> RGB; far apart in hue or brightness, and all of them stand out on the dark-to-mid backgrounds
    "red": (225, 40, 40),
    "green": (40, 190, 60),
    "blue": (45, 105, 245),
    "yellow": (245, 220, 40),
    "purple": (165, 65, 220),
    "white": (245, 245, 245),
}
SIZES = ("small", "large")
# Colour-shape pairs that appear only in split "novel". Every colour and every shape still appears in training.
HELD_OUT = (("red", "triangle"), ("blue", "circle"), ("green", "diamond"), ("yellow", "square"))
SPLITS = ("train", "val", "test", "novel")
RELATIONS = ("above", "below", "left of", "right of")
INVERSE = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}

_ALL_COMBOS = [(c, s) for c in COLORS for s in SHAPES]
_TRAIN_COMBOS = [cs for cs in _ALL_COMBOS if cs not in HELD_OUT]
_N_OBJECTS_P = (0.15, 0.35, 0.25, 0.25)  # probability of 1, 2, 3, 4 objects
_SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down: smooth edges


@dataclass
class SceneObject:
    shape: str
    color: str
    size: str
    cx: float  # centre, pixels
    cy: float
    half: float  # half the side of the bounding box, pixels

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        return (self.cx - self.half, self.cy - self.half, self.cx + self.half, self.cy + self.half)

    @property
    def name(self) -> str:
        return f"{self.size} {self.color} {self.shape}"

    def to_json(self) -> dict:
        return {"shape": self.shape, "color": self.color, "size": self.size,
                "center": [round(self.cx, 2), round(self.cy, 2)], "bbox": [round(v, 2) for v in self.bbox]}


def relation(a: SceneObject, b: SceneObject) -> str | None:
    """Where `a` is relative to `b`: "above" | "below" | "left of" | "right of", or None when not clear-cut.

    Clear-cut means the centres differ along one axis by at least twice the difference along the other (the
    direction is within about 27 degrees of the axis), and the two bounding boxes are at least two pixels apart
    along that axis.
    """
    dx, dy = a.cx - b.cx, a.cy - b.cy
    reach = a.half + b.half
    if abs(dy) >= 2 * abs(dx) and abs(dy) - reach >= 2:
        return "above" if dy < 0 else "below"
    if abs(dx) >= 2 * abs(dy) and abs(dx) - reach >= 2:
        return "left of" if dx < 0 else "right of"
    return None


def _in_half_plane(y: SceneObject, ref: SceneObject, rel: str) -> bool:
    """Whether `y`'s centre is on the `rel` side of `ref`'s centre (loosely "could be called rel")."""
    return {"above": y.cy < ref.cy, "below": y.cy > ref.cy, "left of": y.cx < ref.cx, "right of": y.cx > ref.cx}[rel]


# ---- layout ---------------------------------------------------------------------------------------------------------
def _object_halves(image_size: int) -> dict[str, float]:
    return {"small": round(0.22 * image_size) / 2, "large": round(0.36 * image_size) / 2}


def _caption_pair(objs: list[SceneObject]) -> tuple[int, int] | None:
    """Indices (first, second) of the described pair in caption order, or None for a single object."""
    if len(objs) == 1:
        return None
    if len(objs) == 2:
        a, b = objs
        if a.size != b.size:
            return (0, 1) if a.size == "large" else (1, 0)
        cand = (0, 1)
    else:
        large = [i for i, o in enumerate(objs) if o.size == "large"]
        cand = (large[0], large[1])
    i, j = cand
    rel = relation(objs[i], objs[j])
    if rel is None:
        return cand  # rejected by the caller
    return (i, j) if rel in ("above", "left of") else (j, i)


def _layout(rng: np.random.Generator, n: int, image_size: int, novel: bool) -> list[SceneObject]:
    halves = _object_halves(image_size)
    margin, gap = 2.0, 3.0
    for _ in range(100):  # resample everything if the placement below keeps failing (rare)
        if n == 1:
            sizes = [str(rng.choice(SIZES))]
        elif n == 2:
            sizes = [str(rng.choice(SIZES)) for _ in range(2)]
        else:
            sizes = ["large", "large"] + ["small"] * (n - 2)
            sizes = [sizes[k] for k in rng.permutation(n)]
        combos = [_TRAIN_COMBOS[k] for k in rng.choice(len(_TRAIN_COMBOS), size=n, replace=False)]
        objs = []
        for size, (color, shape) in zip(sizes, combos):
            objs.append(SceneObject(shape=shape, color=color, size=size, cx=0.0, cy=0.0, half=halves[size]))
        for _ in range(200):
            for o in objs:
                lo, hi = margin + o.half, image_size - margin - o.half
                o.cx, o.cy = float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
            ok = all(
                max(abs(a.cx - b.cx), abs(a.cy - b.cy)) - (a.half + b.half) >= gap
                for k, a in enumerate(objs) for b in objs[k + 1:]
            )
            if ok and n >= 2:
                i, j = _caption_pair(objs)
                ok = relation(objs[i], objs[j]) is not None
            if ok:
                break
        else:
            continue
        if novel:  # one described object gets a held-out colour-shape pair
            pair = _caption_pair(objs)
            k = 0 if pair is None else pair[int(rng.integers(2))]
            used = {(o.color, o.shape) for m, o in enumerate(objs) if m != k}
            choices = [cs for cs in HELD_OUT if cs not in used]
            objs[k].color, objs[k].shape = choices[int(rng.integers(len(choices)))]
        return objs
    raise RuntimeError(f"could not place {n} objects on a {image_size}x{image_size} image")  # pragma: no cover


# ---- drawing -------------------------------------------------------------------------------------------------------
def _background(rng: np.random.Generator, s: int) -> np.ndarray:
    base = rng.uniform(45, 105) + rng.normal(0, 7, size=3)  # dark-to-mid, slightly tinted grey
    kind = int(rng.integers(3))
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    if kind == 0:  # smooth blotches: coarse noise, bilinearly upsampled
        coarse = rng.normal(0, 1, size=(6, 6)).astype(np.float32)
        tex = np.asarray(Image.fromarray(coarse, mode="F").resize((s, s), Image.BILINEAR))
    elif kind == 1:  # soft stripes at a random angle
        angle, freq = rng.uniform(0, math.pi), rng.uniform(3, 7)
        tex = np.sin(2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle)))
    else:  # a gentle gradient
        angle = rng.uniform(0, 2 * math.pi)
        tex = 2 * ((xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle))
    amp = rng.uniform(6, 13)
    img = base[None, None, :] + amp * tex[..., None] + rng.normal(0, 4, size=(s, s, 3))
    return img.astype(np.float32)


def _mask(o: SceneObject, s: int) -> np.ndarray:
    k = _SUPERSAMPLE
    m = Image.new("L", (s * k, s * k), 0)
    d = ImageDraw.Draw(m)
    cx, cy, h = o.cx * k, o.cy * k, o.half * k
    if o.shape == "circle":
        d.ellipse([cx - h, cy - h, cx + h, cy + h], fill=255)
    elif o.shape == "square":
        q = 0.88 * h  # a little inset so a square does not look much bigger than a circle
        d.rectangle([cx - q, cy - q, cx + q, cy + q], fill=255)
    elif o.shape == "triangle":
        d.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=255)
    elif o.shape == "diamond":
        d.polygon([(cx, cy - h), (cx + h, cy), (cx, cy + h), (cx - h, cy)], fill=255)
    elif o.shape == "cross":
        w = 0.36 * h
        d.rectangle([cx - h, cy - w, cx + h, cy + w], fill=255)
        d.rectangle([cx - w, cy - h, cx + w, cy + h], fill=255)
    else:  # pragma: no cover
        raise ValueError(o.shape)
    m = m.resize((s, s), Image.BOX)
    return np.asarray(m, dtype=np.float32)[..., None] / 255.0


def render_scene(objs: list[SceneObject], rng: np.random.Generator, image_size: int) -> Image.Image:
    """Draws objects (with their colour jittered a little) on a fresh random background."""
    img = _background(rng, image_size)
    for o in objs:
        color = np.array(COLORS[o.color], np.float32) + rng.uniform(-12, 12, size=3)
        fill = color[None, None, :] + rng.normal(0, 3, size=(image_size, image_size, 3))
        a = _mask(o, image_size)
        img = img * (1 - a) + fill * a
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), mode="RGB")


# ---- language ------------------------------------------------------------------------------------------------------
def scene_captions(objs: list[SceneObject]) -> list[str]:
    """The canonical caption first, then three paraphrases. All lower case, no punctuation."""
    if len(objs) == 1:
        d = objs[0].name
        return [f"a {d}", f"there is a {d}", f"one {d}", f"a single {d}"]
    i, j = _caption_pair(objs)
    a, b = objs[i], objs[j]
    rel = relation(a, b)
    inv = INVERSE[rel]
    if len(objs) == 2:
        return [f"a {a.name} {rel} a {b.name}", f"a {b.name} {inv} a {a.name}",
                f"there is a {a.name} {rel} a {b.name}", f"a {b.name} and a {a.name} {rel} it"]
    rest = len(objs) - 2
    tail = "one small shape" if rest == 1 else f"{NUMBER_WORDS[rest]} small shapes"
    return [f"a {a.name} {rel} a {b.name} and {tail}", f"a {b.name} {inv} a {a.name} and {tail}",
            f"{NUMBER_WORDS[len(objs)]} shapes including a {a.name} {rel} a {b.name}",
            f"{tail} and a {a.name} {rel} a {b.name}"]


def _unique_phrase(objs: list[SceneObject], k: int, attrs_options) -> str | None:
    """The first attribute combination that names objs[k] alone, as a noun phrase without article, or None."""
    o = objs[k]
    for attrs in attrs_options:
        matches = [p for p in objs if all(getattr(p, a) == getattr(o, a) for a in attrs)]
        if len(matches) == 1:
            words = [getattr(o, a) for a in attrs]
            return " ".join(words) if "shape" in attrs else " ".join(words + ["object"])
    return None


def _qa(question: str, answer: str, qtype: str) -> dict:
    atype = "yes/no" if answer in ("yes", "no") else "number" if answer.isdigit() else "other"
    return {"question": question, "answer": answer, "answer_type": atype, "question_type": qtype}


def scene_questions(objs: list[SceneObject], rng: np.random.Generator, novel: bool = False) -> list[dict]:
    """6-8 question/answer dicts for one scene; yes and no are balanced within the scene."""
    n = len(objs)
    present = {(o.color, o.shape) for o in objs}
    # Outside "novel", never mention a held-out pair, not even in a "no" question.
    askable = _ALL_COMBOS if novel else _TRAIN_COMBOS
    out = [_qa("how many objects are there", str(n), "count")]

    # count of a shape or a colour (present ones more often; zero answers too)
    if rng.random() < 0.5:
        shape = objs[int(rng.integers(n))].shape if rng.random() < 0.6 else str(rng.choice(SHAPES))
        out.append(_qa(f"how many {PLURALS[shape]} are there", str(sum(o.shape == shape for o in objs)), "count"))
    else:
        color = objs[int(rng.integers(n))].color if rng.random() < 0.6 else str(rng.choice(list(COLORS)))
        out.append(_qa(f"how many {color} objects are there", str(sum(o.color == color for o in objs)), "count"))

    order = [int(k) for k in rng.permutation(n)]
    for k in order:  # colour of an object named without its colour
        phrase = _unique_phrase(objs, k, [("shape",), ("size", "shape")])
        if phrase:
            out.append(_qa(f"what color is the {phrase}", objs[k].color, "color"))
            break
    for k in order[::-1]:  # shape of an object named without its shape
        phrase = _unique_phrase(objs, k, [("color",), ("size", "color")])
        if phrase:
            out.append(_qa(f"what shape is the {phrase}", objs[k].shape, "shape"))
            break

    if n >= 2:  # "what is <rel> the <ref>": exactly one object there, none arguably so
        candidates = []
        for r, ref in enumerate(objs):
            for rel in RELATIONS:
                hits = [o for m, o in enumerate(objs) if m != r and relation(o, ref) == rel]
                if len(hits) != 1:
                    continue
                others = [o for m, o in enumerate(objs) if m != r and o is not hits[0]]
                if all(relation(o, ref) not in (rel, None) or not _in_half_plane(o, ref, rel) for o in others):
                    candidates.append((ref, rel, hits[0]))
        if candidates:
            ref, rel, hit = candidates[int(rng.integers(len(candidates)))]
            if rng.random() < 0.5:
                out.append(_qa(f"what shape is {rel} the {ref.color} {ref.shape}", hit.shape, "relation"))
            else:
                out.append(_qa(f"what color is the object {rel} the {ref.color} {ref.shape}", hit.color, "relation"))

    # existence: one yes, one no. A "no" shares the colour or the shape of something in the image, so it needs binding.
    yes_pool = sorted(present)
    if novel and rng.random() < 0.5:
        yes_pool = [cs for cs in yes_pool if cs in HELD_OUT] or yes_pool
    yc, ys = yes_pool[int(rng.integers(len(yes_pool)))]
    absent = [cs for cs in askable if cs not in present]
    near = [cs for cs in absent if any(cs[0] == o.color or cs[1] == o.shape for o in objs)]
    pool = near if near and rng.random() < 0.75 else absent
    nc, ns = pool[int(rng.integers(len(pool)))]
    exist = [_qa(f"is there a {yc} {ys}", "yes", "exist"), _qa(f"is there a {nc} {ns}", "no", "exist")]

    pair = []
    if n >= 2:  # the described pair's relation, asked both ways round
        i, j = _caption_pair(objs)
        a, b = objs[i], objs[j]
        rel = relation(a, b)
        pair = [_qa(f"is the {a.color} {a.shape} {rel} the {b.color} {b.shape}", "yes", "relation"),
                _qa(f"is the {b.color} {b.shape} {rel} the {a.color} {a.shape}", "no", "relation")]
        if rng.random() < 0.5:
            pair.reverse()
    if rng.random() < 0.5:
        exist.reverse()
    out += exist + pair
    while len(out) > 8:  # drop an open question (never a yes/no one, to keep the balance)
        droppable = [m for m, q in enumerate(out) if q["answer_type"] != "yes/no" and m > 0]
        out.pop(droppable[int(rng.integers(len(droppable)))])
    return out


# ---- the whole dataset ---------------------------------------------------------------------------------------------
def _split_counts(n: int, novel_fraction: float) -> dict[str, int]:
    n_novel = int(round(n * novel_fraction))
    if novel_fraction > 0 and n >= 10:
        n_novel = max(1, n_novel)
    rest = n - n_novel
    n_val = n_test = int(round(rest * 0.1))
    if rest >= 3:
        n_val, n_test = max(1, n_val), max(1, n_test)
    return {"train": rest - n_val - n_test, "val": n_val, "test": n_test, "novel": n_novel}


def generate_scenes(out_dir: str | os.PathLike, n_images: int, seed: int = 0, image_size: int = 64,
                    novel_fraction: float = 0.1) -> dict:
    """Writes a scenes dataset (images, Karpathy JSON, VQA JSONL) and returns a summary.

    Args:
        out_dir: folder to write to (made if missing). Files of an earlier run with the same names are replaced;
            other files are left alone.
        n_images: number of images (all splits together).
        seed: any non-negative integer; the same arguments give byte-identical output.
        image_size: side of the square images in pixels (>= 32); object sizes scale with it.
        novel_fraction: share of images in split "novel" (held-out colour-shape pairs), 0 <= f < 1.

    Returns:
        dict: out_dir, dataset, vqa (paths), images, splits (counts), captions, questions, answer_types (counts),
        caption_vocabulary (sorted words), caption_vocabulary_size, question_vocabulary_size, answers (sorted),
        caption_length {min, mean, max} in tokens, held_out (pairs as "color shape"), seconds.

    Example:
        >>> s = generate_scenes("/tmp/scenes", 100, seed=1)
        >>> s["images"], s["caption_length"]["max"] <= 16
        (100, True)
    """
    start = time.perf_counter()
    if isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)) or n_images < 1:
        raise UserError(f"--images must be a positive whole number (got {n_images!r})")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"--seed must be a non-negative whole number (got {seed!r})")
    if not isinstance(image_size, (int, np.integer)) or image_size < 32:
        raise UserError(f"--image-size must be a whole number of at least 32 pixels (got {image_size!r})")
    if not 0 <= novel_fraction < 1:
        raise UserError(f"novel_fraction must be in [0, 1) (got {novel_fraction!r})")
    n_images, seed, image_size = int(n_images), int(seed), int(image_size)
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"{out_dir}: exists and is not a folder")
    image_dir = os.path.join(out_dir, "images")
    try:
        os.makedirs(image_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out_dir}: cannot create the folder ({e.strerror})") from None

    counts = _split_counts(n_images, novel_fraction)
    splits = [name for name in SPLITS for _ in range(counts[name])]
    splits = [splits[k] for k in np.random.default_rng(seed).permutation(n_images)]
    width = max(5, len(str(n_images)))

    images, vqa_lines = [], []
    sentid = 0
    for i, split in enumerate(splits):
        rng = np.random.default_rng([seed, i])
        novel = split == "novel"
        n_obj = int(rng.choice([1, 2, 3, 4], p=_N_OBJECTS_P))
        objs = _layout(rng, n_obj, image_size, novel)
        filename = f"{i + 1:0{width}d}.png"
        render_scene(objs, rng, image_size).save(os.path.join(image_dir, filename), optimize=False)
        sentences = []
        for caption in scene_captions(objs):
            sentences.append({"tokens": caption.split(), "raw": caption, "imgid": i, "sentid": sentid})
            sentid += 1
        images.append({"filepath": "images", "filename": filename, "split": split, "imgid": i,
                       "sentids": [s["sentid"] for s in sentences], "sentences": sentences,
                       "objects": [o.to_json() for o in objs]})
        for qa in scene_questions(objs, rng, novel):
            vqa_lines.append({"image": f"images/{filename}", **qa, "split": split,
                              "question_id": len(vqa_lines)})

    dataset_path = os.path.join(out_dir, "dataset_scenes.json")
    vqa_path = os.path.join(out_dir, "vqa.jsonl")
    with open(dataset_path, "w", encoding="utf-8") as f:
        json.dump({"dataset": "scenes", "images": images}, f)
    with open(vqa_path, "w", encoding="utf-8") as f:
        for line in vqa_lines:
            f.write(json.dumps(line) + "\n")

    caption_words = sorted({t for im in images for s in im["sentences"] for t in s["tokens"]})
    question_words = {t for q in vqa_lines for t in q["question"].split()}
    lengths = [len(s["tokens"]) for im in images for s in im["sentences"]]
    answer_types: dict[str, int] = {}
    for q in vqa_lines:
        answer_types[q["answer_type"]] = answer_types.get(q["answer_type"], 0) + 1
    return {
        "out_dir": out_dir,
        "dataset": dataset_path,
        "vqa": vqa_path,
        "images": n_images,
        "splits": counts,
        "captions": len(lengths),
        "questions": len(vqa_lines),
        "answer_types": answer_types,
        "caption_vocabulary": caption_words,
        "caption_vocabulary_size": len(caption_words),
        "question_vocabulary_size": len(question_words),
        "answers": sorted({q["answer"] for q in vqa_lines}),
        "caption_length": {"min": min(lengths), "mean": round(sum(lengths) / len(lengths), 2), "max": max(lengths)},
        "held_out": [f"{c} {s}" for c, s in HELD_OUT],
        "seconds": round(time.perf_counter() - start, 2),
    }


def scenes_command(out_dir: str | os.PathLike, images: int = 2000, seed: int = 0, image_size: int = 64) -> dict:
    """`captioner scenes OUT_DIR --images N --seed S [--image-size 64]`: generates, prints a short report.

    Returns the summary of `generate_scenes` (the CLI exits 0 after it; bad arguments raise UserError).
    """
    s = generate_scenes(out_dir, images, seed=seed, image_size=image_size)
    splits = ", ".join(f"{k} {v}" for k, v in s["splits"].items())
    print(f"wrote {s['images']} images ({splits}) to {os.path.join(s['out_dir'], 'images')} in {s['seconds']:.1f}s")
    print(f"captions: {s['dataset']} ({s['captions']} sentences, {s['caption_vocabulary_size']} words, "
          f"{s['caption_length']['min']}-{s['caption_length']['max']} tokens)")
    print(f"questions: {s['vqa']} ({s['questions']} questions, {len(s['answers'])} distinct answers)")
    print(f"held-out colour-shape pairs (split 'novel' only): {', '.join(s['held_out'])}")
    return s
