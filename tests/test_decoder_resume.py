"""Decoder rerankers resume exactly: 6 steps straight == 3 steps, checkpoint, resume, 3 steps, on 2 ranks (bit-exact
weights, identical losses), with both score heads, LoRA and full, dropout on (attention and LoRA): the RNG is
restored too."""
from __future__ import annotations

import pytest

from tests.helpers import assert_resumed_exactly, straight_and_resumed, train_argv
from tests.tiny import write_groups
from tests.tiny_decoder import tiny_decoder_dir

pytestmark = pytest.mark.slow

LORA, CACHED = ["--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0.1"], ["--grad_cache_chunk_size", "3"]
# name: (arch, score head, ZeRO config, flags); Qwen3 has tied embeddings, Llama untied
CASES = {"qwen3-yes_no-lora-zero3": ("qwen3", "yes_no", "zero3", [*LORA, *CACHED, "--gradient_checkpointing",
                                                                  "--collaborative"]),
         "llama-classifier-lora-zero3": ("llama", "classifier", "zero3", [*LORA, *CACHED]),
         "llama-yes_no-full-zero2": ("llama", "yes_no", "zero2", [*CACHED, "--gradient_checkpointing"])}


@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("decoder_resume")
    models = {arch: tiny_decoder_dir(tmp / arch, arch, init_range=0.2, tie=arch == "qwen3", dropout=0.1)
              for arch in ("qwen3", "llama")}
    train = write_groups(tmp / "groups.jsonl", queries=16, negatives=4)

    def command(arch, head, config, flags):
        return lambda out, *extra: train_argv(models[arch], train, out, config, *flags, *extra, score_head=head,
                                              max_len=192, learning_rate="1e-2", warmup_steps=2)

    cases = {name: (2, command(*case)) for name, case in CASES.items()}
    return straight_and_resumed(tmp, cases)


@pytest.mark.parametrize("name", CASES)
def test_decoder_resume_is_exact(resumed_runs, name):
    assert_resumed_exactly(*resumed_runs[name])
