"""Model folders: what `lm train --out DIR` writes and what `--model DIR` reads.

A folder holds `config.json` (`{"arch": ..., "model": constructor kwargs, ...}`), `vocab.json` and the weights
(`model.weights.h5` for neural models, `ngram.npz` for the n-gram model). Omitting `--model` means the bundled
default (an LSTM trained on the King James Bible), shipped inside the package.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from lm.errors import UserError
from lm.vocab import Vocabulary

BUNDLED_MODEL = os.path.join(os.path.dirname(__file__), "assets", "kjv-lstm")
RECURRENT_ARCHS = ("rnn", "gru", "lstm")
ARCHS = ("ngram", "window") + RECURRENT_ARCHS


@dataclass
class LoadedModel:
    """A model read from a folder: `arch`, the model object, its vocabulary and the rest of config.json."""
    arch: str
    model: object
    vocab: Vocabulary
    config: dict = field(default_factory=dict)

    @property
    def mode(self) -> str:
        """"stream" (state carried across lines, a line starts after `<eos>`) or "sentence" (starts at `<bos>`)."""
        return self.config.get("mode", "stream")


def save_model_dir(directory, arch: str, model, vocab: Vocabulary, extra: dict | None = None) -> None:
    """Writes config.json, vocab.json and the weights. Writes to temporary names first, so a crash midway never
    leaves a folder whose weights do not match its config."""
    os.makedirs(directory, exist_ok=True)
    config = {"arch": arch, **(extra or {})}
    if arch == "ngram":
        model.save(directory)
    else:
        model_config = model.get_config()
        for key in ("name", "trainable", "dtype"):
            model_config.pop(key, None)
        if arch in RECURRENT_ARCHS:  # the folder holds the stateless twin (FixedWindowLM has no such kwargs)
            model_config["stateful"] = False
            model_config.pop("batch_size", None)
        config["model"] = model_config
        tmp = os.path.join(directory, "model.tmp.weights.h5")
        save_weights_without_carried_state(model, tmp)
        os.replace(tmp, os.path.join(directory, "model.weights.h5"))
    vocab.save(os.path.join(directory, "vocab.json.tmp"))
    os.replace(os.path.join(directory, "vocab.json.tmp"), os.path.join(directory, "vocab.json"))
    with open(os.path.join(directory, "config.json.tmp"), "w") as f:
        json.dump(config, f, indent=2)
    os.replace(os.path.join(directory, "config.json.tmp"), os.path.join(directory, "config.json"))


def save_weights_without_carried_state(model, path) -> None:
    """Saves a (possibly stateful) LanguageModel's weights in the layout of its stateless twin."""
    if not getattr(model, "stateful", False):
        model.save_weights(path)
        return
    twin = build_model("lstm", {**model.get_config(), "stateful": False, "batch_size": None})
    copy_weights(model, twin)
    twin.save_weights(path)


def copy_weights(source, target) -> None:
    """Copies every weight of `target` from the weight of `source` with the same path (carried state is skipped).

    The values are copied, not shared: on JAX, `fit` donates (deletes) the training model's arrays at its next
    step, and a target that shared them would be left holding deleted arrays.
    """
    from keras import ops
    by_path = {w.path.split("/", 1)[-1]: w for w in source.weights}
    for w in target.weights:
        w.assign(ops.copy(by_path[w.path.split("/", 1)[-1]].value))


def build_model(arch: str, model_config: dict):
    """Constructs (and builds) the model object of `arch` from its constructor kwargs."""
    from keras import ops
    from lm.model import FixedWindowLM, LanguageModel
    if arch == "window":
        model = FixedWindowLM(**model_config)
        model(ops.zeros((1, model.context), "int32"))
    else:
        model = LanguageModel(**model_config)
        batch = model.batch_size or 1
        model(ops.zeros((batch, 2), "int32"))
        model.reset_states()
    return model


def read_model_folder(directory, required=("config.json", "vocab.json"), what="model",
                      how_to_make="") -> tuple[dict, Vocabulary]:
    """The steps every model folder shares (language models, captioners, VQA models): the folder exists, the
    `required` files are there, config.json and vocab.json parse. Returns (config, vocabulary); any failure is a
    UserError of one line that names the folder."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise UserError(f"{directory}: no such model folder")
    missing = [name for name in required if not os.path.isfile(os.path.join(directory, name))]
    if missing:
        hint = f"; make one with `{how_to_make}`" if how_to_make else ""
        raise UserError(f"{directory}: not a {what} folder ({' and '.join(missing)} missing){hint}")
    try:
        with open(os.path.join(directory, "config.json")) as f:
            config = json.load(f)
        if not isinstance(config, dict):
            raise ValueError("config.json is not a JSON object")
        vocab = Vocabulary.load(os.path.join(directory, "vocab.json"))
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise UserError(f"{directory}: unreadable model folder ({e})") from None
    return config, vocab


def load_weights_file(model, directory, filename="model.weights.h5") -> None:
    """model.load_weights, with a weights file that does not fit the config turned into a one-line UserError."""
    path = os.path.join(directory, filename)
    if not os.path.isfile(path):
        raise UserError(f"{directory}: {filename} is missing")
    try:
        model.load_weights(path)
    except Exception as e:  # a weights file from another config or version, or a truncated one
        raise UserError(f"{directory}: weights do not match config.json ({str(e).splitlines()[0]})") from None


def load_model_dir(directory=None) -> LoadedModel:
    """Reads a model folder (default: the bundled model). Bad folders raise UserError with one line."""
    directory = os.fspath(directory) if directory else BUNDLED_MODEL
    if directory == BUNDLED_MODEL and not os.path.isdir(directory):
        raise UserError("the bundled model is not installed; pass --model DIR (make one with `lm train`)")
    config, vocab = read_model_folder(directory, what="language-model", how_to_make="lm train CORPUS --out DIR")
    arch = config.get("arch")
    if arch not in ARCHS:
        if config.get("task") in ("caption", "vqa"):  # a captioner folder handed to `lm`
            kind = "captioner" if config["task"] == "caption" else "VQA model"
            raise UserError(f"{directory}: this is a {kind} folder (use it with the `captioner` command), not a "
                            "language-model folder")
        raise UserError(f"{directory}: unknown architecture {arch!r} in config.json")
    if arch == "ngram":
        from lm.ngram import KneserNeyLM
        model = KneserNeyLM.load(directory)
    else:
        if not os.path.isfile(os.path.join(directory, "model.weights.h5")):
            raise UserError(f"{directory}: model.weights.h5 is missing")
        try:
            from lm.startup import weights_to_be_loaded
            with weights_to_be_loaded():  # initial values are overwritten by load_weights below
                model = build_model(arch, config["model"])
        except (KeyError, TypeError, ValueError) as e:  # config.json edited by hand or from another version
            raise UserError(f"{directory}: config.json does not describe a {arch} model ({e})") from None
        load_weights_file(model, directory)
    return LoadedModel(arch, model, vocab, config)
