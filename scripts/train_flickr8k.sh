#!/usr/bin/env bash
# Flickr8k recipe (Karpathy split): the bundled EfficientNet-Lite0 ImageNet weights (offline, frozen: each image
# goes through the CNN once, into the shared feature cache), soft-attention LSTM decoder, words seen at least 5
# times, early stopping on validation CIDEr-D, then beam-3 scores on the test split.
#
# Usage: scripts/train_flickr8k.sh DATASET_JSON IMAGE_DIR [OUT] [extra `captioner train` flags...]
#   DATASET_JSON  Karpathy's dataset_flickr8k.json (from https://cs.stanford.edu/people/karpathy/deepimagesent/)
#   IMAGE_DIR     the folder with the 8,091 JPEGs (Flicker8k_Dataset/)
#   OUT           model folder (default runs/flickr8k); run again after a kill and it resumes (--resume)
# Example: scripts/train_flickr8k.sh data/dataset_flickr8k.json data/Flicker8k_Dataset runs/flickr8k --epochs 30
# Expected time: see "Real datasets" in the README (estimates from scripts/bench_scale.py throughput).
exec "$(dirname "${BASH_SOURCE[0]}")/_train_karpathy.sh" "${BASH_SOURCE[0]}" runs/flickr8k 20 4 "$@"
