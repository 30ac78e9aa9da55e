"""Captioner and VQA model folders: the one module that writes and reads them.

A folder holds config.json (`{"task": "caption" | "vqa", "model": constructor kwargs, "max_length": ...}`),
vocab.json, model.weights.h5 (backbone and the rest together, so a folder needs nothing else to run) and, for VQA,
answers.json. Writes go through lm.checkpoint.write_model_folder, the project's one atomic folder writer (a kill
during a save leaves the previous complete folder); while a run trains, `resume/` holds its resume state
(lm.checkpoint.TrainingState). Omitting `--model` means the bundled model of the task (trained on synthetic scenes
by scripts/train_bundled_captioner.sh and scripts/train_bundled_vqa.sh).

This module imports the models (captioner.model, captioner.vqa.model); they never import it, so there is no import
circle between them.

Example:
    >>> save_model_dir("runs/m", "caption", model, vocab, extra={"max_length": 20})
    >>> loaded = load_model_dir("runs/m", task="caption")
    >>> loaded.model, loaded.vocab, loaded.config["max_length"]
"""

from __future__ import annotations

import contextlib
import json
import os

from captioner.backbones import backbone_spec
from captioner.model import build_captioner
from captioner.vqa.model import build_vqa_model
from lm.checkpoint import json_writer, load_weights_file, read_model_folder, write_model_folder
from lm.errors import UserError
from lm.vocab import Vocabulary

ASSETS = os.path.join(os.path.dirname(__file__), "assets")
BUNDLED = {"caption": os.path.join(ASSETS, "scenes-captioner"), "vqa": os.path.join(ASSETS, "scenes-vqa")}
TASKS = ("caption", "vqa")


def model_files(task: str, model, vocab: Vocabulary, extra: dict | None = None,
                answers: list[str] | None = None) -> dict:
    """{file name: writer(path)} of a model folder, for lm.checkpoint.write_model_folder (and BestEpoch).

    The weights are written without the optimizer (a model folder is for inference; Adam's two moments would
    triple its size). They are written when the writer runs, so call this when the weights are the ones to keep.
    """
    config = model.get_config()
    for key in ("name", "trainable", "dtype"):
        config.pop(key, None)
    payload = {"task": task, "model": config, **(extra or {})}

    def write_weights(path):  # path ends in ".weights.h5", as Keras insists
        with _without_optimizers(model):
            model.save_weights(path)

    files = {"model.weights.h5": write_weights, "vocab.json": vocab.save}
    if answers is not None:
        files["answers.json"] = json_writer(list(answers))
    files["config.json"] = json_writer(payload)
    return files


def save_model_dir(directory, task: str, model, vocab: Vocabulary, extra: dict | None = None,
                   answers: list[str] | None = None) -> None:
    """Writes config.json, vocab.json (and answers.json for VQA) and model.weights.h5 as one atomic set."""
    write_model_folder(directory, model_files(task, model, vocab, extra, answers))


@contextlib.contextmanager
def _without_optimizers(model):
    """Hides the optimizer of the model and of its sub-models (the decoder trains alone on cached features) while
    the weights are saved: a model folder is for inference, and Adam's two moments would triple its size."""
    owners = [m for m in [model, *getattr(model, "layers", [])] if getattr(m, "optimizer", None) is not None]
    saved = [m.optimizer for m in owners]
    try:
        for m in owners:
            m.optimizer = None
        yield
    finally:
        for m, optimizer in zip(owners, saved):
            m.optimizer = optimizer


class LoadedCaptioner:
    """A model folder in memory: `.task`, `.model`, `.vocab`, `.config` (and `.answers` for VQA)."""

    def __init__(self, task, model, vocab, config, answers=None, directory=None):
        self.task, self.model, self.vocab, self.config = task, model, vocab, config
        self.answers, self.directory = answers, directory

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.model.image_size)

    @property
    def resize_policy(self) -> str:
        return self.config.get("resize_policy") or backbone_spec(self.model.backbone_name).policy


_TASK_NAMES = {"caption": "captioner", "vqa": "VQA model"}


def _folder_kind(config: dict) -> str:
    """What a model folder's config.json says it is, in words ("a language-model folder (lm, lstm)", ...)."""
    if config.get("task") in _TASK_NAMES:
        return f"a {_TASK_NAMES[config['task']]} folder"
    if "arch" in config:
        return f"a language-model folder (lm, {config['arch']}; use it with the `lm` command)"
    if config.get("task") is not None:
        return f"a model folder of unknown task {config['task']!r}"
    return "not a model folder this program knows (no \"task\" in config.json)"


def load_model_dir(directory=None, task: str | None = None) -> LoadedCaptioner:
    """Reads a captioner or VQA model folder; None means the bundled one for `task` (default caption)."""
    if directory is None:
        directory = BUNDLED[task or "caption"]
        if not os.path.isfile(os.path.join(directory, "config.json")):
            raise UserError(f"the bundled {task or 'caption'} model is missing ({directory}); "
                            "pass --model DIR or reinstall the package")
    directory = os.fspath(directory)
    config, vocab = read_model_folder(directory, required=("config.json", "vocab.json", "model.weights.h5"),
                                      how_to_make="captioner train DATA --out DIR")
    found = config.get("task")
    if task is not None and found != task:
        raise UserError(f"{directory}: this is {_folder_kind(config)}, not a {_TASK_NAMES.get(task, task)} folder")
    answers = None
    from lm.startup import weights_to_be_loaded
    try:
        if found == "vqa":
            with open(os.path.join(directory, "answers.json")) as f:
                answers = json.load(f)
            with weights_to_be_loaded():  # initial values are overwritten by load_weights below
                model = build_vqa_model(config["model"])
        elif found == "caption":
            with weights_to_be_loaded():
                model = build_captioner(config["model"])
        else:
            raise UserError(f"{directory}: this is {_folder_kind(config)}, not a captioner or VQA model folder")
    except (OSError, ValueError, KeyError, TypeError) as e:  # answers.json missing, config.json edited by hand
        raise UserError(f"{directory}: unreadable {found} model folder ({e})") from None
    load_weights_file(model, directory)
    return LoadedCaptioner(found, model, vocab, config, answers, directory)
