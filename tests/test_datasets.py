"""Dataset readers: every format on a tiny file written here, the shared fixtures, and one-line errors."""

import json
import os

import pytest

from captioner.datasets import (CaptionExample, VQAExample, available_splits, detect_task, load_caption_dataset,
                                load_vqa_dataset, normalize_split, split_examples)
from lm.errors import UserError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def jsonl(path, rows):
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


# ---- captions ------------------------------------------------------------------------------------------------------
def test_karpathy_coco(tmp_path):
    data = {"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "COCO_val2014_000000000042.jpg", "split": "restval", "cocoid": 42,
         "imgid": 0, "sentids": [0, 1], "sentences": [
             {"tokens": ["a", "dog", "runs"], "raw": "A dog runs.", "imgid": 0, "sentid": 0},
             {"raw": "The dog is running!", "imgid": 0, "sentid": 1}]},
        {"filepath": "val2014", "filename": "COCO_val2014_000000000043.jpg", "split": "test", "cocoid": 43,
         "imgid": 1, "sentids": [2], "sentences": [{"tokens": ["A", "Cat"], "raw": "A cat", "sentid": 2}]},
    ]}
    write(tmp_path / "dataset_coco.json", data)
    for source in (tmp_path / "dataset_coco.json", tmp_path):
        ex = load_caption_dataset(source)
        assert [e.split for e in ex] == ["train", "test"]
        assert ex[0].image == str(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg")
        assert ex[0].captions == [["a", "dog", "runs"], ["the", "dog", "is", "running"]]
        assert ex[1].captions == [["a", "cat"]] and ex[1].image_id == "43"
    (tmp_path / "val2014").mkdir()
    (tmp_path / "val2014" / "COCO_val2014_000000000042.jpg").write_bytes(b"")
    other = load_caption_dataset(tmp_path / "dataset_coco.json", image_root=tmp_path / "val2014")
    assert other[0].image == str(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg")  # root is the folder
    assert detect_task(tmp_path / "dataset_coco.json") == "caption"


def test_karpathy_flickr_without_filepath(tmp_path):
    data = {"dataset": "flickr30k", "images": [
        {"filename": "1.jpg", "split": "val", "imgid": 0, "sentences": [{"tokens": ["x", "y"]}]}]}
    write(tmp_path / "dataset_flickr30k.json", data)
    (tmp_path / "flickr30k-images").mkdir()
    (tmp_path / "flickr30k-images" / "1.jpg").write_bytes(b"")
    ex = load_caption_dataset(tmp_path)
    assert ex == [CaptionExample(str(tmp_path / "flickr30k-images" / "1.jpg"), [["x", "y"]], "val", "1.jpg")]


def test_flickr8k_token_and_split_lists(tmp_path):
    write(tmp_path / "Flickr8k.token.txt",
          "a.jpg#0\tA dog runs .\na.jpg#1\tA brown dog running\nb.jpg#0\tTwo cats .\n"
          "c.jpg#0\tA bird .\nd.jpg#0\tNot in any list .\n")
    write(tmp_path / "Flickr_8k.trainImages.txt", "a.jpg\n")
    write(tmp_path / "Flickr_8k.devImages.txt", "b.jpg\n")
    write(tmp_path / "Flickr_8k.testImages.txt", "c.jpg\n")
    (tmp_path / "Images").mkdir()
    (tmp_path / "Images" / "a.jpg").write_bytes(b"")
    ex = load_caption_dataset(tmp_path)
    assert [(e.image_id, e.split) for e in ex] == [("a.jpg", "train"), ("b.jpg", "val"), ("c.jpg", "test")]
    assert ex[0].captions == [["a", "dog", "runs"], ["a", "brown", "dog", "running"]]
    assert ex[0].image == str(tmp_path / "Images" / "a.jpg")
    elsewhere = tmp_path / "pics"
    elsewhere.mkdir()
    assert load_caption_dataset(tmp_path / "Flickr8k.token.txt", image_root=elsewhere)[1].image == \
        str(elsewhere / "b.jpg")
    assert detect_task(tmp_path) == "caption"


def test_flickr8k_without_split_lists_is_all_train(tmp_path):
    write(tmp_path / "Flickr8k.token.txt", "a.jpg#0\tA dog .\nb.jpg#0\tA cat .\n")
    ex = load_caption_dataset(tmp_path / "Flickr8k.token.txt")
    assert {e.split for e in ex} == {"train"} and ex[0].image == str(tmp_path / "a.jpg")


def test_flickr_kaggle_captions_txt(tmp_path):
    write(tmp_path / "captions.txt", "image,caption\na.jpg,\"A dog, running.\"\na.jpg,A dog\n")
    ex = load_caption_dataset(tmp_path)
    assert ex[0].captions == [["a", "dog", "running"], ["a", "dog"]]


def test_coco_captions(tmp_path):
    data = {"images": [{"id": 7, "file_name": "COCO_train2014_000000000007.jpg"},
                       {"id": 8, "file_name": "COCO_train2014_000000000008.jpg"}],
            "annotations": [{"image_id": 7, "id": 1, "caption": "A man riding a wave."},
                            {"image_id": 8, "id": 2, "caption": "A plate of food"},
                            {"image_id": 7, "id": 3, "caption": "Surfer on a board"}]}
    write(tmp_path / "annotations" / "captions_train2014.json", data)
    write(tmp_path / "annotations" / "captions_val2014.json",
          {"images": [{"id": 9, "file_name": "v.jpg"}], "annotations": [{"image_id": 9, "caption": "x y"}]})
    (tmp_path / "train2014").mkdir()
    ex = load_caption_dataset(tmp_path / "annotations" / "captions_train2014.json")
    assert [e.image_id for e in ex] == ["7", "8"] and {e.split for e in ex} == {"train"}
    assert ex[0].captions == [["a", "man", "riding", "a", "wave"], ["surfer", "on", "a", "board"]]
    assert ex[0].image == str(tmp_path / "train2014" / "COCO_train2014_000000000007.jpg")
    both = load_caption_dataset(tmp_path)  # a folder with annotations/captions_*.json: all of them
    assert available_splits(both) == {"train": 2, "val": 1}


def test_jsonl_single_and_multi_caption(tmp_path):
    jsonl(tmp_path / "data" / "caps.jsonl", [
        {"image": "img/a.jpg", "caption": "A red car."},
        {"image": "img/a.jpg", "caption": "A car parked"},
        {"image": "/abs/b.jpg", "captions": ["Two people", "A couple walking"], "split": "valid"},
        {"image": "c.jpg", "caption": "...", "split": "test"},  # no words: dropped
    ])
    ex = load_caption_dataset(tmp_path / "data")
    assert len(ex) == 2
    assert ex[0].image == str(tmp_path / "data" / "img" / "a.jpg")
    assert ex[0].captions == [["a", "red", "car"], ["a", "car", "parked"]] and ex[0].split == "train"
    assert ex[1].image == "/abs/b.jpg" and ex[1].split == "val" and len(ex[1].captions) == 2
    assert detect_task(tmp_path / "data" / "caps.jsonl") == "caption"
    one = jsonl(tmp_path / "one.jsonl", [{"image": "a.jpg", "caption": "hello there"}])
    assert load_caption_dataset(one, image_root=tmp_path / "data")[0].image == str(tmp_path / "data" / "a.jpg")


def test_shared_caption_fixtures():
    for folder in ("flickr8k", "karpathy"):
        ex = load_caption_dataset(os.path.join(FIXTURES, folder))
        assert available_splits(ex) == {"train": 2, "val": 2, "test": 2}
        assert all(len(e.captions) == 5 and os.path.isfile(e.image) for e in ex)
        assert ex[1].captions[0][:3] == ["an", "orange", "tabby"]


# ---- VQA -----------------------------------------------------------------------------------------------------------
def _vqa_pair(folder, subtype="val2014", with_annotations=True):
    q = {"data_type": "mscoco", "data_subtype": subtype, "task_type": "Open-Ended", "questions": [
        {"image_id": 42, "question": "What color is the bus?", "question_id": 42000},
        {"image_id": 7, "question": "How many dogs?", "question_id": 7001}]}
    a = {"data_subtype": subtype, "annotations": [
        {"question_id": 42000, "image_id": 42, "question_type": "what color is the", "answer_type": "other",
         "multiple_choice_answer": "red", "answers": [{"answer": "red", "answer_id": k} for k in range(10)]},
        {"question_id": 7001, "image_id": 7, "question_type": "how many", "answer_type": "number",
         "multiple_choice_answer": "2", "answers": [{"answer": x, "answer_id": k} for k, x in
                                                    enumerate(["2"] * 8 + ["two", "3"])]}]}
    qpath = write(folder / f"v2_OpenEnded_mscoco_{subtype}_questions.json", q)
    if with_annotations:
        write(folder / f"v2_mscoco_{subtype}_annotations.json", a)
    return qpath


def test_vqa_v2_pair(tmp_path):
    qpath = _vqa_pair(tmp_path)
    (tmp_path / "val2014").mkdir()
    (tmp_path / "val2014" / "COCO_val2014_000000000042.jpg").write_bytes(b"")
    for source in (qpath, tmp_path):
        ex = load_vqa_dataset(source)
        assert len(ex) == 2
        assert ex[0] == VQAExample(image=str(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg"),
                                   question="What color is the bus?", answers=["red"] * 10, split="val",
                                   answer_type="other", question_type="what color is the", question_id=42000)
        assert ex[1].answers[-2:] == ["two", "3"] and ex[1].answer_type == "number"
    assert detect_task(qpath) == "vqa" and detect_task(tmp_path) == "vqa"


def test_vqa_v2_annotations_given_and_missing(tmp_path):
    qpath = _vqa_pair(tmp_path / "q", with_annotations=False)
    with pytest.raises(UserError, match="annotations"):
        load_vqa_dataset(qpath)
    _vqa_pair(tmp_path / "a")
    ann = tmp_path / "a" / "v2_mscoco_val2014_annotations.json"
    assert load_vqa_dataset(qpath, annotations=ann)[0].answers == ["red"] * 10
    with pytest.raises(UserError, match="questions file"):
        load_vqa_dataset(ann)
    test_q = _vqa_pair(tmp_path / "t", subtype="test2015", with_annotations=False)
    ex = load_vqa_dataset(test_q)  # test questions have no answers
    assert ex[0].answers == [] and ex[0].split == "test" and ex[0].image.endswith("COCO_test2015_000000000042.jpg")


def test_vqa_jsonl(tmp_path):
    path = jsonl(tmp_path / "qa.jsonl", [
        {"image": "a.png", "question": "what color is it", "answer": "red", "answer_type": "other",
         "question_type": "color", "split": "dev", "question_id": 5},
        {"image": "b.png", "question": "how many", "answers": ["2", "two", "2"]},
    ])
    ex = load_vqa_dataset(path)
    assert ex[0] == VQAExample(str(tmp_path / "a.png"), "what color is it", ["red"], "val", "other", "color", 5)
    assert ex[1].answers == ["2", "two", "2"] and ex[1].split == "train" and ex[1].question_id == 1
    assert detect_task(path) == "vqa"
    assert detect_task(tmp_path) == "vqa"


def test_shared_vqa_fixtures():
    ex = load_vqa_dataset(os.path.join(FIXTURES, "vqa_v2"))
    assert len(ex) == 8 and all(len(e.answers) == 10 and os.path.isfile(e.image) for e in ex)
    assert {e.answer_type for e in ex} == {"yes/no", "number", "other"}
    ex = load_vqa_dataset(os.path.join(FIXTURES, "vqa.jsonl"))
    assert available_splits(ex) == {"train": 2, "val": 1, "test": 1}
    assert all(os.path.isfile(e.image) for e in ex)


# ---- splits and errors ---------------------------------------------------------------------------------------------
def test_split_aliases():
    ex = [CaptionExample("a", [["x"]], s, str(k)) for k, s in enumerate(["train", "val", "test", "novel"])]
    for alias in ("val", "valid", "dev", "validation", "VAL"):
        assert [e.split for e in split_examples(ex, alias)] == ["val"]
    assert len(split_examples(ex, None)) == 4 and len(split_examples(ex, "all")) == 4
    assert split_examples(ex, "novel")[0].image_id == "3"
    assert normalize_split("restval") == "train"
    with pytest.raises(UserError, match="splits present: novel, test, train, val"):
        split_examples(ex, "holdout")
    assert split_examples(ex, "holdout", required=False) == []


def test_bad_inputs(tmp_path):
    cases = {
        "missing": (tmp_path / "nope.json", "no such file"),
        "empty folder": (tmp_path, "no caption dataset"),
        "broken json": (write(tmp_path / "bad" / "x.json", '{"images": ['), "not valid JSON"),
        "unknown json": (write(tmp_path / "u" / "x.json", {"foo": 1}), "unknown caption format"),
        "text": (write(tmp_path / "t" / "x.txt", "hello world\n"), "unknown caption format"),
        "vqa as captions": (_vqa_pair(tmp_path / "v"), "VQA questions file"),
        "empty karpathy": (write(tmp_path / "e" / "dataset_x.json", {"images": [{"filename": "a", "sentences": []}]}),
                           "empty dataset"),
        "jsonl no image": (jsonl(tmp_path / "j" / "x.jsonl", [{"caption": "a b"}, {"caption": "c"}]), "no 'image'"),
        "jsonl bad line": (write(tmp_path / "k" / "x.jsonl", '{"image": "a", "caption": "b"}\n{oops\n'),
                           r"x.jsonl:2: not valid JSON"),
        "qa as captions": (jsonl(tmp_path / "q" / "x.jsonl", [{"image": "a", "question": "b", "answer": "c"}] * 2),
                           "VQA file"),
    }
    for name, (path, message) in cases.items():
        with pytest.raises(UserError, match=message) as info:
            load_caption_dataset(path)
        assert "\n" not in str(info.value), name
    with pytest.raises(UserError, match="no VQA data"):
        load_vqa_dataset(tmp_path / "t")
    with pytest.raises(UserError, match="caption dataset"):
        load_vqa_dataset(jsonl(tmp_path / "c" / "x.jsonl", [{"image": "a", "caption": "b"}] * 2))
    with pytest.raises(UserError, match="empty dataset"):
        load_vqa_dataset(write(tmp_path / "z" / "x.jsonl", "\n"))
    with pytest.raises(UserError, match="image folder not found"):
        load_caption_dataset(os.path.join(FIXTURES, "flickr8k"), image_root=tmp_path / "nowhere")
    with pytest.raises(UserError):
        detect_task(tmp_path / "t" / "x.txt")
