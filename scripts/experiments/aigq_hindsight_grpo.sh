#!/usr/bin/env bash
# AIGQ daily cycle on one data root, CPU-sized (issue 20): IL-SFT on the days up to SFT_DS, the
# day's CTR model and the policy update (IL-GRPO with the hindsight reward, and plain GRPO) on
# GRPO_DS's train prompts, everything scored on EVAL_DS (the next day) with the one decoder,
# free and constrained to the known queries, next to the baselines.
#
#   scripts/experiments/aigq_hindsight_grpo.sh DATA_ROOT BASE_LM SFT_DS GRPO_DS EVAL_DS OUT
#   env: SEEDS ("0 1"), SFT_STEPS (800), LR (0.002), GRPO_STEPS (30), GRPO_LR (3e-4: the best
#        of the settings tried on the GRPO day's valid part, docs/experiments.md), KL (0.05), BEAMS (12),
#        MAX_SAMPLES (200; 0 = all), SPLIT (all), KINDS ("direct"), PARALLEL (2), MODES ("il sequence"),
#        GRPO_DAYS (1: train_grpo --days, prompts of the days ending at GRPO_DS), EVAL_EXTRA (more
#        run_eval flags, e.g. "--sample-days 3 --min-history-queries 1" for sparse logs), PYTHON
#
# Every run writes <OUT>/<name>.json (run_eval's metrics); the table is
# scripts/experiments/aigq_cycle_table.py OUT. Reuses whatever OUT already holds.
set -euo pipefail
ROOT=$1; BASE=$2; SFT_DS=$3; GRPO_DS=$4; EVAL_DS=$5; OUT=$(mkdir -p "$6" && cd "$6" && pwd)
PY=${PYTHON:-.venv/bin/python}
SEEDS=${SEEDS:-0 1}; SFT_STEPS=${SFT_STEPS:-800}; LR=${LR:-0.002}; GRPO_STEPS=${GRPO_STEPS:-30}
BEAMS=${BEAMS:-12}; MAX_SAMPLES=${MAX_SAMPLES:-200}; SPLIT=${SPLIT:-all}; KINDS=${KINDS:-direct}
PARALLEL=${PARALLEL:-2}; MODES=${MODES:-il sequence}; GRPO_LR=${GRPO_LR:-3e-4}; KL=${KL:-0.05}
GRPO_DAYS=${GRPO_DAYS:-1}; read -r -a EXTRA <<<"${EVAL_EXTRA:-}"
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
GRPO_ENV=("PIPELINE__AIGQ__GRPO__LEARNING_RATE=$GRPO_LR" "PIPELINE__AIGQ__GRPO__KL_COEF=$KL")

evaluate() {  # model_dir name known(true|false) baselines
  [ -f "$OUT/$2.json" ] && return 0
  PIPELINE__AIGQ__GENERATE__NUM_BEAMS=$BEAMS PIPELINE__AIGQ__GENERATE__KNOWN_QUERIES=$3 "$PY" -m aigq_model.run_eval \
    --model-dir "$1" --ds "$EVAL_DS" --data-root "$ROOT" --split "$SPLIT" --samples direct --strategy query_beam \
    --max-samples "$MAX_SAMPLES" --no-semantic --baselines "$4" --report-name "cycle_$2" \
    --metrics-out "$OUT/$2.json" "${EXTRA[@]}" >>"$OUT/$2.log" 2>&1
}

CTR="$OUT/ctr"
if [ ! -f "$CTR/_SUCCESS" ]; then
  "$PY" -m aigq_model.ctr --ds "$GRPO_DS" --data-root "$ROOT" --out "$CTR" >"$OUT/ctr.log" 2>&1  # the prompts' last day
fi

one_seed() {
  local kind=$1 seed=$2 sft="$OUT/$1-sft-seed$2"
  if [ ! -f "$sft/_SUCCESS" ]; then
    PIPELINE__AIGQ__SFT__LEARNING_RATE=$LR "$PY" -m aigq_model.train_sft --ds "$SFT_DS" --data-root "$ROOT" \
      --kind "$kind" --seed "$seed" --max-steps "$SFT_STEPS" --base-model "$BASE" --out "$sft" >"$sft.log" 2>&1
  fi
  local baselines=""
  [ "$kind-$seed" = "direct-${SEEDS%% *}" ] && baselines="popularity,cooccurrence,own_history+popularity"
  evaluate "$sft" "$kind-sft-seed$seed" false "$baselines"
  evaluate "$sft" "$kind-sft-seed$seed-known" true ""
  [ "$kind" = direct ] || return 0
  for mode in $MODES; do
    local upd="$OUT/$kind-${mode/sequence/seq}-seed$seed"
    if [ ! -f "$upd/_SUCCESS" ]; then
      env "${GRPO_ENV[@]}" "$PY" -m aigq_model.train_grpo --ds "$GRPO_DS" --data-root "$ROOT" --policy "$sft" \
        --ctr "$CTR" --mode "$mode" --seed "$seed" --max-steps "$GRPO_STEPS" --days "$GRPO_DAYS" --out "$upd" >"$upd.log" 2>&1
    fi
    evaluate "$upd" "$kind-${mode/sequence/seq}-seed$seed" false ""
    [ "$mode" = il ] && evaluate "$upd" "$kind-il-seed$seed-known" true ""
  done
  echo "$kind seed $seed done"
}

for kind in $KINDS; do
  for seed in $SEEDS; do
    while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n || true; done
    one_seed "$kind" "$seed" &
  done
done
wait
"$PY" scripts/experiments/aigq_cycle_table.py "$OUT"
