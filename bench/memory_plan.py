"""Validate `bigrerank plan`: predicted host memory against the measured peak RSS of real training runs (CPU).

Every configuration runs in a fresh process (2 ranks under torch.distributed.run for the collaborative rows).
Each process imports everything and starts its runtime, then reads its RSS as the base and resets the peak
(`/proc/self/clear_refs` 5), then trains 2 optimizer steps (the second step's forward runs with the Adam
states allocated by the first) and reads its peak RSS (VmHWM) before the final checkpoint is written. The
measured host total is the sum over the node's ranks of peak - base; the prediction is the planner's
`per_node.total` for the same command line (`--gpus_per_node 0`). On a GPU (bench/gpu_check.sh) the same runs
compare the largest rank's `torch.cuda.max_memory_allocated` above its base with `per_rank.total`. Nothing in the planner is fitted to these
numbers. Models: MiniLM-L6 (`bigrerank.commands.demo.default_backbone()`) and a decoder with Qwen2.5-0.5B's dimensions
built from a config with random weights (bf16, LoRA). Data: random token ids long enough to fill max_len.

    python bench/memory_plan.py [--only NAME,...] [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768,
                  rope_theta=1000000.0, rms_norm_eps=1e-6)
LORA = ("--lora_r", "16")
# name: (model, ds config, group, max_len, ranks, extra flags)
CONFIGS = {
    "minilm-z0-g8-L128": ("minilm", "zero0.json", 8, 128, 1, ()),
    "minilm-z2-g8-L256": ("minilm", "zero2.json", 8, 256, 1, ()),
    "minilm-z2-g64-L128": ("minilm", "zero2.json", 64, 128, 1, ()),
    "minilm-z2-g64-L128-ckpt": ("minilm", "zero2.json", 64, 128, 1, ("--gradient_checkpointing",)),
    "minilm-z2-g64-L128-cache8": ("minilm", "zero2.json", 64, 128, 1, ("--grad_cache_chunk_size", "8")),
    "minilm-z3-g8-L128": ("minilm", "zero3.json", 8, 128, 1, ()),
    "minilm-z2off-g8-L128": ("minilm", "zero2_offload.json", 8, 128, 1, ()),
    "minilm-z3off-g64-L256-cache8": ("minilm", "zero3_offload.json", 64, 256, 1, ("--grad_cache_chunk_size", "8")),
    "minilm-z2-g8-L256-lora": ("minilm", "zero2.json", 8, 256, 1, LORA),
    "minilm-z2-g8-L128-bf16": ("minilm", "zero2.json", 8, 128, 1, ("--bf16",)),
    "minilm-z2-g64-L128-collab2": ("minilm", "zero2.json", 64, 128, 2, ("--collaborative",)),
    "minilm-z3-g64-L256-collab2-cache8": ("minilm", "zero3.json", 64, 256, 2,
                                          ("--collaborative", "--grad_cache_chunk_size", "8")),
    "qwen0.5b-z2-g8-L128-lora-ckpt": ("qwen", "zero2.json", 8, 128, 1, ("--bf16", *LORA, "--gradient_checkpointing")),
    # fp32: LoRA under ZeRO-3 in bf16 stops in DeepSpeed (peft's float32 adapters beside bf16 weights)
    "qwen0.5b-z3-g8-L128-lora-cache4": ("qwen", "zero3.json", 8, 128, 1, (*LORA, "--grad_cache_chunk_size", "4")),
}
STEPS = 2


def _status() -> dict:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def child(argv: list[str], result_path: str) -> None:
    """In a fresh rank: plan, take the base, train, record the peak before the final checkpoint."""
    import deepspeed  # noqa: F401  (imports belong to the base)
    import peft  # noqa: F401
    import torch

    from bigrerank import ds_config
    from bigrerank.checkpoints import store
    from bigrerank.commands.plan import parse
    from bigrerank.planning.planner import Planner, training_hardware
    from bigrerank.training import trainer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cuda = torch.cuda.is_available()  # on a GPU: the device's max_memory_allocated against the per-rank plan
    model_args, data_args, args, _ = parse(argv)
    planner = Planner(model_args, data_args, args, training_hardware(), ds_config.load(args.ds_config))
    plan = planner.plan()
    Path("/proc/self/clear_refs").write_text("5")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else _status()["VmRSS"]
    peak = {}
    save = store.save

    def record_then_save(*a, **k):
        peak.setdefault("bytes", torch.cuda.max_memory_allocated() if cuda else _status()["VmHWM"])
        return save(*a, **k)

    store.save = record_then_save
    trainer.train(model_args, data_args, args)
    Path(result_path).write_text(json.dumps({"base": base, "peak": peak["bytes"], "device": "cuda" if cuda else "cpu",
                                             "plan": plan.per_rank if cuda else plan.per_node}))


def build_qwen(directory: Path) -> Path:
    """Qwen2.5-0.5B dimensions, random float32 weights (training casts them to bf16), a small local tokenizer.

    (A bf16 checkpoint trips DeepSpeed's ZeRO-3 defragmentation with LoRA: peft keeps the adapters in float32.)"""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    sys.path.insert(0, str(common.REPO))
    from tests.tiny_decoder import tiny_decoder_tokenizer

    if (directory / "config.json").is_file():
        return directory
    tokenizer = tiny_decoder_tokenizer()
    config = Qwen2Config(**QWEN25_05B, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def prepare(work: Path) -> dict:
    """{model kind: (model dir, training data)}, each data file converted once here (not inside a measured run)."""
    from transformers import AutoTokenizer

    from bigrerank.data.grouped import load_groups

    models = {"minilm": common.minilm_dir(), "qwen": str(build_qwen(work / "qwen2.5-0.5b-random"))}
    out = {}
    for kind, model in models.items():
        tokenizer = AutoTokenizer.from_pretrained(model)
        data = work / f"{kind}_groups.jsonl"
        if not data.is_file():
            common.write_token_groups(data, max(tokenizer.all_special_ids) + 1, len(tokenizer), 63, 16, 300)
        load_groups(str(data), vocab_size=len(tokenizer), group_size=64)
        out[kind] = (model, data)
    return out


def run(name: str, prepared: dict, work: Path, smoke: bool = False) -> dict:
    kind, config, group, max_len, ranks, extra = CONFIGS[name]
    model, data = prepared[kind]
    if smoke:  # the plumbing only: tiny groups and pairs, one step
        group, max_len, extra = min(group, 4), 32, tuple(e if e != "8" else "2" for e in extra)
    argv = common.trainer_argv(model, data, work / name, config, group, 1, 1 if smoke else STEPS, max_len,
                               tuple(extra))
    results = work / f"{name}.rank"
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
                 "--master_port", str(29500 + hash(name) % 1000)] if ranks > 1 else [sys.executable])
    cmd = [*launcher, __file__, "--child", str(results), *argv]
    env = common.child_env(max(1, 2 // ranks))
    common.run_child(cmd, env, timeout=1800)
    rows = [json.loads(Path(f"{results}{r}").read_text()) for r in range(ranks)]
    added = [row["peak"] - row["base"] for row in rows]
    measured = max(added) if rows[0]["device"] == "cuda" else sum(added)  # per GPU, or the node's host total
    predicted = rows[0]["plan"]["total"]
    return {"name": name, "ranks": ranks, "command": " ".join(argv), "predicted": predicted, "measured": measured,
            "error": predicted / measured - 1, "base": [row["base"] for row in rows], "plan": rows[0]["plan"]}


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        rank = os.environ.get("RANK", "0")
        child(sys.argv[3:], f"{sys.argv[2]}{rank}")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # as launch/train.py: no interpreter-exit destructors after the process group is gone
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None, help="comma-separated configuration names")
    parser.add_argument("--work", default=None, help="directory for models, data and runs (default: a temp dir)")
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    parser.add_argument("--smoke", action="store_true", help="groups of 4, max_len 32, 1 step: check the plumbing")
    opts = parser.parse_args()
    names = opts.only.split(",") if opts.only else list(CONFIGS)
    work = Path(opts.work or tempfile.mkdtemp(prefix="memory_plan_"))
    work.mkdir(parents=True, exist_ok=True)
    prepared = prepare(work)
    rows = []
    for name in names:
        row = run(name, prepared, work, opts.smoke)
        rows.append(row)
        print(f"{name}: predicted {row['predicted'] / 2**20:.0f} MiB, measured {row['measured'] / 2**20:.0f} MiB, "
              f"error {row['error']:+.1%}", flush=True)
        if opts.out:
            Path(opts.out).write_text(json.dumps(rows, indent=1))
    print(f"\nPredicted host total vs measured peak RSS above base, {STEPS} optimizer steps, 1 query a step; "
          f"{common.machine()}")
    print(common.table(["configuration", "ranks", "predicted MiB", "measured MiB", "error"],
                       [[r["name"], r["ranks"], f"{r['predicted'] / 2**20:.0f}", f"{r['measured'] / 2**20:.0f}",
                         f"{r['error']:+.1%}"] for r in rows]))
    worst = max(abs(r["error"]) for r in rows)
    print(f"worst |error| {worst:.1%} (target <= 20%: {'ok' if worst <= 0.20 else 'missed'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
