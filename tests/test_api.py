"""The Python API (captioner.Captioner / VQA, lm.LanguageModel), out-of-domain scores, and the README's examples."""

import os
import re

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from captioner.scenes import generate_scenes
    out = tmp_path_factory.mktemp("api-scenes")
    generate_scenes(out, 6, seed=4321)
    return sorted(str(p) for p in (out / "images").iterdir())


@pytest.fixture(scope="module")
def captioner():
    from captioner import Captioner
    return Captioner.load()


@pytest.fixture(scope="module")
def vqa():
    from captioner import VQA
    return VQA.load()


def photos(*names):
    import skimage.data
    return [getattr(skimage.data, n)() for n in names]


def test_caption_accepts_every_kind_of_image_and_batches_agree(captioner, scenes):
    from PIL import Image
    path = scenes[0]
    with open(path, "rb") as f:
        data = f.read()
    pixels = np.asarray(Image.open(path).convert("RGB"))
    single = captioner.caption(path)
    batch = captioner.caption([path, data, Image.open(path), pixels, scenes[1]])
    assert isinstance(batch, list) and len(batch) == 5
    assert [r.caption for r in batch[:4]] == [single.caption] * 4  # the same picture, however it is given
    assert batch[4].caption != single.caption  # (another scene: not one answer for everything)
    assert [r.image for r in batch] == [path, "<image 1>", "<image 2>", "<image 3>", scenes[1]]
    r = single
    assert r.words == r.caption.split() and r.words and r.score < 0
    gh, gw, _ = captioner.loaded.model.grid
    assert r.attention.shape == (len(r.words) + 1, gh, gw)  # a map per word, then the end of the caption
    np.testing.assert_allclose(r.attention.reshape(len(r.attention), -1).sum(-1), 1.0, atol=1e-4)
    assert r["caption"] == r.caption and "domain_score" in r and r.to_dict()["words"] == r.words
    assert isinstance(r.to_dict(json=True)["attention"], list)
    assert set(r.keys()) >= {"caption", "words", "score", "attention", "domain_score", "out_of_domain"}


def test_caption_beam_and_length_arguments(captioner, scenes):
    from lm.errors import UserError
    short = captioner.caption(scenes[0], beam=1, max_length=2)
    assert len(short.words) <= 2 and len(short.attention) == 2  # no <eos> within two steps: two maps
    for bad in (dict(beam=0), dict(max_length=0), dict(max_length=-5), dict(errors="ignore")):
        with pytest.raises(UserError):
            captioner.caption(scenes[0], **bad)


def test_bad_image_raises_one_line_or_is_returned(captioner, scenes, tmp_path):
    from captioner.images import ImageError
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 no")
    with pytest.raises(ImageError) as info:
        captioner.caption([scenes[0], str(bad)])
    assert "\n" not in str(info.value) and str(bad) in str(info.value)
    good, failed = captioner.caption([scenes[0], str(bad)], errors="return")
    assert good.error is None and good.caption and failed.error and failed.caption == ""


def test_scenes_are_in_domain_and_photos_are_not(captioner, vqa, scenes):
    in_domain = captioner.caption(scenes, beam=1)
    assert all(r.out_of_domain is False and 0 < r.domain_score < 1 for r in in_domain)
    outside = captioner.caption(photos("astronaut", "coffee", "chelsea"), beam=1)
    assert all(r.out_of_domain is True and r.domain_score > 1 for r in outside)
    answers = vqa.ask_batch([scenes[0], photos("rocket")[0]], ["what color is the circle"] * 2)
    assert [a.out_of_domain for a in answers] == [False, True]
    assert answers[0].domain_score < 1 < answers[1].domain_score


def test_vqa_ask_fields_unicode_words_and_batches(vqa, scenes):
    one = vqa.ask(scenes[0], "how many objects are there")
    assert one.answer in vqa.answers and 0 < one.score <= 1 and one.unknown_words == []
    gh, gw, _ = vqa.loaded.model.grid
    assert one.attention.shape == (gh, gw) and abs(float(one.attention.sum()) - 1) < 1e-4
    assert one.top[0] == (one.answer, one.score) and len(one.top) == 5
    several = vqa.ask(scenes[0], ["how many objects are there", "qué color tiene el círculo", "これは何ですか"])
    assert several[0].answer == one.answer and abs(several[0].score - one.score) < 1e-5
    assert several[1].unknown_words == ["qué", "tiene", "el", "círculo"]  # Unicode words, named as English ones
    assert several[2].unknown_words == ["これは何ですか"] and several[2].answer in vqa.answers


def test_language_model_generate_and_perplexity():
    from lm import LanguageModel
    from lm.errors import UserError
    model = LanguageModel.load()
    g = model.generate("And God said, Xyzzy!", max_tokens=6, temperature=0, seed=0)
    assert g.text.startswith("And God said, Xyzzy! ") and g.text.split("Xyzzy! ")[1] == " ".join(g.words)
    assert g.prompt_words == ["and", "god", "said", "xyzzy"] and g.unknown_words == ["xyzzy"]
    assert 1 <= len(g.words) <= 6 and str(g) == g.text
    known = model.perplexity("in the beginning god created the heaven and the earth")
    assert known.oov_rate == 0 and known.tokens == 11 and known.warnings() == []
    assert 1 < known.perplexity < 200
    prose = model.perplexity("Hello, World! Quantum chromodynamics is hard.\nThe lord said.")
    assert prose.oov_rate > 0.5 and prose.looks_like_prose and len(prose.warnings()) == 2
    raw = model.perplexity("The LORD said unto Moses, Go.", raw=True)
    assert raw.oov_rate == 0 and not raw.looks_like_prose
    with pytest.raises(UserError):
        model.generate("x", max_tokens=0)


def test_penn_treebank_conventions_are_not_taken_for_prose():
    """PTB text writes numbers as N and splits clitics ('s); 6% of its test split's tokens are such, which the prose
    check once counted as capitals and attached punctuation, and warned about on the benchmark itself."""
    from lm.api import looks_like_prose
    ptb = [s.split() for s in ["the N companies said its sales rose N N in the quarter", "mr. smith 's car",
                               "they 're selling it for $ N million"]]
    assert not looks_like_prose(ptb * 10)
    assert looks_like_prose([s.split() for s in ["The cat sat.", "Then it ran, fast!"]])


def test_domain_statistics_fit_save_and_flag_shifted_data(tmp_path):
    from captioner.domain import fit_domain, load_domain
    rng = np.random.default_rng(0)
    cov = rng.normal(size=(6, 6))
    draw = lambda n, shift=0.0: {"backbone": rng.normal(size=(n, 6)) @ cov + shift,  # noqa: E731
                                 "pixels": rng.normal(size=(n, 3)) + shift}
    stats = fit_domain(draw(600), draw(300), trained_on="toy data")
    fresh = stats.raw(draw(2000)) / stats.threshold
    shifted = stats.raw(draw(200, shift=4.0)) / stats.threshold
    assert np.mean(fresh > 1) < 0.01 and np.all(shifted > 1)
    stats.save(tmp_path)
    again = load_domain(tmp_path)
    assert again.trained_on == "toy data" and again.threshold == pytest.approx(stats.threshold)
    sample = draw(5, shift=1.0)
    np.testing.assert_allclose(again.raw(sample), stats.raw(sample), rtol=1e-4)
    assert load_domain(tmp_path / "nothing-here") is None


def test_calibrate_command_rewrites_a_folder(tmp_path, capsys):
    """`captioner calibrate` on a copy of the bundled captioner without domain.npz, from a few fresh scenes."""
    import shutil
    from captioner import Captioner, cli
    from captioner.model import BUNDLED
    from captioner.scenes import generate_scenes
    folder = tmp_path / "model"
    shutil.copytree(BUNDLED["caption"], folder)
    os.remove(folder / "domain.npz")
    data = generate_scenes(tmp_path / "scenes", 60, seed=99)["dataset"]
    assert Captioner.load(folder).caption(photos("camera")[0]).out_of_domain is None  # no statistics: unknown
    assert cli.main(["calibrate", str(folder), data, "--trained-on", "a few scenes"]) == 0
    assert "fitted on" in capsys.readouterr().out
    r = Captioner.load(folder).caption(photos("camera")[0])
    assert r.out_of_domain is True
    from captioner.domain import load_domain
    assert load_domain(folder).trained_on == "a few scenes"


def _readme_python_blocks() -> list[str]:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("## Python API"):]
    section = section[: section.index("\n## ", 5)] if "\n## " in section[5:] else section
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_python_examples_run(tmp_path, monkeypatch, capsys):
    blocks = _readme_python_blocks()
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert any(line.startswith("<image 3>") and line.endswith("True") for line in lines)  # the black array: outside
    assert sum(line.endswith("False") for line in lines if line.startswith("scenes/images/")) == 1
