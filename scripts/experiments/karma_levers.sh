#!/usr/bin/env bash
# The KARMA lever ablation (issue: "a stronger KARMA for the same compute"): every lever a row of one
# table, 2 seeds, on one data root. Usage:
#   scripts/experiments/karma_levers.sh DATA_ROOT DS [MAX_STEPS] [extra ablation args...]
# Rows: the default KARMA (act+gen+rec), + MiniLM text features, + text features and 2x steps,
# + text features and batch 32 (more in-batch negatives), + text features on a larger base LM
# (when DATA_ROOT/models/base_lm_large/DS exists: see docs/experiments.md for its command).
set -euo pipefail
root=$1; ds=$2; steps=${3:-1000}; shift $(( $# < 3 ? $# : 3 ))
py=${PYTHON:-.venv/bin/python}
ab=(scripts/karma_ablation.py --data-root "$root" --ds "$ds" --variants act+gen+rec --seeds 0 1
    --max-steps "$steps" --n-attention 16 --reuse "$@")
"$py" "${ab[@]}" --label ""
"$py" "${ab[@]}" --append --set text_features=true
"$py" "${ab[@]}" --append --set text_features=true batch_size=32 --label "text_features=true batch_size=32"
"$py" "${ab[@]}" --append --set text_features=true --label "text_features=true 2x steps" \
    --max-steps $((steps * 2))
large="$root/models/base_lm_large/$ds"
if [ -d "$large" ]; then
  "$py" "${ab[@]}" --append --set text_features=true --base-model "$large" --label "text_features=true large base LM"
fi
