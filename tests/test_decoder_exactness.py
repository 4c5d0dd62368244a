"""Decoder rerankers train exactly like an independent plain-PyTorch reference, and export as they were trained.

The exactness method of test_exactness.py, for tiny Qwen3 (tied embeddings) and Llama (untied) decoders with both
score heads: each step's reduced gradients and the final weights against one process, full groups, torch AdamW,
scoring with the architecture's own full forward — `AutoModelForCausalLM` logits[:, last, yes] - [..., no] for
yes_no (full-vocabulary logits: the reference does not share the answer head it checks), the model's own
`AutoModelForSequenceClassification` for classifier. A covering subset of {plain, cached K=4} x {local,
collaborative} x ZeRO {0, 2, 3} x {qwen3, llama} x {classifier, yes_no}: every value of every factor on 2 ranks
under ZeRO-3, each factor also under ZeRO 0 and 2, and one rank. Tolerances: those of every fp32 proof
(tests/reference.py).
"""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from bigrerank.contract import make_encoder, resolve_contract
from bigrerank.model import load_config, load_tokenizer
from tests.dist_harness import run_jobs
from tests.helpers import final_weights, initial_state, train_argv
from tests.reference import (assert_gradients_close, assert_weights_close, difference, reference_state,
                             yes_no_reference)
from tests.tiny import with_teacher_scores, write_groups
from tests.tiny_decoder import tiny_decoder_dir

pytestmark = pytest.mark.slow

STEPS, GROUP, PER_RANK, MAX_LEN = 3, 5, 2, 192
# (arch, head, chunk, collaborative, stage, world)
MODES = [("qwen3", "yes_no", 0, False, 3, 2), ("qwen3", "classifier", 4, True, 3, 2),
         ("llama", "yes_no", 4, True, 3, 2), ("llama", "classifier", 0, False, 3, 2),
         ("qwen3", "yes_no", 4, False, 0, 2), ("llama", "classifier", 4, True, 2, 2),
         ("llama", "yes_no", 0, True, 2, 2), ("qwen3", "classifier", 0, True, 0, 2),
         ("qwen3", "yes_no", 4, False, 2, 1), ("llama", "classifier", 0, False, 0, 1)]


def _name(arch, head, chunk, collab, stage, world):
    return f"{arch}-{head}-zero{stage}-chunk{chunk}-{'collab' if collab else 'local'}-w{world}"


def _classifier_dir(causal_dir, out):
    """The decoder as a 1-logit sequence classifier with its (new, seeded) score head saved, so the trainer and the
    reference start from the same weights."""
    tokenizer = load_tokenizer(str(causal_dir))
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(causal_dir, num_labels=1,
                                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("decoder_exact")
    models = {}
    for arch, tie in (("qwen3", True), ("llama", False)):
        causal = tiny_decoder_dir(tmp / arch, arch, init_range=0.2, tie=tie)
        models[(arch, "yes_no")] = causal
        models[(arch, "classifier")] = _classifier_dir(causal, tmp / f"{arch}-classifier")
    return tmp, models, write_groups(tmp / "groups.jsonl", queries=16, negatives=6)


def _argv(model, data, out, head, chunk, collab, stage):
    return train_argv(model, data, out, f"zero{stage}", train_group_size=GROUP, max_len=MAX_LEN, learning_rate="1e-3",
                      max_steps=STEPS, per_device_train_batch_size=PER_RANK, grad_cache_chunk_size=chunk,
                      score_head=head, collaborative=collab)


def _reference(model_dir, head, data, queries):
    if head == "yes_no":
        parts = yes_no_reference(model_dir, MAX_LEN)
    else:
        tokenizer = load_tokenizer(str(model_dir))
        contract = resolve_contract(str(model_dir), load_config(str(model_dir)), tokenizer, head)
        parts = {"model": AutoModelForSequenceClassification.from_pretrained(model_dir),
                 "encoder": make_encoder(tokenizer, MAX_LEN, contract)}
    return reference_state(model_dir, data, steps=STEPS, queries_per_micro=queries, accum=1, group_size=GROUP,
                           lr=1e-3, max_len=MAX_LEN, **parts)


@pytest.mark.parametrize("world", [1, 2])
def test_decoder_modes_match_the_plain_reference(setup, world):
    tmp, models, data = setup
    runs = {mode: tmp / "runs" / _name(*mode) for mode in MODES if mode[-1] == world}
    run_jobs(world, [(_argv(models[(arch, head)], data, out, head, chunk, collab, stage), str(out / "grads"))
                     for (arch, head, chunk, collab, stage, _), out in runs.items()], timeout=900)
    references, worst = {}, (0.0, 0.0)
    for (arch, head, chunk, collab, stage, world), run in runs.items():
        queries = PER_RANK if (collab or world == 1) else PER_RANK * world
        key = (arch, head, queries)
        if key not in references:
            references[key] = _reference(models[(arch, head)], head, data, queries)
        weights, gradients = references[key]
        for step in range(STEPS):
            recorded = torch.load(run / "grads" / f"step-{step + 1}.pt")["grads"]
            found = assert_gradients_close(recorded, gradients[step], (run.name, step + 1))
            worst = (max(worst[0], found.global_error), max(worst[1], found.tensor_error))
        final, reference = final_weights(run, head, weights, arch == "qwen3")
        _, initial = final_weights(run, head, initial_state(models[(arch, head)]), arch == "qwen3")
        found = assert_weights_close(final, reference, run.name, gradients, initial)
        moved = difference(initial, reference).global_error
        print(f"{run.name}: weights {found} (training moved them {moved:.1e})")
        assert moved > 1e-3, (run.name, moved)
    print(f"{world} rank(s): gradients within {worst[0]:.1e} (global), {worst[1]:.1e} (worst tensor)")



def test_token_id_and_flagembedding_data_train_like_text(setup):
    """The data layouts training reads — the Reranker's with token ids, FlagEmbedding's with text — give a decoder
    prompt the gradients of the Reranker-layout text reference (1 rank, ZeRO-0, yes_no)."""
    tmp, models, data = setup
    model = models[("qwen3", "yes_no")]
    as_ids = write_groups(tmp / "ids.jsonl", queries=16, negatives=6, as_ids_of=load_tokenizer(str(model)))
    flag = with_teacher_scores(write_groups(tmp / "flag.jsonl", queries=16, negatives=6), flag=True)
    runs = {layout: tmp / "layouts" / layout for layout in ("ids", "flag")}
    run_jobs(1, [(_argv(model, path, runs[layout], "yes_no", 0, False, 0), str(runs[layout] / "grads"))
                 for layout, path in (("ids", as_ids), ("flag", flag))])
    _, gradients = _reference(model, "yes_no", data, PER_RANK)
    for layout, run in runs.items():
        for step in range(STEPS):
            recorded = torch.load(run / "grads" / f"step-{step + 1}.pt")["grads"]
            assert_gradients_close(recorded, gradients[step], (layout, step + 1))


def test_bf16_decoders_train_near_the_fp32_reference(setup):
    """bf16 (CPU) on ZeRO-3 (yes_no, Llama, cached) and ZeRO-2 (classifier, Qwen3), one rank:
    every step finite and the final weights within the half-precision tolerance of the encoder test (1e-2)."""
    import json

    tmp, models, data = setup
    modes = [("llama", "yes_no", 4, 3), ("qwen3", "classifier", 0, 2)]  # (arch, head, chunk, stage)
    runs = {mode: tmp / "bf16" / f"{mode[0]}-{mode[1]}" for mode in modes}
    run_jobs(1, [_argv(models[(arch, head)], data, out, head, chunk, False, stage) + ["--bf16"]
                 for (arch, head, chunk, stage), out in runs.items()])
    for (arch, head, _, _), run in runs.items():
        rows = [json.loads(line) for line in open(run / "train_log.jsonl")]
        assert len(rows) == STEPS and all(r["skipped_steps"] == 0 for r in rows), rows
        weights, _ = _reference(models[(arch, head)], head, data, PER_RANK)
        final, reference = final_weights(run, head, weights, arch == "qwen3")
        error = difference(final, reference).global_error
        print(f"bf16 {run.name}: weights vs fp32 reference {error:.1e}")
        assert error < 1e-2, (run.name, error)
