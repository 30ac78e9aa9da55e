"""Caption metrics (the COCO caption evaluation, pycocoevalcap) and VQA accuracy (the official VQA evaluation).

Scale: every score is a fraction, as pycocoevalcap returns it. BLEU, METEOR, ROUGE-L, exact match and VQA accuracy
lie in 0..1 (papers print them x100: "BLEU-4 24.3" is 0.243 here). CIDEr is pycocoevalcap's CIDEr-D, which is
0..10 by construction (papers print x100: "CIDEr 95.2" is 0.952 here); it can exceed 1. CIDEr weights n-grams by
their inverse document frequency over the reference sets, so it needs several images: with one image it is 0.

Tokenization for the COCO metrics is pycocoevalcap's: the Stanford PTBTokenizer (Java), lower case, punctuation
removed. Without Java, a pure-Python stand-in is used (lm.text.tokenize) and METEOR (also Java) is None, each with
a warning.

VQA normalisation and accuracy follow the official `vqaEval.py` (GT-Vision-Lab/VQA) line for line, quirks included.

Example:
    >>> scores = caption_scores({"1": ["a red circle"], "2": ["a blue square"]}, {"1": "a red circle", "2": "a square"})
    >>> round(scores["exact_match"], 2)
    0.5
    >>> vqa_accuracy(["Two"], [["2"] * 10])["accuracy"]
    1.0
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import warnings
from collections import defaultdict
from typing import Sequence

from lm.errors import UserError
from lm.text import tokenize

# ---- captions ------------------------------------------------------------------------------------------------------
_PTB_PUNCTUATIONS = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
                     "...", ";"}  # as pycocoevalcap.tokenizer.ptbtokenizer removes them


def java_available() -> bool:
    """Whether a `java` executable is on PATH (METEOR and the PTB tokenizer need it)."""
    return shutil.which("java") is not None


def _ptb_tokenize(sentences: list[str]) -> list[str]:
    """pycocoevalcap's PTBTokenizer on a flat list, run from a temporary folder (site-packages may be read-only).

    Returns one space-joined, lower-cased, punctuation-free string per input sentence. Falls back to
    lm.text.tokenize (with a warning) when Java is missing or the tokenizer fails.
    """
    clean = [" ".join(s.replace("\n", " ").replace("\r", " ").split()) for s in sentences]
    if not clean:
        return []
    if java_available():
        try:
            from pycocoevalcap.tokenizer import ptbtokenizer

            jar = os.path.join(os.path.dirname(os.path.abspath(ptbtokenizer.__file__)),
                               ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
            with tempfile.TemporaryDirectory() as tmp:
                src = os.path.join(tmp, "sentences.txt")
                with open(src, "w", encoding="utf-8") as f:
                    # An empty line would still come back as one line, but make it explicit and safe.
                    f.write("\n".join(c if c else "." for c in clean) + "\n")
                result = subprocess.run(
                    ["java", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase",
                     src], capture_output=True, check=True, timeout=600)
            lines = result.stdout.decode("utf-8", errors="replace").split("\n")
            if len(lines) >= len(clean):
                return [" ".join(w for w in line.rstrip().split(" ") if w and w not in _PTB_PUNCTUATIONS)
                        for line in lines[: len(clean)]]
            warnings.warn("PTBTokenizer returned fewer lines than it was given; using the Python tokenizer")
        except (OSError, subprocess.SubprocessError, ImportError) as e:
            warnings.warn(f"PTBTokenizer failed ({type(e).__name__}); using the Python tokenizer")
    else:
        warnings.warn("java not found: tokenizing captions in Python (scores differ slightly from the official ones)")
    return [" ".join(tokenize(c)) for c in clean]


def _meteor(gts: dict[str, list[str]], res: dict[str, list[str]]) -> float | None:
    if not java_available():
        warnings.warn("java not found: METEOR is None (install a Java runtime to compute it)")
        return None
    try:
        from pycocoevalcap.meteor.meteor import Meteor

        meteor = Meteor()
        try:
            # Meteor's wire protocol breaks on an empty hypothesis: give it a placeholder that matches nothing.
            res = {k: [v[0] if v[0].strip() else "<empty>"] for k, v in res.items()}
            score, _ = meteor.compute_score(gts, res)
        finally:
            del meteor  # closes the Java process
        return float(score)
    except Exception as e:  # noqa: BLE001 - any Java trouble becomes a missing score, not a crash
        warnings.warn(f"METEOR failed ({type(e).__name__}: {e}); METEOR is None")
        return None


def caption_scores(references: dict[str, list[str]], hypotheses: dict[str, str], meteor: bool = True) -> dict:
    """Scores generated captions against reference captions, COCO-style.

    Args:
        references: image id -> reference captions (raw text; at least one each).
        hypotheses: image id -> generated caption (raw text). Every id must have references; references may hold
            more ids than are scored (only the hypotheses' ids are used).
        meteor: set False to skip METEOR (it starts a Java process and takes a few seconds).

    Returns:
        dict: "Bleu_1".."Bleu_4", "METEOR" (None without Java), "ROUGE_L", "CIDEr" (pycocoevalcap, as fractions;
        CIDEr-D is on its 0..10 scale), "exact_match" (share of hypotheses whose lm.text.tokenize tokens equal one
        reference's), "nltk_corpus_bleu4" (NLTK corpus_bleu over the same PTB tokens, uniform 4-gram weights,
        SmoothingFunction().method1: 0.1 added to zero n-gram match counts, which only matters for tiny test
        sets; it differs a little from pycocoevalcap's BLEU, which uses the "closest" reference length and its own
        tiny smoothing), and "count" (images scored).

    Example:
        >>> s = caption_scores({"a": ["a dog runs"], "b": ["two cats"]}, {"a": "a dog runs", "b": "two cats"})
        >>> round(s["Bleu_1"], 6), s["exact_match"]
        (1.0, 1.0)
    """
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if not hypotheses:
        raise UserError("no captions to score (the hypotheses are empty)")
    ids = list(hypotheses)
    references = {k: [v] if isinstance(v, str) else list(v) for k, v in references.items()}
    for i in ids:
        refs = references.get(i)
        if not refs or not any(isinstance(r, str) and r.strip() for r in refs):
            raise UserError(f"no reference captions for image {i!r}")

    # One PTB pass over everything (one Java start), then regroup.
    flat, owners = [], []
    for i in ids:
        for r in references[i]:
            if isinstance(r, str) and r.strip():
                flat.append(r)
                owners.append(("ref", i))
        flat.append(str(hypotheses[i] or ""))
        owners.append(("hyp", i))
    tokenized = _ptb_tokenize(flat)
    gts: dict[str, list[str]] = defaultdict(list)
    res: dict[str, list[str]] = {}
    for (kind, i), text in zip(owners, tokenized):
        if kind == "ref":
            gts[i].append(text)
        else:
            res[i] = [text]
    gts = {i: gts[i] for i in ids}

    scores: dict = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for n, b in enumerate(bleu, 1):
        scores[f"Bleu_{n}"] = float(b)
    scores["METEOR"] = _meteor(gts, res) if meteor else None
    scores["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])

    matches = 0
    for i in ids:
        hyp = tokenize(str(hypotheses[i] or ""))
        matches += any(tokenize(r) == hyp for r in references[i] if isinstance(r, str))
    scores["exact_match"] = matches / len(ids)
    scores["nltk_corpus_bleu4"] = float(corpus_bleu(
        [[g.split() for g in gts[i]] for i in ids], [res[i][0].split() for i in ids],
        weights=(0.25, 0.25, 0.25, 0.25), smoothing_function=SmoothingFunction().method1))
    scores["count"] = len(ids)
    return scores


# ---- VQA -----------------------------------------------------------------------------------------------------------
# Copied from the official evaluation (GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py).
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't",
    "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am",
    "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
_MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
               "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = ("a", "an", "the")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: the official pattern (a look-ahead, not a look-behind)
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]


def _process_punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or (re.search(_COMMA_STRIP, text) is not None):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, re.UNICODE)  # sic: re.UNICODE lands in `count` (32) in the official code


def _process_digit_article(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = _MANUAL_MAP.get(word, word)
        if word not in _ARTICLES:
            words.append(word)
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """The official VQA normalisation of an answer (what vqaEval.py does to a predicted answer).

    Newlines and tabs become spaces, the text is stripped; punctuation is dropped (or turned into a space when it
    sits inside a word, e.g. "t-shirt" -> "t shirt"); a period is removed unless a digit follows it ("2.5" stays);
    then lower case, number words zero..ten become digits, the articles a / an / the go, and apostrophe-less
    contractions get their apostrophe ("dont" -> "don't"). Words are joined by single spaces.

    Example:
        >>> normalize_answer("Two"), normalize_answer("the dog."), normalize_answer("yes!")
        ('2', 'dog', 'yes')
    """
    text = str(text).replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(text))


def _official_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """vqaEval.py for one question: the prediction fully normalised; the annotators' answers get only the
    punctuation step, and only when they disagree; then the mean over annotators of min(1, matches among the
    others / 3)."""
    pred = normalize_answer(prediction)
    gts = [str(a) for a in answers]
    if len(set(gts)) > 1:
        gts = [_process_punctuation(a) for a in gts]
    accs = []
    for k in range(len(gts)):
        matches = sum(1 for m, a in enumerate(gts) if m != k and a == pred)
        accs.append(min(1.0, matches / 3.0))
    return sum(accs) / len(accs)


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]],
                 answer_types: Sequence[str | None] | None = None, official: bool = True) -> dict:
    """VQA accuracy of predicted answers.

    With 10 or more reference answers per question (VQA v1/v2 have exactly 10) this is the official metric: for
    each annotator, min(1, #other annotators who gave the prediction / 3), averaged over the annotators, so an
    answer given by 1, 2, 3, >=4 of 10 annotators scores 0.3, 0.6, 0.9, 1.0. The prediction is normalised with
    `normalize_answer`; the references get the official treatment (punctuation step only, only when they
    disagree; VQA's annotations are already normalised). Pass official=False to normalise references fully too
    (for your own data, where references may say "Two").

    With fewer than 10 references (one answer, or a few acceptable ones, as in the scenes or your own JSONL) it is
    plain accuracy: 1 when the normalised prediction equals any normalised reference.

    Args:
        predictions: one answer string per question.
        answers: the reference answers of each question (at least one each).
        answer_types: optional type per question ("yes/no", "number", "other"); None entries are not grouped.

    Returns:
        {"accuracy": mean over questions in 0..1, "per_type": {answer type: accuracy}, "count": questions}.

    Example:
        >>> vqa_accuracy(["cat"], [["cat", "cat"] + ["dog"] * 8])["accuracy"]
        0.6
    """
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions but {len(answers)} answer lists")
    if answer_types is not None and len(answer_types) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions but {len(answer_types)} answer types")
    scores = []
    by_type: dict[str, list[float]] = defaultdict(list)
    for k, (pred, refs) in enumerate(zip(predictions, answers)):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs:
            raise ValueError(f"question {k} has no reference answers")
        if len(refs) >= 10:
            acc = _official_accuracy(pred, refs if official else [normalize_answer(r) for r in refs])
        else:
            acc = float(normalize_answer(pred) in {normalize_answer(r) for r in refs})
        scores.append(acc)
        if answer_types is not None and answer_types[k] is not None:
            by_type[str(answer_types[k])].append(acc)
    return {
        "accuracy": sum(scores) / len(scores) if scores else 0.0,
        "per_type": {t: sum(v) / len(v) for t, v in sorted(by_type.items())},
        "count": len(scores),
    }
