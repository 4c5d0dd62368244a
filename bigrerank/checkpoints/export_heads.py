"""A `yes_no` reranker as a plain sequence classifier of the same architecture.

Its score, logit(yes) - logit(no) at the last prompt position, is one linear map of the final hidden state
there: (lm_head[yes] - lm_head[no]) . h. A `*ForSequenceClassification` model with one label and that row as its
`score` weight reads the same hidden state (its last non-padding token), so `transformers`, sentence-transformers'
CrossEncoder and TEI/vLLM-style servers score the export as it was trained, without an LM head.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from ..scoring import ScoringContract


def _input_embedding_key(model) -> str:
    embeddings = model.get_input_embeddings()
    return next(f"{name}.weight" for name, module in model.named_modules() if module is embeddings)


def yes_no_to_classifier(state_dict: dict[str, torch.Tensor], config, contract: ScoringContract):
    """(state dict, config, contract) of the sequence-classifier form of a causal-LM `yes_no` reranker."""
    if getattr(config, "final_logit_softcapping", None):
        raise ValueError(f"'{config.model_type}' caps its logits (final_logit_softcapping): a linear score head "
                         "cannot reproduce them; export with --keep_causal_lm")
    with torch.device("meta"):
        causal = AutoModelForCausalLM.from_config(config)
    weight = state_dict.get("lm_head.weight")
    if weight is None:  # tied embeddings: the LM head is the input embedding
        weight = state_dict[_input_embedding_key(causal)]
    rows = weight[contract.answer_rows()].float()
    score = rows[0] - rows[1] if len(rows) == 2 else rows[0]
    config = type(config).from_dict(config.to_dict())
    config.num_labels = 1
    config.pad_token_id = contract.pad_token_id
    with torch.device("meta"):
        classifier = AutoModelForSequenceClassification.from_config(config)
    config.architectures = [type(classifier).__name__]
    expected = set(classifier.state_dict())
    converted = {name: tensor for name, tensor in state_dict.items() if name in expected}
    converted["score.weight"] = score.unsqueeze(0)
    if "score.bias" in expected:
        converted["score.bias"] = torch.zeros(1)
    return converted, config, replace(contract, score_head="classifier", append_eos=False)
