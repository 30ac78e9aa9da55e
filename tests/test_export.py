"""SavedModel exports (captioner.export, lm.export): the graph's pixels, captions, answers and texts equal the
Python ones, a plain-TensorFlow process (keras, lm and captioner unimportable) serves them, bad images give error
rows without failing the request, and a model trained under KERAS_BACKEND=jax exports.

The end-to-end part builds tiny random models (small_cnn at 32x32, a 2-layer LSTM LM, a small VQA model), exports
them once per module and serves every SavedModel from ONE child process, so TensorFlow starts only a few times.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
CAPTION_WORDS = "a the red blue green circle square triangle above below left of right small big cat man".split()
LM_WORDS = "the a cat dog sat on mat ran far away and then it was good bad big small".split()
QUESTION_WORDS = "what color is the circle shape square how many objects are there red blue".split()
ANSWERS = ["red", "blue", "green", "circle", "square", "2", "3", "yes", "no"]
PROMPTS = ["The cat", "", "a DOG ran, far away!", "zebra's unknown words", "it’s <unk> then", "ſmall K dog"]
QUESTIONS = ["what color is the circle", "", "How MANY objects are there?", "zebra giraffe",
             "what shape is the red square is the blue circle there"]


def _encode(image, fmt="PNG", **kw) -> bytes:
    from PIL import Image
    im = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _test_images() -> dict[str, bytes]:
    """skimage photos (JPEG and PNG), drawn shapes, and the awkward cases: alpha, palette with tRNS, 16-bit grey,
    EXIF orientations 2..8, grey JPEG, GIF, 8- and 24-bit BMP, a tiny image."""
    import skimage.data
    from PIL import Image, ImageDraw
    out = {}
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera"):
        pixels = getattr(skimage.data, name)()
        out[f"{name}.jpg"] = _encode(pixels, "JPEG", quality=90)
        out[f"{name}.png"] = _encode(pixels)
    rng = np.random.default_rng(0)
    for i in range(4):
        im = Image.new("RGB", (int(rng.integers(40, 160)), int(rng.integers(40, 160))),
                       tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(im)
        for _ in range(3):
            x, y = (int(v) for v in rng.integers(0, 30, 2))
            draw.ellipse([x, y, x + int(rng.integers(10, 40)), y + int(rng.integers(10, 40))],
                         fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        out[f"shapes{i}.png"] = _encode(im)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    out["rgba.png"] = _encode(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"))
    out["palette_trns.png"] = _encode(Image.fromarray(rgb).quantize(64), transparency=5)
    out["grey16.png"] = _encode(Image.fromarray(rng.integers(0, 65536, (37, 53)).astype(np.uint16)))
    out["tiny.png"] = _encode(rgb[:5, :3])
    out["grey.jpg"] = _encode(skimage.data.camera()[::3, ::2], "JPEG")
    out["palette.gif"] = _encode(Image.fromarray(rgb).quantize(64), "GIF")
    out["rgb.bmp"] = _encode(rgb, "BMP")
    out["palette.bmp"] = _encode(Image.fromarray(rgb).quantize(64), "BMP")
    chelsea = skimage.data.chelsea()[::2, ::2]
    for orientation in range(2, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        out[f"exif{orientation}.jpg"] = _encode(chelsea, "JPEG", exif=exif.tobytes())
    return out


# ============================================================================================ fast: graph pieces


def test_import_needs_no_tensorflow():
    """`import captioner, lm` and the export modules work where TensorFlow is missing; exporting then says why."""
    code = textwrap.dedent("""
        import sys
        sys.modules["tensorflow"] = None
        import captioner, lm, captioner.export, lm.export
        from lm.errors import UserError
        from lm.export import import_tensorflow
        try:
            import_tensorflow()
        except UserError as e:
            print("ERR", e)
    """)
    result = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ERR exporting a SavedModel needs TensorFlow" in result.stdout


def test_graph_pixels_equal_load_images():
    """decode_and_resize_graph == captioner.images.load_images, bit for bit, for every policy; bad bytes give a
    status and a one-line message instead of an exception."""
    import tensorflow as tf
    from captioner.export import decode_and_resize_graph
    from captioner.images import load_images
    images = _test_images()
    images.update({"truncated.jpg": images["coffee.jpg"][:2000], "text.txt": b"hello world", "empty": b""})
    names, data = list(images), list(images.values())
    for size, policy in (((40, 24), "center_crop"),):  # every policy: the next test
        expected, errors = load_images(data, size, policy)
        pixels, status, messages = decode_and_resize_graph(tf.constant(data), size, policy)
        pixels, status, messages = pixels.numpy(), status.numpy(), [m.decode() for m in messages.numpy()]
        for i, name in enumerate(names):
            assert (errors[i] is None) == (status[i] == 0), (name, errors[i], messages[i])
            np.testing.assert_array_equal(pixels[i], expected[i], err_msg=f"{name} {size} {policy}")
    bad = {name: messages[i] for i, name in enumerate(names) if messages[i]}
    assert set(bad) == {"truncated.jpg", "text.txt", "empty"}
    assert "corrupt or truncated JPEG" in bad["truncated.jpg"] and bad["truncated.jpg"].startswith("image ")
    assert "not a JPEG, PNG, GIF or BMP" in bad["text.txt"] and "empty" in bad["empty"]
    assert all("\n" not in m for m in bad.values())


def test_pillow_resize_graph_matches_pillow_on_random_sizes():
    """Pillow's bicubic resize (coefficients, fixed-point rounding, pass order) reproduced exactly, including the
    sizes where Pillow switches between horizontal-first and vertical-first."""
    import tensorflow as tf
    from captioner import export
    from captioner.images import resize_image
    rng = np.random.default_rng(1)
    cases = [(int(h), int(w)) for h, w in rng.integers(1, 120, (24, 2))]
    cases += [(32 + 2 * d + e, 32 + d) for d in (3, 10) for e in (-1, 0, 1)]  # around the pass-order rule
    resize = {policy: tf.function(lambda p, policy=policy: export._resize_policy(tf, p, 32, 32, policy),
                                  input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
              for policy in ("stretch", "center_crop", "pad")}
    for i, (h, w) in enumerate(cases):
        pixels = np.cumsum(rng.integers(0, 60, (h, w, 3)), axis=1).astype(np.uint8)
        policy = ("stretch", "center_crop", "pad")[i % 3]
        np.testing.assert_array_equal(resize[policy](tf.constant(pixels)).numpy(),
                                      resize_image(pixels, (32, 32), policy), err_msg=f"{h}x{w} {policy}")


def test_tokenize_graph_matches_lm_text():
    import tensorflow as tf
    from lm.export import tokenize_graph
    from lm.text import tokenize
    texts = PROMPTS + QUESTIONS + ["Don't STOP—it's 3:45 p.m.; x’y’z a'b'", "ÉCOLE naïve café 42nd <UNK> <pad>",
                                   "tabs\tand\nnewlines  ", "İstanbul ǅemal ſtar Kelvin",
                                   "¿Qué es esto? これは何ですか Ελληνικά ٣٤ snake_case"]
    graph = [[t.decode() for t in row] for row in tokenize_graph(tf.constant(texts)).to_list()]
    assert graph == [tokenize(t) for t in texts]


def test_export_refuses_a_folder_that_is_not_a_savedmodel(tmp_path):
    from lm.errors import UserError
    from lm.export import prepare_out_dir
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty and holds no SavedModel"):
        prepare_out_dir(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_ngram_model_is_not_exportable(tmp_path):
    from lm.checkpoint import save_model_dir
    from lm.errors import UserError
    from lm.export import export_language_model
    from lm.ngram import KneserNeyLM
    from lm.vocab import Vocabulary
    sentences = [["the", "cat", "sat"], ["the", "dog", "ran"]]
    vocab = Vocabulary.build(sentences)
    save_model_dir(tmp_path / "ngram", "ngram", KneserNeyLM(order=2, vocab=vocab).fit(sentences), vocab)
    with pytest.raises(UserError, match="n-gram model cannot be exported"):
        export_language_model(tmp_path / "out", tmp_path / "ngram")
    assert not (tmp_path / "out").exists()


# ============================================================================================ slow: end to end


_CHILD = textwrap.dedent("""
    # Serves SavedModels with plain TensorFlow: the project's packages and Keras cannot be imported here.
    import json, sys
    for name in ("keras", "lm", "captioner", "PIL"):
        sys.modules[name] = None
    blocked = []
    for name in ("keras", "lm", "captioner"):
        try:
            __import__(name)
        except ImportError:
            blocked.append(name)
    import numpy as np
    import tensorflow as tf
    jobs = json.load(open(sys.argv[1]))
    results, models = [], {}
    for job in jobs:
        if job["dir"] not in models:
            models[job["dir"]] = tf.saved_model.load(job["dir"]).signatures["serving_default"]
        serve = models[job["dir"]]
        feeds = {}
        for key, values in job["feeds"].items():
            feeds[key] = tf.constant([open(v, "rb").read() for v in values] if job["files"].get(key) else values,
                                     dtype=tf.string)
        try:
            out = serve(**feeds)
            row = {}
            for key, value in out.items():
                value = value.numpy()
                if value.dtype == object:  # strings, of any rank (all_captions is [batch, n])
                    value = np.vectorize(lambda b: b.decode(), otypes=[object])(value)
                row[key] = value.tolist()
            results.append(row)
        except Exception as e:  # noqa: BLE001 - reported to the test
            results.append({"exception": type(e).__name__, "message": str(e)[:500]})
    json.dump({"blocked": blocked, "results": results}, open(sys.argv[2], "w"))
""")

_JAX_CHILD = textwrap.dedent("""
    # Trains a tiny LSTM language model for three steps under KERAS_BACKEND=jax, saves it, and exports it from this
    # JAX process (export_language_model re-runs itself with the TensorFlow backend).
    import json, sys
    import keras, numpy as np
    assert keras.backend.backend() == "jax", keras.backend.backend()
    from lm import checkpoint
    from lm.export import export_language_model
    from lm.inference import generate
    from lm.text import tokenize
    from lm.vocab import Vocabulary
    folder, out, prompts, words = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
    keras.utils.set_random_seed(5)
    vocab = Vocabulary(words)
    model = checkpoint.build_model("lstm", {"vocab_size": len(vocab), "cell_type": "lstm", "units": 16})
    x = np.random.default_rng(0).integers(3, len(vocab), (4, 9)).astype("int32")
    model.compile(optimizer=keras.optimizers.Adam(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:, :-1], x[:, 1:], epochs=3, batch_size=4, verbose=0)
    checkpoint.save_model_dir(folder, "lstm", model, vocab, {"mode": "stream"})
    export_language_model(out, folder, max_tokens=8)
    loaded = checkpoint.load_model_dir(folder)
    texts = [" ".join(tokenize(p) + generate(loaded, tokenize(p), 8, temperature=0)) for p in prompts]
    print(json.dumps({"texts": texts}))
""")


def _scaled(model, layers, factor):
    """Random models are nearly uniform; sharper weights give captions that differ from image to image."""
    for layer in layers:
        layer.kernel.assign(layer.kernel * factor)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Model folders, their SavedModels, test images, Python-side results and the plain-TF child's results."""
    import keras
    from captioner.export import export_captioner, export_vqa
    from captioner.model import build_captioner, load_model_dir, save_model_dir
    from captioner.vqa import answer_questions, build_vqa_model
    from lm import checkpoint
    from lm.export import export_language_model
    from lm.inference import generate
    from lm.text import tokenize
    from lm.vocab import Vocabulary

    from captioner.scenes import generate_scenes

    root = tmp_path_factory.mktemp("export")
    files = _test_images()
    scenes = generate_scenes(root / "scenes", 6, seed=1)["out_dir"]  # synthetic scenes, as the models train on
    good = [str(root / name) for name in files] + sorted(
        os.path.join(scenes, "images", name) for name in os.listdir(os.path.join(scenes, "images")))
    files.update({"truncated.jpg": files["coffee.jpg"][:2000], "notes.txt": b"not an image", "void": b""})
    for name, data in files.items():
        with open(root / name, "wb") as f:
            f.write(data)

    # A language model trained and saved under JAX, exported from that JAX process (runs while this one works).
    jax_env = {**ENV, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    jax_run = subprocess.Popen([sys.executable, "-c", _JAX_CHILD, str(root / "jax_model"), str(root / "jax_saved"),
                                json.dumps(PROMPTS), json.dumps(LM_WORDS)], env=jax_env, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    keras.utils.set_random_seed(2)
    caption_vocab = Vocabulary(CAPTION_WORDS)
    captioner = build_captioner({"vocab_size": len(caption_vocab), "backbone": "small_cnn", "image_size": [32, 32],
                                 "decoder": {"embed_dim": 16, "units": 32, "attention_dim": 16, "dropout": 0.0}})
    decoder = captioner.decoder
    _scaled(captioner, [decoder.head, *decoder.init_states, decoder.out_hidden, decoder.gate], 4.0)
    # "data" as training writes it: the full local path, which must not travel with the export
    save_model_dir(root / "caption_model", "caption", captioner, caption_vocab,
                   {"max_length": 8, "data": str(root / "private" / "dataset_mine.json")})

    keras.utils.set_random_seed(1)
    lm_vocab = Vocabulary(LM_WORDS)
    language_model = checkpoint.build_model("lstm", {"vocab_size": len(lm_vocab), "cell_type": "lstm", "units": 16,
                                                     "num_layers": 2})
    for weight in language_model.weights:
        weight.assign(weight * 3.0)
    checkpoint.save_model_dir(root / "lm_model", "lstm", language_model, lm_vocab, {"mode": "stream"})

    keras.utils.set_random_seed(3)
    question_vocab = Vocabulary(QUESTION_WORDS)
    vqa = build_vqa_model({"num_answers": len(ANSWERS), "vocab_size": len(question_vocab), "image_size": [32, 32],
                           "embed_dim": 8, "units": 16, "attention_dim": 8, "dropout": 0.0,
                           "classifier_units": 0})
    _scaled(vqa, [vqa.classifier, vqa.question_proj, vqa.image_proj], 6.0)
    save_model_dir(root / "vqa_model", "vqa", vqa, question_vocab,
                   {"max_question_length": 6, "resize_policy": "stretch"}, answers=ANSWERS)

    # Out-of-domain statistics from the scenes (the photos are then outside), as training writes them.
    from captioner.domain import calibrate_model_dir
    from captioner.images import load_images
    scene_pixels, _ = load_images([g for g in good if os.sep + "scenes" + os.sep in g], (32, 32))
    for folder in ("caption_model", "vqa_model"):
        calibrate_model_dir(root / folder, scene_pixels[:4], scene_pixels[4:])
    export_captioner(root / "caption_saved", root / "caption_model", beam_width=3)
    export_captioner(root / "caption_flags_saved", root / "caption_model", **SEARCH_FLAGS)
    export_language_model(root / "lm_saved", root / "lm_model", max_tokens=12)
    export_vqa(root / "vqa_saved", root / "vqa_model")
    jax_out, jax_err = jax_run.communicate(timeout=300)
    assert jax_run.returncode == 0, jax_err[-3000:]

    loaded = load_model_dir(root / "caption_model")
    lm_loaded, jax_loaded = checkpoint.load_model_dir(root / "lm_model"), checkpoint.load_model_dir(root / "jax_model")
    from captioner.api import VQA, Captioner
    flags = {k: v for k, v in SEARCH_FLAGS.items() if k != "beam_width"}
    python = {
        "captions": Captioner(loaded).caption(good, beam=3),
        "captions_flags": Captioner(loaded).caption(good[:5], beam=SEARCH_FLAGS["beam_width"], **flags),
        "texts": [" ".join(tokenize(p) + generate(lm_loaded, tokenize(p), 12, temperature=0)) for p in PROMPTS],
        "jax_tf": [" ".join(tokenize(p) + generate(jax_loaded, tokenize(p), 8, temperature=0)) for p in PROMPTS],
        "jax_jax": json.loads(jax_out.strip().splitlines()[-1])["texts"],
    }
    vqa_loaded = load_model_dir(root / "vqa_model", task="vqa")
    pairs = [(good[i], QUESTIONS[i % len(QUESTIONS)]) for i in range(0, len(good), 2)]
    python["answers"] = [answer_questions(vqa_loaded, p, [q])[0] for p, q in pairs]
    python["caption_domain"] = [r.domain_score for r in Captioner.load(root / "caption_model").caption(good)]
    python["vqa_domain"] = [a.domain_score for a in VQA.load(root / "vqa_model").ask_batch(*zip(*pairs))]

    mixed = good[:3] + [str(root / "truncated.jpg"), good[3], str(root / "notes.txt"), str(root / "void")] + good[4:6]
    jobs = [
        {"dir": str(root / "caption_saved"), "feeds": {"images": good}, "files": {"images": True}},
        {"dir": str(root / "caption_saved"), "feeds": {"images": mixed}, "files": {"images": True}},
        {"dir": str(root / "caption_saved"), "feeds": {"images": good[:2]}, "files": {"images": True}},
        {"dir": str(root / "caption_saved"), "feeds": {"images": []}, "files": {"images": True}},
        {"dir": str(root / "lm_saved"), "feeds": {"prompts": PROMPTS}, "files": {}},
        {"dir": str(root / "vqa_saved"), "feeds": {"images": [p for p, _ in pairs], "questions": [q for _, q in pairs]},
         "files": {"images": True}},
        {"dir": str(root / "jax_saved"), "feeds": {"prompts": PROMPTS}, "files": {}},
        {"dir": str(root / "caption_flags_saved"), "feeds": {"images": good[:5]}, "files": {"images": True}},
        {"dir": str(root / "vqa_saved"), "feeds": {"images": [], "questions": []}, "files": {"images": True}},
    ]
    with open(root / "jobs.json", "w") as f:
        json.dump(jobs, f)
    with open(root / "child.py", "w") as f:
        f.write(_CHILD)
    child_env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, str(root / "child.py"), str(root / "jobs.json"), str(root / "out.json")],
                            env=child_env, cwd=str(root), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(root / "out.json") as f:
        served = json.load(f)
    return {"root": root, "good": good, "mixed": mixed, "python": python, "served": served,
            "grid": loaded.model.grid, "vqa_grid": vqa_loaded.model.grid}


@pytest.mark.slow
def test_child_process_could_not_import_the_project(exported):
    assert exported["served"]["blocked"] == ["keras", "lm", "captioner"]


@pytest.mark.slow
def test_savedmodel_captions_equal_python_captions(exported):
    python = exported["python"]["captions"]
    served = exported["served"]["results"][0]
    assert [r["caption"] for r in python] == served["captions"]
    assert len(set(served["captions"])) >= 4  # the images really get different captions
    np.testing.assert_allclose(served["scores"], [r["score"] for r in python], atol=1e-4)
    assert served["lengths"] == [len(r["words"]) for r in python]
    assert served["errors"] == [""] * len(python)
    gh, gw, _ = exported["grid"]
    attention = np.asarray(served["attention"])  # (batch, T, h', w')
    assert attention.shape == (len(python), 8, gh, gw)
    for row, r in zip(attention, python):
        steps = len(r["attention"])  # the words, then the <eos> step if there was one
        np.testing.assert_allclose(row[:steps], r["attention"], atol=1e-5)
        assert not row[steps:].any()


SEARCH_FLAGS = {"beam_width": 3, "length_penalty": 0.5, "min_length": 2, "block_repeats": 2, "num_captions": 2}


@pytest.mark.slow
def test_savedmodel_search_flags_equal_python_captions(exported):
    """--length-penalty, --min-length, --block-repeats and --num-captions give the same captions in the graph."""
    python = exported["python"]["captions_flags"]
    served = exported["served"]["results"][7]
    assert served["captions"] == [r["caption"] for r in python]
    assert served["all_captions"] == [[c["caption"] for c in r["captions"]] for r in python]
    np.testing.assert_allclose(served["all_scores"], [[c["score"] for c in r["captions"]] for r in python],
                               atol=1e-4)
    for r in python:
        assert r["captions"][0]["caption"] == r["caption"] and r["captions"][0]["score"] >= r["captions"][1]["score"]
        for c in r["captions"]:
            words = c["caption"].split()
            assert len(words) >= 2  # min_length
            assert len(set(zip(words, words[1:]))) == len(words) - 1  # no bigram twice


@pytest.mark.slow
def test_bad_images_give_error_rows_and_the_server_keeps_serving(exported):
    python = {r["image"]: r for r in exported["python"]["captions"]}
    mixed, served = exported["mixed"], exported["served"]["results"][1]
    for i, path in enumerate(mixed):
        name = os.path.basename(path)
        if name in ("truncated.jpg", "notes.txt", "void"):
            assert served["captions"][i] == "" and served["scores"][i] == float("-inf")
            assert served["errors"][i].startswith(f"image {i}: ") and "\n" not in served["errors"][i]
            assert not np.asarray(served["attention"][i]).any()
        else:
            assert served["captions"][i] == python[path]["caption"] and served["errors"][i] == ""
    assert "corrupt or truncated JPEG" in served["errors"][3]
    assert "not a JPEG, PNG, GIF or BMP" in served["errors"][5]
    assert "empty" in served["errors"][6]
    after = exported["served"]["results"][2]  # the next request, same process
    assert after["captions"] == [python[p]["caption"] for p in exported["good"][:2]]
    empty = exported["served"]["results"][3]
    assert empty["captions"] == [] and np.asarray(empty["attention"]).shape[0] == 0


@pytest.mark.slow
def test_exported_assets_hold_no_local_paths(exported):
    with open(exported["root"] / "caption_saved" / "assets.extra" / "config.json") as f:
        config = json.load(f)
    assert config["data"] == "dataset_mine.json" and config["max_length"] == 8


def test_language_model_savedmodel_equals_greedy_generate(exported):
    served = exported["served"]["results"][4]
    assert served["texts"] == exported["python"]["texts"]
    assert any(len(t.split()) > 3 for t in served["texts"])


@pytest.mark.slow
def test_savedmodels_report_the_domain_score_as_python_does(exported):
    python, served = exported["python"], exported["served"]["results"]
    np.testing.assert_allclose(served[0]["domain_scores"], python["caption_domain"], rtol=1e-4)
    assert served[0]["out_of_domain"] == [s > 1 for s in python["caption_domain"]]
    assert any(served[0]["out_of_domain"]) and not all(served[0]["out_of_domain"])  # photos out, scenes in
    np.testing.assert_allclose(served[5]["domain_scores"], python["vqa_domain"], rtol=1e-4)
    mixed = served[1]  # a bad image: NaN and not out of domain
    assert [e != "" for e in mixed["errors"]] == [np.isnan(s) for s in mixed["domain_scores"]]


def test_vqa_savedmodel_equals_answer_questions(exported):
    python = exported["python"]["answers"]
    served = exported["served"]["results"][5]
    assert served["answers"] == [r["answer"] for r in python]
    # A random model may give one answer everywhere; its scores and attention still vary from input to input, so
    # equality below compares different numbers per row, not one repeated value.
    assert len(set(np.round(served["scores"], 4))) >= 2
    np.testing.assert_allclose(served["scores"], [r["score"] for r in python], atol=1e-5)
    np.testing.assert_allclose(served["attention"], [r["attention"] for r in python], atol=1e-5)


def test_vqa_savedmodel_answers_an_empty_batch(exported):
    """0 images and 0 questions: empty outputs of the right shapes, not an error."""
    empty = exported["served"]["results"][8]
    assert "exception" not in empty, empty
    grid_h, grid_w, _ = exported["vqa_grid"]
    assert empty["answers"] == [] and empty["scores"] == [] and empty["errors"] == []
    assert empty["domain_scores"] == [] and empty["out_of_domain"] == []
    assert np.asarray(empty["attention"]).reshape(-1, grid_h, grid_w).shape == (0, grid_h, grid_w)


@pytest.mark.slow
def test_model_trained_under_jax_exports(exported):
    """Weights written by the JAX backend, exported from a JAX process: the SavedModel continues prompts as
    `generate` does with that folder, under TensorFlow here and under JAX there."""
    served = exported["served"]["results"][6]
    assert served["texts"] == exported["python"]["jax_tf"]
    assert served["texts"] == exported["python"]["jax_jax"]


@pytest.mark.slow
def test_saved_model_cli_lists_the_signatures(exported):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    if not os.path.isfile(cli):
        pytest.skip("saved_model_cli is not installed next to this Python")
    root = exported["root"]
    result = subprocess.run([cli, "show", "--all", "--dir", str(root / "caption_saved")], env=ENV,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    shown = result.stdout
    assert "signature_def['serving_default']" in shown
    assert "inputs['images']" in shown and "dtype: DT_STRING" in shown
    for output in ("captions", "scores", "attention", "lengths", "errors"):
        assert f"outputs['{output}']" in shown
    assert "shape: (-1, 8, 4, 4)" in shown  # attention (batch, T, h', w')
    assert os.path.isfile(root / "caption_saved" / "assets.extra" / "vocab.json")
