"""Visual question answering: image grid + question encoder + stacked attention (SAN) + answer classifier.

The model (`VQAModel`), after Yang et al., "Stacked Attention Networks for Image Question Answering" (CVPR 2016):

    v_I = tanh(W_v [grid; x; y])                  image grid from captioner.backbones -> (batch, pixels, units)
    q   = tanh(W_q [h_fw; h_bw])                  final states of a bidirectional lm.recurrent stack, (batch, units)
    u_0 = q;  for k = 1..hops:
        h_a = tanh(W_I v_I + W_Q u_{k-1} [+ W_R r_k])  captioner.attention.SoftAttention, one per hop
        p_k = softmax(W_P h_a)                    (batch, pixels)
        u_k = sum_p p_k v_I + u_{k-1}
    logits = W_2 dropout(relu(W_1 u_K))           (batch, num_answers)

Three additions to the paper, each a config switch: every grid cell knows its position (`positions`: its (x, y)
appended to its features), hops after the first also see each cell relative to the previous glimpse (`offsets`:
r_k = [xy_p - sum_p' p_{k-1} xy_p'; P p_{k-1}], so "the object above the blue square" takes one hop: look at the
square, then above it), and the answer classifier has one hidden layer (`classifier_units`; 0 gives the paper's
single softmax layer). On the synthetic scenes (6000 images, 24 epochs) the offsets lift relation questions from
80% to 87% (offset alone) and 94% (offset and "seen"), and overall test accuracy from 91.5% to 95.0% and 98.0%.
Baselines behind `mode`: "blind" (the question alone, no backbone at all) and "mean" (u = q + mean_p v_I: the image
without attention). Training feeds several questions per image so the backbone runs once per image (see `call`).

Answers: the top-K normalised answers (captioner.metrics.normalize_answer) of the training split. Targets are the
soft scores of the VQA literature, min(#annotators who gave the answer / 3, 1) per candidate when a question has 10
or more reference answers (VQA v1/v2), and 1 for every reference answer otherwise (scenes, your own JSONL); the
scores are normalised to sum to 1 and trained with softmax cross-entropy. Questions none of whose answers is among
the top K are left out of training (they are still scored, as wrong, in evaluation).

The package, by concern: `model` (VQAModel, build_vqa_model), `data` (answer list, soft targets, question ids,
batches grouped by image), `training` (train_vqa), `answering` (answer_questions, evaluate_vqa). Their public names
are importable from `captioner.vqa` itself.

Example:
    >>> summary = train_vqa("scenes/vqa.jsonl", "runs/vqa", epochs=20)
    >>> loaded = captioner.model.load_model_dir("runs/vqa")
    >>> answer_questions(loaded, "scenes/images/00001.png", ["what color is the circle"])[0]["answer"]
    'red'
"""

from captioner.vqa.data import answer_list, answer_targets, encode_questions
from captioner.vqa.model import MAX_QUESTION_LENGTH, MODES, POSITIONS, VQAModel, build_vqa_model

_LAZY = {"train_vqa": "captioner.vqa.training", "answer_questions": "captioner.vqa.answering",
         "evaluate_vqa": "captioner.vqa.answering"}


def __getattr__(name):
    """train_vqa, answer_questions, evaluate_vqa: imported on first use, so that importing the model
    (captioner.folders does) does not import the training code, which writes model folders."""
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'captioner.vqa' has no attribute {name!r}")


__all__ = [
    "MODES",
    "VQAModel",
    "build_vqa_model",
    "answer_list",
    "answer_targets",
    "encode_questions",
    "train_vqa",
    "answer_questions",
    "evaluate_vqa",
]
