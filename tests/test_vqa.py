"""VQA: the model in each mode, config and weights round trips, training on the shared fixtures, answering."""

import json
import os

import keras
import numpy as np
import pytest

from captioner.images import ImageError
from captioner.model import load_model_dir
from captioner.vqa import (MODES, VQAModel, answer_list, answer_questions, answer_targets, build_vqa_model,
                           encode_questions, evaluate_vqa, train_vqa)
from lm.errors import UserError
from lm.vocab import Vocabulary

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
VQA_V2 = os.path.join(FIXTURES, "vqa_v2")
VQA_JSONL = os.path.join(FIXTURES, "vqa.jsonl")
TINY = dict(num_answers=6, vocab_size=20, image_size=[32, 32], embed_dim=8, units=8, attention_dim=8, hops=2)
TRAIN_TINY = dict(image_size=32, embed=8, units=8, batch_size=4, epochs=1, max_steps=1, verbose=0)


def _inputs(batch=3, length=5, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (batch, 32, 32, 3)).astype("float32")  # (B, 32, 32, 3)
    questions = rng.integers(1, 20, (batch, length)).astype("int32")  # (B, T)
    questions[0, 2:] = 0  # a padded question
    questions[1, :] = 0  # an empty one
    return images, questions


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cell_type", ["lstm", "gru"])
def test_modes_give_logits_and_attention(mode, cell_type):
    model = build_vqa_model({**TINY, "mode": mode, "cell_type": cell_type})
    images, questions = _inputs()
    logits, alpha = model((images, questions), return_attention=True)
    assert tuple(logits.shape) == (3, 6) and tuple(alpha.shape) == (3, 16)  # 32x32 -> 4x4 grid
    assert np.all(np.isfinite(np.asarray(logits)))
    np.testing.assert_allclose(np.asarray(alpha).sum(-1), 1.0, rtol=1e-5)
    assert model.grid == (4, 4, 128) and model.image_size == (32, 32) and model.backbone_name == "small_cnn"
    # several questions about one image: the backbone runs once per image, same numbers
    grouped = model((images[:2], questions, np.array([0, 1, 0], "int32")))
    single = model((images[[0, 1, 0]], questions))
    np.testing.assert_allclose(np.asarray(grouped), np.asarray(single), atol=1e-5)
    if mode == "blind":
        assert model.backbone is None
        other = model((np.zeros_like(images), questions))
        np.testing.assert_allclose(np.asarray(other), np.asarray(logits), atol=1e-6)


@pytest.mark.parametrize("options", [{"positions": "learned", "offsets": False}, {"positions": "none", "hops": 3},
                                     {"classifier_units": 0}])
def test_attention_variants(options):
    model = build_vqa_model({**TINY, **options})
    logits, alpha = model(_inputs(), return_attention=True)
    assert tuple(logits.shape) == (3, 6) and tuple(alpha.shape) == (3, 16)
    assert {k: model.get_config()[k] for k in options} == options


def test_bad_config_is_a_user_error():
    with pytest.raises(UserError):
        VQAModel(**{**TINY, "mode": "telepathy"})
    with pytest.raises(UserError):
        VQAModel(**{**TINY, "hops": 0})
    with pytest.raises(UserError):
        VQAModel(**{**TINY, "positions": "everywhere"})


def test_config_round_trip_and_weights(tmp_path):
    model = build_vqa_model({**TINY, "cell_type": "gru", "hops": 3})
    images, questions = _inputs()
    expected = np.asarray(model((images, questions)))
    config = model.get_config()
    assert {k: config[k] for k in TINY} == {**TINY, "hops": 3} and config["mode"] == "attention"
    json.dumps(config)  # plain JSON
    path = str(tmp_path / "vqa.weights.h5")
    model.save_weights(path)
    twin = build_vqa_model(json.loads(json.dumps(config)))
    twin.load_weights(path)
    np.testing.assert_allclose(np.asarray(twin((images, questions))), expected, atol=1e-6)
    # whole-model .keras file
    model.save(str(tmp_path / "vqa.keras"))
    again = keras.saving.load_model(str(tmp_path / "vqa.keras"))
    assert isinstance(again, VQAModel)
    np.testing.assert_allclose(np.asarray(again((images, questions))), expected, atol=1e-6)


def test_answers_and_soft_targets():
    from captioner.datasets import VQAExample

    examples = [VQAExample("a.png", "q", ["Two", "2", "yes"], "train"), VQAExample("b.png", "q", ["yes"], "train"),
                VQAExample("c.png", "q", ["the dog."], "train")]
    assert answer_list(examples) == ["yes", "2", "dog"]
    assert answer_list(examples, 1) == ["yes"]
    index = {"2": 0, "3": 1}
    soft = answer_targets(["2"] * 2 + ["3"] * 8, index)  # official: min(2/3, 1) and min(8/3, 1), normalised
    assert soft == pytest.approx({0: 0.4, 1: 0.6})
    assert answer_targets(["two", "3"], index) == {0: 0.5, 1: 0.5}  # few references: each counts fully
    assert answer_targets(["cat"], index) == {}


def test_encode_questions_handles_empty_and_unseen_words():
    vocab = Vocabulary.build([["what", "color", "is", "it"]])
    ids = encode_questions(["What color is it?", "", "zebra quux"], vocab, max_length=3)
    assert ids.shape == (3, 3)
    assert list(ids[1]) == [vocab.unk_id, 0, 0] and list(ids[2]) == [vocab.unk_id, vocab.unk_id, 0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny model folder per fixture format, trained for one step."""
    assert os.path.isdir(VQA_V2) and os.path.isfile(VQA_JSONL), "the shared VQA fixtures are missing"
    out = {}
    for name, data in (("v2", VQA_V2), ("jsonl", VQA_JSONL)):
        folder = tmp_path_factory.mktemp(f"vqa-{name}")
        summary = train_vqa(data, str(folder), **TRAIN_TINY)
        out[name] = (folder, summary)
    return out


@pytest.mark.parametrize("name", ["v2", "jsonl"])
def test_train_writes_a_folder_that_answers(trained, name):
    folder, summary = trained[name]
    for file in ("config.json", "vocab.json", "answers.json", "model.weights.h5", "domain.npz"):
        assert os.path.isfile(os.path.join(folder, file)), file
    assert summary["epochs"] == 1 and summary["answers"] >= 2
    loaded = load_model_dir(str(folder), task="vqa")
    assert loaded.task == "vqa" and isinstance(loaded.model, VQAModel)
    assert loaded.config["max_question_length"] >= 1 and loaded.config["resize_policy"] == "stretch"
    image = os.path.join(VQA_V2, "train2014", "COCO_train2014_000000000009.jpg")
    results = answer_questions(loaded, image, ["What animal is this?", "", "zorblax frobnicate quux?"])
    assert len(results) == 3
    for r in results:
        assert r["answer"] in loaded.answers and 0.0 < r["score"] <= 1.0
        assert r["attention"].shape == loaded.model.grid[:2]
    with open(image, "rb") as f:  # bytes work too, and give the same answer
        assert answer_questions(loaded, f.read(), ["What animal is this?"])[0]["answer"] == results[0]["answer"]


def test_corrupt_image_raises_image_error(trained, tmp_path):
    loaded = load_model_dir(str(trained["jsonl"][0]))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(ImageError):
        answer_questions(loaded, str(bad), ["what is this"])
    with pytest.raises(ImageError):
        answer_questions(loaded, str(tmp_path / "missing.png"), ["what is this"])


def test_evaluate_reports_accuracy_by_type(trained):
    loaded = load_model_dir(str(trained["v2"][0]))
    result = evaluate_vqa(loaded, VQA_V2, split="train")
    # Exactly the answered training questions, each scored by the official formula on the model's own answer.
    from captioner.datasets import load_vqa_dataset, split_examples
    from captioner.metrics import vqa_accuracy
    examples = [e for e in split_examples(load_vqa_dataset(VQA_V2), "train") if e.answers]
    assert result["count"] == len(examples) > 0
    predicted = [answer_questions(loaded, e.image, [e.question])[0]["answer"] for e in examples]
    expected = vqa_accuracy(predicted, [e.answers for e in examples], [e.answer_type for e in examples])
    assert result["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-9)
    assert result["per_type"]["answer_type"] == pytest.approx(expected["per_type"])
    assert set(result["per_type"]) == {"answer_type", "question_type"}
    assert set(result["per_type"]["answer_type"]) <= {"yes/no", "number", "other"}
    with pytest.raises(UserError):
        evaluate_vqa(loaded, VQA_V2, split="test")


def test_train_refuses_bad_arguments(tmp_path):
    with pytest.raises(UserError):
        train_vqa(VQA_JSONL, str(tmp_path / "x"), mode="psychic", **TRAIN_TINY)
    with pytest.raises(UserError):
        train_vqa(str(tmp_path / "nothing.jsonl"), str(tmp_path / "x"), **TRAIN_TINY)


def test_ask_cli_with_the_bundled_model_on_edge_cases(tmp_path, capsys):
    """`captioner ask`: a normal question gets {"answer", "score"}; an empty question and a corrupt image are one
    error line with exit 2; a question of unseen words is answered with a note naming them."""
    from captioner import cli
    from captioner.scenes import generate_scenes
    scenes = generate_scenes(tmp_path / "scenes", 2, seed=11)["out_dir"]
    with open(os.path.join(scenes, "vqa.jsonl")) as f:
        qa = [json.loads(line) for line in f]
    count = next(q for q in qa if q["question"].startswith("how many objects"))
    image = os.path.join(scenes, count["image"])

    def ask(*argv):
        capsys.readouterr()
        rc = cli.main(["ask", *map(str, argv)])
        out, err = capsys.readouterr()
        return rc, out, err

    rc, out, err = ask(image, count["question"], "--json", "--attention-out", tmp_path / "pictures")
    reply = json.loads(out)
    assert rc == 0 and err == "" and reply["unknown_words"] == []
    assert reply["answer"] == count["answer"] and 0.5 < reply["score"] <= 1.0  # the bundled model counts right
    assert reply["out_of_domain"] is False and 0 < reply["domain_score"] < 1
    picture = tmp_path / "pictures" / (os.path.splitext(os.path.basename(image))[0] + ".attention.png")
    assert reply["attention_png"] == str(picture) and picture.stat().st_size > 0

    for question in ("", "  ?! "):
        rc, out, err = ask(image, question)
        assert rc == 2 and out == "" and err.count("\n") == 1 and "the question has no words" in err

    rc, out, err = ask(image, "how many zorblax are flibbering", "--json")
    assert rc == 0 and json.loads(out)["unknown_words"] == ["zorblax", "flibbering"]
    assert err.count("\n") == 1 and "some words are not in the model's vocabulary (zorblax, flibbering)" in err
    rc, out, err = ask(image, "qwertz zonk")
    assert rc == 0 and out.strip() and "no word is in the model's vocabulary" in err

    # `captioner evaluate` on VQA data without --model picks the bundled VQA model, not the captioner.
    rc = cli.main(["evaluate", os.path.join(scenes, "vqa.jsonl"), "--split", "all", "--json"])
    scores = json.loads(capsys.readouterr().out)
    assert rc == 0 and scores["count"] == len(qa) and "per_type" in scores
    from captioner import VQA
    from captioner.datasets import load_vqa_dataset
    from captioner.metrics import vqa_accuracy
    examples = load_vqa_dataset(os.path.join(scenes, "vqa.jsonl"))
    answered = [a.answer for a in VQA.load().ask_batch([e.image for e in examples], [e.question for e in examples])]
    assert scores["accuracy"] == pytest.approx(vqa_accuracy(answered, [e.answers for e in examples])["accuracy"])
    assert scores["domain"]["images"] == 2 and scores["domain"]["out_of_domain"] == 0

    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    rc, out, err = ask(corrupt, count["question"])
    assert rc == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
