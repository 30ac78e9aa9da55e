#!/usr/bin/env bash
# COCO recipe (Karpathy split: 113,287 train+restval / 5,000 val / 5,000 test images, 5 captions each): the bundled
# EfficientNet-Lite0 ImageNet weights (offline, frozen: each image goes through the CNN once, into the shared
# feature cache, about 15 GB of float16 grids), soft-attention LSTM decoder, words seen at least 5 times, early
# stopping on validation CIDEr-D, then beam-3 scores on the 5,000 test images. Nothing loads the whole dataset: memory stays flat (scripts/bench_scale.py).
#
# Usage: scripts/train_coco.sh DATASET_JSON COCO_ROOT [OUT] [extra `captioner train` flags...]
#   DATASET_JSON  Karpathy's dataset_coco.json (from https://cs.stanford.edu/people/karpathy/deepimagesent/)
#   COCO_ROOT     the folder holding train2014/ and val2014/
#   OUT           model folder (default runs/coco); run again after a kill and it resumes (--resume)
# Example: scripts/train_coco.sh data/dataset_coco.json data/coco runs/coco --batch-size 64
# Expected time: see "Real datasets" in the README (estimates from scripts/bench_scale.py throughput).
exec "$(dirname "${BASH_SOURCE[0]}")/_train_karpathy.sh" "${BASH_SOURCE[0]}" runs/coco 15 3 "$@"
