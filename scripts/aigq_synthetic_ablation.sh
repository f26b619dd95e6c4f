#!/usr/bin/env bash
# AIGQ IL-SFT ablation on synthetic data, CPU-sized (issue 4): Direct / Think IL-SFT and plain SFT
# x 2 seeds next to popularity, co-occurrence, EBR and own history, one table.
#
#   scripts/aigq_synthetic_ablation.sh DATA_ROOT OUT_DIR
#   env: USERS (12000), DAYS (6), STEPS (2500), LR (0.002), BASE_STEPS (1500), BEAMS (32),
#        MAX_SAMPLES (1000), KINDS ("direct think plain"), SEEDS ("0 1"), PARALLEL (2),
#        SESSION_ANCHORS (false), KNOWN (false: aigq.generate.known_queries of the scoring, true =
#        constrained decoding over the log's known queries), PYTHON
#
# 1. Synthetic logs for USERS users over DAYS days from 2026-11-01 (skipped when DATA_ROOT already
#    holds samples of the last day), validated, sessionised and turned into samples by the Spark jobs;
#    the training days with samples.session_anchors=SESSION_ANCHORS (in-day anchors), the scored
#    last day always without (its Direct samples are the clicked HintQ exposures, as in the paper).
# 2. The base LM on the days ending the day before the last, with the behaviour-sequence corpus
#    (base_lm.behaviour_sequences), BASE_STEPS steps.
# 3. IL-SFT of every kind x seed on those days (STEPS steps, lr LR), each scored on the first
#    MAX_SAMPLES Direct samples of the last day with query_beam decoding (BEAMS beams, KNOWN), PARALLEL
#    runs at a time (one thread each); scripts/aigq_ablation.py then writes the one table.
# About 90 min on 2 CPU cores with the defaults (the Think scoring takes 7-12 min a seed).
set -euo pipefail
ROOT=$(mkdir -p "$1" && cd "$1" && pwd); OUT=$2
PY=${PYTHON:-.venv/bin/python}
USERS=${USERS:-12000}; DAYS=${DAYS:-6}; STEPS=${STEPS:-2500}; LR=${LR:-0.002}; BASE_STEPS=${BASE_STEPS:-1500}
BEAMS=${BEAMS:-32}; MAX_SAMPLES=${MAX_SAMPLES:-1000}; KINDS=${KINDS:-direct think plain}; SEEDS=${SEEDS:-0 1}
PARALLEL=${PARALLEL:-2}; SESSION_ANCHORS=${SESSION_ANCHORS:-false}; KNOWN=${KNOWN:-false}
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
DATES=()
for ((d = 0; d < DAYS; d++)); do DATES+=("$(date -u -d "2026-11-01 + $d day" +%F)"); done
EVAL_DS=${DATES[$((DAYS - 1))]}; TRAIN_DS=${DATES[$((DAYS - 2))]}

if [ ! -f "$ROOT/samples/aigq_direct_sft/ds=$EVAL_DS/_SUCCESS" ]; then
  "$PY" -m sources.synthetic --data-root "$ROOT" --days "$DAYS" --users "$USERS" --items 3000
  for ds in "${DATES[@]}"; do
    anchors=$SESSION_ANCHORS; [ "$ds" = "$EVAL_DS" ] && anchors=false
    for job in validate sessionize build_samples; do
      PIPELINE__SAMPLES__SESSION_ANCHORS=$anchors "$PY" -m "jobs.$job" --ds "$ds" --data-root "$ROOT" >/dev/null
    done
    echo "samples of $ds built"
  done
fi

BASE="$ROOT/models/base_lm_seq/$TRAIN_DS"
if [ ! -f "$BASE/_SUCCESS" ]; then
  PIPELINE__BASE_LM__BEHAVIOUR_SEQUENCES=true "$PY" -m base_lm.pretrain --ds "$TRAIN_DS" --data-root "$ROOT" \
    --out "$BASE" --max-steps "$BASE_STEPS" | tail -1
fi

# Train and score every kind x seed, PARALLEL at a time; aigq_ablation.py --reuse then finds every
# model published and scored with these settings and only writes the table. The first kind's first
# seed is scored with the baselines.
MODELS="$ROOT/models/aigq_ablation/$TRAIN_DS"
EVAL_ARGS=(--ds "$EVAL_DS" --data-root "$ROOT" --split all --samples direct --min-history-queries 0 --sample-days 1
           --strategy query_beam --max-samples "$MAX_SAMPLES")
run_one() {
  local kind=$1 seed=$2 baselines=$3 dir="$MODELS/$1-seed$2"
  if [ ! -f "$dir/_SUCCESS" ]; then
    PIPELINE__AIGQ__SFT__LEARNING_RATE=$LR "$PY" -m aigq_model.train_sft --ds "$TRAIN_DS" --data-root "$ROOT" \
      --kind "$kind" --seed "$seed" --max-steps "$STEPS" --base-model "$BASE" --out "$dir" >"$dir.log" 2>&1
  fi
  # every run is scored with the baselines: its exported (hybrid) list is compared with the best of them
  local extra=()
  [ "$baselines" = yes ] || echo "scoring $kind seed $seed with the baselines too" >>"$dir.log"
  PIPELINE__AIGQ__GENERATE__NUM_BEAMS=$BEAMS PIPELINE__AIGQ__GENERATE__KNOWN_QUERIES=$KNOWN \
    "$PY" -m aigq_model.run_eval --model-dir "$dir" "${EVAL_ARGS[@]}" \
    --report-name "ablation_$kind-seed$seed" "${extra[@]}" >>"$dir.log" 2>&1
  echo "$kind seed $seed trained and scored"
}
mkdir -p "$MODELS"
first=yes
for kind in $KINDS; do
  for seed in $SEEDS; do
    while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n || true; done
    run_one "$kind" "$seed" "$first" &
    first=no
  done
done
wait

# shellcheck disable=SC2086
"$PY" scripts/aigq_ablation.py --data-root "$ROOT" --train-ds "$TRAIN_DS" --eval-ds "$EVAL_DS" \
  --kinds $KINDS --seeds $SEEDS --max-steps "$STEPS" --sft-lr "$LR" --base-model "$BASE" \
  --strategy query_beam --num-beams "$BEAMS" --known-queries "$KNOWN" --max-samples "$MAX_SAMPLES" --out "$OUT" --reuse \
  --samples-note "training days built with samples.session_anchors=$SESSION_ANCHORS"
