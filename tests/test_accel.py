"""Speed switches (lm.accel): bf16 mixed precision with float32 logits, --jit parsing, the CLI flags, the fused
teacher-forcing loop of the caption decoder (same numbers as the per-step path), and imports without TensorFlow."""

from __future__ import annotations


import keras
import numpy as np
import pytest
from keras import ops

from captioner.decoder import CaptionDecoder
from lm import accel
from lm.errors import UserError
from lm.model import LanguageModel



def _np(x):
    return ops.convert_to_numpy(x)


@pytest.mark.parametrize("hoist_words", [False, True])
def test_fused_decoder_loop_matches_the_per_step_path(hoist_words):
    keras.utils.set_random_seed(1)
    decoder = CaptionDecoder(vocab_size=30, feature_dim=12, embed_dim=8, units=16, attention_dim=10, dropout=0.0)
    decoder.hoist_word_projection = hoist_words
    features = np.random.default_rng(0).random((3, 7, 12), dtype="float32")
    tokens = np.random.default_rng(1).integers(0, 30, (3, 6)).astype("int32")
    fused = decoder((features, tokens), return_attention=True)
    decoder.fused_loop = False
    plain = decoder((features, tokens), return_attention=True)
    for a, b in zip(fused, plain):
        np.testing.assert_allclose(_np(a), _np(b), atol=1e-5)
    # ...and the search step function (always per step) gives the same log-probabilities.
    step = decoder._step_fn()
    feats = ops.convert_to_tensor(features)
    states = decoder.initial_states(feats)[0]
    static = [feats, decoder.attention.project_features(feats)]
    log_probs = []
    for t in range(tokens.shape[1]):
        lp, states, _ = step(ops.convert_to_tensor(tokens[:, t]), states, static)
        log_probs.append(_np(lp))
    # Search never picks <pad> (0) or <bos> (2): they are masked out before the softmax.
    allowed = np.array([i not in (0, 2) for i in range(30)])
    logits = _np(fused[0])
    logits[..., ~allowed] = -np.inf
    expected = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    got = np.stack(log_probs, 1)
    np.testing.assert_allclose(got[..., allowed], expected[..., allowed], atol=1e-5)
    assert (got[..., ~allowed] < -1e8).all()


def test_fused_loop_is_not_used_where_it_does_not_apply():
    gru = CaptionDecoder(vocab_size=20, feature_dim=6, embed_dim=4, units=8, attention_dim=4, cell_type="gru")
    gru.build(((None, 5, 6), (None, None)))
    assert not gru._can_fuse()
    lstm = CaptionDecoder(vocab_size=20, feature_dim=6, embed_dim=4, units=8, attention_dim=4)
    lstm.build(((None, 5, 6), (None, None)))
    assert lstm._can_fuse()


@pytest.mark.parametrize("tie", [False, True])
def test_mixed_precision_language_model_has_float32_logits(tie):
    before = keras.config.dtype_policy().name
    with accel.precision(True):
        model = LanguageModel(vocab_size=40, units=16, embed_dim=8, num_layers=2, tie_weights=tie, stateful=True,
                              batch_size=4)
        model(np.zeros((4, 5), "int32"))
    assert keras.config.dtype_policy().name == before  # restored on exit
    assert model.compute_dtype == "bfloat16" and model.embedding.embeddings.dtype == "float32"
    assert model.carried[0][0].dtype == "float32"
    logits = model(np.ones((4, 5), "int32"))
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).integers(1, 40, (8, 5)).astype("int32")
    history = model.fit(x, x, batch_size=4, epochs=2, shuffle=False, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert np.abs(_np(model.carried[0][0].value)).sum() > 0


def test_mixed_precision_decoder_has_float32_logits_and_search():
    with accel.precision(True):
        decoder = CaptionDecoder(vocab_size=20, feature_dim=6, embed_dim=8, units=8, attention_dim=4)
        decoder.build(((None, 5, 6), (None, None)))
    features = np.random.default_rng(0).random((2, 5, 6), dtype="float32")
    logits, alphas = decoder((features, np.ones((2, 4), "int32")), return_attention=True)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert keras.backend.standardize_dtype(alphas.dtype) == "float32"
    words, scores, _ = decoder.generate(ops.convert_to_tensor(features), beam_width=2, max_length=4)
    assert np.all(np.isfinite(_np(scores)))


def test_jit_option():
    assert accel.jit_option("auto") == "auto" and accel.jit_option(None) == "auto"
    assert accel.jit_option(True) is True and accel.jit_option("false") is False
    with pytest.raises(UserError):
        accel.jit_option("sometimes")


def test_cli_flags_reach_the_training_functions():
    from captioner.cli import build_parser as captioner_parser
    from lm.cli import _training_kwargs, build_parser
    a = build_parser().parse_args(["train", "corpus", "--out", "x", "--mixed-precision", "--no-jit",
                                   "--distribute"])
    kwargs = _training_kwargs(a)
    assert kwargs["mixed_precision"] is True and kwargs["jit"] is False and kwargs["distribute"] is True
    a = build_parser().parse_args(["train", "corpus", "--out", "x"])
    assert _training_kwargs(a)["jit"] == "auto" and not _training_kwargs(a)["distribute"]
    a = captioner_parser().parse_args(["train", "data", "--out", "x", "--jit", "--mixed-precision"])
    assert a.jit is True and a.mixed_precision and not a.distribute


def test_distribution_off_is_a_no_op():
    with accel.distribution(False) as replicas:
        assert replicas == 1 and accel.replicas() == 1


def test_imports_need_no_tensorflow(run_python):
    """A GPU host has JAX and PyTorch only: importing the packages (training code included) must not need TF."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'tensorflow' or name.startswith('tensorflow.'):\n"
        "            raise ImportError('no tensorflow here')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import lm.accel, lm.model, lm.training, lm.cli, captioner.decoder, captioner.training, captioner.cli\n"
        "assert 'tensorflow' not in sys.modules\n"
        "print('ok')\n")
    proc = run_python(code, "jax", JAX_PLATFORMS="cpu")
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]
