"""Activation memory of the reranker's forward and backward, from what autograd keeps for each layer.

Bytes per token per layer, b = bytes of the compute dtype, h hidden, f intermediate, a heads, g kv heads,
d head_dim, L tokens of the pair (read off the saved tensors of BERT and Llama/Qwen blocks in PyTorch; the
test `test_activations_match_saved_tensors` counts them on real forwards):
- BERT family (LayerNorm, GELU MLP): inputs of the Q/K/V, output and both MLP projections, q, k, v, the
  context, both LayerNorm inputs: b(4h + 4ad + 2f) + 4b (LayerNorm statistics), plus one dropout mask per
  hidden dropout site, 2bh, when hidden dropout is on.
- decoder family (RMSNorm, gated MLP, RoPE): per RMSNorm its float32 input, normalised and output, (4 + 2b)h,
  twice; gate, up, their activation and product, 4bf; q and the context, 2bad, with k and v at their own
  2bgd under SDPA (native GQA) but repeated to 2bad under eager attention; float32 norm statistics 8 B;
  Qwen3's q/k norms, (4 + b)(ad + gd).
- attention, per token a*L entries: eager keeps the softmax (BERT: b, plus 2b for the dropout mask and the
  dropped probabilities; decoders: a float32 softmax plus its cast, 4 + b, or 4 in float32); SDPA keeps a
  float32 log-sum-exp per head, 4a, except that with attention dropout on a CPU it falls back to the math
  kernel, which keeps 12 B per entry and float32 copies of q, k and v, whatever the dtype.
- LoRA (every projection adapted, as by default): each adapter keeps lora_A's r-wide output (br) and, when
  --lora_dropout > 0, its dropped input and mask, 1.5b x its input width on average (counted on tiny Llama
  blocks: adapters sharing an input share a mask); RMSNorm weights are frozen, so their normalised input
  (bh each) is not kept.
Outside the layers: embeddings and final norm, 3bh per token.

A backward of one layer holds gradients as large as that layer's saved tensors, so one more layer's worth
is live at the peak; gradient checkpointing keeps only each layer's input (bh) plus the one layer it is
recomputing.
"""
from __future__ import annotations

from .. import heads
from .shape import ModelShape


def layer_bytes_per_token(shape: ModelShape, tokens: int, dtype_bytes: int, on_gpu: bool) -> float:
    """Bytes autograd keeps per token for one layer, for pairs of `tokens` tokens."""
    b, h, f = dtype_bytes, shape.hidden, shape.intermediate
    q_width, kv_width = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    if shape.rms_norm:
        kept = 2 * (4 + 2 * b) * h + 4 * b * f + 8
        kept += 2 * b * (q_width + (q_width if shape.attention == "eager" else kv_width))
        if shape.qk_norm:
            kept += (4 + b) * (q_width + kv_width)
        softmax = 4 + (b if b != 4 else 0)
    else:
        kept = b * (4 * h + 4 * q_width + 2 * f) + 4 * b
        kept += 2 * b * h if shape.hidden_dropout > 0 else 0
        softmax = b + (2 * b if shape.attention_dropout > 0 else 0)
    if shape.lora_rank:
        kept += b * shape.lora_rank * shape.lora_adapters_per_layer
        kept += 1.5 * b * shape.lora_inputs_per_layer if shape.lora_dropout > 0 else 0
        kept -= 2 * b * h if shape.rms_norm else 0  # frozen norm weights: their normalised input is not kept
    if shape.attention == "eager":
        return kept + shape.heads * tokens * softmax
    if shape.attention_dropout > 0 and not on_gpu:  # the math kernel, computing in float32
        return kept + shape.heads * tokens * 12 + 3 * q_width * (4 - b)
    return kept + 4 * shape.heads


def pair_bytes(shape: ModelShape, tokens: int, dtype_bytes: int, on_gpu: bool, checkpointing: bool) -> float:
    """Activation bytes one pair of `tokens` tokens holds at the backward's peak."""
    layer = layer_bytes_per_token(shape, tokens, dtype_bytes, on_gpu)
    outside = 3 * dtype_bytes * shape.hidden
    if checkpointing:
        kept = shape.layers * dtype_bytes * shape.hidden + layer  # layer inputs + the one being recomputed
    else:
        kept = shape.layers * layer
    return tokens * (kept + outside + layer)  # + the backward's gradients of one layer


def score_bytes(shape: ModelShape, pairs_in_micro_batch: int, alive_pairs: int) -> float:
    """Scores (float32) and their gradients for the micro-batch, and the head's outputs of the pairs alive:
    one logit (classifier), or the yes/no rows' two (yes_no: never the full vocabulary)."""
    outputs = heads.get(shape.score_head).outputs_per_pair
    return 4 * 2 * pairs_in_micro_batch + 4 * outputs * alive_pairs
