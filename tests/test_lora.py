"""LoRA (peft) and gradient checkpointing: exact against an independent plain PyTorch + peft reference, on tiny
BERT, Qwen3 and Llama rerankers, under every ZeRO stage, plain and cached, local and collaborative, 1 and 2 ranks.

The covering matrix below puts every value of every factor ({full, LoRA} x {checkpointing off, on} x {plain,
cached K=4} x {local, collaborative} x {BERT, Qwen3, Llama}) on 2 ranks under ZeRO-3, and ZeRO 0 and 2 and one
rank beside it; accumulation 2 once. Tolerances are the encoder matrix's (tests/test_exactness.py): each step's
reduced gradient of the trained parameters within 1e-5 relative (global) and 1e-4 per tensor, the exported
(merged) weights within 1e-5 and their update from the initial weights within 5e-5 (measured: gradients
<= 6.1e-7 global, <= 6.6e-5 per tensor; weights <= 6.2e-9, updates <= 8.6e-6). The reference never checkpoints:
a checkpointed run equals a plain backward.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from bigrerank.data.pairs import PairEncoder
from tests.dist_harness import run_jobs
from tests.reference import reference_state, relative_difference, update_difference
from tests.tiny import tiny_model_dir, write_groups
from tests.tiny_decoder_reranker import tiny_decoder_reranker_dir

STEPS, GROUP, PER_RANK, R, ALPHA = 3, 5, 2, 4, 8.0
UPDATE_TOLERANCE = 5e-5  # the weight update (final - initial): measured <= 8.6e-6
# the projections the trainer must find by itself, spelled independently (peft matches name suffixes)
TARGETS = {"bert": ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"],
           "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
TARGETS["llama"] = TARGETS["qwen3"]
# (arch, lora, checkpointing, chunk, collaborative, stage, accumulation)
TWO_RANKS = [("qwen3", True, True, 4, True, 3, 1), ("qwen3", False, True, 0, False, 3, 1),
             ("llama", True, False, 0, True, 3, 1), ("llama", False, True, 4, False, 3, 1),
             ("bert", True, True, 4, False, 3, 1), ("bert", True, False, 0, True, 3, 1),
             ("qwen3", True, True, 4, True, 3, 2), ("qwen3", True, True, 4, True, 0, 1),
             ("llama", True, True, 0, False, 2, 1), ("bert", True, True, 4, True, 2, 1)]
ONE_RANK = [("qwen3", True, True, 4, False, 0, 1), ("llama", False, True, 0, False, 2, 1),
            ("bert", True, False, 4, False, 3, 1)]


def _name(arch, lora, ckpt, chunk, collab, stage, accum):
    return (f"{arch}-{'lora' if lora else 'full'}-{'ckpt' if ckpt else 'nockpt'}-chunk{chunk}-"
            f"{'collab' if collab else 'local'}-zero{stage}-accum{accum}")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    dirs = {"bert": tiny_model_dir(tmp / "bert", init_range=0.2)}
    for arch in ("qwen3", "llama"):
        dirs[arch] = tiny_decoder_reranker_dir(tmp / arch, arch)
    return tmp, dirs, write_groups(tmp / "groups.jsonl", queries=16, negatives=6)


def _argv(model, data, out, *extra):
    return ["--model_name_or_path", str(model), "--train_path", str(data), "--train_group_size", str(GROUP),
            "--max_len", "32", "--learning_rate", "1e-3", "--max_steps", str(STEPS), "--logging_steps", "1",
            "--save_steps", "1000", "--per_device_train_batch_size", str(PER_RANK), "--output_dir", str(out), *extra]


def _reference_encoder(model_dir, arch: str) -> PairEncoder:
    """The pair template of the classifier contract: a decoder reads its last token, so an EOS ends every pair."""
    return PairEncoder(AutoTokenizer.from_pretrained(model_dir), 32, append_eos=arch != "bert")


@pytest.mark.parametrize("world", [1, 2])
def test_lora_and_checkpointing_match_the_plain_peft_reference(models, world):
    tmp, dirs, data = models
    modes = TWO_RANKS if world == 2 else ONE_RANK
    runs = {mode: tmp / f"w{world}" / _name(*mode) for mode in modes}
    jobs = []
    for (arch, lora, ckpt, chunk, collab, stage, accum), out in runs.items():
        extra = ["--ds_config", f"ds_configs/zero{stage}.json", "--grad_cache_chunk_size", str(chunk),
                 "--gradient_accumulation_steps", str(accum), *(["--collaborative"] if collab else []),
                 *(["--gradient_checkpointing"] if ckpt else []),
                 *(["--lora_r", str(R), "--lora_alpha", str(ALPHA), "--lora_dropout", "0"] if lora else [])]
        jobs.append((_argv(dirs[arch], data, out, *extra), str(out / "grads")))
    run_jobs(world, jobs)
    references = {}
    for (arch, lora, ckpt, chunk, collab, stage, accum), run in runs.items():
        queries = PER_RANK if (collab or world == 1) else PER_RANK * world
        key = (arch, lora, queries, accum)
        if key not in references:
            references[key] = reference_state(
                dirs[arch], data, steps=STEPS, queries_per_micro=queries, accum=accum, group_size=GROUP, lr=1e-3,
                lora={"r": R, "lora_alpha": ALPHA, "target_modules": TARGETS[arch]} if lora else None,
                encoder=_reference_encoder(dirs[arch], arch))
        weights, gradients = references[key]
        for step in range(STEPS):
            recorded = torch.load(run / "grads" / f"step-{step + 1}.pt")["grads"]
            assert set(recorded) == set(gradients[step]), (run.name, sorted(set(recorded) ^ set(gradients[step])))
            global_error, worst_tensor = relative_difference(recorded, gradients[step])
            print(f"{run.name} step {step + 1}: gradients {global_error:.1e} / {worst_tensor:.1e}")
            assert global_error < 1e-5 and worst_tensor < 1e-4, (run.name, step + 1, global_error, worst_tensor)
        if lora:  # the adapters and the head are all that trains
            assert all(".lora_" in name or ".modules_to_save." in name for name in gradients[0]), run.name
        final = load_file(str(run / "model.safetensors"))
        assert set(final) >= {k for k in weights if not k.endswith("position_ids")}, run.name  # plain HF keys
        global_error, _ = relative_difference(_identifiable(final), _identifiable(weights))
        initial = load_file(str(dirs[arch] / "model.safetensors"))
        update_error, _ = update_difference(_identifiable(final), _identifiable(weights), initial)
        print(f"{run.name}: weights {global_error:.1e}, update {update_error:.1e}")
        assert global_error < 1e-5 and update_error < UPDATE_TOLERANCE, (run.name, global_error, update_error)


def _identifiable(state: dict) -> dict:
    """All weights but the classifier bias, whose exact LCE gradient is zero (see tests/test_exactness.py)."""
    return {name: tensor for name, tensor in state.items() if name != "classifier.bias"}
