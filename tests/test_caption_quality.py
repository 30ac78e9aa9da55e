"""Caption quality pieces: CIDEr-D (vs pycocoevalcap), SCST (advantages, batches, a run on TF / JAX / PyTorch),
the learning-rate schedule, label smoothing, the per-token attention penalty, scheduled sampling, --init-from-lm,
and the scene error checks the benchmark reports.

The SCST run is a plain function so the JAX and PyTorch children run the very same code.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from lm.vocab import Vocabulary


# ---- CIDEr-D --------------------------------------------------------------------------------------------------------
def _random_corpus(seed=0, images=60):
    rng = np.random.default_rng(seed)
    words = "a red blue green circle square above below large small of left right and".split()

    def sentence(lo=0):
        return " ".join(rng.choice(words, int(rng.integers(lo, 10))))
    gts = {str(i): [sentence(1) for _ in range(int(rng.integers(1, 5)))] for i in range(images)}
    res = {k: [sentence()] for k in gts}
    res["3"] = [""]  # an empty caption
    res["4"] = [gts["4"][0]]  # a perfect one
    return gts, res


def test_cider_d_equals_pycocoevalcap():
    from pycocoevalcap.cider.cider import Cider
    from captioner.cider import CiderD, corpus_cider
    gts, res = _random_corpus()
    mean, per_image = Cider().compute_score(gts, res)
    ids = list(gts)
    refs = [[r.split() for r in gts[i]] for i in ids]
    cands = [res[i][0].split() for i in ids]
    scorer = CiderD(refs)
    mine = scorer.score(cands, np.arange(len(ids)))
    np.testing.assert_allclose(mine, per_image, atol=1e-6, rtol=0)
    assert abs(corpus_cider(refs, cands) - mean) < 1e-6
    np.testing.assert_allclose(scorer.score_against(cands, refs), per_image, atol=1e-6, rtol=0)
    assert mine[3] == 0 and mine[4] > mine.mean()
    # Document frequencies from a bigger corpus change the idf: the scores must move (the corpus is really used).
    bigger = CiderD(refs + [[["a", "red", "circle"]]] * 30)
    assert not np.allclose(bigger.score(cands, np.arange(len(ids))), mine)


# ---- SCST pieces ----------------------------------------------------------------------------------------------------
def test_self_critical_advantages_use_the_other_samples():
    import keras
    from captioner.scst import cut_at_eos, sampled_tokens, self_critical_advantages
    rewards = np.array([1.0, 2.0, 3.0, 0.5, 0.5, 2.0], "float32")  # two images, three samples each
    adv = keras.ops.convert_to_numpy(self_critical_advantages(rewards, 3))
    np.testing.assert_allclose(adv, [1 - 2.5, 2 - 2.0, 3 - 1.5, 0.5 - 1.25, 0.5 - 1.25, 2 - 0.5], rtol=1e-6)
    assert cut_at_eos([5, 6, 3, 3, 3]) == [5, 6, 3] and cut_at_eos([5, 6]) == [5, 6]
    # sample_search repeats <eos> after the end: the sampled tokens are those up to and including the first one.
    mask = keras.ops.convert_to_numpy(sampled_tokens(np.array([[5, 6, 3, 3], [7, 3, 3, 3], [5, 6, 7, 8]]), 3))
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])


def _tiny_decoder(vocab_size=12, feature_dim=6, seed=0):
    import keras
    from captioner.decoder import CaptionDecoder
    keras.utils.set_random_seed(seed)
    decoder = CaptionDecoder(vocab_size, feature_dim, embed_dim=8, units=16, attention_dim=8, dropout=0.0)
    decoder.build(((None, 4, feature_dim), (None, None)))
    return decoder


def _sequence_log_probs(decoder, features, words, eos_id=3, bos_id=2):
    """Summed log p of each given sequence (up to its first <eos>) under the decoder's search step (the very
    distribution sample_search draws from)."""
    import keras
    from captioner.scst import sampled_tokens
    ops = keras.ops
    features = ops.convert_to_tensor(features)
    step = decoder._step_fn()
    states = decoder.initial_states(features)[0]
    static = [features, decoder.attention.project_features(features)]
    tokens, total = ops.full((len(words),), bos_id, "int32"), 0.0
    mask = ops.convert_to_numpy(sampled_tokens(words, eos_id))
    for t in range(words.shape[1]):
        log_probs, states, _ = step(tokens, states, static)
        picked = np.take_along_axis(ops.convert_to_numpy(log_probs), words[:, t: t + 1].astype("int64"), 1)[:, 0]
        total = total + picked * mask[:, t]
        tokens = ops.convert_to_tensor(words[:, t], "int32")
    return total


def check_scst_gradient_direction():
    """One SGD step of SelfCritical under fit, rewards 1 for the first of K = 3 samples and 0 for the others
    (advantages +1, -0.5, -0.5): the first sample's log p must rise and the others' fall, and the logged loss is
    -sum(advantage * log p) / sampled tokens with the weights before the step. Backend-neutral (also run in the
    JAX and PyTorch children)."""
    import keras
    from captioner.scst import SelfCritical, sampled_tokens
    decoder = _tiny_decoder()
    seen = []

    def reward(words, images):  # the first sample of each image wins
        seen.append(np.array(words))
        return (np.arange(len(words)) % 3 == 0).astype("float32")
    trainee = SelfCritical(decoder, reward, samples=3, max_length=5, seed=4)
    trainee.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=keras.backend.backend() == "jax")
    before = [np.array(w) for w in decoder.get_weights()]
    features = np.random.default_rng(1).normal(size=(1, 4, 6)).astype("float32")
    history = trainee.fit(features, np.zeros((1,), "int32"), batch_size=1, epochs=1, verbose=0).history
    words = seen[-1]  # (3, 5): what the step sampled
    assert len({tuple(w) for w in words}) == 3, words  # three different captions (else the test says nothing)
    feats = np.repeat(features, 3, axis=0)
    after = _sequence_log_probs(decoder, feats, words)
    decoder.set_weights(before)
    start = _sequence_log_probs(decoder, feats, words)
    assert after[0] > start[0] + 1e-3 and after[1] < start[1] - 1e-3 and after[2] < start[2] - 1e-3, (start, after)
    tokens = keras.ops.convert_to_numpy(sampled_tokens(words)).sum()
    expected = -(np.array([1.0, -0.5, -0.5]) * start).sum() / tokens
    assert math.isclose(history["loss"][0], expected, rel_tol=1e-4), (history["loss"][0], expected)
    assert math.isclose(history["reward"][0], 1 / 3, rel_tol=1e-6)
    return {"start": start.tolist(), "after": after.tolist()}


def test_scst_gradient_raises_the_log_prob_of_a_better_than_baseline_sample():
    check_scst_gradient_direction()


def run_scst_smoke(root, steps=2):
    """A random tiny captioner, SCST under fit for one short epoch on 20 scenes: a model folder comes out, loads,
    differs from the start when it beat it on validation, and the summary is sane. Returns the summary."""
    import keras
    from captioner.model import build_captioner, load_model_dir, save_model_dir
    from captioner.scenes import generate_scenes
    from captioner.scst import train_scst
    data = os.path.join(root, "scenes")
    generate_scenes(data, 20, seed=3)  # 64x64, read at 32x32
    with open(os.path.join(data, "dataset_scenes.json")) as f:
        words = sorted({w for im in json.load(f)["images"] for s in im["sentences"] for w in s["tokens"]})
    keras.utils.set_random_seed(0)
    vocab = Vocabulary(words)
    model = build_captioner({"vocab_size": len(vocab), "backbone": "small_cnn", "image_size": [32, 32],
                             "decoder": {"embed_dim": 8, "units": 16, "attention_dim": 8, "dropout": 0.1}})
    save_model_dir(os.path.join(root, "xe"), "caption", model, vocab, {"max_length": 8})
    summary = train_scst(os.path.join(data, "dataset_scenes.json"), os.path.join(root, "xe"),
                         os.path.join(root, "scst"), samples=3, epochs=1, batch_size=4, steps_per_epoch=steps,
                         lr=1e-2, verbose=0, patience=1)
    before = load_model_dir(os.path.join(root, "xe")).model.decoder.get_weights()
    after_folder = load_model_dir(os.path.join(root, "scst"))
    assert after_folder.config["scst"]["samples"] == 3 and after_folder.config["max_length"] == 8
    assert after_folder.model.decoder.dropout == 0.1  # the config keeps the XE dropout
    assert summary["epochs"] == 1 and len(summary["reward"]) == 1 and np.isfinite(summary["reward"][0])
    assert np.isfinite(summary["loss"][0]) and len(summary["epoch_seconds"]) == 1
    if summary["best_epoch"] == 1:  # SCST beat the start on validation: the folder holds new weights
        assert summary["val_cider"][0] > summary["val_cider_init"]
        assert any(not np.allclose(a, b) for a, b in zip(before, after_folder.model.decoder.get_weights()))
    else:  # it did not: the folder holds the XE model unchanged
        assert summary["val_cider"][0] <= summary["val_cider_init"]
        assert all(np.allclose(a, b) for a, b in zip(before, after_folder.model.decoder.get_weights()))
    return summary


def test_scst_runs_under_fit_and_writes_a_model_folder(tmp_path):
    run_scst_smoke(str(tmp_path))


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_scst_runs_on_other_backends(run_python, tmp_path, backend):
    """JAX: two steps of the smoke run and the gradient check; PyTorch: one step and the gradient check."""
    steps = 2 if backend == "jax" else 1
    code = ("import sys, json; sys.path.insert(0, 'tests'); import keras; "
            f"assert keras.backend.backend() == {backend!r}; import test_caption_quality as t; "
            "t.check_scst_gradient_direction(); "
            f"print(json.dumps(t.run_scst_smoke({str(tmp_path)!r}, steps={steps})))")
    proc = run_python(code, backend, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert np.isfinite(json.loads(proc.stdout.strip().splitlines()[-1])["reward"][0])


def test_cli_scst_bad_input_is_one_line(tmp_path, capsys):
    from captioner.cli import main
    for argv in (["train", "x.json", "--out", str(tmp_path / "o"), "--scst"],
                 ["train", "x.json", "--out", str(tmp_path / "o"), "--init", str(tmp_path)]):
        assert main(argv) != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--scst" in err and "--init" in err


# ---- schedule, label smoothing, penalty, scheduled sampling ---------------------------------------------------------
def test_warmup_cosine_and_step_schedules():
    import keras
    from lm.schedules import WarmupDecay
    cosine = WarmupDecay(1.0, total_steps=110, warmup_steps=10, decay="cosine", final_fraction=0.1)
    rates = [float(cosine(s)) for s in range(120)]
    np.testing.assert_allclose(rates[:10], np.arange(1, 11) / 10, rtol=1e-6)  # linear warmup to the peak
    assert math.isclose(rates[10], 1.0, rel_tol=1e-6) and math.isclose(rates[60], 0.55, rel_tol=1e-5)  # halfway
    assert math.isclose(rates[110], 0.1, rel_tol=1e-5) and math.isclose(rates[119], 0.1, rel_tol=1e-5)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    step = WarmupDecay(1.0, total_steps=100, warmup_steps=0, decay="step", step_every=30, step_factor=0.5)
    assert [float(step(s)) for s in (0, 29, 30, 60, 99)] == [1.0, 1.0, 0.5, 0.25, 0.125]
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(cosine))
    assert math.isclose(float(restored(37)), rates[37], rel_tol=1e-6)


def test_label_smoothing_loss_and_the_plain_cross_entropy_metric():
    import keras
    from lm.schedules import SmoothedCrossEntropy, token_cross_entropy
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 7)).astype("float32")
    targets = np.array([[4, 5, 3, 0, 0], [6, 3, 0, 0, 0], [4, 4, 4, 5, 3]], "int32")
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_p, targets[..., None], -1)[..., 0]
    mask = targets != 0
    plain = (nll * mask).sum() / mask.sum()
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)(targets, logits)
    assert math.isclose(float(SmoothedCrossEntropy(0.0)(targets, logits)), plain, rel_tol=1e-5)
    assert math.isclose(float(keras_loss), plain, rel_tol=1e-5)
    assert math.isclose(float(np.mean(token_cross_entropy(targets, logits))), plain, rel_tol=1e-5)
    smooth = (((0.9 * nll) + 0.1 * -log_p.mean(-1)) * mask).sum() / mask.sum()
    assert math.isclose(float(SmoothedCrossEntropy(0.1)(targets, logits)), smooth, rel_tol=1e-5)


def test_attention_penalty_is_per_token():
    from captioner.attention import doubly_stochastic_penalty
    alphas = np.full((2, 4, 3), 1 / 3, "float32")  # uniform attention
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], "float32")  # 3 and 2 tokens
    # coverage per pixel: 1 and 2/3 -> per caption 3 * 0^2 = 0 and 3 * (1/3)^2 = 1/3; 5 tokens
    assert math.isclose(float(doubly_stochastic_penalty(alphas, mask)), (0 + 1 / 3) / 5, rel_tol=1e-5)


def test_scheduled_sampling_feeds_sampled_words_never_specials():
    import keras
    from keras import ops
    from captioner.decoder import CaptionDecoder
    keras.utils.set_random_seed(0)
    decoder = CaptionDecoder(vocab_size=9, feature_dim=4, embed_dim=6, units=8, attention_dim=4, dropout=0.0,
                             alpha_c=0.0, scheduled_sampling=1.0)
    feats, tokens = ops.zeros((64, 5, 4)), ops.full((64, 6), 4, "int32")
    decoder((feats, tokens))
    bias = np.zeros(9, "float32")
    bias[:4] = 50.0  # the head all but insists on the specials <pad> <unk> <bos> <eos>
    decoder.head.bias.assign(bias)
    fed = []
    original = decoder.embedding.call
    decoder.embedding.call = lambda ids: (fed.append(np.asarray(ids)), original(ids))[1]
    decoder((feats, tokens), training=True)
    decoder.embedding.call = original
    own = np.concatenate([f.ravel() for f in fed[1:]])  # fed[0] embeds the true tokens
    assert own.size == 64 * 5 and own.min() >= 4  # never a special, though the specials dominate the logits
    assert len(np.unique(own)) > 1  # sampled, not one argmax


# ---- --init-from-lm -------------------------------------------------------------------------------------------------
def test_init_from_a_stream_lm_maps_bos_and_reports_every_layer(tmp_path):
    import keras
    from keras import ops
    from captioner.model import build_captioner
    from captioner.training import init_decoder_from_lm
    from lm.checkpoint import save_model_dir
    from lm.model import LanguageModel
    keras.utils.set_random_seed(3)
    lm_vocab = Vocabulary(["a", "cat", "on", "mat"])
    lm = LanguageModel(vocab_size=len(lm_vocab), cell_type="lstm", units=16, embed_dim=8, num_layers=2)
    lm(ops.zeros((1, 2), "int32"))
    save_model_dir(tmp_path / "lm", "lstm", lm, lm_vocab, {"mode": "stream"})
    vocab = Vocabulary(["a", "cat", "sits"])
    model = build_captioner(dict(vocab_size=len(vocab), backbone="small_cnn", image_size=[32, 32],
                                 decoder=dict(embed_dim=8, units=16, attention_dim=8)))
    report = init_decoder_from_lm(model.decoder, vocab, tmp_path / "lm")
    emb, lm_emb = np.asarray(model.decoder.embedding.embeddings), np.asarray(lm.embedding.embeddings)
    np.testing.assert_array_equal(emb[vocab.bos_id], lm_emb[lm_vocab.eos_id])  # a stream LM starts lines after <eos>
    assert not np.allclose(emb[vocab.bos_id], lm_emb[lm_vocab.bos_id])
    assert "<bos> from the LM's <eos>" in report
    assert "layer 0 recurrent_kernel: copied (16, 64)" in report and "layer 1: not copied" in report


# ---- scene error checks ---------------------------------------------------------------------------------------------
def test_scene_caption_errors():
    from captioner.scene_errors import caption_errors
    one = [{"shape": "circle", "color": "red", "size": "large", "center": [32, 32]}]
    two = [{"shape": "circle", "color": "red", "size": "large", "center": [32, 12]},
           {"shape": "cross", "color": "blue", "size": "small", "center": [32, 50]}]
    assert caption_errors("a large red circle", one) == {"invented": False, "relation_error": None}
    assert caption_errors("a large red circle above a small blue square", one)["invented"] is True
    assert caption_errors("a large red circle above a small blue cross", two) == {"invented": None,
                                                                                 "relation_error": False}
    assert caption_errors("a large red circle below a small blue cross", two)["relation_error"] is True
    assert caption_errors("a small blue cross below a large red circle", two)["relation_error"] is False
    assert caption_errors("a small blue cross and a large red circle above it", two)["relation_error"] is False
    assert caption_errors("a small blue cross and a large red circle below it", two)["relation_error"] is True
    assert caption_errors("a large red circle above a large green square", two)["relation_error"] is None
