#!/usr/bin/env bash
# Compare the shipped models with trained candidates on the held-out shifted and stress phantom sets,
# with and without the anatomical plausibility test (issue 17). Writes build/evalres/<model>_<set>/.
#   bash scripts/evaluate_candidates.sh [US_CANDIDATE] [MR_CANDIDATE]
# The sets: make evaluate-sets (build/eval2/{us,mr}_{shifted,stress}). ONLY=shipped or ONLY=cand runs
# one half; a run whose evaluation.json exists is not repeated.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
US_CAND=${1:-build/candidates/backmice_us_dr}
MR_CAND=${2:-build/candidates/backmice_mr_dr}
OUT=build/evalres
run() {  # name model data [variant]: the variant (NAME:overrides) is written to <name>_NAME, same pass
  local name=$1 model=$2 data=$3 variant=${4:-}
  local extra=()
  [ -n "$variant" ] && extra+=(--variant "$variant")
  [ -d "$model" ] || { echo "skip $name: no $model"; return; }
  case "${ONLY:-}" in shipped) [[ $name == shipped* ]] || return 0 ;; cand) [[ $name == cand* ]] || return 0 ;; esac
  [ -f "$OUT/$name/evaluation.json" ] && { echo "$name exists"; return; }
  $PY -m backmice_vision evaluate --data "$data" --model "$model" --out "$OUT/$name" "${extra[@]}" >/dev/null 2>"$OUT/$name.log" || { echo "FAILED $name"; return; }
  if [ -n "$variant" ]; then
    rm -rf "$OUT/${name}_${variant%%:*}"
    mv "$OUT/$name/${variant%%:*}" "$OUT/${name}_${variant%%:*}"
  fi
  echo "$name done"
}
mkdir -p "$OUT"
for s in shifted stress; do
  # without the anatomical plausibility test: a variant of the same network pass
  run "shipped_us_$s" models/backmice_us "build/eval2/us_$s" nofilter:min_fat_context=0,max_fascia_above=1
  run "cand_us_$s" "$US_CAND" "build/eval2/us_$s"
  run "shipped_mr_$s" models/backmice_mr "build/eval2/mr_$s" nofilter:min_fat_context=0
  run "cand_mr_$s" "$MR_CAND" "build/eval2/mr_$s"
done
$PY scripts/summarise_evaluations.py "$OUT" > "$OUT/summary.md"
cat "$OUT/summary.md"
