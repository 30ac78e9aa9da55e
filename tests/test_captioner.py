"""The captioner: CaptionDecoder (teacher forcing, masking, doubly stochastic loss, scheduled sampling), saving and
loading, and the `captioner` command line on the real dataset formats (Flickr8k token file + split lists, Karpathy
JSON) with tiny models: train -> caption (good, bad, --json, --attention-out) -> evaluate, --init-from-lm, one-line
errors, and a `captioner train` smoke run on JAX and PyTorch in child processes. Tiny configs; seconds each."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

from captioner import cli
from captioner.attention import doubly_stochastic_penalty
from captioner.decoder import CaptionDecoder
from captioner.model import ImageCaptioner, build_captioner, load_model_dir
from lm.vocab import Vocabulary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
FLICKR = os.path.join(FIXTURES, "flickr8k")
KARPATHY = os.path.join(FIXTURES, "karpathy", "dataset_flickr8k.json")
FLICKR_IMAGES = sorted(os.path.join(FLICKR, "Flicker8k_Dataset", f)
                       for f in os.listdir(os.path.join(FLICKR, "Flicker8k_Dataset")))
TINY = ["--epochs", "1", "--units", "16", "--embed", "8", "--attention-dim", "8", "--batch-size", "16",
        "--dropout", "0", "--max-length", "12"]

FEATURES = np.random.default_rng(0).normal(size=(3, 9, 6)).astype("float32")  # (batch, pixels, C)
TOKENS = np.array([[2, 5, 6, 7, 0, 0], [2, 8, 0, 0, 0, 0], [2, 4, 5, 6, 7, 9]], "int32")  # <bos> w.. <pad>


def decoder(**kwargs) -> CaptionDecoder:
    keras.utils.set_random_seed(0)
    config = dict(vocab_size=12, feature_dim=6, embed_dim=8, units=16, attention_dim=8, dropout=0.0, alpha_c=0.0)
    model = CaptionDecoder(**{**config, **kwargs})
    model((FEATURES[:1], TOKENS[:1]))
    return model


def run_main(argv, capsys):
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as e:  # a usage error (argparse)
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, code=2):
    assert rc == code, err
    lines = [line for line in err.strip().splitlines() if line.startswith("captioner:")]
    assert len(lines) == 1 and lines[0].startswith("captioner: error:"), err
    assert "Traceback" not in err


# ---- the decoder ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attention", [True, False])
def test_teacher_forcing_shapes(attention):
    model = decoder(attention=attention)
    logits, alphas = model((FEATURES, TOKENS), return_attention=True)
    assert tuple(logits.shape) == (3, 6, 12) and tuple(alphas.shape) == (3, 6, 9)
    if attention:
        np.testing.assert_allclose(np.asarray(alphas).sum(-1), 1.0, atol=1e-5)
    else:
        assert not np.asarray(alphas).any()
    assert tuple(model((FEATURES, TOKENS[:, :3])).shape) == (3, 3, 12)


@pytest.mark.parametrize("attention", [True, False])
def test_masked_loss_ignores_pad(attention):
    """More <pad> columns change neither the logits of the real steps, the loss, nor the attention penalty."""
    model = decoder(attention=attention, alpha_c=0.5 if attention else 0.0)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)  # as train_captioner
    targets = np.concatenate([TOKENS[:, 1:], np.zeros((3, 1), "int32")], axis=1)  # next words, <pad> after
    targets[0, 3] = 3  # <eos> after the last word of row 0
    logits = np.asarray(model((FEATURES, TOKENS)))
    penalty = [float(x) for x in model.losses]
    padded_tokens = np.pad(TOKENS, ((0, 0), (0, 4)))
    padded_targets = np.pad(targets, ((0, 0), (0, 4)))
    padded_logits = np.asarray(model((FEATURES, padded_tokens)))
    np.testing.assert_allclose(padded_logits[:, :6], logits, atol=1e-5)
    np.testing.assert_allclose(float(loss_fn(padded_targets, padded_logits)), float(loss_fn(targets, logits)),
                               rtol=1e-5)
    np.testing.assert_allclose([float(x) for x in model.losses], penalty, rtol=1e-5)
    # the loss is the mean cross-entropy over the non-<pad> targets only
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    mask = targets != 0
    manual = -np.take_along_axis(log_p, targets[..., None], -1)[..., 0][mask].mean()
    np.testing.assert_allclose(float(loss_fn(targets, logits)), manual, rtol=1e-5)


def test_doubly_stochastic_penalty_is_added():
    model = decoder(alpha_c=0.7)
    _, alphas = model((FEATURES, TOKENS), return_attention=True)
    assert len(model.losses) == 1
    mask = (TOKENS != 0).astype("float32")
    expected = 0.7 * float(doubly_stochastic_penalty(alphas, mask))
    np.testing.assert_allclose(float(model.losses[0]), expected, rtol=1e-5)
    coverage = (np.asarray(alphas) * mask[..., None]).sum(1)  # (batch, pixels)
    # per token, like the mean cross-entropy it is added to: sum over captions / number of tokens
    np.testing.assert_allclose(expected, 0.7 * ((1 - coverage) ** 2).sum() / mask.sum(), rtol=1e-5)
    off = decoder(alpha_c=0.0)
    off((FEATURES, TOKENS))
    assert not off.losses
    baseline = decoder(attention=False, alpha_c=1.0)  # nothing to regularise without attention
    baseline((FEATURES, TOKENS))
    assert not baseline.losses


@pytest.mark.parametrize("attention", [True, False])
def test_search_agrees_with_teacher_forcing(attention):
    """Feeding greedy's own words back under teacher forcing gives the same argmax words and the same score (with
    <pad> and <bos> banned, as search bans them): the step path of search and the (fused) whole-sequence path of
    training compute one model."""
    model = decoder(attention=attention)
    words, scores, _ = (np.asarray(x) for x in model.generate(FEATURES, method="greedy", max_length=6,
                                                              early_exit=False))
    tokens_in = np.concatenate([np.full((3, 1), 2), words[:, :-1]], axis=1).astype("int32")
    logits = np.array(model((FEATURES, tokens_in)))
    logits[..., [0, 2]] = -1e9  # search never picks <pad> or <bos>
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert not np.isin(words, [0, 2]).any()
    for row in range(3):
        ends = np.flatnonzero(words[row] == 3)
        real = ends[0] + 1 if len(ends) else 6
        np.testing.assert_array_equal(logits[row, :real].argmax(-1), words[row, :real])
        picked = log_p[row, np.arange(real), words[row, :real]]
        np.testing.assert_allclose(picked.mean(), scores[row], rtol=1e-4, atol=1e-5)


def test_scheduled_sampling_runs_and_trains():
    model = decoder(scheduled_sampling=1.0)
    forced = np.asarray(model((FEATURES, TOKENS), training=False))
    own = np.asarray(model((FEATURES, TOKENS), training=True))  # every input after the first is its own guess
    assert own.shape == forced.shape and np.isfinite(own).all()
    np.testing.assert_allclose(own[:, 0], forced[:, 0], atol=1e-5)  # step 0 always reads <bos>
    assert not np.allclose(own[:, 1:], forced[:, 1:], atol=1e-4)
    half = decoder(scheduled_sampling=0.5, alpha_c=0.1)
    half.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0))
    targets = np.concatenate([TOKENS[:, 1:], np.zeros((3, 1), "int32")], axis=1)
    history = half.fit((FEATURES, TOKENS), targets, epochs=2, batch_size=3, verbose=0)
    assert all(np.isfinite(history.history["loss"]))


# ---- saving and loading --------------------------------------------------------------------------------------------
def _same_outputs(a, b, inputs, search_inputs):
    np.testing.assert_allclose(np.asarray(b(inputs)), np.asarray(a(inputs)), atol=1e-6)
    for kwargs in ({"beam_width": 3}, {"method": "greedy"}):
        wa, sa, aa = a.generate(search_inputs, max_length=6, **kwargs)
        wb, sb, ab = b.generate(search_inputs, max_length=6, **kwargs)
        np.testing.assert_array_equal(np.asarray(wb), np.asarray(wa))
        np.testing.assert_allclose(np.asarray(sb), np.asarray(sa), atol=1e-6)
        np.testing.assert_allclose(np.asarray(ab), np.asarray(aa), atol=1e-6)


@pytest.mark.parametrize("attention", [True, False])
def test_decoder_keras_file_and_weights_round_trip(tmp_path, attention):
    model = decoder(attention=attention, alpha_c=0.3, scheduled_sampling=0.2)
    model.save(tmp_path / "decoder.keras")
    loaded = keras.saving.load_model(tmp_path / "decoder.keras")
    assert isinstance(loaded, CaptionDecoder) and loaded.get_config() == model.get_config()
    _same_outputs(model, loaded, (FEATURES, TOKENS), FEATURES)
    model.save_weights(tmp_path / "decoder.weights.h5")
    twin = CaptionDecoder.from_config(model.get_config())
    twin((FEATURES[:1], TOKENS[:1]))
    twin.load_weights(tmp_path / "decoder.weights.h5")
    _same_outputs(model, twin, (FEATURES, TOKENS), FEATURES)


def test_image_captioner_keras_file_and_weights_round_trip(tmp_path):
    keras.utils.set_random_seed(1)
    config = dict(vocab_size=12, backbone="small_cnn", image_size=[32, 32],
                  decoder=dict(embed_dim=8, units=16, attention_dim=8, dropout=0.0))
    model = build_captioner(config)
    images = np.random.default_rng(2).uniform(0, 255, size=(3, 32, 32, 3)).astype("float32")
    model.save(tmp_path / "captioner.keras")
    loaded = keras.saving.load_model(tmp_path / "captioner.keras")
    assert isinstance(loaded, ImageCaptioner)
    _same_outputs(model, loaded, (images, TOKENS), images)
    model.save_weights(tmp_path / "captioner.weights.h5")
    twin = build_captioner(config)
    twin.load_weights(tmp_path / "captioner.weights.h5")
    _same_outputs(model, twin, (images, TOKENS), images)


# ---- the command line on real dataset formats ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def flickr_model(tmp_path_factory):
    """`captioner train` on the Flickr8k token file + split lists: small_cnn end-to-end at 32x32. The data is given
    as a path relative to the working directory, as a user in their project folder would."""
    out = tmp_path_factory.mktemp("flickr") / "model"
    here = os.getcwd()
    os.chdir(FIXTURES)
    try:
        rc = cli.main(["train", "flickr8k", "--out", str(out), "--image-size", "32", "--json", *TINY])
    finally:
        os.chdir(here)
    assert rc == 0
    return out


def test_train_flickr8k_token_file(flickr_model):
    loaded = load_model_dir(flickr_model, task="caption")
    assert loaded.image_size == (32, 32) and loaded.model.backbone_name == "small_cnn"
    assert loaded.config["max_length"] == 12 and loaded.config["model"]["decoder"]["units"] == 16
    assert "woman" in loaded.vocab and "cat" in loaded.vocab
    assert loaded.config["data"] == "flickr8k"  # as given: no absolute path of this machine in the folder
    assert {"config.json", "vocab.json", "model.weights.h5", "domain.npz"} <= set(os.listdir(flickr_model))
    from captioner.domain import load_domain
    domain = load_domain(flickr_model)  # written by training: fitted on the train split, calibrated on val
    assert domain.train_images == 2 and domain.heldout_images == 2 and "flickr8k" in domain.trained_on.lower()
    import h5py
    with h5py.File(flickr_model / "model.weights.h5") as f:  # inference weights only: no Adam moments
        names = []
        f.visit(names.append)
    assert names and not any("optimizer" in n for n in names)


def test_train_karpathy_json_with_cached_features(tmp_path, capsys):
    """A frozen keras.applications backbone (random weights) goes through the cached-features path."""
    out = tmp_path / "model"
    rc, stdout, _ = run_main(["train", KARPATHY, "--out", out, "--backbone", "mobilenet_v2", "--weights", "none",
                              "--image-size", "32", "--json", *TINY], capsys)
    assert rc == 0
    summary = json.loads(stdout)
    assert summary["cached_features"] and summary["epochs"] == 1 and summary["train_images"] == 2
    assert summary["train_pairs"] == 10 and np.isfinite(summary["loss"][0])
    from captioner.features import open_feature_cache
    cache = open_feature_cache(summary["feature_cache"])
    assert len(cache) == 4 and cache.grid == (1, 1280)  # 32x32 -> a 1x1 grid of MobileNetV2 features
    rc, stdout, _ = run_main(["caption", FLICKR_IMAGES[0], "--model", out, "--beam", "2", "--json"], capsys)
    assert rc == 0 and json.loads(stdout)[0]["image"] == FLICKR_IMAGES[0]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Fixture images, two scikit-image photos written as PNG and JPEG, and one corrupt file."""
    from PIL import Image
    from skimage import data
    folder = tmp_path_factory.mktemp("photos")
    png, jpg, bad = folder / "astronaut.png", folder / "coffee.jpg", folder / "broken.jpg"
    Image.fromarray(data.astronaut()).save(png)
    Image.fromarray(data.coffee()).save(jpg, quality=90)
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return [*FLICKR_IMAGES[:2], str(png), str(jpg)], str(bad)


def test_caption_good_and_bad_images(flickr_model, photos, capsys):
    good, bad = photos
    rc, stdout, err = run_main(["caption", *good, bad, "--model", flickr_model], capsys)
    assert_one_line_error(rc, err, code=2)  # bad input, though the good images are captioned
    assert bad in err
    lines = stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == good
    vocab = load_model_dir(flickr_model).vocab
    for line in lines:
        assert set(line.split("\t")[1].split()) <= set(vocab.itos)


def test_caption_json_and_attention_pictures(flickr_model, photos, tmp_path, capsys):
    good, bad = photos
    pictures = tmp_path / "attention"
    rc, stdout, err = run_main(["caption", *good, bad, "--model", flickr_model, "--json", "--beam", "2",
                                "--attention-out", pictures], capsys)
    assert rc == 2 and "Traceback" not in err
    results = json.loads(stdout)
    assert [r["image"] for r in results] == good + [bad]
    for r in results[:-1]:
        assert {"image", "caption", "score", "domain_score", "out_of_domain"} <= set(r) and "error" not in r
        assert isinstance(r["caption"], str) and r["score"] <= 0
    assert set(results[-1]) == {"image", "error"} and bad in results[-1]["error"]
    written = sorted(os.listdir(pictures))
    assert written == sorted(os.path.splitext(os.path.basename(g))[0] + ".attention.png" for g in good)
    from PIL import Image
    with Image.open(pictures / written[0]) as im:
        assert im.size[0] > 100 and im.size[1] > 100


def test_caption_attention_matches_words(flickr_model):
    """One attention map per word (+ <eos> when the caption ended), also when no <eos> came within max_length."""
    from captioner.api import Captioner
    loaded = load_model_dir(flickr_model)
    for max_length in (2, 12):
        for r in Captioner(loaded).caption(FLICKR_IMAGES[:3], beam=2, max_length=max_length):
            steps = len(r["attention"])
            assert steps in (len(r["words"]), len(r["words"]) + 1) and steps <= max_length
            assert r["attention"].shape[1:] == loaded.model.grid[:2]
            np.testing.assert_allclose(r["attention"].reshape(steps, -1).sum(-1), 1.0, atol=1e-5)


def test_evaluate_function_scores(flickr_model):
    from captioner.evaluate import evaluate_captioner
    from captioner.datasets import load_caption_dataset, split_examples
    from captioner.metrics import caption_scores
    from captioner.api import Captioner
    loaded = load_model_dir(flickr_model)
    scores = evaluate_captioner(loaded, FLICKR, split="test", beam_width=2, meteor=False)
    assert scores["images"] == 2 and scores["METEOR"] is None
    # Exactly the metrics of the model's own beam-2 captions of the test split against their references.
    examples = split_examples(load_caption_dataset(FLICKR), "test")
    captions = Captioner(loaded).caption([e.image for e in examples], beam=2)
    expected = caption_scores({e.image_id: [" ".join(c) for c in e.captions] for e in examples},
                              {e.image_id: r["caption"] for e, r in zip(examples, captions)}, meteor=False)
    for key in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr", "exact_match"):
        assert scores[key] == pytest.approx(expected[key], abs=1e-9), key


@pytest.mark.slow
def test_evaluate_cli_json(flickr_model, capsys):
    """`captioner evaluate --json` with every metric (METEOR starts Java: the slow part)."""
    rc, stdout, _ = run_main(["evaluate", FLICKR, "--model", flickr_model, "--json", "--beam", "2"], capsys)
    assert rc == 0
    scores = json.loads(stdout)
    assert {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "exact_match"} <= set(scores)
    assert scores["images"] == 2
    from captioner.evaluate import evaluate_captioner
    direct = evaluate_captioner(load_model_dir(flickr_model), FLICKR, split="test", beam_width=2, meteor=False)
    for key in ("Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr", "exact_match"):
        assert scores[key] == pytest.approx(direct[key], abs=1e-9), key
    import shutil
    assert (scores["METEOR"] is None) == (shutil.which("java") is None)  # METEOR whenever Java is there
    assert scores["METEOR"] is None or 0 <= scores["METEOR"] <= 1
    rc, stdout, _ = run_main(["evaluate", FLICKR, "--model", flickr_model, "--json", "--beam", "2", "--no-meteor"],
                             capsys)
    fast = json.loads(stdout)
    assert rc == 0 and fast["METEOR"] is None and fast["CIDEr"] == scores["CIDEr"]


# ---- --init-from-lm ------------------------------------------------------------------------------------------------
def _lm_folder(folder, words, units=16, embed=8, cell="lstm"):
    from lm.checkpoint import save_model_dir
    from lm.model import LanguageModel
    keras.utils.set_random_seed(3)
    vocab = Vocabulary(words)
    model = LanguageModel(vocab_size=len(vocab), cell_type=cell, units=units, embed_dim=embed)
    model(ops.zeros((1, 2), "int32"))
    save_model_dir(folder, cell, model, vocab, {"mode": "sentence"})
    return model, vocab


def test_init_decoder_from_lm_copies_shared_words(tmp_path):
    from captioner.training import init_decoder_from_lm
    lm_model, lm_vocab = _lm_folder(tmp_path / "lm", ["a", "cat", "dog", "on", "mat", "zebra"])
    vocab = Vocabulary(["a", "cat", "sits", "on", "grass"])
    model = build_captioner(dict(vocab_size=len(vocab), backbone="small_cnn", image_size=[32, 32],
                                 decoder=dict(embed_dim=8, units=16, attention_dim=8)))
    report = init_decoder_from_lm(model.decoder, vocab, tmp_path / "lm")
    shared = [w for w in vocab.itos if w in lm_vocab]  # the 4 specials, a, cat, on
    assert f"embedding: {len(shared)} of {len(vocab)} caption words copied" in report
    emb, lm_emb = np.asarray(model.decoder.embedding.embeddings), np.asarray(lm_model.embedding.embeddings)
    for w in shared:
        np.testing.assert_array_equal(emb[vocab.stoi[w]], lm_emb[lm_vocab.stoi[w]])
    assert not np.allclose(emb[vocab.stoi["grass"]], lm_emb[lm_vocab.stoi["zebra"]])
    src, dst = lm_model.stack.cells[0], model.decoder.stack.cells[0]
    np.testing.assert_array_equal(np.asarray(dst.recurrent_kernel), np.asarray(src.recurrent_kernel))
    np.testing.assert_array_equal(np.asarray(dst.bias), np.asarray(src.bias))
    np.testing.assert_array_equal(np.asarray(dst.kernel)[:8], np.asarray(src.kernel))  # word rows
    assert "kernel: copied the 8 word-input rows of 136" in report  # 8 word + 128 context rows
    assert "recurrent_kernel: copied (16, 64)" in report

    # Shapes that differ are reported, not copied; another cell type is refused.
    _lm_folder(tmp_path / "wide", ["a", "cat"], units=12, embed=6)
    report = init_decoder_from_lm(model.decoder, vocab, tmp_path / "wide")
    assert "embedding: LM 6 vs decoder 8 dims: not copied" in report
    assert "recurrent_kernel: LM (12, 48) vs decoder (16, 64): not copied" in report
    assert "kernel: LM (6, 48) vs decoder (136, 64): not copied" in report
    _lm_folder(tmp_path / "gru", ["a", "cat"], cell="gru")
    from lm.errors import UserError
    with pytest.raises(UserError, match="the LM is gru but the decoder cell is lstm"):
        init_decoder_from_lm(model.decoder, vocab, tmp_path / "gru")


def test_cli_train_init_from_lm(tmp_path, capsys):
    _lm_folder(tmp_path / "lm", ["a", "woman", "cat", "the", "in", "orange", "zebra"])
    rc, stdout, _ = run_main(["train", FLICKR, "--out", tmp_path / "model", "--image-size", "32",
                              "--init-from-lm", tmp_path / "lm", *TINY], capsys)
    assert rc == 0
    report = [line for line in stdout.splitlines() if line.startswith("init from LM:")]
    assert len(report) == 1
    assert "caption words copied from the LM" in report[0] and "recurrent_kernel: copied (16, 64)" in report[0]
    assert "wrote" in stdout


# ---- errors --------------------------------------------------------------------------------------------------------
def test_cli_bad_input_is_one_line(tmp_path, capsys, flickr_model):
    not_model = tmp_path / "not_model"
    not_model.mkdir()
    cases = [
        ["train", tmp_path / "missing.json", "--out", tmp_path / "o1"],
        ["train", FLICKR, "--out", tmp_path / "o2", "--backbone", "vgg99"],
        ["train", FLICKR, "--out", tmp_path / "o3", "--split-train", "nosuchsplit"],
        ["train", FLICKR, "--out", tmp_path / "o4", "--init-from-lm", not_model, *TINY],
        ["caption", FLICKR_IMAGES[0], "--model", not_model],
        ["caption", FLICKR_IMAGES[0], "--model", tmp_path / "no_such_folder"],
        ["caption", FLICKR_IMAGES[0], "--model", flickr_model, "--beam", "0"],
        ["evaluate", FLICKR, "--model", not_model],
        ["evaluate", tmp_path / "missing", "--model", flickr_model],
    ]
    for argv in cases:
        rc, _, err = run_main(argv, capsys)
        assert_one_line_error(rc, err)


def test_missing_image_only_is_exit_2(flickr_model, tmp_path, capsys):
    rc, stdout, err = run_main(["caption", tmp_path / "nope.jpg", "--model", flickr_model], capsys)
    assert_one_line_error(rc, err, code=2)
    assert stdout == ""


# ---- other backends ------------------------------------------------------------------------------------------------
CHILD = r"""
import contextlib, importlib, io, json, sys
backend, fixture, image, out = sys.argv[1:5]
try:
    importlib.import_module(backend)
except ModuleNotFoundError as e:  # not installed: skip; installed but broken: fail (the traceback shows why)
    if e.name != backend:
        raise
    print(f"cannot import {backend}: {e}")
    sys.exit(77)
import keras
assert keras.backend.backend() == backend, keras.backend.backend()
from captioner.cli import main
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    rc = main(["train", fixture, "--out", out, "--image-size", "32", "--epochs", "1", "--units", "8", "--embed", "8",
               "--attention-dim", "8", "--batch-size", "16", "--max-length", "8", "--json"])
assert rc == 0, rc
summary = json.loads(buf.getvalue())
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    rc = main(["caption", image, "--model", out, "--beam", "2", "--json"])
assert rc == 0, rc
print("RESULT " + json.dumps({"backend": keras.backend.backend(), "summary": summary,
                              "captions": json.loads(buf.getvalue())}))
"""


@pytest.mark.slow
def test_train_and_caption_on_jax_and_torch(tmp_path):
    """`captioner train` (one step: 10 pairs, batch 16) and `caption` under KERAS_BACKEND=jax and =torch, side by
    side in child processes."""
    procs = {}
    for backend in ("jax", "torch"):
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu",
               "CUDA_VISIBLE_DEVICES": ""}
        procs[backend] = subprocess.Popen(
            [sys.executable, "-c", CHILD, backend, FLICKR, FLICKR_IMAGES[0], str(tmp_path / backend)], cwd=ROOT,
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ran = []
    for backend, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        if proc.returncode == 77:
            continue
        assert proc.returncode == 0, f"{backend}:\n{stdout[-2000:]}\n{stderr[-3000:]}"
        result = json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[7:])
        assert result["backend"] == backend
        assert result["summary"]["epochs"] == 1 and np.isfinite(result["summary"]["loss"][0])
        assert isinstance(result["captions"][0]["caption"], str)
        ran.append(backend)
    if not ran:
        pytest.skip("neither JAX nor PyTorch is importable")


def test_attention_png_names_never_collide():
    from captioner.cli import _attention_png_names
    names = _attention_png_names(["a/x.jpg", "b/x.jpg", "x.png", "y.jpg", "x-2.jpg", ".jpg"])
    assert names == ["x.attention.png", "x-2.attention.png", "x-3.attention.png", "y.attention.png",
                     "x-2-2.attention.png", ".jpg.attention.png"]
    assert len(set(names)) == len(names)


def test_soft_attention_builds_whichever_method_runs_first():
    """`project_features` before the first call (the decoder's order) and a plain call give the same layer."""
    from captioner.attention import SoftAttention
    features = np.random.default_rng(0).random((2, 6, 5), dtype="float32")  # (batch, pixels, channels)
    hidden = np.random.default_rng(1).random((2, 4), dtype="float32")  # (batch, units)
    first = SoftAttention(3)
    keys = first.project_features(features)  # (2, 6, 3)
    context, alpha = first(features, keys, hidden)  # (2, 5), (2, 6)
    assert tuple(context.shape) == (2, 5) and len(first.weights) == 5
    np.testing.assert_allclose(np.asarray(alpha).sum(-1), 1.0, rtol=1e-5)
    second = SoftAttention(3)
    second(features, second.project_features(features), hidden)
    second.set_weights(first.get_weights())
    np.testing.assert_allclose(np.asarray(second(features, second.project_features(features), hidden)[0]),
                               np.asarray(context), rtol=1e-6)


def test_best_epoch_divides_the_learning_rate_and_stops(tmp_path):
    """Epochs without validation gain divide the LR by lr_decay; `patience` of them stop training."""
    from lm.checkpoint import BestEpoch
    model = keras.Sequential([keras.layers.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    checkpoint = BestEpoch(tmp_path, lambda: {"x": lambda p: open(p, "w").close()}, patience=2, lr_decay=4.0,
                           baseline=0.5)  # as if an earlier epoch (or the starting model) had reached 0.5
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {"val_loss": 0.7})
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(2.5e-3)
    assert not model.stop_training
    checkpoint.on_epoch_end(1, {"val_loss": 0.6})
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(6.25e-4)
    assert model.stop_training and not os.listdir(tmp_path)  # nothing saved: no epoch beat the best
    checkpoint.on_epoch_end(2, {"val_loss": 0.4})
    assert os.listdir(tmp_path) == ["x"] and checkpoint.best_epoch == 3  # a gain writes the folder
