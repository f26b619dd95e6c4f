#!/usr/bin/env bash
# AIGQ daily policy update (issue 20): one candidate setting of IL-GRPO, scored on held-out samples
# next to the IL-SFT policy it starts from, 2 seeds. The start policies and the CTR model are
# given (trained once, e.g. by scripts/experiments/aigq_hindsight_grpo.sh); the update trains on
# GRPO_DS's train prompts (train_grpo --days GRPO_DAYS), and both policies are scored on EVAL_DS
# (a later day, SPLIT all: samples the update never trained on) with the decoding u2q exports
# (aigq.generate, greedy), so the figure is the one the update gate sees.
#
#   scripts/experiments/aigq_update_candidates.sh ROOT RUN GRPO_DS EVAL_DS OUT NAME [KEY=VALUE ...]
#
#   ROOT: data root; RUN: folder holding direct-sft-seed<S>/ (start policies) and ctr/ (CTR model);
#   NAME: candidate name; KEY=VALUE: PIPELINE__... config overrides of the candidate (e.g.
#   PIPELINE__AIGQ__GRPO__KL_COEF=0.2). env: SEEDS ("0 1"), GRPO_STEPS (30), GRPO_DAYS (1),
#   MAX_SAMPLES (0 = all), SPLIT (all), EVAL_EXTRA (more run_eval flags), PARALLEL (2), PYTHON,
#   TRAIN (the update's entry point: "-m aigq_model.train_grpo"; the category-credit candidate:
#   "scripts/experiments/aigq_category_credit.py --w-cate 0.3").
#
# Writes OUT/sft-seed<S>.json and OUT/<NAME>-seed<S>.json (run_eval's metrics, with the bootstrap
# intervals); scripts/experiments/aigq_update_table.py OUT prints the table. Reuses what OUT holds.
set -euo pipefail
ROOT=$1; RUN=$2; GRPO_DS=$3; EVAL_DS=$4; OUT=$(mkdir -p "$5" && cd "$5" && pwd); NAME=$6; shift 6
OVERRIDES=("$@")
PY=${PYTHON:-.venv/bin/python}
SEEDS=${SEEDS:-0 1}; GRPO_STEPS=${GRPO_STEPS:-30}; GRPO_DAYS=${GRPO_DAYS:-1}; MAX_SAMPLES=${MAX_SAMPLES:-0}
SPLIT=${SPLIT:-all}; PARALLEL=${PARALLEL:-2}; read -r -a EXTRA <<<"${EVAL_EXTRA:-}"
read -r -a TRAIN <<<"${TRAIN:--m aigq_model.train_grpo}"
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

evaluate() {  # model_dir name
  [ -f "$OUT/$2.json" ] && return 0
  "$PY" -m aigq_model.run_eval --model-dir "$1" --ds "$EVAL_DS" --data-root "$ROOT" --split "$SPLIT" \
    --samples direct --max-samples "$MAX_SAMPLES" --no-semantic --baselines "" --report-name "upd_$2" \
    --metrics-out "$OUT/$2.json" "${EXTRA[@]}" >>"$OUT/$2.evlog" 2>&1
}

one_seed() {
  local seed=$1 sft="$RUN/direct-sft-seed$1" upd="$OUT/$NAME-seed$1"
  evaluate "$sft" "sft-seed$seed"
  if [ ! -f "$upd/_SUCCESS" ]; then
    env "${OVERRIDES[@]}" "$PY" "${TRAIN[@]}" --ds "$GRPO_DS" --data-root "$ROOT" --policy "$sft" \
      --ctr "$RUN/ctr" --mode il --seed "$seed" --max-steps "$GRPO_STEPS" --days "$GRPO_DAYS" --out "$upd" \
      >"$upd.log" 2>&1
  fi
  evaluate "$upd" "$NAME-seed$seed"
  echo "$NAME seed $seed done"
}

for seed in $SEEDS; do
  while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n || true; done
  one_seed "$seed" &
done
wait
