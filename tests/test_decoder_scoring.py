"""Decoder rerankers: templates, both score heads, padding, the scoring contract and the errors before training."""
from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from bigrerank.contract import make_encoder, resolve_contract
from bigrerank.data.templates import BUILTIN, PromptEncoder, load_spec
from bigrerank.errors import InputError
from bigrerank.inference.reranker import RerankerForInference
from bigrerank.model import load_config, load_reranker, load_tokenizer, pair_scores
from tests.tiny import tiny_model_dir
from tests.tiny_decoder import PASSAGES, QUERIES, tiny_decoder_dir


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("decoders")
    return {arch: tiny_decoder_dir(tmp / arch, arch, init_range=0.2) for arch in ("qwen3", "llama")}


def _official_qwen3_reranker(model_dir, queries, passages, max_length=256):
    """The Qwen3-Reranker model card's recipe, written out independently: prefix + formatted + suffix token ids,
    left padding, P(yes) from the log-softmax of logits[:, -1, [no, yes]]."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    prefix = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
              "Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n")
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    prefix_ids = tokenizer.encode(prefix, add_special_tokens=False)
    suffix_ids = tokenizer.encode(suffix, add_special_tokens=False)
    instruction = "Given a web search query, retrieve relevant passages that answer the query"
    texts = [f"<Instruct>: {instruction}\n<Query>: {q}\n<Document>: {d}" for q, d in zip(queries, passages)]
    inputs = tokenizer(texts, padding=False, truncation="longest_first", return_attention_mask=False,
                       max_length=max_length - len(prefix_ids) - len(suffix_ids))
    inputs["input_ids"] = [prefix_ids + ids + suffix_ids for ids in inputs["input_ids"]]
    ids = [list(x) for x in inputs["input_ids"]]
    batch = tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)
    with torch.no_grad():
        logits = model(**batch).logits[:, -1, :]
    probs = torch.log_softmax(torch.stack([logits[:, no], logits[:, yes]], dim=1), dim=1)[:, 1].exp()
    return ids, probs


def test_qwen3_template_reproduces_the_official_recipe(decoders):
    model_dir = decoders["qwen3"]
    reference_ids, reference_probs = _official_qwen3_reranker(model_dir, QUERIES, PASSAGES)
    reranker = RerankerForInference.from_pretrained(model_dir, max_len=256, device="cpu")
    assert reranker.contract.score_head == "yes_no" and reranker.contract.template_name == "qwen3-reranker"
    ours = [ids for ids, _ in reranker.encoder().encode_texts(QUERIES, PASSAGES)]
    assert ours == reference_ids
    probs = torch.sigmoid(torch.tensor(reranker.score(QUERIES, PASSAGES, batch_size=3)))
    assert torch.allclose(probs, reference_probs, atol=1e-5), (probs, reference_probs)
    assert probs.std() > 1e-3  # the pairs are told apart, the comparison is not between constants


def test_bge_gemma_scores_the_logit_of_yes(decoders):
    model_dir = decoders["llama"]
    tokenizer = load_tokenizer(str(model_dir))
    contract = resolve_contract(str(model_dir), load_config(str(model_dir)), tokenizer, "yes_no", "bge-gemma")
    assert contract.no_token_id is None
    encoder = make_encoder(tokenizer, 200, contract)
    ids, _ = encoder.encode_texts(["what is python"], ["python code"])[0]
    assert tokenizer.decode(ids) == ("A: what is python\nB: python code\n" + BUILTIN["bge-gemma"].instruction)
    model = load_reranker(str(model_dir), contract=contract).eval()
    full = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        expected = full(input_ids=torch.tensor([ids])).logits[0, -1, tokenizer.convert_tokens_to_ids("Yes")]
        assert torch.allclose(pair_scores(model, encoder.collate([(ids, [0] * len(ids))])), expected, atol=1e-5)


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("head", ["classifier", "yes_no"])
def test_mixed_lengths_score_like_one_pair_at_a_time(decoders, arch, head):
    model_dir = str(decoders[arch])
    tokenizer = load_tokenizer(model_dir)
    contract = resolve_contract(model_dir, load_config(model_dir), tokenizer, head)
    assert contract.template_name == ("qwen3-reranker" if head == "yes_no" else "pair")
    encoder = make_encoder(tokenizer, 200, contract)
    torch.manual_seed(0)
    model = load_reranker(model_dir, contract=contract).eval()
    pairs = encoder.encode_texts(QUERIES, PASSAGES)
    if head == "classifier":  # the last token of every pair is the same EOS
        assert {ids[-1] for ids, _ in pairs} == {tokenizer.eos_token_id}
    assert len({len(ids) for ids, _ in pairs}) == len(pairs)
    with torch.no_grad():
        batched = pair_scores(model, encoder.collate(pairs))
        single = torch.cat([pair_scores(model, encoder.collate([pair])) for pair in pairs])
    assert torch.allclose(batched, single, atol=1e-5, rtol=0), (batched, single)
    assert batched.std() > 1e-4


def test_the_answer_head_never_forms_full_vocabulary_logits(decoders):
    """Every module output, in the forward and the backward of training, is narrower than the vocabulary; the
    head multiplies the hidden states by a (2, hidden) matrix."""
    model_dir = str(decoders["qwen3"])
    tokenizer = load_tokenizer(model_dir)
    contract = resolve_contract(model_dir, load_config(model_dir), tokenizer)
    model = load_reranker(model_dir, contract=contract)
    vocab = model.config.vocab_size
    widths, head_weights = [], []
    for module in model.modules():
        module.register_forward_hook(lambda m, i, out: widths.append(out.shape[-1]) if torch.is_tensor(out) else None)
    original = torch.nn.functional.linear

    def recording_linear(x, weight, bias=None):
        head_weights.append(tuple(weight.shape))
        return original(x, weight, bias)

    encoder = make_encoder(tokenizer, 200, contract)
    batch = encoder.collate(encoder.encode_texts(QUERIES, PASSAGES))
    torch.nn.functional.linear = recording_linear
    try:
        pair_scores(model, batch).sum().backward()
    finally:
        torch.nn.functional.linear = original
    assert widths and max(widths) < vocab, (max(widths), vocab)
    assert (2, model.config.hidden_size) in head_weights
    assert all(shape[0] < vocab for shape in head_weights)
    assert model.get_input_embeddings().weight.grad[[contract.yes_token_id, contract.no_token_id]].abs().sum() > 0
    assert set(model.state_dict()) == set(AutoModelForCausalLM.from_pretrained(model_dir).state_dict())


def test_max_len_counts_every_token_and_cuts_the_passage_first(decoders):
    tokenizer = load_tokenizer(str(decoders["qwen3"]))
    encoder = PromptEncoder(tokenizer, 150, load_spec("qwen3-reranker"))
    template = encoder.template
    long_passage = " ".join(["cold weather today"] * 100)
    ids, _ = encoder.encode_texts(["what is python"], [long_passage])[0]
    query_ids = tokenizer(" what is python", add_special_tokens=False)["input_ids"]
    assert len(ids) == 150
    assert ids[:len(template.prefix)] == list(template.prefix)
    assert ids[len(template.prefix):len(template.prefix) + len(query_ids)] == query_ids  # the query is whole
    assert ids[-len(template.suffix):] == list(template.suffix)  # the scored position is never cut
    long_query = " ".join(["python code"] * 100)
    ids, _ = encoder.encode_texts([long_query], [long_passage])[0]
    assert len(ids) == 150 and ids[-len(template.suffix):] == list(template.suffix)
    assert tokenizer.decode(ids).count("<Document>: ") == 1  # the passage keeps at least its lead-in


def test_token_id_data_is_encoded_like_text(decoders):
    """Token-id training data (no special tokens, no template) gives the same prompt as the same text."""
    tokenizer = load_tokenizer(str(decoders["qwen3"]))
    for template in ("qwen3-reranker", "bge-gemma"):
        encoder = PromptEncoder(tokenizer, 200, load_spec(template))
        as_text = encoder.encode_texts(QUERIES, PASSAGES)
        ids_of = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        as_ids = [encoder.encode_ids(ids_of(q), ids_of(p)) for q, p in zip(QUERIES, PASSAGES)]
        assert as_ids == as_text


def test_a_user_template_file(decoders, tmp_path):
    model_dir = str(decoders["llama"])
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"template": "Task: {instruction}\nQ={query}\nP={passage}\nRelevant?", "yes": "yes",
                                "no": "no", "instruction": "find code"}))
    tokenizer = load_tokenizer(model_dir)
    contract = resolve_contract(model_dir, load_config(model_dir), tokenizer, "yes_no", str(path), "find python")
    ids, _ = make_encoder(tokenizer, 100, contract).encode_texts(["what"], ["python code"])[0]
    assert tokenizer.decode(ids) == "Task: find python\nQ=what\nP=python code\nRelevant?"


def test_scoring_mistakes_are_input_errors(decoders, tmp_path):
    model_dir = str(decoders["qwen3"])
    config, tokenizer = load_config(model_dir), load_tokenizer(model_dir)

    def template_file(**fields):
        path = tmp_path / f"t{len(list(tmp_path.glob('t*.json')))}.json"
        path.write_text(json.dumps(fields))
        return str(path)

    cases = {
        "unknown template": dict(template="qwen9"),
        "tokens for this tokenizer, not one": dict(
            template=template_file(template="{query} {passage}", yes="absolutely", no="no")),
        "exactly one {passage} slot": dict(template=template_file(template="Q: {query}", yes="yes", no="no")),
        "exactly one {query} slot": dict(template=template_file(template="{passage}", yes="yes")),
        "unknown score head": dict(score_head="logits"),
        "needs a prompt template": dict(score_head="yes_no", template="pair"),
    }
    for expected, flags in cases.items():
        with pytest.raises(InputError, match=re.escape(expected)):
            resolve_contract(model_dir, config, tokenizer, **flags)
    bert = str(tiny_model_dir(tmp_path / "bert"))
    with pytest.raises(InputError, match="needs a decoder with a language-model head"):
        resolve_contract(bert, load_config(bert), load_tokenizer(bert), "yes_no", "qwen3-reranker")
    untied = tiny_decoder_dir(tmp_path / "untied", "llama", tie=False)  # a classifier checkpoint: no LM head saved
    AutoModelForSequenceClassification.from_pretrained(untied, num_labels=1).save_pretrained(tmp_path / "cls")
    load_tokenizer(str(untied)).save_pretrained(tmp_path / "cls")
    classifier = str(tmp_path / "cls")
    with pytest.raises(InputError, match="the checkpoint has no LM head"):
        resolve_contract(classifier, load_config(classifier), load_tokenizer(classifier), "yes_no", "qwen3-reranker")


def test_defaults_follow_the_architecture_and_the_log_says_which(decoders, tmp_path, caplog):
    bert = str(tiny_model_dir(tmp_path / "bert"))
    with caplog.at_level("INFO", logger="bigrerank.contract"):
        encoder = resolve_contract(bert, load_config(bert), load_tokenizer(bert))
        decoder = resolve_contract(str(decoders["qwen3"]), load_config(str(decoders["qwen3"])),
                                  load_tokenizer(str(decoders["qwen3"])))
    assert (encoder.score_head, encoder.template_name, encoder.append_eos) == ("classifier", "pair", False)
    assert (decoder.score_head, decoder.template_name) == ("yes_no", "qwen3-reranker")
    assert "classifier head with the pair template" in caplog.text
    assert "yes_no head with the qwen3-reranker template" in caplog.text


def test_bf16_answer_logits_are_taken_in_float32_so_close_pairs_do_not_tie(decoders):
    """In bf16 the two answer logits would round to 8 bits before their difference: scores on coarse steps, pairs
    of one query tied. The head computes them in float32 from the bf16 hidden state and weights."""
    model_dir = str(decoders["qwen3"])
    tokenizer = load_tokenizer(model_dir)
    contract = resolve_contract(model_dir, load_config(model_dir), tokenizer)
    model = load_reranker(model_dir, contract=contract).to(torch.bfloat16)
    head = model.get_output_embeddings()
    rows = head.weight[contract.answer_rows()].float()
    k = int((rows[0] - rows[1]).abs().argmax())  # 64 pairs whose hidden states differ by i/64 in coordinate k
    hidden = (torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0)) * 4).repeat(64, 1)
    hidden[:, k] = torch.arange(64) / 64
    hidden = hidden.to(torch.bfloat16)
    logits = head(hidden)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as RerankerForInference scores in bf16
        assert torch.equal(head(hidden), logits)
    assert logits.dtype == torch.float32
    assert torch.equal(logits, hidden.float() @ rows.T)
    scores = logits[:, 0] - logits[:, 1]
    assert len(set(scores.tolist())) == len(scores)  # no ties
    rounded = logits.to(torch.bfloat16)
    assert len(set((rounded[:, 0] - rounded[:, 1]).tolist())) < len(scores) / 2  # what bf16 logits would give
