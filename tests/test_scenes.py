"""Synthetic scenes: reproducible, split as promised, and every caption and answer agrees with what was drawn."""

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from captioner import scenes
from captioner.datasets import load_caption_dataset, load_vqa_dataset
from lm.errors import UserError

N = 60
COLORS = "|".join(scenes.COLORS)
SHAPES = "|".join(scenes.SHAPES)
MENTION = re.compile(rf"\b(small|large) ({COLORS}) ({SHAPES})\b")
PAIR = re.compile(rf"\b({COLORS}) ({SHAPES})\b")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes")
    summary = scenes.generate_scenes(out, N, seed=3)
    with open(out / "dataset_scenes.json") as f:
        data = json.load(f)
    with open(out / "vqa.jsonl") as f:
        qas = [json.loads(line) for line in f]
    return out, summary, data, qas


def _direction(a, b):
    """Independent re-check: where a is relative to b, from the stored centres (clear-cut only)."""
    dx, dy = a["center"][0] - b["center"][0], a["center"][1] - b["center"][1]
    if abs(dy) >= 2 * abs(dx):
        return "above" if dy < 0 else "below"
    if abs(dx) >= 2 * abs(dy):
        return "left of" if dx < 0 else "right of"
    return None


def _find(objs, **attrs):
    return [o for o in objs if all(o[k] == v for k, v in attrs.items())]


def test_reproducible_from_seed(generated, tmp_path):
    out, summary, data, _ = generated
    again = scenes.generate_scenes(tmp_path / "again", N, seed=3)
    assert summary["splits"] == again["splits"]
    for name in ("dataset_scenes.json", "vqa.jsonl", "images/00001.png", f"images/{N:05d}.png"):
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    other = scenes.generate_scenes(tmp_path / "other", 5, seed=4)
    assert (tmp_path / "other/images/00001.png").read_bytes() != (out / "images/00001.png").read_bytes()
    assert other["images"] == 5


def test_split_counts_and_files(generated):
    out, summary, data, qas = generated
    assert summary["splits"] == {"train": 44, "val": 5, "test": 5, "novel": 6}
    splits = [im["split"] for im in data["images"]]
    assert {s: splits.count(s) for s in scenes.SPLITS} == summary["splits"]
    assert data["dataset"] == "scenes" and len(data["images"]) == N
    for i, im in enumerate(data["images"]):
        assert im["imgid"] == i and im["filepath"] == "images" and im["filename"] == f"{i + 1:05d}.png"
        assert [s["sentid"] for s in im["sentences"]] == im["sentids"]
        assert all(s["imgid"] == i and s["tokens"] == s["raw"].split() for s in im["sentences"])
        assert 1 <= len(im["objects"]) <= 4 and len(im["sentences"]) == 4
        img = Image.open(out / "images" / im["filename"])
        assert img.size == (64, 64) and img.mode == "RGB"
    assert summary["questions"] == len(qas)
    assert all(os.path.isfile(out / q["image"]) for q in qas)


def test_vocabulary_and_lengths(generated):
    _, summary, data, qas = generated
    assert summary["caption_vocabulary_size"] < 60 and summary["question_vocabulary_size"] < 60
    assert summary["caption_length"]["max"] <= 16
    words = {t for im in data["images"] for s in im["sentences"] for t in s["tokens"]}
    assert words <= set(summary["caption_vocabulary"])


def test_novel_pairs_only_in_novel_split(generated):
    _, _, data, qas = generated
    held = {f"{c} {s}" for c, s in scenes.HELD_OUT}
    for im in data["images"]:
        pairs_drawn = {f"{o['color']} {o['shape']}" for o in im["objects"]}
        pairs_said = {" ".join(m) for s in im["sentences"] for m in PAIR.findall(s["raw"])}
        if im["split"] == "novel":
            canonical = {" ".join(m) for m in PAIR.findall(im["sentences"][0]["raw"])}
            assert canonical & held, im["sentences"][0]["raw"]
        else:
            assert not (pairs_drawn | pairs_said) & held
    for q in qas:
        if q["split"] != "novel":
            assert not {" ".join(m) for m in PAIR.findall(q["question"])} & held, q["question"]


def test_objects_drawn_where_and_how_the_metadata_says(generated):
    out, _, data, _ = generated
    for im in data["images"][:20]:
        pixels = np.asarray(Image.open(out / "images" / im["filename"]), dtype=np.float32)
        boxes = [o["bbox"] for o in im["objects"]]
        for o in im["objects"]:
            x, y = (int(round(v)) for v in o["center"])
            assert np.abs(pixels[y, x] - np.array(scenes.COLORS[o["color"]])).max() < 40, (im["filename"], o)
        for k, a in enumerate(boxes):  # no overlaps
            for b in boxes[k + 1:]:
                assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]


def test_captions_match_the_objects(generated):
    _, _, data, _ = generated
    for im in data["images"]:
        objs, caption = im["objects"], im["sentences"][0]["raw"]
        mentions = MENTION.findall(caption)
        matched = []
        for size, color, shape in mentions:
            found = _find(objs, size=size, color=color, shape=shape)
            assert len(found) == 1, (caption, objs)
            matched.append(found[0])
        if len(objs) == 1:
            assert len(mentions) == 1
            continue
        assert len(mentions) == 2
        rel = re.search(r"\b(above|below|left of|right of)\b", caption).group(1)
        assert _direction(matched[0], matched[1]) == rel, (caption, objs)
        if len(objs) >= 3:
            assert {o["size"] for o in matched} == {"large"}
            assert sum(o["size"] == "large" for o in objs) == 2
            rest = len(objs) - 2
            assert caption.endswith("one small shape" if rest == 1 else "two small shapes")
        # paraphrase 2 swaps the pair and inverts the relation
        inv = scenes.INVERSE[rel]
        assert im["sentences"][1]["raw"].startswith(f"a {' '.join(mentions[1])} {inv} a {' '.join(mentions[0])}")


def _resolve(objs, phrase):
    """'small red object' / 'circle' / 'blue square' -> the matching objects."""
    attrs = {}
    for w in phrase.split():
        if w in scenes.SIZES:
            attrs["size"] = w
        elif w in scenes.COLORS:
            attrs["color"] = w
        elif w in scenes.SHAPES:
            attrs["shape"] = w
        else:
            assert w == "object", phrase
    return _find(objs, **attrs)


def test_answers_are_right(generated):
    _, _, data, qas = generated
    by_image = {f"images/{im['filename']}": im for im in data["images"]}
    plural = {v: k for k, v in scenes.PLURALS.items()}
    seen_types = set()
    for q in qas:
        im = by_image[q["image"]]
        objs, text, ans = im["objects"], q["question"], q["answer"]
        assert q["split"] == im["split"]
        seen_types.add(q["question_type"])
        if m := re.fullmatch(r"how many objects are there", text):
            assert ans == str(len(objs))
        elif m := re.fullmatch(r"how many (\w+) are there", text):
            assert ans == str(len(_find(objs, shape=plural[m.group(1)])))
        elif m := re.fullmatch(r"how many (\w+) objects are there", text):
            assert ans == str(len(_find(objs, color=m.group(1))))
        elif m := re.fullmatch(r"is there a (\w+) (\w+)", text):
            assert ans == ("yes" if _find(objs, color=m.group(1), shape=m.group(2)) else "no")
        elif m := re.fullmatch(r"what (color|shape) is (above|below|left of|right of) the (\w+) (\w+)", text) or \
                re.fullmatch(r"what (color) is the object (above|below|left of|right of) the (\w+) (\w+)", text):
            kind, rel = m.group(1), m.group(2)
            ref = _resolve(objs, f"{m.group(3)} {m.group(4)}")
            assert len(ref) == 1
            hits = [o for o in objs if o is not ref[0] and _direction(o, ref[0]) == rel]
            assert len(hits) == 1, (text, objs)
            assert ans == hits[0][kind]
        elif m := re.fullmatch(r"what (color|shape) is the ([\w ]+)", text):
            found = _resolve(objs, m.group(2))
            assert len(found) == 1, (text, objs)
            assert ans == found[0][m.group(1)]
        elif m := re.fullmatch(r"is the (\w+ \w+) (above|below|left of|right of) the (\w+ \w+)", text):
            (a,), (b,) = _resolve(objs, m.group(1)), _resolve(objs, m.group(3))
            assert ans == ("yes" if _direction(a, b) == m.group(2) else "no"), (text, objs)
        else:
            raise AssertionError(f"unexpected question: {text}")
        expected_type = "yes/no" if ans in ("yes", "no") else "number" if ans.isdigit() else "other"
        assert q["answer_type"] == expected_type
    assert seen_types == {"count", "color", "shape", "relation", "exist"}


def test_questions_per_image_and_yes_no_balance(generated):
    _, _, data, qas = generated
    for im in data["images"]:
        mine = [q for q in qas if q["image"] == f"images/{im['filename']}"]
        assert 5 <= len(mine) <= 8
        answers = [q["answer"] for q in mine]
        assert answers.count("yes") == answers.count("no") >= 1


def test_readers_load_the_output(generated):
    out, summary, data, qas = generated
    captions = load_caption_dataset(out)
    assert len(captions) == N and captions[0].image == str(out / "images" / "00001.png")
    assert captions[0].captions[0] == data["images"][0]["sentences"][0]["tokens"]
    vqa = load_vqa_dataset(out)
    assert len(vqa) == len(qas) and vqa[0].answers == [qas[0]["answer"]]
    assert {e.split for e in vqa} == set(scenes.SPLITS)


def test_bigger_images_and_command(tmp_path, capsys):
    s = scenes.scenes_command(tmp_path / "big", images=4, seed=0, image_size=96)
    assert Image.open(tmp_path / "big/images/00001.png").size == (96, 96)
    assert s["images"] == 4 and "wrote 4 images" in capsys.readouterr().out


@pytest.mark.parametrize("kwargs", [dict(n_images=0), dict(n_images=5, seed=-1), dict(n_images=5, image_size=16),
                                    dict(n_images="ten")])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(UserError):
        scenes.generate_scenes(tmp_path / "x", **kwargs)


def test_out_dir_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        scenes.generate_scenes(tmp_path / "f", 2)
