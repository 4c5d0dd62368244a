#!/usr/bin/env bash
# Ranking quality on real IR data, one command: BM25 vs pointwise BCE vs listwise LCE (MiniLM-L6 backbone).
#
#   bash bench/quality.sh [scifact|cranfield|all|ablation|groups|negatives]      (default: all)
#
# scifact:   train on the 709 train queries (BM25 top-100 hard negatives), rerank the dev BM25 top-K, nDCG@10/RR@10,
#            once per seed of QUALITY_SEEDS, then LCE vs BCE over the seeds (bench/quality_results/scifact_g16_seeds.md)
# cranfield: the same on Cranfield's train/test split (graded qrels 1-4), one run, groups of QUALITY_CRANFIELD_GROUP
# ablation:  short SciFact LCE runs that show which knob matters (learning rate, head init, max_len)
# groups:    SciFact LCE by group size G (8 16 32 64) at equal optimizer steps and at equal scored pairs,
#            several seeds, with spreads and paired significance (bench/quality_results/groups.md)
# negatives: --negatives_from, --random_negatives and --teacher (+ --loss distill), each against the same LCE run
#            without it (bench/quality_results/negatives.md)
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

# The recipe (docs/benchmarks/quality.md has the measurements behind each value).
LR=${QUALITY_LR:-1e-4}
WARMUP=${QUALITY_WARMUP:-0.1}
GROUP=${QUALITY_GROUP:-16}  # G 16: LCE 0.714 over 4 seeds, ahead of BCE on each; G 8: LCE 0.689, level with BCE
SEEDS=(${QUALITY_SEEDS:-2 3 4 5})
BATCH=${QUALITY_BATCH:-4}
MAX_LEN=${QUALITY_MAX_LEN:-96}
STEPS=${QUALITY_STEPS:-600}
HEAD=${QUALITY_HEAD_INIT_STD:-0.2}
DEPTH=${QUALITY_DEPTH:-100}
BF16=${QUALITY_BF16:-auto}  # 1: train in bf16; 0: fp32; auto: bf16 only where the CPU computes it natively
if [[ $BF16 == auto ]]; then
    BF16=0
    grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null && BF16=1
fi
echo "bench/quality.sh: training in $([[ $BF16 == 1 ]] && echo bf16 || echo fp32) (QUALITY_BF16=${QUALITY_BF16:-auto})"
base=(--learning_rate "$LR" --warmup_ratio "$WARMUP" --per_device_train_batch_size "$BATCH" --max_len "$MAX_LEN"
      --head_init_std "$HEAD" --depth "$DEPTH")
[[ $BF16 == 1 ]] && base+=(--bf16)
recipe=("${base[@]}" --parallel)

quality() { python bench/quality.py "$@"; }

scifact() {
    # ~42 minutes a seed on 2 cores (LCE and BCE side by side, one thread each); finished runs are reused.
    local seed results=()
    for seed in "${SEEDS[@]}"; do
        quality --collection scifact --name "g${GROUP}_s${seed}" --seed "$seed" --max_steps "$STEPS" \
            --train_group_size "$GROUP" "${recipe[@]}"
        results+=("bench/quality_results/scifact_g${GROUP}_s${seed}.json")
    done
    quality --seeds_table "${results[@]}" | tee "bench/quality_results/scifact_g${GROUP}_seeds.md"
}
cranfield() {
    quality --collection cranfield --name final --max_steps "${QUALITY_CRANFIELD_STEPS:-60}" \
        --train_group_size "${QUALITY_CRANFIELD_GROUP:-8}" "${recipe[@]}"
}

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

lanes() {
    # Run "name|args" specs in two lanes side by side, one thread a command (2 cores): lane 1 takes specs 1, 3, ...
    local lane pids=() i spec
    for spec in "$@"; do quality --prepare_only ${spec#*|}; done  # the training data first, one writer a file
    for lane in 0 1; do
        (for (( i = lane; i < $#; i += 2 )); do spec=${@:i+1:1}
             quality --threads 1 --name "${spec%%|*}" ${spec#*|}; done) &
        pids+=($!)
    done
    wait "${pids[0]}" && wait "${pids[1]}"
}

groups() {
    # LCE with G in QUALITY_GROUP_SIZES at equal scored pairs (STEPS*8/G steps, at least 1) and at equal optimizer
    # steps (QUALITY_GROUP_EQUAL_STEPS for every G; G=8 too, when that differs from STEPS), the gradient cache
    # (chunks of QUALITY_GRAD_CACHE_CHUNK pairs) for G >= 16, and for every G the same training data: negatives
    # from the BM25 top 100, 99 kept (G=64 draws without replacement). Seeds: QUALITY_GROUP_SEEDS for G 8 and 32,
    # run first; QUALITY_OTHER_SEEDS for the other sizes. Two runs side by side, one thread each, so that the wall
    # times compare. Results: scifact_<name>_g*.json and <name>.md in bench/quality_results (<name>:
    # QUALITY_GROUP_NAME, default groups).
    local name=${QUALITY_GROUP_NAME:-groups} chunk=${QUALITY_GRAD_CACHE_CHUNK:-8} equal=${QUALITY_GROUP_EQUAL_STEPS:-$STEPS}
    local sizes=(${QUALITY_GROUP_SIZES:-8 16 32 64}) main_seeds=(${QUALITY_GROUP_SEEDS:-1 2 3})
    local other_seeds=(${QUALITY_OTHER_SEEDS:-1}) order=() specs=() g steps seed
    for g in "${sizes[@]}"; do [[ $g == 8 || $g == 32 ]] && order+=("$g"); done
    for g in "${sizes[@]}"; do [[ $g == 8 || $g == 32 ]] || order+=("$g"); done
    for g in "${order[@]}"; do
        local seeds=("${other_seeds[@]}") cache="" budgets=("$(( STEPS * 8 / g > 0 ? STEPS * 8 / g : 1 ))")
        [[ $g == 8 || $g == 32 ]] && seeds=("${main_seeds[@]}")
        (( g >= 16 )) && cache="--grad_cache_chunk_size $chunk"
        [[ ${budgets[0]} != "$equal" ]] && budgets+=("$equal")
        for steps in "${budgets[@]}"; do
            for seed in "${seeds[@]}"; do
                specs+=("${name}_g${g}_steps${steps}_s${seed}|--collection scifact --losses lce --negatives 99 \
--train_group_size $g --max_steps $steps --seed $seed $cache ${base[*]}")
            done
        done
    done
    lanes "${specs[@]}"
    quality --groups_table bench/quality_results/scifact_"${name}"_g*.json | tee "bench/quality_results/${name}.md"
}

negatives() {
    # The negatives options of `bigrerank prepare train`, each against the same LCE run without it: G 8,
    # QUALITY_NEGATIVES_STEPS steps, dev BM25 top 30, seed 1. --negatives_from 6 (skip the BM25 top 5),
    # --random_negatives 8 (corpus negatives mixed into the 30 hard ones), and --teacher QUALITY_TEACHER with
    # --loss distill (default teacher: the LCE model of `quality.sh scifact`'s first seed; negatives.md has
    # QUALITY_TEACHER=$BIGRERANK_QUALITY_OUT/scifact_final_s3_lce, the G 8 recipe's seed-3 LCE model). Results: negatives.md.
    local steps=${QUALITY_NEGATIVES_STEPS:-200} teacher=${QUALITY_TEACHER:-$BIGRERANK_QUALITY_OUT/scifact_g${GROUP}_s${SEEDS[0]}_lce}
    local common="--collection scifact --train_group_size 8 --max_steps $steps --seed 1 ${base[*]} --depth 30"
    [[ -f $teacher/config.json ]] || { echo "bench/quality.sh negatives: no teacher model in $teacher" >&2; exit 2; }
    lanes "negatives_base|$common --losses lce" "negatives_random8|$common --losses lce --random_negatives 8" \
          "negatives_from6|$common --losses lce --negatives_from 6" \
          "negatives_teacher|$common --losses distill --teacher $teacher"
    quality --summarize bench/quality_results/scifact_negatives_{base,from6,random8,teacher}.json \
        | tee bench/quality_results/negatives.md
}

case "${1:-all}" in
    scifact) scifact ;;
    cranfield) cranfield ;;
    ablation) ablation ;;
    groups) groups ;;
    negatives) negatives ;;
    all) scifact; cranfield ;;
    *) echo "usage: bash bench/quality.sh [scifact|cranfield|all|ablation|groups|negatives]" >&2; exit 2 ;;
esac
