"""First-token scoring gives the model's own scores: BERT, RoBERTa, XLM-RoBERTa and ELECTRA, with and without
padding, fp32 and bf16, eager and compiled; models it does not cover fall back to their own forward.

Tolerances: fp32 1e-5 absolute on logits of size ~1 (measured <= 8e-7); bf16 under autocast 3e-2 absolute
(bf16 vs the fp32 model: measured <= 1.7e-2 on these tiny random models).
"""
from __future__ import annotations

import pytest
import torch
from transformers import (AutoModelForSequenceClassification, BertConfig, DistilBertConfig, ElectraConfig,
                          RobertaConfig, XLMRobertaConfig)

from bigrerank.inference.checked_compile import layout
from bigrerank.inference.first_token import FirstTokenScorer, unsupported
from bigrerank.inference.reranker import RerankerForInference
from tests.tiny import tiny_model_dir, tiny_tokenizer
from tests.tiny_decoder import tiny_decoder_dir

VOCAB = 60
SIZES = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=80, num_labels=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
             initializer_range=0.2)
CONFIGS = {
    "bert": lambda: BertConfig(**SIZES),
    "roberta": lambda: RobertaConfig(**SIZES, pad_token_id=1, type_vocab_size=1),
    "xlm-roberta": lambda: XLMRobertaConfig(**SIZES, pad_token_id=1, type_vocab_size=1),
    "electra": lambda: ElectraConfig(**SIZES, embedding_size=16),  # projected embeddings
}


def model_of(kind: str):
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(CONFIGS[kind]()).eval()


def batch(padded: bool, kind: str = "bert") -> dict:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, VOCAB, (5, 24), generator=generator)
    mask = torch.ones_like(input_ids)
    if padded:
        for row, length in enumerate((24, 20, 9, 24, 3)):
            mask[row, length:] = 0
            input_ids[row, length:] = 1 if kind in ("roberta", "xlm-roberta") else 0
    inputs = {"input_ids": input_ids, "attention_mask": mask}
    if kind in ("bert", "electra"):
        inputs["token_type_ids"] = (torch.arange(24) >= 10).long().expand(5, 24)
    return inputs


@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("padded", [True, False], ids=["padded", "no padding"])
@pytest.mark.parametrize("unfused_bias", [False, True], ids=["addmm", "matmul+bias"])
def test_first_token_scores_equal_the_models_own(kind, padded, unfused_bias):
    model = model_of(kind)
    inputs = batch(padded, kind)
    with torch.no_grad():
        expected = model(**inputs).logits
        scorer = FirstTokenScorer(model, unfused_bias=unfused_bias)
        mask = inputs["attention_mask"] if padded else None  # no padding: scored without a mask
        logits = scorer(**{**inputs, "attention_mask": mask})
        assert logits.shape == (5, 1)
        torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
        assert expected.std() > 0.1  # the pairs really score differently
        # the fused QKV projection shares storage with the model's own layers, which still give the same scores
        torch.testing.assert_close(model(**inputs).logits, expected, rtol=0, atol=1e-6)
        query = model.base_model.encoder.layer[0].attention.self.query.weight
        assert query.data_ptr() == scorer.qkv[0][0].data_ptr()


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_bf16_autocast_stays_within_bf16_rounding(kind):
    model = model_of(kind)
    inputs = batch(True, kind)
    with torch.no_grad():
        expected = model(**inputs).logits
        scorer = FirstTokenScorer(model)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = scorer(**inputs).float()
    torch.testing.assert_close(logits, expected, rtol=0, atol=3e-2)


def test_models_it_does_not_cover_are_named_and_scored_by_their_own_forward(tmp_path):
    distil = AutoModelForSequenceClassification.from_config(
        DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=64, num_labels=1)).eval()
    assert "distilbert" in unsupported(distil)
    relative = BertConfig(**SIZES)
    relative.position_embedding_type = "relative_key"
    assert "relative_key" in unsupported(AutoModelForSequenceClassification.from_config(relative))
    assert unsupported(model_of("bert")) is None
    with pytest.raises(ValueError, match="model type 'distilbert'"):
        FirstTokenScorer(distil)
    with pytest.raises(ValueError, match="eval mode"):
        FirstTokenScorer(model_of("bert").train())

    reranker = RerankerForInference(distil, tiny_tokenizer(), max_len=32, device="cpu")
    assert "distilbert" in reranker.full_forward_reason
    inputs = {k: v for k, v in batch(True).items() if k != "token_type_ids"}
    with torch.no_grad():
        torch.testing.assert_close(reranker(inputs).logits, distil(**inputs).logits, rtol=0, atol=0)


@pytest.mark.slow  # the first torch.compile of a process: over a minute on 2 busy cores
def test_compiled_scoring_matches_eager(tmp_path, monkeypatch):
    # inductor's on-disk cache is not keyed on the kernel set (ATEN_CPU_CAPABILITY …): kernels cached under another
    # one abort the process when reused, so this test compiles into its own cache
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    model_dir = tiny_model_dir(tmp_path / "model", init_range=0.2)
    queries = ["weather in new york", "python code", "what is it", "cold today"] * 3
    passages = ["it is cold today in new york", "the code of python", "it is what it is", "new york weather"] * 3
    eager = RerankerForInference.from_pretrained(model_dir, max_len=32, device="cpu")
    compiled = RerankerForInference.from_pretrained(model_dir, max_len=32, device="cpu", torch_compile=True)
    assert eager.full_forward_reason is None
    expected = eager.score(queries, passages, batch_size=5)
    assert compiled.score(queries, passages, batch_size=5) == pytest.approx(expected, abs=1e-5)
    assert compiled.score(queries[:1], passages[:1]) == pytest.approx(expected[:1], abs=1e-5)  # a new shape


def test_a_model_with_fused_projections_saves_and_reloads_unchanged(tmp_path):
    model = model_of("bert")
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    FirstTokenScorer(model)
    model.save_pretrained(tmp_path / "saved")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").state_dict()
    assert reloaded.keys() == before.keys()
    assert all(torch.equal(reloaded[name], before[name]) for name in before)


def test_inputs_it_does_not_take_go_through_the_models_own_forward(tmp_path):
    reranker = RerankerForInference.from_pretrained(tiny_model_dir(tmp_path / "model", init_range=0.2), max_len=32,
                                                    device="cpu")
    inputs = reranker.tokenize(["weather in new york", "python"], ["it is cold", "code"], return_tensors="pt")
    positions = torch.arange(inputs["input_ids"].shape[1]).expand_as(inputs["input_ids"])
    with torch.no_grad():
        expected = reranker.hf_model(**inputs, position_ids=positions).logits
        assert torch.equal(reranker({**inputs, "position_ids": positions}).logits, expected)
        torch.testing.assert_close(reranker(inputs).logits, expected, rtol=0, atol=1e-6)


def test_weights_moved_after_set_up_are_refused_not_silently_mixed(tmp_path):
    reranker = RerankerForInference.from_pretrained(tiny_model_dir(tmp_path / "model"), max_len=32, device="cpu")
    reranker.hf_model.to(torch.float64)
    with pytest.raises(RuntimeError, match="build the RerankerForInference again"):
        reranker.score("weather in new york", "it is cold")


QUERIES = ["weather in new york", "python code", "what is it", "cold today"] * 3
PASSAGES = ["it is cold today in new york", "the code of python", "it is what it is", "new york weather"] * 3


def _broken_compile(kind: str):
    """A torch.compile stand-in whose graphs fail to build, or compute scores off by 1e-3, or NaN."""
    def compile_(fn, dynamic=False):
        def compiled(**batch):
            if kind == "fails":
                raise RuntimeError("C++ compile error\n/tmp/x.cpp:39: error: 'at::vec' has not been declared")
            scores = fn(**batch)
            return scores + 1e-3 if kind == "off" else torch.full_like(scores, float("nan"))
        return compiled
    return compile_


@pytest.mark.parametrize("kind, reason", [("fails", "compiling failed (RuntimeError: C++ compile error)"),
                                          ("off", "compiled scores differ from eager by up to 0.001"),
                                          ("nan", "compiled scores are not finite where eager ones are")])
def test_a_compile_that_fails_or_computes_wrong_scores_falls_back_to_eager(tmp_path, monkeypatch, caplog, kind,
                                                                           reason):
    model_dir = tiny_model_dir(tmp_path / "model", init_range=0.2)
    eager = RerankerForInference.from_pretrained(model_dir, max_len=32, device="cpu")
    expected, expected_one = eager.score(QUERIES, PASSAGES, 5), eager.score(QUERIES[:1], PASSAGES[:1])
    monkeypatch.setattr(torch, "compile", _broken_compile(kind))
    compiled = RerankerForInference.from_pretrained(model_dir, max_len=32, device="cpu", torch_compile=True)
    with caplog.at_level("WARNING", logger="bigrerank.rerank"):
        assert compiled.score(QUERIES, PASSAGES, batch_size=5) == expected  # eager's own scores, every batch
        assert compiled.score(QUERIES[:1], PASSAGES[:1]) == expected_one
    warnings = [r.getMessage() for r in caplog.records if r.name == "bigrerank.rerank"]
    assert warnings == [f"--torch_compile: {compiled._score_pairs.fallback_reason}; scoring without compiling"]
    assert reason in warnings[0] and "\n" not in warnings[0]


def test_a_compiled_graph_that_agrees_is_checked_once_per_layout(tmp_path, monkeypatch, caplog):
    model_dir = tiny_model_dir(tmp_path / "model", init_range=0.2)
    calls, layouts_seen = {"compiled": 0}, []

    def counting_compile(fn, dynamic=False):
        def compiled(**batch):
            calls["compiled"] += 1
            layouts_seen.append(layout(batch))
            return fn(**batch)
        return compiled

    monkeypatch.setattr(torch, "compile", counting_compile)
    reranker = RerankerForInference.from_pretrained(model_dir, max_len=32, device="cpu", torch_compile=True)
    checked = reranker._score_pairs
    with caplog.at_level("WARNING", logger="bigrerank.rerank"):
        reranker.score(QUERIES, PASSAGES, batch_size=5)  # batches of 5, 5 and 2 pairs (padded or not: a layout each)
        layouts = len(checked.checked)
        assert layouts == len(set(layouts_seen))  # every layout the batches had, checked once
        reranker.score(QUERIES, PASSAGES, batch_size=5)
        reranker.score(QUERIES[:1], PASSAGES[:1])  # one pair: a new layout, checked too
    assert checked.fallback_reason is None and not caplog.records
    assert len(checked.checked) == layouts + 1
    assert calls["compiled"] == 3 + 3 + 1  # every batch went through the compiled graph


def test_a_decoder_scored_by_its_own_forward_falls_back_too(tmp_path, monkeypatch, caplog):
    model_dir = tiny_decoder_dir(tmp_path / "decoder")
    eager = RerankerForInference.from_pretrained(model_dir, max_len=160, device="cpu")
    expected = eager.score(QUERIES[:4], PASSAGES[:4], batch_size=2)
    monkeypatch.setattr(torch, "compile", _broken_compile("off"))
    compiled = RerankerForInference.from_pretrained(model_dir, max_len=160, device="cpu", torch_compile=True)
    assert compiled.full_forward_reason is not None
    with caplog.at_level("WARNING", logger="bigrerank.rerank"):
        assert compiled.score(QUERIES[:4], PASSAGES[:4], batch_size=2) == expected
    assert "compiled scores differ from eager by up to 0.001" in compiled._model_scores.fallback_reason
    assert len(caplog.records) == 1
