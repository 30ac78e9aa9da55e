"""The neural cache (Grave, Joulin & Usunier 2017, "Improving neural language models with a continuous cache"), at
evaluation time, for recurrent models.

The model reads the text once by the project's evaluation protocol (lm.inference.perplexity: a stream model runs
`evaluation_rows` carrying its state, a sentence model each line from `<bos>`), keeping for every predicted position
t its hidden state h_t (the top recurrent layer's output, what the output layer reads) and log p_model(x_{t+1}).
Then, over the text in order, continuously across lines and the protocol's rows:

    p(w) = (1 - lambda) p_model(w) + lambda p_cache(w),
    p_cache(w) ∝ sum over the last N positions i < t with x_{i+1} = w of exp(theta * h_t · h_i).

The first position of a text has an empty cache and is scored by the model alone. With lambda = 0 the perplexity is
the plain one (the same model pass; only the summation order differs). The cache is computed `chunk` positions at a
time with matrix products (queries x the N + chunk keys before them, masked), so it costs about T x (N + chunk) x units
multiply-adds for T positions: seconds for PTB's test set with N = 2000 on a CPU. Memory: the hidden states of the
whole text (T x units float32) plus a few chunk x (N + chunk) arrays.

A second model can be mixed in before the cache (`--mix DIR --mix-weight W`): a Kneser-Ney n-gram model (or another
recurrent one) over the same vocabulary, p_mix = (1 - W) p_model + W p_other, the classic "RNN + KN-5" of Mikolov et
al. (2011). Its log p(target) is computed once per text and aligned with the model's positions; the cache then mixes
with p_mix. W = 0 gives the model's own perplexity.

Example:
    >>> outputs = text_outputs(load_model_dir("runs/ptb"), read_lines("ptb/valid.txt"))   # the model pass, once
    >>> tune(outputs, sizes=[2000], thetas=[0.1, 0.3], lambdas=[0.1, 0.2])["best"]         # a cheap grid
    {'size': 2000, 'theta': 0.3, 'lambda': 0.1, 'perplexity': ...}
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from lm.errors import UserError

DEFAULT_THETA = 0.3  # Grave et al.'s range for PTB-sized LSTMs; tune it (`lm tune-cache`)
DEFAULT_LAMBDA = 0.1
DEFAULT_TUNE_SIZES = (500, 1000, 2000)  # AWD-LSTM released a PTB cache of about 500 positions, WT-2 ~3,800
DEFAULT_THETAS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)
DEFAULT_LAMBDAS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4)
DEFAULT_MIX_WEIGHT = 0.3  # about what an n-gram earns beside a PTB LSTM on validation; tune it (`lm tune-cache --mix`)
DEFAULT_MIX_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


@dataclasses.dataclass
class TextOutputs:
    """What the model says about every predicted position of a text, in text order.

    Attributes:
        hidden: (T, units) float32, the top recurrent layer's output before predicting position t's target.
        targets: (T,) int32, the token predicted at each position.
        logp: (T,) float64, log p_model(target).
        other_logp: (T,) float64, log p(target) under a second model to mix in (`with_other_model`), or None.
    """

    hidden: np.ndarray
    targets: np.ndarray
    logp: np.ndarray
    other_logp: np.ndarray | None = None

    def mixed(self, weight: float) -> np.ndarray:
        """log((1 - weight) p_model + weight p_other) at every position; `logp` itself when weight is 0."""
        if not weight:
            return self.logp
        if self.other_logp is None:
            raise ValueError("no second model to mix in: use with_other_model first")
        with np.errstate(divide="ignore"):
            return np.logaddexp(np.log1p(-weight) + self.logp, np.log(weight) + self.other_logp)

    @property
    def plain_perplexity(self) -> float:
        return math.exp(-float(self.logp.sum()) / max(len(self.logp), 1))


def check_mix_weight(weight: float) -> None:
    if not 0 <= weight < 1:
        raise UserError(f"--mix-weight {weight}: need a number in [0, 1) (the share of the second model)")


def check_cache(size: int, theta: float, lam: float) -> None:
    """One-line UserError for values the cache cannot take."""
    if size < 0:
        raise UserError(f"--cache-size {size}: need a number of positions >= 0 (0 = no cache)")
    if not (math.isfinite(theta) and theta >= 0):
        raise UserError(f"--cache-theta {theta}: need a finite number >= 0")
    if not 0 <= lam <= 1:
        raise UserError(f"--cache-lambda {lam}: need a number in [0, 1]")


def text_outputs(loaded, sentences) -> TextOutputs:
    """Runs a recurrent model over `sentences` once, by the protocol of lm.inference.perplexity (same rows, same
    chunks, state carried the same way), and keeps hidden states, targets and log p_model(target) in text order."""
    from lm.checkpoint import RECURRENT_ARCHS
    from lm.data import evaluation_rows, sentence_batches
    from lm.inference import EVAL_ROWS, _numpy, recurrent_chunks, target_logp
    if loaded.arch not in RECURRENT_ARCHS:
        raise UserError(f"the neural cache needs a recurrent model (rnn, gru, lstm), not {loaded.arch}")
    sentences = [s for s in sentences if s]
    if not sentences:
        raise UserError("no text to score")
    vocab, model = loaded.vocab, loaded.model
    if loaded.mode == "stream":
        parts = recurrent_chunks(model, evaluation_rows(sentences, vocab, EVAL_ROWS), hidden=True)
    else:
        parts = _sentence_chunks(model, *sentence_batches(sentences, vocab), EVAL_ROWS)
    hidden, targets, logp = [], [], []
    for y, logits, h in parts:  # (rows, n, ...) pieces; the logits of one piece at a time are in memory
        hidden.append(_numpy(h).astype("float32"))
        targets.append(y)
        logp.append(target_logp(logits, y))
    axis = 1 if loaded.mode == "stream" else 0  # stream: chunks of columns; sentence: batches of rows
    hidden, targets, logp = (np.concatenate(a, axis=axis) for a in (hidden, targets, logp))
    # Row-major order of the non-pad targets is text order: a stream row is a contiguous piece of the text, the
    # rows follow each other; a sentence row is one line.
    keep = targets != vocab.pad_id
    return TextOutputs(hidden[keep], targets[keep].astype("int32"), logp[keep])


def with_other_model(outputs: TextOutputs, other, vocab, sentences, directory: str = "--mix") -> TextOutputs:
    """`outputs` with `other_logp`: log p(target) under `other` (a LoadedModel: n-gram or recurrent) at the same
    positions. `vocab` is the first model's; the two must share one vocabulary, or the mixture would not sum to 1."""
    from lm.checkpoint import RECURRENT_ARCHS
    if set(other.vocab.itos) != set(vocab.itos):
        raise UserError(f"{directory}: its vocabulary differs from the model's ({len(other.vocab)} against "
                        f"{len(vocab)} tokens): train both on the same corpus with the same --min-count/--max-vocab")
    sentences = [s for s in sentences if s]  # as text_outputs reads them
    if other.arch == "ngram":
        other_logp = other.model.token_logprobs(sentences)
        expected = [i for s in sentences for i in vocab.encode(list(s), add_eos=True)]  # each word, then <eos>
    elif other.arch in RECURRENT_ARCHS:
        second = text_outputs(other, sentences)
        other_logp = second.logp
        expected = [vocab.token_to_id(other.vocab.id_to_token(int(i))) for i in second.targets]
    else:
        raise UserError(f"{directory}: can mix in an n-gram or recurrent model, not a {other.arch} model")
    if len(other_logp) != len(outputs.targets) or not np.array_equal(np.asarray(expected), outputs.targets):
        raise UserError(f"{directory}: the two models read the text differently ({len(other_logp)} against "
                        f"{len(outputs.targets)} predicted tokens)")
    return dataclasses.replace(outputs, other_logp=np.asarray(other_logp, dtype="float64"))


def _sentence_chunks(model, x, y, rows: int):
    """Like lm.inference.recurrent_chunks for a sentence model: (targets, logits, hidden) of `rows` lines a time."""
    for i in range(0, len(x), rows):
        hidden, logits, _ = model.hidden_and_states(x[i: i + rows])
        yield y[i: i + rows], logits, hidden


def cache_probabilities(hidden: np.ndarray, targets: np.ndarray, sizes, thetas,
                        chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """p_cache(target) at every position, for each cache size and theta -> (probs (sizes, thetas, T) float64,
    has_cache (T,) bool: False where the cache is empty, i.e. at the first position).

    Vectorised: `chunk` query positions at a time against the max(sizes) + chunk keys before them."""
    hidden = np.asarray(hidden, dtype="float32")
    targets = np.asarray(targets)
    sizes, thetas = [int(s) for s in sizes], [float(t) for t in thetas]
    n = len(targets)
    probs = np.zeros((len(sizes), len(thetas), n))
    has_cache = np.arange(n) > 0 if sizes and min(sizes) > 0 else np.zeros(n, dtype=bool)
    longest = max(sizes, default=0)
    if longest <= 0:
        return probs, has_cache
    for start in range(0, n, chunk):
        end = min(n, start + chunk)
        k0, k1 = max(0, start - longest), end - 1  # keys k0 .. k1-1: the last query (end - 1) sees up to end - 2
        if k1 <= k0:
            continue
        dots = hidden[start:end] @ hidden[k0:k1].T  # (queries, keys)
        t = np.arange(start, end)[:, None]
        i = np.arange(k0, k1)[None, :]
        before = i < t
        same = targets[k0:k1][None, :] == targets[start:end, None]  # key i's next word is the query's target
        for a, size in enumerate(sizes):
            valid = before & (i >= t - size)
            masked = np.where(valid, dots, -np.inf)
            top = masked.max(axis=1, keepdims=True)
            centered = np.where(valid, dots - np.where(np.isfinite(top), top, 0), 0)  # <= 0 where valid
            for b, theta in enumerate(thetas):
                weights = np.exp(theta * centered) * valid  # the max key has weight 1: no underflow of the sum
                total = weights.sum(axis=1, dtype="float64")
                hit = (weights * same).sum(axis=1, dtype="float64")
                probs[a, b, start:end] = np.divide(hit, total, out=np.zeros_like(hit), where=total > 0)
    return probs, has_cache


def mixed_logp(logp: np.ndarray, cache_probs: np.ndarray, has_cache: np.ndarray, lam: float) -> np.ndarray:
    """log((1 - lam) p_model + lam p_cache) where the cache has entries, log p_model elsewhere; lam = 0 gives
    `logp` exactly."""
    with np.errstate(divide="ignore"):
        mixed = np.logaddexp(np.log1p(-lam) + logp, np.log(lam) + np.log(cache_probs))
    return np.where(has_cache, mixed, logp)


def _perplexity(logp: np.ndarray) -> float:
    return math.exp(-float(logp.sum()) / max(len(logp), 1))


def perplexity_with_cache(outputs: TextOutputs, size: int, theta: float, lam: float,
                          mix_weight: float = 0.0) -> float:
    """Perplexity of the text under the model (mixed with the second model by `mix_weight`), interpolated with a
    neural cache of `size` positions (0: no cache)."""
    logp = outputs.mixed(mix_weight)
    if not size:
        return _perplexity(logp)
    probs, has_cache = cache_probabilities(outputs.hidden, outputs.targets, [size], [theta])
    return _perplexity(mixed_logp(logp, probs[0, 0], has_cache, lam))


def tune(outputs: TextOutputs, sizes=DEFAULT_TUNE_SIZES, thetas=DEFAULT_THETAS, lambdas=DEFAULT_LAMBDAS,
         mix_weights=None) -> dict:
    """Grid search on one model pass (tune on the validation split) -> {"perplexity_without_cache", "tokens",
    "grid": [{"size", "theta", "lambda", "perplexity"}, ...], "best": the grid row of lowest perplexity}.

    With a second model (`with_other_model`) each row also has "mix_weight", tried over `mix_weights` (default
    DEFAULT_MIX_WEIGHTS), and the result has "perplexity_mixed_without_cache" (best weight, no cache). A size of 0
    is the model without a cache (one row per mix weight, lambda 0)."""
    mixing = outputs.other_logp is not None
    weights = [float(w) for w in (mix_weights if mix_weights is not None else DEFAULT_MIX_WEIGHTS)] if mixing else [0.0]
    cached = [int(s) for s in sizes if int(s) > 0]
    probs, has_cache = cache_probabilities(outputs.hidden, outputs.targets, cached, thetas)
    grid, without_cache = [], []
    for weight in weights:
        logp = outputs.mixed(weight)
        mix = {"mix_weight": weight} if mixing else {}
        without_cache.append({"mix_weight": weight, "perplexity": _perplexity(logp)})
        if any(int(s) == 0 for s in sizes):
            grid.append({"size": 0, "theta": 0.0, "lambda": 0.0, **mix, "perplexity": without_cache[-1]["perplexity"]})
        grid += [{"size": size, "theta": float(theta), "lambda": float(lam), **mix,
                  "perplexity": _perplexity(mixed_logp(logp, probs[a, b], has_cache, lam))}
                 for a, size in enumerate(cached) for b, theta in enumerate(thetas) for lam in lambdas]
    result = {"perplexity_without_cache": outputs.plain_perplexity, "tokens": int(len(outputs.targets))}
    if mixing:
        result["perplexity_mixed_without_cache"] = min(without_cache, key=lambda r: r["perplexity"])
    return {**result, "grid": grid, "best": min(grid, key=lambda r: r["perplexity"])}
