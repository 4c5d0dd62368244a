"""`plan` estimates time as well as memory: the model FLOPs of a step (the benchmarks' count) over a matmul rate
measured here."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from bigrerank.model import load_config
from bigrerank.planning import time as plan_time
from bigrerank.planning.shape import model_shape
from tests.helpers import run_cli
from tests.tiny import tiny_model_dir, write_groups


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plan_time")
    return tiny_model_dir(tmp / "model"), write_groups(tmp / "groups.jsonl", queries=20), tmp


def test_the_matmul_weights_are_the_linear_layers(tiny):
    shape = model_shape(load_config(str(tiny[0])))
    # tiny BERT: 2 layers of q, k, v, o (32x32), up (32x64), down (64x32); the pooler (32x32); the classifier (32x1)
    assert shape.matmul_params == 2 * (4 * 32 * 32 + 2 * 32 * 64) + 32 * 32 + 32


def test_a_step_costs_a_forward_and_a_backward_and_each_mode_adds_its_own(tiny):
    shape = model_shape(load_config(str(tiny[0])))
    forward = 2 * shape.matmul_params + 4 * shape.layers * shape.hidden * 64
    plain = plan_time.step_cost(shape, 64, 8, 4, 2, world=2, collaborative=False, cached=False, checkpointing=False)
    assert (plain.pairs, plain.tokens) == (4 * 8 * 2, 4 * 8 * 2 * 64)
    assert plain.flops == 3 * forward * plain.tokens
    cached = plan_time.step_cost(shape, 64, 8, 4, 2, 2, False, cached=True, checkpointing=True)
    assert cached.flops == 5 * forward * plain.tokens  # a no-grad forward and a recomputation more
    collaborative = plan_time.step_cost(shape, 64, 8, 4, 2, 2, collaborative=True, cached=False, checkpointing=False)
    assert collaborative.pairs == plain.pairs // 2  # each rank scores half of every group
    lora = model_shape(load_config(str(tiny[0])), SimpleNamespace(lora_r=4, lora_alpha=8, lora_dropout=0.0,
                                                                  lora_target_modules=None,
                                                                  model_name_or_path=str(tiny[0])))
    frozen = plan_time.step_cost(lora, 64, 8, 4, 2, 2, False, False, False)
    lora_forward = 2 * lora.matmul_params + 4 * lora.layers * lora.hidden * 64
    assert frozen.flops == 2 * lora_forward * plain.tokens  # no weight gradients for the frozen base


def test_the_estimate_divides_the_flops_by_the_measured_rate_at_the_stated_utilisation():
    cost = plan_time.StepCost(pairs=32, tokens=4096, flops=2.8e11)
    estimate = plan_time.time_estimate(cost, rate_gflops=200.0, total_steps=10, world=2)
    assert estimate["step_seconds"] == pytest.approx(2.8e11 / (200e9 * plan_time.MFU))
    assert estimate["total_seconds"] == pytest.approx(10 * estimate["step_seconds"])
    assert estimate["tokens_per_second"] == pytest.approx(2 * 4096 / estimate["step_seconds"])
    assert plan_time.time_estimate(cost, 200.0, None, 1)["total_seconds"] is None


def test_the_run_s_steps_come_from_max_steps_or_the_training_file(tiny):
    args = SimpleNamespace(max_steps=0, num_train_epochs=2.0, per_device_train_batch_size=2, collaborative=False,
                           gradient_accumulation_steps=1)
    assert plan_time.total_steps(args, str(tiny[1]), world=2) == 2 * (20 // 4)
    assert plan_time.total_steps(args, None, world=2) is None
    assert plan_time.total_steps(SimpleNamespace(**{**vars(args), "max_steps": 7}), None, 2) == 7


def test_plan_json_carries_the_time_and_a_gpu_plan_without_a_gpu_says_why_not(tiny, capsys):
    model, train, _ = tiny
    common = ["plan", "--model_name_or_path", str(model), "--ds_config", "ds_configs/zero2.json", "--max_len", "32",
              "--train_group_size", "4", "--train_path", str(train)]
    assert run_cli([*common, "--json"]) == 0
    time = json.loads(capsys.readouterr().out)["time"]
    assert set(time) == {"step_seconds", "total_seconds", "tokens_per_second", "matmul_gflops"}
    assert time["step_seconds"] > 0 and time["total_seconds"] == pytest.approx(time["step_seconds"] * 5)
    assert run_cli([*common, "--gpus_per_node", "8", "--gpu_memory", "80GiB"]) == 0
    assert "time: not estimated (the run's GPU is not here to measure)" in capsys.readouterr().out
