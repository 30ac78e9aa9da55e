"""What a caption of a synthetic scene (captioner.scenes) gets wrong, read against the scene's objects.

Two checks the caption benchmark reports (scripts/bench_captioner_scenes.py):
  * invented object: on a scene with one object, the caption speaks of more than one (a second colour-shape, a
    relation, "shapes", "and ...");
  * relation error: the caption relates two objects of the scene ("X above Y", "Y and X above it") and the scene's
    geometry (captioner.scenes.relation) says otherwise. Captions that name an object the scene does not have, or
    a pair whose relation is not clear-cut, are not counted either way.

Example:
    >>> objs = [{"shape": "circle", "color": "red", "size": "large", "center": [32, 12]},
    ...         {"shape": "cross", "color": "blue", "size": "small", "center": [32, 50]}]
    >>> caption_errors("a large red circle below a small blue cross", objs)
    {'invented': None, 'relation_error': True}
"""

from __future__ import annotations

from captioner.scenes import COLORS, PLURALS, RELATIONS, SHAPES, SceneObject, relation

_HALF = {"small": 0.22 * 64 / 2, "large": 0.36 * 64 / 2}  # only used when an object has no bbox


def _objects(objects: list[dict]) -> list[SceneObject]:
    out = []
    for o in objects:
        cx, cy = o["center"]
        half = (o["bbox"][2] - o["bbox"][0]) / 2 if "bbox" in o else _HALF[o["size"]]
        out.append(SceneObject(o["shape"], o["color"], o["size"], float(cx), float(cy), float(half)))
    return out


def _mentions(words: list[str]) -> list[tuple[int, str, str]]:
    """(position, colour, shape) of every "colour shape" phrase, in order."""
    return [(i, words[i - 1], w) for i, w in enumerate(words) if w in SHAPES and i > 0 and words[i - 1] in COLORS]


def _relation_at(words: list[str]) -> tuple[int, str, int] | None:
    """(first word position, relation, words it spans) of the first relation phrase."""
    for i, w in enumerate(words):
        for rel in RELATIONS:
            parts = rel.split()
            if words[i: i + len(parts)] == parts:
                return i, rel, len(parts)
    return None


def caption_errors(caption: str, objects: list[dict]) -> dict:
    """-> {"invented": bool for a one-object scene else None, "relation_error": bool, or None when the caption
    states no checkable relation}."""
    words = caption.split()
    mentions = _mentions(words)
    found = _relation_at(words)
    invented = None
    if len(objects) == 1:
        shapes = sum(w in SHAPES or w in PLURALS.values() or w == "shape" for w in words)
        invented = bool(len(mentions) > 1 or shapes > 1 or found is not None or "and" in words)
    if found is None or len(mentions) < 2:
        return {"invented": invented, "relation_error": None}
    at, rel, span = found
    before = [m for m in mentions if m[0] < at]
    after = [m for m in mentions if m[0] >= at + span]
    if words[at + span: at + span + 1] == ["it"] and len(before) >= 2:  # "Y and X above it": X above Y
        subject, other = before[-1], before[-2]
    elif before and after:  # "X above Y"
        subject, other = before[-1], after[0]
    else:
        return {"invented": invented, "relation_error": None}
    scene = {(o.color, o.shape): o for o in _objects(objects)}
    a, b = scene.get(subject[1:]), scene.get(other[1:])
    if a is None or b is None:
        return {"invented": invented, "relation_error": None}
    truth = relation(a, b)
    return {"invented": invented, "relation_error": None if truth is None else truth != rel}
