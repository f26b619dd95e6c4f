#!/usr/bin/env bash
# Attention sinks where they can show (KARMA issue, item 4): pre-train a base LM large enough to develop
# sinks, train KARMA `act` and `act+gen+rec` on it, and evaluate both with the base LM beside them; the
# sink-ratio comparison (base LM vs act vs KARMA) and the attention heatmaps land in the ablation table
# (<root>/reports/karma_sinks/ds=<ds>/ablation.md) and in each run's evaluation report, which the
# analyst report shows (`make report DS=<ds> DATA_ROOT=<root>`).
#
#   scripts/experiments/attention_sinks.sh DATA_ROOT DS            # one GPU, sized for <= 6 minutes
#   scripts/experiments/attention_sinks.sh DATA_ROOT DS --dry-run  # the same steps, CPU-sized (~3 min on 2 cores)
#
# DATA_ROOT needs the ETL output of DS (e.g. `python -m sources.amazon_scientific --data-root R`, then
# jobs.validate / sessionize / build_samples with --ds 2026-11-01 --through 2026-11-03).
set -euo pipefail
root=$1; ds=$2; mode=${3:-gpu}
py=${PYTHON:-.venv/bin/python}
if [ "$mode" = "--dry-run" ]; then
  size=(HIDDEN_SIZE=64 NUM_HIDDEN_LAYERS=2 NUM_ATTENTION_HEADS=4 NUM_KEY_VALUE_HEADS=4 INTERMEDIATE_SIZE=128
        BATCH_SIZE=8); base_steps=6; karma_steps=4; karma_batch=8; device=cpu
else
  # ~45M parameters: 8 layers of width 512 (sinks appear from a few layers and a few thousand steps on)
  size=(HIDDEN_SIZE=512 NUM_HIDDEN_LAYERS=8 NUM_ATTENTION_HEADS=8 NUM_KEY_VALUE_HEADS=8 INTERMEDIATE_SIZE=1536
        BATCH_SIZE=64 BLOCK_SIZE=256); base_steps=3000; karma_steps=800; karma_batch=64; device=cuda
fi
env_base=(PIPELINE__RUNTIME__DEVICE=$device)
for kv in "${size[@]}"; do env_base+=("PIPELINE__BASE_LM__$kv"); done
base="$root/models/base_lm_sinks/$ds"
start=$(date +%s)
env "${env_base[@]}" "$py" -m base_lm.pretrain --ds "$ds" --data-root "$root" --out "$base" --max-steps "$base_steps"
echo "base LM: $(( $(date +%s) - start )) s"
env PIPELINE__RUNTIME__DEVICE=$device PIPELINE__KARMA__BATCH_SIZE=$karma_batch \
  "$py" scripts/karma_ablation.py --data-root "$root" --ds "$ds" --variants act act+gen+rec --seeds 0 \
  --base-model "$base" --max-steps "$karma_steps" --n-attention 64 --baselines \
  --out "$root/reports/karma_sinks/ds=$ds" --label "sinks"
echo "total: $(( $(date +%s) - start )) s"
cat "$root/reports/karma_sinks/ds=$ds/ablation.md"
