"""LoRA (peft) and gradient checkpointing: exact against an independent plain PyTorch + peft reference, on tiny
BERT, Qwen3 and Llama rerankers (decoders with both score heads), under every ZeRO stage, plain and cached, local and
collaborative, 1 and 2 ranks.

The covering matrix below puts every value of every factor ({full, LoRA} x {checkpointing off, on} x {plain,
cached K=4} x {local, collaborative} x {BERT, Qwen3, Llama}) on 2 ranks under ZeRO-3, and ZeRO 0 and 2 and one
rank beside it; accumulation 2 once. The yes_no head with LoRA (only the adapters train; the answer rows of the LM
head stay frozen) has {plain, cached} x {local, collaborative} under ZeRO-3 on 2 ranks, tied (Qwen3) and untied
(Llama) embeddings, and ZeRO 0 and 2; its reference is peft's CAUSAL_LM model on the full-vocabulary causal LM.
Tolerances: those of every fp32 proof (tests/reference.py). The reference never checkpoints: a checkpointed run equals a plain backward.
"""
from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from bigrerank.data.pairs import PairEncoder
from tests.dist_harness import run_jobs
from tests.helpers import final_weights, initial_state, train_argv
from tests.reference import assert_gradients_close, assert_weights_close, reference_state, yes_no_reference
from tests.tiny import tiny_model_dir, write_groups
from tests.tiny_decoder import tiny_decoder_dir
from tests.tiny_decoder_reranker import tiny_decoder_reranker_dir

pytestmark = pytest.mark.slow

STEPS, GROUP, PER_RANK, R, ALPHA = 3, 5, 2, 4, 8.0
MAX_LEN = {"classifier": 32, "yes_no": 192}  # the yes_no prompt (qwen3-reranker) is ~100 tokens by itself
# the projections the trainer must find by itself, spelled independently (peft matches name suffixes)
TARGETS = {"bert": ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"],
           "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
TARGETS["llama"] = TARGETS["qwen3"]
TASK = {"classifier": "SEQ_CLS", "yes_no": "CAUSAL_LM"}  # the reference's peft model: head trained, or none


class Mode(NamedTuple):
    arch: str
    lora: bool
    ckpt: bool
    chunk: int
    collab: bool
    stage: int
    accum: int
    head: str = "classifier"

    @property
    def name(self) -> str:
        return (f"{self.arch}-{self.head}-{'lora' if self.lora else 'full'}-{'ckpt' if self.ckpt else 'nockpt'}-"
                f"chunk{self.chunk}-{'collab' if self.collab else 'local'}-zero{self.stage}-accum{self.accum}")


TWO_RANKS = [Mode(*m) for m in [
    ("qwen3", True, True, 4, True, 3, 1), ("qwen3", False, True, 0, False, 3, 1),
    ("llama", True, False, 0, True, 3, 1), ("llama", False, True, 4, False, 3, 1),
    ("bert", True, True, 4, False, 3, 1), ("bert", True, False, 0, True, 3, 1),
    ("qwen3", True, True, 4, True, 3, 2), ("qwen3", True, True, 4, True, 0, 1),
    ("llama", True, True, 0, False, 2, 1), ("bert", True, True, 4, True, 2, 1),
    # yes_no + LoRA: {plain, cached} x {local, collaborative} under ZeRO-3, tied (Qwen3) and untied (Llama), ZeRO 0, 2
    ("qwen3", True, True, 0, False, 3, 1, "yes_no"), ("qwen3", True, False, 4, True, 3, 1, "yes_no"),
    ("llama", True, True, 4, False, 3, 1, "yes_no"), ("llama", True, False, 0, True, 3, 1, "yes_no"),
    ("qwen3", True, True, 4, True, 2, 1, "yes_no"), ("llama", True, False, 4, False, 0, 1, "yes_no")]]
ONE_RANK = [Mode(*m) for m in [
    ("qwen3", True, True, 4, False, 0, 1), ("llama", False, True, 0, False, 2, 1),
    ("bert", True, False, 4, False, 3, 1)]]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{(arch, head): model dir}: classifiers saved with their score head; the yes_no models are the causal LMs
    (Qwen3 with tied embeddings, Llama untied)."""
    tmp = tmp_path_factory.mktemp("lora")
    dirs = {("bert", "classifier"): tiny_model_dir(tmp / "bert", init_range=0.2)}
    for arch in ("qwen3", "llama"):
        dirs[(arch, "classifier")] = tiny_decoder_reranker_dir(tmp / arch, arch)
    dirs[("qwen3", "yes_no")] = tmp / "qwen3-causal"  # the classifier's base, saved beside it
    dirs[("llama", "yes_no")] = tiny_decoder_dir(tmp / "llama-untied", "llama", init_range=0.2, tie=False)
    return tmp, dirs, write_groups(tmp / "groups.jsonl", queries=16, negatives=6)


def _job(mode: Mode, model, data, out):
    lora = {"lora_r": R, "lora_alpha": ALPHA, "lora_dropout": 0} if mode.lora else {}
    argv = train_argv(model, data, out, f"zero{mode.stage}", train_group_size=GROUP, max_len=MAX_LEN[mode.head],
                      learning_rate="1e-3", max_steps=STEPS, per_device_train_batch_size=PER_RANK,
                      grad_cache_chunk_size=mode.chunk, gradient_accumulation_steps=mode.accum, score_head=mode.head,
                      collaborative=mode.collab, gradient_checkpointing=mode.ckpt, **lora)
    return argv, str(out / "grads")


def _reference(mode: Mode, model_dir, data, queries):
    lora = {"r": R, "lora_alpha": ALPHA, "target_modules": TARGETS[mode.arch], "task_type": TASK[mode.head]}
    if mode.head == "yes_no":
        parts = yes_no_reference(model_dir, MAX_LEN["yes_no"])
    else:  # the pair template of the classifier contract: a decoder reads its last token, so an EOS ends every pair
        parts = {"encoder": PairEncoder(AutoTokenizer.from_pretrained(model_dir), 32, append_eos=mode.arch != "bert")}
    return reference_state(model_dir, data, steps=STEPS, queries_per_micro=queries, accum=mode.accum,
                           group_size=GROUP, lr=1e-3, max_len=MAX_LEN[mode.head], lora=lora if mode.lora else None,
                           **parts)


def _exported(run, mode: Mode, weights: dict, model_dir) -> tuple[dict, dict, dict]:
    """(export, reference, initial) weights on the export's keys; a yes_no export is the classifier whose score row
    is lm_head[yes] - lm_head[no] (tests/test_decoder_exactness.py)."""
    if mode.head == "yes_no":
        tied = mode.arch == "qwen3"
        final, reference = final_weights(run, "yes_no", weights, tied)
        return final, reference, final_weights(run, "yes_no", initial_state(model_dir), tied)[1]
    return load_file(str(run / "model.safetensors")), weights, load_file(str(model_dir / "model.safetensors"))


@pytest.mark.parametrize("world", [1, 2])
def test_lora_and_checkpointing_match_the_plain_peft_reference(models, world):
    tmp, dirs, data = models
    modes = TWO_RANKS if world == 2 else ONE_RANK
    runs = {mode: tmp / f"w{world}" / mode.name for mode in modes}
    run_jobs(world, [_job(mode, dirs[(mode.arch, mode.head)], data, out) for mode, out in runs.items()])
    references = {}
    for mode, run in runs.items():
        model_dir = dirs[(mode.arch, mode.head)]
        queries = PER_RANK if (mode.collab or world == 1) else PER_RANK * world
        key = (mode.arch, mode.head, mode.lora, queries, mode.accum)
        if key not in references:
            references[key] = _reference(mode, model_dir, data, queries)
        weights, gradients = references[key]
        for step in range(STEPS):
            recorded = torch.load(run / "grads" / f"step-{step + 1}.pt")["grads"]
            print(f"{run.name} step {step + 1}: gradients {assert_gradients_close(recorded, gradients[step], (run.name, step + 1))}")
        if mode.lora:  # the adapters and a classifier's head are all that trains (yes_no: the adapters alone)
            trains_head = mode.head == "classifier"
            assert all(".lora_" in name or (trains_head and ".modules_to_save." in name) for name in gradients[0])
            assert trains_head == any(".modules_to_save." in name for name in gradients[0]), run.name
        final, weights, initial = _exported(run, mode, weights, model_dir)
        assert set(final) >= {k for k in weights if not k.endswith("position_ids")}, run.name  # plain HF keys
        found = assert_weights_close(final, weights, run.name, gradients, initial)
        print(f"{run.name}: weights {found}")

