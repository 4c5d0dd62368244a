"""Scoring that computes only what a cross-encoder's score reads: the last layer at the first token.

A BERT-style sequence classifier scores a pair from one vector, the last layer's output at the first token
([CLS] or <s>). Every earlier layer is needed at all positions (its outputs are the next layer's keys and
values), but in the last layer only position 0's query, attention output and feed-forward are used. Running
that layer for the first token alone skips all of its work but the key and value projections: 5/6 of one
layer in L (~14% of MiniLM-L6's multiply-adds, ~7% of BERT-base's), with the same scores up to float rounding.

Two more changes that keep the arithmetic: each layer's query, key and value projections run as one matmul
(the three weights become views of one tensor, so no memory is added), and with `unfused_bias` a linear layer
is written as matmul + bias, so a compiled graph adds the bias inside the next elementwise kernel (on CPU,
inductor otherwise keeps addmm, which first copies the bias into the whole output).

Covers BERT, RoBERTa, XLM-RoBERTa, CamemBERT and ELECTRA sequence classifiers with absolute positions, in
eval mode; `unsupported(model)` names what rules a model out, and such a model is scored by its own forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# model type -> whether the head reads the base model's pooler (BERT) or the first token itself (the others)
POOLED_HEAD = {"bert": True, "roberta": False, "xlm-roberta": False, "camembert": False, "electra": False}
_LAYER_PARTS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm")


def unsupported(model) -> str | None:
    """Why `model` cannot be scored by `FirstTokenScorer`, or None when it can."""
    config = model.config
    if config.model_type not in POOLED_HEAD:
        return f"model type '{config.model_type}' (supported: {', '.join(POOLED_HEAD)})"
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return f"position_embedding_type '{config.position_embedding_type}'"
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return "a decoder / cross-attention configuration"
    if getattr(config, "num_labels", 1) != 1:
        return f"num_labels {config.num_labels}"
    base = model.base_model
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not hasattr(base, "embeddings") or not layers or not hasattr(model, "classifier"):
        return "an unrecognised module layout"
    if POOLED_HEAD[config.model_type] and getattr(base, "pooler", None) is None:
        return "a BERT model without its pooler"
    for part in _LAYER_PARTS:
        if not all(_has(layer, part) for layer in layers):
            return f"layers without '{part}'"
    return None


def _has(module, dotted: str) -> bool:
    for name in dotted.split("."):
        module = getattr(module, name, None)
        if module is None:
            return False
    return True


class FirstTokenScorer:
    """Calls as `scorer(input_ids, attention_mask=None, token_type_ids=None)` -> logits of shape (batch, 1).

    Shares the model's parameters (build it after the model has its final device and dtype). A None mask
    means no padding in the batch.
    """

    def __init__(self, model, unfused_bias: bool = False):
        reason = unsupported(model)
        if reason is not None:
            raise ValueError(f"first-token scoring does not cover {reason}")
        if model.training:
            raise ValueError("first-token scoring leaves dropout out: put the model in eval mode first")
        self.model, self.base = model, model.base_model
        self.layers = list(self.base.encoder.layer)
        self.pooled = POOLED_HEAD[model.config.model_type]
        self.hidden = model.config.hidden_size
        self.heads = model.config.num_attention_heads
        self.unfused_bias = unfused_bias
        self.qkv = [_fuse_projections(layer.attention.self) for layer in self.layers]

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        hidden = self.base.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        if getattr(self.base, "embeddings_project", None) is not None:  # ELECTRA with a smaller embedding size
            hidden = self.base.embeddings_project(hidden)
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            hidden = self._layer(layer, self.qkv[i], hidden, mask, first_token_only=i == last)
        if self.pooled:
            return self.model.classifier(self.base.pooler(hidden))
        return self.model.classifier(hidden)  # these heads read hidden[:, 0]

    def check_weights(self) -> None:
        """Raise if the model's weights were moved or replaced since (`.to()`, `.half()`, a new state dict)."""
        if self.layers[0].attention.self.query.weight.data_ptr() != self.qkv[0][0].data_ptr():
            raise RuntimeError("the model's weights changed after first-token scoring was set up (moved to another "
                               "device or dtype, or replaced): build the RerankerForInference again")

    def _layer(self, layer, qkv, hidden, mask, first_token_only: bool):
        query, key, value = self._linear(hidden, *qkv).split(self.hidden, dim=-1)
        if first_token_only:
            query, hidden = query[:, :1], hidden[:, :1]
        attended = F.scaled_dot_product_attention(self._split_heads(query), self._split_heads(key),
                                                  self._split_heads(value), attn_mask=mask)
        attended = attended.transpose(1, 2).reshape(hidden.shape)
        out = layer.attention.output
        hidden = out.LayerNorm(self._linear(attended, out.dense.weight, out.dense.bias) + hidden)
        inner = layer.intermediate
        expanded = inner.intermediate_act_fn(self._linear(hidden, inner.dense.weight, inner.dense.bias))
        out = layer.output
        return out.LayerNorm(self._linear(expanded, out.dense.weight, out.dense.bias) + hidden)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, tokens, hidden) -> (batch, heads, tokens, head size)."""
        return x.view(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

    def _linear(self, x, weight, bias):
        if self.unfused_bias:
            return torch.matmul(x, weight.t()) + bias
        return F.linear(x, weight, bias)


def _fuse_projections(attention) -> tuple[torch.Tensor, torch.Tensor]:
    """One (3 x hidden, hidden) weight and its bias for query/key/value; the three Linear layers keep working,
    their parameters now being views into it."""
    projections = (attention.query, attention.key, attention.value)
    with torch.no_grad():
        weight = torch.cat([p.weight for p in projections])
        bias = torch.cat([p.bias for p in projections])
    rows = projections[0].weight.shape[0]
    for i, projection in enumerate(projections):
        projection.weight.data = weight[i * rows:(i + 1) * rows]
        projection.bias.data = bias[i * rows:(i + 1) * rows]
    return weight, bias
