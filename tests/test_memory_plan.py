"""`bigrerank plan`: arithmetic on hand-computed cases, the activation model against autograd's saved tensors,
the suggestion and the largest group, the shared flags with `train`, and clear errors."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, LlamaConfig, Qwen3Config

from bigrerank import cli
from bigrerank.errors import InputError
from bigrerank.commands import plan as plan_command
from bigrerank.planning import activations, planner
from bigrerank.planning.estimate import (Hardware, Setup, estimate, freed_lora_temporaries, freed_while_loading,
                                         heap_free, loading_peak, model_states)
from bigrerank.planning.shape import ModelShape, model_shape
from bigrerank.planning.sizes import parse_size
from tests.tiny import tiny_model_dir

ZERO2 = {"zero_optimization": {"stage": 2, "reduce_bucket_size": 100}, "optimizer": {"params": {"torch_adam": True}}}


def shape(**overrides) -> ModelShape:
    values = dict(total_params=1000, trainable_params=1000, largest_module_params=300, param_sizes=(300, 600, 50, 50),
                  trainable_sizes=(300, 600, 50, 50), layers=2, hidden=8, heads=2, kv_heads=2, head_dim=4, intermediate=16,
                  vocab=100, rms_norm=False, gated_mlp=False, qk_norm=False, attention="sdpa", hidden_dropout=0.0,
                  attention_dropout=0.0, checkpoint_bytes=4)
    return ModelShape(**{**values, **overrides})


def setup(**overrides) -> Setup:
    values = dict(shape=shape(), ds=ZERO2, group_size=8, max_len=16, per_device_batch=2)
    return Setup(**{**values, **overrides})


def test_sizes():
    assert parse_size("80GiB", "--gpu_memory") == 80 * 2 ** 30
    assert parse_size("1TB", "--host_memory") == 10 ** 12
    assert parse_size("1.5 MiB", "--x") == 3 * 2 ** 19
    for bad in ("80XB", "GiB", "-1GiB", "0GiB", ""):
        with pytest.raises(InputError):
            parse_size(bad, "--gpu_memory")


def test_model_states_by_hand():
    gpus = Hardware(nodes=1, gpus_per_node=4, gpu_memory=10 ** 9, host_memory=10 ** 12)
    device, host = model_states(setup(half_precision=True), gpus)
    # bf16 ZeRO-2 on 4 ranks: 2 B/param weights, 2 B/param/4 gradients, 16 B/param/4 optimizer states (DeepSpeed's
    # estimator), a 100-element reduce bucket, AdamW's float32 temporary of the 250-element partition
    # (+ the step's flat 16-bit copy of the gradient partition)
    assert device == {"parameters": 2000, "gradients": 500 + 500, "optimizer_states": 4000,
                      "communication_buckets": 200, "optimizer_step_workspace": 1000}
    assert host == {}
    zero3_offload = {"zero_optimization": {"stage": 3, "stage3_prefetch_bucket_size": 10,
                                           "stage3_param_persistence_threshold": 50,
                                           "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"}}}
    device, host = model_states(setup(ds=zero3_offload, half_precision=True), gpus)
    # partition 1000/4 plus the two 50-element persistent tensors kept whole (100 * 3/4 more), in bf16
    assert host == {"parameters": 2 * (250 + 75), "optimizer_states": 4000}
    assert device == {"gradients": 500, "zero3_live_parameters": 2 * (300 + 10 + 300), "communication_buckets": 2000}
    # ZeRO-2 optimizer offload: the host holds a 16-bit copy of the 250-element partition and a host gradient
    # staging buffer of the largest trainable tensor (600), the device the other staging buffer
    zero2_offload = {"zero_optimization": {"stage": 2, "reduce_bucket_size": 100,
                                           "offload_optimizer": {"device": "cpu"}}}
    device, host = model_states(setup(ds=zero2_offload, half_precision=True), gpus)
    assert host == {"optimizer_states": 4000, "cpu_offload_buffers": 2 * 250 + 2 * 600}
    assert device == {"parameters": 2000, "gradients": 500 + 500, "communication_buckets": 200,
                      "offload_gradient_staging": 2 * 600}
    # LoRA: only trainable parameters have gradients and states; fp32 ZeRO-0 steps the weights themselves
    lora = setup(shape=shape(trainable_params=100, trainable_sizes=(40, 60)), ds={"zero_optimization": {"stage": 0}})
    device, _ = model_states(lora, Hardware(gpus_per_node=1, gpu_memory=1, host_memory=1))
    assert device == {"parameters": 4000, "gradients": 400, "optimizer_states": 800, "optimizer_step_workspace": 240}


def test_activations_by_hand():
    # BERT family, fp32, SDPA without dropout: b(4h + 4ad + 2f) + 4b + 4a per token per layer
    bert = shape()
    assert activations.layer_bytes_per_token(bert, 16, 4, on_gpu=False) == 4 * (32 + 32 + 32) + 16 + 8
    # eager attention adds the softmax, a * L entries of b bytes
    eager = shape(attention="eager")
    assert activations.layer_bytes_per_token(eager, 16, 4, False) == 4 * 96 + 16 + 2 * 16 * 4
    # pairs alive: plain = micro-batch's pairs (2 x 8), cached = K, collaborative = the rank's slice
    per_pair = activations.pair_bytes(bert, 16, 4, False, False)
    assert per_pair == 16 * (2 * 408 + 3 * 4 * 8 + 408)
    cpu = Hardware(host_memory=10 ** 12)
    assert estimate(setup(), cpu).per_rank["activations"] == 16 * per_pair
    assert estimate(setup(chunk_size=4), cpu).per_rank["activations"] == 4 * per_pair
    two = Hardware(cpu_processes_per_node=2, host_memory=10 ** 12)
    assert estimate(setup(collaborative=True), two).per_rank["activations"] == 8 * per_pair
    # checkpointing: each layer's input (bh) plus the one layer recomputed, plus the backward's
    ckpt = activations.pair_bytes(bert, 16, 4, False, True)
    assert ckpt == 16 * (2 * 4 * 8 + 408 + 3 * 4 * 8 + 408)
    # yes_no: the head's two rows per pair, never the vocabulary
    assert activations.score_bytes(shape(score_head="yes_no"), 16, 4) == 4 * 2 * 16 + 4 * 2 * 4


def test_cpu_only_puts_everything_on_the_host():
    plan = estimate(setup(), Hardware(cpu_processes_per_node=2, host_memory=10 ** 12))
    assert plan.budget == {"per_rank": None, "per_node": 10 ** 12}
    assert plan.per_node["total"] == 2 * plan.per_rank["total"]
    heap = ("freed_while_loading", "freed_recompute_activations", "freed_lora_temporaries", "heap_free")
    live = sum(v for k, v in plan.per_rank.items() if k not in ("total", "loading", *heap))
    assert plan.per_rank["total"] == max(live + plan.per_rank["heap_free"],
                                         loading_peak(setup(), Hardware(cpu_processes_per_node=2)))
    # ZeRO-2 flattens the trainable tensors (4000 bytes as stored): freed into the heap
    assert plan.per_rank["freed_while_loading"] == 4000
    # a bf16 run casts the float32 checkpoint; ZeRO-0 in float32 replaces nothing
    assert freed_while_loading(setup(half_precision=True, ds={"zero_optimization": {"stage": 0}})) == 4000
    assert freed_while_loading(setup(ds={"zero_optimization": {"stage": 0}})) == 0
    # ZeRO-3: the tensors built whole before partitioning and the checkpoint read into the partitions
    assert freed_while_loading(setup(half_precision=True, ds={"zero_optimization": {"stage": 3}})) == 2000 + 4000


def test_a_recompute_leaves_one_more_in_the_heap():
    cpu = Hardware(host_memory=10 ** 12)
    per_pair = activations.pair_bytes(shape(), 16, 4, False, False)
    # 16 pairs in chunks of 4: the previous chunk's activations stay in glibc's heap beside the live chunk's
    cached = estimate(setup(chunk_size=4), cpu).per_rank
    assert cached["freed_recompute_activations"] == cached["activations"] == 4 * per_pair == cached["heap_free"]
    # checkpointing recomputes layer by layer: one layer (408 B per token, 16 tokens) of the 16 pairs alive
    assert estimate(setup(checkpointing=True), cpu).per_rank["freed_recompute_activations"] == 16 * 16 * 408
    # a plain step, or one chunk holding the whole micro-batch, recomputes nothing
    assert estimate(setup(), cpu).per_rank["freed_recompute_activations"] == 0
    assert estimate(setup(chunk_size=16), cpu).per_rank["freed_recompute_activations"] == 0
    # on a GPU the activations are on the device, not in the host's heap
    gpu = Hardware(gpus_per_node=1, gpu_memory=10 ** 12, host_memory=10 ** 12)
    assert "freed_recompute_activations" not in estimate(setup(chunk_size=4), gpu).per_rank


def test_lora_temporaries_and_heap_reuse():
    # 3 output-width temporaries per adapted projection: 3 x 4 B x 100 outputs x 2 layers x 16 tokens x 16 pairs
    lora = shape(lora_rank=4, lora_adapters_per_layer=2, lora_inputs_per_layer=16, lora_outputs_per_layer=100)
    assert freed_lora_temporaries(setup(shape=lora), 16) == 3 * 4 * 100 * 2 * 16 * 16
    # checkpointing keeps one layer's; bf16 halves them; no LoRA, none
    ckpt_bf16 = setup(shape=lora, checkpointing=True, half_precision=True)
    assert freed_lora_temporaries(ckpt_bf16, 16) == 3 * 2 * 100 * 16 * 16
    assert freed_lora_temporaries(setup(), 16) == 0
    # what loading freed is reused by training's blocks: the larger of the two counts, not their sum
    freed = heap_free(setup(shape=lora, chunk_size=4), 16, 4, 1000)
    assert freed["freed_while_loading"] == 4000 and freed["freed_recompute_activations"] == 1000
    assert freed["heap_free"] == max(4000, 1000 + 3 * 4 * 100 * 2 * 16 * 4)
    assert heap_free(setup(), 16, 16, 1000)["heap_free"] == 4000


def test_lora_shape_counts_the_adapted_widths():
    from bigrerank.commands.train import ModelArguments

    llama = model_shape(_configs()["llama"]("sdpa", 2), ModelArguments(model_name_or_path="tiny", lora_r=4))
    # q 48, k and v 2 kv heads x 12, o 48, gate and up 112, down 48 (inputs: 48 x 6 + 112)
    assert (llama.lora_adapters_per_layer, llama.lora_outputs_per_layer, llama.lora_inputs_per_layer) == (7, 416, 400)


def _saved_bytes(config_or_model, tokens: int, dtype=torch.float32) -> int:
    """Bytes of the tensors autograd saves in a forward (parameters excluded, shared storage once)."""
    model = config_or_model if isinstance(config_or_model, torch.nn.Module) else \
        AutoModelForSequenceClassification.from_config(config_or_model)
    model = model.to(dtype).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen, alive = {}, []

    def pack(t):
        storage = t.untyped_storage()
        alive.append(t)  # a storage freed during the forward could hand its address to another: keep them all
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    ids = torch.randint(5, 90, (1, tokens))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return sum(seen.values())


def _configs():
    common = dict(vocab_size=100, hidden_size=48, intermediate_size=112, num_labels=1)
    decoder = dict(num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, **common)
    return {"bert": lambda impl, n: BertConfig(num_attention_heads=4, attn_implementation=impl, num_hidden_layers=n,
                                               **common),
            "qwen3": lambda impl, n: Qwen3Config(head_dim=16, attn_implementation=impl, num_hidden_layers=n, **decoder),
            "llama": lambda impl, n: LlamaConfig(attn_implementation=impl, num_hidden_layers=n, **decoder)}


@pytest.mark.parametrize("arch", ["bert", "qwen3", "llama"])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_activations_match_saved_tensors(arch, impl, dtype):
    """The per-layer formula equals what autograd keeps, layer by layer (2 layers minus 1), within 5%."""
    build, tokens = _configs()[arch], 40
    measured = _saved_bytes(build(impl, 2), tokens, dtype) - _saved_bytes(build(impl, 1), tokens, dtype)
    predicted = tokens * activations.layer_bytes_per_token(model_shape(build(impl, 2)), tokens, 2 if dtype != torch.float32
                                                           else 4, on_gpu=False)
    assert predicted == pytest.approx(measured, rel=0.05)


def _lora_layer_saved_bytes(dropout: float, tokens: int) -> int:
    """What one more LoRA-wrapped tiny Llama block adds to autograd's saved tensors (run in a fresh process)."""
    from peft import get_peft_model

    from bigrerank import lora
    from bigrerank.commands.train import ModelArguments

    model_args = ModelArguments(model_name_or_path="tiny", lora_r=4, lora_dropout=dropout)

    def saved(layers):
        model = AutoModelForSequenceClassification.from_config(_configs()["llama"]("sdpa", layers))
        return _saved_bytes(get_peft_model(model, lora.lora_config(model, model_args)), tokens)

    return saved(2) - saved(1)


@pytest.mark.slow
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_lora_activations_match_saved_tensors(dropout):
    """LoRA adds each adapter's dropout mask and dropped input and lora_A's output, as autograd keeps them.

    Measured in a fresh process: after other tests in the same interpreter the count read 32,000 B more
    (258,880 B) with dropout, from global state those tests leave, not from this model."""
    import multiprocessing

    from bigrerank.commands.train import ModelArguments

    tokens = 40
    model_args = ModelArguments(model_name_or_path="tiny", lora_r=4, lora_dropout=dropout)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        measured = pool.apply(_lora_layer_saved_bytes, (dropout, tokens))
    predicted = tokens * activations.layer_bytes_per_token(model_shape(_configs()["llama"]("sdpa", 2), model_args),
                                                           tokens, 4, on_gpu=False)
    assert predicted == pytest.approx(measured, rel=0.05)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny"))


def _argv(model, *extra):
    return ["--model", str(model), "--ds_config", "ds_configs/zero0.json", "--train_group_size", "64", "--max_len",
            "128", "--per_device_train_batch_size", "4", *extra]


def _plan_json(argv, capsys) -> dict:
    assert cli.main(["plan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_keys_and_suggestion_fits_when_applied(tiny_dir, capsys):
    hardware = ["--gpus_per_node", "2", "--gpu_memory", "40MiB", "--host_memory", "1GiB"]
    result = _plan_json(_argv(tiny_dir, *hardware), capsys)
    assert set(result) >= {"per_rank", "per_node", "budget", "fits", "suggestion", "max_group_size", "time"}
    assert result["per_rank"]["total"] > result["budget"]["per_rank"] == 40 * 2 ** 20 and not result["fits"]
    suggestion = shlex.split(result["suggestion"])
    assert suggestion[:2] == ["bigrerank", "train"]
    applied = _plan_json([*suggestion[2:], *hardware], capsys)
    assert applied["fits"] and applied["suggestion"] is None
    assert 1 <= result["max_group_size"] < 64
    at_max = _plan_json(_argv(tiny_dir, *hardware, "--train_group_size", str(result["max_group_size"])), capsys)
    over = _plan_json(_argv(tiny_dir, *hardware, "--train_group_size", str(result["max_group_size"] + 1)), capsys)
    assert at_max["fits"] and not over["fits"]


@pytest.mark.slow
def test_json_stdout_is_one_object_in_a_fresh_process(tiny_dir):
    """DeepSpeed's import prints its accelerator notice to stdout: with --json it goes to stderr instead."""
    argv = [*_argv(tiny_dir, "--gpus_per_node", "0"), "--ds_config", "ds_configs/zero3.json"]  # DeepSpeed estimates
    done = subprocess.run([sys.executable, "-m", "bigrerank.cli", "plan", *argv, "--json"], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)) >= {"per_rank", "per_node", "fits"}, done.stdout


def test_suggestions_follow_the_cost_order(tiny_dir, capsys):
    base = _plan_json(_argv(tiny_dir, "--gpus_per_node", "1", "--gpu_memory", "1TiB"), capsys)
    activation = base["per_rank"]["activations"]
    # just short of the plain run: a gradient-cache chunk is enough and is tried first
    short = base["per_rank"]["total"] - activation // 4
    result = _plan_json(_argv(tiny_dir, "--gpus_per_node", "1", "--gpu_memory", f"{short}B"), capsys)
    assert "--grad_cache_chunk_size" in result["suggestion"] and "--lora_r" not in result["suggestion"]
    # below the weights and Adam states of a full fine-tune: only LoRA (with everything before it) can fit
    states = base["per_rank"]["parameters"] + base["per_rank"]["optimizer_states"]
    tight = _plan_json(_argv(tiny_dir, "--gpus_per_node", "1", "--gpu_memory", f"{states // 2}B",
                             "--host_memory", "100MiB"), capsys)
    assert tight["suggestion"] is None or "--lora_r 16" in tight["suggestion"]


def test_plan_and_train_accept_the_same_flags(tiny_dir):
    from bigrerank.commands.train import parse

    argv = [*_argv(tiny_dir), "--train_path", "data.jsonl", "--output_dir", "out", "--bf16", "--lora_r", "8",
            "--gradient_checkpointing", "--collaborative", "--grad_cache_chunk_size", "4", "--ignore_memory_plan"]
    trained = parse(argv)
    planned = plan_command.parse([*argv, "--nodes", "2", "--gpus_per_node", "8", "--gpu_memory", "80GiB"])
    assert planned[:3] == tuple(trained)
    train_flags = {o for a in _parser_actions(False) for o in a.option_strings}
    plan_flags = {o for a in _parser_actions(True) for o in a.option_strings}
    assert train_flags <= plan_flags


def _parser_actions(plan: bool):
    from transformers import HfArgumentParser

    from bigrerank.commands.train import DataArguments, ModelArguments, TrainingArguments

    classes = (ModelArguments, DataArguments, TrainingArguments) + ((plan_command.PlanArguments,) if plan else ())
    return HfArgumentParser(classes)._actions


@pytest.mark.parametrize("case", ["unknown model", "non-JSON config", "unknown model type", "bad size",
                                  "zero budget", "no GPU memory"])
def test_bad_input_is_one_clear_line(tiny_dir, tmp_path, capsys, case):
    bad_json = tmp_path / "config.json"
    bad_json.write_text("{not json")
    odd_type = tmp_path / "odd.json"
    odd_type.write_text(json.dumps({"model_type": "no-such-architecture"}))
    argv, message = {
        "unknown model": (_argv(tmp_path / "missing"), "missing"),
        "non-JSON config": (_argv(bad_json), "not a JSON model config"),
        "unknown model type": (_argv(odd_type), "unknown model type"),
        "bad size": (_argv(tiny_dir, "--gpus_per_node", "1", "--gpu_memory", "80XB"), "'80XB' is not a size"),
        "zero budget": (_argv(tiny_dir, "--host_memory", "0GiB"), "no memory at all"),
        "no GPU memory": (_argv(tiny_dir, "--gpus_per_node", "2"), "--gpu_memory"),
    }[case]
    if case == "no GPU memory" and torch.cuda.is_available():
        pytest.skip("a visible GPU supplies --gpu_memory")
    assert cli.main(["plan", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bigrerank plan: error:") and message in err[0]


def test_config_json_plans_like_its_model_dir(tiny_dir, capsys):
    from_dir = _plan_json(_argv(tiny_dir, "--gpus_per_node", "0", "--host_memory", "1TiB"), capsys)
    from_json = _plan_json(_argv(tiny_dir / "config.json", "--gpus_per_node", "0", "--host_memory", "1TiB"), capsys)
    assert from_dir["per_node"] == from_json["per_node"]


def test_training_refuses_a_plan_that_cannot_fit(tiny_dir, monkeypatch, caplog):
    from bigrerank.commands.train import parse
    from bigrerank.model import load_config
    from bigrerank import ds_config

    model_args, data_args, args = parse([*_argv(tiny_dir), "--train_path", "x", "--output_dir", "y"])
    config = load_config(str(tiny_dir))
    raw = ds_config.load(args.ds_config)
    monkeypatch.setattr(planner, "machine_memory", lambda: 4 * 2 ** 20)
    with pytest.raises(InputError, match="exceeds this machine's memory.*cheapest change that fits: bigrerank train"):
        planner.check_training(model_args, data_args, args, raw, config)
    planner.check_training(model_args, data_args, replace(args, ignore_memory_plan=True), raw, config)
    monkeypatch.setattr(planner, "machine_memory", lambda: 2 ** 40)
    with caplog.at_level("INFO", logger="bigrerank.plan"):
        planner.check_training(model_args, data_args, args, raw, config)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("memory plan:")]
    assert len(lines) >= 1 and json.loads(lines[-1][len("memory plan: "):])["fits"]
