"""An independent plain-PyTorch reference (LCE or another group loss): one process, full groups, torch AdamW,
no DeepSpeed engine; LoRA through peft directly, with the targets the test names."""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass

import torch
from deepspeed.runtime.lr_schedules import WarmupDecayLR
from transformers import AutoModelForCausalLM, AutoTokenizer

from bigrerank.contract import make_encoder, resolve_contract
from bigrerank.data.grouped import GroupSampler, load_groups
from bigrerank.data.pairs import PairEncoder
from bigrerank.losses import LOSSES
from bigrerank.model import load_config, load_reranker, load_tokenizer
from bigrerank.training.trainer import param_groups


def reference_state(model_dir, train_path, *, lora: dict | None = None, **kwargs) -> tuple[dict, list[dict]]:
    """Weights after `steps` optimizer steps of plain full-group training on the trainer's query order,
    and each step's gradients (before clipping) of the trained parameters.

    lora: peft LoraConfig arguments (r, lora_alpha, target_modules; task_type SEQ_CLS unless given); the adapters
    are drawn right after seeding with `seed`, and the returned weights are the adapters merged into the base.
    Other keywords: those of `_reference_state`."""
    return _reference_state(model_dir, train_path, lora=json.dumps(lora, sort_keys=True) if lora else None, **kwargs)


@functools.cache  # the proofs share their references: computed once per arguments, never modified by a caller
def _reference_state(model_dir, train_path, *, steps: int, queries_per_micro: int, accum: int, group_size: int,
                     lr: float, seed: int = 42, max_len: int = 32, clip: float = 1.0, eps: float = 1e-8,
                     loss: str = "lce", optimizer: str = "adamw", lora: str | None = None, model=None, encoder=None,
                     score=None) -> tuple[dict, list[dict]]:
    """`model`, `encoder` and `score(model, batch) -> (pairs,)` replace the encoder reranker, its pair encoder and
    its logits (decoder references); `lora` is the LoraConfig arguments as JSON (hashable, for the cache)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(seed)
    model = model if model is not None else load_reranker(str(model_dir))
    score = score or (lambda net, batch: net(**batch).logits)
    if lora:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(seed)
        model = get_peft_model(model, LoraConfig(**{"task_type": "SEQ_CLS", "lora_dropout": 0.0, **json.loads(lora)}))
    dataset = load_groups(train_path, len(tokenizer), group_size)
    sampler = GroupSampler(dataset, group_size, seed)
    encoder = encoder or PairEncoder(tokenizer, max_len)
    optimizer = (torch.optim.SGD(param_groups(model, 0.0), lr=lr) if optimizer == "sgd"
                 else torch.optim.AdamW(param_groups(model, 0.0), lr=lr, eps=eps, weight_decay=0.0))
    schedule = WarmupDecayLR(optimizer, warmup_min_lr=0, warmup_max_lr=lr, warmup_num_steps=1,
                             total_num_steps=steps, warmup_type="linear")
    steps_per_epoch = len(dataset) // queries_per_micro // accum
    gradients = []
    for step in range(steps):
        epoch, first = divmod(step * accum, steps_per_epoch * accum)
        order = sampler.epoch_order(epoch)
        for m in range(first, first + accum):
            indices = order[m * queries_per_micro:(m + 1) * queries_per_micro]
            drawn = [sampler.scored_group(i, epoch) for i in indices]
            groups = [(query, passages) for query, passages, _ in drawn]
            teacher = torch.tensor([scores for _, _, scores in drawn]) if loss == "distill" else None
            pairs = []
            for query, passages in groups:
                q_ids, *p_ids = encoder.token_ids([query, *passages]) if isinstance(query, str) else [query, *passages]
                pairs.extend(encoder.encode_ids(q_ids, p) for p in p_ids)
            scores = score(model, encoder.collate(pairs)).view(len(groups), group_size)
            (LOSSES[loss].fn(scores, teacher=teacher) / accum).backward()
        gradients.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    if lora:
        model = model.merge_and_unload()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, gradients


def yes_no_reference(model_dir, max_len: int) -> dict:
    """`model`, `encoder` and `score` keywords of a yes_no reference: the plain `AutoModelForCausalLM` and its
    full-vocabulary logits[:, last, yes] - [..., no] (the reference does not share the answer head it checks)."""
    tokenizer, config = load_tokenizer(str(model_dir)), load_config(str(model_dir))
    contract = resolve_contract(str(model_dir), config, tokenizer, "yes_no")
    yes, no = contract.yes_token_id, contract.no_token_id

    def score(net, batch):
        logits = net(**batch).logits  # (pairs, positions, vocab)
        last = batch["attention_mask"].sum(-1) - 1
        at_last = logits[torch.arange(len(last)), last]
        return at_last[:, yes] - at_last[:, no]

    return {"model": AutoModelForCausalLM.from_pretrained(model_dir), "score": score,
            "encoder": make_encoder(tokenizer, max_len, contract)}


# Tolerances of the fp32 exactness proofs, one set for every proof (encoder, decoder, LoRA, distillation).
#
# A run and the reference add the same terms in other orders (ranks, chunks, ZeRO buckets, batch shapes, and the
# SIMD width of the CPU's kernels), so they differ by fp32 rounding: u = 2^-24 = 6e-8 per operation, grown by the
# number of terms and by cancellation. Measured over the encoder, decoder and LoRA matrices under three kernel sets
# (AVX-512 + AMX, AVX2, no SIMD: ATEN_CPU_CAPABILITY / MKL_ENABLE_INSTRUCTIONS / ONEDNN_MAX_CPU_ISA): gradients
# <= 1.7e-6 global and <= 2.9e-6 in any tensor, zero-gradient tensors <= 1.3e-7 of the whole, weights of the other
# tensors <= 8e-9, weight updates <= 1.3e-5. tests/test_tolerances.py shows each check failing on a dropped
# micro-batch, a wrong shard, a missing pair, one slightly wrong small tensor and a lost step.
GRADIENT_GLOBAL = 1e-5   # ||G - R|| / ||R|| over all trained tensors
GRADIENT_TENSOR = 1e-4   # ||G_t - R_t|| / ||R_t||, each tensor with a gradient
ZERO_GRADIENT = 1e-4     # ||R_t|| below this fraction of ||R||: the exact gradient is zero (below)
ROUNDING = 1e-6          # ||G_t - R_t|| / ||R|| of a zero-gradient tensor: it stays at rounding level
WEIGHTS_GLOBAL = 1e-6    # ||W - W_ref|| / ||W_ref|| after the steps, zero-gradient tensors left out (below)
UPDATE_GLOBAL = 1e-4     # ||dW - dW_ref|| / ||dW_ref||, dW = W - W_initial, the same tensors
# Zero-gradient tensors: a symmetry makes some gradients exactly zero (the classifier bias under LCE's
# shift-invariant softmax, BERT's key biases under the attention softmax); their computed value is rounding noise
# (measured <= 1.2e-7 of the whole, where the smallest real tensor holds 7.6e-3), and their own relative error
# means nothing. Adam then turns that noise into steps of +-lr whose signs no two summation orders share, so their
# weights are left out of the weight checks: they are checked through their gradients, at ROUNDING.
# Weight updates: Adam divides each element by its own running scale, so an element whose gradient nearly cancels
# carries its relative rounding error into its step; the update's error is the elementwise one, not the norm-wise.


@dataclass(frozen=True)
class Difference:
    """How far a {name: tensor} set is from a reference: globally and at its worst tensor."""

    global_error: float
    tensor_error: float              # the worst tensor's ||a_t - b_t|| / ||b_t|| (zero-gradient tensors: / ||b||)
    tensor: str

    def __str__(self) -> str:
        return f"global {self.global_error:.2e}, worst tensor {self.tensor_error:.2e} ({self.tensor})"


def difference(run: dict, reference: dict, initial: dict | None = None) -> Difference:
    """Global: ||a - b|| / ||b|| over the floating tensors of `reference`; per tensor: ||a_t - b_t|| / ||b_t||, or
    / ||b|| for a tensor below ZERO_GRADIENT of the whole. With `initial`: the updates a - initial, b - initial."""
    names = [n for n, t in reference.items() if t.is_floating_point()]
    if initial is not None:
        run = {n: run[n].double() - initial[n].double() for n in names}
        reference = {n: reference[n].double() - initial[n].double() for n in names}
    errors = {n: (run[n].double() - reference[n].double()).norm().item() for n in names}
    norms = {n: reference[n].double().norm().item() for n in names}
    total = math.sqrt(sum(v * v for v in norms.values()))
    relative = {n: errors[n] / (norms[n] if norms[n] >= ZERO_GRADIENT * total else total) for n in names}
    worst = max(names, key=relative.get)
    return Difference(math.sqrt(sum(v * v for v in errors.values())) / total, relative[worst], worst)


def zero_gradient(gradients: list[dict]) -> set[str]:
    """The tensors whose reference gradient is below ZERO_GRADIENT of the whole at every step."""
    def small(step):
        total = math.sqrt(sum(g.double().norm().item() ** 2 for g in step.values()))
        return {n for n, g in step.items() if g.double().norm().item() < ZERO_GRADIENT * total}
    return set.intersection(*map(small, gradients))


def _plain(name: str) -> str:
    """A peft model's parameter name as the exported model's (base_model.model.X, X.modules_to_save.default.Y)."""
    return name.removeprefix("base_model.model.").replace(".modules_to_save.default", "")


def identifiable(state: dict, gradients: list[dict]) -> dict:
    """`state` without the tensors whose exact gradient is zero (named as trained, or as exported)."""
    zero = {_plain(n) for n in zero_gradient(gradients)}
    return {name: tensor for name, tensor in state.items() if _plain(name) not in zero}


def assert_gradients_close(run: dict, reference: dict, context) -> Difference:
    """A step's reduced gradients equal the reference's: the same tensors, GRADIENT_GLOBAL over all of them,
    GRADIENT_TENSOR for each tensor with a gradient and ROUNDING for each zero-gradient one."""
    assert set(run) == set(reference), (context, sorted(set(run) ^ set(reference)))
    found = difference(run, reference)
    zero = zero_gradient([reference])
    off = [n for n in reference if (run[n].double() - reference[n].double()).norm().item() > _bound(n, zero, reference)]
    assert found.global_error < GRADIENT_GLOBAL and not off, (context, str(found), off[:3])
    return found


def _bound(name: str, zero: set[str], reference: dict) -> float:
    """The largest error norm tensor `name` may carry."""
    if name in zero:
        return ROUNDING * math.sqrt(sum(t.double().norm().item() ** 2 for t in reference.values()))
    return GRADIENT_TENSOR * reference[name].double().norm().item()


def assert_weights_close(run: dict, reference: dict, context, gradients: list[dict],
                         initial: dict | None = None) -> Difference:
    """Trained weights equal the reference's within WEIGHTS_GLOBAL, and with `initial` their update within
    UPDATE_GLOBAL; the tensors whose exact gradient is zero (by the reference `gradients`) left out."""
    run, reference = identifiable(run, gradients), identifiable(reference, gradients)
    found = difference(run, reference)
    assert found.global_error < WEIGHTS_GLOBAL, (context, str(found))
    if initial is not None:
        update = difference(run, reference, identifiable(initial, gradients))
        assert update.global_error < UPDATE_GLOBAL, (context, "update", str(update))
    return found
