"""The benchmarks' model-FLOPs count: non-embedding parameters and attention's sequence-length term."""
from __future__ import annotations

import importlib.util
import sys

from transformers import BertForSequenceClassification

from tests.helpers import ROOT
from tests.tiny import tiny_config

_spec = importlib.util.spec_from_file_location("bench_common", ROOT / "bench/common.py")
common = sys.modules["bench_common"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def test_model_shape_leaves_out_the_embedding_tables():
    model = BertForSequenceClassification(tiny_config(vocab_size=100))  # hidden 32, 2 layers, intermediate 64
    # per layer: q, k, v, attention output (4 x (32*32 + 32)), intermediate (32*64 + 64), output (64*32 + 32),
    # two LayerNorms (2 x 64); then the embeddings' LayerNorm (64), pooler (32*32 + 32) and classifier (32 + 1)
    per_layer = 4 * (32 * 32 + 32) + (32 * 64 + 64) + (64 * 32 + 32) + 2 * 64
    expected = 2 * per_layer + 64 + (32 * 32 + 32) + 33
    shape = common.model_shape(model)
    assert shape == common.ModelShape(expected, layers=2, hidden=32)
    embeddings = (100 + 128 + 2) * 32  # word, position and token-type tables
    assert sum(p.numel() for p in model.parameters()) == expected + embeddings


def test_model_flops_are_6n_plus_attention_per_token_in_training_and_a_third_of_it_forward():
    shape = common.ModelShape(1000, layers=2, hidden=32)
    assert common.model_flops(shape, tokens=10, seq_len=5, training=False) == (2 * 1000 + 4 * 2 * 32 * 5) * 10
    assert common.model_flops(shape, tokens=10, seq_len=5) == (6 * 1000 + 12 * 2 * 32 * 5) * 10
    assert common.model_flops(shape, tokens=10, seq_len=50) > common.model_flops(shape, tokens=10, seq_len=5)
