"""Model folders of every kind go through one reader (lm.checkpoint.read_model_folder): a broken folder is one
UserError line that names it, whichever CLI reads it."""

import json
import os
import shutil

import pytest

from captioner.model import BUNDLED, load_model_dir as load_captioner
from lm.checkpoint import BUNDLED_MODEL, load_model_dir as load_lm
from lm.errors import UserError


def _copy(src, tmp_path, name):
    dest = tmp_path / name
    shutil.copytree(src, dest)
    return dest


@pytest.mark.parametrize("loader,src", [(load_lm, BUNDLED_MODEL), (lambda d: load_captioner(d, task="vqa"),
                                                                    BUNDLED["vqa"])])
def test_broken_folders_give_one_line_errors(tmp_path, loader, src):
    with pytest.raises(UserError, match="no such model folder"):
        loader(tmp_path / "absent")

    no_vocab = _copy(src, tmp_path, "no-vocab")
    os.remove(no_vocab / "vocab.json")
    with pytest.raises(UserError, match=r"vocab\.json missing"):
        loader(no_vocab)

    bad_config = _copy(src, tmp_path, "bad-config")
    (bad_config / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="unreadable model folder"):
        loader(bad_config)

    truncated = _copy(src, tmp_path, "truncated")
    weights = truncated / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:4096])
    with pytest.raises(UserError, match="weights do not match") as info:
        loader(truncated)
    assert "\n" not in str(info.value)


def test_vqa_folder_without_answers_and_wrong_task(tmp_path):
    no_answers = _copy(BUNDLED["vqa"], tmp_path, "no-answers")
    os.remove(no_answers / "answers.json")
    with pytest.raises(UserError, match="unreadable vqa model folder"):
        load_captioner(no_answers)
    with pytest.raises(UserError, match="this is a VQA model folder, not a captioner folder"):
        load_captioner(BUNDLED["vqa"], task="caption")
    config = json.loads((no_answers / "config.json").read_text())
    config["task"] = "translation"
    (no_answers / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="unknown task 'translation', not a captioner or VQA model folder"):
        load_captioner(no_answers)
