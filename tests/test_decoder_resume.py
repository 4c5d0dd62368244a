"""Decoder rerankers resume exactly: 6 steps straight == 3 steps, checkpoint, resume, 3 steps, on 2 ranks (bit-exact
weights, identical losses), with both score heads, LoRA and full, dropout on (attention and LoRA): the RNG is
restored too."""
from __future__ import annotations

import pytest

from tests.test_training import assert_resumed_exactly, straight_and_resumed
from tests.tiny import write_groups
from tests.tiny_decoder import tiny_decoder_dir

LORA, CACHED = ["--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0.1"], ["--grad_cache_chunk_size", "3"]
# name: (arch, score head, ZeRO config, flags); Qwen3 has tied embeddings, Llama untied
CASES = {"qwen3-yes_no-lora-zero3": ("qwen3", "yes_no", "zero3", [*LORA, *CACHED, "--gradient_checkpointing",
                                                                  "--collaborative"]),
         "llama-classifier-lora-zero3": ("llama", "classifier", "zero3", [*LORA, *CACHED]),
         "llama-yes_no-full-zero2": ("llama", "yes_no", "zero2", [*CACHED, "--gradient_checkpointing"])}


def _argv(model, train, head, config, flags, out, *extra):
    return ["--model_name_or_path", str(model), "--train_path", str(train), "--output_dir", str(out),
            "--ds_config", f"ds_configs/{config}.json", "--score_head", head, "--train_group_size", "4",
            "--max_len", "192", "--per_device_train_batch_size", "2", "--learning_rate", "1e-2", "--warmup_steps", "2",
            "--logging_steps", "1", "--save_steps", "1000", *flags, *extra]


@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("decoder_resume")
    models = {arch: tiny_decoder_dir(tmp / arch, arch, init_range=0.2, tie=arch == "qwen3", dropout=0.1)
              for arch in ("qwen3", "llama")}
    train = write_groups(tmp / "groups.jsonl", queries=16, negatives=4)
    cases = {name: (2, lambda out, *extra, case=case: _argv(models[case[0]], train, *case[1:], out, *extra))
             for name, case in CASES.items()}
    return straight_and_resumed(tmp, cases)


@pytest.mark.parametrize("name", CASES)
def test_decoder_resume_is_exact(resumed_runs, name):
    assert_resumed_exactly(*resumed_runs[name])
