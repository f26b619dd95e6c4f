#!/usr/bin/env bash
# AIGQ IL-SFT ablation on synthetic data with a larger policy (issue 4): pre-train a 6-layer x 384
# base LM (~12M parameters, vs the default 2 x 128), then Direct / Think IL-SFT x seeds from it,
# scored next to the popularity, co-occurrence and own-history baselines (scripts/aigq_ablation.py).
# Sized for a GPU (runtime.device auto); on a CPU it runs, slowly.
#
#   scripts/aigq_big_policy.sh DATA_ROOT OUT_DIR [SFT_STEPS]
#   env: BASE_STEPS (default 1500), HIDDEN / LAYERS / HEADS (384 / 6 / 6), KINDS ("direct think"), SEEDS ("0 1"), TRAIN_DS, EVAL_DS, PYTHON
# EBR and the MiniLM similarity are left out (the MiniLM wheel is not on every machine); the
# CPU ablation table has them.
set -euo pipefail
ROOT=$(cd "$1" && pwd); OUT=$2; STEPS=${3:-2000}
PY=${PYTHON:-python3}
TRAIN_DS=${TRAIN_DS:-2026-11-04}; EVAL_DS=${EVAL_DS:-2026-11-05}
BASE="$ROOT/models/base_lm_big/$TRAIN_DS"
HIDDEN=${HIDDEN:-384}; LAYERS=${LAYERS:-6}; HEADS=${HEADS:-6}
export PIPELINE__BASE_LM__HIDDEN_SIZE=$HIDDEN PIPELINE__BASE_LM__NUM_HIDDEN_LAYERS=$LAYERS \
  PIPELINE__BASE_LM__NUM_ATTENTION_HEADS=$HEADS PIPELINE__BASE_LM__NUM_KEY_VALUE_HEADS=$HEADS \
  PIPELINE__BASE_LM__INTERMEDIATE_SIZE=$((4 * HIDDEN)) PIPELINE__BASE_LM__BATCH_SIZE=64 \
  PIPELINE__BASE_LM__LEARNING_RATE=0.001 PIPELINE__BASE_LM__WARMUP_STEPS=50
if [ ! -f "$BASE/manifest.json" ]; then
  "$PY" -m base_lm.pretrain --ds "$TRAIN_DS" --data-root "$ROOT" --out "$BASE" --max-steps "${BASE_STEPS:-1500}"
fi
export PIPELINE__AIGQ__SFT__BATCH_SIZE=32 PIPELINE__AIGQ__SFT__LEARNING_RATE=0.0005
export PIPELINE__AIGQ__EVAL__BASELINES='[popularity, cooccurrence, own_history+popularity]' \
  PIPELINE__AIGQ__EVAL__SEMANTIC=false
# shellcheck disable=SC2086
"$PY" scripts/aigq_ablation.py --data-root "$ROOT" --train-ds "$TRAIN_DS" --eval-ds "$EVAL_DS" \
  --kinds ${KINDS:-direct think} --seeds ${SEEDS:-0 1} --max-steps "$STEPS" --base-model "$BASE" \
  --strategy beam --num-return-sequences 4 --out "$OUT" --reuse
