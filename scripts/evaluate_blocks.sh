#!/usr/bin/env bash
# A model on every block of held-out sets, and two models compared pooled over the blocks (issue 17).
#   bash scripts/evaluate_blocks.sh MODEL_DIR NAME [BLOCK...]   evaluate into build/blocks/NAME/<block>_<set>/
#   bash scripts/evaluate_blocks.sh --compare NAME_A NAME_B [BLOCK...]
# BLOCK: eval2 ... eval9 (the Makefile's seed table; `make build/eval7/us_stress/.done` makes a set);
# default every block whose sets exist. SETS (default "us_shifted us_stress"; "mr_shifted mr_stress" for
# an MR model) picks the sets of a block. A set already evaluated under NAME is not repeated, so a
# stopped run continues. One torch thread per evaluation (OMP_NUM_THREADS), beside a training run.
# --compare runs scripts/compare_evaluations.py on each set type and on all of them pooled, over the
# blocks both models have.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SETS=${SETS:-us_shifted us_stress}
OUT=build/blocks
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

blocks() {  # the blocks given, or every block with a finished set of SETS
  if [ $# -gt 0 ]; then echo "$@"; return; fi
  local found=()
  for dir in build/eval*; do
    for s in $SETS; do
      if [ -f "$dir/$s/.done" ]; then found+=("$(basename "$dir")"); break; fi
    done
  done
  echo "${found[@]}"
}

compare() {  # space-separated folders of A and of B: the pooled comparison, each pool shown by its name
  local ja=${1// /,} jb=${2// /,} text
  text=$($PY scripts/compare_evaluations.py "$ja" "$jb")
  text=${text//"$ja"/$a}
  echo "${text//"$jb"/$b}"
}

if [ "${1:-}" = "--compare" ]; then
  [ $# -ge 3 ] || { echo "usage: $0 --compare NAME_A NAME_B [BLOCK...]" >&2; exit 2; }
  a=$2 b=$3
  shift 3
  all_a=() all_b=()
  for s in $SETS; do
    pa=() pb=()
    for blk in $(blocks "$@"); do
      if [ -f "$OUT/$a/${blk}_$s/evaluation.json" ] && [ -f "$OUT/$b/${blk}_$s/evaluation.json" ]; then
        pa+=("$OUT/$a/${blk}_$s") pb+=("$OUT/$b/${blk}_$s")
      fi
    done
    [ ${#pa[@]} -gt 0 ] || { echo "$s: no block evaluated for both $a and $b"; continue; }
    echo "## $s: ${#pa[@]} blocks"
    compare "${pa[*]}" "${pb[*]}"
    all_a+=("${pa[@]}") all_b+=("${pb[@]}")
  done
  if [ ${#all_a[@]} -gt 0 ]; then
    echo "## all sets pooled: ${#all_a[@]}"
    compare "${all_a[*]}" "${all_b[*]}"
  fi
  exit 0
fi

[ $# -ge 2 ] || { echo "usage: $0 MODEL_DIR NAME [BLOCK...] | --compare NAME_A NAME_B [BLOCK...]" >&2; exit 2; }
model=$1 name=$2
shift 2
[ -d "$model" ] || { echo "$model: no such model folder" >&2; exit 2; }
mkdir -p "$OUT/$name"
failed=0
for blk in $(blocks "$@"); do
  for s in $SETS; do
    data=build/$blk/$s dest=$OUT/$name/${blk}_$s
    [ -f "$data/.done" ] || { echo "$data: not generated (make $data/.done)"; continue; }
    [ -f "$dest/evaluation.json" ] && continue
    if $PY -m backmice_vision evaluate --data "$data" --model "$model" --out "$dest" > "$dest.log" 2>&1; then
      echo "$(date +%T) $dest"
    else
      echo "FAILED $dest (see $dest.log)"
      failed=1
    fi
  done
done
exit $failed
