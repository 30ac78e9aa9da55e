"""Model folders: what `lm train --out DIR` writes and what `--model DIR` reads.

A folder holds `config.json` (`{"arch": ..., "model": constructor kwargs, ...}`), `vocab.json` and the weights
(`model.weights.h5` for neural models, `ngram.npz` for the n-gram model). Omitting `--model` means the bundled
default (an LSTM trained on the King James Bible), shipped inside the package.

This module is also the one place for what every model folder of the project shares (language models, captioners,
VQA models; captioner.folders builds on it): `write_model_folder`, the one atomic folder writer (a kill during a
save leaves the previous complete folder, or is rolled forward by the next reader); `read_model_folder`;
`check_out_dir` (`--out` refuses an existing model without `--resume` / `--overwrite`); `TrainingState`, the resume
state kept in `resume/` while a run trains; and `BestEpoch`, the one best-epoch callback of every trainer.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field

import keras

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
    """Writes config.json, vocab.json and the weights as one atomic set (write_model_folder): a kill midway leaves
    the previous complete folder."""
    write_model_folder(directory, model_files(arch, model, vocab, extra))


def model_files(arch: str, model, vocab: Vocabulary, extra: dict | None = None) -> dict:
    """{file name: writer(path)} of a language-model folder (config.json, vocab.json, weights), for
    write_model_folder and BestEpoch. The weights are read when the writers run."""
    config = {"arch": arch, **(extra or {})}
    files = {}
    if arch == "ngram":
        files["ngram.npz"] = lambda path: _save_ngram(model, path)
    else:
        model_config = model.get_config()
        for key in ("name", "trainable", "dtype"):
            model_config.pop(key, None)
        if arch in RECURRENT_ARCHS:  # the folder holds the stateless twin (FixedWindowLM has no such kwargs)
            model_config["stateful"] = False
            model_config.pop("batch_size", None)
        config["model"] = model_config
        files["model.weights.h5"] = lambda path: save_weights_without_carried_state(model, path)
    files["vocab.json"] = vocab.save
    files["config.json"] = json_writer(config)
    return files


def _save_ngram(model, path) -> None:
    """KneserNeyLM.save writes `ngram.npz` into a folder: write it into a scratch folder, then move it to `path`."""
    scratch = path + ".dir"
    written = model.save(scratch)
    os.replace(written, path)
    shutil.rmtree(scratch, ignore_errors=True)


# ---- atomic model folders --------------------------------------------------------------------------------------
RESUME_DIR = "resume"  # resume state inside a model folder while its training runs
PENDING = ".pending.json"  # the commit record of a folder write in progress
TMP_PREFIX = ".tmp-"


def json_writer(value):
    """A writer (path -> None) for write_model_folder that dumps `value` as indented JSON."""
    def write(path):
        with open(path, "w") as f:
            json.dump(value, f, indent=2)
    return write


def _staged(directory, name) -> str:
    """The temporary path of file `name` (which may sit in a subfolder): same folder, `.tmp-` prefix, same suffix
    (Keras insists that weights files end in `.weights.h5`)."""
    head, tail = os.path.split(name)
    return os.path.join(directory, head, TMP_PREFIX + tail)


def write_model_folder(directory, files: dict, remove=()) -> None:
    """The one folder writer of the project (lm, captions, VQA): writes `files` ({name: writer(path)}) into
    `directory` so that the folder changes from its old complete state to its new one, never to a mix.

    Every file is first written under a temporary name; then a commit record (`.pending.json`, itself written by
    an atomic rename) lists them; then each is renamed over its final name and the record is removed. A kill before
    the record leaves the old files untouched (the stray temporaries are cleared by the next write or read); a kill
    after it is rolled forward by `settle_model_folder`, which every reader calls. Names in `remove` are deleted in
    the same commit (e.g. a finished run's resume state).

    Example:
        >>> write_model_folder("runs/m", {"config.json": json_writer({"arch": "lstm"}), "vocab.json": vocab.save})
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    settle_model_folder(directory)
    for name, writer in files.items():
        staged = _staged(directory, name)
        os.makedirs(os.path.dirname(staged), exist_ok=True)
        writer(staged)
    record = {"replace": list(files), "remove": [r for r in remove if r not in files]}
    tmp = os.path.join(directory, TMP_PREFIX + PENDING)
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, os.path.join(directory, PENDING))  # the commit point
    settle_model_folder(directory)


def settle_model_folder(directory) -> None:
    """Finishes a folder write that a kill interrupted after its commit point (see write_model_folder) and clears
    temporaries of one interrupted before it. A folder that is not writable is left as it is."""
    directory = os.fspath(directory)
    pending = os.path.join(directory, PENDING)
    try:
        if os.path.isfile(pending):
            with open(pending) as f:
                record = json.load(f)
            for name in record.get("replace", []):
                if os.path.exists(_staged(directory, name)):
                    os.replace(_staged(directory, name), os.path.join(directory, name))
            for name in record.get("remove", []):
                path = os.path.join(directory, name)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                elif os.path.exists(path):
                    os.remove(path)
            os.remove(pending)
        for root, dirs, names in os.walk(directory):
            dirs[:] = [d for d in dirs if d in ("resume",)]  # model files sit at the top and in resume/ only
            for name in names:
                if name.startswith(TMP_PREFIX):
                    path = os.path.join(root, name)
                    shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
    except (OSError, ValueError):  # read-only folder, or a commit record edited by hand: read what is there
        pass


def check_out_dir(directory, resume: bool = False, overwrite: bool = False) -> bool:
    """Refuses to train over an existing model folder unless told to. Returns True when a run is to be resumed.

    `directory` holding config.json without `resume`/`overwrite` is a UserError; `resume` needs resume state
    (`resume/state.json`, written every epoch) unless the folder holds no model yet (then a run starts afresh);
    `resume` and `overwrite` together are refused.
    """
    directory = os.fspath(directory)
    if resume and overwrite:
        raise UserError("--resume continues a run and --overwrite starts a new one; give one of them")
    settle_model_folder(directory) if os.path.isdir(directory) else None
    has_model = os.path.isfile(os.path.join(directory, "config.json"))
    has_state = os.path.isfile(os.path.join(directory, RESUME_DIR, "state.json"))
    if resume:
        if has_state:
            return True
        if has_model:
            raise UserError(f"{directory}: nothing to resume (its training finished); "
                            "pass --overwrite to train it again from scratch")
        return False  # nothing there yet: --resume starts the run (so one command line serves every restart)
    if (has_model or has_state) and not overwrite:
        raise UserError(f"{directory} already holds a model; pass --overwrite to replace it, "
                        "or --resume to continue its training")
    if has_state:  # --overwrite: the old run's resume state must not be resumed by a later --resume
        write_model_folder(directory, {}, remove=[RESUME_DIR])
    return False


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
    settle_model_folder(directory)  # a save that a kill interrupted after its commit point: finish it
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


# ---- resume state and the best-epoch callback ------------------------------------------------------------------
def _numpy(variable):
    """A variable's value as a NumPy array, on any backend and under a TensorFlow strategy (whose mirrored
    variables `convert_to_numpy` cannot read: their `.numpy()` reads this replica's copy)."""
    import numpy as np
    from keras import ops
    value = variable.value
    if keras.backend.backend() == "tensorflow" and hasattr(value, "numpy"):
        return np.asarray(value.numpy())
    return ops.convert_to_numpy(value)


class TrainingState:
    """What `--resume` needs from the last finished epoch, kept in `DIR/resume/` while a run trains: every variable
    of the training model (weights, carried state, the seed generators of its dropout layers: its RNG) and of its
    optimizer (Adam's moments, the step counter that drives a learning-rate schedule, the learning rate itself),
    plus `state.json` (epochs done, the best-epoch callback's record). Batch order depends only on (seed, epoch),
    so it needs no state. The folder is removed when the run finishes.

    Example:
        >>> files = TrainingState.files(model, model.optimizer, {"epochs_done": 3})  # joins a folder write
        >>> info = TrainingState.restore("runs/m", model, model.optimizer)               # before fit(initial_epoch=3)
    """

    VARIABLES = RESUME_DIR + "/variables.npz"
    STATE = RESUME_DIR + "/state.json"

    @staticmethod
    def _variables(model, optimizer):
        return list(model.variables) + (list(optimizer.variables) if optimizer is not None else [])

    @classmethod
    def files(cls, model, optimizer, info: dict) -> dict:
        """{name: writer} for write_model_folder: the variables (npz, in a fixed order) and state.json."""
        from keras import ops
        if optimizer is not None and not optimizer.built:
            optimizer.build(model.trainable_variables)
        variables = cls._variables(model, optimizer)

        def write_variables(path):
            arrays = {f"v{i}": _numpy(v) for i, v in enumerate(variables)}
            with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to the temporary name
                import numpy as np
                np.savez(f, **arrays)

        return {cls.VARIABLES: write_variables, cls.STATE: json_writer(info)}

    @classmethod
    def load(cls, directory) -> dict:
        """state.json of a folder's resume state."""
        try:
            with open(os.path.join(directory, cls.STATE)) as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise UserError(f"{directory}: unreadable resume state ({e}); pass --overwrite to start again") from None

    @classmethod
    def restore(cls, directory, model, optimizer) -> dict:
        """Assigns the saved variables to `model` and `optimizer` (built here if needed); returns state.json.
        A model of other shapes (other flags than the run being resumed) is a one-line UserError."""
        import numpy as np
        info = cls.load(directory)
        if optimizer is not None and not optimizer.built:
            optimizer.build(model.trainable_variables)
        variables = cls._variables(model, optimizer)
        try:
            with np.load(os.path.join(directory, cls.VARIABLES), allow_pickle=False) as data:
                arrays = [data[f"v{i}"] for i in range(len(data.files))]
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{directory}: unreadable resume state ({e}); pass --overwrite to start again") from None
        shapes = [tuple(v.shape) for v in variables]
        if len(arrays) != len(variables) or any(a.shape != s for a, s in zip(arrays, shapes)):
            raise UserError(f"{directory}: the run being resumed had another model (other flags: "
                            f"{len(arrays)} saved variables vs {len(variables)}); resume with the flags it was "
                            "started with, or pass --overwrite")
        for variable, array in zip(variables, arrays):
            variable.assign(array)
        return info


class BestEpoch(keras.callbacks.Callback):
    """The one best-epoch callback of `lm train`, caption and VQA training.

    After every epoch: scores the model (`score(logs)`, or `logs[monitor]`); when it improves, writes the model
    folder (`folder_files()`: {name: writer}, e.g. captioner.folders.model_files) in one atomic write together with
    the resume state (TrainingState, when `resume_model` is given; written every epoch, improved or not); after an
    epoch without gain divides the learning rate by `lr_decay` (> 1) and stops after `patience` of them; stops on a
    non-finite score (divergence: nothing is saved) and after the epoch in which `time_budget` seconds ran out.

    Args:
        out_dir: the model folder.
        folder_files: () -> {name: writer} of the inference folder (called only when the epoch improved).
        score: (logs) -> float or None; None: read `monitor` from the logs (falling back to "loss").
        monitor: the history key of the score ("val_loss", "val_perplexity", "val_accuracy", ...).
        mode: "min" or "max".
        min_gain: relative improvement that counts as a gain (lm uses 0.001).
        patience, lr_decay, time_budget, start: see above (start: time.perf_counter() when training began).
        resume_model, resume_optimizer: the model whose variables and optimizer state the resume state holds.
        baseline: a score the first kept epoch must beat (e.g. the starting model's, for fine-tuning); None: the
            first finite score is kept.
        verbose: print one line per epoch.

    Example:
        >>> best = BestEpoch("runs/m", lambda: model_files(...), monitor="val_loss", patience=3, resume_model=model,
        ...                  resume_optimizer=model.optimizer)
        >>> model.fit(data, epochs=10, callbacks=[best]); best.finish()
    """

    def __init__(self, out_dir, folder_files, score=None, monitor="val_loss", mode="min", min_gain=0.0,
                 patience=None, lr_decay=1.0, time_budget=None, start=None, resume_model=None,
                 resume_optimizer=None, baseline=None, verbose=0):
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be min or max, got {mode!r}")
        self.out_dir, self.folder_files, self.score = os.fspath(out_dir), folder_files, score
        self.monitor, self.mode, self.min_gain = monitor, mode, float(min_gain)
        self.patience, self.lr_decay = patience, float(lr_decay or 1.0)
        self.time_budget, self.start = time_budget, start if start is not None else time.perf_counter()
        self.resume_model, self.resume_optimizer, self.verbose = resume_model, resume_optimizer, verbose
        self.best = math.inf if mode == "min" else -math.inf
        if baseline is not None:
            self.best = float(baseline)
        self.best_epoch, self.bad, self.history, self.saved, self.epochs_done = 0, 0, [], False, 0
        self.stopped = False  # a resumed run had already stopped (patience, time budget) before it was killed

    # ---- resume ----------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"epochs_done": self.epochs_done, "best": self.best, "best_epoch": self.best_epoch, "bad": self.bad,
                "history": self.history, "saved": self.saved, "stopped": bool(getattr(self.model, "stop_training",
                                                                                      False))}

    def resume(self) -> int:
        """Restores the resume state (variables, optimizer, this callback's record) from `out_dir`. Returns the
        epochs already done: pass it to fit as `initial_epoch` (Keras then prints `Epoch N+1/...` first)."""
        info = TrainingState.restore(self.out_dir, self.resume_model, self.resume_optimizer)
        self.epochs_done = int(info["epochs_done"])
        self.best, self.best_epoch, self.bad = float(info["best"]), int(info["best_epoch"]), int(info["bad"])
        self.history, self.saved, self.stopped = list(info["history"]), bool(info["saved"]), bool(info["stopped"])
        if self.verbose:
            print(f"resuming {self.out_dir} after epoch {self.epochs_done}", flush=True)
        return self.epochs_done

    def finish(self) -> None:
        """The run is over: removes the resume state (the folder is then a plain inference folder)."""
        if os.path.isdir(os.path.join(self.out_dir, RESUME_DIR)):
            write_model_folder(self.out_dir, {}, remove=[RESUME_DIR])

    # ---- every epoch -----------------------------------------------------------------------------------------
    def _gain(self, value) -> bool:
        if self.mode == "min":
            return value < self.best * (1 - self.min_gain) if math.isfinite(self.best) else True
        return value > self.best

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        value = self.score(logs) if self.score is not None else None
        if value is None:
            value = logs.get(self.monitor, logs.get("loss"))
        value = float(value) if value is not None else math.nan
        logs[self.monitor] = value
        optimizer = self.model.optimizer
        lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        entry = {"epoch": epoch + 1, self.monitor: value, "lr": lr}
        if "loss" in logs and self.monitor != "loss":
            entry["loss"] = float(logs["loss"])
        self.history.append(entry)
        self.epochs_done = epoch + 1
        files = {}
        if not math.isfinite(value):  # diverged: nothing worth saving, and later epochs will not recover
            self.model.stop_training = True
            if self.verbose:
                print(f"epoch {epoch + 1}: {self.monitor} {value} (diverged, stopping)", flush=True)
            return
        improved = self._gain(value)
        if improved:
            self.best, self.best_epoch, self.bad, self.saved = value, epoch + 1, 0, True
            files.update(self.folder_files())
        else:
            self.bad += 1
            if self.lr_decay > 1:
                optimizer.learning_rate.assign(lr / self.lr_decay)
            if self.patience is not None and self.bad >= self.patience:
                self.model.stop_training = True
        if self.time_budget and time.perf_counter() - self.start > self.time_budget:
            self.model.stop_training = True
        if self.resume_model is not None:
            files.update(TrainingState.files(self.resume_model, self.resume_optimizer, self.state()))
        if files:
            write_model_folder(self.out_dir, files)
        if self.verbose:
            shown = f"{100 * value:.2f}%" if self.monitor.endswith("accuracy") else f"{value:.4f}"
            mark = "saved" if improved else "no gain" + (f", learning rate -> {lr / self.lr_decay:.2e}"
                                                         if self.lr_decay > 1 else "")
            print(f"epoch {epoch + 1}: {self.monitor.replace('_', ' ')} {shown} ({mark})", flush=True)
