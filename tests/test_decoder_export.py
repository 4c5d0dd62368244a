"""A yes_no reranker trained on 2 ranks under ZeRO-3 exports as a plain sequence classifier (and, with
--keep_causal_lm, as its causal LM) that scores like the live engine; the contract travels to `bigrerank rerank`."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from bigrerank import scoring
from bigrerank.cli import main as cli
from bigrerank.inference.reranker import RerankerForInference
from bigrerank.model import load_config, load_tokenizer
from tests.dist_harness import run_ranks
from tests.test_decoder_scoring import PASSAGES, QUERIES
from tests.tiny import write_groups
from tests.tiny_decoder import tiny_decoder_dir

MAX_LEN = 192


def _train_and_score(argv, scores_path, causal_out):
    """On every rank: train, then score the test pairs with the live engine (a ZeRO-3 collective); rank 0 saves
    the scores and also exports the checkpoint in its causal form."""
    from bigrerank.arguments import parse
    from bigrerank.checkpoints.consolidate import consolidate
    from bigrerank.model import pair_scores
    from bigrerank import distributed
    from bigrerank.training import trainer

    model_args, data_args, args = parse(argv)
    engine = trainer.train(model_args, data_args, args).engine
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    contract = scoring.resolve(model_args.model_name_or_path, load_config(model_args.model_name_or_path), tokenizer,
                               model_args.score_head, data_args.template)
    encoder = scoring.make_encoder(tokenizer, MAX_LEN, contract)
    with torch.no_grad():
        scores = pair_scores(engine, encoder.collate(encoder.encode_texts(QUERIES, PASSAGES)))
    if distributed.is_main():
        torch.save(scores, scores_path)
        consolidate(f"{args.output_dir}/checkpoints", causal_out, keep_causal_lm=True)
    distributed.barrier()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("decoder_export")
    model = tiny_decoder_dir(tmp / "qwen3", "qwen3", init_range=0.2)
    data = write_groups(tmp / "groups.jsonl", queries=8, negatives=4)
    out = tmp / "out"
    argv = ["--model_name_or_path", str(model), "--train_path", str(data), "--train_group_size", "4", "--max_len",
            str(MAX_LEN), "--learning_rate", "1e-2", "--max_steps", "3", "--save_steps", "1000",
            "--per_device_train_batch_size", "2", "--output_dir", str(out), "--ds_config", "ds_configs/zero3.json",
            "--collaborative", "--grad_cache_chunk_size", "3", "--template", "qwen3-reranker"]
    run_ranks(2, _train_and_score, argv, str(tmp / "live.pt"), str(tmp / "causal"))
    return {"base": model, "export": out, "causal": tmp / "causal", "live": torch.load(tmp / "live.pt"), "tmp": tmp}


def test_the_export_is_a_sequence_classifier_scoring_like_the_live_engine(trained):
    export, live = trained["export"], trained["live"]
    config = AutoConfig.from_pretrained(export)
    assert config.architectures == ["Qwen3ForSequenceClassification"] and config.num_labels == 1
    tokenizer = load_tokenizer(str(export))
    assert config.pad_token_id == tokenizer.pad_token_id is not None
    contract = scoring.ScoringContract.read(export)
    assert contract.score_head == "classifier" and contract.template_name == "qwen3-reranker"
    assert contract.max_len == MAX_LEN and contract.padding_side == "right"
    model = AutoModelForSequenceClassification.from_pretrained(export).eval()
    pairs = scoring.make_encoder(tokenizer, MAX_LEN, contract).encode_texts(QUERIES, PASSAGES)
    assert len({len(ids) for ids, _ in pairs}) == len(pairs)  # mixed lengths in one batch
    with torch.no_grad():
        exported = model(**scoring.make_encoder(tokenizer, MAX_LEN, contract).collate(pairs)).logits[:, 0]
    assert torch.allclose(exported, live, atol=1e-5, rtol=0), (exported, live)
    assert live.std() > 1e-3
    untrained = RerankerForInference.from_pretrained(trained["base"], device="cpu").score(QUERIES, PASSAGES)
    assert not torch.allclose(torch.tensor(untrained), live, atol=1e-3)  # training moved the scores
    reranker = RerankerForInference.from_pretrained(export, device="cpu")
    assert reranker.contract.score_head == "classifier"
    assert torch.allclose(torch.tensor(reranker.score(QUERIES, PASSAGES, batch_size=3)), live, atol=1e-5)


def test_keep_causal_lm_keeps_the_generative_form_and_its_contract(trained):
    causal = trained["causal"]
    assert AutoConfig.from_pretrained(causal).architectures == ["Qwen3ForCausalLM"]
    AutoModelForCausalLM.from_pretrained(causal)
    reranker = RerankerForInference.from_pretrained(causal, device="cpu")
    assert reranker.contract.score_head == "yes_no"
    assert reranker.full_forward_reason is not None  # never the encoder fast path
    scores = torch.tensor(reranker.score(QUERIES, PASSAGES, batch_size=3))
    assert torch.allclose(scores, trained["live"], atol=1e-5), (scores, trained["live"])
    bf16 = RerankerForInference.from_pretrained(causal, device="cpu", precision="bf16").score(QUERIES, PASSAGES)
    assert torch.allclose(torch.tensor(bf16), scores, atol=0.05)


def _pairs_file(path):
    rows = [{"qid": f"q{i}", "pid": f"p{i}", "qry": q, "psg": p} for i, (q, p) in enumerate(zip(QUERIES, PASSAGES))]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _read(path):
    return torch.tensor([float(line.split("\t")[2]) for line in path.read_text().splitlines()])


def test_bigrerank_rerank_reads_the_contract_and_takes_the_flags_without_one(trained):
    tmp = trained["tmp"]
    pairs = _pairs_file(tmp / "pairs.jsonl")
    for model in ("export", "causal"):
        out = tmp / f"{model}.tsv"
        assert cli(["rerank", "--model", str(trained[model]), "--input", pairs, "--output", str(out)]) == 0
        assert torch.allclose(_read(out), trained["live"], atol=1e-5)
    base, out = str(trained["base"]), tmp / "bge.tsv"  # no contract file: the flags decide
    assert cli(["rerank", "--model", base, "--input", pairs, "--output", str(out), "--template", "bge-gemma",
                "--instruction", "is B about A?"]) == 0
    expected = RerankerForInference.from_pretrained(base, device="cpu", template="bge-gemma",
                                                    instruction="is B about A?").score(QUERIES, PASSAGES)
    assert torch.allclose(_read(out), torch.tensor(expected), atol=1e-5)
    assert not torch.allclose(_read(out), _read(tmp / "causal.tsv"), atol=1e-3)


def test_bad_scoring_flags_are_one_line_errors_before_training(trained, capsys, tmp_path):
    argv = ["train", "--model_name_or_path", str(trained["base"]), "--train_path",
            str(trained["tmp"] / "groups.jsonl"), "--output_dir", str(tmp_path / "never")]
    for flags, message in ((["--template", "nope"], "unknown template"),
                           (["--score_head", "yes_no", "--template", "pair"], "needs a prompt template")):
        assert cli(argv + flags) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("bigrerank train: error: ") and message in err and "\n" not in err
        assert not (tmp_path / "never").exists()
