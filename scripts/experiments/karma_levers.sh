#!/usr/bin/env bash
# The KARMA lever ablation (issue: "a stronger KARMA for the same compute"): every lever a row of one
# table (<root>/reports/karma_ablation/ds=<ds>/ablation.md), 2 seeds, on one data root. Usage:
#   scripts/experiments/karma_levers.sh DATA_ROOT DS [MAX_STEPS] [extra ablation args...]
#   ROWS="text ids" scripts/experiments/karma_levers.sh ...   # only these rows (default: all, in order)
# Rows: default (act+gen+rec, no lever) | text (+ MiniLM text features) | ids (+ text, + item-ID
# embeddings: the pipeline's config) | tower (+ text, text-only item tower) | early (+ text, one epoch
# with early stopping on valid L_act) | epochs3 (+ text + ids, three epochs with early stopping) |
# batch32 (+ text + ids, batch 32: more in-batch negatives) | images (+ text + ids, image tokens:
# the --images variant) | large (+ text + ids on a larger base LM, when DATA_ROOT/models/base_lm_large/DS
# exists: see docs/experiments.md for its pre-training command).
set -euo pipefail
root=$1; ds=$2; steps=${3:-1000}; shift $(( $# < 3 ? $# : 3 ))
py=${PYTHON:-.venv/bin/python}
rows=${ROWS:-default text ids tower early epochs3 batch32 images large}
ab=(scripts/karma_ablation.py --data-root "$root" --ds "$ds" --variants act+gen+rec --seeds 0 1
    --max-steps "$steps" --n-attention 16 --reuse "$@")
for row in $rows; do
  case $row in
    # every row sets the lever keys it depends on: the config's defaults (text features and item
    # IDs on since 2026-12-05) would otherwise leak into the rows that measure them
    default) "$py" "${ab[@]}" --append --set text_features=false item_id_buckets=0 --label "" ;;
    text) "$py" "${ab[@]}" --append --set text_features=true item_id_buckets=0 --label "text_features=true" ;;
    ids) "$py" "${ab[@]}" --append --set text_features=true item_id_buckets=16384 ;;
    tower) "$py" "${ab[@]}" --append --set text_features=true item_id_buckets=0 item_tower=text \
             --label "text_features=true item_tower=text" ;;
    early) "$py" "${ab[@]}" --append --set text_features=true item_id_buckets=0 epochs=1 early_stopping_patience=3 \
             eval_steps=200 --label "text_features=true epochs=1 early_stopping_patience=3 eval_steps=200" ;;
    epochs3) "$py" "${ab[@]}" --append --set text_features=true item_id_buckets=16384 epochs=3 \
               early_stopping_patience=3 eval_steps=200 ;;
    batch32) "$py" "${ab[@]}" --append --set text_features=true item_id_buckets=16384 batch_size=32 ;;
    images) "$py" "${ab[@]}" --append --images --set text_features=true item_id_buckets=16384 ;;
    large)
      large="$root/models/base_lm_large/$ds"
      if [ -d "$large" ]; then
        "$py" "${ab[@]}" --append --set text_features=true item_id_buckets=16384 --base-model "$large" \
          --label "text_features=true item_id_buckets=16384 large base LM"
      else
        echo "no $large: the large base LM row is skipped"
      fi ;;
    *) echo "unknown row $row" >&2; exit 2 ;;
  esac
done
