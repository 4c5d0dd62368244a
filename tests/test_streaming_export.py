"""Consolidation streams: a deep, narrow decoder (fp32 size many times its largest tensor) trained one ZeRO-3 step
exports with memory bounded by a shard, not the model; sharded exports carry transformers' index and score like a
single-file one; --export_dtype chooses the written dtype; the LoRA merge equals peft's."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from bigrerank import cli, lora
from bigrerank.checkpoints import consolidate as consolidate_module
from bigrerank.checkpoints.streaming import SAFE_INDEX, Lazy, checkpoint_weights, merged_lora
from bigrerank.contract import make_encoder, resolve_contract
from bigrerank.model import load_config, load_tokenizer
from tests.dist_harness import run_jobs

from tests.helpers import train_argv
from tests.tiny import tiny_model_dir, write_groups
from tests.tiny_decoder import PASSAGES, QUERIES, tiny_decoder_config, tiny_decoder_tokenizer

MAX_LEN = 160
LAYERS, HIDDEN, INTERMEDIATE = 32, 192, 768


def deep_decoder_dir(directory):
    """A Qwen3 causal LM of 32 narrow layers: ~70 MB in fp32, its largest tensor under 0.6 MB."""
    tokenizer = tiny_decoder_tokenizer()
    config = tiny_decoder_config("qwen3", len(tokenizer), tokenizer.pad_token_id, init_range=0.2)
    config.update(dict(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS, head_dim=48,
                       layer_types=["full_attention"] * LAYERS, eos_token_id=tokenizer.eos_token_id))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{"model", "full", "lora"}: the base, and its one-step ZeRO-3 runs (full fine-tune and LoRA) on one rank."""
    tmp = tmp_path_factory.mktemp("streaming")
    model = deep_decoder_dir(tmp / "deep")
    data = write_groups(tmp / "groups.jsonl", queries=2, negatives=2)
    argv = ["--model_name_or_path", str(model), "--train_path", str(data), "--train_group_size", "2",
            "--max_len", str(MAX_LEN), "--learning_rate", "1e-2", "--max_steps", "1", "--save_steps", "1000",
            "--per_device_train_batch_size", "1", "--ds_config", "ds_configs/zero3.json",
            "--template", "qwen3-reranker"]
    runs = {"full": [], "lora": ["--lora_r", "4", "--lora_alpha", "8"]}
    run_jobs(1, [[*argv, "--output_dir", str(tmp / name), *extra] for name, extra in runs.items()])
    return {"model": model, **{name: tmp / name for name in runs}, "tmp": tmp}


def _fp32_bytes(model_dir) -> int:
    return sum(t.numel() * 4 for t in load_file(str(model_dir / "model.safetensors")).values())


CONSOLIDATE_ON_GO = textwrap.dedent("""
    import sys
    import torch, deepspeed.utils.zero_to_fp32, safetensors.torch, transformers
    from bigrerank.checkpoints.consolidate import consolidate

    print("ready", flush=True)
    sys.stdin.readline()
    consolidate(sys.argv[1], sys.argv[2], max_shard_size=sys.argv[3])
""")


def _anonymous_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("RssAnon:"))


def _peak_added(checkpoints, out, max_shard_size: str) -> int:
    """Peak anonymous memory (RssAnon: the heap, not the page cache of the memory-mapped checkpoint) that a
    consolidation adds over its process's baseline (everything imported), sampled from outside the process."""
    child = subprocess.Popen([sys.executable, "-c", CONSOLIDATE_ON_GO, str(checkpoints), str(out), max_shard_size],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    while child.stdout.readline().strip() != "ready":  # past DeepSpeed's import-time notices
        assert child.poll() is None, "the consolidation process died while importing"
    baseline = peak = _anonymous_rss(child.pid)
    child.stdin.write("go\n")
    child.stdin.flush()
    while child.poll() is None:
        try:
            peak = max(peak, _anonymous_rss(child.pid))
        except (FileNotFoundError, StopIteration, ProcessLookupError):
            break
        time.sleep(0.0005)
    assert child.wait() == 0
    return peak - baseline


@pytest.mark.slow
def test_consolidation_memory_is_bounded_by_a_shard_not_the_model(trained):
    full = trained["full"]
    fp32 = _fp32_bytes(full)
    largest = max(t.numel() * 4 for t in load_file(str(full / "model.safetensors")).values())
    assert fp32 >= 10 * largest and fp32 > 50e6
    added = _peak_added(full / "checkpoints", trained["tmp"] / "probe", "8MB")
    print(f"consolidate of a {fp32 / 1e6:.1f} MB fp32 model in 8 MB shards: peak +{added / 1e6:.1f} MB anonymous")
    assert (trained["tmp"] / "probe" / SAFE_INDEX).is_file()
    assert added < fp32 / 2, (added, fp32)


def _scores(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**_batch(model.name_or_path)).logits[:, 0]


def _batch(model_dir):
    tokenizer = load_tokenizer(str(model_dir))
    contract = resolve_contract(str(model_dir), load_config(str(model_dir)), tokenizer, None, None)
    encoder = make_encoder(tokenizer, MAX_LEN, contract)
    return encoder.collate(encoder.encode_texts(QUERIES, PASSAGES))


@pytest.mark.slow
def test_a_sharded_export_has_the_index_and_scores_like_the_single_file(trained):
    full, sharded = trained["full"], trained["tmp"] / "sharded"
    assert cli.main(["consolidate", str(full / "checkpoints"), str(sharded), "--max_shard_size", "10MB"]) == 0
    index = json.loads((sharded / SAFE_INDEX).read_text())
    files = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert len(files) >= 7 and sorted(set(index["weight_map"].values())) == files
    assert all((sharded / name).stat().st_size <= 10e6 for name in files)
    single = load_file(str(full / "model.safetensors"))
    shards = {name: t for file in files for name, t in load_file(str(sharded / file)).items()}
    assert set(index["weight_map"]) == set(shards) == set(single)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in single.values())
    assert not (sharded / "model.safetensors").exists()
    one, many = (AutoModelForSequenceClassification.from_pretrained(d).eval() for d in (full, sharded))
    assert torch.equal(_scores(one), _scores(many)) and _scores(one).std() > 0


@pytest.mark.slow
def test_a_sharded_export_scores_alike_in_sentence_transformers(trained):
    cross_encoder = pytest.importorskip("sentence_transformers").CrossEncoder
    one, many = trained["full"], trained["tmp"] / "sharded-st"
    assert cli.main(["consolidate", str(one / "checkpoints"), str(many), "--max_shard_size", "10MB"]) == 0
    pairs = list(zip(QUERIES, PASSAGES))
    scores = [cross_encoder(str(d), device="cpu").predict(pairs) for d in (one, many)]
    assert (scores[0] == scores[1]).all()


@pytest.mark.slow
def test_export_dtype_bf16_writes_the_masters_in_bf16(trained):
    full, bf16 = trained["full"], trained["tmp"] / "bf16"
    assert cli.main(["consolidate", str(full / "checkpoints"), str(bf16), "--export_dtype", "bf16"]) == 0
    fp32, half = load_file(str(full / "model.safetensors")), load_file(str(bf16 / "model.safetensors"))
    assert {t.dtype for t in fp32.values()} == {torch.float32} and {t.dtype for t in half.values()} == {torch.bfloat16}
    assert all(torch.equal(half[name], tensor.bfloat16()) for name, tensor in fp32.items())
    assert AutoConfig.from_pretrained(bf16).dtype == torch.bfloat16


@pytest.mark.slow
def test_the_streamed_lora_merge_equals_peft_merge_and_unload(trained):
    tag_dir = next((trained["lora"] / "checkpoints").glob("step-*"))
    hf_dir = tag_dir / "hf"
    weights = checkpoint_weights(tag_dir.parent, tag_dir.name)
    torch.manual_seed(0)  # B as training leaves it after many steps, not its zero start: the merge must add B @ A
    weights.update((name, Lazy.of(torch.randn(lazy.shape) / 10))
                   for name, lazy in weights.items() if ".lora_B." in name)
    whole = {name: lazy().detach() for name, lazy in weights.items()}
    reference = lora.trained_peft_model(load_config(hf_dir), hf_dir, whole).merge_and_unload().state_dict()
    streamed = merged_lora(weights, lora.adapter_config(hf_dir))
    assert set(reference) <= set(streamed)
    adapted = [name for name in reference if name.replace(".weight", ".base_layer.weight") in
               {key.removeprefix("base_model.model.") for key in whole}]
    assert len(adapted) == 7 * LAYERS
    for name, tensor in reference.items():
        assert torch.allclose(streamed[name](), tensor, atol=1e-7, rtol=0), name
    base = load_file(str(trained["model"] / "model.safetensors"))
    assert not torch.equal(streamed[adapted[0]](), base[adapted[0]])  # the adapters moved the merged weight


@pytest.mark.slow
def test_every_shard_and_the_export_hand_freed_memory_back(trained, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(consolidate_module, "return_freed_memory", lambda: calls.append(1))
    consolidate_module.consolidate(trained["full"] / "checkpoints", tmp_path / "out", max_shard_size="20MB")
    shards = len(list((tmp_path / "out").glob("model-*.safetensors")))
    assert shards >= 3 and len(calls) == shards + 1


def test_a_bad_shard_size_is_a_usage_error(tmp_path, capsys):
    assert cli.main(["consolidate", str(tmp_path), str(tmp_path / "out"), "--max_shard_size", "lots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max_shard_size: 'lots' is not a size" in err[0], err


def test_returning_freed_memory_is_harmless():
    from bigrerank.host_memory import return_freed_memory

    blocks = [torch.ones(1024) for _ in range(2000)]
    del blocks
    assert return_freed_memory() in (True, False) and torch.ones(3).sum() == 3


def test_the_end_of_run_export_takes_the_shard_size_and_dtype(tmp_path):
    model, train = tiny_model_dir(tmp_path / "model"), write_groups(tmp_path / "groups.jsonl")
    out = tmp_path / "out"
    assert cli.main(["train", *train_argv(model, train, out, "zero0", "--max_steps", "1", "--max_shard_size", "40KB",
                                          "--export_dtype", "bf16")]) == 0
    index = json.loads((out / SAFE_INDEX).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / name).stat().st_size <= 40_000 + 20_000 for name in shards)
    assert {t.dtype for name in shards for t in load_file(str(out / name)).values() if t.is_floating_point()} == {
        torch.bfloat16}
    assert AutoModelForSequenceClassification.from_pretrained(out).num_labels == 1
