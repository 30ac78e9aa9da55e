"""The neural cache at evaluation (lm.cache, `lm perplexity --cache-*`, `lm tune-cache`) and the published rows of
`lm compare` (lm.published). Tiny models on a tiny text: seconds."""

from __future__ import annotations

import hashlib
import json
import random

import keras
import numpy as np
import pytest

from lm import cli
from lm.cache import cache_probabilities, mixed_logp, text_outputs
from lm.checkpoint import LoadedModel, build_model, load_model_dir, save_model_dir
from lm.data import stream_ids
from lm.inference import perplexity
from lm.published import PUBLISHED
from lm.vocab import Vocabulary

WORDS = "the cat dog bird sat ran on a red mat sees eats".split()


def sentences(n: int, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    return [[rng.choice(WORDS) for _ in range(rng.randint(2, 6))] for _ in range(n)]


VOCAB = Vocabulary.build(sentences(60))
TEXT = sentences(500, seed=3)  # ~2,500 tokens: 32 evaluation rows wider than one 64-column chunk


def tiny(cell="lstm", **kwargs):
    keras.utils.set_random_seed(0)
    return build_model(cell, {"vocab_size": len(VOCAB), "units": 8, **kwargs})


def write_text(path, lines) -> str:
    path.write_text("".join(" ".join(s) + "\n" for s in lines), encoding="utf-8")
    return str(path)


def run_main(argv, capsys):
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse's usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def naive_cache_probabilities(hidden, targets, size, theta):
    """One position at a time, straight from the formula."""
    probs = np.zeros(len(targets))
    for t in range(1, len(targets)):
        keys = range(max(0, t - size), t)
        scores = np.array([theta * float(np.dot(hidden[t].astype("float64"), hidden[i])) for i in keys])
        weights = np.exp(scores - scores.max())
        probs[t] = sum(w for w, i in zip(weights, keys) if targets[i] == targets[t]) / weights.sum()
    return probs


@pytest.mark.parametrize("cell,mode", [("lstm", "stream"), ("gru", "sentence")])
def test_outputs_follow_the_text_and_lambda_zero_is_the_plain_perplexity(cell, mode):
    loaded = LoadedModel(cell, tiny(cell), VOCAB, {"mode": mode})
    outputs = text_outputs(loaded, TEXT)
    plain, tokens = perplexity(loaded, TEXT)
    if mode == "stream":  # the protocol's 32 rows, flattened, are the text in order
        assert outputs.targets.tolist() == stream_ids(TEXT, VOCAB)[1:].tolist()
    assert len(outputs.targets) == tokens == sum(len(s) + 1 for s in TEXT)
    assert outputs.hidden.shape == (tokens, 8)
    probs, has_cache = cache_probabilities(outputs.hidden, outputs.targets, [100], [0.5])
    assert probs.max() > 0.1  # the cache does say something here ...
    zero = np.exp(-mixed_logp(outputs.logp, probs[0, 0], has_cache, 0.0).mean())
    assert zero == pytest.approx(plain, rel=1e-9)  # ... and with lambda 0 it is not heard
    assert np.exp(-mixed_logp(outputs.logp, probs[0, 0], has_cache, 0.2).mean()) != pytest.approx(plain, rel=1e-3)


def test_vectorised_cache_equals_the_per_position_loop():
    outputs = text_outputs(LoadedModel("lstm", tiny(), VOCAB, {"mode": "stream"}), TEXT[:60])
    hidden, targets = outputs.hidden * 3, outputs.targets  # * 3: sharper scores than a fresh model's
    sizes, thetas = [1, 7, 40, 10_000], [0.0, 0.7, 3.0]
    fast, has_cache = cache_probabilities(hidden, targets, sizes, thetas, chunk=16)  # chunks cross the windows
    assert has_cache.tolist() == [False] + [True] * (len(targets) - 1)
    for a, size in enumerate(sizes):
        for b, theta in enumerate(thetas):
            np.testing.assert_allclose(fast[a, b], naive_cache_probabilities(hidden, targets, size, theta),
                                       rtol=1e-5, atol=1e-7)
    assert fast[0, 0].tolist() == [float(targets[t] == targets[t - 1]) if t else 0.0 for t in range(len(targets))]


def test_repeated_rare_words_cost_less_with_the_cache(tmp_path, capsys):
    model = tiny()
    rare = [VOCAB.token_to_id(w) for w in ("mat", "bird")]
    bias = keras.ops.convert_to_numpy(model.head.bias).copy()
    bias[rare] -= 4.0  # the model finds these words rare
    model.head.bias.assign(bias)
    save_model_dir(tmp_path / "m", "lstm", model, VOCAB, {"mode": "stream"})
    text = write_text(tmp_path / "t.txt", [["the", "bird", "sat", "on", "a", "mat"], ["a", "cat", "ran"]] * 40)
    rc, out, _ = run_main(["perplexity", text, "--model", tmp_path / "m", "--json"], capsys)
    plain = json.loads(out)["perplexity"]
    rc, out, _ = run_main(["perplexity", text, "--model", tmp_path / "m", "--cache-size", 200, "--cache-theta", 1,
                           "--cache-lambda", 0.3, "--json"], capsys)
    report = json.loads(out)
    assert rc == 0 and report["cache"] == {"size": 200, "theta": 1.0, "lambda": 0.3,
                                           "perplexity_without_cache": pytest.approx(plain, rel=1e-9)}
    assert report["perplexity"] < 0.6 * plain
    rc, out, _ = run_main(["perplexity", text, "--model", tmp_path / "m", "--cache-size", 200, "--cache-lambda", 0,
                           "--json"], capsys)
    assert json.loads(out)["perplexity"] == pytest.approx(plain, rel=1e-9)


def test_tune_cache_picks_the_grid_minimum_that_perplexity_reproduces(tmp_path, capsys):
    save_model_dir(tmp_path / "m", "lstm", tiny(), VOCAB, {"mode": "stream"})
    valid = write_text(tmp_path / "valid.txt", TEXT[:200])
    rc, out, _ = run_main(["tune-cache", valid, "--model", tmp_path / "m", "--cache-size", "50,300",
                           "--thetas", "0.1,1", "--lambdas", "0,0.1,0.3", "--json"], capsys)
    result = json.loads(out)
    assert rc == 0 and len(result["grid"]) == 2 * 2 * 3
    assert result["best"] == min(result["grid"], key=lambda r: r["perplexity"])
    assert all(r["perplexity"] == pytest.approx(result["perplexity_without_cache"], rel=1e-9)
               for r in result["grid"] if r["lambda"] == 0)
    best = result["best"]
    rc, out, _ = run_main(["perplexity", valid, "--model", tmp_path / "m", "--cache-size", best["size"],
                           "--cache-theta", best["theta"], "--cache-lambda", best["lambda"], "--json"], capsys)
    assert json.loads(out)["perplexity"] == pytest.approx(best["perplexity"], rel=1e-9)
    rc, out, _ = run_main(["tune-cache", valid, "--model", tmp_path / "m", "--thetas", "0.5", "--lambdas", "0.1"],
                          capsys)
    assert rc == 0 and "best: size " in out and "--cache-theta 0.5 --cache-lambda 0.1" in out and "cache size 500:" in out


def kn_folder(path, vocab=VOCAB, order=3):
    from lm.ngram import KneserNeyLM
    kn = KneserNeyLM(order, vocab).fit(sentences(300, seed=5))
    save_model_dir(path, "ngram", kn, vocab)
    return kn


def test_mixing_in_an_ngram_is_the_per_token_interpolation_and_tune_cache_finds_its_weight(tmp_path, capsys):
    save_model_dir(tmp_path / "m", "lstm", tiny(), VOCAB, {"mode": "stream"})
    kn = kn_folder(tmp_path / "kn")
    lines = [s for s in TEXT[:200]]
    valid = write_text(tmp_path / "valid.txt", lines)
    lstm_logp = text_outputs(load_model_dir(str(tmp_path / "m")), lines).logp
    kn_logp = kn.token_logprobs(lines)  # the same positions, in the same order, or with_other_model refuses
    rc, out, _ = run_main(["perplexity", valid, "--model", tmp_path / "m", "--mix", tmp_path / "kn",
                           "--mix-weight", 0.4, "--json"], capsys)
    report = json.loads(out)
    expected = np.exp(-np.logaddexp(np.log(0.6) + lstm_logp, np.log(0.4) + kn_logp).mean())
    assert rc == 0 and report["perplexity"] == pytest.approx(expected, rel=1e-9)
    assert report["mix"]["perplexity_without_mix"] == pytest.approx(np.exp(-lstm_logp.mean()), rel=1e-9)
    # The untrained LSTM is near uniform and the n-gram knows the words' frequencies: mixing it in helps.
    assert expected < np.exp(-lstm_logp.mean())
    rc, out, _ = run_main(["tune-cache", valid, "--model", tmp_path / "m", "--mix", tmp_path / "kn",
                           "--cache-size", "0,100", "--thetas", "0.5", "--lambdas", "0.1",
                           "--mix-weights", "0,0.4,0.8", "--json"], capsys)
    result = json.loads(out)
    assert rc == 0 and len(result["grid"]) == 3 * 2
    zero = [r for r in result["grid"] if r["mix_weight"] == 0 and r["size"] == 0][0]
    assert zero["perplexity"] == pytest.approx(result["perplexity_without_cache"], rel=1e-9)
    at_04 = [r for r in result["grid"] if r["mix_weight"] == 0.4 and r["size"] == 0][0]
    assert at_04["perplexity"] == pytest.approx(expected, rel=1e-9)
    assert result["perplexity_mixed_without_cache"]["mix_weight"] > 0
    best = result["best"]
    flags = ["--mix-weight", best["mix_weight"]] + (["--cache-size", best["size"], "--cache-theta", best["theta"],
                                                     "--cache-lambda", best["lambda"]] if best["size"] else [])
    rc, out, _ = run_main(["perplexity", valid, "--model", tmp_path / "m", "--mix", tmp_path / "kn", "--json"]
                          + flags, capsys)
    assert json.loads(out)["perplexity"] == pytest.approx(best["perplexity"], rel=1e-9)


def test_mix_errors_are_one_line(tmp_path, capsys):
    save_model_dir(tmp_path / "m", "lstm", tiny(), VOCAB, {"mode": "stream"})
    kn_folder(tmp_path / "other", Vocabulary(VOCAB.itos[:-1]))  # one word short: another vocabulary
    kn_folder(tmp_path / "kn")
    text = write_text(tmp_path / "t.txt", TEXT[:20])
    for argv, needle in ((["--mix-weight", "0.2"], "--mix-weight needs --mix"),
                         (["--mix", tmp_path / "kn", "--mix-weight", "1"], "--mix-weight 1"),
                         (["--mix", tmp_path / "other"], "vocabulary differs"),
                         (["--mix", tmp_path / "nothing"], "nothing")):
        rc, out, err = run_main(["perplexity", text, "--model", tmp_path / "m"] + argv, capsys)
        assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and needle in err, (argv, err)
    rc, out, err = run_main(["tune-cache", text, "--model", tmp_path / "m", "--cache-size", "0"], capsys)
    assert rc == 2 and "only with --mix" in err


def test_compare_prints_the_published_rows_labelled_published(tmp_path, capsys, monkeypatch):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split, seed in (("train", 0), ("valid", 1), ("test", 2)):
        write_text(corpus / f"{split}.txt", sentences(60 if split == "train" else 8, seed))
    args = ["compare", corpus, "--archs", "ngram", "--out", tmp_path / "cmp"]
    rc, out, _ = run_main(args, capsys)
    assert rc == 0 and "published (" not in out and not any(l.endswith("published") for l in out.splitlines())
    rc, out, _ = run_main(args + ["--published", "ptb"], capsys)
    lines = out.splitlines()
    for row in PUBLISHED["ptb"]:
        (line,) = [l for l in lines if l.startswith(row["model"])]
        assert f"{row['test_perplexity']:.1f}" in line and line.endswith("published")
    assert any(l.startswith("KN-5 ") and not l.endswith("published") for l in lines)  # ours, trained here
    assert "corpus is not the canonical PTB, so they are not comparable" in out
    # auto recognises PTB by the MD5s of its three files: make this corpus's files "the canonical" ones
    import lm.published
    monkeypatch.setattr(lm.published, "PTB_MD5", {s: hashlib.md5((corpus / f"{s}.txt").read_bytes()).hexdigest()
                                                  for s in ("train", "valid", "test")})
    rc, out, _ = run_main(args + ["--json"], capsys)
    rows = json.loads(out)
    assert [r["published"] for r in rows] == [False] + [True] * len(PUBLISHED["ptb"])
    assert [r["test_perplexity"] for r in rows[1:]] == [141.2, 114.5, 82.7, 78.4, 57.3, 52.8]
    assert all(r["same_corpus"] for r in rows[1:])
    rc, out, _ = run_main(args + ["--published", "none"], capsys)
    assert rc == 0 and "published (" not in out and not any(l.endswith("published") for l in out.splitlines())


@pytest.mark.parametrize("flags,needle", [
    (["--cache-size", "-1"], "--cache-size"),
    (["--cache-size", "10", "--cache-lambda", "1.5"], "--cache-lambda"),
    (["--cache-size", "10", "--cache-lambda", "-0.1"], "--cache-lambda"),
    (["--cache-size", "10", "--cache-theta", "-1"], "--cache-theta"),
    (["--cache-size", "10", "--cache-theta", "nan"], "--cache-theta"),
    (["--cache-lambda", "0.2"], "--cache-size"),
    (["--cache-size", "ten"], "--cache-size"),
])
def test_bad_cache_flags_are_one_line_errors(tmp_path, capsys, flags, needle):
    text = write_text(tmp_path / "t.txt", TEXT[:5])
    rc, out, err = run_main(["perplexity", text, "--model", tmp_path / "none"] + flags, capsys)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and needle in err


def test_cache_needs_a_recurrent_model_and_tune_cache_checks_its_lists(tmp_path, capsys):
    text = write_text(tmp_path / "t.txt", TEXT[:20])
    corpus = tmp_path / "c"
    corpus.mkdir()
    for split in ("train", "valid"):
        write_text(corpus / f"{split}.txt", TEXT[:40])
    assert run_main(["train", corpus, "--arch", "ngram", "--order", "2", "--out", tmp_path / "kn"], capsys)[0] == 0
    for argv in (["perplexity", text, "--model", tmp_path / "kn", "--cache-size", "10"],
                 ["tune-cache", text, "--model", tmp_path / "kn"],
                 ["tune-cache", text, "--cache-size", "0"],
                 ["tune-cache", text, "--thetas", "a,b"],
                 ["tune-cache", text, "--lambdas", "2"]):
        rc, out, err = run_main(argv, capsys)
        assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and err.startswith("lm: error:"), argv
