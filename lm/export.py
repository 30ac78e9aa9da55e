"""TensorFlow SavedModel of a language model: prompt strings -> greedy continuations, no project code needed.

Signature `serving_default`:
    inputs:  prompts  tf.string [batch]   raw text; tokenized in the graph exactly like lm.text.tokenize
    outputs: texts    tf.string [batch]   the prompt's tokens and the continuation, joined by spaces -- what
                                          `lm generate --temperature 0 --prompt TEXT` prints
             tokens   int32 [batch]       how many tokens were generated (before `<eos>` or max_tokens)

The search inside the graph is the one `lm.inference.generate` runs with temperature 0: the whole prompt (after
`<eos>`, or `<bos>` for a sentence model) goes through the network in one call, then one token at a time; `<pad>`
and `<bos>` are never picked; generation stops at `<eos>` or after `max_tokens` tokens. Prompts of one request are
generated one after the other with batch size 1, as in Python, so the numbers (and the words) are the same.

This module also holds the export plumbing that captioner.export shares (TensorFlow backend subprocess, output
folder handling, in-graph tokenizer and id -> text), since lm must not depend on captioner.

Example:
    >>> from lm.export import export_language_model
    >>> export_language_model("/tmp/lm_savedmodel", "runs/ptb-lstm", max_tokens=20)
    >>> import tensorflow as tf
    >>> serve = tf.saved_model.load("/tmp/lm_savedmodel").signatures["serving_default"]
    >>> serve(prompts=tf.constant(["the meaning of"]))["texts"]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

from lm.errors import UserError

__all__ = ["export_language_model", "tokenize_graph", "ids_to_text_graph", "TOKEN_PATTERN"]

#: lm.text's word pattern (lm.text._WORD: runs of Unicode letters and digits, inner apostrophes) in RE2 syntax, used
#: by the in-graph tokenizer.
TOKEN_PATTERN = r"[\pL\pN]+(?:['’][\pL\pN]+)*|<unk>"


# ================================================================================================ shared plumbing


def import_tensorflow():
    """TensorFlow, imported only when an export or an exported graph is built (`import lm` needs no TF)."""
    try:
        import tensorflow as tf
    except ImportError:
        raise UserError("exporting a SavedModel needs TensorFlow: pip install tensorflow") from None
    return tf


def run_with_tensorflow_backend(module: str, function: str, kwargs: dict) -> bool:
    """When Keras runs on another backend (JAX, PyTorch), runs `module.function(**kwargs)` in a subprocess with
    KERAS_BACKEND=tensorflow and returns True. Returns False (and does nothing) when the backend is TensorFlow.

    Weights are read from the model folder's .weights.h5, which any backend can load, so a model trained on JAX
    exports the same way."""
    import keras
    if keras.backend.backend() == "tensorflow":
        return False
    import importlib.util
    if importlib.util.find_spec("tensorflow") is None:  # a clear message before starting a subprocess
        import_tensorflow()
    code = f"import json, sys; from {module} import {function}; {function}(**json.loads(sys.argv[1]))"
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], env=env, capture_output=True,
                            text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        raise UserError(f"export failed in the TensorFlow subprocess: {lines[-1] if lines else 'no output'}")
    return True


def prepare_out_dir(out_dir) -> tuple[str, str]:
    """-> (final absolute path, temporary sibling folder to write into). An existing SavedModel is replaced;
    an existing non-empty folder that is not one is refused (nothing is ever deleted by mistake)."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise UserError(f"{out_dir}: exists and is not a folder; pick another output path")
        if os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, "saved_model.pb")):
            raise UserError(f"{out_dir}: folder is not empty and holds no SavedModel; pick an empty or new folder")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    return out_dir, tempfile.mkdtemp(prefix=".export-", dir=parent)


def save_module(module, signature, out_dir, info: dict, files: dict[str, str] | None = None) -> str:
    """tf.saved_model.save(module) into a temporary folder, adds assets.extra/ (export.json from `info`, copies of
    `files` {name: source path}), then moves it to out_dir, so a failed export never leaves half a SavedModel."""
    tf = import_tensorflow()
    final, tmp = prepare_out_dir(out_dir)
    try:
        tf.saved_model.save(module, tmp, signatures={"serving_default": signature})
        extra = os.path.join(tmp, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        with open(os.path.join(extra, "export.json"), "w") as f:
            json.dump(info, f, indent=2)
        for name, source in (files or {}).items():
            if source and os.path.isfile(source):
                shutil.copyfile(source, os.path.join(extra, name))
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def tokenize_graph(text):
    """tf.string [batch] -> tf.RaggedTensor [batch, None] of tokens, as lm.text.tokenize (lower=True).

    Python's `pattern.findall(text.lower())` is one RE2 replace here: each token is kept and followed by a space,
    every other character becomes a space (leftmost-first alternation scans the text exactly like findall), then
    the result is split on whitespace. `(?i)` keeps Python's re.IGNORECASE matching (e.g. of U+017F).
    """
    tf = import_tensorflow()
    lowered = tf.strings.lower(text, encoding="utf-8")
    spaced = tf.strings.regex_replace(lowered, f"(?i)({TOKEN_PATTERN})|(?s:.)", "\\1 ")
    return tf.strings.split(tf.strings.strip(spaced))


def ids_to_text_graph(ids, tokens):
    """ids int (batch, T) -> (text tf.string (batch,), words int32 (batch,), steps int32 (batch,)):
    Vocabulary.decode + " ".join -- stop at the first `<eos>`, drop `<pad>`/`<bos>`, keep `<unk>`. `steps` counts
    the positions up to and including the first `<eos>` (T when there is none)."""
    tf = import_tensorflow()
    table = tf.constant(list(tokens))
    ids = tf.cast(ids, tf.int32)
    before_eos = tf.equal(tf.cumsum(tf.cast(tf.equal(ids, 3), tf.int32), axis=1), 0)  # (batch, T)
    keep = before_eos & tf.not_equal(ids, 0) & tf.not_equal(ids, 2)
    safe = tf.where((ids >= 0) & (ids < len(tokens)), ids, tf.ones_like(ids))  # out of range -> <unk>
    words = tf.ragged.boolean_mask(tf.gather(table, safe), keep)
    steps = tf.minimum(tf.reduce_sum(tf.cast(before_eos, tf.int32), axis=1) + 1, tf.shape(ids)[1])
    return tf.strings.reduce_join(words, axis=1, separator=" "), tf.cast(words.row_lengths(), tf.int32), steps


# ================================================================================================ language model


def export_language_model(out_dir, model_dir=None, max_tokens: int = 30) -> str:
    """Writes a SavedModel: prompts -> greedy continuations (see the module docstring).

    Args:
        out_dir: folder to write (created; an existing SavedModel there is replaced).
        model_dir: a model folder from `lm train --out`; None = the bundled model. rnn, gru, lstm and window
            models export; the n-gram model does not (it is not a network).
        max_tokens: most tokens generated per prompt.

    Returns:
        out_dir as an absolute path.

    Example:
        >>> export_language_model("exported/lm", "runs/kjv-lstm", max_tokens=30)
    """
    max_tokens = int(max_tokens)
    if max_tokens < 1:
        raise UserError("max_tokens must be >= 1")
    kwargs = dict(out_dir=os.fspath(out_dir), model_dir=None if model_dir is None else os.fspath(model_dir),
                  max_tokens=max_tokens)
    if run_with_tensorflow_backend(__name__, "export_language_model", kwargs):
        return os.path.abspath(os.fspath(out_dir))
    tf = import_tensorflow()
    from lm.checkpoint import load_model_dir
    loaded = load_model_dir(model_dir)
    if loaded.arch == "ngram":
        raise UserError("the n-gram model cannot be exported as a SavedModel (it is not a network); "
                        "export an rnn, gru, lstm or window model")
    model, vocab = loaded.model, loaded.vocab
    start = vocab.bos_id if loaded.mode == "sentence" else vocab.eos_id
    eos = vocab.eos_id
    vocab_size = len(vocab)
    banned = tf.constant([i in (vocab.pad_id, vocab.bos_id) for i in range(vocab_size)])  # (vocab,)
    window = loaded.arch == "window"
    context = int(getattr(model, "context", 0))

    def pick(logits):  # (vocab,) -> int32 scalar: argmax with <pad>, <bos> banned (first index on ties)
        logits = tf.cast(logits, tf.float32)
        return tf.argmax(tf.where(banned, tf.fill(tf.shape(logits), float("-inf")), logits), output_type=tf.int32)

    def generate_recurrent(ids):  # ids int32 (L,) = start + prompt -> (max_tokens,) ids, -1 after the end
        logits, states = model.logits_and_states(ids[None, :], None)

        def body(i, row, states, out, done):
            token = pick(row)
            done = tf.equal(token, eos)
            out = tf.tensor_scatter_nd_update(out, [[i]], tf.where(done, -1, token)[None])
            logits, states = model.logits_and_states(tf.reshape(token, [1, 1]), states)
            return i + 1, logits[0, -1], states, out, done

        _, _, _, out, _ = tf.while_loop(
            lambda i, row, states, out, done: (i < max_tokens) & tf.logical_not(done), body,
            (tf.constant(0), logits[0, -1], states, tf.fill([max_tokens], -1), tf.constant(False)))
        return out

    def generate_window(ids):  # the fixed-window model sees the last `context` ids, padded on the left with <eos>
        history = tf.concat([tf.fill([context], eos), ids], 0)

        def body(i, history, out, done):
            row = model(history[None, -context:])[0]  # (vocab,)
            token = pick(row)
            done = tf.equal(token, eos)
            out = tf.tensor_scatter_nd_update(out, [[i]], tf.where(done, -1, token)[None])
            return i + 1, tf.concat([history, token[None]], 0), out, done

        _, _, out, _ = tf.while_loop(
            lambda i, history, out, done: (i < max_tokens) & tf.logical_not(done), body,
            (tf.constant(0), history, tf.fill([max_tokens], -1), tf.constant(False)),
            shape_invariants=(tf.TensorShape([]), tf.TensorShape([None]), tf.TensorShape([max_tokens]),
                              tf.TensorShape([])))
        return out

    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(vocab.itos), tf.range(vocab_size, dtype=tf.int32)),
        default_value=vocab.unk_id)
    words_table = tf.constant(vocab.itos)

    def serve(prompts):
        prompt_tokens = tokenize_graph(prompts)  # ragged (batch, None) strings
        ids = table.lookup(prompt_tokens)
        starts = tf.RaggedTensor.from_tensor(tf.fill([tf.shape(prompts)[0], 1], start))
        ids = tf.concat([starts, ids], axis=1)  # (batch, None): start token + prompt ids
        out = tf.map_fn(generate_window if window else generate_recurrent, ids,
                        fn_output_signature=tf.TensorSpec([max_tokens], tf.int32))  # (batch, max_tokens)
        generated = tf.ragged.boolean_mask(tf.gather(words_table, tf.maximum(out, 0)), out >= 0)
        texts = tf.strings.reduce_join(tf.concat([prompt_tokens, generated], axis=1), axis=1, separator=" ")
        return {"texts": texts, "tokens": tf.cast(generated.row_lengths(), tf.int32)}

    module = tf.Module()
    module.model_variables = list(model.variables)
    module.vocab_table = table
    module.serve = tf.function(serve, input_signature=[tf.TensorSpec([None], tf.string, name="prompts")],
                               autograph=False)
    directory = None if model_dir is None else os.fspath(model_dir)
    from lm.checkpoint import BUNDLED_MODEL
    directory = directory or BUNDLED_MODEL
    info = {"task": "language_model", "arch": loaded.arch, "mode": loaded.mode, "max_tokens": max_tokens,
            "search": "greedy (temperature 0)"}
    return save_module(module, module.serve, out_dir, info,
                       {name: os.path.join(directory, name) for name in ("config.json", "vocab.json")})
