"""The README's cheap figures, pinned: if one of these changes, the README is out of date (or the code is wrong).

Each check is a fixed computation on bundled data or models, so its result is exact up to float rounding. When a
bundled model is retrained on purpose, update the figure here and in the README together.
"""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KJV = os.path.join(ROOT, "lm", "assets", "kjv")
SEED = 20261122  # the demo's scene seed, never used in training


def test_kn5_on_the_bundled_kjv_split_is_the_readme_figure():
    """README, "Results on shared/data/kjv": KN-5 test perplexity 130.52 over 30,225 tokens."""
    from lm.ngram import KneserNeyLM
    from lm.text import read_lines
    model = KneserNeyLM(order=5).fit(read_lines(os.path.join(KJV, "train.txt")))
    ppl, tokens = model.perplexity(read_lines(os.path.join(KJV, "test.txt")))
    assert tokens == 30225 and round(ppl, 2) == 130.52


def test_bundled_lm_perplexity_on_the_first_kjv_test_lines():
    """The bundled LSTM scores the whole test split at 86.06 (README; `lm perplexity lm/assets/kjv/test.txt`, minutes
    on a CPU); its first 100 lines, a few seconds, are pinned here."""
    from lm import LanguageModel
    from lm.text import read_lines
    report = LanguageModel.load().score_sentences(read_lines(os.path.join(KJV, "test.txt"))[:100])
    assert report.oov_rate == 0 and report.tokens == FIRST_100_TOKENS
    assert report.perplexity == pytest.approx(FIRST_100_PPL, rel=1e-4)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from captioner.scenes import generate_scenes
    return generate_scenes(tmp_path_factory.mktemp("pinned-scenes"), 40, seed=SEED)


def test_bundled_vqa_accuracy_on_fixed_fresh_scenes(scenes):
    """README: 96.08% on the held-out test split of its training scenes; on 40 fresh scenes it scores this."""
    from captioner.model import load_model_dir
    from captioner.vqa import evaluate_vqa
    result = evaluate_vqa(load_model_dir(None, task="vqa"), scenes["vqa"], split="all")
    assert result["count"] == VQA_COUNT and result["accuracy"] == pytest.approx(VQA_ACCURACY, abs=1e-6)


def test_bundled_captioner_on_fixed_fresh_scenes(scenes):
    from captioner.evaluate import evaluate_captioner
    from captioner.model import load_model_dir
    scores = evaluate_captioner(load_model_dir(None, task="caption"), scenes["dataset"], split="all", beam_width=3,
                                meteor=False)
    assert scores["images"] == 40 and scores["exact_match"] == pytest.approx(CAPTION_EXACT, abs=1e-6)
    assert scores["CIDEr"] == pytest.approx(CAPTION_CIDER, abs=1e-3)


FIRST_100_TOKENS, FIRST_100_PPL = 2280, 95.0154  # the bundled LSTM on lm/assets/kjv/test.txt's first 100 lines
VQA_COUNT, VQA_ACCURACY = 304, 286 / 304  # the bundled VQA model on 40 scenes of seed 20261122: 94.08%
CAPTION_EXACT, CAPTION_CIDER = 36 / 40, 7.3721  # the bundled captioner there, beam 3 (changes when it is retrained)
