"""A yes_no reranker trained on 2 ranks under ZeRO-3, in full or with LoRA, exports as a plain sequence classifier
(and, with --keep_causal_lm, as its causal LM; a LoRA run also as its peft adapter) that scores like the live engine;
the contract travels to `bigrerank rerank`."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from bigrerank.cli import main as cli
from bigrerank.contract import ScoringContract, make_encoder, resolve_contract
from bigrerank.inference.reranker import RerankerForInference
from bigrerank.model import load_config, load_tokenizer
from tests.dist_harness import run_ranks
from tests.helpers import train_argv
from tests.tiny import write_groups
from tests.tiny_decoder import PASSAGES, QUERIES, tiny_decoder_dir

pytestmark = pytest.mark.slow

MAX_LEN = 192


def _train_and_score(jobs):
    """On every rank, for each (argv, scores file, causal export dir): train, then score the test pairs with the
    live engine (a ZeRO-3 collective); rank 0 saves the scores and also exports the checkpoint in its causal form."""
    from bigrerank.commands.train import parse
    from bigrerank.checkpoints.consolidate import consolidate
    from bigrerank.model import pair_scores
    from bigrerank import distributed
    from bigrerank.training import trainer

    for argv, scores_path, causal_out in jobs:
        model_args, data_args, args = parse(argv)
        engine = trainer.train(model_args, data_args, args).engine
        engine.eval()  # no LoRA dropout
        with torch.no_grad():
            scores = pair_scores(engine, _test_batch(model_args.model_name_or_path, data_args.template))
        if distributed.is_main():
            torch.save(scores, scores_path)
            consolidate(f"{args.output_dir}/checkpoints", causal_out, keep_causal_lm=True)
        distributed.barrier()


def _test_batch(model_dir, template=None, contract=None):
    """The test pairs in one mixed-length batch, in the prompt of `contract` (else the model's yes_no default)."""
    tokenizer = load_tokenizer(str(model_dir))
    contract = contract or resolve_contract(str(model_dir), load_config(str(model_dir)), tokenizer, "yes_no", template)
    encoder = make_encoder(tokenizer, MAX_LEN, contract)
    return encoder.collate(encoder.encode_texts(QUERIES, PASSAGES))


# the full fine-tune, and LoRA (only the adapters train; more steps and a higher rate to move the scores as far)
VARIANTS = {"full": [], "lora": ["--lora_r", "4", "--lora_alpha", "8", "--gradient_checkpointing", "--max_steps", "4",
                                 "--learning_rate", "5e-2"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{variant: {export, causal, live scores}} of 2-rank ZeRO-3 runs (one rank start for both), and the base."""
    tmp = tmp_path_factory.mktemp("decoder_export")
    model = tiny_decoder_dir(tmp / "qwen3", "qwen3", init_range=0.2)
    data = write_groups(tmp / "groups.jsonl", queries=8, negatives=4)
    settings = {"max_len": MAX_LEN, "learning_rate": "1e-2", "max_steps": 3, "collaborative": True,
                "grad_cache_chunk_size": 3, "template": "qwen3-reranker", "logging_steps": None}
    run_ranks(2, _train_and_score, [(train_argv(model, data, tmp / name, "zero3", *extra, **settings),
                                     str(tmp / f"{name}.pt"), str(tmp / f"{name}-causal"))
                                    for name, extra in VARIANTS.items()])
    runs = {name: {"export": tmp / name, "causal": tmp / f"{name}-causal", "live": torch.load(tmp / f"{name}.pt")}
            for name in VARIANTS}
    return {**runs, "base": model, "tmp": tmp}


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_export_is_a_sequence_classifier_scoring_like_the_live_engine(trained, variant):
    """LoRA: the adapters are merged first, then the yes_no -> classifier conversion applies to the merged weights."""
    export, live = trained[variant]["export"], trained[variant]["live"]
    config = AutoConfig.from_pretrained(export)
    assert config.architectures == ["Qwen3ForSequenceClassification"] and config.num_labels == 1
    tokenizer = load_tokenizer(str(export))
    assert config.pad_token_id == tokenizer.pad_token_id is not None
    contract = ScoringContract.read(export)
    assert contract.score_head == "classifier" and contract.template_name == "qwen3-reranker"
    assert contract.max_len == MAX_LEN and contract.padding_side == "right"
    model = AutoModelForSequenceClassification.from_pretrained(export).eval()
    pairs = make_encoder(tokenizer, MAX_LEN, contract).encode_texts(QUERIES, PASSAGES)
    assert len({len(ids) for ids, _ in pairs}) == len(pairs)  # mixed lengths in one batch
    with torch.no_grad():
        exported = model(**make_encoder(tokenizer, MAX_LEN, contract).collate(pairs)).logits[:, 0]
    print(f"{variant}: merged export vs live engine {(exported - live).abs().max():.1e}")
    assert torch.allclose(exported, live, atol=1e-5, rtol=0), (exported, live)
    assert live.std() > 1e-3
    untrained = RerankerForInference.from_pretrained(trained["base"], device="cpu").score(QUERIES, PASSAGES)
    assert not torch.allclose(torch.tensor(untrained), live, atol=1e-3)  # training moved the scores
    reranker = RerankerForInference.from_pretrained(export, device="cpu")
    assert reranker.contract.score_head == "classifier"
    assert torch.allclose(torch.tensor(reranker.score(QUERIES, PASSAGES, batch_size=3)), live, atol=1e-5)


def test_a_yes_no_adapter_loads_onto_its_causal_lm_base_and_scores_like_the_live_engine(trained):
    from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict

    adapter, base_dir, live = trained["tmp"] / "adapter", trained["base"], trained["lora"]["live"]
    assert cli(["consolidate", str(trained["lora"]["export"] / "checkpoints"), str(adapter), "--adapter_only"]) == 0
    assert json.loads((adapter / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    assert not (adapter / "model.safetensors").exists()
    contract = ScoringContract.read(adapter)  # the contract travels with the adapter
    assert contract.score_head == "yes_no" and contract.template_name == "qwen3-reranker"
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter).eval()
    assert loaded.peft_config["default"].base_model_name_or_path == str(base_dir)
    batch = _test_batch(adapter, contract=contract)
    with torch.no_grad():
        logits = loaded(**batch).logits  # the full vocabulary: not the answer head under test
    at_last = logits[torch.arange(len(logits)), batch["attention_mask"].sum(-1) - 1]
    scores = at_last[:, contract.yes_token_id] - at_last[:, contract.no_token_id]
    print(f"adapter on its base vs live engine {(scores - live).abs().max():.1e}")
    assert torch.allclose(scores, live, atol=1e-5, rtol=0), (scores, live)
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    torch.manual_seed(42)  # the trainer's adapters before training: drawn from --seed
    initial = get_peft_model_state_dict(get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                                                       LoraConfig.from_pretrained(str(adapter))))
    assert saved.keys() == initial.keys() and all(".lora_" in name for name in saved)  # nothing but adapters
    for name, tensor in saved.items():
        assert not torch.equal(initial[name], tensor), f"{name} never trained"


@pytest.mark.parametrize("variant", VARIANTS)
def test_keep_causal_lm_keeps_the_generative_form_and_its_contract(trained, variant):
    causal, live = trained[variant]["causal"], trained[variant]["live"]
    assert AutoConfig.from_pretrained(causal).architectures == ["Qwen3ForCausalLM"]
    AutoModelForCausalLM.from_pretrained(causal)
    reranker = RerankerForInference.from_pretrained(causal, device="cpu")
    assert reranker.contract.score_head == "yes_no"
    assert reranker.full_forward_reason is not None  # never the encoder fast path
    scores = torch.tensor(reranker.score(QUERIES, PASSAGES, batch_size=3))
    assert torch.allclose(scores, live, atol=1e-5), (scores, live)
    bf16 = RerankerForInference.from_pretrained(causal, device="cpu", precision="bf16").score(QUERIES, PASSAGES)
    scale = max(1.0, scores.abs().max().item())  # bf16 keeps ~3 significant digits: the tolerance scales with scores
    assert torch.allclose(torch.tensor(bf16), scores, atol=0.05 * scale), (bf16, scores)


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
        assert cli(["rerank", "--model", str(trained["full"][model]), "--input", pairs, "--output", str(out)]) == 0
        assert torch.allclose(_read(out), trained["full"]["live"], atol=1e-5)
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
