"""Pairs are built with each tokenizer's own template, cut from the passage side, and padded per batch."""
from __future__ import annotations

import pytest
from tokenizers import ByteLevelBPETokenizer
from transformers import RobertaTokenizer

from bigrerank.data.pairs import PairEncoder
from tests.tiny import tiny_tokenizer

TEXT = ["weather in new york", "it is cold today in new york"]


def roberta_tokenizer() -> RobertaTokenizer:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(TEXT)] * 20, vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    model = bpe._tokenizer.model
    vocab = bpe.get_vocab()
    merges = [tuple(m.split()) if isinstance(m, str) else m for m in getattr(model, "merges", None) or []]
    return RobertaTokenizer(vocab=vocab, merges=merges)


@pytest.mark.parametrize("make", [tiny_tokenizer, roberta_tokenizer], ids=["bert", "roberta"])
def test_pairs_match_the_tokenizers_own_pair_encoding(make):
    tokenizer = make()
    encoder = PairEncoder(tokenizer, max_len=64)
    ids, types = encoder.encode_texts([TEXT[0]], [TEXT[1]])[0]
    expected = tokenizer(TEXT[0], TEXT[1], return_token_type_ids=True)
    assert ids == expected["input_ids"]
    assert types == expected["token_type_ids"]


def test_bert_and_roberta_templates():
    bert = PairEncoder(tiny_tokenizer(), 64).template
    assert (len(bert.prefix), len(bert.middle), len(bert.suffix)) == (1, 1, 1)  # [CLS] q [SEP] p [SEP]
    assert (bert.query_type, bert.passage_type) == (0, 1)
    roberta = roberta_tokenizer()
    template = PairEncoder(roberta, 64).template
    assert roberta.convert_ids_to_tokens(list(template.middle)) == ["</s>", "</s>"]  # <s> q </s></s> p </s>
    assert roberta.convert_ids_to_tokens(list(template.prefix)) == ["<s>"]


def test_truncation_cuts_the_passage_first_and_the_query_only_past_half():
    encoder = PairEncoder(tiny_tokenizer(), max_len=11)  # 8 tokens of room after [CLS] [SEP] [SEP]
    ids, _ = encoder.encode_ids([10, 11], list(range(20, 40)))
    assert ids == [2, 10, 11, 3, *range(20, 26), 3]
    ids, _ = encoder.encode_ids(list(range(10, 30)), [40, 41])
    assert ids == [2, 10, 11, 12, 13, 14, 15, 3, 40, 41, 3]  # query keeps room - passage = 6 >= half
    ids, _ = encoder.encode_ids(list(range(10, 30)), list(range(40, 60)))
    assert ids == [2, 10, 11, 12, 13, 3, 40, 41, 42, 43, 3]  # both long: half each
    with pytest.raises(ValueError, match="no room"):
        PairEncoder(tiny_tokenizer(), max_len=4).encode_ids([1], [2])


def test_batches_are_padded_to_their_longest_pair():
    encoder = PairEncoder(tiny_tokenizer(), max_len=64)
    batch = encoder.collate(encoder.encode_texts(["a", "weather in new york"], ["b", "cold"]))
    assert batch["input_ids"].shape == (2, len(encoder.encode_texts(["weather in new york"], ["cold"])[0][0]))
    assert batch["attention_mask"][0].sum() == 5 and batch["input_ids"][0, 5:].eq(0).all()
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
