"""An independent plain-PyTorch reference (LCE or another group loss): one process, full groups, torch AdamW,
no DeepSpeed engine; LoRA through peft directly, with the targets the test names."""
from __future__ import annotations

import functools
import json

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


def relative_difference(run: dict, reference: dict) -> tuple[float, float]:
    """(global, worst tensor) relative difference of two {name: tensor} sets.

    Global: ||a - b|| / ||b|| over all tensors; per tensor: ||a_t - b_t|| / max(||b_t||, 1e-3 ||b||), so a
    tensor whose exact gradient is zero (the classifier bias under the shift-invariant softmax of LCE)
    is measured against the global scale instead of its own rounding noise.
    """
    names = [n for n, t in reference.items() if t.is_floating_point()]
    total = sum((reference[n].double() ** 2).sum() for n in names).sqrt().item()
    error = sum(((run[n].double() - reference[n].double()) ** 2).sum() for n in names).sqrt().item()
    worst = max((run[n].double() - reference[n].double()).norm().item()
                / max(reference[n].double().norm().item(), 1e-3 * total) for n in names)
    return error / total, worst


def update_difference(state: dict, reference: dict, initial: dict) -> tuple[float, float]:
    """How far a run's weight update (after - initial) is from the reference's update.

    Returns (global, per_tensor): ||dA - dB|| / ||dB|| over all weights, and the worst tensor's
    ||dA_t - dB_t|| / max(||dB_t||, 1e-3 ||dB||) (tensors whose exact gradient is zero, like the
    classifier bias under a shift-invariant softmax loss, are measured against the global scale).
    """
    names = [n for n, t in reference.items() if t.is_floating_point()]
    d_ref = {n: reference[n].double() - initial[n].double() for n in names}
    d_run = {n: state[n].double() - initial[n].double() for n in names}
    total = sum((d_ref[n] ** 2).sum() for n in names).sqrt().item()
    error = sum(((d_run[n] - d_ref[n]) ** 2).sum() for n in names).sqrt().item()
    worst = max((d_run[n] - d_ref[n]).norm().item() / max(d_ref[n].norm().item(), 1e-3 * total) for n in names)
    return error / total, worst
