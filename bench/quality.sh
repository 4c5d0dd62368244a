#!/usr/bin/env bash
# Ranking quality on real IR data, one command: BM25 vs pointwise BCE vs listwise LCE (MiniLM-L6 backbone).
#
#   bash bench/quality.sh [scifact|cranfield|all|ablation]      (default: all)
#
# scifact:   train on the 709 train queries (BM25 top-100 hard negatives), rerank the dev BM25 top-K, nDCG@10/RR@10
# cranfield: the same on Cranfield's train/test split (graded qrels 1-4)
# ablation:  short SciFact LCE runs that show which knob matters (learning rate, head init, max_len)
#
# Working files (training data, models, score files) go to ${BIGRERANK_QUALITY_OUT:-/tmp/bigrerank_quality};
# small results (markdown tables, metrics JSON) to bench/quality_results/. Settings: QUALITY_* below.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=../shared/data
if [ ! -d "$DATA" ]; then
    echo "bench/quality.sh: skipping, $DATA not found (the shared IR collections are absent)"
    exit 0
fi
export BIGRERANK_QUALITY_OUT=${BIGRERANK_QUALITY_OUT:-/tmp/bigrerank_quality}

# The recipe (see bench/quality_results/README.md for why).
LR=${QUALITY_LR:-1e-4}
WARMUP=${QUALITY_WARMUP:-0.1}
GROUP=${QUALITY_GROUP:-8}
BATCH=${QUALITY_BATCH:-4}
MAX_LEN=${QUALITY_MAX_LEN:-96}
STEPS=${QUALITY_STEPS:-360}
HEAD=${QUALITY_HEAD_INIT_STD:-0.2}
DEPTH=${QUALITY_DEPTH:-30}
recipe=(--learning_rate "$LR" --warmup_ratio "$WARMUP" --train_group_size "$GROUP"
        --per_device_train_batch_size "$BATCH" --max_len "$MAX_LEN" --head_init_std "$HEAD" --depth "$DEPTH" --parallel)

quality() { python bench/quality.py "$@"; }

scifact()   { quality --collection scifact --name final --max_steps "$STEPS" "${recipe[@]}"; }
cranfield() { quality --collection cranfield --name final --max_steps "${QUALITY_CRANFIELD_STEPS:-60}" "${recipe[@]}"; }

ablation() {
    # 40 steps of 4 queries x 8 passages, LCE only, dev top-20; one knob changed at a time, two runs side by side.
    local common=(--collection scifact --losses lce --max_steps 40 --depth 20 --warmup_ratio 0.1
                  --train_group_size 8 --per_device_train_batch_size 4 --parallel)
    pair() { local a b; quality "${common[@]}" $1 & a=$!; quality "${common[@]}" $2 & b=$!; wait $a; wait $b; }
    pair "--name ablation_lr2e-5 --learning_rate 2e-5 --max_len 96" \
         "--name ablation_lr1e-4 --learning_rate 1e-4 --max_len 96"
    pair "--name ablation_lr3e-4 --learning_rate 3e-4 --max_len 96" \
         "--name ablation_lr1e-4_head0.2 --learning_rate 1e-4 --max_len 96 --head_init_std 0.2"
    pair "--name ablation_lr1e-4_len128 --learning_rate 1e-4 --max_len 128" \
         "--name ablation_lr3e-4_len128 --learning_rate 3e-4 --max_len 128"
    quality --summarize bench/quality_results/scifact_ablation_*.json | tee bench/quality_results/ablation.md
}

case "${1:-all}" in
    scifact) scifact ;;
    cranfield) cranfield ;;
    ablation) ablation ;;
    all) scifact; cranfield ;;
    *) echo "usage: bash bench/quality.sh [scifact|cranfield|all|ablation]" >&2; exit 2 ;;
esac
