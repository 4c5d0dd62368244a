"""DeepSpeed config "auto" resolution from the command line, and its errors."""
import json

import pytest

from bigrerank import ds_config
from bigrerank.commands.train import TrainingArguments
from bigrerank.errors import InputError


def _args(**overrides):
    base = dict(output_dir="out", per_device_train_batch_size=4, gradient_accumulation_steps=2, learning_rate=3e-5,
                weight_decay=0.01, adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-7, max_grad_norm=0.5,
                warmup_ratio=0.1, bf16=True)
    base.update(overrides)
    return TrainingArguments(**base)


@pytest.mark.parametrize("name", ["zero0", "zero1", "zero2", "zero3", "zero2_offload", "zero3_offload"])
def test_every_auto_value_is_filled(name):
    config = ds_config.fill_auto(ds_config.load(f"ds_configs/{name}.json"), _args(), world_size=3, total_steps=200,
                               hidden_size=64)
    assert config["train_micro_batch_size_per_gpu"] == 4
    assert config["gradient_accumulation_steps"] == 2
    assert config["train_batch_size"] == 4 * 2 * 3  # micro x accumulation x data-parallel world
    assert config["gradient_clipping"] == 0.5
    params = {k: v for k, v in config["optimizer"]["params"].items() if k != "torch_adam"}
    assert params == {"lr": 3e-5, "betas": [0.8, 0.95], "eps": 1e-7, "weight_decay": 0.01}
    assert config["scheduler"]["params"]["warmup_max_lr"] == 3e-5
    assert config["scheduler"]["params"]["warmup_num_steps"] == 20
    assert config["scheduler"]["params"]["total_num_steps"] == 200
    assert config["bf16"]["enabled"] is True and config["fp16"]["enabled"] is False
    assert "auto" not in json.dumps(config)
    if name.startswith("zero3"):
        assert config["zero_optimization"]["stage3_param_persistence_threshold"] == 640


def test_warmup_steps_win_over_ratio():
    config = ds_config.fill_auto(ds_config.load("ds_configs/zero2.json"), _args(warmup_steps=7), 1, 100)
    assert config["scheduler"]["params"]["warmup_num_steps"] == 7


def test_contradiction_names_both(tmp_path):
    raw = ds_config.load("ds_configs/zero2.json")
    raw["gradient_accumulation_steps"] = 8
    with pytest.raises(InputError) as e:
        ds_config.fill_auto(raw, _args(), 1, 100, path=str(tmp_path / "c.json"))
    message = str(e.value)
    assert "gradient_accumulation_steps" in message and "--gradient_accumulation_steps" in message
    assert "8" in message and "2" in message and "c.json" in message


def test_agreeing_explicit_values_are_kept():
    raw = ds_config.load("ds_configs/zero2.json")
    raw["train_micro_batch_size_per_gpu"] = 4
    assert ds_config.fill_auto(raw, _args(), 1, 100)["train_micro_batch_size_per_gpu"] == 4


def test_missing_and_malformed_config(tmp_path):
    with pytest.raises(InputError, match="not found"):
        ds_config.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "train_batch_size": "auto",\n  oops\n}')
    with pytest.raises(InputError, match=r"bad.json:3: malformed JSON"):
        ds_config.load(bad)


def test_unfillable_auto_is_refused():
    raw = ds_config.load("ds_configs/zero2.json")
    raw["zero_optimization"]["sub_group_size"] = "auto"
    with pytest.raises(InputError, match="zero_optimization.sub_group_size"):
        ds_config.fill_auto(raw, _args(), 1, 100)


def test_fp16_is_refused_without_a_gpu():
    with pytest.raises(InputError, match="fp16 needs a GPU"):
        ds_config.fill_auto(ds_config.load("ds_configs/zero2.json"), _args(bf16=False, fp16=True), 1, 100)
