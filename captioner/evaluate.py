"""`captioner evaluate` for captions: caption a split with the model and score it against its references."""

from __future__ import annotations

from captioner.datasets import load_caption_dataset, split_examples
from captioner.metrics import caption_scores
from captioner.api import Captioner
from captioner.model import LoadedCaptioner


def evaluate_captioner(loaded: LoadedCaptioner, data, split: str = "test", image_root=None, beam_width: int = 3,
                       max_images: int | None = None, meteor: bool = True) -> dict:
    """-> {Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr, exact_match, nltk_corpus_bleu4, images} (fractions 0..1)."""
    examples = split_examples(load_caption_dataset(data, image_root), split)
    if max_images:
        examples = examples[:max_images]
    results = Captioner(loaded).caption([e.image for e in examples], beam=beam_width, errors="return")
    references = {e.image_id: [" ".join(c) for c in e.captions] for e in examples}
    hypotheses = {e.image_id: r.caption for e, r in zip(examples, results)}
    scores = caption_scores(references, hypotheses, meteor=meteor)
    scores["images"] = len(examples)
    return scores
