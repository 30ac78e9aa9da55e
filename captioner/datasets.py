"""Caption and VQA dataset readers. The format is found from the content, not from flags.

Caption formats (`load_caption_dataset`):
  * Karpathy JSON (`dataset_coco.json`, `dataset_flickr8k.json`, `dataset_flickr30k.json`, the scenes'
    `dataset_scenes.json`): {"images": [{"filepath"?, "filename", "split", "sentences": [{"tokens", "raw"}]}]}.
    Image = <image root>/<filepath>/<filename>; the image root defaults to the JSON file's folder (for Flickr files,
    which have no filepath, also `Flicker8k_Dataset/`, `Images/`, `flickr30k-images/` under it). "restval" is train.
  * Flickr8k: `Flickr8k.token.txt` ("name.jpg#N<TAB>caption") with `Flickr_8k.trainImages.txt`,
    `Flickr_8k.devImages.txt`, `Flickr_8k.testImages.txt` beside it (without them, everything is train; with them,
    images in no list are left out). Images in `Flicker8k_Dataset/`, `Flickr8k_Dataset/`, `Images/`, `images/` or the
    folder itself. Also the Kaggle variant: `captions.txt` with a header line "image,caption".
  * COCO captions: `captions_train2014.json` etc. ({"images": [{"id", "file_name"}], "annotations": [{"image_id",
    "caption"}]}); split from the file name (train / val / test); images in `<root>/train2014/` (root: the JSON's
    folder, or its parent when that folder is `annotations/`). A folder holding several such files loads them all.
  * JSONL: one object a line, {"image": path, "caption": text} or {"image", "captions": [...]}, optional "split"
    (default "train"); relative paths are against the JSONL's folder (or `image_root`). Lines naming the same image
    and split are merged.

VQA formats (`load_vqa_dataset`):
  * VQA v1/v2 JSON: a questions file (`v2_OpenEnded_mscoco_train2014_questions.json`) and its annotations file
    (`v2_mscoco_train2014_annotations.json`, found beside it). Images `COCO_train2014_000000123456.jpg` in
    `<root>/train2014/` or `<root>/`. Test questions (no annotations) load with empty answer lists.
  * JSONL: {"image", "question", "answer"} or {"image", "question", "answers": [...]}, optional "split",
    "answer_type", "question_type", "question_id" (the scenes' `vqa.jsonl` is one of these).

Splits are normalised to "train", "val", "test" (plus whatever else a file names, e.g. the scenes' "novel").
Raw captions are tokenized with `lm.text.tokenize` (lower case, no punctuation); given tokens are lower-cased.
Image files are not opened here (captioner.images does that); paths are absolute.

Example:
    >>> examples = load_caption_dataset("tests/fixtures/flickr8k")
    >>> train = split_examples(examples, "train")
    >>> train[0].captions[0][:4]
    ['a', 'woman', 'in', 'an']
"""

from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass, field

from lm.errors import UserError
from lm.text import tokenize

_SPLIT_ALIASES = {
    "train": "train", "training": "train", "restval": "train", "trainval": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test", "test-dev": "test", "testdev": "test",
}
_FLICKR_IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Flickr8k_Dataset/Flicker8k_Dataset", "Images",
                      "images", "flickr30k-images", "flickr30k_images", ".")


@dataclass
class CaptionExample:
    """One image and its reference captions (token lists)."""

    image: str  # absolute path
    captions: list[list[str]]
    split: str
    image_id: str


@dataclass
class VQAExample:
    """One question about one image, with every annotator's answer (raw text; normalise with metrics)."""

    image: str  # absolute path
    question: str
    answers: list[str]
    split: str
    answer_type: str | None = None
    question_type: str | None = None
    question_id: int | str | None = field(default=None)


def normalize_split(name: str | None) -> str:
    """"valid" / "dev" / "validation" -> "val", "restval" -> "train", ...; unknown names are lower-cased as is."""
    if name is None:
        return "train"
    key = str(name).strip().lower()
    return _SPLIT_ALIASES.get(key, key)


def split_examples(examples: list, split: str | None, required: bool = True) -> list:
    """The examples of one split ("train", "val"/"valid"/"dev", "test", "novel", ...; None or "all": all of them).

    Raises UserError when `required` and the split is empty, naming the splits that do exist.
    """
    if split is None or str(split).lower() == "all":
        return list(examples)
    want = normalize_split(split)
    out = [e for e in examples if e.split == want]
    if not out and required:
        have = ", ".join(sorted({e.split for e in examples})) or "none"
        raise UserError(f"no examples in split '{split}' (splits present: {have})")
    return out


def available_splits(examples: list) -> dict[str, int]:
    """{split: number of examples}, in first-seen order."""
    counts: dict[str, int] = {}
    for e in examples:
        counts[e.split] = counts.get(e.split, 0) + 1
    return counts


# ---- small helpers -------------------------------------------------------------------------------------------------
def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None


def _read_jsonl(path: str) -> list[dict]:
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{number}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise UserError(f"{path}:{number}: each line must be a JSON object")
                rows.append(row)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    return rows


def _sniff(path: str) -> str:
    """"json" (one JSON document), "jsonl", "flickr_token", "flickr_csv" or "unknown", from the first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    stripped = text.lstrip()
    if not stripped:
        raise UserError(f"{path}: the file is empty (empty dataset)")
    if stripped.startswith("{") or stripped.startswith("["):
        first = stripped.split("\n", 1)[0].strip()
        if path.endswith(".jsonl"):
            return "jsonl"
        try:  # a whole object on the first line followed by more lines: JSONL
            json.loads(first)
            rest = stripped.split("\n", 1)[1].strip() if "\n" in stripped else ""
            return "jsonl" if rest.startswith("{") else "json"
        except json.JSONDecodeError:
            return "json"
    lines = [line for line in text.splitlines() if line.strip()][:5]
    if lines and all(re.match(r"^[^\t#]+#\d+\t\S", line) for line in lines):
        return "flickr_token"
    if lines and lines[0].strip().lower().replace(" ", "") in ("image,caption", "image_name,comment_number,comment",
                                                               "image_name|comment_number|comment"):
        return "flickr_csv"
    return "unknown"


def _first_dir_with(root: str, subdirs, filename: str) -> str:
    """The first root/sub that holds `filename`; else the first that exists; else root."""
    candidates = [os.path.normpath(os.path.join(root, d)) for d in subdirs]
    for d in candidates:
        if os.path.isfile(os.path.join(d, filename)):
            return d
    for d in candidates:
        if os.path.isdir(d) and d != os.path.normpath(root):
            return d
    return os.path.normpath(root)


def _tokens_of(text) -> list[str]:
    if not isinstance(text, str):
        return []
    return tokenize(text)


def _dataset_files(path, image_root, find_in_folder, nothing_found: str) -> tuple[list[str], str | None]:
    """What both loaders do first: absolute paths, a checked image root, and the dataset file(s) -- `path` itself,
    or what `find_in_folder` finds when it is a folder. Returns (files, image root or None)."""
    path = os.path.abspath(os.fspath(path))
    root = os.path.abspath(os.fspath(image_root)) if image_root is not None else None
    if root is not None and not os.path.isdir(root):
        raise UserError(f"{root}: image folder not found")
    if os.path.isdir(path):
        files = find_in_folder(path)
        if not files:
            raise UserError(f"{path}: {nothing_found}")
        return files, root
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file or folder")
    return [path], root


def _nonempty(examples: list, path: str, what: str) -> list:
    if not examples:
        raise UserError(f"{path}: no {what} found (empty dataset)")
    return examples


# ---- captions ------------------------------------------------------------------------------------------------------
def _caption_file_in(folder: str) -> list[str]:
    """Known caption files in a folder, in order of preference (a list, as COCO may have several)."""
    karpathy = sorted(glob.glob(os.path.join(folder, "dataset_*.json")))
    if len(karpathy) > 1:
        names = ", ".join(os.path.basename(k) for k in karpathy)
        raise UserError(f"{folder}: several Karpathy files ({names}); pass the one to use")
    if karpathy:
        return karpathy
    for name in ("Flickr8k.token.txt", "results_20130124.token", "captions.txt"):
        if os.path.isfile(os.path.join(folder, name)):
            return [os.path.join(folder, name)]
    coco = sorted(glob.glob(os.path.join(folder, "captions_*.json")))
    coco = coco or sorted(glob.glob(os.path.join(folder, "annotations", "captions_*.json")))
    if coco:
        return coco
    jsonl = [p for p in sorted(glob.glob(os.path.join(folder, "*.jsonl"))) if _jsonl_kind(p) == "caption"]
    if len(jsonl) == 1:
        return jsonl
    if os.path.join(folder, "captions.jsonl") in jsonl:
        return [os.path.join(folder, "captions.jsonl")]
    if len(jsonl) > 1:
        names = ", ".join(os.path.basename(k) for k in jsonl)
        raise UserError(f"{folder}: several caption JSONL files ({names}); pass the one to use")
    return []


def _jsonl_kind(path: str) -> str:
    """"vqa" when its first object has a question, "caption" when it has a caption, else "unknown"."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    break
            else:
                return "unknown"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "unknown"
    if not isinstance(row, dict):
        return "unknown"
    if "question" in row:
        return "vqa"
    if "caption" in row or "captions" in row:
        return "caption"
    return "unknown"


def load_caption_dataset(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> list[CaptionExample]:
    """Reads any supported caption dataset (see the module docstring) into CaptionExamples.

    Args:
        path: a dataset file, or a folder holding one (dataset_*.json, Flickr8k.token.txt, captions.txt,
            captions_*.json, annotations/captions_*.json, a caption .jsonl).
        image_root: where the images are, when not in the default place for the format.

    Raises:
        UserError: missing file, unknown or broken format, or no captions at all.
    """
    files, root = _dataset_files(path, image_root, _caption_file_in,
                                 "no caption dataset found (looked for dataset_*.json, Flickr8k.token.txt, "
                                 "captions_*.json, *.jsonl)")
    if len(files) > 1:  # several COCO caption files: load them all
        return [example for f in files for example in load_caption_dataset(f, image_root)]
    path = files[0]
    kind = _sniff(path)
    if kind == "json":
        data = _read_json(path)
        if isinstance(data, dict) and isinstance(data.get("images"), list) and data["images"] \
                and isinstance(data["images"][0], dict) and "sentences" in data["images"][0]:
            return _load_karpathy(path, data, root)
        if isinstance(data, dict) and isinstance(data.get("annotations"), list) and "images" in data:
            if data["annotations"] and isinstance(data["annotations"][0], dict) \
                    and "caption" not in data["annotations"][0]:
                raise UserError(f"{path}: COCO annotations without captions (instances or VQA?); "
                                "expected a captions_*.json file")
            return _load_coco_captions(path, data, root)
        if isinstance(data, dict) and "questions" in data:
            raise UserError(f"{path}: this is a VQA questions file, not a caption dataset")
        if isinstance(data, dict) and ("caption" in data or "captions" in data):
            return _load_caption_jsonl(path, [data], root)
        raise UserError(f"{path}: unknown caption format (expected Karpathy, COCO captions, Flickr8k or JSONL)")
    if kind == "jsonl":
        rows = _read_jsonl(path)
        return _load_caption_jsonl(path, rows, root)
    if kind == "flickr_token":
        return _load_flickr_token(path, root)
    if kind == "flickr_csv":
        return _load_flickr_csv(path, root)
    raise UserError(f"{path}: unknown caption format (expected Karpathy, COCO captions, Flickr8k or JSONL)")


def _load_karpathy(path: str, data: dict, root: str | None) -> list[CaptionExample]:
    base = root or os.path.dirname(path)
    images = data["images"]
    first = images[0]
    flat_dir = None  # for files without "filepath" (Flickr): find the folder once
    # An image root that already is the image folder (coco/val2014 rather than coco/): ignore "filepath".
    with_path = next((im for im in images if isinstance(im, dict) and im.get("filepath") and "filename" in im), None)
    use_filepath = (with_path is None
                    or os.path.isfile(os.path.join(base, with_path["filepath"], with_path["filename"]))
                    or not os.path.isfile(os.path.join(base, with_path["filename"])))
    out = []
    for number, im in enumerate(images):
        if not isinstance(im, dict) or "filename" not in im:
            raise UserError(f"{path}: images[{number}] has no 'filename' (not a Karpathy dataset file?)")
        if im.get("filepath") and use_filepath:
            image = os.path.join(base, im["filepath"], im["filename"])
        else:
            if flat_dir is None:
                flat_dir = _first_dir_with(base, _FLICKR_IMAGE_DIRS, first["filename"])
            image = os.path.join(flat_dir, im["filename"])
        captions = []
        for sent in im.get("sentences") or []:
            if isinstance(sent, dict) and sent.get("tokens"):
                tokens = [str(t).lower() for t in sent["tokens"]]
            else:
                tokens = _tokens_of(sent.get("raw") if isinstance(sent, dict) else sent)
            if tokens:
                captions.append(tokens)
        if not captions:
            continue
        image_id = im.get("cocoid", im.get("filename"))
        out.append(CaptionExample(image=os.path.normpath(image), captions=captions,
                                  split=normalize_split(im.get("split", "train")), image_id=str(image_id)))
    return _nonempty(out, path, "captions")


def _flickr_split_lists(folder: str) -> dict[str, str] | None:
    files = {"train": ["Flickr_8k.trainImages.txt", "Flickr8k.trainImages.txt", "trainImages.txt"],
             "val": ["Flickr_8k.devImages.txt", "Flickr8k.devImages.txt", "devImages.txt"],
             "test": ["Flickr_8k.testImages.txt", "Flickr8k.testImages.txt", "testImages.txt"]}
    found: dict[str, str] = {}
    any_list = False
    for split, names in files.items():
        for name in names:
            p = os.path.join(folder, name)
            if os.path.isfile(p):
                any_list = True
                with open(p, encoding="utf-8") as f:
                    for line in f:
                        if line.strip():
                            found[line.strip()] = split
                break
    return found if any_list else None


def _group_flickr(path: str, pairs: list[tuple[str, str]], root: str | None) -> list[CaptionExample]:
    folder = os.path.dirname(path)
    captions: dict[str, list[list[str]]] = {}
    for name, text in pairs:
        tokens = _tokens_of(text)
        if tokens:
            captions.setdefault(name, []).append(tokens)
    if not captions:
        raise UserError(f"{path}: no captions found (empty dataset)")
    splits = _flickr_split_lists(folder)
    first = next(iter(captions))
    image_dir = root or _first_dir_with(folder, _FLICKR_IMAGE_DIRS, first)
    if root and not os.path.isfile(os.path.join(root, first)):
        image_dir = _first_dir_with(root, _FLICKR_IMAGE_DIRS, first)
    out = []
    for name, caps in captions.items():
        if splits is not None:
            if name not in splits:
                continue
            split = splits[name]
        else:
            split = "train"
        out.append(CaptionExample(image=os.path.join(image_dir, name), captions=caps, split=split, image_id=name))
    return _nonempty(out, path, "captioned images listed in the Flickr_8k.*Images.txt split files")


def _load_flickr_token(path: str, root: str | None) -> list[CaptionExample]:
    pairs = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            key, sep, text = line.rstrip("\n").partition("\t")
            if not sep or "#" not in key:
                raise UserError(f"{path}:{number}: expected 'name.jpg#N<TAB>caption'")
            pairs.append((key.rsplit("#", 1)[0].strip(), text))
    return _group_flickr(path, pairs, root)


def _load_flickr_csv(path: str, root: str | None) -> list[CaptionExample]:
    import csv

    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        text = f.read()
    delimiter = "|" if text.split("\n", 1)[0].count("|") >= 2 else ","
    reader = csv.reader(text.splitlines()[1:], delimiter=delimiter)
    pairs = []
    for row in reader:
        if len(row) >= 2:
            pairs.append((row[0].strip(), row[-1]))
    return _group_flickr(path, pairs, root)


def _coco_split(filename: str, data: dict) -> tuple[str, str]:
    """(split, image folder name) from e.g. captions_train2014.json."""
    m = re.search(r"captions_([A-Za-z\-]+)(\d{4})", os.path.basename(filename))
    if m:
        return normalize_split(m.group(1)), m.group(1) + m.group(2)
    for split in ("train", "val", "test"):
        if split in os.path.basename(filename).lower():
            return split, ""
    return "train", ""


def _load_coco_captions(path: str, data: dict, root: str | None) -> list[CaptionExample]:
    split, folder_name = _coco_split(path, data)
    base = root
    if base is None:
        base = os.path.dirname(path)
        if os.path.basename(base) == "annotations":
            base = os.path.dirname(base)
    id_to_file = {}
    for im in data.get("images", []):
        if isinstance(im, dict) and "id" in im and "file_name" in im:
            id_to_file[im["id"]] = im["file_name"]
    captions: dict = {}
    for number, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            raise UserError(f"{path}: annotations[{number}] needs 'image_id' and 'caption'")
        tokens = _tokens_of(ann["caption"])
        if tokens:
            captions.setdefault(ann["image_id"], []).append(tokens)
    if not captions:
        raise UserError(f"{path}: no captions found (empty dataset)")
    first_id = next(iter(captions))
    if first_id not in id_to_file:
        raise UserError(f"{path}: annotation image_id {first_id} is not in 'images'")
    subdirs = [folder_name, os.path.join("images", folder_name), "."] if folder_name else ["images", "."]
    image_dir = _first_dir_with(base, subdirs, id_to_file[first_id])
    out = []
    for image_id, caps in captions.items():
        if image_id not in id_to_file:
            raise UserError(f"{path}: annotation image_id {image_id} is not in 'images'")
        out.append(CaptionExample(image=os.path.join(image_dir, id_to_file[image_id]), captions=caps, split=split,
                                  image_id=str(image_id)))
    return out


def _resolve(image: str, base: str) -> str:
    image = os.path.expanduser(str(image))
    return os.path.normpath(image if os.path.isabs(image) else os.path.join(base, image))


def _load_caption_jsonl(path: str, rows: list[dict], root: str | None) -> list[CaptionExample]:
    base = root or os.path.dirname(path)
    merged: dict[tuple[str, str], CaptionExample] = {}
    for number, row in enumerate(rows, 1):
        if "question" in row:
            raise UserError(f"{path}: lines have a 'question': this is a VQA file, not a caption dataset")
        if "image" not in row:
            raise UserError(f"{path}:{number}: no 'image' field (expected {{\"image\": ..., \"caption\": ...}})")
        if "caption" in row:
            texts = row["caption"] if isinstance(row["caption"], list) else [row["caption"]]
        elif "captions" in row:
            texts = row["captions"] if isinstance(row["captions"], list) else [row["captions"]]
        else:
            raise UserError(f"{path}:{number}: no 'caption' or 'captions' field")
        caps = [[str(t).lower() for t in c] if isinstance(c, list) else _tokens_of(c) for c in texts]
        caps = [c for c in caps if c]
        image = _resolve(row["image"], base)
        split = normalize_split(row.get("split"))
        key = (image, split)
        if key in merged:
            merged[key].captions.extend(caps)
        else:
            image_id = str(row.get("image_id", row.get("id", os.path.relpath(image, base))))
            merged[key] = CaptionExample(image=image, captions=caps, split=split, image_id=image_id)
    out = [e for e in merged.values() if e.captions]
    return _nonempty(out, path, "captions")


# ---- VQA -----------------------------------------------------------------------------------------------------------
def _vqa_files_in(folder: str) -> list[str]:
    questions = sorted(glob.glob(os.path.join(folder, "*uestions*.json")))
    questions = questions or sorted(glob.glob(os.path.join(folder, "*", "*uestions*.json")))
    if any("OpenEnded" in os.path.basename(q) for q in questions):  # VQA v1 ships MultipleChoice copies too
        questions = [q for q in questions if "MultipleChoice" not in os.path.basename(q)]
    if questions:
        return questions
    jsonl = [p for p in sorted(glob.glob(os.path.join(folder, "*.jsonl"))) if _jsonl_kind(p) == "vqa"]
    if len(jsonl) > 1 and os.path.join(folder, "vqa.jsonl") in jsonl:
        return [os.path.join(folder, "vqa.jsonl")]
    if len(jsonl) > 1:
        names = ", ".join(os.path.basename(k) for k in jsonl)
        raise UserError(f"{folder}: several VQA JSONL files ({names}); pass the one to use")
    return jsonl


def load_vqa_dataset(path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                     annotations: str | os.PathLike | None = None) -> list[VQAExample]:
    """Reads VQA v1/v2 JSON (questions + annotations) or a VQA JSONL file into VQAExamples.

    Args:
        path: a questions JSON, a VQA JSONL, or a folder holding them (all questions files in it are loaded).
        image_root: where the images are, when not in the default place for the format.
        annotations: the annotations JSON for a questions file, when it is not beside it with the usual name.

    Raises:
        UserError: missing file, unknown or broken format, no annotations for a train/val questions file, or no
        questions at all.
    """
    if annotations is not None and not os.path.isfile(annotations):
        raise UserError(f"{annotations}: annotations file not found")
    files, root = _dataset_files(path, image_root, _vqa_files_in,
                                 "no VQA data found (looked for *questions*.json and a .jsonl with questions)")
    if len(files) > 1:  # several questions files in a folder: load them all
        if annotations is not None:
            raise UserError(f"{path}: several questions files; pass one file together with its annotations")
        return [example for f in files for example in load_vqa_dataset(f, image_root)]
    path = files[0]
    kind = _sniff(path)
    if kind == "jsonl":
        return _load_vqa_jsonl(path, _read_jsonl(path), root)
    if kind == "json":
        data = _read_json(path)
        if isinstance(data, dict) and isinstance(data.get("questions"), list):
            return _load_vqa_v2(path, data, root, annotations)
        if isinstance(data, dict) and "question" in data:
            return _load_vqa_jsonl(path, [data], root)
        if isinstance(data, dict) and isinstance(data.get("annotations"), list) and data["annotations"] \
                and isinstance(data["annotations"][0], dict) and "answers" in data["annotations"][0]:
            raise UserError(f"{path}: this is a VQA annotations file; pass the questions file (it finds this one)")
    raise UserError(f"{path}: unknown VQA format (expected VQA v2 questions JSON or JSONL with 'question')")


def _vqa_subtype(path: str, data: dict) -> str:
    sub = data.get("data_subtype")
    if isinstance(sub, str) and sub:
        return sub
    m = re.search(r"((?:train|val|test-dev|test)\d{4})", os.path.basename(path))
    return m.group(1) if m else ""


def _find_annotations(path: str, subtype: str) -> str | None:
    folder = os.path.dirname(path)
    name = os.path.basename(path)
    guesses = []
    if "_questions" in name:  # v2_OpenEnded_mscoco_train2014_questions.json -> v2_mscoco_train2014_annotations.json
        guesses.append(name.replace("OpenEnded_", "").replace("MultipleChoice_", "").replace("_questions",
                                                                                             "_annotations"))
    if subtype:
        pattern = os.path.join(folder, f"*{subtype}*annotations*.json")
        guesses += [os.path.basename(p) for p in sorted(glob.glob(pattern))]
    search = [folder, os.path.join(os.path.dirname(folder), "Annotations"), os.path.join(os.path.dirname(folder),
                                                                                            "annotations")]
    for d in search:
        for g in guesses:
            p = os.path.join(d, g)
            if os.path.isfile(p):
                return p
        if subtype:
            hits = sorted(glob.glob(os.path.join(d, f"*{subtype}*annotations*.json")))
            if hits:
                return hits[0]
    return None


def _load_vqa_v2(path: str, data: dict, root: str | None, annotations) -> list[VQAExample]:
    subtype = _vqa_subtype(path, data)
    split = normalize_split(re.sub(r"\d{4}$", "", subtype)) if subtype else "train"
    ann_path = os.fspath(annotations) if annotations is not None else _find_annotations(path, subtype)
    by_qid: dict = {}
    if ann_path is not None:
        ann = _read_json(ann_path)
        if not isinstance(ann, dict) or not isinstance(ann.get("annotations"), list):
            raise UserError(f"{ann_path}: not a VQA annotations file (no 'annotations' list)")
        for a in ann["annotations"]:
            if isinstance(a, dict) and "question_id" in a:
                by_qid[a["question_id"]] = a
    elif split != "test":
        raise UserError(f"{path}: no annotations file found beside it (e.g. v2_mscoco_{subtype or 'train2014'}"
                        "_annotations.json); pass annotations=")
    questions = data["questions"]
    if not questions:
        raise UserError(f"{path}: no questions found (empty dataset)")
    image_subtype = "test2015" if subtype.startswith("test") else subtype
    dataset_type = data.get("data_type", "mscoco") if isinstance(data.get("data_type"), str) else "mscoco"

    def image_name(image_id) -> str:
        if dataset_type != "mscoco":  # abstract scenes: abstract_v002_train2015_000000011779.png
            return f"{dataset_type}_{image_subtype}_{int(image_id):012d}.png"
        return f"COCO_{image_subtype}_{int(image_id):012d}.jpg"

    bases = [root] if root else [os.path.dirname(path), os.path.dirname(os.path.dirname(path))]
    first = questions[0]
    if not isinstance(first, dict) or "image_id" not in first:
        raise UserError(f"{path}: questions[0] has no 'image_id' (not a VQA questions file?)")
    subdirs = [image_subtype, os.path.join("images", image_subtype), "Images/" + image_subtype, "."]
    image_dir, short_names = None, False
    for base in bases:
        for d in subdirs:
            cand = os.path.normpath(os.path.join(base, d))
            if os.path.isfile(os.path.join(cand, image_name(first["image_id"]))):
                image_dir = cand
            elif os.path.isfile(os.path.join(cand, f"{int(first['image_id']):012d}.jpg")):  # COCO 2017 names
                image_dir, short_names = cand, True
            if image_dir:
                break
        if image_dir:
            break
    if image_dir is None:
        image_dir = _first_dir_with(bases[0], subdirs, image_name(first["image_id"]))

    out = []
    for number, q in enumerate(questions):
        if not isinstance(q, dict) or not {"image_id", "question", "question_id"} <= set(q):
            raise UserError(f"{path}: questions[{number}] needs image_id, question and question_id")
        a = by_qid.get(q["question_id"])
        if a is None and ann_path is not None:
            raise UserError(f"{ann_path}: no annotation for question_id {q['question_id']}")
        answers = [str(x["answer"]) for x in a.get("answers", []) if isinstance(x, dict) and "answer" in x] if a else []
        if a and not answers and a.get("multiple_choice_answer"):
            answers = [str(a["multiple_choice_answer"])]
        name = f"{int(q['image_id']):012d}.jpg" if short_names else image_name(q["image_id"])
        out.append(VQAExample(image=os.path.join(image_dir, name), question=str(q["question"]), answers=answers,
                              split=split, answer_type=a.get("answer_type") if a else None,
                              question_type=a.get("question_type") if a else None, question_id=q["question_id"]))
    return out


def _load_vqa_jsonl(path: str, rows: list[dict], root: str | None) -> list[VQAExample]:
    base = root or os.path.dirname(path)
    out = []
    for number, row in enumerate(rows, 1):
        if "image" not in row or "question" not in row:
            if "caption" in row or "captions" in row:
                raise UserError(f"{path}: lines have captions and no questions: this is a caption dataset")
            raise UserError(f"{path}:{number}: needs 'image' and 'question' fields")
        if "answers" in row:
            raw = row["answers"] if isinstance(row["answers"], list) else [row["answers"]]
            answers = [str(a["answer"]) if isinstance(a, dict) else str(a) for a in raw]
        elif "answer" in row:
            answers = [str(row["answer"])]
        else:
            answers = []
        out.append(VQAExample(image=_resolve(row["image"], base), question=str(row["question"]), answers=answers,
                              split=normalize_split(row.get("split")), answer_type=row.get("answer_type"),
                              question_type=row.get("question_type"),
                              question_id=row.get("question_id", number - 1)))
    return _nonempty(out, path, "questions")


# ---- task detection ------------------------------------------------------------------------------------------------
def detect_task(path: str | os.PathLike) -> str:
    """"vqa" when the data has questions, else "caption".

    A folder holding both kinds (the scenes output: dataset_scenes.json and vqa.jsonl) counts as "caption"; pass its
    vqa.jsonl for VQA. Raises UserError when nothing known is found.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        try:
            if _caption_file_in(path):
                return "caption"
        except UserError:
            return "caption"  # several caption files: still caption data
        if _vqa_files_in(path):
            return "vqa"
        raise UserError(f"{path}: no caption or VQA dataset found in this folder")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file or folder")
    kind = _sniff(path)
    if kind == "jsonl":
        k = _jsonl_kind(path)
        if k == "unknown":
            raise UserError(f"{path}: JSONL lines need 'caption'/'captions' or 'question'")
        return k
    if kind == "json":
        data = _read_json(path)
        if isinstance(data, dict):
            if "questions" in data or "question" in data:
                return "vqa"
            anns = data.get("annotations")
            if isinstance(anns, list) and anns and isinstance(anns[0], dict) and "answers" in anns[0]:
                return "vqa"
            if "images" in data or "caption" in data or "captions" in data:
                return "caption"
        raise UserError(f"{path}: unknown dataset format")
    if kind in ("flickr_token", "flickr_csv"):
        return "caption"
    raise UserError(f"{path}: unknown dataset format")
