"""Tests for lm.vocab.Vocabulary: building, specials, encode/decode, JSON persistence. Milliseconds."""

from __future__ import annotations

import json

import pytest

from lm.vocab import BOS, EOS, PAD, SPECIALS, UNK, Vocabulary

SENTENCES = [["a", "cat", "sat"], ["a", "dog", "sat"], ["a", "cat", "ran"], ["<unk>", "cat"]]


def test_specials_come_first_with_fixed_ids():
    vocab = Vocabulary(["x", EOS, "y", PAD])
    assert vocab.itos[:4] == [PAD, UNK, BOS, EOS]
    assert (vocab.pad_id, vocab.unk_id, vocab.bos_id, vocab.eos_id) == (0, 1, 2, 3)
    assert vocab.itos[4:] == ["x", "y"]
    assert len(vocab) == 6


def test_build_orders_by_frequency_then_alphabetically():
    vocab = Vocabulary.build(SENTENCES)
    # a: 3, cat: 3, sat: 2, dog: 1, ran: 1; a literal <unk> is the unknown word, not a new one.
    assert vocab.itos == list(SPECIALS) + ["a", "cat", "sat", "dog", "ran"]


def test_build_min_count_and_max_size():
    assert Vocabulary.build(SENTENCES, min_count=2).itos[4:] == ["a", "cat", "sat"]
    assert Vocabulary.build(SENTENCES, min_count=3).itos[4:] == ["a", "cat"]
    # max_size counts the specials.
    assert Vocabulary.build(SENTENCES, max_size=6).itos == list(SPECIALS) + ["a", "cat"]
    assert len(Vocabulary.build(SENTENCES, max_size=2)) == 4  # never fewer than the specials
    assert Vocabulary.build(SENTENCES, min_count=2, max_size=5).itos[4:] == ["a"]


def test_duplicate_tokens_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        Vocabulary(["a", "b", "a"])


def test_encode_unknown_words_and_specials():
    vocab = Vocabulary.build(SENTENCES)
    assert vocab.encode(["a", "cat"]) == [4, 5]
    assert vocab.encode(["a", "zebra", "cat"]) == [4, 1, 5]
    assert vocab.encode(["a"], add_bos=True, add_eos=True) == [2, 4, 3]
    assert vocab.token_to_id("zebra") == vocab.unk_id
    assert "cat" in vocab and "zebra" not in vocab


def test_decode_stops_at_eos_and_strips_specials():
    vocab = Vocabulary.build(SENTENCES)
    ids = [2, 4, 0, 5, 1, 3, 6, 7]
    assert vocab.decode(ids) == ["a", "cat", UNK]  # <bos>/<pad> dropped, <unk> kept, stops at <eos>
    assert vocab.decode(ids, stop_at_eos=False) == ["a", "cat", UNK, "sat", "dog"]
    assert vocab.decode([2, 4, 3], strip_specials=False) == [BOS, "a"]
    assert vocab.decode([4, 999, -5]) == ["a", UNK, UNK]  # out-of-range ids read as <unk>
    assert vocab.decode_text(vocab.encode(["a", "zebra", "sat"], add_eos=True)) == "a <unk> sat"


def test_json_round_trip(tmp_path):
    vocab = Vocabulary.build(SENTENCES + [["é", "日本"]])
    path = tmp_path / "vocab.json"
    vocab.save(path)
    again = Vocabulary.load(path)
    assert again == vocab and again.itos == vocab.itos
    assert again.encode(["é", "日本", "?"]) == vocab.encode(["é", "日本", "?"])
    assert json.loads(path.read_text(encoding="utf-8"))["tokens"][:4] == list(SPECIALS)


@pytest.mark.parametrize("content", [
    "{not json",
    json.dumps({"tokens": ["a", "b"]}),  # specials missing
    json.dumps({"words": list(SPECIALS)}),  # wrong key
    json.dumps(None),
    json.dumps({"tokens": list(SPECIALS) + [5]}),  # not a string
    json.dumps({"tokens": list(SPECIALS) + ["a", "a"]}),  # duplicates
])
def test_corrupt_vocab_file_raises_value_error(tmp_path, content):
    path = tmp_path / "vocab.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError):
        Vocabulary.load(path)
