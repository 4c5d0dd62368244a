"""RerankerForInference: tokenize / forward / score / rerank agree with direct model calls."""
from __future__ import annotations

import pytest
import torch

from bigrerank import RerankerForInference
from bigrerank.data.pairs import PairEncoder
from bigrerank.sharded_scoring import length_sorted_batches
from tests.tiny import spread_model_dir

QUERIES = ["weather in new york", "python code", "what is the code of python", "cold"]
PASSAGES = ["it is cold today in new york", "what is python", "the code of python is new in york today " * 3, "x"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return spread_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def reranker(model_dir):
    return RerankerForInference.from_pretrained(model_dir, device="cpu")


def direct_score(reranker, query, passage):
    """One pair through the bare HF model, no batching and no padding."""
    encoder = PairEncoder(reranker.tokenizer, reranker.max_len)
    with torch.no_grad():
        return reranker.hf_model(**encoder.collate(encoder.encode_texts([query], [passage]))).logits.item()


def test_loads_in_eval_mode_with_model_limits(reranker):
    assert not reranker.hf_model.training
    assert reranker.max_len == 128  # the tiny config's position table
    assert reranker.device == torch.device("cpu")


def test_tokenize_uses_the_pair_template(reranker):
    inputs = reranker.tokenize("weather in new york", "it is cold today in new york", return_tensors="pt")
    encoder = PairEncoder(reranker.tokenizer, 128)
    expected = encoder.encode_texts(["weather in new york"], ["it is cold today in new york"])
    assert inputs["input_ids"].tolist() == [expected[0][0]]
    assert inputs["token_type_ids"].tolist() == [expected[0][1]]
    assert inputs["attention_mask"].tolist() == [[1] * len(expected[0][0])]
    tokens = reranker.tokenizer.convert_ids_to_tokens(expected[0][0])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"


def test_tokenize_single_pair_without_tensors_gives_flat_lists(reranker):
    single = reranker.tokenize("python code", "what is python")
    batched = reranker.tokenize(["python code"], ["what is python"])
    assert isinstance(single["input_ids"][0], int)
    assert batched["input_ids"] == [single["input_ids"]]


def test_tokenize_lists_pads_and_broadcasts_one_query(reranker):
    inputs = reranker.tokenize("python code", PASSAGES, return_tensors="pt")
    assert inputs["input_ids"].shape[0] == len(PASSAGES)
    lengths = inputs["attention_mask"].sum(1).tolist()
    assert inputs["input_ids"].shape[1] == max(lengths) and min(lengths) < max(lengths)
    with pytest.raises(ValueError, match="2 queries for 4 passages"):
        reranker.tokenize(QUERIES[:2], PASSAGES)


def test_tokenize_max_len_truncates_passage_first(reranker):
    inputs = reranker.tokenize("python code", PASSAGES[2], max_len=12, return_tensors="pt")
    assert inputs["input_ids"].shape[1] == 12
    assert reranker.tokenize("python code", PASSAGES[2], max_length=12)["input_ids"] == inputs["input_ids"][0].tolist()
    query_ids = reranker.tokenizer("python code", add_special_tokens=False)["input_ids"]
    assert inputs["input_ids"][0, 1:1 + len(query_ids)].tolist() == query_ids
    with pytest.raises(ValueError, match="exceeds the model's 128 positions"):
        reranker.tokenize("a", "b", max_len=129)


def test_forward_returns_the_model_output(reranker):
    inputs = reranker.tokenize(QUERIES, PASSAGES, return_tensors="pt")
    logits = reranker(inputs).logits
    assert logits.shape == (4, 1)
    with torch.no_grad():  # first-token scoring: the model's own logits up to float rounding
        torch.testing.assert_close(logits, reranker.hf_model(**inputs).logits, rtol=0, atol=1e-6)


def test_score_matches_unbatched_model_calls_in_input_order(reranker):
    scores = reranker.score(QUERIES, PASSAGES, batch_size=3)
    expected = [direct_score(reranker, q, p) for q, p in zip(QUERIES, PASSAGES)]
    assert scores == pytest.approx(expected, abs=1e-5)
    assert max(expected) - min(expected) > 0.1  # the pairs really score differently
    assert reranker.score(QUERIES, PASSAGES, batch_size=1) == pytest.approx(expected, abs=1e-5)


def test_rerank_sorts_by_score_and_cuts_to_top_k(reranker):
    scores = reranker.score("python code", PASSAGES)
    ranked = reranker.rerank("python code", PASSAGES, top_k=3)
    assert [i for i, _ in ranked] == sorted(range(4), key=lambda i: -scores[i])[:3]
    assert [s for _, s in ranked] == pytest.approx(sorted(scores, reverse=True)[:3])
    assert len(reranker.rerank("python code", PASSAGES)) == 4
    assert reranker.rerank("python code", []) == []


def test_length_sorted_batches_cover_every_index_once_longest_first():
    batches = list(length_sorted_batches([3, 9, 1, 9, 5], 2))
    assert batches == [[1, 3], [4, 0], [2]]


def test_bf16_scores_close_to_fp32(model_dir, reranker):
    half = RerankerForInference.from_pretrained(model_dir, device="cpu", precision="bf16")
    assert next(half.hf_model.parameters()).dtype == torch.bfloat16
    fp32 = torch.tensor(reranker.score(QUERIES, PASSAGES))
    bf16 = torch.tensor(half.score(QUERIES, PASSAGES))
    assert torch.allclose(bf16, fp32, atol=0.05 * fp32.abs().max().item())


def test_fp16_on_cpu_and_bad_models_are_refused(model_dir):
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        RerankerForInference.from_pretrained(model_dir, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        RerankerForInference.from_pretrained(model_dir, device="cpu", precision="int3")
    with pytest.raises(ValueError, match="num_labels=1"):
        RerankerForInference.from_pretrained(model_dir, device="cpu", num_labels=2, ignore_mismatched_sizes=True)
