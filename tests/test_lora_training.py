"""LoRA and gradient checkpointing in training: ZeRO-3 adapters export whole, merged exports score like the live
engine, a checkpointed cached step replays dropout, resume is bit-exact, every shipped config trains, and bad
LoRA flags stop before any process group starts."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from bigrerank import cli, distributed, lora
from bigrerank.data.pairs import PairEncoder
from bigrerank.losses import lce_loss
from bigrerank.model import load_reranker, pair_scores
from bigrerank.rng import RngState
from bigrerank.training.batches import MicroBatch
from bigrerank.training.steps import micro_batch_step
from tests.dist_harness import run_jobs, run_ranks
from tests.helpers import CONFIGS, assert_resumed_exactly, straight_and_resumed, train_argv, train_losses
from tests.tiny import tiny_model_dir, tiny_tokenizer, write_groups
from tests.tiny_decoder import tiny_decoder_dir
from tests.tiny_decoder_reranker import tiny_decoder_reranker_dir

PAIRS = [("weather in new york", "it is cold today in new york and the code is new"), ("python code", "the code")]
# rank-4 adapters at a high learning rate
LORA_RUN = {"lora_r": 4, "lora_alpha": 8, "learning_rate": "1e-2", "warmup_steps": 2}


def _batch(tokenizer):
    return tokenizer([q for q, _ in PAIRS], [p for _, p in PAIRS], padding=True, return_tensors="pt")


def _train_and_keep_live(argv: list[str], out_file: str):
    """Train; save the live engine's scores and its trained tensors (gathered from the ZeRO-3 partitions)."""
    from deepspeed.utils import safe_get_full_fp32_param

    from bigrerank.commands.train import parse
    from bigrerank import distributed
    from bigrerank.training import trainer

    engine = trainer.train(*parse(argv)).engine
    trained = {name: safe_get_full_fp32_param(p).cpu().clone() for name, p in engine.module.named_parameters()
               if p.requires_grad}  # collective under ZeRO-3: every rank calls it
    engine.eval()
    with torch.no_grad():
        scores = engine(**_batch(AutoTokenizer.from_pretrained(argv[argv.index("--model_name_or_path") + 1]))).logits
    if distributed.is_main():
        torch.save({"trained": trained, "scores": scores.float()}, out_file)


@pytest.mark.slow
def test_zero3_adapters_export_whole_and_the_exports_score_like_the_live_engine(tmp_path):
    from peft import PeftModel, get_peft_model

    model = tiny_decoder_reranker_dir(tmp_path / "qwen3", "qwen3")
    train = write_groups(tmp_path / "g.jsonl", queries=16)
    out = tmp_path / "out"
    argv = train_argv(model, train, out, "zero3", max_steps=4, gradient_checkpointing=True, collaborative=True,
                      grad_cache_chunk_size=3, **LORA_RUN)
    run_ranks(2, _train_and_keep_live, argv, str(tmp_path / "live.pt"))
    live = torch.load(tmp_path / "live.pt")
    adapter = tmp_path / "adapter"
    assert cli.main(["consolidate", str(out / "checkpoints"), str(adapter), "--adapter_only"]) == 0
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {p.name for p in adapter.iterdir()}
    assert not (adapter / "model.safetensors").exists()

    # the adapter, loaded by peft onto the base it names, holds exactly the live engine's trained tensors
    base = AutoModelForSequenceClassification.from_pretrained(model)
    loaded = PeftModel.from_pretrained(base, adapter).eval()
    assert loaded.peft_config["default"].base_model_name_or_path == str(model)
    params = dict(loaded.named_parameters())
    assert len(live["trained"]) == len(load_file(str(adapter / "adapter_model.safetensors"))) > 0
    torch.manual_seed(42)  # the trainer's adapters before training: drawn from --seed
    initial = dict(get_peft_model(load_reranker(str(model)), lora.lora_config(
        load_reranker(str(model)), SimpleNamespace(lora_r=4, lora_alpha=8.0, lora_dropout=0.05,
                                                   lora_target_modules=None, model_name_or_path=str(model))
    )).named_parameters())
    for name, tensor in live["trained"].items():
        assert torch.equal(params[name].detach(), tensor), name
        assert not torch.equal(initial[name].detach(), tensor), f"{name} never trained"
    tokenizer = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        assert torch.equal(loaded(**_batch(tokenizer)).logits, live["scores"])
        merged = AutoModelForSequenceClassification.from_pretrained(out).eval()  # the end-of-run export
        assert not any(".lora_" in name or "base_model" in name for name in merged.state_dict())
        assert torch.allclose(merged(**_batch(tokenizer)).logits, live["scores"], atol=1e-5, rtol=1e-5)


def test_adapter_only_needs_a_lora_checkpoint(tmp_path, capsys):
    model, train = tiny_model_dir(tmp_path / "m"), write_groups(tmp_path / "g.jsonl", queries=8)
    try:
        assert cli.main(["train", *train_argv(model, train, tmp_path / "out", "zero0", max_steps=1)]) == 0
    finally:
        distributed.teardown(wait_for_others=False)
    assert cli.main(["consolidate", str(tmp_path / "out" / "checkpoints"), str(tmp_path / "a"), "--adapter_only"]) == 2
    assert "--adapter_only: this checkpoint was not trained with LoRA" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("arch", ["bert-lora", "qwen3-full"])
def test_checkpointed_cached_step_replays_dropout_and_matches_a_plain_backward(tmp_path, arch):
    """The gradient cache's recompute runs under non-reentrant checkpointing (each block's forward runs again in
    the backward) with the same dropout masks, LoRA's dropout included."""
    if arch == "bert-lora":
        directory, tokenizer = tiny_model_dir(tmp_path / "m", dropout=0.3, init_range=0.2), tiny_tokenizer()
        block = lambda m: m.base_model.model.bert.encoder.layer[0].attention.self  # noqa: E731
    else:
        directory = tiny_decoder_reranker_dir(tmp_path / "m", "qwen3")
        tokenizer = AutoTokenizer.from_pretrained(directory)
        block = lambda m: m.model.layers[0].self_attn  # noqa: E731
    args = SimpleNamespace(lora_r=4 if arch == "bert-lora" else 0, lora_alpha=8.0, lora_dropout=0.3,
                           lora_target_modules=None, model_name_or_path=str(directory))
    model = lora.prepare(load_reranker(str(directory), **({} if arch == "bert-lora" else {"attention_dropout": 0.3})),
                         args, gradient_checkpointing=True, seed=0)
    calls = []
    block(model).register_forward_hook(lambda *_: calls.append(1))
    encoder = PairEncoder(tokenizer, max_len=24)
    queries, passages = ["weather in new york", "python code"], ["it is cold today", "the code is new", "what", "new"]
    pairs = [encoder.encode_ids(*encoder.token_ids([q, p])) for q in queries for p in passages]
    batches = [encoder.collate(pairs[i:i + 3]) for i in range(0, len(pairs), 3)]
    torch.manual_seed(123)
    start = RngState()
    micro = MicroBatch(batches, (2, 4), torch.ones(2, 4), group_size=4, chunked=True)
    result = micro_batch_step(model, micro, lce_loss, lambda surrogate, last: surrogate.backward())
    assert len(calls) == 3 * len(batches)  # no-grad pass, recompute, and the checkpoint's replay in the backward
    cached = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert torch.equal(result.recomputed, result.scores)  # bit for bit: the same dropout masks
    model.zero_grad()
    start.restore()  # the same masks, chunk by chunk, in one plain autograd graph
    scores = torch.cat([pair_scores(model, b) for b in batches]).view(2, 4)
    assert torch.equal(scores.detach(), result.scores)
    lce_loss(scores).backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert torch.allclose(cached[name], param.grad, rtol=1e-5, atol=1e-7), name
    torch.manual_seed(999)  # other masks: the replay is what makes them equal
    assert not torch.equal(torch.cat([pair_scores(model, b) for b in batches]).view(2, 4).detach(), result.scores)


@pytest.mark.slow
@pytest.mark.parametrize("world,config", [(2, "zero3"), (1, "zero2_offload"), (2, "zero3_offload")])
def test_lora_resume_is_exact(tmp_path, world, config):
    """6 steps straight == 3 steps, checkpoint, resume, 3 steps: LoRA with dropout, checkpointing, gradient cache."""
    model = tiny_model_dir(tmp_path / "model", dropout=0.1, init_range=0.2)
    train = write_groups(tmp_path / "groups.jsonl", queries=32)
    extra = ["--lora_dropout", "0.1", "--gradient_checkpointing", "--grad_cache_chunk_size", "3"]

    def argv(out, *flags):
        return train_argv(model, train, out, config, *extra, *flags, **LORA_RUN)

    assert_resumed_exactly(*straight_and_resumed(tmp_path, {config: (world, argv)})[config])


@pytest.mark.slow
def test_lora_trains_on_every_config(tmp_path):
    """Two ranks, collaborative, cached, checkpointed, accumulation 2: ZeRO-1, ZeRO-2 and ZeRO-3 offload in fp32,
    ZeRO-0, ZeRO-3 and both offload configs in bf16 (every shipped config at least once), and a yes_no decoder
    (Qwen3, tied embeddings; only the adapters train) on ZeRO-3 in bf16: one dtype in every partition."""
    model, train = tiny_model_dir(tmp_path / "model", init_range=0.2), write_groups(tmp_path / "g.jsonl", queries=32)
    modes = [("zero1", "fp32"), ("zero2", "fp32"), ("zero3_offload", "fp32"), ("zero0", "bf16"), ("zero3", "bf16"),
             ("zero2_offload", "bf16"), ("zero3_offload", "bf16")]
    assert {config for config, _ in modes} == set(CONFIGS)
    flags = ["--max_steps", "10", "--collaborative", "--grad_cache_chunk_size", "3", "--gradient_checkpointing",
             "--gradient_accumulation_steps", "2"]
    runs = {f"{c}-{p}": train_argv(model, train, tmp_path / f"{c}-{p}", c, *flags, bf16=p == "bf16", **LORA_RUN)
            for c, p in modes}
    decoder = tiny_decoder_dir(tmp_path / "qwen3", "qwen3", init_range=0.2)
    runs["yes_no-zero3-bf16"] = train_argv(decoder, train, tmp_path / "yes_no-zero3-bf16", "zero3", *flags,
                                           "--bf16", "--score_head", "yes_no", "--max_len", "192", **LORA_RUN)
    run_jobs(2, list(runs.values()))
    for name in runs:
        losses = train_losses(tmp_path / name)
        assert len(losses) == 10 and sum(losses[-3:]) < 0.9 * sum(losses[:3]), (name, losses)
        assert (tmp_path / name / "model.safetensors").is_file()


@pytest.mark.parametrize("flags,expected", [
    (["--lora_target_modules", "q_proj", "query"], "--lora_target_modules: the model has no module 'q_proj' "
                                                   "(its block projections: attention.output.dense, "),
    (["--lora_r", "-1"], "--lora_r: must be >= 0, got -1"),
    (["--lora_r", "0", "--lora_target_modules", "query"], "--lora_target_modules: needs --lora_r > 0"),
])
def test_bad_lora_flags_stop_before_training(tmp_path, capsys, flags, expected):
    model, train = tiny_model_dir(tmp_path / "m"), write_groups(tmp_path / "g.jsonl", queries=8)
    assert cli.main(["train", *train_argv(model, train, tmp_path / "out", "zero2", max_steps=1, **LORA_RUN),
                     *flags]) == 2
    err = capsys.readouterr().err
    assert "bigrerank train: error: " in err and expected in err, err
    assert not torch.distributed.is_initialized() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("target, problem", [("score", "the model has no module 'score'"),
                                             ("lm_head", "'lm_head' is in the yes_no score head, which LoRA does not "
                                                         "adapt: its answer rows stay frozen")])
def test_yes_no_lora_refuses_head_targets_before_training(tmp_path, capsys, target, problem):
    """The yes_no contract trains the causal LM: its LM head (the answer rows) is no LoRA target, and a sequence
    classifier's `score` is not in it; both are refused before any process group starts."""
    decoder, train = tiny_decoder_dir(tmp_path / "qwen3", "qwen3"), write_groups(tmp_path / "g.jsonl", queries=8)
    argv = train_argv(decoder, train, tmp_path / "out", "zero2", "--max_steps", "1", "--score_head", "yes_no",
                      "--max_len", "192", "--lora_r", "4", "--lora_target_modules", target, **LORA_RUN)
    assert cli.main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert f"--lora_target_modules: {problem}" in err and "self_attn.q_proj" in err, err
    assert not torch.distributed.is_initialized() and not (tmp_path / "out").exists()


def test_default_targets_are_every_block_projection(tmp_path):
    bert = load_reranker(str(tiny_model_dir(tmp_path / "bert")))
    assert lora.block_projections(bert) == ["attention.output.dense", "attention.self.key", "attention.self.query",
                                            "attention.self.value", "intermediate.dense", "output.dense"]
    for arch in ("qwen3", "llama"):
        decoder = load_reranker(str(tiny_decoder_reranker_dir(tmp_path / arch, arch)))
        assert lora.block_projections(decoder) == [
            "mlp.down_proj", "mlp.gate_proj", "mlp.up_proj", "self_attn.k_proj", "self_attn.o_proj",
            "self_attn.q_proj", "self_attn.v_proj"]
