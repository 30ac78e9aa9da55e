"""The Python API for language models: load a model folder, generate text, score text.

    >>> from lm import LanguageModel
    >>> model = LanguageModel.load()                      # no path: the bundled King James Bible LSTM
    >>> print(model.generate("And God said", max_tokens=10, seed=1))
    And God said unto him , ...
    >>> model.perplexity("in the beginning god created the heaven and the earth").perplexity
    61.2

`lm.LanguageModel` is this wrapper; the Keras model class it holds is `lm.model.LanguageModel` (`.keras_model`).
"""

from __future__ import annotations

import dataclasses
import os
import re

from lm.errors import UserError

OOV_WARNING = 0.10  # warn when more than this share of the words is unknown to the model
_PROSE_MARK = re.compile(r"^[\"'(\[]|[.,;:!?\"')\]]$")
_PTB_TOKENS = {"<unk>", "N"}  # the Penn Treebank's unknown-word and number tokens
_CLITIC = re.compile(r"^'[a-z]{1,2}$")  # 's 're 've 'll 'd 'm, split off as tokens in PTB-style text


@dataclasses.dataclass
class Generation:
    """A generated text. `str(g)` is `text`.

    Attributes:
        text: the prompt as given, then the generated words.
        words: the generated words.
        prompt_words: the prompt's words as the model read them.
        unknown_words: prompt words the model does not know (read as <unk>).
    """

    text: str
    words: list
    prompt_words: list
    unknown_words: list

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class PerplexityReport:
    """Perplexity of a text (PTB protocol: every line's <eos> is predicted and counted).

    Attributes:
        perplexity: exp(mean negative log likelihood per token).
        tokens: tokens scored (words and <eos>).
        oov_rate: share of the words (not <eos>) the model does not know; they are scored as <unk>, which makes
            the perplexity look better than the model's knowledge of the text.
        unknown_words: the most frequent unknown words (at most 10).
        looks_like_prose: the lines still carry punctuation or capitals, as raw prose does (read it as raw text).
        cache: with a neural cache (lm.cache), {"size", "theta", "lambda", "perplexity_without_cache"}; else None.
        mix: with a second model mixed in, {"model", "weight", "perplexity_without_mix"}; else None.
    """

    perplexity: float
    tokens: int
    oov_rate: float
    unknown_words: list
    looks_like_prose: bool = False
    cache: dict | None = None
    mix: dict | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def warnings(self) -> list[str]:
        """Lines to show a user beside the figure (empty when the text suits the model)."""
        out = []
        if self.oov_rate > OOV_WARNING:
            listed = ", ".join(self.unknown_words[:5])
            out.append(f"{self.oov_rate:.0%} of the words are not in the model's vocabulary (e.g. {listed}); they "
                       "are scored as <unk>, so the perplexity says little about this text")
        if self.looks_like_prose:
            out.append("the lines look like raw prose (punctuation or capitals attached to words); "
                       "score raw text with --raw (lm.LanguageModel.perplexity(..., raw=True))")
        return out


def looks_like_prose(sentences) -> bool:
    """True when many tokens of whitespace-split lines carry punctuation or capitals (raw prose, not PTB style).

    The Penn Treebank's own conventions do not count: `N` (its number token) and split-off clitics (`'s`, `'re`)."""
    tokens = [t for s in sentences for t in s][:20000]
    if not tokens:
        return False
    marked = sum(1 for t in tokens if t not in _PTB_TOKENS and not _CLITIC.match(t)
                 and (len(t) > 1 and _PROSE_MARK.search(t) or t[:1].isupper()))
    return marked / len(tokens) > 0.05


class LanguageModel:
    """A language model folder in memory (n-gram, fixed-window or recurrent; see lm.checkpoint).

    Example:
        >>> model = LanguageModel.load("runs/ptb-lstm")
        >>> model.generate("the market", max_tokens=20, temperature=0.8, seed=0).words[:3]
        ['is', 'expected', 'to']
    """

    def __init__(self, loaded, directory: str | None = None):
        self.loaded = loaded
        self.directory = directory

    @classmethod
    def load(cls, path=None) -> "LanguageModel":
        """Reads a model folder (`lm train CORPUS --out DIR`); None: the bundled KJV LSTM. Bad folders raise
        lm.errors.UserError with one line."""
        from lm.checkpoint import BUNDLED_MODEL, load_model_dir
        directory = os.fspath(path) if path is not None else None
        return cls(load_model_dir(directory), directory or BUNDLED_MODEL)

    @property
    def vocab(self):
        return self.loaded.vocab

    @property
    def arch(self) -> str:
        return self.loaded.arch

    @property
    def keras_model(self):
        """The Keras model (None for the n-gram model)."""
        return None if self.loaded.arch == "ngram" else self.loaded.model

    def generate(self, prompt: str = "", max_tokens: int = 30, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None) -> Generation:
        """Continues `prompt` until <eos> or `max_tokens` new words; temperature 0 = greedy.

        The prompt is tokenized as the training text was (lm.text.tokenize); words the model does not know are
        read as <unk> and listed in `unknown_words`. The returned text starts with the prompt as given."""
        from lm.inference import generate
        from lm.text import tokenize
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise UserError(f"max_tokens must be a whole number >= 1 (got {max_tokens!r})")
        if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
            raise UserError("need temperature >= 0, 0 < top_p <= 1 and top_k >= 0")
        words = tokenize(prompt or "")
        unknown = [w for w in words if w not in self.vocab]
        new = generate(self.loaded, words, max_tokens, temperature, top_k, top_p, seed)
        prompt = (prompt or "").strip()
        text = " ".join(([prompt] if prompt else []) + new)
        return Generation(text, new, words, unknown)

    def perplexity(self, text, raw: bool = False, cache_size: int = 0, cache_theta: float | None = None,
                   cache_lambda: float | None = None, mix=None, mix_weight: float | None = None) -> PerplexityReport:
        """Perplexity of `text`: a string (one sentence a line, or prose with raw=True), a list of such lines, or
        a list of token lists. Also reports the share of words the model does not know (`oov_rate`).

        `cache_size` > 0 interpolates a recurrent model with a neural cache over the last `cache_size` positions
        (lm.cache; theta and lambda default to lm.cache.DEFAULT_THETA / DEFAULT_LAMBDA; tune them with
        `lm tune-cache`). `mix` (a model folder or LanguageModel over the same vocabulary, e.g. a KN-5 n-gram)
        is interpolated first: p = (1 - mix_weight) p_self + mix_weight p_mix (default lm.cache.DEFAULT_MIX_WEIGHT;
        tune it with `lm tune-cache --mix`)."""
        from lm.text import split_sentences, tokenize
        if isinstance(text, str):
            lines = split_sentences(text) if raw else text.splitlines()
        else:
            lines = list(text)
        if raw:
            sentences = [tokenize(s) if isinstance(s, str) else list(s) for s in lines]
        else:
            sentences = [s.split() if isinstance(s, str) else list(s) for s in lines]
        return self.score_sentences([s for s in sentences if s], cache_size, cache_theta, cache_lambda, mix,
                                    mix_weight)

    def score_sentences(self, sentences, cache_size: int = 0, cache_theta: float | None = None,
                        cache_lambda: float | None = None, mix=None, mix_weight: float | None = None
                        ) -> PerplexityReport:
        """PerplexityReport of token lists (what `lm perplexity` reads from a file), with a neural cache when
        `cache_size` > 0 (see `perplexity`) and a second model mixed in when `mix` is given (a model folder or a
        LanguageModel: p = (1 - mix_weight) p_self + mix_weight p_mix, before the cache; lm.cache)."""
        import collections
        from lm import cache as neural_cache
        from lm.inference import perplexity
        theta = neural_cache.DEFAULT_THETA if cache_theta is None else float(cache_theta)
        lam = neural_cache.DEFAULT_LAMBDA if cache_lambda is None else float(cache_lambda)
        weight = neural_cache.DEFAULT_MIX_WEIGHT if mix_weight is None else float(mix_weight)
        neural_cache.check_cache(cache_size, theta, lam)
        neural_cache.check_mix_weight(weight)
        if not sentences:
            raise UserError("no text to score")
        words = [t for s in sentences for t in s]
        unknown = collections.Counter(t for t in words if t not in self.vocab)
        cache = mixed = None
        if cache_size or mix is not None:
            outputs = neural_cache.text_outputs(self.loaded, sentences)
            if mix is not None:
                other = mix if isinstance(mix, LanguageModel) else LanguageModel.load(mix)
                outputs = neural_cache.with_other_model(outputs, other.loaded, self.vocab, sentences,
                                                        f"--mix {other.directory}")
                mixed = {"model": other.directory, "weight": weight,
                         "perplexity_without_mix": outputs.plain_perplexity}
            weight = weight if mixed else 0.0
            ppl = neural_cache.perplexity_with_cache(outputs, cache_size, theta, lam, weight)
            tokens = len(outputs.targets)
            if cache_size:
                cache = {"size": int(cache_size), "theta": theta, "lambda": lam,
                         "perplexity_without_cache": neural_cache.perplexity_with_cache(outputs, 0, theta, lam, weight)}
        else:
            ppl, tokens = perplexity(self.loaded, sentences)
        return PerplexityReport(float(ppl), int(tokens), sum(unknown.values()) / max(len(words), 1),
                                [w for w, _ in unknown.most_common(10)], looks_like_prose(sentences), cache, mixed)
