#!/usr/bin/env bash
# Weighted fusion of a first-stage run and a reranked run, its weights never learned on the queries they score:
# two-fold cross-validation over the evaluation queries (sorted ids, alternate halves). `bigrerank fuse
# --optimize_on` learns the weights on one half (ranx grid search), `--weights` applies them unchanged to the other;
# the two held-out halves make one run, compared with the reranked run and the first stage (`eval --compare`).
#
#   bash bench/fusion_cv.sh FIRST_STAGE RERANKED QRELS OUT_DIR [METHOD (wsum)]
set -euo pipefail
(( $# == 4 || $# == 5 )) || { echo "usage: bash bench/fusion_cv.sh FIRST_STAGE RERANKED QRELS OUT_DIR [METHOD]" >&2; exit 2; }
first=$1 reranked=$2 qrels=$3 out=$4 method=${5:-wsum}
for f in "$first" "$reranked" "$qrels"; do [[ -f $f ]] || { echo "bench/fusion_cv.sh: $f: no such file" >&2; exit 2; }; done
[[ -e $out ]] && { echo "bench/fusion_cv.sh: $out exists; give a new directory" >&2; exit 2; }
mkdir -p "$out"
# the judged queries, sorted, alternately into halves a and b (qrels: TREC 'qid 0 docid rel' or BEIR tsv with header)
awk 'NR == 1 && $1 == "query-id" {next} {print $1}' "$qrels" | sort -u | awk '{print $1, NR % 2 ? "a" : "b"}' > "$out/halves"
split_file() {  # split_file FILE NAME: NAME.a / NAME.b, the lines of each half's queries (a BEIR header kept)
    awk -v out="$out/$2" 'NR == FNR {half[$1] = $2; next}
        FNR == 1 && $1 == "query-id" {print > (out ".a"); print > (out ".b"); next}
        ($1 in half) {print > (out "." half[$1])}' "$out/halves" "$1"
}
split_file "$first" first; split_file "$reranked" reranked; split_file "$qrels" qrels
for h in a b; do
    o=$([[ $h == a ]] && echo b || echo a)
    bigrerank fuse --runs "$out/first.$h" "$out/reranked.$h" --method "$method" --optimize_on "$out/qrels.$h" \
        --output "$out/learned_on_$h.trec"
    bigrerank fuse --runs "$out/first.$o" "$out/reranked.$o" --weights "$out/learned_on_$h.fusion.json" \
        --output "$out/held_out_$o.trec"
done
cat "$out/held_out_a.trec" "$out/held_out_b.trec" > "$out/fused_cv.trec"
for base in "$reranked" "$first"; do
    bigrerank eval --qrels "$qrels" --compare "$base" "$out/fused_cv.trec" --metrics nDCG@10 RR@10
done
